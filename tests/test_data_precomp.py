"""Tests of the precomp reader and writer (xmrbench/data/precomp.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmrbench.data import precomp
from xmrbench.data.dataset import Split
from xmrbench.data.precomp import (
    check_finite,
    fingerprint_dir,
    load_precomp,
    write_precomp,
)
from xmrbench.errors import DataError

CPI = 5


def _split(name: str, n: int, rng: np.random.Generator, *, regions=True, global_feats=True) -> Split:
    return Split(
        name=name,
        captions=[f"caption {i} of image {i // CPI} in {name}" for i in range(n * CPI)],
        captions_per_image=CPI,
        regions=rng.random((n, 4, 6), dtype=np.float32) if regions else None,
        global_feats=rng.random((n, 8), dtype=np.float32) if global_feats else None,
        extras={
            "scenes": [{"scene": "beach", "objects": [{"class": "dog", "box": [0.1, 0.2, 0.3, 0.4]}], "i": i}
                       for i in range(n)],
            "region_boxes": rng.random((n, 4, 4), dtype=np.float32),
        },
    )


@pytest.fixture()
def splits() -> dict[str, Split]:
    rng = np.random.default_rng(0)
    return {"train": _split("train", 6, rng), "dev": _split("dev", 3, rng), "test": _split("test", 2, rng)}


@pytest.fixture()
def root(tmp_path: Path, splits) -> Path:
    write_precomp(tmp_path / "data", splits)
    return tmp_path / "data"


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _load_split(root: Path, name: str, **kw) -> Split:
    return load_precomp(root, **kw).split(name)


# ---------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------


def test_round_trip_gives_identical_arrays_captions_and_extras(root, splits):
    data = load_precomp(root)
    assert data.split_names == ["train", "dev", "test"]
    for name, want in splits.items():
        got = data.split(name)
        assert isinstance(got.regions, np.memmap) and isinstance(got.global_feats, np.memmap)
        np.testing.assert_array_equal(got.regions, want.regions)
        np.testing.assert_array_equal(got.global_feats, want.global_feats)
        assert got.captions == want.captions
        assert got.extras["scenes"] == want.extras["scenes"]
        np.testing.assert_array_equal(got.extras["region_boxes"], want.extras["region_boxes"])
        np.testing.assert_array_equal(got.caption_image(), np.arange(len(want.captions)) // CPI)


def test_written_files_follow_the_layout(root):
    names = sorted(p.name for p in root.iterdir())
    assert "train_ims.npy" in names and "train_global.npy" in names and "train_caps.txt" in names
    assert "train_scenes.jsonl" in names and "train_region_boxes.npy" in names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    text = (root / "dev_caps.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert len(text.split("\n")) == 3 * CPI + 1
    assert np.load(root / "train_ims.npy").dtype == np.float32
    lines = (root / "dev_scenes.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]


def test_info_counts_come_from_headers(root):
    data = load_precomp(root, name="mini")
    assert data.name == "mini"
    assert data.info["source"] == "precomp" and data.info["root"] == str(root)
    assert data.info["splits"]["train"] == {
        "images": 6,
        "captions": 30,
        "region_shape": [4, 6],
        "region_dtype": "float32",
        "global_dim": 8,
        "global_dtype": "float32",
    }
    assert data.fingerprint == fingerprint_dir(root)


def test_splits_load_lazily(root):
    data = load_precomp(root)
    (root / "train_caps.txt").write_text("\n" * 30, encoding="utf-8")  # broken after opening
    data.split("dev")  # other splits still load
    with pytest.raises(DataError):
        data.split("train")


def test_mmap_false_loads_into_memory(root):
    got = _load_split(root, "dev", mmap=False)
    assert isinstance(got.regions, np.ndarray) and not isinstance(got.regions, np.memmap)


def test_any_split_names_and_selection(tmp_path):
    rng = np.random.default_rng(1)
    write_precomp(tmp_path, {"zeta": _split("zeta", 2, rng), "testall": _split("testall", 3, rng),
                             "alpha": _split("alpha", 1, rng), "train": _split("train", 2, rng)})
    assert load_precomp(tmp_path).split_names == ["train", "testall", "alpha", "zeta"]
    data = load_precomp(tmp_path, splits=["zeta"])
    assert data.split_names == ["zeta"] and data.split("zeta").n_images == 2
    msg = _error(load_precomp, tmp_path, splits=["dev"])
    assert "dev" in msg and "alpha" in msg


def test_split_with_only_global_or_only_regions(tmp_path):
    rng = np.random.default_rng(2)
    write_precomp(tmp_path, {"a": _split("a", 2, rng, regions=False), "b": _split("b", 2, rng, global_feats=False)})
    data = load_precomp(tmp_path)
    assert data.split("a").regions is None and data.split("a").global_feats.shape == (2, 8)
    assert data.split("b").global_feats is None and data.info["splits"]["b"]["global_dim"] is None


def test_rewrite_removes_stale_files(root, splits):
    dev = splits["dev"]
    write_precomp(root, {"dev": Split("dev", dev.captions, CPI, regions=dev.regions)}, extras=False)
    assert not (root / "dev_global.npy").exists()
    assert not (root / "dev_scenes.jsonl").exists() and not (root / "dev_region_boxes.npy").exists()
    got = _load_split(root, "dev")
    assert got.global_feats is None and got.extras == {}


def test_float16_is_accepted_and_reported(tmp_path):
    split = Split("dev", ["a b"] * 10, CPI, regions=np.ones((2, 3, 4), dtype=np.float16))
    write_precomp(tmp_path, {"dev": split})
    data = load_precomp(tmp_path)
    assert data.info["splits"]["dev"]["region_dtype"] == "float16"
    assert data.split("dev").regions.dtype == np.float16


def test_write_rejects_multi_line_captions(tmp_path):
    split = Split("dev", ["a\nb"] + ["c"] * 4, CPI, global_feats=np.ones((1, 2), dtype=np.float32))
    msg = _error(write_precomp, tmp_path, {"dev": split})
    assert "dev_caps.txt" in msg


def test_extras_false_skips_extras_on_load(root):
    assert _load_split(root, "dev", extras=False).extras == {}


# ---------------------------------------------------------------------------------
# Errors: one line, naming the file
# ---------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    assert "nope" in _error(load_precomp, tmp_path / "nope")


def test_no_splits(tmp_path):
    msg = _error(load_precomp, tmp_path)
    assert str(tmp_path) in msg and "no splits" in msg


def test_captions_without_features(root):
    (root / "extra_caps.txt").write_text("a\n" * 5, encoding="utf-8")
    msg = _error(load_precomp, root)
    assert "extra_caps.txt" in msg and "no image features" in msg


def test_caption_count_not_a_multiple(root):
    lines = (root / "dev_caps.txt").read_text(encoding="utf-8").splitlines()
    (root / "dev_caps.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    msg = _error(load_precomp, root)
    assert "dev_caps.txt" in msg and "14 captions" in msg and "multiple of 5" in msg and "3 images" in msg


def test_caption_count_not_equal(root):
    lines = (root / "dev_caps.txt").read_text(encoding="utf-8").splitlines()
    (root / "dev_caps.txt").write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    msg = _error(load_precomp, root)
    assert "dev_caps.txt" in msg and "10 captions for 3 images" in msg and "expected 15" in msg


def test_empty_caption_line_gives_line_number(root):
    lines = (root / "dev_caps.txt").read_text(encoding="utf-8").splitlines()
    lines[6] = "   "
    (root / "dev_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    msg = _error(_load_split, root, "dev")
    assert "dev_caps.txt" in msg and "line 7" in msg


def test_trailing_blank_line_gives_line_number(root):
    with open(root / "dev_caps.txt", "a", encoding="utf-8") as f:
        f.write("\n")
    msg = _error(load_precomp, root)
    assert "dev_caps.txt" in msg and "line 16" in msg


def test_caption_file_without_final_newline_is_fine(root):
    text = (root / "dev_caps.txt").read_text(encoding="utf-8")
    (root / "dev_caps.txt").write_text(text.rstrip("\n"), encoding="utf-8")
    assert len(_load_split(root, "dev").captions) == 15


def test_invalid_utf8(root):
    (root / "dev_caps.txt").write_bytes(b"\xff\xfe bad\n" * 15)
    msg = _error(_load_split, root, "dev")
    assert "dev_caps.txt" in msg and "UTF-8" in msg


@pytest.mark.parametrize(
    ("fname", "array", "needle"),
    [
        ("dev_ims.npy", np.ones((3, 4), dtype=np.float32), "3-D"),
        ("dev_global.npy", np.ones((3, 4, 2), dtype=np.float32), "2-D"),
        ("dev_ims.npy", np.ones((3, 4, 6), dtype=np.float64), "float64"),
        ("dev_global.npy", np.ones((3, 8), dtype=np.int32), "int32"),
        ("dev_global.npy", np.ones((4, 8), dtype=np.float32), "4 rows"),
    ],
)
def test_bad_feature_arrays(root, fname, array, needle):
    np.save(root / fname, array)
    msg = _error(load_precomp, root)
    assert fname in msg and needle in msg


def test_not_an_npy_file(root):
    (root / "dev_ims.npy").write_bytes(b"not numpy at all")
    msg = _error(load_precomp, root)
    assert "dev_ims.npy" in msg and ".npy" in msg


def test_scenes_line_count_mismatch(root):
    (root / "dev_scenes.jsonl").write_text('{"a": 1}\n', encoding="utf-8")
    msg = _error(_load_split, root, "dev")
    assert "dev_scenes.jsonl" in msg and "1 lines for 3 images" in msg


# ---------------------------------------------------------------------------------
# NaN / inf checks
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_check_finite_finds_the_first_bad_row(bad, chunk_rows):
    arr = np.zeros((10, 3, 2), dtype=np.float32)
    arr[7, 1, 0] = bad
    arr[9, 0, 1] = bad
    with pytest.raises(DataError) as info:
        check_finite(arr, where="x_ims.npy", chunk_rows=chunk_rows)
    assert str(info.value) == "x_ims.npy: row 7 holds NaN or inf"


def test_check_finite_passes_clean_and_huge_values():
    arr = np.full((5, 4), np.finfo(np.float32).max, dtype=np.float32)
    check_finite(arr, where="x", chunk_rows=2)
    check_finite(np.zeros((0, 3), dtype=np.float32), where="x")


def test_check_finite_on_rows_subset():
    arr = np.zeros((10, 2), dtype=np.float32)
    arr[4] = np.nan
    check_finite(arr, where="x", rows=[0, 5, 9])
    with pytest.raises(DataError, match="row 4"):
        check_finite(arr, where="x", rows=np.array([9, 4, 0]))


def test_load_checks_features_for_nan(root):
    arr = np.load(root / "train_global.npy")
    arr[3, 2] = np.nan
    np.save(root / "train_global.npy", arr)
    data = load_precomp(root)  # headers only: fine
    msg = _error(data.split, "train")
    assert "train_global.npy" in msg and "row 3" in msg
    assert load_precomp(root, check=False).split("train").n_images == 6


def test_big_files_are_only_sampled(root, monkeypatch):
    arr = np.zeros((50, 2, 6), dtype=np.float32)  # the other splits hold 6-d features
    arr[[0, 17, 49]] = np.nan
    np.save(root / "dev_ims.npy", arr)
    (root / "dev_caps.txt").write_text("a\n" * 250, encoding="utf-8")
    (root / "dev_global.npy").unlink()
    (root / "dev_scenes.jsonl").unlink()
    (root / "dev_region_boxes.npy").unlink()
    monkeypatch.setattr(precomp, "SAMPLE_CHECK_ROWS", 5)
    assert precomp._check_rows(50, 10**12, precomp.FULL_CHECK_BYTES).tolist() == [0, 12, 24, 37, 49]
    msg = _error(_load_split, root, "dev", full_check_bytes=0)
    assert "row 0" in msg  # the sample includes the first and last rows
    arr[[0, 49]] = 0
    np.save(root / "dev_ims.npy", arr)
    _load_split(root, "dev", full_check_bytes=0)  # row 17 is not in the sample
    assert "row 17" in _error(_load_split, root, "dev")


# ---------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_short(root):
    fp = fingerprint_dir(root)
    assert fp == fingerprint_dir(root) and len(fp) == 16 and int(fp, 16) >= 0


def test_fingerprint_ignores_hidden_files(root):
    fp = fingerprint_dir(root)
    (root / ".complete").write_text("anything", encoding="utf-8")
    assert fingerprint_dir(root) == fp


def test_fingerprint_sees_captions_and_features(root):
    fp = fingerprint_dir(root)
    text = (root / "dev_caps.txt").read_text(encoding="utf-8")
    (root / "dev_caps.txt").write_text(text.replace("caption 0", "caption X"), encoding="utf-8")
    fp2 = fingerprint_dir(root)
    assert fp2 != fp
    raw = bytearray((root / "train_ims.npy").read_bytes())
    raw[-1] ^= 1
    (root / "train_ims.npy").write_bytes(bytes(raw))
    assert fingerprint_dir(root) != fp2


def test_fingerprint_samples_big_files(root, monkeypatch):
    monkeypatch.setattr(precomp, "_FINGERPRINT_FULL_BYTES", 64)
    monkeypatch.setattr(precomp, "_FINGERPRINT_BLOCK", 16)
    monkeypatch.setattr(precomp, "_FINGERPRINT_BLOCKS", 4)
    path = root / "train_ims.npy"
    raw = bytearray(path.read_bytes())
    fp = fingerprint_dir(root)
    raw[len(raw) // 2 + 20] ^= 1  # a byte between sampled blocks: unseen (that is the trade-off)
    path.write_bytes(bytes(raw))
    assert fingerprint_dir(root) == fp
    raw[-1] ^= 1  # the last block is always sampled
    path.write_bytes(bytes(raw))
    assert fingerprint_dir(root) != fp
    path.write_bytes(bytes(raw) + b"\0")  # and the size is always hashed
    assert fingerprint_dir(root) != fp


def test_fingerprint_missing_directory(tmp_path):
    assert "nope" in _error(fingerprint_dir, tmp_path / "nope")


# ---------------------------------------------------------------------------------
# Machine-made semantics, tags and un-annotated splits
# ---------------------------------------------------------------------------------


def _with_semantics(split: Split) -> Split:
    n = split.n_images
    split.extras["semantics"] = [f"white dog{i} red car" if i % 3 else "" for i in range(n)]
    split.extras["tags"] = [[["canine", 0.9], ["vehicle", 0.5 - 0.01 * i]] for i in range(n)]
    split.extras["tag_expansion"] = {"dog": ["canine", "animal"], "car": ["vehicle"]}
    split.extras["scene_label"] = np.arange(n, dtype=np.int64) % 4
    split.extras["object_labels"] = (np.arange(n * 6).reshape(n, 6) % 2).astype(np.uint8)
    return split


def test_semantics_tags_and_expansion_round_trip(tmp_path, splits):
    for s in splits.values():
        _with_semantics(s)
    write_precomp(tmp_path, splits)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"train_semantics.txt", "train_tags.jsonl", "tag_expansion.json", "train_scene_label.npy",
            "train_object_labels.npy"} <= names
    data = load_precomp(tmp_path)
    for name, want in splits.items():
        got = data.split(name)
        assert got.extras["semantics"] == want.extras["semantics"]  # empty lines survive
        assert got.extras["tags"] == want.extras["tags"]
        assert got.extras["tag_expansion"] == want.extras["tag_expansion"]
        np.testing.assert_array_equal(got.extras["object_labels"], want.extras["object_labels"])
        np.testing.assert_array_equal(got.extras["scene_label"], want.extras["scene_label"])


def test_tags_are_sorted_on_load_and_checked(root):
    (root / "dev_tags.jsonl").write_text('[["a", 0.1], ["b", 0.7]]\n[]\n[["c", 1]]\n', encoding="utf-8")
    assert _load_split(root, "dev").extras["tags"] == [[["b", 0.7], ["a", 0.1]], [], [["c", 1.0]]]
    for bad, needle in (('[["Dog", 0.5]]', "lower-case"), ('[["dog", 1.5]]', "[0, 1]"), ('[["dog"]]', "pairs"),
                        ('{"dog": 1}', "list")):
        (root / "dev_tags.jsonl").write_text(f"[]\n{bad}\n[]\n", encoding="utf-8")
        msg = _error(_load_split, root, "dev")
        assert "dev_tags.jsonl: line 2" in msg and needle in msg


def test_semantics_line_count_and_expansion_shape(root):
    (root / "dev_semantics.txt").write_text("a dog\n", encoding="utf-8")
    assert "1 lines for 3 images" in _error(_load_split, root, "dev")
    (root / "dev_semantics.txt").unlink()
    (root / "tag_expansion.json").write_text('{"dog": "canine"}', encoding="utf-8")
    assert "tag_expansion.json" in _error(_load_split, root, "dev")


def test_write_rejects_tags_that_break_the_contract(tmp_path, splits):
    splits["dev"].extras["tags"] = [[["Canine", 0.5]]] * 3
    assert "lower-case" in _error(write_precomp, tmp_path, splits)


def test_caption_less_split_is_an_unannotated_pool(tmp_path, splits):
    rng = np.random.default_rng(7)
    pool = Split("pool", [], 0, regions=rng.random((4, 4, 6), dtype=np.float32),
                 extras={"semantics": ["a", "b", "c", "d"]})
    write_precomp(tmp_path, {**splits, "pool": pool})
    assert not (tmp_path / "pool_caps.txt").exists()
    data = load_precomp(tmp_path)
    assert "pool" in data.split_names
    got = data.split("pool")
    assert got.captions_per_image == 0 and got.n_images == 4 and got.captions == []
    assert got.extras["semantics"] == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(got.image_features("regions"), pool.regions)


def test_canonical_split_needs_captions(root):
    (root / "test_caps.txt").unlink()
    msg = _error(load_precomp, root)
    assert "test_ims.npy" in msg and "test_caps.txt is missing" in msg
    bad = Split("test", [], 0, global_feats=np.zeros((2, 3), np.float32))
    assert "needs captions" in _error(write_precomp, root, {"test": bad})


def test_split_needs_features_or_captions():
    with pytest.raises(DataError, match="needs image features"):
        Split("u", [], 0)
