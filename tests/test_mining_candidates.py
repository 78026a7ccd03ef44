"""One-pass candidate mining (core/mining.py), the offline_candidates miner, the candidate
files (data/candidates.py) and the mining benchmark at a toy size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.bench import mining as bench_mining
from xmrbench.bench.registry import BENCHMARKS
from xmrbench.core import mining
from xmrbench.core.mining import (
    MINING_BLOCK_IMAGES,
    key_index,
    key_scores,
    mine_candidates,
    mining_memory_bound,
    order_keys,
)
from xmrbench.data.candidates import candidate_paths, read_candidates, write_candidates
from xmrbench.engine.evaluate import encode, similarity_matrix
from xmrbench.engine.miners import MINERS
from xmrbench.errors import DataError

from toy import toy_model_and_split


def naive_i2t(sims: np.ndarray, caption_image: np.ndarray, k: int) -> np.ndarray:
    """Per image row: every caption of another image, sorted by (score desc, index asc)."""
    out = []
    for i in range(sims.shape[0]):
        cands = [j for j in range(sims.shape[1]) if caption_image[j] != i]
        cands.sort(key=lambda j: (-float(sims[i, j]), j))
        out.append(cands[:k])
    return np.array(out, dtype=np.int64)


def naive_t2i(sims: np.ndarray, caption_image: np.ndarray, k: int) -> np.ndarray:
    """Per caption column: every other image, sorted by (score desc, index asc)."""
    out = []
    for j in range(sims.shape[1]):
        cands = [i for i in range(sims.shape[0]) if i != caption_image[j]]
        cands.sort(key=lambda i: (-float(sims[i, j]), i))
        out.append(cands[:k])
    return np.array(out, dtype=np.int64)


def _sims(kind: str, n_img: int, n_txt: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sims = torch.randn(n_img, n_txt, generator=gen)
    if kind == "coarse":  # a few distinct values: ties everywhere, at every threshold
        sims = torch.round(sims * 2) / 2
    elif kind == "constant":  # one value: the lists are the lowest indices
        sims = torch.zeros(n_img, n_txt)
    elif kind == "signed_zeros":  # -0.0 and 0.0 are equal scores, ranked by index
        sims = torch.where(sims > 0, torch.zeros_like(sims), -torch.zeros_like(sims))
        sims[::3, ::4] = 1.0
    return sims


def _mine(sims: torch.Tensor, caption_image: torch.Tensor, k_texts: int, k_images: int, block: int, **tiles):
    before = sims.clone()
    i2t, t2i = mine_candidates(lambda rows, cols: sims[rows, cols], n_images=sims.shape[0],
                               caption_image=caption_image, k_texts=k_texts, k_images=k_images, block_images=block,
                               **tiles)
    assert torch.equal(sims, before)  # the blocks are the caller's: never written to
    assert i2t.dtype == torch.int32 and t2i.dtype == torch.int32
    return i2t.numpy(), t2i.numpy()


@pytest.mark.parametrize("kind", ["random", "coarse", "constant", "signed_zeros"])
@pytest.mark.parametrize(("block", "chunk", "slots"), [(1, 69, 256), (4, 5, 2), (7, 16, 7), (10, 3, 1), (64, 500, 30)])
def test_one_pass_equals_a_naive_sort(kind, block, chunk, slots):
    n_img, cpi = 23, 3  # no block or chunk size above divides 23 images or 69 captions
    sims = _sims(kind, n_img, n_img * cpi, seed=block)
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    for k_texts, k_images in ((5, 3), (17, 9), (66, 22), (1, 1)):
        i2t, t2i = _mine(sims, caption_image, k_texts, k_images, block, chunk_captions=chunk, slots=slots)
        assert i2t.shape == (n_img, k_texts) and t2i.shape == (n_img * cpi, k_images)
        np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), k_texts))
        np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), k_images))


def test_ties_across_block_boundaries_go_to_the_lower_index():
    n_img, cpi = 10, 2
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    sims = torch.zeros(n_img, n_img * cpi)
    sims[[2, 5, 6, 9], :] = 1.0  # four equal best images per caption, in three different blocks of 3
    sims[:, [1, 7, 12, 19]] = 2.0  # four equal best captions per image
    i2t, t2i = _mine(sims, caption_image, 5, 3, block=3, chunk_captions=6, slots=2)
    assert t2i[0].tolist() == [2, 5, 6]  # caption 0 (image 0): the three lowest of the tied four
    assert t2i[13].tolist() == [2, 5, 9]  # caption 13 belongs to image 6: skipped
    assert i2t[0].tolist() == [7, 12, 19, 2, 3]  # image 0 owns captions 0 and 1
    assert i2t[3].tolist() == [1, 12, 19, 0, 2]  # image 3 owns 6 and 7
    np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), 5))
    np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), 3))


def test_tiles_are_asked_for_block_by_block_in_caption_order_and_may_be_views():
    n_img, cpi = 11, 4
    sims = _sims("coarse", n_img, n_img * cpi, seed=3)
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    by_caption = sims.T.contiguous()
    asked = []

    def tile(rows, cols):
        asked.append((rows.start, rows.stop, cols.start, cols.stop))
        return by_caption[cols, rows].T  # a transposed view, not contiguous

    i2t, t2i = mine_candidates(tile, n_images=n_img, caption_image=caption_image, k_texts=9, k_images=4,
                               block_images=4, chunk_captions=20, slots=3)
    assert asked == [(b, min(b + 4, 11), c, min(c + 20, 44)) for b in (0, 4, 8) for c in (0, 20, 40)]
    np.testing.assert_array_equal(i2t.numpy(), naive_i2t(sims.numpy(), caption_image.numpy(), 9))
    np.testing.assert_array_equal(t2i.numpy(), naive_t2i(sims.numpy(), caption_image.numpy(), 4))


@pytest.mark.parametrize("kind", ["random", "coarse"])
def test_small_chunks_give_the_same_lists(monkeypatch, kind):
    """Tiny chunks: many chunks of rows and captions, groups of captions, frequent reductions."""
    monkeypatch.setattr(mining, "CHUNK_BYTES", 4096)
    n_img, cpi = 100, 5
    sims = _sims(kind, n_img, n_img * cpi, seed=7)
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    i2t, t2i = _mine(sims, caption_image, 40, 25, block=9, chunk_captions=70, slots=11)
    np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), 40))
    np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), 25))


def test_crowded_rows_go_slice_by_slice_and_the_others_in_one_pass(monkeypatch):
    """Rows whose scores rise with the caption index pass every entry of every tile (more
    than their room even after a reduction): only they take the sliced path, and every
    list still equals the naive sort."""
    n_img, cpi = 12, 4
    sims = _sims("random", n_img, n_img * cpi, seed=5)
    sims[:, 16:] -= 1.5  # after the first chunk of captions, a few entries per row pass
    sims[[1, 6]] = torch.arange(n_img * cpi, dtype=torch.float32) / 10  # rows 1 and 6: rising
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    whole, sliced = [], []
    add_rows, add_sliced = mining._RunningLists._add_rows, mining._RunningLists._add_sliced

    def spy_rows(self, scores, rows, *args):
        if self.k == 6:  # the caption lists
            whole.append(rows.tolist())
        return add_rows(self, scores, rows, *args)

    def spy_sliced(self, scores, rows, *args):
        if self.k == 6:
            sliced.append(rows.tolist())
        return add_sliced(self, scores, rows, *args)

    monkeypatch.setattr(mining._RunningLists, "_add_rows", spy_rows)
    monkeypatch.setattr(mining._RunningLists, "_add_sliced", spy_sliced)
    i2t, t2i = _mine(sims, caption_image, 6, 3, block=n_img, chunk_captions=16, slots=4)
    np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), 6))
    np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), 3))
    assert len(whole) == 3 and len(sliced) == 3  # three chunks of captions; every one has crowded rows
    assert sliced[0] == list(range(n_img))  # the first chunk: every row has more than 4 entries
    assert sliced[1] == sliced[2] == [1, 6]  # later: only the rising rows
    assert len(whole[1]) > 2 and len(whole[2]) > 2  # the others with an entry to add: in one pass


@pytest.mark.parametrize("seed", [0, 1])
def test_uneven_captions_per_image_and_other_dtypes(seed):
    gen = torch.Generator().manual_seed(seed)
    n_img, n_txt = 13, 40
    caption_image = torch.randint(0, n_img - 1, (n_txt,), generator=gen)  # image 12 has no caption
    most = int(torch.bincount(caption_image).max())
    sims = torch.round(torch.randn(n_img, n_txt, generator=gen) * 4) / 4
    for dtype in (torch.float32, torch.float16, torch.float64):  # values exact in all three
        i2t, t2i = _mine(sims.to(dtype), caption_image, n_txt - most, n_img - 1, block=5)
        np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), n_txt - most))
        np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), n_img - 1))


def test_order_keys_sort_by_score_then_index():
    scores = torch.tensor([0.5, -0.0, 0.0, -1.5, float("inf"), -2.0, 0.5, float("-inf"), 1e-30, -1e-30])
    index = torch.arange(len(scores))
    keys = order_keys(scores, index)
    got = torch.argsort(keys, descending=True).tolist()
    want = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    assert got == want
    assert torch.equal(key_index(keys), index)
    assert torch.equal(key_scores(keys), scores + 0.0)


def test_k_beyond_the_negatives_and_bad_inputs_are_errors():
    sims = torch.zeros(4, 8)
    caption_image = torch.arange(4).repeat_interleave(2)

    def mine(**kw):
        args = dict(n_images=4, caption_image=caption_image, k_texts=2, k_images=2, block_images=3)
        args.update(kw)
        return mine_candidates(lambda rows, cols: sims[rows, cols], **args)

    with pytest.raises(ValueError, match="k=7 exceeds the 6 captions of other images"):
        mine(k_texts=7)
    with pytest.raises(ValueError, match="k=4 exceeds the 3 other images"):
        mine(k_images=4)
    with pytest.raises(ValueError, match="at least 1"):
        mine(k_texts=0)
    for name in ("block_images", "chunk_captions", "slots"):
        with pytest.raises(ValueError, match=f"{name} must be at least 1"):
            mine(**{name: 0})
    with pytest.raises(ValueError, match="image indices in 0..3"):
        mine(caption_image=caption_image + 1)
    with pytest.raises(ValueError, match=r"tile\(0:4, 0:8\) returned shape \(4, 5\), expected \(4, 8\)"):
        mine_candidates(lambda rows, cols: sims[rows, :5], n_images=4, caption_image=caption_image, k_texts=2,
                        k_images=2)
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = sims.clone()
        bad[2, 5] = value
        with pytest.raises(ValueError, match="finite"):
            mine_candidates(lambda rows, cols, bad=bad: bad[rows, cols], n_images=4, caption_image=caption_image,
                            k_texts=2, k_images=2)
    mine(k_texts=6, k_images=3)  # every negative: allowed


def test_large_finite_scores_whose_sum_overflows_are_accepted():
    sims = torch.full((4, 8), 3e38)  # the sum is inf; every score is finite
    sims[1, 2] = -3e38
    caption_image = torch.arange(4).repeat_interleave(2)
    i2t, t2i = _mine(sims, caption_image, 3, 2, block=3)
    np.testing.assert_array_equal(i2t, naive_i2t(sims.numpy(), caption_image.numpy(), 3))
    np.testing.assert_array_equal(t2i, naive_t2i(sims.numpy(), caption_image.numpy(), 2))


def _toy_model_and_split():
    return toy_model_and_split()


@pytest.mark.parametrize(("params", "widths"), [({}, (295, 59)), ({"texts": 7, "images": 4}, (7, 4))])
def test_the_miner_equals_the_naive_lists_of_the_whole_matrix(params, widths):
    model, split = _toy_model_and_split()
    miner_cls = MINERS["offline_candidates"]
    assert miner_cls.Params().texts == 2000 and miner_cls.Params().images == 400  # the release widths
    out = miner_cls(miner_cls.Params(**params)).mine(model, split, device=torch.device("cpu"), batch_size=13,
                                                    block_images=11)
    # the same encoding batches and blocks of 11 image rows as the miner's: the same sums to the last bit
    enc = encode(model, split, device=torch.device("cpu"), batch_size=13)
    sims = similarity_matrix(model, enc, block_images=11).numpy()
    caption_image = split.caption_image()
    k_texts, k_images = widths  # 300 captions less an image's 5; 60 images less its own
    assert out["i2t"].dtype == torch.int32 and out["t2i"].dtype == torch.int32
    assert tuple(out["i2t"].shape) == (60, k_texts) and tuple(out["t2i"].shape) == (300, k_images)
    np.testing.assert_array_equal(out["i2t"].numpy(), naive_i2t(sims, caption_image, k_texts))
    np.testing.assert_array_equal(out["t2i"].numpy(), naive_t2i(sims, caption_image, k_images))


def test_the_memory_bound_at_the_release_scale_is_within_2_gib():
    for threads in (1, torch.get_num_threads(), 64):
        bound = mining_memory_bound(150_000, 2000, 400, MINING_BLOCK_IMAGES, 4, n_images=30_000, threads=threads)
        assert bound < 2 * 2**30
    # it grows with the tile and the slots, not with the number of images beyond the int32 result
    small, large = (mining_memory_bound(150_000, 2000, 400, b, 4) for b in (1024, 4096))
    assert small < large
    small, large = (mining_memory_bound(150_000, 2000, 400, 4096, 4, chunk_captions=c) for c in (4096, 8192))
    assert small < large
    small, large = (mining_memory_bound(150_000, 2000, 400, slots=w) for w in (256, 512))
    assert large - small >= 8 * 150_000 * 256  # the image lists of every caption, and some scratch
    extra = mining_memory_bound(150_000, 2000, 400, n_images=60_000) - mining_memory_bound(
        150_000, 2000, 400, n_images=30_000)
    assert extra == 4 * 30_000 * 2000


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------

N_IMG, CPI = 6, 5
N_TXT = N_IMG * CPI


def _lists(k_texts: int = 8, k_images: int = 3) -> tuple[np.ndarray, np.ndarray]:
    sims = _sims("random", N_IMG, N_TXT, seed=5)
    caption_image = torch.arange(N_IMG).repeat_interleave(CPI)
    return _mine(sims, caption_image, k_texts, k_images, block=4)


def _read(p_i2t, p_t2i, **kw):
    args = dict(n_images=N_IMG, n_captions=N_TXT, captions_per_image=CPI, min_texts=8, min_images=3)
    args.update(kw)
    return read_candidates(p_i2t, p_t2i, **args)


def test_files_round_trip(tmp_path):
    i2t, t2i = _lists()
    paths = write_candidates(tmp_path / "lists", "toy", torch.from_numpy(i2t), t2i.astype(np.int64))
    assert paths == candidate_paths(tmp_path / "lists", "toy")
    assert [p.name for p in paths] == ["i2t_toy.npy", "t2i_toy.npy"]
    assert sorted(p.name for p in (tmp_path / "lists").iterdir()) == ["i2t_toy.npy", "t2i_toy.npy"]  # no temp left
    assert np.load(paths[0]).dtype == np.int32 and np.load(paths[1]).dtype == np.int32
    got_i2t, got_t2i = _read(*paths)
    assert got_i2t.dtype == torch.int64 and got_t2i.dtype == torch.int64
    np.testing.assert_array_equal(got_i2t.numpy(), i2t)
    np.testing.assert_array_equal(got_t2i.numpy(), t2i)
    write_candidates(tmp_path / "lists", "toy", i2t[:, :4], t2i)  # replaces the file in place
    assert np.load(paths[0]).shape == (N_IMG, 4)


def _bad_files(tmp_path, case: str):
    """Write a good pair, then spoil one file; returns (paths, the spoiled path)."""
    i2t, t2i = _lists()
    p_i2t, p_t2i = write_candidates(tmp_path, "toy", i2t, t2i)
    if case == "missing":
        p_t2i.unlink()
        return (p_i2t, p_t2i), p_t2i
    if case == "not_npy":
        p_i2t.write_bytes(b"i2t, but not an array\n")
    elif case == "pickled":
        np.save(p_i2t, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    elif case == "not_2d":
        np.save(p_t2i, t2i.reshape(-1))
        return (p_i2t, p_t2i), p_t2i
    elif case == "float":
        np.save(p_i2t, i2t.astype(np.float32))
    elif case == "rows":
        np.save(p_i2t, i2t[:-1])
    elif case == "columns":
        np.save(p_t2i, t2i[:, :2])
        return (p_i2t, p_t2i), p_t2i
    elif case == "range":
        bad = i2t.copy()
        bad[4, 2] = N_TXT
        np.save(p_i2t, bad)
    elif case == "negative":
        bad = t2i.copy()
        bad[7, 0] = -1
        np.save(p_t2i, bad)
        return (p_i2t, p_t2i), p_t2i
    elif case == "own_caption":
        bad = i2t.copy()
        bad[3, 5] = 3 * CPI + 2  # a caption of image 3
        np.save(p_i2t, bad)
    elif case == "own_image":
        bad = t2i.copy()
        bad[11, 1] = 11 // CPI
        np.save(p_t2i, bad)
        return (p_i2t, p_t2i), p_t2i
    return (p_i2t, p_t2i), p_i2t


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("not_npy", "not a readable .npy file"),
        ("pickled", "not a readable .npy file"),
        ("not_2d", "expected a 2-D array"),
        ("float", "expected integer indices, got dtype float32"),
        ("rows", "expected 6 rows (one per image), found 5"),
        ("columns", "holds 2 images per caption, fewer than the 3 needed"),
        ("range", "row 4 holds 30, outside the caption indices 0..29"),
        ("negative", "row 7 holds -1, outside the image indices 0..5"),
        ("own_caption", "row 3 lists a caption of its own image"),
        ("own_image", "row 11 lists its own image"),
    ],
)
def test_read_errors_are_one_line_naming_the_file(tmp_path, case, message):
    paths, spoiled = _bad_files(tmp_path, case)
    with pytest.raises(DataError) as err:
        _read(*paths)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{spoiled}: ") and message in text
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_more_columns_than_needed_and_unsigned_indices_are_accepted(tmp_path):
    i2t, t2i = _lists(k_texts=10, k_images=4)
    p_i2t, p_t2i = write_candidates(tmp_path, "toy", i2t, t2i)
    np.save(p_t2i, t2i.astype(np.uint16))
    got_i2t, got_t2i = _read(p_i2t, p_t2i)
    assert tuple(got_i2t.shape) == (N_IMG, 10) and tuple(got_t2i.shape) == (N_TXT, 4)
    with pytest.raises(DataError, match="invalid candidate set name"):
        candidate_paths(tmp_path, "../toy")


# ---------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------


def test_faiss_exact_search_gives_the_miners_lists():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(40, 24, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(200, 24, generator=gen), dim=1)
    caption_image = torch.arange(200) // 5
    i2t, t2i = mine_candidates(lambda rows, cols: img[rows] @ txt[cols].T, n_images=40,
                               caption_image=caption_image, k_texts=15, k_images=6, block_images=16,
                               chunk_captions=64)
    f_i2t, f_t2i = bench_mining.faiss_lists(img.numpy(), txt.numpy(), caption_image.numpy(), 15, 6)
    # random scores have no ties; faiss's own dot products may order two near-equal scores
    # differently, so compare the lists as sets and most of the order
    assert all(set(a) == set(b) for a, b in zip(i2t.tolist(), f_i2t.tolist()))
    assert all(set(a) == set(b) for a, b in zip(t2i.tolist(), f_t2i.tolist()))
    assert (i2t.numpy() == f_i2t).mean() > 0.95 and (t2i.numpy() == f_t2i).mean() > 0.95


def test_the_faiss_peer_times_a_subset_of_the_queries_and_scales():
    pytest.importorskip("faiss")
    got = bench_mining.run_faiss(200, 40, 16, 10, 5, max_queries=8)
    assert got["queries"] == [8, 40] and got["shapes"] == [[8, 10], [40, 5]] and got["seconds"] > 0


def test_the_mining_benchmark_runs_at_a_toy_size(monkeypatch):
    for name, value in (("QUICK_CAPTIONS", 300), ("QUICK_IMAGES", 60), ("DIM", 16), ("K_TEXTS", 20),
                        ("K_IMAGES", 10)):
        monkeypatch.setattr(bench_mining, name, value)
    assert BENCHMARKS["mining"] is bench_mining.mining
    res = bench_mining.mining(torch.device("cpu"), quick=True)
    assert res.name == "mining" and "60 images x 300 captions" in res.description
    assert [t.unit for t in res.timings[:2]] == ["flop", "flop"] and all(t.rate and t.rate > 0 for t in res.timings[:2])
    (kernel,) = res.kernels
    assert kernel.kernel == "mining" and kernel.ratio_to_floor > 0 and kernel.peak_extra_bytes >= 0
    try:
        import faiss  # noqa: F401  (the optional peer)
    except ImportError:
        assert kernel.peer_seconds is None and any("faiss-cpu is not installed" in n for n in res.notes)
    else:
        assert kernel.peer_seconds > 0 and "faiss" in kernel.peer
    assert set(res.ratios) == {
        "GEMM floor of the whole matrix (s)",
        "mining time / GEMM floor",
        "peak memory beyond the embeddings, measured (MiB)",
        "mining_memory_bound (MiB)",
        "measured / bound",
    }
    assert res.ratios["mining time / GEMM floor"] > 0 and res.ratios["mining_memory_bound (MiB)"] > 0
    assert any("(60, 20)" in n and "(300, 10)" in n for n in res.notes)
