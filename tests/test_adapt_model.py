"""ADAPT's model (xmrbench/core/models/adapt.py) and training objective
(xmrbench/engine/adapt_method.py), each against an independent derivation: the
similarity of every pair built by hand from the paper's Eq. 6-9, the loss of Eq. 10-15
from per-pair loops, the tau schedule in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.config import TrainConfig
from xmrbench.core.models.adapt import ADAPT
from xmrbench.core.models.base import InputDims, Padded, TextBatch, TrainBatch
from xmrbench.engine.adapt_method import ADAPTMethod, tau
from xmrbench.engine.training_method import Progress, StepContext

DIMS = InputDims(image_dim=12, vocab_size=30)


def _model(**kw) -> ADAPT:
    torch.manual_seed(0)
    params = ADAPT.Params(embed_dim=8, word_dim=6, glove_dim=4, **kw)
    return ADAPT(params, DIMS).double()


def _inputs(n_img: int = 3, n_txt: int = 4, regions: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_img, regions, DIMS.image_dim, generator=g, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 6, 3][:n_txt])
    tokens = torch.zeros(n_txt, int(lengths.max()), dtype=torch.long)
    for t, n in enumerate(lengths):
        tokens[t, :n] = torch.randint(1, DIMS.vocab_size, (int(n),), generator=g)
    return images, TextBatch(tokens=tokens, lengths=lengths)


def _by_hand(model: ADAPT, img_emb: torch.Tensor, words: Padded) -> torch.Tensor:
    """Eq. 6-9 for one pair at a time, beta inside the softmax, average pooling."""
    p = model.params
    sims = torch.empty(img_emb.shape[0], len(words), dtype=img_emb.dtype)
    for i in range(img_emb.shape[0]):
        regions = img_emb[i]
        for t in range(len(words)):
            w = words.data[t, : int(words.lengths[t])]
            if p.direction == "t2i":
                adapted, base, other = regions, w.mean(0), w.mean(0)
            else:
                adapted, base, other = w, regions.mean(0), regions.mean(0)
            gamma = model.fc_gamma(base) + (1 if p.adapt_residual else 0)
            bar = adapted * gamma + model.fc_beta(base)
            if p.fovea:
                mask = torch.softmax(float(model.lam) * bar, dim=0)
                pooled = (mask * bar).mean(0)
            else:
                pooled = bar.mean(0)
            sims[i, t] = torch.dot(pooled, other) / (pooled.norm() * other.norm())
    return sims


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("fovea", [True, False])
def test_similarity_equals_the_equations_pair_by_pair(direction, fovea):
    model = _model(direction=direction, fovea=fovea).eval()
    images, text = _inputs()
    with torch.no_grad():
        img_emb, words = model.encode_images(images), model.encode_texts(text)
        sims = model.similarity(img_emb, words)
        expected = _by_hand(model, img_emb, words)
    assert sims.shape == (3, 4)
    torch.testing.assert_close(sims, expected, rtol=1e-9, atol=1e-9)


def test_pair_scores_are_the_diagonal():
    model = _model(direction="i2t").eval()
    images, text = _inputs(n_img=4, n_txt=4)
    with torch.no_grad():
        img_emb, words = model.encode_images(images), model.encode_texts(text)
        torch.testing.assert_close(model.pair_scores(img_emb, words), model.similarity(img_emb, words).diagonal())


def test_the_fovea_and_the_residual_form_change_the_scores():
    images, text = _inputs()
    outs = []
    for kw in ({}, {"fovea": False}, {"adapt_residual": True}, {"lambda_fovea": 1.0}):
        model = _model(**kw).eval()
        with torch.no_grad():
            outs.append(model.similarity(model.encode_images(images), model.encode_texts(text)))
    for other in outs[1:]:
        assert (outs[0] - other).abs().max() > 1e-4


def test_i2t_batch_norm_sees_only_valid_words():
    """Padding never enters the statistics: a caption's features do not depend on how
    much padding the batch adds after it."""
    model = _model(direction="i2t").train()
    images, text = _inputs()
    padded = TextBatch(tokens=torch.nn.functional.pad(text.tokens, (0, 5)), lengths=text.lengths)
    a, b = model.encode_texts(text), model.encode_texts(padded)
    torch.testing.assert_close(a.data, b.data[:, : a.data.shape[1]])
    assert torch.all(b.data[:, a.data.shape[1]:] == 0)


def test_gradient_reaches_a_learned_lambda_and_not_a_fixed_one():
    images, text = _inputs()
    learned = _model(learn_lambda=True)
    learned.similarity(learned.encode_images(images), learned.encode_texts(text)).sum().backward()
    assert isinstance(learned.lam, torch.nn.Parameter) and learned.lam.grad is not None
    assert abs(float(learned.lam.grad)) > 0
    fixed = _model()
    assert "lam" not in dict(fixed.named_parameters())


def test_frozen_glove_half_and_word_vector_requirement():
    frozen = _model(embeddings="rand+glove")
    assert not frozen.embed.glove.weight.requires_grad and frozen.embed.rand.weight.requires_grad
    assert frozen.requires_word_vectors and frozen.word_embedding() is frozen.embed.glove
    assert _model(embeddings="rand+glove", train_glove=True).embed.glove.weight.requires_grad
    rand = _model(embeddings="rand")
    assert not rand.requires_word_vectors and rand.word_embedding() is None
    assert _model(embeddings="glove").embed.dim == 4


def test_tau_schedule():
    assert tau(1, 0.991) == pytest.approx(0.009)
    assert tau(0, 0.991) == 0.0
    assert tau(500, 0.991) == pytest.approx(1 - 0.991**500)
    values = [tau(s, 0.991) for s in range(1, 2000, 50)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] > 0.99


def _loss_by_hand(sims: torch.Tensor, margin: float, weight: float) -> torch.Tensor:
    """Eq. 10-15 with one caption per image (the diagonal is positive), by loops."""
    n = sims.shape[0]
    j_s = j_m = 0.0
    for a in range(n):
        caption_side = [max(0.0, margin - float(sims[a, a]) + float(sims[a, b])) for b in range(n) if b != a]
        image_side = [max(0.0, margin - float(sims[a, a]) + float(sims[b, a])) for b in range(n) if b != a]
        j_s += sum(caption_side) + sum(image_side)
        j_m += max(caption_side) + max(image_side)
    return torch.tensor(weight * j_m + (1 - weight) * j_s, dtype=torch.float64)


@pytest.mark.parametrize("step", [0, 40, 900])
def test_method_loss_is_eq_10_at_the_global_step(step):
    model = _model()
    images, text = _inputs(n_img=4, n_txt=4)
    method = ADAPTMethod(ADAPTMethod.Params(), model=model, loss=None, train=TrainConfig())
    method.setup()
    batch = TrainBatch(images=images, text=text, labels=None, image_ids=torch.arange(4), caption_ids=torch.arange(4))
    steps_per_epoch = 100
    ctx = StepContext(progress=Progress(epoch=step // steps_per_epoch, n_epochs=10, batch=step % steps_per_epoch,
                                        steps_per_epoch=steps_per_epoch), device=torch.device("cpu"), label="t")
    loss = method.training_loss(ctx, batch)
    with torch.no_grad():
        sims = model.similarity(model.encode_images(images), model.encode_texts(text))
    expected = _loss_by_hand(sims, 0.2, 1 - 0.991 ** (step + 1))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-9, atol=1e-9)
    assert math.isfinite(method.step(ctx, batch))


# --------------------------------------------------------------------------- end to end

def _smoke_cell(tmp_path, row: str, **changes):
    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.recipe.resolve import resolve

    from support import REPO

    cfg = resolve(REPO / "recipes/adapt/table1.yaml", profile="smoke").cell(row).config
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=changes)}) if changes else cfg
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, "regions", "tokens")
    return cfg, prepared


@pytest.mark.slow
@pytest.mark.parametrize("row", ["adapt-t2i", "adapt-i2t"])
def test_trains_on_tiny_world_and_reloads_identically(tmp_path, one_thread, row):
    from support import train_and_check_reload

    cfg, prepared = _smoke_cell(tmp_path, row)
    train_and_check_reload(cfg, prepared, tmp_path, min_ratio=4.0, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resumes_bit_for_bit_with_the_tau_schedule(tmp_path, one_thread):
    """tau depends on the global step, which a resumed run recomputes from epoch and batch."""
    from xmrbench.engine.train import train_and_evaluate

    cfg, prepared = _smoke_cell(tmp_path, "adapt-t2i", epochs=2)
    cpu = torch.device("cpu")
    straight = train_and_evaluate(cfg, 0, prepared, device=cpu)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(cfg, 0, prepared, device=cpu, work_dir=tmp_path, stop_requested=lambda: True)
    resumed = train_and_evaluate(cfg, 0, prepared, device=cpu, work_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics == straight.metrics and resumed.curves["train_loss"] == straight.curves["train_loss"]
