"""ADAPT's fovea similarity kernel: a hand-checked case, the fast blocked kernel against
the per-pair reference on random inputs (both uses, ragged lengths, garbage padding),
gradients, the beta-invariance of the mask, stability at large logits, bad shapes, the
memory arithmetic of the block planner, and the ``adapt`` benchmark at a toy size."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.bench import adapt as bench_adapt
from xmrbench.bench.harness import Ceilings, measure
from xmrbench.bench.registry import BENCHMARKS
from xmrbench.core.sim import adapt_fovea
from xmrbench.core.sim.adapt_fovea import (
    fovea_mask,
    fovea_pair_reference,
    fovea_pair_scores,
    fovea_sims,
    fovea_sims_reference,
    fovea_work,
    fovea_working_set_bytes,
    plan_fovea_blocks,
)

LAMS = [1.0, 10.0, None]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_case(gen, *, n_v=9, n_q=7, n_max=6, dim=5, ragged=True, dtype=torch.float64, junk=float("nan")):
    """``values (n_v, n_max, dim)``, ``lengths (n_v,)`` (None unless ``ragged``; then 1..n_max,
    one single-row value and one full one, the padding filled with ``junk``) and the
    queries' ``gamma`` (about half negative), ``beta``, ``target (n_q, dim)``."""
    values = torch.randn(n_v, n_max, dim, generator=gen, dtype=dtype)
    lengths = None
    if ragged:
        lengths = torch.randint(1, n_max + 1, (n_v,), generator=gen)
        lengths[0], lengths[-1] = 1, n_max
        values[torch.arange(n_max)[None, :] >= lengths[:, None]] = junk
    gamma = torch.randn(n_q, dim, generator=gen, dtype=dtype)
    gamma[0] = -gamma[0].abs()  # one query scales every dimension by a negative number
    beta = torch.randn(n_q, dim, generator=gen, dtype=dtype)
    target = torch.randn(n_q, dim, generator=gen, dtype=dtype)
    return values, lengths, gamma, beta, target


def one_pair_bytes(values, lengths, lam):
    n = values.shape[1] if lengths is None else int(lengths.max())
    return fovea_working_set_bytes(1, 1, length=n, dim=values.shape[2], fovea=lam is not None,
                                   elem_bytes=values.element_size())


# ---------------------------------------------------------------------------
# hand-checked case


