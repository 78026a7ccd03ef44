"""DAN (m-DAN): the K attention steps of both modalities against naive loops, the
similarity as a sum over steps, padding, gradients, training on the tiny world and
reloading a trained model."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.core.losses.triplet_sum import TripletSumLoss
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.dan import DAN
from xmrbench.core.models.registry import MODELS
from xmrbench.data.registry import DATASETS
from xmrbench.engine.inputs import PreparedData
from xmrbench.recipe.resolve import resolve

from support import base_recipe, train_and_check_reload

DIMS = InputDims(image_dim=7, vocab_size=20, n_regions=4)


def small_dan(**kw) -> DAN:
    params = dict(embed_dim=5, word_dim=4, steps=2)
    params.update(kw)
    return DAN(DAN.Params(**params), DIMS)


def affine(layer: torch.nn.Linear, x: list[float]) -> list[float]:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    return [sum(w[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(w))]


def attend(att, items: list[list[float]], memory: list[float]) -> list[float]:
    """One step's weights by explicit sums: softmax_n(w . (tanh(W_i x_n) * tanh(W_m m)))."""
    mem = [math.tanh(x) for x in affine(att.memory, memory)]
    scores = []
    for item in items:
        joint = [math.tanh(a) * m for a, m in zip(affine(att.item, item), mem)]
        scores.append(affine(att.score, joint)[0])
    top = max(scores)
    exp = [math.exp(s - top) for s in scores]
    return [e / sum(exp) for e in exp]


def naive_image_steps(model: DAN, regions: list[list[float]]) -> list[list[float]]:
    n = len(regions)
    mean = [sum(r[d] for r in regions) / n for d in range(len(regions[0]))]
    v = [math.tanh(x) for x in affine(model.img_init, mean)]
    memory, out = v, [v]
    for att, proj in zip(model.img_att, model.img_proj):
        weights = attend(att, regions, memory)
        pooled = [sum(w * r[d] for w, r in zip(weights, regions)) for d in range(len(regions[0]))]
        v = [math.tanh(x) for x in affine(proj, pooled)]
        memory = [a + b for a, b in zip(memory, v)]
        out.append(v)
    return out


def naive_text_steps(model: DAN, words: list[list[float]]) -> list[list[float]]:
    """``words``: the encoder outputs of the caption's valid positions only."""
    n = len(words)
    u = [sum(w[d] for w in words) / n for d in range(len(words[0]))]
    memory, out = u, [u]
    for att in model.txt_att:
        weights = attend(att, words, memory)
        u = [sum(a * w[d] for a, w in zip(weights, words)) for d in range(len(words[0]))]
        memory = [a + b for a, b in zip(memory, u)]
        out.append(u)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_visual_attention_steps_match_naive_loops(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_dan().double().eval()
    images = torch.rand(3, 4, 7, generator=gen, dtype=torch.float64)
    steps = model.image_steps(images)
    assert len(steps) == 3 and all(s.shape == (3, 5) for s in steps)
    for b in range(3):
        expected = naive_image_steps(model, images[b].tolist())
        for k in range(3):
            assert steps[k][b].tolist() == pytest.approx(expected[k], abs=1e-10)
    assert torch.allclose(model.encode_images(images), torch.cat(steps, -1))


@pytest.mark.parametrize("seed", [0, 1])
def test_textual_attention_steps_match_naive_loops_and_skip_padding(seed):
    torch.manual_seed(seed)
    model = small_dan().double().eval()
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 10, 2], [1, 3, 2, 0, 0, 0]])
    lengths = torch.tensor([4, 6, 3])
    text = TextBatch(tokens=tokens, lengths=lengths)
    steps = model.text_steps(text)
    words = model.txt_enc(tokens, lengths)
    for b in range(3):
        expected = naive_text_steps(model, words[b, : int(lengths[b])].tolist())
        for k in range(3):
            assert steps[k][b].tolist() == pytest.approx(expected[k], abs=1e-10)
    # more padding, or the caption alone, changes nothing
    wider = TextBatch(tokens=torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], 1), lengths=lengths)
    assert torch.allclose(model.encode_texts(wider), model.encode_texts(text), atol=1e-10)
    alone = TextBatch(tokens=tokens[2:, :3], lengths=lengths[2:])
    assert torch.allclose(model.encode_texts(alone), model.encode_texts(text)[2:], atol=1e-10)


