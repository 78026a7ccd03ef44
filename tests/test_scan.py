"""SCAN: parameters and presets, encoders, the model's similarity on engine-shaped
inputs, training on the tiny world, checkpoint reload, and a recipe with SCAN-ens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xmrbench.core.models.base import InputDims, Padded, TextBatch, concat
from xmrbench.core.models.scan import SCAN
from xmrbench.core.sim.cross_attention import scan_sims_reference
from xmrbench.data.synthetic.load import load_synthetic
from xmrbench.engine.inputs import PreparedData
from xmrbench.errors import ConfigError
from xmrbench.recipe.config import validate_cell_config
from xmrbench.recipe.resolve import resolve

from support import cli, random_tokens, train_and_check_reload


def tokens(gen, n, max_len=7, vocab=40):
    return random_tokens(gen, n, min_len=2, max_len=max_len, vocab=vocab)


BASE = Path(__file__).resolve().parents[1] / "recipes" / "_base" / "scan.yaml"
DIMS = InputDims(image_dim=12, vocab_size=40, n_regions=5)



def test_params_take_the_direction_presets():
    assert (SCAN.Params().lambda_softmax, SCAN.Params().lambda_lse) == (9.0, 6.0)
    i2t = SCAN.Params(direction="i2t")
    assert (i2t.lambda_softmax, i2t.lambda_lse) == (4.0, 5.0)
    coco = SCAN.Params(direction="i2t", lambda_lse=20)  # an int is a fine float
    assert (coco.lambda_softmax, coco.lambda_lse) == (4.0, 20.0)
    defaults = SCAN.Params()
    assert (defaults.embed_dim, defaults.word_dim, defaults.bidirectional_gru, defaults.pooling) == (1024, 300, True, "lse")


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"direction": "both"}, "model.direction"),
        ({"pooling": "max"}, "model.pooling"),
        ({"lambda_softmax": 0}, "model.lambda_softmax"),
        ({"lambda_softmax": "9"}, "model.lambda_softmax"),
        ({"image_input": "global"}, "model.image_input"),
        ({"sim_memory_mb": 4}, "model.sim_memory_mb"),
        ({"lambda": 9}, "model.lambda"),
    ],
)
def test_bad_parameters_name_the_key(model, key):
    with pytest.raises(ConfigError) as err:
        validate_cell_config({"model": {"name": "scan", **model}, "loss": {"name": "hardest_negative"}}, where="r.yaml")
    assert err.value.key == key and err.value.where == "r.yaml"


def test_encoders_give_unit_norm_regions_and_padded_words():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SCAN(SCAN.Params(embed_dim=8, word_dim=6), DIMS).eval()
    img = model.encode_images(torch.rand(3, 5, 12, generator=gen))
    text = tokens(gen, 4)
    txt = model.encode_texts(text)
    assert img.shape == (3, 5, 8) and torch.allclose(img.norm(dim=-1), torch.ones(3, 5), atol=1e-6)
    assert isinstance(txt, Padded) and txt.data.shape == (4, int(text.lengths.max()), 8)
    assert torch.allclose(txt.data[txt.mask()].norm(dim=-1), torch.ones(int(text.lengths.sum())), atol=1e-6)
    assert (txt.data[~txt.mask()] == 0).all()
    # a caption's word features do not depend on how far its batch is padded
    short = model.encode_texts(TextBatch(tokens=text.tokens[:1, : int(text.lengths[0])], lengths=text.lengths[:1]))
    assert torch.allclose(short.data[0], txt.data[0, : int(text.lengths[0])], atol=1e-6)
    with pytest.raises(ValueError, match="region features"):
        model.encode_images(torch.rand(3, 12))


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("pooling", ["avg", "lse"])
def test_model_similarity_on_engine_blocks_matches_the_reference(direction, pooling):
    """The engine encodes captions in batches (each padded to its own length), concatenates
    them and scores a block of images against all of them."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = SCAN(SCAN.Params(embed_dim=8, word_dim=6, direction=direction, pooling=pooling, sim_memory_mb=16), DIMS).eval()
    with torch.no_grad():
        img = model.encode_images(torch.rand(7, 5, 12, generator=gen))
        txt = concat([model.encode_texts(tokens(gen, 6, max_len=4)), model.encode_texts(tokens(gen, 9, max_len=9))])
        sims = torch.cat([model.similarity(img[s : s + 3], txt) for s in range(0, 7, 3)])
        ref = scan_sims_reference(img, txt.data, txt.lengths, **model._kernel_kw())
        assert sims.shape == (7, 15) and torch.allclose(sims, ref, atol=1e-5)
        pairs = torch.tensor([0, 3, 6])
        assert torch.allclose(model.pair_scores(img[pairs], txt[pairs]), sims[pairs, pairs], atol=1e-5)


