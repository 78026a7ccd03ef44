"""DPC: the text CNN against naive loops, padding invariance, cosine similarity, the
instance term of the auxiliary loss by hand, W_share sizing and reloading, the engine's
image ids, gradients, and training on the tiny world."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xmrbench.core.encoders.text_cnn import PairConv, ResidualTextCNN, masked_batch_norm
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.models.dpc import DPC
from xmrbench.core.models.registry import MODELS
from xmrbench.data.registry import DATASETS
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.train import train_and_evaluate
from xmrbench.recipe.resolve import resolve

from support import base_recipe, train_and_check_reload

DIMS = InputDims(image_dim=9, vocab_size=25)


def aux_loss(model, *, images, text, img_emb, txt_emb, labels, image_ids=None):
    """``model.auxiliary_loss`` of a batch given by its parts."""
    from xmrbench.core.models.base import TrainBatch

    ids = image_ids if image_ids is not None else torch.arange(len(images))
    return model.auxiliary_loss(TrainBatch(images=images, text=text, labels=labels, image_ids=ids, caption_ids=None),
                                img_emb, txt_emb)


def small_dpc(**kw) -> DPC:
    params = dict(embed_dim=8, word_dim=5, text_channels=6, text_blocks=2, dropout=0.0)
    params.update(kw)
    return DPC(DPC.Params(**params), DIMS)


@pytest.fixture
def one_thread():
    """Small models train faster on one thread when the cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class FakeSplit:
    def __init__(self, n_images: int):
        self.n_images = n_images


def test_pair_conv_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = PairConv(3, 4).double()
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    w, b = conv.conv.weight.tolist(), conv.conv.bias.tolist()  # (out, in, 2)
    expected = torch.zeros(2, 5, 4, dtype=torch.float64)
    for n in range(2):
        for t in range(5):
            for o in range(4):
                value = b[o]
                for i in range(3):
                    value += w[o][i][0] * float(x[n, t, i])
                    if t + 1 < 5:
                        value += w[o][i][1] * float(x[n, t + 1, i])
                expected[n, t, o] = value
    assert torch.allclose(conv(x), expected, atol=1e-12)


def test_masked_batch_norm_uses_valid_positions_only():
    gen = torch.Generator().manual_seed(1)
    bn = torch.nn.BatchNorm1d(3).double().train()
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    out = masked_batch_norm(bn, x, mask).detach()
    valid = [x[0, 0], x[0, 1], x[0, 2], x[1, 0]]
    for c in range(3):
        column = [float(v[c]) for v in valid]
        mean = sum(column) / 4
        var = sum((v - mean) ** 2 for v in column) / 4
        expected = [(v - mean) / math.sqrt(var + bn.eps) for v in column]
        got = [float(out[0, 0, c]), float(out[0, 1, c]), float(out[0, 2, c]), float(out[1, 0, c])]
        assert got == pytest.approx(expected, abs=1e-10)
    assert out[~mask].abs().sum() == 0


@pytest.mark.parametrize("train", [False, True])
def test_text_cnn_ignores_padding(train):
    torch.manual_seed(2)
    cnn = ResidualTextCNN(25, word_dim=5, channels=6, blocks=3).train(train)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 9, 10, 11, 12, 2]])
    lengths = torch.tensor([5, 7])
    wide = torch.cat([tokens, torch.zeros(2, 6, dtype=torch.long)], 1)  # more padding
    assert torch.allclose(cnn(tokens, lengths), cnn(wide, lengths), atol=1e-6)
    if not train:
        alone = cnn(tokens[:1, :5], lengths[:1])
        assert torch.allclose(cnn(tokens, lengths)[:1], alone, atol=1e-6)


def test_text_cnn_output_is_the_average_over_words():
    torch.manual_seed(3)
    cnn = ResidualTextCNN(25, word_dim=5, channels=6, blocks=0).eval()
    tokens = torch.tensor([[1, 5, 6, 2]])
    words = cnn.proj(cnn.embed(tokens))[0]
    assert torch.allclose(cnn(tokens, torch.tensor([4]))[0], words.mean(0), atol=1e-6)


def test_similarity_is_cosine_of_the_path_outputs():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    model = small_dpc().eval()
    with torch.no_grad():
        img = model.encode_images(torch.randn(3, 9, generator=gen))
        txt = model.encode_texts(TextBatch(tokens=torch.tensor([[1, 5, 2], [1, 7, 2]]), lengths=torch.tensor([3, 3])))
        sims = model.similarity(img, txt)
    for i in range(3):
        for j in range(2):
            cos = float(img[i] @ txt[j]) / (float(img[i].norm()) * float(txt[j].norm()))
            assert float(sims[i, j]) == pytest.approx(cos, abs=1e-6)
    assert torch.allclose(model.pair_scores(img[:2], txt), sims[[0, 1], [0, 1]], atol=1e-6)


def batch(gen: torch.Generator):
    images = torch.rand(3, 9, generator=gen)
    tokens = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0], [1, 7, 8, 9, 2], [1, 4, 9, 2, 0]])
    text = TextBatch(tokens=tokens, lengths=torch.tensor([4, 3, 5, 4]))
    labels = (torch.arange(3), torch.tensor([2, 0, 1, 2]))
    image_ids = torch.tensor([11, 3, 7])  # the batch images' indices in the training split
    return images, text, labels, image_ids