def test_similarity_is_the_sum_over_steps_of_dot_products():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    model = small_dan(steps=3).eval()
    images = torch.rand(4, 4, 7, generator=gen)
    text = TextBatch(tokens=torch.tensor([[1, 5, 2], [1, 6, 2], [1, 9, 2]]), lengths=torch.tensor([3, 3, 3]))
    with torch.no_grad():
        v_steps, u_steps = model.image_steps(images), model.text_steps(text)
        sims = model.similarity(model.encode_images(images), model.encode_texts(text))
    assert sims.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            s = sum(float(v_steps[k][i] @ u_steps[k][j]) for k in range(4))
            assert float(sims[i, j]) == pytest.approx(s, abs=1e-5)


def test_zero_steps_is_mean_pooling():
    torch.manual_seed(3)
    model = small_dan(steps=0).eval()
    images = torch.rand(2, 4, 7)
    emb = model.encode_images(images)
    assert emb.shape == (2, 5)
    assert torch.allclose(emb, torch.tanh(model.img_init(images.mean(1))))
    text = TextBatch(tokens=torch.tensor([[1, 5, 6, 2]]), lengths=torch.tensor([4]))
    assert torch.allclose(model.encode_texts(text), model.txt_enc(text.tokens, text.lengths).mean(1))


def test_attention_weights_are_a_distribution_over_valid_items():
    torch.manual_seed(4)
    att = small_dan().txt_att[0]
    items, memory = torch.randn(2, 5, 5), torch.randn(2, 5)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    weights = att(items, memory, mask)
    assert torch.allclose(weights.sum(1), torch.ones(2)) and weights[0, 2:].abs().sum() == 0


def test_gradients_are_finite_and_reach_every_step():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = small_dan()
    images = torch.rand(3, 4, 7, generator=gen)
    text = TextBatch(tokens=torch.tensor([[1, 5, 2, 0], [1, 6, 7, 2], [1, 8, 2, 0]]), lengths=torch.tensor([3, 4, 3]))
    img_emb, txt_emb = model.encode_images(images), model.encode_texts(text)
    TripletSumLoss(TripletSumLoss.Params(margin=100.0))(img_emb, txt_emb, sims=model.similarity(img_emb, txt_emb)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.img_att[1].score.weight.grad.abs().sum() > 0 and model.txt_att[1].score.weight.grad.abs().sum() > 0


def test_rejects_global_features_and_is_registered():
    with pytest.raises(ValueError, match="region features"):
        small_dan().encode_images(torch.randn(3, 7))
    assert MODELS["dan"] is DAN


# --------------------------------------------------------------------------- end to end

def test_base_recipe_profiles_resolve(tmp_path):
    recipe = base_recipe(tmp_path, "dan", "a3vse", "dan")
    full = resolve(recipe, profile="full", require_data=False).cells[0].config
    assert full.model.name == "dan" and full.model.params.steps == 2 and full.model.params.embed_dim == 512
    assert full.loss.name == "triplet_sum" and full.loss.params.margin == 100.0
    for profile in ("smoke", "quick"):
        cfg = resolve(recipe, profile=profile).cells[0].config
        assert cfg.data.name == "synthetic" and cfg.model.name == "dan"


@pytest.mark.slow
def test_trains_on_tiny_world_and_reloads_identically(tmp_path, one_thread):
    cfg = resolve(base_recipe(tmp_path, "dan", "a3vse", "dan"), profile="smoke").cells[0].config
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, "regions", "tokens")
    train_and_check_reload(cfg, prepared, tmp_path, rtol=1e-5, atol=1e-4)
