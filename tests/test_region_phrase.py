"""Region-phrase fusion for image-sentence retrieval (two-branch paper, Sec. 5.6, Eq. 8):
d_rp against a naive loop on a hand-made split, the fused similarity, the recipe row's
validation and hash, and Table 5 end to end on the tiny synthetic world."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from xmrbench.core.models.base import TextBatch
from xmrbench.data.dataset import Split
from xmrbench.data.entities import EntitiesSplit, Phrase
from xmrbench.engine.inputs import PreparedSplit
from xmrbench.engine.region_phrase import cosine_distance, fuse, region_phrase_distances
from xmrbench.recipe.resolve import resolve

from support import IdentityModel, cli

WORDS = {"dog": [1.0, 0.0], "cat": [0.0, 1.0], "sky": [0.6, 0.8]}


def _split() -> PreparedSplit:
    # two images (3 and 0 proposals), two captions each; caption 3 has no phrase
    feats = np.array([[1, 0], [0, 1], [0.8, 0.6]], np.float32)
    ents = EntitiesSplit(
        name="test", captions=["dog cat", "sky", "cat", "nothing here"], captions_per_image=2,
        phrases=[[Phrase(0, 1, "a"), Phrase(1, 2, "b")], [Phrase(0, 1, "c")], [Phrase(0, 1, "b")], []],
        entities=[{"a": np.array([[0, 0, 1, 1]], np.float32), "b": np.array([[0, 0, 1, 1]], np.float32),
                   "c": np.array([[0, 0, 1, 1]], np.float32)}, {"b": np.array([[0, 0, 1, 1]], np.float32)}],
        sizes=np.ones((2, 2)), proposal_offsets=np.array([0, 3, 3]),
        proposal_boxes=np.tile(np.array([[0, 0, 1, 1]], np.float32), (3, 1)), proposal_feats=feats,
    )
    split = Split(name="test", captions=ents.captions, captions_per_image=2, global_feats=np.zeros((2, 2), np.float32),
                  extras={"entities": ents})
    strings = lambda texts: TextBatch(vectors=torch.tensor([WORDS[t] for t in texts]))  # noqa: E731
    return PreparedSplit(split=split, image_input="global", text=None, strings=strings)


def test_region_phrase_distance_equals_a_naive_loop():
    split = _split()
    ents = split.split.extras["entities"]
    got = region_phrase_distances(IdentityModel(), split, device=torch.device("cpu"), batch_size=2)
    for image in range(2):
        _, feats = ents.proposals(image)
        for caption, phrases in enumerate(ents.phrases):
            if not phrases:
                assert math.isnan(float(got[image, caption]))
                continue
            if not len(feats):
                assert float(got[image, caption]) == math.inf
                continue
            dists = [min(np.linalg.norm(np.array(WORDS[p.text(ents.captions[caption])]) - f) for f in feats)
                     for p in phrases]
            assert float(got[image, caption]) == pytest.approx(np.mean(dists), abs=1e-6)
    # "dog cat" on image 0: both words have an exact proposal
    assert float(got[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_fuse_weights_the_distances_and_keeps_d_where_a_caption_has_no_phrase():
    sims = torch.tensor([[1.0, 0.0, 0.5]])
    d_rp = torch.tensor([[0.2, float("nan"), math.inf]])
    got = fuse(sims, d_rp, 0.2)
    d = cosine_distance(sims)
    assert float(d[0, 1]) == pytest.approx(math.sqrt(2))
    assert float(got[0, 0]) == pytest.approx(-(0.8 * 0.0 + 0.2 * 0.2))
    assert float(got[0, 1]) == pytest.approx(-math.sqrt(2))  # no phrases: d alone
    assert float(got[0, 2]) == -math.inf  # an image without proposals ranks last


def test_the_weighted_row_fuses_two_members_and_has_its_own_hash():
    resolved = resolve("two-branch-table5", profile="smoke")
    fused = resolved.cell("weighted-distance")
    assert [m.id for m in fused.members] == ["image-sentence", "region-phrase"]
    assert fused.row.region_phrase_weight == 0.2
    from xmrbench.config import content_hash  # the plain ensemble's hash differs

    assert fused.hash != content_hash({"ensemble": [m.hash for m in fused.members]})
    phrase = resolved.cell("region-phrase").config
    assert phrase.method.name == "phrase_localization" and phrase.loss is None
    assert phrase.data.name == resolved.cell("image-sentence").config.data.name == "synthetic_entities"


@pytest.mark.slow
def test_table5_runs_end_to_end(tmp_path, capsys):
    """Smoke, seed 0 (measured: the image-sentence model rsum 265.6, fused 375.0; chance 31.6)."""
    code, out, err = cli(["reproduce", "two-branch-table5", "--profile", "smoke", "--seeds", "0", "--results",
                          str(tmp_path), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    docs = {p.name.split("--")[0]: json.loads(p.read_text()) for p in (tmp_path / "two-branch-table5").glob("*.json")}
    sweep = {f"weighted-distance-{w}" for w in ("0.1", "0.4", "0.6", "0.8")}
    assert set(docs) == {"image-sentence", "region-phrase", "weighted-distance"} | sweep
    for doc in docs.values():
        assert doc["metrics"]["test"]["rsum"] > 31.6
    assert docs["weighted-distance"]["metrics"]["test"]["rsum"] > 2.5 * 31.6