def test_instance_term_by_hand():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = small_dpc(instance_weight=0.5)
    model.prepare_training(FakeSplit(12))
    assert model.instance.n_classes == 12
    images, text, labels, image_ids = batch(gen)
    img_emb, txt_emb = model.encode_images(images), model.encode_texts(text)
    aux = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels, image_ids=image_ids)
    weight = model.instance.fc.weight.detach().double()

    def nll(emb, cls):
        scores = (weight @ emb.detach().double()).tolist()
        top = max(scores)
        return top + math.log(sum(math.exp(s - top) for s in scores)) - scores[cls]

    visual = sum(nll(img_emb[i], int(image_ids[i])) for i in range(3)) / 3
    caption_classes = [7, 11, 3, 7]  # captions of batch images 2, 0, 1, 2
    textual = sum(nll(txt_emb[j], c) for j, c in enumerate(caption_classes)) / 4
    assert aux.item() == pytest.approx(0.5 * (visual + textual), rel=1e-5)


def test_instance_weight_zero_and_missing_preparation():
    gen = torch.Generator().manual_seed(6)
    images, text, labels, image_ids = batch(gen)
    off = small_dpc(instance_weight=0.0)
    off.prepare_training(FakeSplit(12))
    assert off.instance is None
    img_emb, txt_emb = off.encode_images(images), off.encode_texts(text)
    kw = dict(images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels, image_ids=image_ids)
    assert aux_loss(off, **kw).item() == 0.0
    with pytest.raises(RuntimeError, match="prepare_training"):
        aux_loss(small_dpc(), **kw)


def test_loading_a_trained_state_builds_w_share():
    torch.manual_seed(7)
    trained = small_dpc()
    trained.prepare_training(FakeSplit(30))
    fresh = small_dpc()
    assert fresh.instance is None
    fresh.load_state_dict(trained.state_dict())
    assert fresh.instance.n_classes == 30
    assert torch.equal(fresh.instance.fc.weight, trained.instance.fc.weight)


def test_gradients_are_finite_and_w_share_couples_the_paths():
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = small_dpc()
    model.prepare_training(FakeSplit(12))
    model.train()
    images, text, labels, image_ids = batch(gen)
    img_emb, txt_emb = model.encode_images(images), model.encode_texts(text)
    rank = HardestNegativeLoss(HardestNegativeLoss.Params(margin=1.0))(img_emb, txt_emb, sims=model.similarity(img_emb, txt_emb), labels=labels)
    inst = aux_loss(model, images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels, image_ids=image_ids)
    (rank + inst).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # only the classes present in the batch receive a pulling gradient on their row
    grad = model.instance.fc.weight.grad
    assert grad[[3, 7, 11]].abs().sum() > 0


def test_engine_passes_each_batch_images_training_index(monkeypatch, one_thread):
    """The engine hands auxiliary_loss the training-split index of every batch image."""
    cfg_raw = {
        "data": {"name": "synthetic", "size": "tiny"},
        "model": {"name": "dpc", "embed_dim": 8, "word_dim": 4, "text_channels": 4, "text_blocks": 1},
        "loss": {"name": "hardest_negative", "margin": 1.0},
        "train": {"epochs": 1, "batch_size": 250},
        "eval": {"dev_images": 10},
    }
    from xmrbench.recipe.config import validate_cell_config

    cfg = validate_cell_config(cfg_raw, where="test")
    prepared = PreparedData(DATASETS["synthetic"](cfg.data), cfg.data, "global", "tokens")
    train = prepared.split("train")
    seen = []
    original = DPC.auxiliary_loss

    def spy(self, batch, img_emb, txt_emb):
        seen.append((batch.images, batch.image_ids.cpu().numpy(), batch.labels))
        return original(self, batch, img_emb, txt_emb)

    monkeypatch.setattr(DPC, "auxiliary_loss", spy)
    train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    assert len(seen) == math.ceil(train.n_captions / 250)
    covered = set()
    for images, ids, (img_labels, _txt_labels) in seen:
        assert torch.equal(images, train.image_batch(ids))
        assert len(ids) == len(img_labels) and len(np.unique(ids)) == len(ids)
        covered.update(ids.tolist())
    assert covered == set(range(train.n_images))


def test_registered():
    assert MODELS["dpc"] is DPC


# --------------------------------------------------------------------------- end to end

def test_base_recipe_profiles_resolve(tmp_path):
    recipe = base_recipe(tmp_path, "dpc", "a3vse", "dpc")
    full = resolve(recipe, profile="full", require_data=False).cells[0].config
    assert full.model.name == "dpc" and full.model.params.embed_dim == 2048
    assert full.model.params.image_input == "mean_regions" and full.model.params.instance_weight == 1.0
    assert full.loss.name == "hardest_negative" and full.loss.params.margin == 1.0
    for profile in ("smoke", "quick"):
        cfg = resolve(recipe, profile=profile).cells[0].config
        assert cfg.data.name == "synthetic" and cfg.model.name == "dpc"


@pytest.mark.slow
def test_trains_on_tiny_world_and_reloads_identically(tmp_path, one_thread):
    cfg = resolve(base_recipe(tmp_path, "dpc", "a3vse", "dpc"), profile="smoke").cells[0].config
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, cfg.model.params.image_input, "tokens")
    out = train_and_check_reload(cfg, prepared, tmp_path)
    assert out.state_dict["instance.fc.weight"].shape[0] == prepared.split("train").n_images
