"""The ``full`` profile on real-format features: a user points ``--data-root`` at a precomp
directory and reproduces the VSE++ recipe. Tested end to end on a miniature directory in
exactly that layout, written with our writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmrbench.core.metrics.keys import RETRIEVAL_KEYS
from xmrbench.data.precomp import write_precomp
from xmrbench.data.synthetic.world import generate_world

from support import cli

SIZES = {"train": 60, "dev": 10, "test": 10}




@pytest.fixture(scope="module")
def world():
    # 36 regions per image, as in the bottom-up-attention precomp files (small D for speed)
    return generate_world(size="tiny", region_dim=16, global_dim=8, regions=36)


def _write_precomp_dir(root: Path, world, features: str) -> Path:
    splits = {name: world[name].subset(np.arange(n)) for name, n in SIZES.items()}
    for s in splits.values():
        s.global_feats = None  # the peers' layout: {split}_ims + {split}_caps only
    write_precomp(root, splits, extras=False, features=features)
    return root


def test_full_profile_reproduces_vsepp_on_a_precomp_directory(tmp_path, capsys, world):
    data_root = _write_precomp_dir(tmp_path / "f30k_precomp", world, "npy")
    assert sorted(p.name for p in data_root.iterdir()) == sorted(
        [f"{s}_caps.txt" for s in SIZES] + [f"{s}_ims.npy" for s in SIZES])
    results = tmp_path / "results"
    code, out, err = cli(["reproduce", "vsepp-flickr30k", "--profile", "full", "--data-root", str(data_root),
                          "--set", "train.epochs=1", "--set", "model.embed_dim=16", "--set", "model.word_dim=8",
                          "--seeds", "0", "--results", str(results)], capsys)
    assert code == 0, err
    docs = [json.loads(p.read_text()) for p in sorted((results / "vsepp-flickr30k").glob("*--seed0.json"))]
    assert {d["cell"]["row"] for d in docs} == {"vsepp-mh", "vse0-sh"}
    for doc in docs:
        assert doc["status"] == "done"
        assert doc["recipe"]["profile"] == "full" and doc["seed"] == 0
        data_cfg = doc["config"]["data"]
        assert (data_cfg["name"], data_cfg["root"], data_cfg["dataset"]) == ("precomp", str(data_root), "flickr30k")
        assert doc["config"]["model"]["image_input"] == "mean_regions"
        assert doc["dataset"]["name"] == "flickr30k" and doc["dataset"]["info"]["source"] == "precomp"
        info = doc["dataset"]["info"]["splits"]
        assert {k: v["images"] for k, v in info.items()} == SIZES
        assert info["train"]["region_shape"] == [36, 16]
        metrics = doc["metrics"]["test"]
        assert set(RETRIEVAL_KEYS) <= set(metrics)
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
            assert 0.0 <= metrics[key] <= 100.0
        assert metrics["rsum"] == pytest.approx(sum(metrics[k] for k in (
            "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")))
        assert doc["protocols"]["test"]["images"] == 10 and doc["protocols"]["test"]["captions_per_image"] == 5


def test_the_full_profile_data_config_reads_hdf5_features(tmp_path, world):
    from xmrbench.config import DataConfig
    from xmrbench.data.hdf5 import H5Array
    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData

    data_root = _write_precomp_dir(tmp_path / "h5_precomp", world, "h5")
    cfg = DataConfig(name="precomp", root=str(data_root), dataset="flickr30k", vocab_min_count=4)
    data = DATASETS["precomp"](cfg)
    assert data.info["splits"]["train"]["feature_format"] == "hdf5"
    prepared = PreparedData(data, cfg, "mean_regions", "tokens")
    train = prepared.split("train")
    assert isinstance(train.split.regions, H5Array)
    index = np.array([59, 3, 3])
    np.testing.assert_allclose(train.image_batch(index).numpy(), world["train"].regions[index].mean(axis=1),
                               rtol=1e-6)
    assert prepared.dims.image_dim == 16


def test_full_profile_without_a_dev_split_says_so(tmp_path, capsys, world):
    data_root = _write_precomp_dir(tmp_path / "no_dev", world, "npy")
    for name in ("dev_caps.txt", "dev_ims.npy"):
        (data_root / name).unlink()
    code, _, err = cli(["reproduce", "vsepp-flickr30k", "--profile", "full", "--data-root", str(data_root),
                        "--set", "train.epochs=1", "--seeds", "0", "--results", str(tmp_path / "r")], capsys)
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")][-1]
    assert str(data_root) in line and "no 'dev' split" in line and "found: train, test" in line


def test_full_profile_needs_a_data_root(capsys, tmp_path):
    code, _, err = cli(["reproduce", "vsepp-flickr30k", "--profile", "full", "--seeds", "0",
                        "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and "data-root" in err
