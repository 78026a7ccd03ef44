"""``xmrbench evaluate``: metrics of a user's own similarity matrix stored as .npy.

Without labels: image-caption retrieval (``RETRIEVAL_KEYS``). With ``--query-labels``
and ``--gallery-labels`` (one class id per item ``(N,)``, or multi-hot ``(N, C)``): the
``label`` task's metrics on the same matrix, rows as image queries and columns as text
queries (``core/metrics/labels.py:label_metrics``):

- ``map``: the rows' mAP over the whole ranked list (kept for scripts that read it; the
  same number as ``i2t_map``);
- ``i2t_map``, ``t2i_map``, ``avg_map``: mAP over the whole ranked list divided by all
  relevant items (the ACMR paper's mAP, protocol ``test_labels``);
- ``i2t_map50``, ``t2i_map50``, ``avg_map50``: the released ACMR code's mAP@50, divided
  by the relevant items found in the top 50 (protocol ``test_labels_map50``);
- ``i2t_p50`` ... ``t2i_p1000``: precision of the top K up to the gallery size.

A bad file (wrong shape, NaN, labels that are neither class ids nor 0/1) is a one-line
``DataError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.errors import DataError, UsageError


def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError("file not found", where=str(path))
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"not a readable .npy {what} ({exc.__class__.__name__})", where=str(path)) from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"expected one array, got {type(arr).__name__}", where=str(path))
    return arr


def _labels(path: Path, n: int, side: str) -> np.ndarray:
    """The labels in ``path``: int64 class ids ``(n,)`` or a bool multi-hot ``(n, C)``."""
    arr = _load(path, "label array")
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise DataError(f"expected {n} labels (one per {side} of the similarity matrix) as (N,) or (N, C), "
                        f"got shape {arr.shape}", where=str(path))
    if arr.ndim == 1:
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"single labels (N,) must be integer class ids, got dtype {arr.dtype}", where=str(path))
        return arr.astype(np.int64)
    if arr.shape[1] == 0:
        raise DataError(f"multi-hot labels with no class column (shape {arr.shape})", where=str(path))
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"multi-hot labels (N, C) must hold 0/1, got dtype {arr.dtype}", where=str(path))
    bad = (arr != 0) & (arr != 1)  # NaN compares unequal to both
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"multi-hot labels must hold only 0/1; row {row}, column {col} holds {arr[row, col]}",
                        where=str(path))
    return arr.astype(bool)


def _label_metrics(sims: torch.Tensor, query_path: Path, gallery_path: Path) -> dict[str, float]:
    from xmrbench.core.metrics.labels import label_metrics, relevance_from_labels

    q = _labels(query_path, sims.shape[0], "row")
    g = _labels(gallery_path, sims.shape[1], "column")
    if q.ndim != g.ndim:
        forms = {1: "single labels (N,)", 2: "multi-hot labels (N, C)"}
        raise DataError(f"holds {forms[g.ndim]} but {query_path.name} holds {forms[q.ndim]}; use one form for both",
                        where=str(gallery_path))
    if q.ndim == 2 and q.shape[1] != g.shape[1]:
        raise DataError(f"has {g.shape[1]} classes but {query_path.name} has {q.shape[1]}", where=str(gallery_path))
    rel = relevance_from_labels(torch.from_numpy(q), torch.from_numpy(g))
    metrics = label_metrics(sims, rel, maps=(None, 50))
    return {K.MAP: metrics[K.I2T_MAP], **metrics}


def evaluate_file(
    sims_path: Path,
    *,
    captions_per_image: int = 5,
    protocol: str = "all",
    query_labels: Path | None = None,
    gallery_labels: Path | None = None,
) -> dict[str, float]:
    """Retrieval metrics of the matrix in ``sims_path``, or with both label files the
    label-retrieval metrics (module docstring)."""
    from xmrbench.core.metrics.retrieval import fold_metrics, retrieval_metrics

    sims_np = _load(sims_path, "similarity matrix")
    if sims_np.ndim != 2:
        raise DataError(f"expected a 2-D matrix, got shape {sims_np.shape}", where=str(sims_path))
    if not np.issubdtype(sims_np.dtype, np.floating) and not np.issubdtype(sims_np.dtype, np.integer):
        raise DataError(f"expected numbers, got dtype {sims_np.dtype}", where=str(sims_path))
    if 0 in sims_np.shape:
        raise DataError(f"the matrix is empty (shape {sims_np.shape})", where=str(sims_path))
    finite = np.isfinite(sims_np)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(f"NaN or inf at row {row}, column {col}", where=str(sims_path))
    sims = torch.from_numpy(np.ascontiguousarray(sims_np, dtype=np.float64 if sims_np.dtype == np.float64 else np.float32))
    if (query_labels is None) != (gallery_labels is None):
        raise UsageError("--query-labels and --gallery-labels go together")
    if query_labels is not None and gallery_labels is not None:
        if protocol != "all":
            raise UsageError(f"--protocol {protocol!r} applies to caption retrieval; label metrics use the whole matrix")
        return _label_metrics(sims, query_labels, gallery_labels)
    if captions_per_image < 1:
        raise UsageError("--captions-per-image must be >= 1")
    n_img, n_txt = sims.shape
    if n_txt != captions_per_image * n_img:
        raise DataError(
            f"shape {tuple(sims.shape)}: expected {captions_per_image} x {n_img} = {captions_per_image * n_img} "
            f"caption columns for {n_img} image rows (--captions-per-image {captions_per_image})",
            where=str(sims_path),
        )
    if protocol == "all":
        metrics = retrieval_metrics(sims, captions_per_image=captions_per_image)
    elif protocol == "5fold":
        if n_img % 5:
            raise DataError(f"{n_img} images cannot be split into 5 equal folds", where=str(sims_path))
        metrics = fold_metrics(sims, n_folds=5, captions_per_image=captions_per_image)
    else:
        raise UsageError(f"--protocol {protocol!r}: expected all or 5fold")
    return {key: float(metrics[key]) for key in K.RETRIEVAL_KEYS}
