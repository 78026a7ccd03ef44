"""Tests of the synthetic world (xmrbench/data/synthetic/) and its cache (xmrbench/data/cache.py)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xmrbench.data import cache
from xmrbench.data.precomp import fingerprint_dir, load_precomp
from xmrbench.data.synthetic import (
    GENERATOR_VERSION,
    SIZES,
    cache_key,
    generate_world,
    load_synthetic,
    write_synthetic,
)
from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic import load as synthetic_load
from xmrbench.data.synthetic.features import FeatureSpace
from xmrbench.data.synthetic.world import scene_relations
from xmrbench.errors import ConfigError

# sha256 over (name, bytes) of every file ``write_synthetic(size="tiny", seed=0)`` writes
# at the default dims. Change it only together with GENERATOR_VERSION.
GOLDEN_TINY_SHA256 = "48fc3862d32236fded1346dd104fccb79ec1a0fb60860b8903ef0615b81104f1"
GOLDEN_VERSION = 2

CPI = 5


def _dir_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="module")
def world():
    return generate_world(size="tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("tiny") / "w", size="tiny", seed=0)


# ---------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------


def test_same_seed_same_bytes(tiny_dir, tmp_path):
    again = write_synthetic(tmp_path / "again", size="tiny", seed=0)
    assert _dir_sha256(again) == _dir_sha256(tiny_dir)


def test_different_seed_different_bytes(tiny_dir, tmp_path):
    other = write_synthetic(tmp_path / "other", size="tiny", seed=1)
    assert _dir_sha256(other) != _dir_sha256(tiny_dir)


def test_golden_hash_of_the_tiny_world(tiny_dir):
    assert GENERATOR_VERSION == GOLDEN_VERSION, "update GOLDEN_TINY_SHA256 together with GENERATOR_VERSION"
    assert _dir_sha256(tiny_dir) == GOLDEN_TINY_SHA256


def test_bytes_do_not_depend_on_the_thread_count(tiny_dir, tmp_path):
    code = (
        "import sys; from xmrbench.data.synthetic import write_synthetic; "
        "write_synthetic(sys.argv[1], size='tiny', seed=0)"
    )
    env = {**os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "one")], env=env, check=True)
    assert _dir_sha256(tmp_path / "one") == _dir_sha256(tiny_dir)


def test_in_memory_world_equals_what_is_written(world, tiny_dir):
    data = load_precomp(tiny_dir)
    for name, want in world.items():
        got = data.split(name)
        np.testing.assert_array_equal(got.regions, want.regions)
        np.testing.assert_array_equal(got.global_feats, want.global_feats)
        assert got.captions == want.captions
        assert got.extras["scenes"] == want.extras["scenes"]
        for key in ("region_boxes", "region_scores", "region_object", "region_clutter"):
            np.testing.assert_array_equal(got.extras[key], want.extras[key])


# ---------------------------------------------------------------------------------
# Splits, shapes, alignment
# ---------------------------------------------------------------------------------


def test_size_table():
    assert (SIZES["tiny"].train, SIZES["tiny"].dev, SIZES["tiny"].n_test, SIZES["tiny"].testall) == (400, 100, 100, 500)
    assert (SIZES["small"].train, SIZES["small"].dev, SIZES["small"].n_test, SIZES["small"].testall) == (
        5000, 1000, 1000, 5000)
    assert (SIZES["medium"].train, SIZES["medium"].dev, SIZES["medium"].n_test, SIZES["medium"].testall) == (
        30000, 1000, 1000, 5000)


def test_tiny_shapes_and_dtypes(world):
    assert list(world) == ["train", "dev", "test", "testall"]
    sizes = {"train": 400, "dev": 100, "test": 100, "testall": 500}
    for name, split in world.items():
        n = sizes[name]
        assert split.regions.shape == (n, 36, 128) and split.regions.dtype == np.float32
        assert split.global_feats.shape == (n, 256) and split.global_feats.dtype == np.float32
        assert split.n_captions == n * CPI and split.captions_per_image == CPI
        assert len(split.extras["scenes"]) == n
        assert split.extras["region_boxes"].shape == (n, 36, 4)
        assert np.isfinite(split.regions).all() and (split.regions >= 0).all()
        assert np.isfinite(split.global_feats).all() and (split.global_feats >= 0).all()
        # 4-decimal values, so last-bit differences between machines cannot show
        np.testing.assert_array_equal(np.round(split.global_feats.astype(np.float64), 4),
                                      split.global_feats.astype(np.float64).round(4))


def test_other_dims():
    w = generate_world(size="tiny", seed=3, region_dim=16, global_dim=8, regions=10)
    assert w["dev"].regions.shape == (100, 10, 16) and w["dev"].global_feats.shape == (100, 8)
    assert (w["dev"].extras["region_scores"][:, :-1] >= w["dev"].extras["region_scores"][:, 1:]).all()


def test_test_is_the_first_fold_of_testall(world):
    test, testall = world["test"], world["testall"]
    np.testing.assert_array_equal(test.regions, testall.regions[:100])
    np.testing.assert_array_equal(test.global_feats, testall.global_feats[:100])
    assert test.captions == testall.captions[:500]
    assert test.extras["scenes"] == testall.extras["scenes"][:100]
    np.testing.assert_array_equal(test.extras["region_object"], testall.extras["region_object"][:100])


def test_caption_j_describes_image_j_div_5(world):
    for split in world.values():
        scenes = split.extras["scenes"]
        for j, cap in enumerate(split.captions):
            named = set(lx.parse_concepts(cap))
            assert named, cap
            assert named <= lx.scene_concepts(scenes[j // CPI]), (j, cap)


def test_captions_are_plain_lower_case_and_differ_per_image(world):
    word_re = re.compile(r"^[a-z]+( [a-z]+)*$")
    for split in world.values():
        for i in range(split.n_images):
            caps = split.captions[i * CPI : (i + 1) * CPI]
            assert len(set(caps)) == CPI
            assert all(word_re.match(c) for c in caps), caps


def test_unknown_size_and_bad_params():
    with pytest.raises(ConfigError, match="tiny, small, medium"):
        generate_world(size="huge")
    with pytest.raises(ConfigError, match="seed"):
        generate_world(size="tiny", seed=-1)
    with pytest.raises(ConfigError, match="region_dim"):
        generate_world(size="tiny", region_dim=0)


# ---------------------------------------------------------------------------------
# The structure published methods exploit
# ---------------------------------------------------------------------------------


def test_near_duplicates_differ_in_exactly_one_attribute(world):
    for name, split in world.items():
        scenes = split.extras["scenes"]
        dups = [i for i, s in enumerate(scenes) if s["near_duplicate_of"] >= 0]
        block = 100 if name in ("test", "testall") else split.n_images
        assert len(dups) == round(0.05 * block) * (split.n_images // block)
        for i in dups:
            src = scenes[i]["near_duplicate_of"]
            assert src != i and src // block == i // block  # same split, same fold
            a, b = scenes[i], scenes[src]
            assert b["near_duplicate_of"] == -1
            assert a["scene"] == b["scene"] and a["relations"] == b["relations"]
            assert [o["class"] for o in a["objects"]] == [o["class"] for o in b["objects"]]
            assert [o["box"] for o in a["objects"]] == [o["box"] for o in b["objects"]]
            changed = [
                (x, y)
                for oa, ob in zip(a["objects"], b["objects"])
                for x, y in zip(oa["attributes"], ob["attributes"])
                if x != y
            ]
            assert len(changed) == 1
            x, y = changed[0]
            assert lx.ATTRIBUTES[lx.ATTRIBUTE_INDEX[x]].group == lx.ATTRIBUTES[lx.ATTRIBUTE_INDEX[y]].group
            assert not np.array_equal(split.global_feats[i], split.global_feats[src])  # new noise


def test_partial_mentions_counts_relations_and_scenes(world):
    split = world["train"]
    scenes = split.extras["scenes"]
    partial = sum(
        len({c for c in lx.parse_concepts(cap) if c.startswith("class:")})
        < len({o["class"] for o in scenes[j // CPI]["objects"]})
        for j, cap in enumerate(split.captions)
    )
    assert partial > 0.4 * split.n_captions
    text = " ".join(split.captions)
    for phrase in (" two ", " next to ", " riding ", " on the beach", " there is ", " in a kitchen"):
        assert phrase in f" {text} ", phrase


def test_synonyms_are_used(world):
    words = Counter(w for split in world.values() for c in split.captions for w in c.split())
    pairs = [c.nouns for c in lx.CLASSES if len(c.nouns) > 1] + [a.words for a in lx.ATTRIBUTES if len(a.words) > 1]
    both = [p for p in pairs if words[p[0]] and words[p[1]]]
    assert len(both) > 0.6 * len(pairs)
    assert words["puppy"] and words["dog"] and words["large"] and words["big"]


def test_relations_are_true_of_the_boxes(world):
    for s in world["train"].extras["scenes"]:
        assert s["relations"] == scene_relations(s["objects"])
        for i, rel, j in s["relations"]:
            a, b = s["objects"][i]["box"], s["objects"][j]["box"]
            if rel == "left of":
                assert a[2] <= b[0]
            elif rel == "above":
                assert a[3] <= b[1]
            elif rel == "riding":
                assert s["objects"][i]["class"] in {c.name for c in lx.CLASSES if c.category == "people"}


def test_regions_follow_their_objects(world):
    split = world["train"]
    obj, clu = split.extras["region_object"], split.extras["region_clutter"]
    scores = split.extras["region_scores"]
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for i, s in enumerate(split.extras["scenes"]):
        counts = np.bincount(obj[i][obj[i] >= 0], minlength=len(s["objects"]))
        assert len(counts) == len(s["objects"]) and (counts >= 1).all() and (counts <= 4).all()
        assert (clu[i] < len(s["clutter"])).all() and len(set(clu[i][clu[i] >= 0])) == len(s["clutter"])
    # object proposals come first, mostly
    assert (obj[:, 0] >= 0).mean() > 0.95
    # and a proposal overlaps its object
    boxes = split.extras["region_boxes"]
    i, r = np.nonzero(obj >= 0)
    gt = np.array([split.extras["scenes"][a]["objects"][obj[a, b]]["box"] for a, b in zip(i, r)])
    inside = np.minimum(boxes[i, r, 2:], gt[:, 2:]) - np.maximum(boxes[i, r, :2], gt[:, :2])
    assert ((inside > 0).all(axis=1)).mean() > 0.9


def test_classes_of_one_super_category_are_close():
    space = FeatureSpace.build(0, region_dim=8, global_dim=8)
    vecs = space.classes[:-1] / np.linalg.norm(space.classes[:-1], axis=1, keepdims=True)
    cos = vecs @ vecs.T
    cat = np.array([lx.CATEGORY_INDEX[c.category] for c in lx.CLASSES])
    same = (cat[:, None] == cat[None, :]) & ~np.eye(len(cat), dtype=bool)
    assert cos[same].mean() > 0.5 > 0.1 > abs(cos[cat[:, None] != cat[None, :]].mean())


def _t2i_recall(sims: np.ndarray, k: int) -> float:
    """sims (N_txt, N_img); caption j belongs to image j // 5."""
    gt = np.arange(sims.shape[0]) // CPI
    rank = (sims > sims[np.arange(len(gt)), gt][:, None]).sum(axis=1)
    return float((rank < k).mean())


