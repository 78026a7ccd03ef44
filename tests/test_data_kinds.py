"""Dataset kinds (xmrbench/data/registry.py): each kind's own data keys, the hashed form
of the data config, the labelled kind end to end (label mAP), the first-n-images view
and the vocabulary file in the run fingerprint."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmrbench.config import HASHED_WHEN_SET, DataConfig
from xmrbench.core.metrics import keys as K
from xmrbench.data.dataset import RowView, Split
from xmrbench.data.hdf5 import H5Array, write_h5_features
from xmrbench.data.labelled import labelled_from_arrays, write_labelled
from xmrbench.data.registry import DATASETS
from xmrbench.data.vocab_file import write_vocab_file
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError, DataError
from xmrbench.provenance.fingerprint import run_fingerprint
from xmrbench.recipe.config import validate_cell_config
from xmrbench.recipe.resolve import resolve

TWO_BRANCH = {"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
              "loss": {"name": "bidirectional_ranking"}}


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_cell_config({**TWO_BRANCH, "data": data}, where="r.yaml")
    text = str(info.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------
# per-kind keys


def test_every_data_key_belongs_to_a_kind_and_every_kind_key_exists():
    fields = set(DataConfig.model_fields) - {"name"}
    declared = {key for kind in DATASETS.values() for key in kind.keys}
    assert declared == fields
    for name, kind in DATASETS.items():
        assert len(set(kind.keys)) == len(kind.keys), name


def test_the_keys_table_of_docs_data_md_matches_the_registry():
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    section = text.split("## Dataset kinds and their keys", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| key |"))
    kinds = [c.strip() for c in header.strip("|").split("|")][1:-1]
    assert sorted(kinds) == sorted(DATASETS)
    documented: dict[str, set[str]] = {kind: set() for kind in kinds}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `data."):
            continue
        key = cells[0].strip("`").removeprefix("data.")
        for kind, mark in zip(kinds, cells[1:]):
            if mark == "yes":
                documented[kind].add(key)
    assert documented == {kind: set(DATASETS[kind].keys) for kind in kinds}


@pytest.mark.parametrize(
    ("data", "key", "kind"),
    [
        ({"name": "precomp", "size": "tiny"}, "data.size", "precomp"),
        ({"name": "precomp", "world_seed": 0}, "data.world_seed", "precomp"),  # a default value is still a key set
        ({"name": "synthetic", "root": "/data"}, "data.root", "synthetic"),
        ({"root": "/data"}, "data.root", "synthetic"),  # no name: the default kind
        ({"name": "labelled", "root": "/data", "vocab_file": "v.json"}, "data.vocab_file", "labelled"),
        ({"name": "labelled", "root": "/data", "captions_per_image": 1}, "data.captions_per_image", "labelled"),
        ({"name": "synthetic", "dev_from_train": 10}, "data.dev_from_train", "synthetic"),
    ],
)
def test_a_key_of_another_kind_is_a_one_line_error_listing_the_kinds_keys(data, key, kind):
    text = _error(data)
    keys = ", ".join(DATASETS[kind].keys)
    assert text == f"r.yaml: {key}: not a key of dataset kind {kind!r} (its keys: {keys})"


def test_unknown_data_keys_names_and_values():
    assert _error({"name": "precomp", "bogus": 1}) == "r.yaml: data.bogus: unknown key"
    assert _error({"name": "nope"}) == "r.yaml: data.name: unknown name 'nope'; known: entities, labelled, precomp, synthetic, synthetic_entities, synthetic_labelled"
    assert _error({"name": 3}).startswith("r.yaml: data.name: expected a string")
    assert _error({"name": "labelled", "dev_from_train": 0}).startswith("r.yaml: data.dev_from_train: ")
    assert _error({"name": "precomp", "captions_per_image": 2, "sparse_sentences": 3}).startswith("r.yaml: data: ")
    with pytest.raises(ConfigError, match="r.yaml: data: expected a mapping"):
        validate_cell_config({**TWO_BRANCH, "data": [1]}, where="r.yaml")


def test_each_kind_accepts_its_own_keys():
    for data in (
        {"name": "synthetic", "size": "tiny", "world_seed": 1, "region_dim": 8, "global_dim": 8, "vocab_min_count": 2,
         "max_caption_len": 20, "vocab_file": "v.json", "train_images": 10, "sparse_images": 0.5,
         "sparse_sentences": 2, "sparse_seed": 1},
        {"name": "precomp", "root": "/d", "dataset": "flickr30k", "captions_per_image": 5, "vocab_min_count": 4},
        {"name": "labelled", "root": "/d", "dataset": "wikipedia", "dev_from_train": 100, "train_images": 50,
         "sparse_images": 0.5, "sparse_seed": 2},
    ):
        cfg = validate_cell_config({**TWO_BRANCH, "data": data}, where="r.yaml")
        assert cfg.data.name == data["name"]


def test_a_profile_switching_kind_under_a_key_of_the_old_kind_names_file_row_profile_and_key(tmp_path):
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""
        id: kinds
        paper: two_branch
        table: T
        title: t
        columns: [rsum]
        protocols: {test: {dataset: synthetic}}
        config:
          model: {name: two_branch_embedding}
          loss: {name: bidirectional_ranking}
          data: {size: tiny}
        profiles:
          smoke: {seeds: [0], config: {data: {name: synthetic}}}
          full: {seeds: [0], requires_data_root: true, config: {data: {name: precomp}}}
        rows:
          - {id: a, label: A}
    """))
    assert resolve(tmp_path / "r.yaml", profile="smoke").cells[0].config.data.size == "tiny"
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path / "r.yaml", profile="full", require_data=False)
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'} (row 'a', profile 'full'): data.size: not a key of "
                                      "dataset kind 'precomp' (its keys: root, ")


