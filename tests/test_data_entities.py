"""Tests of phrase-region annotations (xmrbench/data/entities.py) and their synthetic
generator (xmrbench/data/synthetic/entities.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmrbench.data.entities import (
    EntitiesSplit,
    Phrase,
    box_problem,
    iou,
    load_entities,
    offsets_problem,
    write_entities,
)
from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.entities import (
    MAX_PROPOSALS,
    MIN_PROPOSALS,
    caption_phrases,
    generate_entities,
    load_synthetic_entities,
)
from xmrbench.errors import DataError

# ---------------------------------------------------------------------------------
# IoU
# ---------------------------------------------------------------------------------


def _naive_iou(a, b) -> float:
    """IoU of two boxes, written out the long way."""
    left, right = max(a[0], b[0]), min(a[2], b[2])
    top, bottom = max(a[1], b[1]), min(a[3], b[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_iou_hand_checked():
    # two 2x2 squares overlapping in a 1x2 strip: 2 / (4 + 4 - 2)
    assert iou([[0, 0, 2, 2]], [[1, 0, 3, 2]])[0, 0] == pytest.approx(1 / 3)
    assert iou([[0, 0, 1, 1]], [[0, 0, 1, 1]])[0, 0] == 1.0
    assert iou([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0.0
    assert iou([[0, 0, 1, 1]], [[1, 0, 2, 1]])[0, 0] == 0.0  # touching edges
    assert iou([[0, 0, 4, 4]], [[1, 1, 2, 2]])[0, 0] == pytest.approx(1 / 16)  # containment
    assert iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0  # no area: no division by zero
    assert iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iou_matches_a_naive_loop_on_random_boxes(dtype):
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.random((int(rng.integers(1, 12)), 4)).astype(dtype) * 10
        b = rng.random((int(rng.integers(1, 12)), 4)).astype(dtype) * 10
        a[:, 2:] = a[:, :2] + np.abs(a[:, 2:]) * rng.random((len(a), 1))  # some degenerate or thin boxes
        b[:, 2:] = b[:, :2] + np.abs(b[:, 2:])
        got = iou(a, b)
        want = np.array([[_naive_iou(x.astype(np.float64), y.astype(np.float64)) for y in b] for x in a])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert ((got >= 0) & (got <= 1)).all()
        np.testing.assert_allclose(iou(b, a), got.T)  # symmetric


def test_box_and_offset_problems():
    assert box_problem([0, 0, 1, 1], (1, 1)) is None
    assert "no area" in box_problem([0.5, 0, 0.5, 1])
    assert "outside" in box_problem([0, 0, 2, 1], (1, 1))
    assert "not [x0" in box_problem([0, 0, 1])
    assert offsets_problem(np.array([0, 2, 5]), 2, 5) is None
    assert "start at 1" in offsets_problem(np.array([1, 2, 5]), 2, 5)
    assert "decrease at image 1" in offsets_problem(np.array([0, 3, 2]), 2, 2)
    assert "end at 5" in offsets_problem(np.array([0, 2, 5]), 2, 6)
    assert "shape" in offsets_problem(np.array([0, 5]), 2, 5)


# ---------------------------------------------------------------------------------
# Round trip and broken directories
# ---------------------------------------------------------------------------------


def _mini(rng: np.random.Generator) -> dict[str, EntitiesSplit]:
    captions = ["a dog runs", "two dogs and a man", "a man", "a red car", "the car", "a car parked"]
    phrases = [[Phrase(0, 2, "dog", "animals")], [Phrase(0, 2, "dog", "animals"), Phrase(3, 5, "man", "people")],
               [Phrase(0, 2, "man", "people")], [Phrase(0, 3, "car", "vehicles")], [Phrase(0, 2, "car")], []]
    entities = [{"dog": np.array([[1, 1, 5, 5], [6, 1, 9, 4]], np.float32), "man": np.array([[0, 0, 3, 9]], np.float32)},
                {"car": np.array([[10, 10, 50, 30]], np.float32)}]
    boxes = rng.random((8, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2] + 1
    return {"test": EntitiesSplit(
        name="test", captions=captions, captions_per_image=3, phrases=phrases, entities=entities,
        sizes=np.array([[10, 10], [64, 48]], np.float64), proposal_offsets=np.array([0, 3, 8]),
        proposal_boxes=boxes, proposal_feats=rng.random((8, 6), dtype=np.float32))}


@pytest.mark.parametrize("features", ["npy", "h5"])
def test_round_trip(tmp_path, features):
    want = _mini(np.random.default_rng(0))["test"]
    write_entities(tmp_path, {"test": want}, features=features)
    got = load_entities(tmp_path, captions_per_image=3)["test"]
    assert got.captions == want.captions and got.phrases == want.phrases
    for a, b in zip(got.entities, want.entities):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(got.sizes, want.sizes)
    boxes, feats = got.proposals(1)
    np.testing.assert_array_equal(boxes, want.proposal_boxes[3:8])
    np.testing.assert_array_equal(feats, want.proposal_feats[3:8])
    np.testing.assert_array_equal(got.phrase_boxes(1, 0), want.entities[0]["dog"])
    assert got.phrases[1][1].text(got.captions[1]) == "a man"


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture()
def root(tmp_path) -> Path:
    write_entities(tmp_path / "e", _mini(np.random.default_rng(1)))
    return tmp_path / "e"


def _rewrite_line(path: Path, line: int, value) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = json.dumps(value)
    path.write_text("\n".join(lines) + "\n")


def test_phrase_naming_a_missing_entity(root):
    _rewrite_line(root / "test_phrases.jsonl", 4, [{"start": 0, "end": 2, "entity": "bus"}])
    msg = _error(load_entities, root, captions_per_image=3)
    assert "test_phrases.jsonl: line 4" in msg and "entity 'bus'" in msg


def test_span_outside_its_caption(root):
    _rewrite_line(root / "test_phrases.jsonl", 1, [{"start": 1, "end": 9, "entity": "dog"}])
    assert "line 1: span [1, 9)" in _error(load_entities, root, captions_per_image=3)


def test_box_outside_the_image_or_without_area(root):
    _rewrite_line(root / "test_entities.jsonl", 2, {"size": [64, 48], "entities": {"car": [[10, 10, 70, 30]]}})
    assert "line 2: entity 'car': box" in _error(load_entities, root, captions_per_image=3)
    _rewrite_line(root / "test_entities.jsonl", 2, {"size": [64, 48], "entities": {"car": [[10, 10, 10, 30]]}})
    assert "no area" in _error(load_entities, root, captions_per_image=3)


def test_offsets_and_proposal_rows(root):
    np.save(root / "test_proposal_offsets.npy", np.array([0, 4, 7]))
    assert "test_proposal_offsets.npy: offsets end at 7" in _error(load_entities, root, captions_per_image=3)
    np.save(root / "test_proposal_offsets.npy", np.array([0, 3, 8]))
    np.save(root / "test_proposal_feats.npy", np.zeros((7, 6), np.float32))
    assert "one row per proposal box" in _error(load_entities, root, captions_per_image=3)


def test_line_counts(root):
    (root / "test_phrases.jsonl").write_text("[]\n" * 5)
    assert "5 lines for 6 captions" in _error(load_entities, root, captions_per_image=3)
    assert "6 captions for 2 images" in _error(load_entities, root, captions_per_image=5)
    (root / "test_entities.jsonl").unlink()
    assert "test_entities.jsonl" in _error(load_entities, root, captions_per_image=3)


# ---------------------------------------------------------------------------------
# Synthetic entities
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> dict[str, EntitiesSplit]:
    return load_synthetic_entities(size="tiny")


def test_synthetic_splits_follow_the_world(synthetic):
    from xmrbench.data.synthetic.world import generate_world

    world = generate_world(size="tiny")
    assert list(synthetic) == ["train", "dev", "test"]
    for name, split in synthetic.items():
        assert split.captions == world[name].captions
        for ents, scene in zip(split.entities, world[name].extras["scenes"]):
            assert sorted(ents) == sorted({o["class"] for o in scene["objects"]})
            assert sum(len(b) for b in ents.values()) == len(scene["objects"])


def test_phrases_are_noun_phrases_of_their_entity(synthetic):
    split = synthetic["test"]
    n_phrases = 0
    for j, (cap, phrases) in enumerate(zip(split.captions, split.phrases)):
        assert phrases, f"caption {j} ({cap!r}) has no phrase"
        for p in phrases:
            text = p.text(cap).split()
            n_phrases += 1
            concept = lx.SURFACE_CONCEPTS[[w for w in text if lx.SURFACE_CONCEPTS.get(w, "").startswith("class:")][-1]]
            assert concept == f"class:{p.entity}"
            n_boxes = len(split.entities[j // 5][p.entity])
            plural = text[0] in ("two", "three", "four", "five", "six", "several", "some")
            assert plural == (n_boxes > 1)  # "two dogs" covers both dog boxes
            assert p.type in ("people", "animals", "vehicles", "other")
    assert n_phrases > len(split.captions)


def test_caption_phrases_hand_checked():
    assert caption_phrases("a large wet puppy and two cars parked on the street") == [
        (0, 4, "dog"), (5, 8, "car")]
    assert caption_phrases("a photo of a man sitting next to a bike") == [(3, 6, "man"), (8, 10, "bicycle")]
    assert caption_phrases("a kitchen with the dirty pots") == [(3, 6, "pot")]


def test_proposals_have_the_right_count_and_an_iou_spread(synthetic):
    split = synthetic["test"]
    counts = np.diff(split.proposal_offsets)
    assert counts.min() >= MIN_PROPOSALS and counts.max() <= MAX_PROPOSALS and counts.std() > 20
    best = []
    for i in range(split.n_images):
        boxes, feats = split.proposals(i)
        assert feats.shape == (len(boxes), 128) and (feats >= 0).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes >= 0).all() and (boxes <= 1).all()
        gt = np.concatenate(list(split.entities[i].values()))
        best.append(iou(boxes, gt).max(axis=1))
    best = np.concatenate(best)
    # tight, sloppy and off-object proposals all occur
    assert (best > 0.8).mean() > 0.02 and ((best > 0.3) & (best < 0.6)).mean() > 0.03 and (best < 0.1).mean() > 0.2
    assert 0.8 < split.upper_bound() < 1.0


def test_proposal_features_follow_their_objects(synthetic):
    # a proposal tight on an object is more similar to another tight proposal of the
    # same class (in other images) than to background proposals
    split = synthetic["train"]
    feats, classes, tight = [], [], []
    for i in range(60):
        boxes, f = split.proposals(i)
        for cls, gt in split.entities[i].items():
            overlap = iou(boxes, gt).max(axis=1)
            k = int(np.argmax(overlap))
            if overlap[k] > 0.8:
                feats.append(f[k])
                classes.append(cls)
                tight.append(True)
        bg = np.flatnonzero(iou(boxes, np.concatenate(list(split.entities[i].values()))).max(axis=1) == 0)
        if len(bg):
            feats.append(f[bg[0]])
            classes.append("background")
            tight.append(False)
    x = np.asarray(feats)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    classes = np.asarray(classes)
    same, other = [], []
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            if classes[a] != "background" and classes[b] != "background":
                (same if classes[a] == classes[b] else other).append(sims[a, b])
    assert np.mean(same) > np.mean(other) + 0.05


def test_written_bytes_are_deterministic(tmp_path):
    from xmrbench.data.synthetic.entities import write_synthetic_entities

    a = write_synthetic_entities(tmp_path / "a", size="tiny", seed=2, region_dim=8)
    b = write_synthetic_entities(tmp_path / "b", size="tiny", seed=2, region_dim=8)
    for p in sorted(a.iterdir()):
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert len(generate_entities(size="tiny", seed=3, region_dim=8)["dev"].captions) == 500
