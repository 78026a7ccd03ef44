"""Reader and writer of the SCAN "precomp" layout.

One directory per dataset holds, per split ``{split}`` (see ``docs/formats/precomp.md``):

- ``{split}_caps.txt``: one caption per line, UTF-8, ``captions_per_image``
  consecutive lines per image in image order (caption ``j`` describes image
  ``j // captions_per_image``).
- ``{split}_ims.npy``: region features, (N, R, D) float32 (float16 accepted); or
  ``{split}_ims.h5`` / ``.hdf5``, the same array in an HDF5 file, read lazily
  (``xmrbench/data/hdf5.py``).
- ``{split}_global.npy`` (or ``.h5``): global features, (N, D) float32 (float16
  accepted), one vector per image (e.g. N x 4096 VGG fc7 or N x 2048 ResNet).
- optional extras: ``{split}_scenes.jsonl`` (one JSON object per image),
  ``{split}_semantics.txt`` (one line of detector-style regional semantics per image,
  ``extras["semantics"]``), ``{split}_tags.jsonl`` (one JSON list of ``[tag, score]``
  pairs per image, ``extras["tags"]``), ``tag_expansion.json`` (one dict for the whole
  dataset, caption word -> tags, ``extras["tag_expansion"]`` of every split), and
  ``{split}_{key}.npy`` for any other per-image array (one row per image), loaded into
  ``Split.extras[key]``.

The splits are the ``*_caps.txt`` files plus, for names other than train, dev, test
and testall, feature files without captions (an un-annotated image pool: a split
with ``captions_per_image`` 0). A split needs at least one of ``_ims`` / ``_global``.
Feature files are memory-mapped (``.npy``) or read lazily (HDF5) on load, so a 30 GB
``train_ims.npy`` stays on disk until a batch is indexed. Files whose names start with
``.`` are ignored everywhere (fingerprints included), so tools may keep markers next
to the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.errors import DataError

CAPS_SUFFIX = "_caps.txt"
IMS_SUFFIX = "_ims.npy"
GLOBAL_SUFFIX = "_global.npy"
SCENES_SUFFIX = "_scenes.jsonl"
SEMANTICS_SUFFIX = "_semantics.txt"
TAGS_SUFFIX = "_tags.jsonl"
TAG_EXPANSION_FILE = "tag_expansion.json"
CANONICAL_SPLITS = ("train", "dev", "test", "testall")
FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
FEATURE_FORMATS = ("npy", "h5")
FEATURE_EXTENSIONS = (".npy", ".h5", ".hdf5")
# (Split attribute, file stem after the split name, rank, what it is)
FEATURE_KINDS = (("regions", "_ims", 3, "region features"), ("global_feats", "_global", 2, "global features"))

FULL_CHECK_BYTES = 2 * 1024**3
"""Feature files up to this size are scanned whole for NaN/inf; larger ones are sampled."""

SAMPLE_CHECK_ROWS = 4096
"""Rows scanned in a file larger than ``FULL_CHECK_BYTES`` (evenly spaced, first and last included)."""

_FINGERPRINT_FULL_BYTES = 16 * 1024**2  # files up to this size are hashed whole
_FINGERPRINT_BLOCKS = 64
_FINGERPRINT_BLOCK = 64 * 1024


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, then ``os.replace``.

    ``write`` receives a binary file object. Readers see the old file or the new one,
    never a partial one.
    """
    # a hidden name (ignored by readers and fingerprints); created with the umask's
    # permissions, unlike tempfile.mkstemp's owner-only ones
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _feature_array(arr: Any, where: str, ndim: int) -> np.ndarray:
    out = np.asarray(arr)
    if out.ndim != ndim:
        raise DataError(f"expected a {ndim}-D array, got shape {tuple(out.shape)}", where=where)
    return out if out.dtype == np.float16 else out.astype(np.float32, copy=False)


def _per_image_arrays(split: Split) -> dict[str, np.ndarray]:
    """Extras that are arrays with one row per image (written as ``{split}_{key}.npy``)."""
    n = split.n_images
    return {
        key: value
        for key, value in split.extras.items()
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n and key.isidentifier()
    }


