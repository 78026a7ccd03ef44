"""Tests of HDF5 feature files (xmrbench/data/hdf5.py) and their use in the precomp layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from xmrbench.data.dataset import Split
from xmrbench.data.hdf5 import (
    H5Array,
    dataset_key,
    fill_h5_features,
    h5_header,
    write_h5_features,
)
from xmrbench.data.precomp import load_precomp, write_precomp
from xmrbench.errors import DataError

LAYOUTS = {
    "one image per chunk": {"chunk_rows": 1},
    "four images per chunk": {"chunk_rows": 4},
    "gzip": {"chunk_rows": 3, "compression": "gzip"},
}


def _naive_rows(arr: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row by row, the obvious way."""
    return np.stack([arr[int(i)] for i in index]) if len(index) else arr[:0]


@pytest.fixture(params=list(LAYOUTS))
def stored(request, tmp_path) -> tuple[np.ndarray, H5Array]:
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((23, 5, 7)).astype(np.float32)
    path = write_h5_features(tmp_path / "f.h5", arr, **LAYOUTS[request.param])
    return arr, H5Array(path)


def test_header_and_surface(stored):
    arr, h5 = stored
    assert h5.shape == arr.shape and h5.dtype == np.float32 and h5.ndim == 3 and len(h5) == 23
    assert h5_header(h5.path) == (arr.shape, np.dtype(np.float32))
    np.testing.assert_array_equal(np.asarray(h5), arr)
    np.testing.assert_array_equal(h5[3], arr[3])
    np.testing.assert_array_equal(h5[-1], arr[-1])
    np.testing.assert_array_equal(h5[4:9], arr[4:9])


def test_random_index_arrays_match_a_naive_loop(stored):
    arr, h5 = stored
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = int(rng.integers(0, 30))
        index = rng.integers(0, len(arr), size=k)  # any order, repeats allowed
        np.testing.assert_array_equal(h5[index], _naive_rows(arr, index))
    distinct = rng.permutation(len(arr))[:17]
    np.testing.assert_array_equal(h5[distinct], _naive_rows(arr, distinct))
    np.testing.assert_array_equal(h5[np.array([-1, 0])], arr[[-1, 0]])
    np.testing.assert_array_equal(h5[np.arange(len(arr)) % 2 == 0], arr[::2])


def test_out_of_range_and_bad_indices(stored):
    _, h5 = stored
    with pytest.raises(IndexError):
        h5[23]
    with pytest.raises(IndexError):
        h5[np.array([0, 23])]
    with pytest.raises(TypeError):
        h5[np.array([0.5])]


def test_pickles_by_path_and_reopens(stored):
    arr, h5 = stored
    h5[np.array([1, 2])]  # opened
    again = pickle.loads(pickle.dumps(h5))
    np.testing.assert_array_equal(again[np.array([5, 1, 5])], arr[[5, 1, 5]])
    h5.close()
    np.testing.assert_array_equal(h5[np.array([0])], arr[:1])  # reopens after close


def test_raw_chunk_path_is_used_only_for_plain_row_chunks(tmp_path):
    arr = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    plain = H5Array(write_h5_features(tmp_path / "a.h5", arr, chunk_rows=2))
    plain[np.array([0, 5])]
    assert plain._table is not None and plain._table[0] == 2
    packed = H5Array(write_h5_features(tmp_path / "b.h5", arr, chunk_rows=2, compression="gzip"))
    packed[np.array([0, 5])]
    assert packed._table is None
    with h5py.File(tmp_path / "c.h5", "w") as f:  # contiguous (not chunked)
        f.create_dataset("features", data=arr)
    contiguous = H5Array(tmp_path / "c.h5")
    np.testing.assert_array_equal(contiguous[np.array([4, 1, 4])], arr[[4, 1, 4]])
    assert contiguous._table is None


