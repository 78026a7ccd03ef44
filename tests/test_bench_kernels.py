"""The bench harness (ceilings, floors, kernel records), the peer loops it times against,
and pytest-benchmark cases of each kernel at small sizes.

The pytest-benchmark cases only time (``pytest --benchmark-enable tests/test_bench_kernels.py``
to see the numbers); in the normal suite each runs once as a test of the call. Nothing
here asserts a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.bench import kernels as K
from xmrbench.bench.harness import Ceilings, KernelRecord, Timing
from xmrbench.bench.registry import BENCHMARKS, run_benchmarks
from xmrbench.core.metrics.retrieval import i2t_ranks, t2i_ranks
from xmrbench.errors import RegistryError

CPU = torch.device("cpu")


def test_floor_is_work_over_the_matching_ceiling():
    c = Ceilings(flop=2e9, exp=5e8, byte=1e10)
    assert c.floor(4e9, "flop") == 2.0 and c.floor(1e9, "exp") == 2.0 and c.floor(1e10, "byte") == 1.0
    with pytest.raises(ValueError, match="pair"):
        c.floor(1.0, "pair")
    timings = [Timing("gemm", 2.0, 1, 8e9, "flop"), Timing("copy", 1.0, 1, 3e9, "byte"), Timing("exp", 0.5, 1, 1e8, "exp")]
    assert Ceilings.from_timings(timings) == Ceilings(flop=4e9, exp=2e8, byte=3e9)


def test_kernel_record_ratios_and_targets():
    k = KernelRecord("eval", "s", 3.0, floor_seconds=2.0, peer_seconds=60.0,
                     targets={"ratio_to_floor": 1.3, "speedup_vs_peer": 10.0})
    assert k.ratio_to_floor == 1.5 and k.speedup_vs_peer == 20.0
    assert k.verdicts() == {"ratio_to_floor": False, "speedup_vs_peer": True}
    bare = KernelRecord("x", "s", 1.0)
    assert bare.ratio_to_floor is None and bare.speedup_vs_peer is None and bare.verdicts() == {}
    assert bare.to_dict()["targets_met"] == {}


def _random_embeddings(n_img: int, dim: int = 16, cpi: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(n_img * cpi, dim, generator=gen), dim=1)
    return img, txt


def test_the_peer_loops_give_our_ranks_where_scores_have_no_ties():
    img, txt = _random_embeddings(30)
    sims = img @ txt.T
    img_np, txt_np = img.numpy().astype(np.float64), txt.numpy().astype(np.float64)
    assert np.array_equal(K.peer_i2t_ranks(img_np, txt_np, range(30)), i2t_ranks(sims.double()).numpy())
    assert np.array_equal(K.peer_t2i_ranks(img_np, txt_np, range(30)), t2i_ranks(sims.double()).numpy())
    # by hand: image 1's best caption (0.9) is beaten by image 0's second caption (0.95)
    i = np.array([[1.0, 0.0], [0.0, 1.0]])
    t = np.array([[-1.0, 0.0], [0.3, 0.95], [0.9, 0.1], [0.8, 0.2], [0.5, 0.7], [0.1, 0.9]])
    assert K.peer_i2t_ranks(i, t, range(2), cpi=3).tolist() == [0, 1]
    assert K.peer_t2i_ranks(i, t, range(2), cpi=3).tolist() == [1, 1, 0, 1, 0, 0]


def test_the_per_caption_peer_loops_equal_the_per_pair_references():
    from functools import partial

    from xmrbench.bench.attention import _inputs, peer_style_loop, peer_style_scan_t2i
    from xmrbench.core.sim.cross_attention import scan_pair_reference, scan_sims_reference
    from xmrbench.core.sim.focal_attention import bfan_pair_reference, bfan_sims_reference

    img, words, lengths = _inputs(5, 7, 16, device=CPU, word_range=(2, 9))
    i2t = partial(scan_pair_reference, direction="i2t", pooling="avg", lambda_softmax=4.0, lambda_lse=6.0)
    want = scan_sims_reference(img, words, lengths, direction="i2t", pooling="avg", lambda_softmax=4.0)
    assert torch.allclose(peer_style_loop(i2t, img, words, lengths), want, atol=1e-6)
    bfan = partial(bfan_pair_reference, focal="prob", lambda_softmax=20.0)
    assert torch.allclose(peer_style_loop(bfan, img, words, lengths),
                          bfan_sims_reference(img, words, lengths, focal="prob"), atol=1e-6)
    assert torch.allclose(peer_style_scan_t2i(img, words, lengths), scan_sims_reference(img, words, lengths), atol=1e-6)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(K, "_sizes", lambda quick: (40, 200, 32))
    return Ceilings(flop=1e10, exp=1e9, byte=1e10)


@pytest.mark.parametrize("name", ["similarity", "eval", "simnet"])
def test_each_embedding_kernel_gives_one_record_with_floor_and_peer(tiny, name):
    res = BENCHMARKS[name](CPU, quick=True, ceilings=tiny)
    (k,) = res.kernels
    assert k.kernel == name and k.seconds > 0 and k.peer_seconds > 0
    assert k.floor_seconds == pytest.approx(k.work / 1e10)  # the stated work at the GEMM rate handed in
    if name == "eval":
        assert any("equal the VSE++ loop's" in n and n.endswith("True") for n in res.notes)


def test_run_benchmarks_measures_the_ceilings_once_and_refuses_unknown_names(monkeypatch):
    calls = []
    real = K.machine

    def counted(device, *, quick, ceilings=None):
        calls.append(1)
        return real(device, quick=quick)

    monkeypatch.setattr("xmrbench.bench.registry.machine", counted)
    with pytest.raises(RegistryError, match="unknown benchmark 'nope'"):
        run_benchmarks(["machine", "nope"], CPU, quick=True)
    assert calls == []  # refused before anything was timed
    run = run_benchmarks(["machine"], CPU, quick=True)
    assert len(calls) == 1 and run.results[0].name == "machine" and run.ceilings.flop > 0


# ---------------------------------------------------------------------------------
# pytest-benchmark cases at small sizes (disabled timing in the normal suite)


def test_bench_similarity_small(benchmark):
    img, txt = _random_embeddings(200, 256)
    benchmark(lambda: img @ txt.T)


def test_bench_evaluation_small(benchmark):
    from xmrbench.core.metrics.retrieval import retrieval_metrics

    img, txt = _random_embeddings(200, 256)
    out = benchmark(lambda: retrieval_metrics(img @ txt.T))
    assert set(out) >= {"rsum", "i2t_r1", "t2i_r1"}


def test_bench_scan_and_bfan_small(benchmark):
    from xmrbench.bench.attention import _inputs
    from xmrbench.core.sim.cross_attention import scan_sims
    from xmrbench.core.sim.focal_attention import bfan_sims

    img, words, lengths = _inputs(8, 40, 32, device=CPU, word_range=(6, 18))
    with torch.no_grad():
        out = benchmark(lambda: (scan_sims(img, words, lengths), bfan_sims(img, words, lengths, focal="prob")))
    assert out[0].shape == out[1].shape == (8, 40)


def test_bench_adapt_small(benchmark):
    from xmrbench.bench.adapt import adapt_inputs, bench_calls

    calls = bench_calls(adapt_inputs(6, 30, 32, device=CPU), budget_bytes=1 << 22)
    with torch.no_grad():
        benchmark(lambda: (calls["ADAPT-T2I"](), calls["ADAPT-I2T"]()))


def test_bench_simnet_small(benchmark):
    from xmrbench.core.models.base import InputDims
    from xmrbench.core.models.two_branch import TwoBranchSimilarity

    net = TwoBranchSimilarity(TwoBranchSimilarity.Params(hidden_dim=16, embed_dim=64, fc_dims=(32, 16)),
                              InputDims(image_dim=8, vocab_size=4, text_dim=8)).eval()
    a, b = torch.randn(20, 64), torch.randn(100, 64)
    with torch.no_grad():
        out = benchmark(lambda: net.similarity(a, b))
    assert out.shape == (20, 100)


def test_bench_mining_small(benchmark):
    from xmrbench.core.mining import mine_candidates

    img, txt = _random_embeddings(60, 32)
    caption_image = torch.arange(300) // 5
    i2t, t2i = benchmark(lambda: mine_candidates(lambda rows, cols: img[rows] @ txt[cols].T, n_images=60,
                                                 caption_image=caption_image, k_texts=20, k_images=8,
                                                 block_images=16, chunk_captions=128))
    assert tuple(i2t.shape) == (60, 20) and tuple(t2i.shape) == (300, 8)


def test_train_benchmark_builds_every_model_and_gives_one_record_per_step(monkeypatch):
    from xmrbench.bench import aoq as bench_aoq
    from xmrbench.bench import train as bench_train

    seen = []

    def fake_time_steps(name, method, split, device, *, quick, candidates=None):
        seen.append((name.split(" ")[0], candidates is not None))
        return Timing(name, 0.5 if candidates is None else 1.0, 1)

    monkeypatch.setattr(bench_aoq, "time_steps", fake_time_steps)
    monkeypatch.setattr(bench_train, "time_steps", fake_time_steps)
    res = BENCHMARKS["train"](CPU, quick=True)
    names = ["train-vsrn-online", "train-vsrn-offtri", "train-vsrn-offquin", "train-vsrn-adapoffquin",
             "train-vsepp", "train-scan-t2i"]
    assert [k.kernel for k in res.kernels] == names and res.name == "train"
    assert [c for _, c in seen] == [True] * 4 + [False] * 2  # the AOQ losses get candidate lists
    assert res.ratios["offtri / online, measured"] == 1.0


def test_time_steps_trains_the_model():
    from xmrbench.bench.aoq import build_step, synthetic_data, time_steps

    method, split, _ = build_step({"name": "vsepp", "image_input": "global", "embed_dim": 16, "word_dim": 8},
                                  {"name": "hardest_negative", "margin": 0.2}, None, data=synthetic_data(True),
                                  device=CPU, where="test")
    before = [p.detach().clone() for p in method.model.parameters()]
    timing = time_steps("vsepp", method, split, CPU, quick=True)
    assert timing.seconds > 0 and timing.repeats >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, method.model.parameters()))  # the optimiser stepped


def test_scale_world_and_epoch_at_a_toy_size(monkeypatch, tmp_path):
    import h5py

    from xmrbench.bench import scale
    from xmrbench.bench import train as bench_train
    from xmrbench.bench.harness import BenchResult
    from xmrbench.data.synthetic.features import FeatureSpace, region_features
    from xmrbench.data.synthetic.world import SizeSpec, split_scenes

    root = scale.write_scale_world(tmp_path / "w", n_train=300, n_test=20, n_dev=10, dim=8)
    with h5py.File(root / "train_ims.h5") as f:
        ds = next(iter(f.values()))
        assert ds.shape == (300, 36, 8) and ds.chunks[0] == 1
        second_block = ds[scale.WRITE_BLOCK : 2 * scale.WRITE_BLOCK]
    scenes = split_scenes(0, "train", SizeSpec(train=300, dev=10, n_test=20))
    want, _ = region_features(scenes[scale.WRITE_BLOCK : 2 * scale.WRITE_BLOCK], FeatureSpace.build(0, region_dim=8,
                              global_dim=8), seed=0, split=f"train/{scale.WRITE_BLOCK}", regions=36)
    assert np.array_equal(second_block, want)  # each block from its own stream, written where it belongs
    assert len((root / "train_caps.txt").read_text().splitlines()) == 1500

    real = scale.run_child
    monkeypatch.setattr(scale, "FULL", {"train": 200, "test": 20, "dev": 10, "dim": 8})
    monkeypatch.setattr(scale, "run_child", lambda root, model, embed_dim, word_dim: real(
        root, model, embed_dim=16, word_dim=8, max_steps=2))
    res = BenchResult("train", "")
    bench_train._scale(res)
    assert [k.kernel for k in res.kernels] == ["epoch-vsepp", "epoch-scan-t2i"]
    for k in res.kernels:
        assert k.seconds > 0 and 0 < k.peak_extra_bytes < 3 * 2**30 and k.verdicts() == {"peak_extra_bytes": True}
    assert sum("test images" in n for n in res.notes) == 2
