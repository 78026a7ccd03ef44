"""The peers' positive rule (``positives="pair"``) against a naive loop over a batch of
(image, caption) pairs, as the released VSE++ / SCAN / VSRN code builds it."""

from __future__ import annotations

import pytest
import torch

from xmrbench.core.losses.registry import LOSSES
from xmrbench.recipe.config import validate_cell_config

#: a batch of 3 images: image 0 has captions 0, 1; image 1 caption 2; image 2 captions 3, 4
CAPTION_IMAGE = [0, 0, 1, 2, 2]


def _batch():
    gen = torch.Generator().manual_seed(7)
    img = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64), dim=1)
    return img, txt, (torch.arange(3), torch.tensor(CAPTION_IMAGE))


def naive_pairs(img, txt, margin, hardest: bool) -> float:
    """The released code's loss: B pairs (image of caption k, caption k), a B x B score
    matrix, only the diagonal positive, summed over both directions."""
    pairs_img = img[CAPTION_IMAGE]
    s = (pairs_img @ txt.T).tolist()
    total = 0.0
    for k in range(len(s)):
        cost_c = [max(0.0, margin - s[k][k] + s[k][j]) for j in range(len(s)) if j != k]
        cost_i = [max(0.0, margin - s[k][k] + s[i][k]) for i in range(len(s)) if i != k]
        total += (max(cost_c) + max(cost_i)) if hardest else (sum(cost_c) + sum(cost_i))
    return total


@pytest.mark.parametrize("name, hardest", [("hardest_negative", True), ("triplet_sum", False)])
def test_pair_positives_equal_the_released_rule(name, hardest):
    img, txt, labels = _batch()
    cls = LOSSES[name]
    pair = cls(cls.Params(margin=0.5, positives="pair"))(img, txt, labels=labels)
    assert float(pair) == pytest.approx(naive_pairs(img, txt, 0.5, hardest), abs=1e-12)
    # the image rule never takes another caption of the anchor's image as a negative: it differs here
    image = cls(cls.Params(margin=0.5))(img, txt, labels=labels)
    assert float(image) != pytest.approx(float(pair), abs=1e-6)
    # given a sims matrix instead of embeddings, the same
    sims = img @ txt.T
    assert float(cls(cls.Params(margin=0.5, positives="pair"))(img, txt, sims=sims, labels=labels)) == \
        pytest.approx(float(pair), abs=1e-12)
    # with one caption per image (no labels) both rules coincide
    one = cls(cls.Params(margin=0.5, positives="pair"))(img, txt[:3])
    assert float(one) == pytest.approx(float(cls(cls.Params(margin=0.5))(img, txt[:3])), abs=1e-12)


def test_the_option_leaves_existing_hashes_alone():
    raw = {"model": {"name": "vsepp"}, "loss": {"name": "hardest_negative"}}
    plain = validate_cell_config(raw, where="t")
    same = validate_cell_config({**raw, "loss": {"name": "hardest_negative", "positives": "image"}}, where="t")
    pair = validate_cell_config({**raw, "loss": {"name": "hardest_negative", "positives": "pair"}}, where="t")
    assert plain.hash() == same.hash() != pair.hash() and "positives" not in plain.to_dict()["loss"]


@pytest.mark.parametrize("base", ["vsepp", "scan", "bfan", "vsrn"])
def test_the_peer_presets_follow_the_peers(base, tmp_path):
    """Recipes reproducing the released VSE++ / SCAN / BFAN / VSRN code take its positive
    rule in every profile, and its tokenizer where a vocabulary is built from real captions."""
    from xmrbench.recipe.resolve import resolve

    from support import base_recipe

    recipe = base_recipe(tmp_path, base, "aoq", "r")
    for profile in ("smoke", "quick", "full"):
        cfg = resolve(recipe, profile=profile, require_data=False).cells[0].config
        assert cfg.loss.params.positives == "pair", profile
    assert cfg.data.tokenizer == "treebank"
