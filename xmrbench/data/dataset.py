"""The in-memory view of an image-caption dataset that every model and metric consumes.

A :class:`RetrievalData` is a set of named :class:`Split` objects plus provenance
(name, fingerprint, description). Feature arrays may be ``np.memmap`` or any
array-like indexable by an integer index array, so that large splits stay on disk.

Conventions (the SCAN "precomp" layout, which the peers share):
- captions are stored image by image, ``captions_per_image`` consecutive lines per
  image, so caption ``j`` describes image ``j // captions_per_image``;
- ``regions`` is ``(N, R, D)`` float32 (R = 36 regions in the real data);
- ``global_feats`` is ``(N, D)`` float32, one vector per image.
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
    kinds the source provides. ``extras`` carries optional per-image or per-caption
    annotations keyed by name (labels, tags, regional semantics, boxes, ...).
    """

    name: str
    captions: list[str]
    captions_per_image: int = 5
    regions: Any = None  # (N, R, D) array-like or None
    global_feats: Any = None  # (N, D) array-like or None
    extras: dict[str, Any] = field(default_factory=dict)

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
        """A new split holding only the images at ``image_index`` (and their captions)."""
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
        )


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
