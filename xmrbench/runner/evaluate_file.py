"""``xmrbench evaluate``: metrics of a user's own similarity matrix stored as .npy."""

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


def evaluate_file(
    sims_path: Path,
    *,
    captions_per_image: int = 5,
    protocol: str = "all",
    query_labels: Path | None = None,
    gallery_labels: Path | None = None,
) -> dict[str, float]:
    """Retrieval metrics (or mAP with labels) of the matrix in ``sims_path``."""
    from xmrbench.core.metrics.labels import average_precision, relevance_from_labels
    from xmrbench.core.metrics.retrieval import fold_metrics, retrieval_metrics

    sims_np = _load(sims_path, "similarity matrix")
    if sims_np.ndim != 2:
        raise DataError(f"expected a 2-D matrix, got shape {sims_np.shape}", where=str(sims_path))
    if not np.issubdtype(sims_np.dtype, np.floating) and not np.issubdtype(sims_np.dtype, np.integer):
        raise DataError(f"expected numbers, got dtype {sims_np.dtype}", where=str(sims_path))
    finite = np.isfinite(sims_np)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(f"NaN or inf at row {row}, column {col}", where=str(sims_path))
    sims = torch.from_numpy(np.ascontiguousarray(sims_np, dtype=np.float64 if sims_np.dtype == np.float64 else np.float32))
    if (query_labels is None) != (gallery_labels is None):
        raise UsageError("--query-labels and --gallery-labels go together")
    if query_labels is not None and gallery_labels is not None:
        q = _load(query_labels, "label array")
        g = _load(gallery_labels, "label array")
        for arr, path, n, side in ((q, query_labels, sims.shape[0], "rows"), (g, gallery_labels, sims.shape[1], "columns")):
            if arr.shape[0] != n or arr.ndim not in (1, 2):
                raise DataError(f"expected {n} labels (one per {side[:-1]}) as (N,) or (N, C), got shape {arr.shape}", where=str(path))
        try:
            rel = relevance_from_labels(torch.from_numpy(q), torch.from_numpy(g))
        except ValueError as exc:
            raise DataError(str(exc), where=str(query_labels)) from None
        ap = average_precision(sims, rel)
        return {K.MAP: float(ap.mean())}
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
