"""Reader and writer of the SCAN "precomp" layout.

One directory per dataset holds, per split ``{split}``:

- ``{split}_caps.txt``: one caption per line, UTF-8, ``captions_per_image``
  consecutive lines per image in image order (caption ``j`` describes image
  ``j // captions_per_image``). The set of ``*_caps.txt`` files defines the splits.
- ``{split}_ims.npy``: region features, (N, R, D) float32 (float16 accepted).
- ``{split}_global.npy``: global features, (N, D) float32 (float16 accepted). Not a
  peer file; our layout for one-vector-per-image features.
- optional extras: ``{split}_scenes.jsonl`` (one JSON object per image) and
  ``{split}_{key}.npy`` for any other per-image array (one row per image), loaded
  into ``Split.extras[key]``.

A split needs captions and at least one of ``_ims.npy`` / ``_global.npy``. Feature
files are memory-mapped on load, so a 30 GB ``train_ims.npy`` stays on disk until a
batch is indexed. Files whose names start with ``.`` are ignored everywhere
(fingerprints included), so tools may keep markers next to the data.
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
CANONICAL_SPLITS = ("train", "dev", "test", "testall")
FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

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


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
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


def write_precomp(root: str | os.PathLike, splits: Mapping[str, Split], *, extras: bool = True) -> None:
    """Write ``splits`` to ``root`` in the precomp layout (see the module docstring).

    Per split: ``{name}_caps.txt``; ``{name}_ims.npy`` if it has region features;
    ``{name}_global.npy`` if it has global features; with ``extras``,
    ``{name}_scenes.jsonl`` if ``extras["scenes"]`` exists and ``{name}_{key}.npy`` for
    every other extra that is an array with one row per image. Each file is written
    atomically; files of a kind the new split lacks are removed so that no stale
    file is read back. Features are stored as float32 (float16 input stays float16).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        if not name or "/" in name or name.startswith("."):
            raise DataError(f"invalid split name {name!r}", where=str(root))
        caps_path = root / f"{name}{CAPS_SUFFIX}"
        for i, cap in enumerate(split.captions):
            if not cap.strip() or "\n" in cap or "\r" in cap:
                raise DataError(f"caption {i} of split {name!r} is empty or spans lines: {cap!r}", where=str(caps_path))
        text = "".join(f"{cap}\n" for cap in split.captions).encode("utf-8")
        _atomic_write(caps_path, lambda f: f.write(text))

        for suffix, arr, ndim in ((IMS_SUFFIX, split.regions, 3), (GLOBAL_SUFFIX, split.global_feats, 2)):
            path = root / f"{name}{suffix}"
            if arr is None:
                path.unlink(missing_ok=True)
                continue
            data = _feature_array(arr, str(path), ndim)
            _atomic_write(path, lambda f, data=data: np.save(f, data, allow_pickle=False))

        scenes_path = root / f"{name}{SCENES_SUFFIX}"
        scenes = split.extras.get("scenes") if extras else None
        if scenes is None:
            scenes_path.unlink(missing_ok=True)
        else:
            if len(scenes) != split.n_images:
                raise DataError(
                    f"extras['scenes'] has {len(scenes)} entries for {split.n_images} images", where=str(scenes_path)
                )
            lines = "".join(json.dumps(s, separators=(",", ":"), ensure_ascii=False) + "\n" for s in scenes)
            _atomic_write(scenes_path, lambda f: f.write(lines.encode("utf-8")))
        arrays = _per_image_arrays(split) if extras else {}
        for key, path in _extra_arrays(root, name, [*splits, *_split_files(root)]).items():
            if key not in arrays:
                path.unlink()  # a stale extra from an earlier write
        for key, value in arrays.items():
            path = root / f"{name}_{key}.npy"
            _atomic_write(path, lambda f, value=value: np.save(f, np.ascontiguousarray(value), allow_pickle=False))


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


def _check_features(path: Path, ndim: int, what: str) -> tuple[tuple[int, ...], np.dtype]:
    shape, dtype = _npy_header(path)
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


def _read_captions(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte {exc.start})", where=str(path)) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    captions = [line.strip() for line in lines]
    for i, cap in enumerate(captions):
        if not cap:
            raise DataError(f"line {i + 1} is an empty caption", where=str(path))
    return captions


def _read_scenes(path: Path, n: int) -> list[dict]:
    scenes = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            try:
                scenes.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"line {i + 1} is not valid JSON ({exc.msg})", where=str(path)) from None
    if len(scenes) != n:
        raise DataError(f"{len(scenes)} lines for {n} images", where=str(path))
    return scenes


