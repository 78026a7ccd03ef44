"""The loader benchmark (xmrbench/bench/data.py), run at a toy size: no timings are asserted."""

from __future__ import annotations

import numpy as np

from xmrbench.bench import data as bench_data
from xmrbench.bench.registry import BENCHMARKS
from xmrbench.data.hdf5 import H5Array


def test_bench_files_hold_the_same_features(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_data, "REGIONS", 2)
    monkeypatch.setattr(bench_data, "DIM", 3)
    h5_dir, npy_dir = bench_data.write_bench_files(tmp_path, 10)
    np.testing.assert_array_equal(np.asarray(H5Array(h5_dir / "train_ims.h5")), np.load(npy_dir / "train_ims.npy"))
    assert (h5_dir / "train_caps.txt").read_text().count("\n") == 50


def test_read_batches_reports_throughput_and_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_data, "REGIONS", 2)
    monkeypatch.setattr(bench_data, "DIM", 3)
    h5_dir, _ = bench_data.write_bench_files(tmp_path, 30)
    stats = bench_data.read_batches(str(h5_dir), 3, batch=8)
    assert stats["batches"] == 3 and stats["median_s"] > 0 and stats["peak_rss_mb"] >= stats["base_rss_mb"] > 0


def test_the_benchmark_runs_end_to_end_at_a_toy_size(monkeypatch):
    for name, value in (("QUICK_IMAGES", 40), ("QUICK_BATCHES", 2), ("BATCH", 8), ("REGIONS", 2), ("DIM", 4)):
        monkeypatch.setattr(bench_data, name, value)
    assert BENCHMARKS["data"] is bench_data.data
    res = bench_data.data("cpu", quick=True)
    assert res.name == "data" and "40 x 2 x 4" in res.description
    assert [t.unit for t in res.timings] == ["image", "image"]
    assert all(t.rate and t.rate > 0 for t in res.timings)
    assert set(res.ratios) == {
        "HDF5 / memory-map throughput (images/s)",
        "peak RSS of the HDF5 reader (MB)",
        "peak RSS of the memory-map reader (MB)",
        "peak RSS above start-up, HDF5 / memory-map",
    }
    assert res.peak_rss_mb and res.peak_rss_mb > 0
    assert any("page cache" in n for n in res.notes)