def _write_lines(path: Path, lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def _write_features(root: Path, name: str, stem: str, arr: Any, ndim: int, fmt: str) -> None:
    """Write one feature kind of a split as ``.npy`` or ``.h5``; remove the other formats."""
    target = root / f"{name}{stem}{'.npy' if fmt == 'npy' else '.h5'}"
    for ext in FEATURE_EXTENSIONS:
        other = root / f"{name}{stem}{ext}"
        if other != target or arr is None:
            other.unlink(missing_ok=True)
    if arr is None:
        return
    if fmt == "npy":
        data = _feature_array(arr, str(target), ndim)
        atomic_write(target, lambda f: np.save(f, data, allow_pickle=False))
        return
    from xmrbench.data.hdf5 import write_h5_features

    if len(arr.shape) != ndim:
        raise DataError(f"expected a {ndim}-D array, got shape {tuple(arr.shape)}", where=str(target))
    dtype = np.float16 if np.dtype(arr.dtype) == np.float16 else np.float32
    write_h5_features(target, arr, dtype=dtype)


def _check_tags(tags: Any, where: str) -> None:
    """``tags``: one list of ``[tag, score]`` pairs per image (lower-case tag, score in [0, 1])."""
    for i, entry in enumerate(tags):
        problem = _tag_problem(entry)
        if problem:
            raise DataError(f"image {i}: {problem}", where=where)


def _tag_problem(entry: Any) -> str | None:
    if not isinstance(entry, (list, tuple)):
        return f"expected a list of [tag, score] pairs, got {type(entry).__name__}"
    for pair in entry:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            return f"expected [tag, score] pairs, got {pair!r}"
        tag, score = pair
        if not isinstance(tag, str) or not tag.strip() or tag != tag.lower():
            return f"tag {tag!r} is not a non-empty lower-case string"
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
            return f"score {score!r} of tag {tag!r} is not a number in [0, 1]"
    return None


def _check_expansion(expansion: Any, where: str) -> None:
    if not isinstance(expansion, dict):
        raise DataError(f"expected a JSON object (word -> list of tags), got {type(expansion).__name__}", where=where)
    for word, tags in expansion.items():
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"word {word!r}: expected a list of tag strings, got {tags!r}", where=where)


