"""Labelled cross-modal feature sets, as ACMR uses them (Wikipedia, Pascal Sentences,
NUS-WIDE-10k, MSCOCO): one image feature, one text feature and labels per instance.

An instance is an image-text pair with a label (single: one class index) or labels
(multi: a multi-hot row); retrieval is judged by label agreement (mAP), not by pair
identity. On disk, one directory per dataset (see ``docs/formats/labelled.md``):

- ``meta.json``: ``{"layout": "labelled", "name", "classes": [names], "label_kind":
  "single" | "multi", "image_feature": text, "text_feature": text}`` (``classes``
  fixes C; the descriptions are free text recorded with results);
- per split (``train``, ``test``, any other name): ``{split}_img.npy`` (N, Dv)
  float32/float16; ``{split}_txt.npy`` (N, Dt) float32/float16, or ``{split}_txt.npz``
  (a scipy.sparse CSR matrix, for bag-of-words); ``{split}_labels.npy``: (N,) integers
  in [0, C) for single labels, (N, C) 0/1 (uint8, bool or int) for multi-hot labels.

Dense features are memory-mapped on load. :func:`labelled_retrieval_data` opens a
directory as a retrieval dataset (the dataset kind ``labelled``, ``data.name:
labelled``): one text per image, given as features, and the labels as an extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.data.precomp import atomic_write
from xmrbench.errors import DataError

META_FILE = "meta.json"
LAYOUT = "labelled"
IMG_SUFFIX = "_img.npy"
TXT_SUFFIXES = ("_txt.npy", "_txt.npz")
LABELS_SUFFIX = "_labels.npy"
LABEL_KINDS = ("single", "multi")
_FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_MULTI_DTYPES = ("u", "i", "b")


def _is_sparse(x: Any) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a declared dependency
        return False
    return sp.issparse(x)


@dataclass
class LabelledSplit:
    """One split of a labelled feature set.

    ``img_feats`` (N, Dv) and ``txt_feats`` (N, Dt) are arrays (memory maps after a
    load) or, for text, a scipy sparse matrix; ``labels`` is (N,) int (single label,
    values in [0, n_classes)) or (N, C) 0/1 (multi-label).
    """

    name: str
    img_feats: Any
    txt_feats: Any
    labels: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        n = int(self.img_feats.shape[0])
        for what, arr in (("txt_feats", self.txt_feats), ("labels", self.labels)):
            if int(arr.shape[0]) != n:
                raise DataError(f"split {self.name!r}: {what} has {arr.shape[0]} rows, img_feats {n}")
        if len(self.img_feats.shape) != 2 or len(self.txt_feats.shape) != 2:
            raise DataError(f"split {self.name!r}: features must be 2-D (N, D)")
        problem = label_problem(np.asarray(self.labels), self.n_classes)
        if problem:
            raise DataError(f"split {self.name!r}: labels {problem}")

    @property
    def n(self) -> int:
        return int(self.img_feats.shape[0])

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def image_features(self, index: np.ndarray | None = None) -> np.ndarray:
        """(n, Dv) float32 image features of the rows at ``index`` (all if None)."""
        src = self.img_feats
        return np.asarray(src[:] if index is None else src[np.asarray(index, dtype=np.int64)], dtype=np.float32)

    def text_features(self, index: np.ndarray | None = None) -> np.ndarray:
        """(n, Dt) float32 dense text features of the rows at ``index`` (all if None)."""
        src = self.txt_feats
        rows = src if index is None else src[np.asarray(index, dtype=np.int64)]
        if _is_sparse(rows):
            rows = rows.toarray()
        return np.asarray(rows, dtype=np.float32)

    def label_matrix(self) -> np.ndarray:
        """(N, C) uint8 multi-hot labels (one-hot rows for single labels)."""
        if self.multi_label:
            return np.asarray(self.labels, dtype=np.uint8)
        out = np.zeros((self.n, self.n_classes), dtype=np.uint8)
        out[np.arange(self.n), np.asarray(self.labels, dtype=np.int64)] = 1
        return out


@dataclass
class LabelledData:
    """A labelled feature set: named splits, class names and a description."""

    name: str
    splits: dict[str, LabelledSplit]
    classes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def label_kind(self) -> str:
        return str(self.meta.get("label_kind", "single"))

    def split(self, name: str) -> LabelledSplit:
        if name not in self.splits:
            raise DataError(f"labelled dataset {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}")
        return self.splits[name]


def label_problem(labels: np.ndarray, n_classes: int) -> str | None:
    """What is wrong with a label array (None if nothing): see the module docstring."""
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            return f"are single labels of dtype {labels.dtype}; expected integers"
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            bad = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
            return f"row {bad} holds class {int(labels[bad])}, outside 0..{n_classes - 1}"
        return None
    if labels.ndim == 2:
        if labels.shape[1] != n_classes:
            return f"have {labels.shape[1]} columns for {n_classes} classes"
        if labels.dtype.kind not in _MULTI_DTYPES:
            return f"are multi-hot of dtype {labels.dtype}; expected 0/1 integers or booleans"
        bad = np.flatnonzero(((labels != 0) & (labels != 1)).any(axis=1))
        if len(bad):
            return f"row {int(bad[0])} is not 0/1"
        empty = np.flatnonzero(~np.asarray(labels, dtype=bool).any(axis=1))
        if len(empty):
            return f"row {int(empty[0])} has no label"
        return None
    return f"must be (N,) or (N, C), got shape {labels.shape}"


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------




def write_labelled(root: str | os.PathLike, data: LabelledData) -> Path:
    """Write ``data`` to ``root`` in the labelled layout (module docstring); returns ``root``.

    Dense features are saved as float32 (float16 stays float16); a sparse text matrix
    as ``{split}_txt.npz`` (CSR, float32). Every file is written atomically; the other
    text format of a split is removed so no stale file is read back.
    """
    import scipy.sparse as sp

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kind = "multi" if any(s.multi_label for s in data.splits.values()) else "single"
    if any(s.multi_label != (kind == "multi") for s in data.splits.values()):
        raise DataError("all splits must use the same label kind (single or multi)", where=str(root))
    meta = {k: v for k, v in data.meta.items() if k not in ("layout", "name", "classes", "label_kind", "splits")}
    meta = {"layout": LAYOUT, "name": data.name, "classes": list(data.classes), "label_kind": kind,
            "splits": list(data.splits), **meta}
    for name, split in data.splits.items():
        if not name or "/" in name or name.startswith("."):
            raise DataError(f"invalid split name {name!r}", where=str(root))
        if split.n_classes != len(data.classes):
            raise DataError(f"split {name!r} has {split.n_classes} classes, the dataset {len(data.classes)}",
                            where=str(root))
        img = np.asarray(split.img_feats)
        img = img if img.dtype == np.float16 else img.astype(np.float32, copy=False)
        atomic_write(root / f"{name}{IMG_SUFFIX}", lambda f, a=img: np.save(f, a, allow_pickle=False))
        npy, npz = root / f"{name}_txt.npy", root / f"{name}_txt.npz"
        if _is_sparse(split.txt_feats):
            csr = sp.csr_matrix(split.txt_feats, dtype=np.float32)
            atomic_write(npz, lambda f, m=csr: sp.save_npz(f, m, compressed=True))
            npy.unlink(missing_ok=True)
        else:
            txt = np.asarray(split.txt_feats)
            txt = txt if txt.dtype == np.float16 else txt.astype(np.float32, copy=False)
            atomic_write(npy, lambda f, a=txt: np.save(f, a, allow_pickle=False))
            npz.unlink(missing_ok=True)
        labels = np.asarray(split.labels)
        labels = labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.uint8)
        atomic_write(root / f"{name}{LABELS_SUFFIX}", lambda f, a=labels: np.save(f, a, allow_pickle=False))
    text = json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write(root / META_FILE, lambda f: f.write(text.encode("utf-8")))
    return root


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------


def read_meta(root: Path) -> dict[str, Any]:
    """``meta.json`` of a labelled directory, checked (layout, classes, label_kind)."""
    path = root / META_FILE
    if not path.is_file():
        raise DataError(f"no {META_FILE} (a labelled feature set needs one)", where=str(root))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc.__class__.__name__})", where=str(path)) from None
    if not isinstance(meta, dict) or meta.get("layout") != LAYOUT:
        raise DataError(f'expected "layout": "{LAYOUT}"', where=str(path))
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError("classes must be a non-empty list of class names", where=str(path))
    if len(set(classes)) != len(classes):
        raise DataError("classes lists a name twice", where=str(path))
    if meta.get("label_kind") not in LABEL_KINDS:
        raise DataError(f"label_kind must be one of {', '.join(LABEL_KINDS)}, got {meta.get('label_kind')!r}",
                        where=str(path))
    return meta


def labelled_split_names(root: Path) -> list[str]:
    """Split names of a labelled directory: every ``{split}_img.npy`` (train, test first)."""
    names = {p.name[: -len(IMG_SUFFIX)] for p in root.glob(f"*{IMG_SUFFIX}") if not p.name.startswith(".")}
    rank = {"train": 0, "test": 1}
    return sorted((n for n in names if n), key=lambda n: (rank.get(n, 2), n))


def _open_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read array ({exc})", where=str(path)) from None


def _open_text(root: Path, name: str, mmap: bool) -> tuple[Any, Path]:
    npy, npz = root / f"{name}_txt.npy", root / f"{name}_txt.npz"
    if npy.is_file() and npz.is_file():
        raise DataError(f"{npy.name} and {npz.name} both exist; keep one", where=str(root))
    if npz.is_file():
        import scipy.sparse as sp

        try:
            return sp.load_npz(npz).tocsr(), npz
        except (OSError, ValueError) as exc:
            raise DataError(f"not a scipy sparse .npz file ({exc})", where=str(npz)) from None
    if npy.is_file():
        return _open_array(npy, mmap), npy
    raise DataError(f"no text features ({npy.name} or {npz.name})", where=str(root))


def _check_feature_array(arr: Any, path: Path, what: str) -> None:
    if len(arr.shape) != 2:
        raise DataError(f"{what} must be 2-D (N, D), got shape {tuple(arr.shape)}", where=str(path))
    if np.dtype(arr.dtype) not in _FEATURE_DTYPES:
        raise DataError(f"{what} have dtype {arr.dtype}; expected float32 or float16", where=str(path))


def check_labelled_finite(arr: Any, path: Path) -> None:
    """Raise naming ``path`` and the first row with NaN/inf (dense or sparse)."""
    from xmrbench.data.precomp import check_finite

    if _is_sparse(arr):
        csr = arr.tocsr()
        bad = ~np.isfinite(csr.data)
        if bad.any():
            row = int(np.searchsorted(csr.indptr, int(np.flatnonzero(bad)[0]), side="right") - 1)
            raise DataError(f"row {row} holds NaN or inf", where=str(path))
        return
    check_finite(arr, where=str(path))


def load_labelled(root: str | os.PathLike, *, mmap: bool = True, check: bool = True) -> LabelledData:
    """Open a labelled feature directory (module docstring) as :class:`LabelledData`.

    Fails with a one-line ``DataError`` naming the file (and row) for: a missing or
    malformed ``meta.json``, a split without its image, text or label file, row
    counts that disagree, features that are not 2-D float32/float16, feature sizes
    that differ between splits, labels out of range (or multi-hot rows that are not
    0/1 or carry no label), labels whose kind disagrees with ``label_kind``, and, with
    ``check``, NaN/inf features.
    """
    from xmrbench.data.precomp import fingerprint_dir

    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    meta = read_meta(root)
    classes = list(meta["classes"])
    names = labelled_split_names(root)
    if not names:
        raise DataError(f"no splits: no *{IMG_SUFFIX} files", where=str(root))
    for listed in meta.get("splits", []) or []:
        if listed not in names:
            raise DataError(f"meta.json lists split {listed!r} but {listed}{IMG_SUFFIX} is missing", where=str(root))
    splits: dict[str, LabelledSplit] = {}
    dims: dict[str, tuple[int, str]] = {}
    for name in names:
        img_path = root / f"{name}{IMG_SUFFIX}"
        img = _open_array(img_path, mmap)
        _check_feature_array(img, img_path, "image features")
        txt, txt_path = _open_text(root, name, mmap)
        if not _is_sparse(txt):
            _check_feature_array(txt, txt_path, "text features")
        elif len(txt.shape) != 2:
            raise DataError("text features must be 2-D (N, D)", where=str(txt_path))
        lab_path = root / f"{name}{LABELS_SUFFIX}"
        if not lab_path.is_file():
            raise DataError(f"no labels ({lab_path.name})", where=str(root))
        labels = np.asarray(_open_array(lab_path, False))
        n = int(img.shape[0])
        for arr, path in ((txt, txt_path), (labels, lab_path)):
            if int(arr.shape[0]) != n:
                raise DataError(f"{arr.shape[0]} rows but {img_path.name} has {n}", where=str(path))
        problem = label_problem(labels, len(classes))
        if problem:
            raise DataError(f"labels {problem}", where=str(lab_path))
        kind = "multi" if labels.ndim == 2 else "single"
        if kind != meta["label_kind"]:
            raise DataError(f"{kind} labels but meta.json says label_kind {meta['label_kind']!r}", where=str(lab_path))
        for what, arr, path in (("image", img, img_path), ("text", txt, txt_path)):
            d = int(arr.shape[1])
            if what in dims and dims[what][0] != d:
                raise DataError(f"{what} features are {d}-d but {dims[what][1]} has {dims[what][0]}", where=str(path))
            dims.setdefault(what, (d, path.name))
        if check:
            check_labelled_finite(img, img_path)
            check_labelled_finite(txt, txt_path)
        splits[name] = LabelledSplit(name=name, img_feats=img, txt_feats=txt, labels=labels, n_classes=len(classes))
    return LabelledData(
        name=str(meta.get("name") or root.resolve().name),
        splits=splits,
        classes=classes,
        meta=meta,
        fingerprint=fingerprint_dir(root),
    )


def labelled_from_arrays(
    name: str,
    splits: Mapping[str, tuple[Any, Any, np.ndarray]],
    classes: list[str],
    **meta: Any,
) -> LabelledData:
    """Build :class:`LabelledData` from ``{split: (img_feats, txt_feats, labels)}``."""
    built = {
        s: LabelledSplit(name=s, img_feats=img, txt_feats=txt, labels=np.asarray(lab), n_classes=len(classes))
        for s, (img, txt, lab) in splits.items()
    }
    kind = "multi" if any(sp_.multi_label for sp_ in built.values()) else "single"
    return LabelledData(name=name, splits=built, classes=list(classes), meta={"label_kind": kind, **meta})


# ---------------------------------------------------------------------------------
# As a retrieval dataset (dataset kind ``labelled``)
# ---------------------------------------------------------------------------------

DEV_SPLIT = "dev"
_DEV_SEED = 0  # the held-out dev instances are the same for every run of a directory


class _LabelledSource:
    """Opens a labelled directory on first use (every split checked together) and hands
    out its splits as :class:`~xmrbench.data.dataset.Split` s (picklable, lazy)."""

    def __init__(self, root: Path, dev_rows: tuple[np.ndarray, np.ndarray] | None):
        self.root = root
        self.dev_rows = dev_rows  # (train rows kept, rows held out as dev), or None
        self._data: LabelledData | None = None

    def split(self, name: str) -> Split:
        from xmrbench.data.dataset import row_view

        if self._data is None:
            self._data = load_labelled(self.root)
        if self.dev_rows is not None and name in ("train", DEV_SPLIT):
            source = self._data.split("train")
            rows = self.dev_rows[0] if name == "train" else self.dev_rows[1]
            return _as_split(name, row_view(source.img_feats, rows), row_view(source.txt_feats, rows),
                             np.asarray(source.labels)[rows])
        split = self._data.split(name)
        return _as_split(name, split.img_feats, split.txt_feats, split.labels)


def _as_split(name: str, img: Any, txt: Any, labels: np.ndarray) -> Split:
    """A labelled split as a retrieval split: one text per image, given as features."""
    return Split(name=name, captions=[""] * int(img.shape[0]), captions_per_image=1, global_feats=img,
                 text_feats=txt, extras={"labels": labels})


def labelled_retrieval_data(
    root: str | os.PathLike, *, dev_from_train: int | None = None, dataset: str | None = None
) -> RetrievalData:
    """A labelled directory as a :class:`~xmrbench.data.dataset.RetrievalData` (kind ``labelled``).

    Each split holds one "caption" per image (``captions_per_image`` 1, empty strings:
    the text is ``text_feats``, the image features are ``global_feats``) and the labels
    in ``extras["labels"]``. Training selects its model on a ``dev`` split: the
    directory's own, or with ``dev_from_train`` that many training instances held out
    (drawn with a fixed seed; both splits are lazy row views of the training arrays).
    This call reads ``meta.json`` and the image arrays' headers; the splits are opened
    (and checked, :func:`load_labelled`) on first use.
    """
    from xmrbench.data.precomp import fingerprint_dir

    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    meta = read_meta(root)
    names = labelled_split_names(root)
    if "train" not in names:
        raise DataError(f"no 'train' split (train{IMG_SUFFIX}); training needs it; found: {', '.join(names) or 'none'}",
                        where=str(root))
    sizes = {name: int(_open_array(root / f"{name}{IMG_SUFFIX}", True).shape[0]) for name in names}
    dev_rows = None
    if dev_from_train is not None:
        if DEV_SPLIT in names:
            raise DataError(f"data.dev_from_train is set but the directory has its own {DEV_SPLIT!r} split; "
                            "leave one of them out", where=str(root))
        n_train = sizes["train"]
        if dev_from_train >= n_train:
            raise DataError(f"data.dev_from_train={dev_from_train} leaves no training instance "
                            f"(train has {n_train})", where=str(root))
        held = np.zeros(n_train, dtype=bool)
        held[np.random.default_rng(_DEV_SEED).permutation(n_train)[:dev_from_train]] = True
        dev_rows = (np.flatnonzero(~held), np.flatnonzero(held))
        sizes = {"train": n_train - dev_from_train, DEV_SPLIT: dev_from_train,
                 **{k: v for k, v in sizes.items() if k != "train"}}
    elif DEV_SPLIT not in names:
        raise DataError(f"no {DEV_SPLIT!r} split ({DEV_SPLIT}{IMG_SUFFIX}); the model is selected on it; "
                        f"found: {', '.join(names)}; set data.dev_from_train N to hold out N training instances",
                        where=str(root))
    source = _LabelledSource(root, dev_rows)
    info: dict[str, Any] = {
        "source": LAYOUT,
        "root": str(root),
        "captions_per_image": 1,
        "classes": len(meta["classes"]),
        "label_kind": meta["label_kind"],
        "image_feature": meta.get("image_feature"),
        "text_feature": meta.get("text_feature"),
        "splits": {name: {"images": n, "captions": n} for name, n in sizes.items()},
    }
    if dev_from_train is not None:
        info["dev_from_train"] = dev_from_train
    if dataset:
        info["dataset"] = dataset
    return RetrievalData(
        name=str(meta.get("name") or root.resolve().name),
        fingerprint=fingerprint_dir(root),
        loaders={name: partial(source.split, name) for name in sizes},
        info=info,
    )