def test_presets_change_the_scores():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    t2i = SCAN(SCAN.Params(embed_dim=8, word_dim=6), DIMS).eval()
    i2t = SCAN(SCAN.Params(embed_dim=8, word_dim=6, direction="i2t"), DIMS).eval()
    i2t.load_state_dict(t2i.state_dict())  # same weights, different attention
    with torch.no_grad():
        img = t2i.encode_images(torch.rand(4, 5, 12, generator=gen))
        txt = t2i.encode_texts(tokens(gen, 6))
        assert not torch.allclose(t2i.similarity(img, txt), i2t.similarity(img, txt))


@pytest.fixture(scope="module")
def tiny():
    return load_synthetic(size="tiny")


# The sum of hinges learns fastest from scratch, which keeps this test to seconds; the
# presets' max-violation loss trains in the SCAN-ens end-to-end test below.
TRAIN_RAW = {
    "data": {"size": "tiny", "train_images": 200},
    "model": {"name": "scan", "embed_dim": 32, "word_dim": 16},
    "loss": {"name": "triplet_sum"},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.005},
    "eval": {"dev_images": 50},
}


@pytest.mark.slow
def test_trains_on_the_tiny_world_beats_random_and_reloads_identically(tiny, tmp_path, one_thread):
    cfg = validate_cell_config(TRAIN_RAW, where="test")
    prepared = PreparedData(tiny, cfg.data, "regions", "tokens")
    out = train_and_check_reload(cfg, prepared, tmp_path, min_ratio=4.0)  # measured: rsum 222
    assert out.curves["train_loss"][-1] < out.curves["train_loss"][0]


def _write_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "scan_ens.yaml"
    recipe.write_text(
        f"""
id: scan-ens-test
extends: {BASE}
paper: vsepp
table: SCAN smoke
title: SCAN t-i, i-t and their ensemble
protocols:
  test: {{dataset: synthetic, split: test}}
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]
rows:
  - id: scan-t2i
    label: SCAN t-i LSE
    set: {{model.direction: t2i, model.pooling: lse}}
  - id: scan-i2t
    label: SCAN i-t AVG
    set: {{model.direction: i2t, model.pooling: avg}}
  - id: scan-ens
    label: SCAN-ens
    ensemble: [scan-t2i, scan-i2t]
"""
    )
    return recipe


def test_base_recipe_resolves_with_the_presets(tmp_path):
    recipe = _write_recipe(tmp_path)
    for profile in ("smoke", "quick", "full"):
        resolved = resolve(recipe, profile=profile, require_data=False)
        cells = {c.id: c for c in resolved.cells}
        t2i, i2t = cells["scan-t2i"].config.model.params, cells["scan-i2t"].config.model.params
        assert (t2i.lambda_softmax, t2i.lambda_lse, i2t.lambda_softmax, i2t.lambda_lse) == (9.0, 6.0, 4.0, 5.0)
        # max violation in the paper's profiles; the smoke profile trains with the sum of hinges (recipes/_base/scan.yaml notes)
        loss = "triplet_sum" if profile == "smoke" else "hardest_negative"
        assert cells["scan-ens"].members and cells["scan-t2i"].config.loss.name == loss
    full = {c.id: c for c in resolve(recipe, profile="full", require_data=False).cells}["scan-t2i"].config
    assert (full.model.params.embed_dim, full.model.params.word_dim, full.train.epochs, full.train.lr) == (1024, 300, 30, 2e-4)


@pytest.mark.slow
def test_scan_ens_runs_end_to_end(tmp_path, capsys, one_thread):
    recipe = _write_recipe(tmp_path)
    store = tmp_path / "results"
    code, _, err = cli(["reproduce", str(recipe), "--profile", "smoke", "--seeds", "0", "--results", str(store), "--no-report", "--quiet"], capsys)
    assert code == 0, err
    docs = {json.loads(p.read_text())["cell"]["id"]: json.loads(p.read_text()) for p in (store / "scan-ens-test").glob("*.json")}
    assert set(docs) == {"scan-t2i", "scan-i2t", "scan-ens"}
    for doc in docs.values():
        assert 0 <= doc["metrics"]["test"]["rsum"] <= 600
        assert len(doc["ranks"]["test"]["t2i"]) == 500
    assert set(docs["scan-ens"]["config"]["ensemble"]) == {"scan-t2i", "scan-i2t"}
    assert docs["scan-i2t"]["config"]["model"]["lambda_softmax"] == 4.0