def test_hand_checked_two_rows_two_dimensions():
    """X = [[0, 1], [1, 0]], gamma = (1, -2), beta = (0, 1.2), lam = ln 3.

    Dimension 1: Xbar = (0, 1), logits (0, ln 3): M = (1/4, 3/4), sum M Xbar = 3/4.
    Dimension 2: Xbar = (-0.8, 1.2), logits ln 3 (-0.8, 1.2) differ by 2 ln 3:
    M = (1, 9) / 10, sum M Xbar = -0.08 + 1.08 = 1. Without beta the logits are
    ln 3 (-2, 0): the same M.
    pooled = (1/2) (3/4, 1) = (3/8, 1/2) = (1/8) (3, 4): cosine 3/5 with (1, 0), 4/5 with
    (0, 1), 1 with (3, 4).
    No fovea: pooled = mean Xbar = (1/2, 1/5), cosine with (1, 0) = 5 / sqrt(29).
    A tiny target (1e-9, 0): |pooled| |t| = 6.25e-10 falls below the epsilon 1e-8, so the
    score is pooled . t / 1e-8 = 3/8 * 1e-9 / 1e-8 = 0.0375 (the 1/2 of the pooling counts).
    """
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    gamma = torch.tensor([1.0, -2.0], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.2], dtype=torch.float64)
    lam = math.log(3)
    mask = fovea_mask(x, gamma, beta, lam)
    assert torch.allclose(mask, torch.tensor([[0.25, 0.1], [0.75, 0.9]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(fovea_mask(x, gamma, torch.zeros(2, dtype=torch.float64), lam), mask, atol=1e-12)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    expect = torch.tensor([[0.6, 0.8, 1.0]], dtype=torch.float64)
    for t, e in zip(targets, expect[0]):
        assert fovea_pair_reference(x, gamma, beta, t, lam).item() == pytest.approx(e.item(), abs=1e-12)
    queries = (gamma.expand(3, 2), beta.expand(3, 2), targets)
    for lam_arg in (lam, torch.tensor(lam, dtype=torch.float64)):
        assert torch.allclose(fovea_sims(x[None], None, *queries, lam_arg), expect, atol=1e-12)
    # a third row of padding, whatever it holds, changes nothing
    padded = torch.cat([x, torch.full((1, 2), 1e30, dtype=torch.float64)])[None]
    assert torch.allclose(fovea_sims(padded, torch.tensor([2]), *queries, lam), expect, atol=1e-12)
    no_fovea = fovea_sims(x[None], None, *queries, None)
    assert no_fovea[0, 0].item() == pytest.approx(5 / math.sqrt(29), abs=1e-12)
    tiny = torch.tensor([[1e-9, 0.0]], dtype=torch.float64)
    assert fovea_pair_reference(x, gamma, beta, tiny[0], lam).item() == pytest.approx(0.0375, abs=1e-12)
    assert fovea_sims(x[None], None, gamma[None], beta[None], tiny, lam).item() == pytest.approx(0.0375, abs=1e-12)
    assert fovea_pair_scores(x[None], None, gamma[None], beta[None], tiny, lam).item() == pytest.approx(0.0375, abs=1e-12)


# ---------------------------------------------------------------------------
# fast kernel against the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lam", LAMS, ids=["lam1", "lam10", "nofovea"])
@pytest.mark.parametrize("use", ["regions", "words"])
def test_fast_matches_reference(use, lam, dtype, device):
    gen = torch.Generator().manual_seed(0)
    values, lengths, gamma, beta, target = random_case(gen, ragged=use == "words", dtype=dtype)
    ref = fovea_sims_reference(values.double(), lengths, gamma.double(), beta.double(), target.double(), lam)
    assert torch.isfinite(ref).all()
    one = one_pair_bytes(values, lengths, lam)
    plans = set()
    for budget in (one, 2 * one + 8, 5 * one, 1 << 30):  # one pair per block, uneven blocks, one block
        plan = plan_fovea_blocks(lengths if lengths is not None else torch.full((9,), 6), n_queries=7, dim=5,
                                 budget_bytes=budget, fovea=lam is not None, elem_bytes=values.element_size())
        plans.add((plan.block_queries, len(plan.value_blocks)))
        on = [t.to(device) for t in (values, gamma, beta, target)]
        fast = fovea_sims(on[0], lengths, *on[1:], lam, budget_bytes=budget)
        assert fast.shape == (9, 7) and fast.dtype == dtype and fast.device.type == device
        assert torch.allclose(fast.cpu().double(), ref, atol=TOL[dtype], rtol=0)
    assert len(plans) >= 3  # the budgets did cut the matrix differently


def test_padding_never_counts():
    """Scores with garbage padding (NaN, +-1e30) equal those of each value cut to its length."""
    gen = torch.Generator().manual_seed(1)
    values, lengths, gamma, beta, target = random_case(gen, ragged=True, junk=0.0)
    for lam in (10.0, None):
        alone = torch.cat([
            fovea_sims(values[v : v + 1, : int(lengths[v])], None, gamma, beta, target, lam) for v in range(9)
        ])
        for junk in (float("nan"), 1e30, -1e30):
            dirty = values.clone()
            dirty[torch.arange(6)[None, :] >= lengths[:, None]] = junk
            longer = torch.cat([dirty, torch.full((9, 2, 5), junk, dtype=dirty.dtype)], 1)
            for padded in (dirty, longer):
                sims = fovea_sims(padded, lengths, gamma, beta, target, lam, budget_bytes=3_000)
                assert torch.allclose(sims, alone, atol=1e-12)
                pairs = fovea_pair_scores(padded[:7], lengths[:7], gamma, beta, target, lam)
                assert torch.allclose(pairs, alone.diagonal(), atol=1e-12)


def test_pair_scores_are_the_diagonal():
    gen = torch.Generator().manual_seed(2)
    for ragged in (False, True):
        values, lengths, gamma, beta, target = random_case(gen, n_v=7, n_q=7, ragged=ragged)
        for lam in LAMS:
            full = fovea_sims(values, lengths, gamma, beta, target, lam)
            pairs = fovea_pair_scores(values, lengths, gamma, beta, target, lam)
            assert pairs.shape == (7,)
            assert torch.allclose(pairs, full.diagonal(), atol=1e-12)


def test_sims_do_not_depend_on_the_order_of_values():
    gen = torch.Generator().manual_seed(3)
    values, lengths, gamma, beta, target = random_case(gen, ragged=True)
    perm = torch.randperm(9, generator=gen)
    sims = fovea_sims(values, lengths, gamma, beta, target, 10.0, budget_bytes=3_000)
    permuted = fovea_sims(values[perm], lengths[perm], gamma, beta, target, 10.0, budget_bytes=3_000)
    assert torch.allclose(permuted, sims[perm], atol=1e-12)


# ---------------------------------------------------------------------------
# beta and the fovea mask


def test_fovea_mask_ignores_beta_but_the_score_does_not():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    gamma = torch.tensor([1.5, -2.0, 0.3, -0.7], dtype=torch.float64)
    beta = 3 * torch.randn(4, generator=gen, dtype=torch.float64)
    for lam in (1.0, 10.0):
        mask = fovea_mask(x, gamma, beta, lam)
        assert torch.allclose(mask.sum(0), torch.ones(4, dtype=torch.float64))
        assert torch.allclose(mask, fovea_mask(x, gamma, torch.zeros_like(beta), lam), atol=1e-12)
        assert (mask - fovea_mask(x, -gamma, beta, lam)).abs().max() > 0.1  # the mask does depend on gamma
        assert (mask - 0.2).abs().max() > 0.1  # and is far from uniform
    values, _, gammas, betas, target = random_case(gen, n_v=3, n_q=4, ragged=False)
    for lam in LAMS:
        base = fovea_sims(values, None, gammas, betas, target, lam)
        moved = fovea_sims(values, None, gammas, betas + 0.5, target, lam)
        assert (base - moved).abs().min() > 1e-3
        ref = fovea_sims_reference(values, None, gammas, betas + 0.5, target, lam)
        assert torch.allclose(moved, ref, atol=1e-10)


# ---------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("lam_kind", ["tensor", "none"])
def test_gradients_match_the_reference(lam_kind):
    gen = torch.Generator().manual_seed(5)
    values, lengths, gamma, beta, target = random_case(gen, n_v=4, n_q=3, n_max=4, dim=3, junk=0.7)
    weights = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: fovea_sims(*a, budget_bytes=800), fovea_sims_reference):
        inputs = [t.clone().requires_grad_() for t in (values, gamma, beta, target)]
        lam = torch.tensor(4.0, dtype=torch.float64, requires_grad=True) if lam_kind == "tensor" else None
        (fn(inputs[0], lengths, *inputs[1:], lam) * weights).sum().backward()
        grads.append([t.grad for t in inputs] + ([lam.grad] if lam is not None else []))
    for fast, ref in zip(*grads):
        assert torch.isfinite(fast).all()
        assert torch.allclose(fast, ref, atol=1e-10)
    pad = torch.arange(4)[None, :] >= lengths[:, None]
    assert (grads[0][0][pad] == 0).all() and (grads[0][0][~pad] != 0).any()  # no gradient reaches the padding


@pytest.mark.parametrize("lam_kind", ["tensor", "none"])
def test_gradcheck(lam_kind):
    gen = torch.Generator().manual_seed(6)
    values, lengths, gamma, beta, target = random_case(gen, n_v=3, n_q=2, n_max=3, dim=2, junk=0.3)
    inputs = [t.clone().requires_grad_() for t in (values, gamma, beta, target)]
    if lam_kind == "tensor":
        inputs.append(torch.tensor(2.5, dtype=torch.float64, requires_grad=True))

    def fn(v, g, b, t, lam=None):
        return fovea_sims(v, lengths, g, b, t, lam, budget_bytes=1_000)  # two or three blocks

    assert torch.autograd.gradcheck(fn, tuple(inputs))


# ---------------------------------------------------------------------------
# stability


@pytest.mark.parametrize("ragged", [False, True])
def test_large_logits_stay_finite(ragged):
    """lam * gamma * X of order 1e3 (both signs): a softmax shifted by the wrong extremum,
    or not shifted, overflows here."""
    gen = torch.Generator().manual_seed(7)
    values, lengths, gamma, beta, target = random_case(gen, ragged=ragged, junk=0.0)
    gamma = 20 * gamma.sign() * (1 + gamma.abs())  # |gamma| >= 20
    lam = 50.0
    assert (lam * gamma.abs().amin() * values.abs().amax()) > 1e3
    ref = fovea_sims_reference(values, lengths, gamma, beta, target, lam)
    assert torch.isfinite(ref).all()
    fast64 = fovea_sims(values, lengths, gamma, beta, target, lam, budget_bytes=4_000)
    assert torch.allclose(fast64, ref, atol=1e-10)
    fast32 = fovea_sims(values.float(), lengths, gamma.float(), beta.float(), target.float(), lam, budget_bytes=2_000)
    assert torch.isfinite(fast32).all()
    assert torch.allclose(fast32.double(), ref, atol=1e-4)
    pairs = fovea_pair_scores(values[:7].float(), None if lengths is None else lengths[:7], gamma.float(),
                              beta.float(), target.float(), lam)
    assert torch.allclose(pairs.double(), ref.diagonal(), atol=1e-4)


# ---------------------------------------------------------------------------
# bad input, empty input


def test_bad_shapes_are_refused():
    values = torch.randn(3, 4, 5)
    q = torch.randn(2, 5)
    lengths = torch.tensor([1, 4, 2])
    with pytest.raises(ValueError, match="values"):
        fovea_sims(values[0], None, q, q, q, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        fovea_sims(values, None, q[0], q[0], q[0], 1.0)
    with pytest.raises(ValueError, match="one shape"):
        fovea_sims(values, None, q, torch.randn(3, 5), q, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        fovea_sims_reference(values, None, q, q, torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="differ in size"):
        fovea_sims(values, None, q[:, :4], q[:, :4], q[:, :4], 1.0)
    with pytest.raises(ValueError, match="lengths must have shape"):
        fovea_sims(values, lengths[:2], q, q, q, 1.0)
    with pytest.raises(ValueError, match="lengths must lie"):
        fovea_sims(values, torch.tensor([0, 4, 2]), q, q, q, 1.0)
    with pytest.raises(ValueError, match="lengths must lie"):
        fovea_pair_scores(values[:2], torch.tensor([5, 1]), q, q, q, 1.0)
    with pytest.raises(ValueError, match="lam"):
        fovea_sims(values, None, q, q, q, torch.ones(2))
    with pytest.raises(ValueError, match="as many values as queries"):
        fovea_pair_scores(values, lengths, q, q, q, 1.0)
    assert fovea_sims(values[:0], None, q, q, q, 1.0).shape == (0, 2)
    assert fovea_sims(values, lengths, q[:0], q[:0], q[:0], None).shape == (3, 0)
    assert fovea_pair_scores(values[:0], None, q[:0], q[:0], q[:0], 1.0).shape == (0,)


# ---------------------------------------------------------------------------
# work and memory


def test_fovea_work_counts_one_exp_per_value_query_row_dimension():
    assert fovea_work(1000, 5000, 36, 1024) == 1000 * 5000 * 36 * 1024
    lengths = torch.tensor([3, 5, 4])
    assert fovea_work(1, 7, int(lengths.sum()), 8) == sum(fovea_work(1, 7, int(n), 8) for n in lengths)


@pytest.mark.parametrize("seed", range(4))
def test_block_plan_keeps_every_block_within_the_budget(seed):
    gen = torch.Generator().manual_seed(seed)
    n_v = int(torch.randint(1, 6000, (1,), generator=gen))
    n_q = int(torch.randint(1, 3000, (1,), generator=gen))
    lengths = torch.randint(1, int(torch.randint(1, 40, (1,), generator=gen)) + 1, (n_v,), generator=gen)
    dim = int(torch.randint(8, 2048, (1,), generator=gen))
    budget = int(torch.randint(1 << 20, 1 << 30, (1,), generator=gen))
    fovea = seed % 2 == 0
    plan = plan_fovea_blocks(lengths, n_queries=n_q, dim=dim, budget_bytes=budget, fovea=fovea)
    assert 1 <= plan.block_queries <= n_q
    covered = []
    for start, stop, length in plan.value_blocks:
        assert int(lengths[plan.order[start:stop]].max()) == length  # padded to its own longest value
        assert fovea_working_set_bytes(stop - start, plan.block_queries, length=length, dim=dim, fovea=fovea) <= budget
        covered.append(plan.order[start:stop])
    assert torch.equal(torch.sort(torch.cat(covered)).values, torch.arange(n_v))  # every value once
    bigger = plan_fovea_blocks(lengths, n_queries=n_q, dim=dim, budget_bytes=4 * budget, fovea=fovea)
    n_blocks = -(-n_q // plan.block_queries) * len(plan.value_blocks)
    assert -(-n_q // bigger.block_queries) * len(bigger.value_blocks) <= n_blocks


def test_budget_too_small_for_one_pair_is_refused():
    with pytest.raises(ValueError, match="cannot hold one value x one query"):
        plan_fovea_blocks(torch.tensor([36]), n_queries=1, dim=1024, budget_bytes=100_000, fovea=True)


# ---------------------------------------------------------------------------
# the benchmark at a toy size


def test_the_adapt_benchmark_runs_at_a_toy_size(monkeypatch):
    monkeypatch.setattr(bench_adapt, "QUICK", (4, 9, 16))

    def in_process(n_img, n_txt, dim, budget_bytes, device, repeats):
        return bench_adapt.run_probe(n_img, n_txt, dim, budget_bytes, device, repeats)

    x = torch.randn(1 << 16)
    exp = measure("exp", lambda: torch.exp(x), repeats=2, work=float(x.numel()), unit="exp")
    ceilings = Ceilings(flop=1e9, exp=exp.rate, byte=1e9)
    monkeypatch.setattr(bench_adapt, "_child", in_process)
    assert BENCHMARKS["adapt"] is bench_adapt.adapt
    res = bench_adapt.adapt(torch.device("cpu"), quick=True, ceilings=ceilings)
    assert res.name == "adapt" and "4 images" in res.description
    assert [t.unit for t in res.timings] == ["pair", "exp", "exp"]
    assert [k.kernel for k in res.kernels] == ["adapt-t2i", "adapt-i2t"]
    for k in res.kernels:  # the floor is the stated work at the exp rate handed in
        assert k.floor_seconds == pytest.approx(k.work / exp.rate) and k.ratio_to_floor == k.seconds / k.floor_seconds
        assert k.peak_extra_bytes >= 0 and set(k.to_dict()) >= {"kernel", "size", "seconds", "floor_seconds",
                                                              "ratio_to_floor", "peer_seconds", "speedup_vs_peer",
                                                              "peak_extra_bytes"}
    assert all(t.seconds > 0 for t in res.timings)
    for case in ("ADAPT-T2I", "ADAPT-I2T"):
        assert res.ratios[f"{case}: time / exp floor"] > 0
        assert res.ratios[f"{case}: time / SCAN t-i time"] > 0
        assert res.ratios[f"{case}: peak memory / stated bound"] >= 0
    assert sum("max abs difference to the reference" in n for n in res.notes) == 2
    assert all("finite: True" in n for n in res.notes if "finite" in n)


@pytest.mark.parametrize("ragged", [True, False])
@pytest.mark.parametrize("lam", [10.0, None])
def test_blocks_on_several_threads_give_the_one_thread_result_bit_for_bit(monkeypatch, ragged, lam):
    monkeypatch.setattr(adapt_fovea, "CPU_BLOCK_BYTES", 3_000)  # rows of small blocks, up to three at once
    ran = []
    real = adapt_fovea.run_blocks
    monkeypatch.setattr(adapt_fovea, "run_blocks", lambda fn, blocks, workers: (ran.append((len(blocks), workers)),
                                                                                real(fn, blocks, workers)))
    gen = torch.Generator().manual_seed(8)
    values, lengths, gamma, beta, target = random_case(gen, n_v=30, n_q=11, n_max=6, dim=5, ragged=ragged,
                                                       dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 3):
            torch.set_num_threads(n)
            results[n] = fovea_sims(values, lengths, gamma, beta, target, lam)
            assert torch.get_num_threads() == n
        assert torch.equal(results[1], results[3])
        assert [w for _, w in ran] == [1, 3] and ran[0][0] > 3
        ref = fovea_sims_reference(values.double(), lengths, gamma.double(), beta.double(), target.double(), lam)
        assert torch.allclose(results[3].double(), ref, atol=TOL[torch.float32], rtol=0)
    finally:
        torch.set_num_threads(threads)
