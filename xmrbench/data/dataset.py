"""The in-memory view of an image-caption dataset that every model and metric consumes.

A :class:`RetrievalData` is a set of named :class:`Split` objects plus provenance
(name, fingerprint, description). Feature arrays may be ``np.memmap`` or any
array-like indexable by an integer index array, so that large splits stay on disk.

Conventions (the SCAN "precomp" layout, which the peers share):
- captions are stored image by image, ``captions_per_image`` consecutive lines per
  image, so caption ``j`` describes image ``j // captions_per_image``;
- ``regions`` is ``(N, R, D)`` float32 (R = 36 regions in the real data);
- ``global_feats`` is ``(N, D)`` float32, one vector per image;
- ``text_feats`` (optional) is ``(N_txt, D_t)``, one precomputed vector per caption
  (labelled sets, whose texts come as features, not as sentences): an array or a
  scipy sparse matrix.

A restriction to the first n images (:meth:`Split.prefix`) is a view: numpy arrays
and memory maps are sliced, other array-likes (HDF5) wrapped in a lazy
:class:`RowView`, so features stay on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmrbench.errors import DataError


@dataclass
class Split:
    """One split (train, dev, test, testall) of an image-caption dataset.

    ``regions`` and ``global_feats`` are optional: a split holds whichever feature
    kinds the source provides. ``text_feats`` holds one precomputed vector per caption
    where the source provides texts as features (the caption strings are then empty).
    ``extras`` carries optional per-image or per-caption annotations keyed by name
    (labels, tags, regional semantics, boxes, ...).
    """

    name: str
    captions: list[str]
    captions_per_image: int = 5
    regions: Any = None  # (N, R, D) array-like or None
    global_feats: Any = None  # (N, D) array-like or None
    extras: dict[str, Any] = field(default_factory=dict)
    text_feats: Any = None  # (N_txt, D_t) array-like or scipy sparse matrix, or None

    def __post_init__(self) -> None:
        # captions_per_image 0: an un-annotated image pool, whose size comes from its features
        if self.captions_per_image < 0 or (self.captions_per_image == 0 and self.regions is None
                                           and self.global_feats is None):
            raise DataError(f"split {self.name!r}: captions_per_image {self.captions_per_image} needs "
                            "image features (0 = un-annotated images) and must not be negative")
        n = self.n_images
        if len(self.captions) != n * self.captions_per_image:
            raise DataError(
                f"split {self.name!r} has {len(self.captions)} captions for {n} images; "
                f"expected {self.captions_per_image} per image"
            )
        for kind in ("regions", "global_feats"):
            arr = getattr(self, kind)
            if arr is not None and arr.shape[0] != n:
                raise DataError(f"split {self.name!r}: {kind} has {arr.shape[0]} rows, expected {n}")
        if self.text_feats is not None and self.text_feats.shape[0] != self.n_captions:
            raise DataError(f"split {self.name!r}: text_feats has {self.text_feats.shape[0]} rows, "
                            f"expected one per caption ({self.n_captions})")

    @property
    def n_images(self) -> int:
        for arr in (self.regions, self.global_feats):
            if arr is not None:
                return int(arr.shape[0])
        return len(self.captions) // self.captions_per_image

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def caption_image(self) -> np.ndarray:
        """(N_txt,) int64: the image index of every caption (``j // captions_per_image``)."""
        return np.arange(self.n_captions, dtype=np.int64) // self.captions_per_image

    def image_features(self, kind: str, index: np.ndarray | None = None) -> np.ndarray:
        """Features of the images at ``index`` (all if None) as float32.

        ``kind``: ``"regions"`` -> (n, R, D); ``"global"`` -> (n, D);
        ``"mean_regions"`` -> (n, D), the mean of the region features.
        """
        if kind == "global":
            src = self.global_feats
        elif kind in ("regions", "mean_regions"):
            src = self.regions
        else:
            raise DataError(f"unknown image feature kind {kind!r}; known: global, regions, mean_regions")
        if src is None:
            have = [k for k, a in (("regions", self.regions), ("global", self.global_feats)) if a is not None]
            raise DataError(
                f"split {self.name!r} has no {kind!r} image features (it has: {', '.join(have) or 'none'})"
            )
        if index is None:
            out = np.asarray(src[:], dtype=np.float32)
        else:
            index = np.asarray(index, dtype=np.int64)
            if isinstance(src, np.ndarray):  # also np.memmap
                out = np.asarray(src[index], dtype=np.float32)
            else:  # h5py and friends want sorted unique indices
                order = np.argsort(index, kind="stable")
                uniq, inverse = np.unique(index[order], return_inverse=True)
                block = np.asarray(src[uniq], dtype=np.float32)
                out = np.empty((len(index), *block.shape[1:]), dtype=np.float32)
                out[order] = block[inverse]
        if kind == "mean_regions":
            out = out.mean(axis=1)
        return out

    def subset(self, image_index: np.ndarray, name: str | None = None) -> Split:
        """A new split holding only the images at ``image_index`` (and their captions), read into memory."""
        image_index = np.asarray(image_index, dtype=np.int64)
        cpi = self.captions_per_image
        cap_index = (image_index[:, None] * cpi + np.arange(cpi)[None, :]).reshape(-1)
        return Split(
            name=name or self.name,
            captions=[self.captions[j] for j in cap_index],
            captions_per_image=cpi,
            regions=None if self.regions is None else self.image_features("regions", image_index),
            global_feats=None if self.global_feats is None else self.image_features("global", image_index),
            extras={k: _take(v, image_index, cap_index, self.n_images) for k, v in self.extras.items()},
            text_feats=None if self.text_feats is None else _read_rows(self.text_feats, cap_index),
        )

    def prefix(self, n: int, name: str | None = None) -> Split:
        """The first ``n`` images (and their captions) as a view: nothing is read or copied.

        Numpy arrays and memory maps are sliced (a memory map stays one); other
        array-likes become a :class:`RowView`. A scipy sparse ``text_feats`` (held in
        memory anyway) is sliced into a smaller matrix.
        """
        n = min(int(n), self.n_images)
        n_caps = n * self.captions_per_image
        return Split(
            name=name or self.name,
            captions=self.captions[:n_caps],
            captions_per_image=self.captions_per_image,
            regions=_head(self.regions, n),
            global_feats=_head(self.global_feats, n),
            extras={k: _head_extra(v, n, n_caps, self.n_images, self.n_captions) for k, v in self.extras.items()},
            text_feats=_head(self.text_feats, n_caps),
        )


def _is_sparse(x: Any) -> bool:
    import scipy.sparse as sp

    return bool(sp.issparse(x))


def _head(arr: Any, n: int) -> Any:
    """The first ``n`` rows of ``arr`` without reading them (None stays None)."""
    if arr is None:
        return None
    if isinstance(arr, np.ndarray):
        return arr[:n]
    if _is_sparse(arr):
        return arr.tocsr()[:n]
    return row_view(arr, np.arange(n))


def _head_extra(value: Any, n: int, n_caps: int, n_images: int, n_captions: int) -> Any:
    """A per-image (or per-caption) annotation cut to the first images; anything else untouched."""
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n_images:
        return value[:n]
    if isinstance(value, list) and len(value) == n_images:
        return value[:n]
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n_captions:
        return value[:n_caps]
    return value


def _read_rows(arr: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of ``arr`` in memory: an array, or a sparse matrix for a sparse one."""
    if _is_sparse(arr):
        return arr.tocsr()[index]
    return np.asarray(row_view(arr, index))


def row_view(arr: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of ``arr``, read only when indexed: a :class:`RowView` (a view of a
    view indexes the base directly); a scipy sparse matrix, in memory anyway, is indexed
    now; None stays None."""
    if arr is None:
        return None
    if _is_sparse(arr):
        return arr.tocsr()[np.asarray(index, dtype=np.int64)]
    if isinstance(arr, RowView):
        return RowView(arr.base, arr.index[np.asarray(index, dtype=np.int64)])
    return RowView(arr, index)


class LazyRows:
    """The array surface of a lazy row container (``RowView``, ``H5Array``): ``ndim`` and
    ``len`` from its ``shape``."""

    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]


class RowView(LazyRows):
    """Rows ``index`` of an array-like ``base``, read only when indexed.

    Looks like an array to :class:`Split`: ``shape``, ``dtype``, ``ndim``, ``len``,
    ``view[i]``, ``view[a:b]``, ``view[int_array]`` and ``np.asarray(view)``. Reads of
    ``base`` use sorted unique row indices (what HDF5 files want); ``index`` itself may
    be in any order.
    """

    def __init__(self, base: Any, index: np.ndarray):
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        n = int(base.shape[0])
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        self.shape = (len(self.index), *tuple(base.shape[1:]))
        self.dtype = np.dtype(base.dtype)

    def __repr__(self) -> str:
        return f"RowView({len(self.index)} of {self.base.shape[0]} rows, shape={self.shape})"

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self.base, np.ndarray):
            return np.asarray(self.base[rows])
        uniq, inverse = np.unique(rows, return_inverse=True)
        block = np.asarray(self.base[uniq])
        return block[inverse.reshape(-1)]

    def __getitem__(self, item: Any) -> np.ndarray:
        if isinstance(item, (int, np.integer)):
            return np.asarray(self.base[int(self.index[item])])
        if isinstance(item, slice):
            return self._read(self.index[item])
        if item is Ellipsis:
            return self._read(self.index)
        return self._read(self.index[np.asarray(item)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(self.index)
        return out if dtype is None else out.astype(dtype, copy=False)


def _take(value: Any, image_index: np.ndarray, cap_index: np.ndarray, n_images: int) -> Any:
    """Index a per-image or per-caption annotation; leave anything else untouched."""
    if isinstance(value, np.ndarray) and value.shape[:1] == (n_images,):
        return value[image_index]
    if isinstance(value, list) and len(value) == n_images:
        return [value[i] for i in image_index]
    if isinstance(value, np.ndarray) and len(cap_index) and value.shape[0] == cap_index.max() + 1:
        return value[cap_index]
    return value


@dataclass
class RetrievalData:
    """A dataset: named splits that are loaded on first use, plus provenance.

    ``loaders`` maps split name -> zero-argument callable returning a :class:`Split`;
    ``fingerprint`` identifies the exact bytes (a content hash); ``info`` is a
    JSON-serialisable description recorded in every result (name, size, source,
    feature description, ...).
    """

    name: str
    fingerprint: str
    loaders: Mapping[str, Callable[[], Split]]
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Split] = field(default_factory=dict, repr=False)

    @property
    def split_names(self) -> list[str]:
        return list(self.loaders)

    def split(self, name: str) -> Split:
        if name not in self._cache:
            if name not in self.loaders:
                known = ", ".join(self.loaders) or "(none)"
                raise DataError(f"dataset {self.name!r} has no split {name!r}; it has: {known}")
            self._cache[name] = self.loaders[name]()
        return self._cache[name]