def test_bag_of_concepts_oracle_retrieves_far_above_chance(world):
    split = world["test"]
    concepts = sorted(set(lx.SURFACE_CONCEPTS.values()))
    index = {c: i for i, c in enumerate(concepts)}

    def onehot(names):
        v = np.zeros(len(index))
        v[[index[c] for c in names]] = 1
        return v

    img = np.stack([onehot(lx.scene_concepts(s)) for s in split.extras["scenes"]])
    txt = np.stack([onehot(set(lx.parse_concepts(c))) for c in split.captions])
    sims = txt @ img.T - 0.1 * img.sum(axis=1)[None, :]  # overlap, ties broken towards simpler scenes
    assert _t2i_recall(sims, 1) > 0.5  # chance: 0.01
    assert _t2i_recall(sims, 10) > 0.9


def test_ridge_from_global_features_to_words_beats_chance(world):
    train, test = world["train"], world["test"]
    vocab = {w: i for i, w in enumerate(sorted({w for c in train.captions for w in c.split()}))}

    def bow(caps):
        out = np.zeros((len(caps), len(vocab)))
        for j, c in enumerate(caps):
            for w in c.split():
                if w in vocab:
                    out[j, vocab[w]] = 1.0
        return out

    x = train.global_feats.astype(np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    x = (x - mu) / sd
    y = bow(train.captions).reshape(train.n_images, CPI, -1).mean(axis=1)
    w = np.linalg.solve(x.T @ x + 300.0 * np.eye(x.shape[1]), x.T @ y)
    pred = ((test.global_feats - mu) / sd) @ w
    txt = bow(test.captions)
    sims = (txt / (np.linalg.norm(txt, axis=1, keepdims=True) + 1e-9)) @ (
        pred / np.linalg.norm(pred, axis=1, keepdims=True)).T
    chance = 10 / test.n_images
    assert _t2i_recall(sims, 10) > 3 * chance


# ---------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------


@pytest.fixture()
def counted(monkeypatch, tmp_path):
    """Point the cache at tmp_path and count world generations."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    real = synthetic_load.generate_world

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(synthetic_load, "generate_world", counting)
    return calls


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "xmrbench"


def test_load_synthetic_goes_through_the_precomp_loader(counted, tmp_path, world):
    data = load_synthetic(size="tiny")
    root = tmp_path / "cache" / "synthetic" / cache_key(size="tiny", seed=0, region_dim=128, global_dim=256, regions=36)
    assert data.info["root"] == str(root) and cache.is_complete(root)
    assert data.name == "synthetic-tiny"
    assert data.fingerprint == fingerprint_dir(root)
    assert data.info["source"] == "synthetic" and data.info["generator_version"] == GENERATOR_VERSION
    assert (data.info["size"], data.info["seed"], data.info["region_dim"], data.info["global_dim"]) == (
        "tiny", 0, 128, 256)
    assert data.info["splits"]["testall"]["images"] == 500
    test = data.split("test")
    assert isinstance(test.regions, np.memmap)
    np.testing.assert_array_equal(test.global_feats, world["test"].global_feats)


def test_second_load_reuses_the_cache(counted):
    first = load_synthetic(size="tiny")
    marker = Path(first.info["root"]) / cache.MARKER
    stamp = marker.stat().st_mtime_ns
    second = load_synthetic(size="tiny")
    assert len(counted) == 1
    assert marker.stat().st_mtime_ns == stamp and second.fingerprint == first.fingerprint
    load_synthetic(size="tiny", seed=1)
    assert len(counted) == 2


def test_incomplete_entry_is_regenerated(counted):
    first = load_synthetic(size="tiny")
    root = Path(first.info["root"])
    (root / cache.MARKER).unlink()
    (root / "train_caps.txt").write_text("truncated\n", encoding="utf-8")
    again = load_synthetic(size="tiny")
    assert len(counted) == 2 and cache.is_complete(root)
    assert again.fingerprint == first.fingerprint
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_cache_dir_argument(counted, tmp_path):
    data = load_synthetic(size="tiny", cache_dir=tmp_path / "elsewhere")
    assert Path(data.info["root"]).parent == tmp_path / "elsewhere" / "synthetic"


def test_materialize_uses_the_winner_of_a_race(tmp_path):
    dest = tmp_path / "entry"

    def build(tmp: Path) -> None:
        (tmp / "mine.txt").write_text("mine", encoding="utf-8")
        # another process finishes first, while we are still building
        other = tmp_path / "other"
        other.mkdir()
        (other / "theirs.txt").write_text("theirs", encoding="utf-8")
        (other / cache.MARKER).write_text("{}", encoding="utf-8")
        os.rename(other, dest)

    assert cache.materialize(dest, build) == dest
    assert sorted(p.name for p in dest.iterdir()) == [cache.MARKER, "theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_materialize_propagates_build_errors(tmp_path):
    def build(tmp: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.materialize(tmp_path / "entry", build)
    assert list(tmp_path.iterdir()) == []