def _split_files(root: Path) -> list[str]:
    names = [p.name[: -len(CAPS_SUFFIX)] for p in root.iterdir() if p.name.endswith(CAPS_SUFFIX) and p.is_file()]
    names = [n for n in names if n and not n.startswith(".")]
    rank = {n: i for i, n in enumerate(CANONICAL_SPLITS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


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

    Splits are the ``*_caps.txt`` files (or the names in ``splits``). This call reads
    only array headers and counts caption lines, and fails with a one-line
    ``DataError`` naming the file for: a missing directory, no splits, captions
    without features, a caption count that is not ``N x captions_per_image``, feature
    arrays of the wrong rank or dtype (float32 and float16 are accepted), and region
    and global files that disagree on N. Loading a split then reads its captions
    (an empty line is an error naming its line number), opens its features with
    ``np.load(mmap_mode="r")`` when ``mmap``, reads the extras when ``extras``, and
    with ``check`` scans the features for NaN/inf with :func:`check_finite`: whole
    files up to ``full_check_bytes`` (2 GiB), a fixed sample of
    ``SAMPLE_CHECK_ROWS`` rows of bigger ones.

    ``info`` = ``{"source": "precomp", "root", "captions_per_image", "splits": {name:
    {"images", "captions", "region_shape", "region_dtype", "global_dim",
    "global_dtype"}}}``; ``fingerprint`` = :func:`fingerprint_dir`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    if captions_per_image < 1:
        raise DataError(f"captions_per_image must be >= 1, got {captions_per_image}", where=str(root))
    found = _split_files(root)
    if not found:
        raise DataError(f"no splits: no *{CAPS_SUFFIX} files", where=str(root))
    if splits is None:
        wanted = found
    else:
        wanted = list(splits)
        missing = [s for s in wanted if s not in found]
        if missing:
            raise DataError(f"no split(s) {', '.join(missing)}; found: {', '.join(found)}", where=str(root))

    info_splits: dict[str, dict[str, Any]] = {}
    loaders: dict[str, Callable[[], Split]] = {}
    for split in wanted:
        caps_path = root / f"{split}{CAPS_SUFFIX}"
        ims_path, glob_path = root / f"{split}{IMS_SUFFIX}", root / f"{split}{GLOBAL_SUFFIX}"
        has_ims, has_glob = ims_path.is_file(), glob_path.is_file()
        if not (has_ims or has_glob):
            raise DataError(
                f"split {split!r} has captions but no image features ({ims_path.name} or {glob_path.name})",
                where=str(caps_path),
            )
        n_images = None
        entry: dict[str, Any] = {"region_shape": None, "region_dtype": None, "global_dim": None, "global_dtype": None}
        if has_ims:
            shape, dtype = _check_features(ims_path, 3, "region features")
            n_images = shape[0]
            entry.update(region_shape=list(shape[1:]), region_dtype=str(dtype))
        if has_glob:
            shape, dtype = _check_features(glob_path, 2, "global features")
            if n_images is not None and shape[0] != n_images:
                raise DataError(f"{shape[0]} rows but {ims_path.name} has {n_images} images", where=str(glob_path))
            n_images = shape[0]
            entry.update(global_dim=shape[1], global_dtype=str(dtype))
        n_caps = _count_lines(caps_path)
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
        info_splits[split] = {"images": n_images, "captions": n_caps, **entry}
        extra_paths = _extra_arrays(root, split, found) if extras else {}
        scenes_path = root / f"{split}{SCENES_SUFFIX}"
        loaders[split] = _SplitLoader(
            name=split,
            caps_path=caps_path,
            ims_path=ims_path if has_ims else None,
            glob_path=glob_path if has_glob else None,
            scenes_path=scenes_path if extras and scenes_path.is_file() else None,
            extra_paths=extra_paths,
            n_images=n_images,
            captions_per_image=captions_per_image,
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


@dataclass(frozen=True)
class _SplitLoader:
    """Zero-argument callable that reads one split (what ``RetrievalData.loaders`` holds)."""

    name: str
    caps_path: Path
    ims_path: Path | None
    glob_path: Path | None
    scenes_path: Path | None
    extra_paths: dict[str, Path]
    n_images: int
    captions_per_image: int
    mmap: bool
    check: bool
    full_check_bytes: int

    def _open(self, path: Path) -> np.ndarray:
        try:
            arr = np.load(path, mmap_mode="r" if self.mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read array ({exc})", where=str(path)) from None
        if arr.shape[0] != self.n_images:
            raise DataError(f"{arr.shape[0]} rows, expected {self.n_images}", where=str(path))
        return arr

    def _checked(self, path: Path) -> np.ndarray:
        arr = self._open(path)
        if self.check:
            rows = _check_rows(arr.shape[0], path.stat().st_size, self.full_check_bytes)
            check_finite(arr, where=str(path), rows=rows)
        return arr

    def __call__(self) -> Split:
        captions = _read_captions(self.caps_path)
        expected = self.n_images * self.captions_per_image
        if len(captions) != expected:  # the file changed since load_precomp counted it
            raise DataError(f"{len(captions)} captions, expected {expected}", where=str(self.caps_path))
        extras: dict[str, Any] = {}
        if self.scenes_path is not None:
            extras["scenes"] = _read_scenes(self.scenes_path, self.n_images)
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
