"""Cross-attention kernels (SCAN, BFAN): hand-checked cases, the fast blocked kernels
against the per-pair references on random inputs, padding, gradients, and the memory
arithmetic of the block planner."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.core.sim import cross_attention
from xmrbench.core.sim.cross_attention import (
    SCAN_TENSORS,
    plan_blocks,
    run_blocks,
    scan_pair_reference,
    scan_pair_scores,
    scan_sims,
    scan_sims_reference,
    working_set_bytes,
)
from xmrbench.core.sim.focal_attention import (
    BFAN_TENSORS,
    bfan_pair_reference,
    bfan_pair_scores,
    bfan_sims,
    bfan_sims_reference,
    focal_attention_reference,
    focal_reassign,
)

SCAN_SETTINGS = [
    dict(direction="t2i", pooling="lse", lambda_softmax=9.0, lambda_lse=6.0),
    dict(direction="t2i", pooling="avg", lambda_softmax=9.0, lambda_lse=6.0),
    dict(direction="i2t", pooling="lse", lambda_softmax=4.0, lambda_lse=20.0),
    dict(direction="i2t", pooling="avg", lambda_softmax=4.0, lambda_lse=5.0),
]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_inputs(gen, n_img=5, n_txt=9, regions=7, max_len=8, dim=6, dtype=torch.float64, junk=0.0):
    """Unit-norm regions and words; caption lengths 1..max_len; the padding holds ``junk``
    (random values where junk is 0.0, else the given constant, NaN included)."""
    img = torch.nn.functional.normalize(torch.randn(n_img, regions, dim, generator=gen, dtype=dtype), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(n_txt, max_len, dim, generator=gen, dtype=dtype), dim=-1)
    lengths = torch.randint(1, max_len + 1, (n_txt,), generator=gen)
    lengths[0], lengths[-1] = 1, max_len  # always one one-word caption and one full one
    if junk != 0.0:
        pad = torch.arange(max_len)[None, :] >= lengths[:, None]
        words[pad] = junk
    return img, words, lengths


# ---------------------------------------------------------------------------
# hand-checked cases


def test_scan_hand_checked_two_regions_one_word():
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    words = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # t2i: the word's raw scores (1, 0) -> clipped_l2norm over the one word -> (1, 0);
    # softmax over regions with lambda 9 -> (e^9, 1) / (e^9 + 1); attended = that
    # mixture of the two unit axes; cosine with (1, 0) = 1 / sqrt(1 + e^-18).
    expect_t2i = 1 / math.sqrt(1 + math.exp(-18))
    for pooling in ("avg", "lse"):  # one word: both poolings return its relevance
        got = scan_pair_reference(regions, words, direction="t2i", lambda_softmax=9, pooling=pooling, lambda_lse=6)
        assert got.item() == pytest.approx(expect_t2i, abs=1e-12)
    # i2t: one word to attend to, so each region's attended vector is the word:
    # relevances cos(v1, e) = 1, cos(v2, e) = 0.
    avg = scan_pair_reference(regions, words, direction="i2t", lambda_softmax=4, pooling="avg", lambda_lse=5)
    lse = scan_pair_reference(regions, words, direction="i2t", lambda_softmax=4, pooling="lse", lambda_lse=5)
    assert avg.item() == pytest.approx(0.5, abs=1e-12)
    assert lse.item() == pytest.approx(math.log(math.exp(5) + 1) / 5, abs=1e-12)
    fast = scan_sims(regions[None], words[None], torch.tensor([1]), direction="t2i")
    assert fast.item() == pytest.approx(expect_t2i, abs=1e-12)


def test_focal_reassign_hand_checked():
    alpha = torch.tensor([[0.6, 0.35, 0.05]], dtype=torch.float64)
    # equal: the mean is 1/3, so 0.6 and 0.35 stay
    equal = focal_reassign(alpha.clone(), dim=1, count=3, focal="equal", inplace=False)
    assert torch.allclose(equal, torch.tensor([[0.6, 0.35, 0.0]], dtype=torch.float64) / 0.95)
    # prob: sum a^1.5 / sum a^0.5 = 0.683 / 1.590 = 0.4297, so only 0.6 stays
    prob = focal_reassign(alpha.clone(), dim=1, count=3, focal="prob", inplace=True)
    assert torch.allclose(prob, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    # all equal (F = 0 everywhere): nothing is discarded
    flat = torch.full((1, 4), 0.25, dtype=torch.float64)
    for focal in ("equal", "prob"):
        assert torch.equal(focal_reassign(flat.clone(), dim=1, count=4, focal=focal, inplace=False), flat)


def test_bfan_hand_checked_two_regions_one_word():
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    words = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # t2i: attention (e^20, 1) / (e^20 + 1); region 2 lies below both thresholds and is
    # discarded, so the word attends to region 1 only: relevance 1.
    # i2t: one word, equal attention: kept (no NaN); relevances (1, 0), mean 0.5.
    for focal in ("equal", "prob"):
        got = bfan_pair_reference(regions, words, focal=focal, lambda_softmax=20)
        assert got.item() == pytest.approx(1.5, abs=1e-12)
        fast = bfan_sims(regions[None], words[None], torch.tensor([1]), focal=focal)
        assert fast.item() == pytest.approx(1.5, abs=1e-12)


def test_focal_reference_matches_the_pairwise_definition():
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    context = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    for focal in ("equal", "prob"):
        re = focal_attention_reference(query, context, focal=focal, lambda_softmax=20)
        assert torch.allclose(re.sum(1), torch.ones(4, dtype=torch.float64))
        assert ((re == 0).sum(1) >= 1).all()  # something is discarded for generic inputs
        fast = focal_reassign(
            torch.softmax(20 * torch.nn.functional.normalize(
                torch.nn.functional.leaky_relu(context @ query.T, 0.1), dim=1).T, dim=1),
            dim=1, count=6, focal=focal, inplace=False,
        )
        assert torch.allclose(re, fast, atol=1e-12)


# ---------------------------------------------------------------------------
# fast kernels against the references


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("setting", SCAN_SETTINGS, ids=lambda s: f"{s['direction']}-{s['pooling']}")
def test_scan_fast_matches_reference(dtype, setting, device):
    gen = torch.Generator().manual_seed(0)
    img, words, lengths = random_inputs(gen, n_img=6, n_txt=11, dtype=dtype)
    ref = scan_sims_reference(img, words, lengths, **setting)
    for budget in (6_000, 50_000, 1 << 30):  # many small blocks, a few, one
        fast = scan_sims(img.to(device), words.to(device), lengths, budget_bytes=budget, **setting)
        assert fast.shape == (6, 11) and fast.dtype == dtype and fast.device.type == device
        assert torch.allclose(fast.cpu(), ref, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("focal", ["equal", "prob"])
def test_bfan_fast_matches_reference(dtype, focal, device):
    gen = torch.Generator().manual_seed(1)
    img, words, lengths = random_inputs(gen, n_img=5, n_txt=10, dtype=dtype)
    ref = bfan_sims_reference(img, words, lengths, focal=focal, lambda_softmax=20.0)
    assert torch.isfinite(ref).all()
    for budget in (12_000, 1 << 30):
        fast = bfan_sims(img.to(device), words.to(device), lengths, focal=focal, lambda_softmax=20.0, budget_bytes=budget)
        assert torch.allclose(fast.cpu(), ref, atol=TOL[dtype], rtol=0)


def test_realistic_shapes_agree_in_float32():
    gen = torch.Generator().manual_seed(2)
    img, words, lengths = random_inputs(gen, n_img=3, n_txt=6, regions=36, max_len=20, dim=64, dtype=torch.float32)
    for setting in SCAN_SETTINGS:
        ref = scan_sims_reference(img, words, lengths, **setting)
        assert torch.allclose(scan_sims(img, words, lengths, budget_bytes=200_000, **setting), ref, atol=1e-5, rtol=0)
    for focal in ("equal", "prob"):
        ref = bfan_sims_reference(img, words, lengths, focal=focal)
        assert torch.allclose(bfan_sims(img, words, lengths, focal=focal), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("junk", [0.0, 1e6, float("nan")], ids=["random", "huge", "nan"])
def test_padded_words_never_count(junk):
    """Whatever the padding holds, the scores are those of the captions cut to their length."""
    gen = torch.Generator().manual_seed(4)
    img, words, lengths = random_inputs(gen, n_img=4, n_txt=7, dtype=torch.float64, junk=junk)
    trimmed_ref = {}
    for t in range(7):  # each caption alone, with no padding at all
        alone = words[t : t + 1, : int(lengths[t])]
        for i, setting in enumerate(SCAN_SETTINGS):
            trimmed_ref[("scan", i, t)] = scan_sims(img, alone, lengths[t : t + 1], **setting)[:, 0]
        for focal in ("equal", "prob"):
            trimmed_ref[(focal, t)] = bfan_sims(img, alone, lengths[t : t + 1], focal=focal)[:, 0]
    longer = torch.cat([words, torch.full((7, 3, words.shape[2]), 7.0, dtype=words.dtype)], 1)  # more padding
    for padded in (words, longer):
        for i, setting in enumerate(SCAN_SETTINGS):
            sims = scan_sims(img, padded, lengths, budget_bytes=20_000, **setting)
            for t in range(7):
                assert torch.allclose(sims[:, t], trimmed_ref[("scan", i, t)], atol=1e-12)
        for focal in ("equal", "prob"):
            sims = bfan_sims(img, padded, lengths, focal=focal, budget_bytes=30_000)
            for t in range(7):
                assert torch.allclose(sims[:, t], trimmed_ref[(focal, t)], atol=1e-12)


def test_pair_scores_are_the_diagonal():
    gen = torch.Generator().manual_seed(5)
    img, words, lengths = random_inputs(gen, n_img=8, n_txt=8, dtype=torch.float64)
    for setting in SCAN_SETTINGS:
        full = scan_sims(img, words, lengths, **setting)
        assert torch.allclose(scan_pair_scores(img, words, lengths, **setting), full.diagonal(), atol=1e-12)
    for focal in ("equal", "prob"):
        full = bfan_sims(img, words, lengths, focal=focal)
        assert torch.allclose(bfan_pair_scores(img, words, lengths, focal=focal), full.diagonal(), atol=1e-12)


@pytest.mark.parametrize("kind", ["scan-t2i", "scan-i2t", "bfan-equal", "bfan-prob"])
def test_gradients_match_the_reference(kind):
    gen = torch.Generator().manual_seed(6)
    img, words, lengths = random_inputs(gen, n_img=3, n_txt=5, regions=4, max_len=6, dim=5, dtype=torch.float64)
    weights = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    model, variant = kind.split("-")
    if model == "scan":
        kw = dict(direction=variant, pooling="lse", lambda_softmax=5.0, lambda_lse=6.0)
        fast_fn = lambda a, b: scan_sims(a, b, lengths, budget_bytes=3_000, **kw)  # noqa: E731
        ref_fn = lambda a, b: scan_sims_reference(a, b, lengths, **kw)  # noqa: E731
    else:
        fast_fn = lambda a, b: bfan_sims(a, b, lengths, focal=variant, budget_bytes=6_000)  # noqa: E731
        ref_fn = lambda a, b: bfan_sims_reference(a, b, lengths, focal=variant)  # noqa: E731
    grads = []
    for fn in (fast_fn, ref_fn):
        a, b = img.clone().requires_grad_(), words.clone().requires_grad_()
        (fn(a, b) * weights).sum().backward()
        grads.append((a.grad, b.grad))
    (ga, gb), (ra, rb) = grads
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert torch.allclose(ga, ra, atol=1e-10) and torch.allclose(gb, rb, atol=1e-10)
    pad = torch.arange(6)[None, :] >= lengths[:, None]
    assert (gb[pad] == 0).all()  # no gradient reaches a padded word


def test_empty_and_invalid_inputs():
    img = torch.randn(3, 4, 5)
    words = torch.randn(2, 6, 5)
    assert scan_sims(img[:0], words, torch.tensor([2, 3])).shape == (0, 2)
    assert bfan_sims(img, words[:0], torch.zeros(0, dtype=torch.long)).shape == (3, 0)
    with pytest.raises(ValueError, match="lengths"):
        scan_sims(img, words, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="lengths"):
        scan_sims(img, words, torch.tensor([7, 3]))
    with pytest.raises(ValueError, match="differ in size"):
        scan_sims(img, torch.randn(2, 6, 4), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="direction"):
        scan_sims(img, words, torch.tensor([2, 3]), direction="both")


def test_sims_do_not_depend_on_the_order_of_captions():
    gen = torch.Generator().manual_seed(7)
    img, words, lengths = random_inputs(gen, n_img=4, n_txt=9)
    perm = torch.randperm(9, generator=gen)
    sims = scan_sims(img, words, lengths, budget_bytes=10_000)
    assert torch.allclose(scan_sims(img, words[perm], lengths[perm], budget_bytes=10_000), sims[:, perm], atol=1e-12)


# ---------------------------------------------------------------------------
# memory bound


@pytest.mark.parametrize("seed", range(6))
def test_block_plan_keeps_every_block_within_the_budget(seed):
    gen = torch.Generator().manual_seed(seed)
    n_img = int(torch.randint(1, 3000, (1,), generator=gen))
    n_txt = int(torch.randint(1, 15000, (1,), generator=gen))
    max_len = int(torch.randint(1, 60, (1,), generator=gen))
    lengths = torch.randint(1, max_len + 1, (n_txt,), generator=gen)
    dim = int(torch.randint(8, 2048, (1,), generator=gen))
    regions = int(torch.randint(1, 50, (1,), generator=gen))
    tensors = [SCAN_TENSORS, BFAN_TENSORS][seed % 2]
    budget = int(torch.randint(1 << 20, 1 << 31, (1,), generator=gen))
    kw = dict(n_regions=regions, dim=dim, tensors=tensors)
    plan = plan_blocks(lengths, n_images=n_img, budget_bytes=budget, **kw)
    assert 1 <= plan.block_images <= n_img
    covered = []
    for start, stop, length in plan.caption_blocks:
        block_lengths = lengths[plan.order[start:stop]]
        assert int(block_lengths.max()) == length  # padded to its own longest caption
        assert working_set_bytes(plan.block_images, stop - start, length=length, **kw) <= budget
        covered.append(plan.order[start:stop])
    assert torch.equal(torch.sort(torch.cat(covered)).values, torch.arange(n_txt))  # every caption once
    # a larger budget never needs more blocks
    bigger = plan_blocks(lengths, n_images=n_img, budget_bytes=4 * budget, **kw)
    n_blocks = -(-n_img // plan.block_images) * len(plan.caption_blocks)
    assert -(-n_img // bigger.block_images) * len(bigger.caption_blocks) <= n_blocks


def test_scan_1k_x_5k_plan_fits_2gb():
    """The default budget covers SCAN's 1K x 5K case (36 regions, d = 1024) with room to spare."""
    lengths = torch.randint(6, 52, (5000,), generator=torch.Generator().manual_seed(0))
    budget = 512 * 2**20
    plan = plan_blocks(lengths, n_images=1000, n_regions=36, dim=1024, budget_bytes=budget, tensors=SCAN_TENSORS)
    grams = 1000 * 36 * 37 * 4
    output = 1000 * 5000 * 4
    assert budget + grams + output < 2 * 2**30
    assert plan.block_images >= 8 and len(plan.caption_blocks) < 200  # blocks stay large enough to be fast