# ---------------------------------------------------------------------------------
# the hashed form


def test_cell_hashes_of_configs_without_the_new_keys_are_unchanged():
    """Values recorded before the dataset kinds existed (one flat data config)."""
    def hash_of(data: dict | None) -> str:
        raw = {"model": {"name": "two_branch_embedding"}, "loss": {"name": "bidirectional_ranking"}}
        return validate_cell_config(raw if data is None else {**raw, "data": data}, where="t").hash()

    assert hash_of(None) == "eeab0ef3e41c"
    assert hash_of({"name": "precomp", "root": "/data/f30k", "dataset": "flickr30k", "vocab_min_count": 4}) \
        == "a1290dc566b8"
    assert hash_of({"size": "tiny", "train_images": 200, "sparse_images": 0.1, "sparse_sentences": 2}) \
        == "1afaf994f633"


def test_the_hashed_data_dict_is_every_kinds_keys_and_a_later_key_only_when_set():
    plain = DataConfig().to_dict()
    assert set(plain) == set(DataConfig.model_fields) - set(HASHED_WHEN_SET)
    assert plain["size"] == "small" and plain["root"] is None  # other kinds' keys at their defaults
    held = DataConfig(name="labelled", root="/d", dev_from_train=30)
    assert held.to_dict()["dev_from_train"] == 30
    cfg = validate_cell_config({**TWO_BRANCH, "data": {"name": "labelled", "root": "/d"}}, where="t")
    other = validate_cell_config({**TWO_BRANCH, "data": {"name": "labelled", "root": "/d", "dev_from_train": 30}},
                                 where="t")
    assert cfg.hash() != other.hash()


# ---------------------------------------------------------------------------------
# the labelled kind


CLASSES = ["a", "b", "c"]