def test_many_rows_read_in_parallel_match(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.random((300, 9), dtype=np.float32)
    h5 = H5Array(write_h5_features(tmp_path / "p.h5", arr))
    index = rng.permutation(300)[:200]
    np.testing.assert_array_equal(h5[index], arr[index])


def test_dataset_key_rules(tmp_path):
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("image_features", data=np.zeros((2, 3), np.float32))
    assert dataset_key(tmp_path / "one.h5") == "image_features"
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f.create_dataset("a", data=np.zeros((2, 3), np.float32))
        f.create_dataset("b", data=np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="exactly one dataset"):
        dataset_key(tmp_path / "two.h5")
    assert dataset_key(tmp_path / "two.h5", "b") == "b"
    with pytest.raises(DataError, match="no dataset 'c'"):
        dataset_key(tmp_path / "two.h5", "c")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5"):
        H5Array(tmp_path / "junk.h5")


def test_fill_writes_block_by_block(tmp_path):
    calls: list[tuple[int, int]] = []

    def fill(lo: int, hi: int) -> np.ndarray:
        calls.append((lo, hi))
        return np.arange(lo, hi, dtype=np.float32)[:, None].repeat(3, axis=1)

    h5 = H5Array(fill_h5_features(tmp_path / "big.h5", (10, 3), fill, block_rows=4))
    assert calls == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(np.asarray(h5)[:, 0], np.arange(10))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------
# In the precomp layout
# ---------------------------------------------------------------------------------


def _splits(rng: np.random.Generator) -> dict[str, Split]:
    def one(name: str, n: int) -> Split:
        return Split(name, [f"a caption {j} of {name}" for j in range(5 * n)], 5,
                     regions=rng.random((n, 4, 6), dtype=np.float32),
                     global_feats=rng.random((n, 8), dtype=np.float32))
    return {"train": one("train", 7), "dev": one("dev", 3), "test": one("test", 3)}


def test_precomp_with_hdf5_features_round_trips_and_reads_lazily(tmp_path):
    splits = _splits(np.random.default_rng(3))
    write_precomp(tmp_path, splits, features="h5")
    assert (tmp_path / "train_ims.h5").is_file() and not (tmp_path / "train_ims.npy").exists()
    data = load_precomp(tmp_path)
    assert data.info["splits"]["train"]["feature_format"] == "hdf5"
    train = data.split("train")
    assert isinstance(train.regions, H5Array) and isinstance(train.global_feats, H5Array)
    index = np.array([6, 0, 3, 3])
    np.testing.assert_array_equal(train.image_features("regions", index), splits["train"].regions[index])
    np.testing.assert_array_equal(train.image_features("mean_regions", index),
                                  splits["train"].regions[index].mean(axis=1))
    np.testing.assert_array_equal(train.image_features("global"), splits["train"].global_feats)
    in_memory = load_precomp(tmp_path, mmap=False).split("dev")
    assert isinstance(in_memory.regions, np.ndarray)
    # writing npy afterwards replaces the HDF5 file: one format per kind
    write_precomp(tmp_path, splits)
    assert (tmp_path / "train_ims.npy").is_file() and not (tmp_path / "train_ims.h5").exists()


def test_precomp_hdf5_checks(tmp_path):
    splits = _splits(np.random.default_rng(4))
    write_precomp(tmp_path, splits, features="h5")
    np.save(tmp_path / "dev_ims.npy", splits["dev"].regions)
    with pytest.raises(DataError, match="dev_ims.h5 and dev_ims.npy|dev_ims.npy and dev_ims.h5"):
        load_precomp(tmp_path)
    (tmp_path / "dev_ims.npy").unlink()
    bad = splits["dev"].regions.copy()
    bad[2, 1, 1] = np.nan
    write_h5_features(tmp_path / "dev_ims.h5", bad)
    with pytest.raises(DataError, match=r"dev_ims.h5: row 2 holds NaN"):
        load_precomp(tmp_path).split("dev")
    write_h5_features(tmp_path / "dev_ims.h5", bad[:, 0, :])
    with pytest.raises(DataError, match="3-D"):
        load_precomp(tmp_path)
    write_h5_features(tmp_path / "dev_ims.h5", bad.astype(np.float64))
    with pytest.raises(DataError, match="float64"):
        load_precomp(tmp_path)


def test_float16_hdf5_stays_float16(tmp_path):
    splits = _splits(np.random.default_rng(5))
    half = {k: Split(k, s.captions, 5, regions=s.regions.astype(np.float16)) for k, s in splits.items()}
    write_precomp(Path(tmp_path), half, features="h5")
    data = load_precomp(tmp_path)
    assert data.info["splits"]["dev"]["region_dtype"] == "float16"
    assert data.split("dev").image_features("regions").dtype == np.float32


def test_a_forked_process_gets_its_own_read_pool(monkeypatch):
    from xmrbench.data import hdf5

    pool = hdf5._io_pool()
    assert hdf5._io_pool() is pool
    monkeypatch.setattr(hdf5, "_POOL_PID", -1)  # as seen from a child after fork
    fresh = hdf5._io_pool()
    assert fresh is not pool and hdf5._POOL_PID == __import__("os").getpid()