def test_budget_too_small_for_one_pair_is_refused():
    with pytest.raises(ValueError, match="cannot hold one image x one caption"):
        plan_blocks(torch.tensor([10]), n_images=1, n_regions=36, dim=1024, budget_bytes=1000, tensors=3)


def test_blocks_on_several_threads_give_the_one_thread_result_bit_for_bit(monkeypatch):
    monkeypatch.setattr(cross_attention, "CPU_BLOCK_BYTES", 20_000)  # rows of small blocks, up to three at once
    gen = torch.Generator().manual_seed(6)
    img, words, lengths = random_inputs(gen, n_img=6, n_txt=40, regions=7, max_len=12, dim=16, dtype=torch.float32)
    ran = []
    real = cross_attention.run_blocks
    monkeypatch.setattr(cross_attention, "run_blocks", lambda fn, blocks, workers: (ran.append((len(blocks), workers)),
                                                                                    real(fn, blocks, workers)))
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 3):
            torch.set_num_threads(n)
            results[n] = (scan_sims(img, words, lengths), bfan_sims(img, words, lengths))
            assert torch.get_num_threads() == n  # restored after the blocks ran single-threaded
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[3]))
        assert [w for _, w in ran] == [1, 1, 3, 3] and min(b for b, _ in ran) > 3
    finally:
        torch.set_num_threads(threads)


def test_run_blocks_restores_the_thread_count_when_a_block_fails():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def fail(block):
            if block == 3:
                raise ValueError("block 3")
        with pytest.raises(ValueError, match="block 3"):
            run_blocks(fail, list(range(6)), workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