def write_precomp(
    root: str | os.PathLike, splits: Mapping[str, Split], *, extras: bool = True, features: str = "npy"
) -> None:
    """Write ``splits`` to ``root`` in the precomp layout (see the module docstring).

    Per split: ``{name}_caps.txt`` (not for a split with ``captions_per_image`` 0);
    ``{name}_ims.npy`` if it has region features; ``{name}_global.npy`` if it has global
    features (``features="h5"``: ``.h5`` files instead, one image per HDF5 chunk); with
    ``extras``, ``{name}_scenes.jsonl`` / ``{name}_semantics.txt`` / ``{name}_tags.jsonl``
    if ``extras["scenes"]`` / ``["semantics"]`` / ``["tags"]`` exist,
    ``tag_expansion.json`` if the splits carry ``extras["tag_expansion"]`` (the same
    dict in every split that has one), and ``{name}_{key}.npy`` for every other extra
    that is an array with one row per image. Each file is written atomically; files of
    a kind the new split lacks are removed so that no stale file is read back. Features
    are stored as float32 (float16 input stays float16).
    """
    if features not in FEATURE_FORMATS:
        raise DataError(f"unknown feature format {features!r}; known: {', '.join(FEATURE_FORMATS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expansion: dict | None = None
    for name, split in splits.items():
        if not name or "/" in name or name.startswith("."):
            raise DataError(f"invalid split name {name!r}", where=str(root))
        caps_path = root / f"{name}{CAPS_SUFFIX}"
        if split.captions_per_image == 0:
            if name in CANONICAL_SPLITS:
                raise DataError(f"split {name!r} needs captions (only other splits may be un-annotated)",
                                where=str(root))
            if split.regions is None and split.global_feats is None:
                raise DataError(f"split {name!r} has neither captions nor image features", where=str(root))
            caps_path.unlink(missing_ok=True)
        else:
            for i, cap in enumerate(split.captions):
                if not cap.strip() or "\n" in cap or "\r" in cap:
                    raise DataError(f"caption {i} of split {name!r} is empty or spans lines: {cap!r}",
                                    where=str(caps_path))
            _write_lines(caps_path, list(split.captions))

        for attr, stem, ndim, _ in FEATURE_KINDS:
            _write_features(root, name, stem, getattr(split, attr), ndim, features)

        n = split.n_images
        scenes = split.extras.get("scenes") if extras else None
        semantics = split.extras.get("semantics") if extras else None
        tags = split.extras.get("tags") if extras else None
        for suffix, value in ((SCENES_SUFFIX, scenes), (SEMANTICS_SUFFIX, semantics), (TAGS_SUFFIX, tags)):
            path = root / f"{name}{suffix}"
            if value is None:
                path.unlink(missing_ok=True)
                continue
            if len(value) != n:
                key = suffix[1:].split(".")[0]
                raise DataError(f"extras[{key!r}] has {len(value)} entries for {n} images", where=str(path))
            if suffix == SEMANTICS_SUFFIX:
                for i, text in enumerate(value):
                    if not isinstance(text, str) or "\n" in text or "\r" in text:
                        raise DataError(f"semantics of image {i} is not a one-line string: {text!r}", where=str(path))
                _write_lines(path, [t.strip() for t in value])
                continue
            if suffix == TAGS_SUFFIX:
                _check_tags(value, str(path))
                value = [[[t, float(sc)] for t, sc in entry] for entry in value]
            _write_lines(path, [json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in value])
        if extras and split.extras.get("tag_expansion") is not None:
            this = split.extras["tag_expansion"]
            _check_expansion(this, str(root / TAG_EXPANSION_FILE))
            if expansion is not None and this != expansion:
                raise DataError(f"split {name!r} carries a different tag_expansion than an earlier split",
                                where=str(root / TAG_EXPANSION_FILE))
            expansion = this
        arrays = _per_image_arrays(split) if extras else {}
        for key, path in _extra_arrays(root, name, [*splits, *_split_names(root)]).items():
            if key not in arrays:
                path.unlink()  # a stale extra from an earlier write
        for key, value in arrays.items():
            path = root / f"{name}_{key}.npy"
            atomic_write(path, lambda f, value=value: np.save(f, np.ascontiguousarray(value), allow_pickle=False))
    exp_path = root / TAG_EXPANSION_FILE
    if expansion is None:
        exp_path.unlink(missing_ok=True)
    else:
        text = json.dumps(expansion, sort_keys=True, indent=0, ensure_ascii=False) + "\n"
        atomic_write(exp_path, lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------


def check_finite(
    array: Any, *, where: str, chunk_rows: int = 1024, rows: Iterable[int] | np.ndarray | None = None
) -> None:
    """Raise ``DataError`` naming ``where`` and the first row holding NaN or inf.

    ``array`` is any array-like indexable along its first axis (a memmap is read
    ``chunk_rows`` rows at a time, so memory stays bounded). ``rows`` restricts the scan
    to those row indices (any order), for a cheap sampled check.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    n = int(array.shape[0])
    if rows is None:
        blocks: Iterable[np.ndarray] = (np.arange(lo, min(lo + chunk_rows, n)) for lo in range(0, n, chunk_rows))
        contiguous = True
    else:
        idx = np.unique(np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64))
        idx = idx[(idx >= 0) & (idx < n)]
        blocks = (idx[lo : lo + chunk_rows] for lo in range(0, len(idx), chunk_rows))
        contiguous = False
    for block in blocks:
        if not len(block):
            continue
        chunk = np.asarray(array[block[0] : block[-1] + 1] if contiguous else array[block])
        # a float64 sum is finite iff every value is (float32/16 sums cannot overflow it)
        if np.isfinite(chunk.sum(dtype=np.float64)):
            continue
        bad = ~np.isfinite(chunk.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            row = int(block[int(np.argmax(bad))])
            raise DataError(f"row {row} holds NaN or inf", where=where)


def _check_rows(n: int, nbytes: int, full_check_bytes: int) -> np.ndarray | None:
    """Rows to scan: all (None) for files up to ``full_check_bytes``, else a fixed sample."""
    if nbytes <= full_check_bytes or n <= SAMPLE_CHECK_ROWS:
        return None
    return np.unique(np.linspace(0, n - 1, SAMPLE_CHECK_ROWS).round().astype(np.int64))


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"not a readable .npy file ({exc})", where=str(path)) from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def feature_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` or HDF5 feature file, from its header only."""
    if path.suffix in (".h5", ".hdf5"):
        from xmrbench.data.hdf5 import h5_header

        return h5_header(path)
    return _npy_header(path)


def _check_features(path: Path, ndim: int, what: str) -> tuple[tuple[int, ...], np.dtype]:
    shape, dtype = feature_header(path)
    if len(shape) != ndim:
        layout = "(N, R, D)" if ndim == 3 else "(N, D)"
        raise DataError(f"{what} must be {ndim}-D {layout}, got shape {shape}", where=str(path))
    if dtype not in FEATURE_DTYPES:
        raise DataError(f"{what} have dtype {dtype}; expected float32 or float16", where=str(path))
    return shape, dtype


def _count_lines(path: Path) -> int:
    """Lines in a text file (a last line without a final newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (the final newline does not start a line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte {exc.start})", where=str(path)) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    return [line.rstrip("\r") for line in lines]


def _read_captions(path: Path) -> list[str]:
    captions = [line.strip() for line in _read_lines(path)]
    for i, cap in enumerate(captions):
        if not cap:
            raise DataError(f"line {i + 1} is an empty caption", where=str(path))
    return captions


def _read_jsonl(path: Path, n: int) -> list[Any]:
    out = []
    for i, line in enumerate(_read_lines(path)):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"line {i + 1} is not valid JSON ({exc.msg})", where=str(path)) from None
    if len(out) != n:
        raise DataError(f"{len(out)} lines for {n} images", where=str(path))
    return out


def _read_scenes(path: Path, n: int) -> list[dict]:
    return _read_jsonl(path, n)


def read_tags(path: Path, n: int) -> list[list[list]]:
    """``{split}_tags.jsonl``: per image a list of ``[tag, score]`` pairs, sorted by score (descending)."""
    tags = _read_jsonl(path, n)
    for i, entry in enumerate(tags):
        problem = _tag_problem(entry)
        if problem:
            raise DataError(f"line {i + 1}: {problem}", where=str(path))
    # sorted on load (stable), whatever order the file uses
    return [sorted(([str(t), float(sc)] for t, sc in entry), key=lambda p: -p[1]) for entry in tags]


def read_semantics(path: Path, n: int) -> list[str]:
    """``{split}_semantics.txt``: one line per image (an empty line: nothing detected)."""
    lines = [line.strip() for line in _read_lines(path)]
    if len(lines) != n:
        raise DataError(f"{len(lines)} lines for {n} images", where=str(path))
    return lines


def read_tag_expansion(path: Path) -> dict[str, list[str]]:
    """``tag_expansion.json``: caption word -> the tags it matches."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc.__class__.__name__})", where=str(path)) from None
    _check_expansion(data, str(path))
    return data


def feature_file(root: Path, split: str, stem: str) -> Path | None:
    """The feature file ``{split}{stem}.npy|.h5|.hdf5``, None if absent; two of them is an error."""
    found = [root / f"{split}{stem}{ext}" for ext in FEATURE_EXTENSIONS if (root / f"{split}{stem}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{found[0].name} and {found[1].name} hold the same features; keep one", where=str(root))
    return found[0] if found else None


def _split_names(root: Path) -> list[str]:
    """Split names: ``*_caps.txt`` files and feature files (canonical order first)."""
    names: set[str] = set()
    for p in root.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.name.endswith(CAPS_SUFFIX):
            names.add(p.name[: -len(CAPS_SUFFIX)])
            continue
        for _, stem, _, _ in FEATURE_KINDS:
            for ext in FEATURE_EXTENSIONS:
                if p.name.endswith(stem + ext):
                    names.add(p.name[: -len(stem + ext)])
    names.discard("")
    rank = {n: i for i, n in enumerate(CANONICAL_SPLITS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _split_files(root: Path) -> list[str]:
    """Split names that have a ``*_caps.txt`` file."""
    return [n for n in _split_names(root) if (root / f"{n}{CAPS_SUFFIX}").is_file()]


def _extra_arrays(root: Path, name: str, all_splits: list[str]) -> dict[str, Path]:
    """``{split}_{key}.npy`` files of split ``name`` other than its features."""
    prefix = f"{name}_"
    longer = [s for s in all_splits if s != name and s.startswith(prefix)]
    out = {}
    for p in sorted(root.glob(f"{prefix}*.npy")):
        if p.name.startswith(".") or p.name in (f"{name}{IMS_SUFFIX}", f"{name}{GLOBAL_SUFFIX}"):
            continue
        if any(p.name.startswith(f"{s}_") for s in longer):
            continue  # belongs to a split whose name extends this one ("train_small_...")
        key = p.name[len(prefix) : -len(".npy")]
        if key.isidentifier():
            out[key] = p
    return out


def load_precomp(
    root: str | os.PathLike,
    *,
    splits: Iterable[str] | None = None,
    captions_per_image: int = 5,
    mmap: bool = True,
    name: str | None = None,
    check: bool = True,
    full_check_bytes: int = FULL_CHECK_BYTES,
    extras: bool = True,
) -> RetrievalData:
    """Open a precomp directory as a :class:`RetrievalData` whose splits load lazily.

    Splits are the ``*_caps.txt`` files and caption-less feature files of non-canonical
    names (or the names in ``splits``). This call reads only array headers and counts
    caption lines, and fails with a one-line ``DataError`` naming the file for: a
    missing directory, no splits, captions without features, features of a canonical
    split (train, dev, test, testall) without captions, a caption count that is not
    ``N x captions_per_image``, feature arrays of the wrong rank or dtype (float32 and
    float16 are accepted), the same features in two formats, and region and global
    files that disagree on N. Loading a split then reads its captions (an empty line is
    an error naming its line number), opens its features with ``np.load(mmap_mode="r")``
    when ``mmap`` (HDF5 files lazily, through :class:`~xmrbench.data.hdf5.H5Array`;
    ``mmap=False`` reads either into memory), reads the extras when ``extras``, and with
    ``check`` scans the features for NaN/inf with :func:`check_finite`: whole files up
    to ``full_check_bytes`` (2 GiB), a fixed sample of ``SAMPLE_CHECK_ROWS`` rows of
    bigger ones.

    ``info`` = ``{"source": "precomp", "root", "captions_per_image", "splits": {name:
    {"images", "captions", "region_shape", "region_dtype", "global_dim",
    "global_dtype"}}}`` (plus ``"feature_format"`` where a split reads HDF5);
    ``fingerprint`` = :func:`fingerprint_dir`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    if captions_per_image < 1:
        raise DataError(f"captions_per_image must be >= 1, got {captions_per_image}", where=str(root))
    found = _split_names(root)
    if not any((root / f"{n}{CAPS_SUFFIX}").is_file() for n in found):
        raise DataError(f"no splits: no *{CAPS_SUFFIX} files", where=str(root))
    if splits is None:
        wanted = found
    else:
        wanted = list(splits)
        missing = [s for s in wanted if s not in found]
        if missing:
            raise DataError(f"no split(s) {', '.join(missing)}; found: {', '.join(found)}", where=str(root))

    expansion_path = root / TAG_EXPANSION_FILE
    expansion_path = expansion_path if extras and expansion_path.is_file() else None
    info_splits: dict[str, dict[str, Any]] = {}
    loaders: dict[str, Callable[[], Split]] = {}
    first_size: dict[str, tuple[int, Path]] = {}  # kind -> (feature size, file) of the first split read

    def same_size(kind: str, size: int, path: Path) -> None:
        seen = first_size.setdefault(kind, (size, path))
        if seen[0] != size:
            raise DataError(
                f"{kind} of size {size}, but {seen[1].name} has {seen[0]}: every split needs the same feature size",
                where=str(path),
            )

    for split in wanted:
        caps_path = root / f"{split}{CAPS_SUFFIX}"
        has_caps = caps_path.is_file()
        ims_path, glob_path = feature_file(root, split, "_ims"), feature_file(root, split, "_global")
        if ims_path is None and glob_path is None:
            raise DataError(
                f"split {split!r} has captions but no image features ({split}{IMS_SUFFIX} or {split}{GLOBAL_SUFFIX})",
                where=str(caps_path),
            )
        if not has_caps and split in CANONICAL_SPLITS:
            feats = ims_path or glob_path
            raise DataError(f"image features without captions: {caps_path.name} is missing", where=str(feats))
        n_images = None
        entry: dict[str, Any] = {"region_shape": None, "region_dtype": None, "global_dim": None, "global_dtype": None}
        if ims_path is not None:
            shape, dtype = _check_features(ims_path, 3, "region features")
            n_images = shape[0]
            same_size("region features", shape[-1], ims_path)
            entry.update(region_shape=list(shape[1:]), region_dtype=str(dtype))
        if glob_path is not None:
            shape, dtype = _check_features(glob_path, 2, "global features")
            if n_images is not None and shape[0] != n_images:
                raise DataError(f"{shape[0]} rows but {ims_path.name} has {n_images} images", where=str(glob_path))
            n_images = shape[0]
            same_size("global features", shape[1], glob_path)
            entry.update(global_dim=shape[1], global_dtype=str(dtype))
        if any(p is not None and p.suffix != ".npy" for p in (ims_path, glob_path)):
            entry["feature_format"] = "hdf5"
        cpi = captions_per_image if has_caps else 0
        n_caps = _count_lines(caps_path) if has_caps else 0
        if has_caps:
            _check_caption_count(caps_path, n_caps, n_images, captions_per_image)
        info_splits[split] = {"images": n_images, "captions": n_caps, **entry}
        extra_paths = _extra_arrays(root, split, found) if extras else {}
        text_paths = {
            key: root / f"{split}{suffix}"
            for key, suffix in (("scenes", SCENES_SUFFIX), ("semantics", SEMANTICS_SUFFIX), ("tags", TAGS_SUFFIX))
            if extras and (root / f"{split}{suffix}").is_file()
        }
        loaders[split] = _SplitLoader(
            name=split,
            caps_path=caps_path if has_caps else None,
            ims_path=ims_path,
            glob_path=glob_path,
            text_paths=text_paths,
            expansion_path=expansion_path,
            extra_paths=extra_paths,
            n_images=n_images,
            captions_per_image=cpi,
            mmap=mmap,
            check=check,
            full_check_bytes=full_check_bytes,
        )
    return RetrievalData(
        name=name or root.resolve().name,
        fingerprint=fingerprint_dir(root),
        loaders=loaders,
        info={
            "source": "precomp",
            "root": str(root),
            "captions_per_image": captions_per_image,
            "splits": info_splits,
        },
    )


def _check_caption_count(caps_path: Path, n_caps: int, n_images: int, captions_per_image: int) -> None:
    if n_caps != n_images * captions_per_image:
        _read_captions(caps_path)  # an empty line is the likeliest cause: name it
    if n_caps % captions_per_image:
        raise DataError(
            f"{n_caps} captions is not a multiple of {captions_per_image} captions per image "
            f"({n_images} images)",
            where=str(caps_path),
        )
    if n_caps != n_images * captions_per_image:
        raise DataError(
            f"{n_caps} captions for {n_images} images; expected {n_images * captions_per_image} "
            f"({captions_per_image} per image)",
            where=str(caps_path),
        )


def open_features(path: Path, *, mmap: bool = True) -> Any:
    """A feature file as an array: ``.npy`` memory-mapped (or read, ``mmap=False``),
    HDF5 as a lazy :class:`~xmrbench.data.hdf5.H5Array` (or read, ``mmap=False``)."""
    if path.suffix in (".h5", ".hdf5"):
        from xmrbench.data.hdf5 import H5Array

        arr = H5Array(path)
        return arr if mmap else np.asarray(arr)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read array ({exc})", where=str(path)) from None


@dataclass(frozen=True)
class _SplitLoader:
    """Zero-argument callable that reads one split (what ``RetrievalData.loaders`` holds)."""

    name: str
    caps_path: Path | None
    ims_path: Path | None
    glob_path: Path | None
    text_paths: dict[str, Path]
    expansion_path: Path | None
    extra_paths: dict[str, Path]
    n_images: int
    captions_per_image: int
    mmap: bool
    check: bool
    full_check_bytes: int

    def _open(self, path: Path) -> Any:
        arr = open_features(path, mmap=self.mmap)
        if arr.shape[0] != self.n_images:
            raise DataError(f"{arr.shape[0]} rows, expected {self.n_images}", where=str(path))
        return arr

    def _checked(self, path: Path) -> Any:
        arr = self._open(path)
        if self.check:
            rows = _check_rows(arr.shape[0], path.stat().st_size, self.full_check_bytes)
            check_finite(arr, where=str(path), rows=rows)
        return arr

    def __call__(self) -> Split:
        captions: list[str] = []
        if self.caps_path is not None:
            captions = _read_captions(self.caps_path)
            expected = self.n_images * self.captions_per_image
            if len(captions) != expected:  # the file changed since load_precomp counted it
                raise DataError(f"{len(captions)} captions, expected {expected}", where=str(self.caps_path))
        extras: dict[str, Any] = {}
        for key, path in self.text_paths.items():
            if key == "scenes":
                extras[key] = _read_scenes(path, self.n_images)
            elif key == "semantics":
                extras[key] = read_semantics(path, self.n_images)
            else:
                extras[key] = read_tags(path, self.n_images)
        if self.expansion_path is not None:
            extras["tag_expansion"] = read_tag_expansion(self.expansion_path)
        for key, path in self.extra_paths.items():
            extras[key] = self._open(path)
        return Split(
            name=self.name,
            captions=captions,
            captions_per_image=self.captions_per_image,
            regions=None if self.ims_path is None else self._checked(self.ims_path),
            global_feats=None if self.glob_path is None else self._checked(self.glob_path),
            extras=extras,
        )


# ---------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------


def _hash_file(h: Any, path: Path, size: int, whole: bool) -> None:
    with open(path, "rb") as f:
        if whole or size <= _FINGERPRINT_FULL_BYTES:
            while block := f.read(1 << 20):
                h.update(block)
            return
        # big feature files: the header, then evenly spaced blocks, the last included
        last = size - _FINGERPRINT_BLOCK
        for i in range(_FINGERPRINT_BLOCKS + 1):
            f.seek(last * i // _FINGERPRINT_BLOCKS)
            h.update(f.read(_FINGERPRINT_BLOCK))


def fingerprint_dir(root: str | os.PathLike) -> str:
    """A short (16 hex digits) content fingerprint of a precomp directory.

    SHA-256 over the sorted names and sizes of its regular files (hidden files
    skipped), the whole bytes of caption and JSON files and of any file up to 16 MiB,
    and a fixed sample of 65 blocks of 64 KiB from bigger files: cheap on 30 GB feature
    files, and any change of length, captions or sampled bytes changes it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    h = hashlib.sha256()
    files = sorted((p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        _hash_file(h, p, size, whole=p.suffix in (".txt", ".json", ".jsonl"))
    return h.hexdigest()[:16]
