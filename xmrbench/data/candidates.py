"""Offline candidate lists (AOQ) as the authors' release stores them: two ``.npy`` files.

- ``i2t_{name}.npy``: ``(N_images, K_t)`` int32, row ``i`` = the caption indices most
  similar to image ``i`` among the captions of other images, most similar first
  (caption ``j`` describes image ``j // captions_per_image``);
- ``t2i_{name}.npy``: ``(N_captions, K_i)`` int32, row ``j`` = the image indices most
  similar to caption ``j`` other than its own image, most similar first.

The release stores 2,000 captions per image and 400 images per caption (AOQ samples
from the first 300 and 60). Layout and checks: docs/formats/candidates.md. The miner
``offline_candidates`` (:mod:`xmrbench.engine.miners`) computes the lists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmrbench.data.precomp import atomic_write
from xmrbench.errors import DataError


def candidate_paths(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(directory/i2t_{name}.npy, directory/t2i_{name}.npy)``."""
    if not name or name != os.path.basename(name) or name.startswith("."):
        raise DataError(f"invalid candidate set name {name!r}: a plain file-name part is needed", where=str(directory))
    root = Path(directory)
    return root / f"i2t_{name}.npy", root / f"t2i_{name}.npy"


def _int32_matrix(arr: Any, what: str, where: str) -> np.ndarray:
    out = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if out.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array, got shape {tuple(out.shape)}", where=where)
    if not np.issubdtype(out.dtype, np.integer):
        raise DataError(f"{what}: expected integer indices, got dtype {out.dtype}", where=where)
    if out.size and (int(out.min()) < 0 or int(out.max()) > np.iinfo(np.int32).max):
        raise DataError(f"{what}: indices must lie in 0..2**31-1", where=where)
    return np.ascontiguousarray(out, dtype=np.int32)


def write_candidates(directory: str | os.PathLike, name: str, i2t: Any, t2i: Any) -> tuple[Path, Path]:
    """Write ``i2t (N_images, K_t)`` and ``t2i (N_captions, K_i)`` (tensors or arrays of
    integers) as int32 ``i2t_{name}.npy`` / ``t2i_{name}.npy`` in ``directory`` (created if
    needed); each through a temporary file in the same directory and ``os.replace``.
    Returns the two paths."""
    path_i2t, path_t2i = candidate_paths(directory, name)
    arrays = [(path_i2t, _int32_matrix(i2t, "i2t", str(path_i2t))),
              (path_t2i, _int32_matrix(t2i, "t2i", str(path_t2i)))]
    Path(directory).mkdir(parents=True, exist_ok=True)
    for path, arr in arrays:
        atomic_write(path, lambda f, arr=arr: np.save(f, arr, allow_pickle=False))
    return path_i2t, path_t2i


def _load(path: Path, rows: int, min_cols: int, row_unit: str, col_unit: str) -> np.ndarray:
    """The 2-D integer array at ``path`` (memory-mapped) with ``rows`` rows (one per
    ``row_unit``) and at least ``min_cols`` columns (``col_unit`` indices)."""
    where = str(path)
    if not path.is_file():
        raise DataError("no such file", where=where)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"not a readable .npy file ({' '.join(str(exc).split())})", where=where) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise DataError(f"not a readable .npy file (holds {type(arr).__name__})", where=where)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D array ({col_unit}s per {row_unit}), got shape {tuple(arr.shape)}",
                        where=where)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"expected integer indices, got dtype {arr.dtype}", where=where)
    if arr.shape[0] != rows:
        raise DataError(f"expected {rows} rows (one per {row_unit}), found {arr.shape[0]}", where=where)
    if arr.shape[1] < min_cols:
        raise DataError(f"holds {arr.shape[1]} {col_unit}s per {row_unit}, fewer than the {min_cols} needed",
                        where=where)
    return arr


def _check_range(arr: np.ndarray, limit: int, what: str, where: str) -> None:
    bad = (arr < 0) | (arr >= limit)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"row {row} holds {int(arr[row, col])}, outside the {what} indices 0..{limit - 1}",
                        where=where)


def read_candidates(
    i2t_path: str | os.PathLike,
    t2i_path: str | os.PathLike,
    *,
    n_images: int,
    n_captions: int,
    captions_per_image: int,
    min_texts: int = 1,
    min_images: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check a pair of candidate files; returns int64 torch tensors
    ``i2t (n_images, K_t)`` and ``t2i (n_captions, K_i)`` with every column stored.

    Raises :class:`~xmrbench.errors.DataError` (one line, naming the file) for a missing
    file, a file that is not a readable ``.npy``, an array that is not 2-D or not of
    integers, a row count other than ``n_images`` / ``n_captions``, fewer columns than
    ``min_texts`` / ``min_images``, an index out of range (its row and value), and a row
    that lists a caption of its own image / its own image (its row).
    """
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
    i2t_path, t2i_path = Path(i2t_path), Path(t2i_path)
    i2t = _load(i2t_path, n_images, min_texts, "image", "caption")
    t2i = _load(t2i_path, n_captions, min_images, "caption", "image")
    _check_range(i2t, n_captions, "caption", str(i2t_path))
    _check_range(t2i, n_images, "image", str(t2i_path))
    i2t64 = np.array(i2t, dtype=np.int64)  # a copy in memory: the file may be replaced later
    own = i2t64 // captions_per_image == np.arange(n_images)[:, None]
    if own.any():
        row = int(np.argwhere(own)[0][0])
        raise DataError(f"row {row} lists a caption of its own image", where=str(i2t_path))
    t2i64 = np.array(t2i, dtype=np.int64)
    own = t2i64 == (np.arange(n_captions) // captions_per_image)[:, None]
    if own.any():
        row = int(np.argwhere(own)[0][0])
        raise DataError(f"row {row} lists its own image", where=str(t2i_path))
    return torch.from_numpy(i2t64), torch.from_numpy(t2i64)
