"""Tests of labelled cross-modal feature sets (xmrbench/data/labelled.py) and their
synthetic generator (xmrbench/data/synthetic/labelled.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xmrbench.data.labelled import (
    LabelledData,
    LabelledSplit,
    labelled_from_arrays,
    load_labelled,
    write_labelled,
)
from xmrbench.data.synthetic.labelled import (
    LABELLED_SPECS,
    PASCAL_CLASSES,
    _sizes,
    generate_labelled,
    load_synthetic_labelled,
)
from xmrbench.errors import ConfigError, DataError

CLASSES = ["art", "biology", "history"]


def _data(rng: np.random.Generator, *, multi: bool = False, sparse: bool = False) -> LabelledData:
    splits = {}
    for name, n in (("train", 12), ("test", 5)):
        img = rng.random((n, 6), dtype=np.float32)
        txt = rng.random((n, 9), dtype=np.float32)
        txt[txt < 0.6] = 0.0
        if multi:
            labels = (rng.random((n, 3)) < 0.5).astype(np.uint8)
            labels[np.arange(n), rng.integers(0, 3, n)] = 1  # at least one label each
        else:
            labels = rng.integers(0, 3, n)
        splits[name] = (img, sp.csr_matrix(txt) if sparse else txt, labels)
    return labelled_from_arrays("mini", splits, CLASSES, image_feature="6-d", text_feature="9-d")


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_round_trip(tmp_path, multi, sparse):
    data = _data(np.random.default_rng(0), multi=multi, sparse=sparse)
    write_labelled(tmp_path, data)
    names = sorted(p.name for p in tmp_path.iterdir())
    txt_ext = "npz" if sparse else "npy"
    assert names == sorted(["meta.json", *[f"{s}_{k}" for s in ("train", "test")
                                          for k in ("img.npy", f"txt.{txt_ext}", "labels.npy")]])
    got = load_labelled(tmp_path)
    assert got.name == "mini" and got.classes == CLASSES and got.label_kind == ("multi" if multi else "single")
    assert got.meta["image_feature"] == "6-d" and got.fingerprint
    for name, want in data.splits.items():
        split = got.split(name)
        np.testing.assert_array_equal(split.image_features(), want.image_features())
        np.testing.assert_array_equal(split.text_features(), want.text_features())
        np.testing.assert_array_equal(split.labels, want.labels)
        index = np.array([3, 0, 3])
        np.testing.assert_array_equal(split.text_features(index), want.text_features()[index])
        assert isinstance(split.img_feats, np.memmap)
    with pytest.raises(DataError, match="no split 'dev'"):
        got.split("dev")


def test_label_matrix_is_one_hot_for_single_labels():
    split = LabelledSplit("s", np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32), np.array([2, 0, 2]), 3)
    np.testing.assert_array_equal(split.label_matrix(), [[0, 0, 1], [1, 0, 0], [0, 0, 1]])


def _error(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture()
def root(tmp_path) -> Path:
    write_labelled(tmp_path / "d", _data(np.random.default_rng(1)))
    return tmp_path / "d"


def test_meta_problems(root):
    (root / "meta.json").unlink()
    assert "no meta.json" in _error(load_labelled, root)
    (root / "meta.json").write_text('{"layout": "labelled", "classes": [], "label_kind": "single"}')
    assert "classes must be a non-empty list" in _error(load_labelled, root)
    (root / "meta.json").write_text('{"layout": "labelled", "classes": ["a", "b", "c"], "label_kind": "both"}')
    assert "label_kind" in _error(load_labelled, root)


@pytest.mark.parametrize(
    ("fname", "array", "needle"),
    [
        ("test_labels.npy", np.array([0, 1, 3, 0, 1]), "row 2 holds class 3"),
        ("test_labels.npy", np.array([0, 1, -1, 0, 1]), "row 2 holds class -1"),
        ("test_labels.npy", np.array([0.0, 1, 2, 0, 1]), "float64"),
        ("test_labels.npy", np.array([0, 1, 2]), "3 rows but test_img.npy has 5"),
        ("test_labels.npy", np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1]], "multi labels but meta.json says"),
        ("test_img.npy", np.ones((5, 6), np.float64), "float64"),
        ("test_img.npy", np.ones((5, 7), np.float32), "7-d but train_img.npy has 6"),
        ("test_txt.npy", np.ones((4, 9), np.float32), "4 rows"),
    ],
)
def test_broken_arrays_name_file_and_row(root, fname, array, needle):
    np.save(root / fname, array)
    msg = _error(load_labelled, root)
    assert needle in msg
    assert fname in msg or "test_labels.npy" in msg or "test_img.npy" in msg


def test_multi_hot_problems(tmp_path):
    write_labelled(tmp_path, _data(np.random.default_rng(2), multi=True))
    labels = np.load(tmp_path / "test_labels.npy")
    labels[3] = 0
    np.save(tmp_path / "test_labels.npy", labels)
    assert "row 3 has no label" in _error(load_labelled, tmp_path)
    labels[3] = 2
    np.save(tmp_path / "test_labels.npy", labels)
    assert "row 3 is not 0/1" in _error(load_labelled, tmp_path)


def test_nan_in_sparse_and_dense_features(tmp_path):
    data = _data(np.random.default_rng(3), sparse=True)
    csr = data.splits["test"].txt_feats.tocsr().copy()
    row_start = csr.indptr[2]
    csr.data[row_start] = np.nan
    data.splits["test"].txt_feats = csr
    write_labelled(tmp_path, data)
    assert "test_txt.npz: row 2 holds NaN" in _error(load_labelled, tmp_path)
    img = np.load(tmp_path / "train_img.npy")
    img[7, 0] = np.inf
    np.save(tmp_path / "train_img.npy", img)
    assert "train_img.npy: row 7 holds NaN or inf" in _error(load_labelled, tmp_path)


def test_missing_files_and_two_text_formats(root):
    sp.save_npz(root / "test_txt.npz", sp.csr_matrix(np.ones((5, 9), np.float32)))
    assert "both exist" in _error(load_labelled, root)
    (root / "test_txt.npz").unlink()
    (root / "test_labels.npy").unlink()
    assert "no labels (test_labels.npy)" in _error(load_labelled, root)
    (root / "test_img.npy").unlink()
    assert "lists split 'test'" in _error(load_labelled, root)


# ---------------------------------------------------------------------------------
# Synthetic labelled sets
# ---------------------------------------------------------------------------------


def test_paper_sizes_are_acmr_table1():
    table1 = {"wikipedia": (1300, 1566, 10), "pascal": (800, 200, 20), "nus-wide-10k": (8000, 1000, 10),
              "mscoco": (66226, 16557, 500)}
    for name, (train, test, _labels) in table1.items():
        spec = LABELLED_SPECS[name]
        assert _sizes(spec, "paper") == (train, test)
        assert spec.image_dim == 4096
    assert (LABELLED_SPECS["wikipedia"].text_dim, LABELLED_SPECS["pascal"].text_dim,
            LABELLED_SPECS["nus-wide-10k"].text_dim, LABELLED_SPECS["mscoco"].text_dim) == (3000, 1000, 1000, 3000)
    assert LABELLED_SPECS["wikipedia"].shallow == (128, 10)
    assert len(PASCAL_CLASSES) == 20 and LABELLED_SPECS["mscoco"].max_labels == 500


@pytest.mark.parametrize(
    ("name", "variant", "dims", "n_classes", "multi"),
    [
        ("wikipedia", "deep", (4096, 3000), 10, False),
        ("wikipedia", "shallow", (128, 10), 10, False),
        ("pascal", "deep", (4096, 1000), 20, False),
        ("nus-wide-10k", "deep", (4096, 1000), 10, True),
    ],
)
def test_synthetic_sets_through_the_loader(name, variant, dims, n_classes, multi):
    data = load_synthetic_labelled(name, variant=variant, size="tiny")
    assert len(data.classes) == n_classes and data.label_kind == ("multi" if multi else "single")
    assert data.meta["source"] == "synthetic" and data.meta["variant"] == variant
    train, test = data.split("train"), data.split("test")
    assert (train.n, test.n) == (200, 100)
    assert train.img_feats.shape[1] == dims[0] and train.txt_feats.shape[1] == dims[1]
    for split in (train, test):
        img, txt = split.image_features(), split.text_features()
        assert np.isfinite(img).all() and (img >= 0).all() and np.isfinite(txt).all()
        if variant == "shallow":  # histograms and topic proportions
            np.testing.assert_allclose(img.sum(1), 1.0, atol=2e-3)
            np.testing.assert_allclose(txt.sum(1), 1.0, atol=2e-3)
        else:  # tf-idf rows are L2-normalised
            np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-3)
    assert sp.issparse(train.txt_feats) == (variant == "deep")


def test_mscoco_shape_has_a_large_multi_label_set():
    data = generate_labelled("mscoco", size="tiny")
    train = data.split("train")
    assert train.multi_label and 61 < len(data.classes) <= 500
    assert data.classes[:2] == ["dog", "cat"] and " " in data.classes[-1]  # classes, then attribute-class pairs
    assert train.labels.sum(1).min() >= 1 and train.img_feats.shape[1] == 4096


def _centroid_accuracy(train: np.ndarray, test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, c: int) -> float:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mu) / sd, (test - mu) / sd
    cent = np.stack([train[y_train == k].mean(0) if (y_train == k).any() else np.zeros(train.shape[1])
                     for k in range(c)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True) + 1e-9
    return float((np.argmax(test @ cent.T, axis=1) == y_test).mean())


def test_labels_are_predictable_from_both_modalities_but_not_trivially():
    deep = generate_labelled("wikipedia", size="tiny")
    shallow = generate_labelled("wikipedia", variant="shallow", size="tiny")
    acc = {}
    for key, data in (("deep", deep), ("shallow", shallow)):
        tr, te = data.split("train"), data.split("test")
        chance = np.bincount(te.labels).max() / te.n
        acc[key] = _centroid_accuracy(tr.image_features(), te.image_features(), tr.labels, te.labels, 10)
        txt = _centroid_accuracy(tr.text_features(), te.text_features(), tr.labels, te.labels, 10)
        assert acc[key] > 2 * chance and txt > 2 * chance
    # 30% of the images show another category: images cannot be perfect, and the
    # bag of visual words is weaker than the deep feature
    assert acc["deep"] < 0.95 and acc["shallow"] < acc["deep"]


def test_bad_names():
    with pytest.raises(ConfigError, match="known: wikipedia"):
        generate_labelled("imagenet")
    with pytest.raises(ConfigError, match="no shallow variant"):
        generate_labelled("pascal", variant="shallow", size="tiny")
    with pytest.raises(ConfigError, match="size"):
        load_synthetic_labelled("pascal", size="huge")


def test_same_seed_same_files(tmp_path):
    from xmrbench.data.synthetic.labelled import write_synthetic_labelled

    a = write_synthetic_labelled(tmp_path / "a", "pascal", size="tiny", seed=4)
    b = write_synthetic_labelled(tmp_path / "b", "pascal", size="tiny", seed=4)
    for p in sorted(a.iterdir()):
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    meta = json.loads((a / "meta.json").read_text())
    assert meta["layout"] == "labelled" and meta["seed"] == 4