def _write_labelled(root, *, n=(60, 30), dev: int | None = None, multi=False, sparse=False, seed=0):
    """Three classes; image and text features are noisy class centroids (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    img_centres, txt_centres = rng.normal(size=(3, 8)), rng.normal(size=(3, 12))
    splits = {}
    sizes = {"train": n[0], "test": n[1], **({"dev": dev} if dev else {})}
    for name, count in sizes.items():
        cls = np.arange(count) % 3
        img = (img_centres[cls] + 0.3 * rng.normal(size=(count, 8))).astype(np.float32)
        txt = np.abs(txt_centres[cls] + 0.3 * rng.normal(size=(count, 12))).astype(np.float32)
        if multi:
            labels = np.zeros((count, 3), dtype=np.uint8)
            labels[np.arange(count), cls] = 1
            labels[::4, (cls[::4] + 1) % 3] = 1
        else:
            labels = cls
        splits[name] = (img, sp.csr_matrix(txt) if sparse else txt, labels)
    write_labelled(root, labelled_from_arrays("mini", splits, CLASSES, image_feature="8-d", text_feature="12-d"))
    return root


def _labelled_cfg(root, *, model=None, **data):
    raw = {
        "data": {"name": "labelled", "root": str(root), **data},
        "model": model or {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8, "text_input": "features"},
        "loss": {"name": "bidirectional_ranking"} if model is None or model["name"] != "cca" else None,
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "eval": {"protocols": ["test_labels"]},
    }
    return validate_cell_config(raw, where="labelled.yaml")


@pytest.mark.parametrize(("multi", "sparse"), [(False, False), (True, True)])
def test_labelled_kind_trains_and_reports_label_map(tmp_path, multi, sparse):
    root = _write_labelled(tmp_path / "set", multi=multi, sparse=sparse)
    cfg = _labelled_cfg(root, dev_from_train=15)
    assert cfg.model.params.text_input == "features"
    data = DATASETS[cfg.data.name](cfg.data)
    assert data.split_names == ["train", "dev", "test"] and data.info["dev_from_train"] == 15
    prepared = PreparedData(data, cfg.data, "global", "features")
    train = prepared.split("train")
    assert train.n_images == train.n_captions == 45 and train.captions_per_image == 1
    assert prepared.dims.text_dim == 12 and prepared.dims.image_dim == 8
    out = train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    got = out.metrics["test_labels"]
    for key in (K.I2T_MAP, K.T2I_MAP, K.AVG_MAP):
        assert np.isfinite(got[key]) and 0.0 < got[key] <= 1.0
    labels = np.asarray(data.split("test").extras["labels"])
    onehot = labels if labels.ndim == 2 else np.eye(3, dtype=np.uint8)[labels]
    chance = float(((onehot @ onehot.T) > 0).mean())  # about the mAP of a random ranking
    assert got[K.AVG_MAP] > chance + 0.05  # two epochs on 45 instances already learn
    assert len(out.curves["epoch"]) == 2 and np.isfinite(out.metrics["dev"]["rsum"])


def test_labelled_kind_with_its_own_dev_split_and_cca(tmp_path):
    root = _write_labelled(tmp_path / "set", dev=12)
    cfg = _labelled_cfg(root, model={"name": "cca", "dim": 4, "text_input": "features"})
    prepared = PreparedData(DATASETS["labelled"](cfg.data), cfg.data, "global", "features")
    assert prepared.split("dev").n_images == 12
    got = train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu")).metrics["test_labels"]
    assert np.isfinite(got[K.AVG_MAP]) and got[K.AVG_MAP] > 0.6


def test_dev_held_out_of_train_is_a_fixed_disjoint_view(tmp_path):
    root = _write_labelled(tmp_path / "set")
    data = DATASETS["labelled"](DataConfig(name="labelled", root=str(root), dev_from_train=20))
    train, dev = data.split("train"), data.split("dev")
    assert isinstance(train.global_feats, RowView) and isinstance(dev.text_feats, RowView)
    rows_train, rows_dev = train.global_feats.index, dev.global_feats.index
    assert len(rows_train) == 40 and len(rows_dev) == 20 and not set(rows_train) & set(rows_dev)
    assert sorted([*rows_train, *rows_dev]) == list(range(60))
    source = np.load(root / "train_labels.npy")
    np.testing.assert_array_equal(dev.extras["labels"], source[rows_dev])
    again = DATASETS["labelled"](DataConfig(name="labelled", root=str(root), dev_from_train=20)).split("dev")
    np.testing.assert_array_equal(again.global_feats.index, rows_dev)


def test_labelled_kind_with_sparse_images_keeps_text_features(tmp_path):
    root = _write_labelled(tmp_path / "set", sparse=True)
    cfg = DataConfig(name="labelled", root=str(root), dev_from_train=10, sparse_images=0.5)
    data = DATASETS["labelled"](cfg)
    train = data.split("train")
    assert train.n_images == 25 and train.text_feats.shape == (25, 12) and len(train.extras["labels"]) == 25
    prepared = PreparedData(data, cfg, "global", "features")
    assert prepared.split("train").text_batch(np.arange(3)).vectors.shape == (3, 12)


@pytest.mark.parametrize(
    ("setup", "cfg", "message"),
    [
        ("plain", dict(), "no 'dev' split (dev_img.npy); the model is selected on it; found: train, test; "
                          "set data.dev_from_train N"),
        ("dev", dict(dev_from_train=5), "data.dev_from_train is set but the directory has its own 'dev' split"),
        ("plain", dict(dev_from_train=60), "data.dev_from_train=60 leaves no training instance (train has 60)"),
    ],
)
def test_labelled_kind_bad_input_is_a_one_line_error_naming_the_directory(tmp_path, setup, cfg, message):
    root = _write_labelled(tmp_path / "set", dev=10 if setup == "dev" else None)
    with pytest.raises(DataError) as info:
        DATASETS["labelled"](DataConfig(name="labelled", root=str(root), **cfg))
    assert str(info.value).startswith(f"{root}: {message}") and "\n" not in str(info.value)


def test_labelled_kind_needs_a_root_and_text_features_as_text(tmp_path):
    with pytest.raises(DataError, match="no data.root"):
        DATASETS["labelled"](DataConfig(name="labelled"))
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: dataset directory does not exist"):
        DATASETS["labelled"](DataConfig(name="labelled", root=str(tmp_path / "nope")))
    root = _write_labelled(tmp_path / "set")
    cfg = DataConfig(name="labelled", root=str(root), dev_from_train=5)
    with pytest.raises(DataError, match="no caption text; use model.text_input: features"):
        PreparedData(DATASETS["labelled"](cfg), cfg, "global", "tfidf")
    synthetic = DataConfig(size="tiny")
    with pytest.raises(DataError, match="has no text features"):
        PreparedData(DATASETS["synthetic"](synthetic), synthetic, "global", "features")
    with pytest.raises(ConfigError, match="model.text_input"):
        validate_cell_config({**TWO_BRANCH, "model": {"name": "vsepp", "text_input": "features"}}, where="t")


# ---------------------------------------------------------------------------------
# data.train_images: a view


def test_train_images_is_a_view_of_the_memory_mapped_features():
    cfg = DataConfig(size="tiny", train_images=50)
    data = DATASETS["synthetic"](cfg)
    source = data.split("train")
    assert isinstance(source.regions, np.memmap)
    prepared = PreparedData(data, cfg, "regions", "tokens")
    train = prepared.raw_split("train")
    assert train.n_images == 50 and train.n_captions == 250 and train.captions == source.captions[:250]
    for kind in ("regions", "global_feats"):
        view, base = getattr(train, kind), getattr(source, kind)
        if base is None:
            continue
        assert isinstance(view, np.memmap) and np.shares_memory(view, base)
    for key, value in train.extras.items():
        if isinstance(value, np.ndarray) and isinstance(source.extras[key], np.ndarray) and value.ndim:
            assert np.shares_memory(value, source.extras[key]), key
    np.testing.assert_array_equal(prepared.split("train").image_batch(np.arange(50)).numpy(),
                                  source.image_features("regions", np.arange(50)))
    dev = prepared.split("dev", max_images=20).split
    assert dev.n_images == 20 and np.shares_memory(dev.regions, data.split("dev").regions)


def test_prefix_of_labelled_text_features_and_of_hdf5_features_reads_nothing(tmp_path):
    root = _write_labelled(tmp_path / "set", dev=10)
    cfg = DataConfig(name="labelled", root=str(root), train_images=25)
    data = DATASETS["labelled"](cfg)
    train = PreparedData(data, cfg, "global", "features").raw_split("train")
    source = data.split("train")
    assert isinstance(source.text_feats, np.memmap)
    assert np.shares_memory(train.global_feats, source.global_feats)
    assert np.shares_memory(train.text_feats, source.text_feats) and train.text_feats.shape == (25, 12)
    assert np.shares_memory(train.extras["labels"], source.extras["labels"])
    feats = np.arange(40, dtype=np.float32).reshape(10, 4)
    h5 = H5Array(write_h5_features(tmp_path / "f.h5", feats))
    head = Split(name="x", captions=["c"] * 10, captions_per_image=1, global_feats=h5).prefix(4)
    assert isinstance(head.global_feats, RowView) and head.global_feats.base is h5
    np.testing.assert_array_equal(np.asarray(head.global_feats), feats[:4])


# ---------------------------------------------------------------------------------
# the vocabulary file in the run fingerprint


def _fingerprint(prepared: PreparedData, cfg: DataConfig) -> dict:
    return run_fingerprint("test", dataset_name="d", dataset_fingerprint="f", dataset_info={"source": "synthetic"},
                           split_images=100, captions_per_image=5, config={"data": cfg.to_dict()},
                           text_input="tokens", image_input="global", vocabulary=prepared.vocabulary)


def test_the_run_fingerprint_records_the_vocabulary_files_content(tmp_path):
    plain = DataConfig(size="tiny")
    data = DATASETS["synthetic"](plain)
    built = PreparedData(data, plain, "global", "tokens")
    # without a vocabulary file: what it always was
    assert _fingerprint(built, plain)["vocabulary"] == "train captions, min_count=1"
    assert _fingerprint(built, plain) == run_fingerprint(
        "test", dataset_name="d", dataset_fingerprint="f", dataset_info={"source": "synthetic"}, split_images=100,
        captions_per_image=5, config={"data": plain.to_dict()}, text_input="tokens", image_input="global")
    path = write_vocab_file(built.vocab, tmp_path / "vocab.json")
    cfg = DataConfig(size="tiny", vocab_file=str(path))
    first = _fingerprint(PreparedData(data, cfg, "global", "tokens"), cfg)
    assert first["vocabulary"].startswith("file vocab.json, sha256 ")
    assert _fingerprint(PreparedData(data, cfg, "global", "tokens"), cfg) == first  # same content, same print
    doc = json.loads(path.read_text())
    doc["word2idx"]["zebra"] = doc["idx"]
    doc["idx2word"][str(doc["idx"])] = "zebra"
    doc["idx"] += 1
    path.write_text(json.dumps(doc))
    second = _fingerprint(PreparedData(data, cfg, "global", "tokens"), cfg)
    assert second["vocabulary"] != first["vocabulary"]
    assert {k: v for k, v in second.items() if k != "vocabulary"} == {k: v for k, v in first.items()
                                                                      if k != "vocabulary"}
