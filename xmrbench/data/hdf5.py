"""HDF5 feature files, read lazily: a split never has to fit in RAM.

A feature file holds one dataset (named ``features`` by our writer; a file with a
single dataset of another name is read too) of shape ``(N, R, D)`` (region features)
or ``(N, D)`` (global features), float32 or float16. :class:`H5Array` opens it on
first use and reads only the rows a batch asks for, so COCO-sized region features
(113,287 x 36 x 2048 float32, about 33 GB) train from disk. See
``docs/formats/hdf5.md``.

Chunking matters for random batches: our writer stores one image per chunk
(``chunk_rows=1``), so reading an image touches one chunk. A file chunked over many
images (or compressed) makes every random row read decode a whole chunk; the
``xmrbench bench data`` benchmark measures what a layout costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.data.dataset import LazyRows
from xmrbench.errors import DataError

H5_SUFFIXES = (".h5", ".hdf5")
DEFAULT_KEY = "features"
_BLOCK_ROWS = 256  # rows copied per block when writing
IO_THREADS = 8
"""Reads in flight for one batch (a process-wide pool, created on first use)."""
_PARALLEL_MIN_ROWS = 16
_POOL: Any = None
_POOL_PID: int | None = None


def _io_pool() -> Any:
    """The process-wide read pool (a forked child gets its own: threads do not survive a fork)."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="xmrbench-h5")
        _POOL_PID = os.getpid()
    return _POOL


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a declared dependency
        raise DataError("reading HDF5 files needs the h5py package (pip install h5py)") from None
    return h5py


def dataset_key(path: str | os.PathLike, key: str | None = None) -> str:
    """The name of the feature dataset in ``path``: ``key`` if given, else ``features``,
    else the file's only dataset. A ``DataError`` names the file otherwise."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if key is not None:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(f"no dataset {key!r} in the file", where=str(path))
                return key
            if DEFAULT_KEY in f and isinstance(f[DEFAULT_KEY], h5py.Dataset):
                return DEFAULT_KEY
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    except OSError as exc:
        raise DataError(f"not a readable HDF5 file ({exc})", where=str(path)) from None
    if len(names) != 1:
        listed = ", ".join(names[:5]) or "none"
        raise DataError(f"expected a dataset named {DEFAULT_KEY!r} or exactly one dataset; found: {listed}",
                        where=str(path))
    return names[0]


class H5Array(LazyRows):
    """A read-only HDF5 dataset with numpy-style row indexing, opened lazily.

    ``arr[i]``, ``arr[a:b]`` and ``arr[index]`` (any integer array, any order,
    repeats allowed) return numpy arrays; ``np.asarray(arr)`` reads everything. Only
    the requested rows are read. The object pickles by path (a worker process
    reopens the file), so a :class:`~xmrbench.data.dataset.Split` holding it can be
    sent to another process.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        self.key = dataset_key(self.path, key)
        h5py = _h5py()
        with h5py.File(self.path, "r") as f:
            ds = f[self.key]
            self.shape: tuple[int, ...] = tuple(int(s) for s in ds.shape)
            self.dtype = np.dtype(ds.dtype)
            self.chunks: tuple[int, ...] | None = ds.chunks
        self._file: Any = None
        self._ds: Any = None
        self._fd: int | None = None
        self._table: tuple[int, np.ndarray] | None = None
        self._table_checked = False

    # -- numpy-like surface (ndim, len: LazyRows) ---------------------------------
    def __repr__(self) -> str:
        return f"H5Array({str(self.path)!r}, key={self.key!r}, shape={self.shape}, dtype={self.dtype})"

    def _dataset(self) -> Any:
        if self._ds is None:
            h5py = _h5py()
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"cannot open HDF5 file ({exc})", where=str(self.path)) from None
            self._ds = self._file[self.key]
        return self._ds

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._fd is not None:
            os.close(self._fd)
        self._file = self._ds = self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError, TypeError):  # interpreter shutdown: modules may be gone already
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_ds"] = state["_fd"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, item: Any) -> np.ndarray:
        ds = self._dataset()
        if isinstance(item, (int, np.integer)):
            i = int(item)
            if not -self.shape[0] <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range for {self.shape[0]} rows")
            return ds[i % self.shape[0]]
        if isinstance(item, slice) or item is Ellipsis:
            return ds[item]
        if isinstance(item, tuple):
            if item and isinstance(item[0], (slice, int, np.integer)):
                return ds[item]
            raise TypeError("H5Array supports a row index array only as the sole index")
        index = np.asarray(item)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        if index.dtype.kind not in "iu" or index.ndim != 1:
            raise TypeError(f"unsupported index of dtype {index.dtype} and shape {index.shape}")
        n = self.shape[0]
        index = index.astype(np.int64)
        if len(index) and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        index = index % n if len(index) else index
        return self._read_rows(ds, index)

    def _chunk_table(self, ds: Any) -> tuple[int, np.ndarray] | None:
        """``(rows per chunk, byte offset of every chunk)`` when the chunks can be read
        straight from the file: chunked along rows only, no filters (compression,
        shuffle, checksums), native byte order, every chunk written. None otherwise."""
        if self._table is not None or self._table_checked:
            return self._table
        self._table_checked = True
        try:
            if ds.chunks is None or tuple(ds.chunks[1:]) != self.shape[1:] or not ds.dtype.isnative:
                return None
            if ds.id.get_create_plist().get_nfilters() != 0:
                return None
            rows = int(ds.chunks[0])
            nbytes = rows * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            n_chunks = -(-self.shape[0] // rows)
            offsets = np.full(n_chunks, -1, dtype=np.int64)
            sizes_ok = [True]

            def visit(info: Any) -> None:
                offsets[info.chunk_offset[0] // rows] = info.byte_offset
                sizes_ok[0] &= info.size == nbytes

            if hasattr(ds.id, "chunk_iter"):
                ds.id.chunk_iter(visit)
            else:
                for k in range(ds.id.get_num_chunks()):
                    visit(ds.id.get_chunk_info(k))
        except (AttributeError, TypeError, ValueError, RuntimeError, OSError):  # an older h5py or HDF5
            return None
        if not sizes_ok[0] or (offsets < 0).any():
            return None
        self._table = (rows, offsets)
        return self._table

    def _read_rows(self, ds: Any, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` (any order, repeats allowed): each distinct row read once.

        Uncompressed files chunked along rows (our writer's layout) are read chunk by
        chunk with ``os.preadv`` at offsets taken once from the chunk index, straight
        into the output array (no HDF5 chunk cache, no extra copy); other layouts read
        runs of consecutive rows as one hyperslab each.
        """
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        if not len(index):
            return out
        uniq, inverse = np.unique(index, return_inverse=True)
        table = self._chunk_table(ds)
        if table is not None:
            if len(uniq) == len(index):  # distinct rows: chunks go straight into ``out``
                order = np.argsort(index, kind="stable")
                self._read_chunks(table, uniq, out, dest=order)
            else:
                block = np.empty((len(uniq), *self.shape[1:]), dtype=self.dtype)
                self._read_chunks(table, uniq, block)
                out[:] = block[inverse.reshape(-1)]
            return out
        block = np.empty((len(uniq), *self.shape[1:]), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(uniq)]])
        for s, e in zip(starts.tolist(), stops.tolist()):
            lo = int(uniq[s])
            ds.read_direct(block, source_sel=np.s_[lo : lo + (e - s)], dest_sel=np.s_[s:e])
        out[:] = block[inverse.reshape(-1)]
        return out

    def _read_chunks(self, table: tuple[int, np.ndarray], uniq: np.ndarray, block: np.ndarray,
                     dest: np.ndarray | None = None) -> None:
        """``block[dest[k]]`` (``dest`` None: ``block[k]``) = row ``uniq[k]`` (sorted, distinct)."""
        rows, offsets = table
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        fd = self._fd
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        where = np.arange(len(uniq)) if dest is None else dest
        if rows == 1 and hasattr(os, "preadv"):
            rows_list = uniq.tolist()

            def read_one(k: int) -> int:
                view = memoryview(block[int(where[k])]).cast("B")
                return os.preadv(fd, [view], int(offsets[rows_list[k]]))

            if len(rows_list) >= _PARALLEL_MIN_ROWS:
                # preadv releases the GIL: several reads in flight hide disk latency
                # (about 3x on cold random batches in ``xmrbench bench data``)
                got = list(_io_pool().map(read_one, range(len(rows_list))))
            else:
                got = [read_one(k) for k in range(len(rows_list))]
            short = [rows_list[k] for k, n in enumerate(got) if n != row_bytes]
            if short:
                raise DataError(f"short read of row {short[0]}", where=str(self.path))
            return
        chunk_of = uniq // rows
        starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        stops = np.r_[starts[1:], len(uniq)]
        for s, e in zip(starts.tolist(), stops.tolist()):
            c = int(chunk_of[s])
            buf = os.pread(fd, rows * row_bytes, int(offsets[c]))
            if len(buf) != rows * row_bytes:
                raise DataError(f"short read of chunk {c}", where=str(self.path))
            chunk = np.frombuffer(buf, dtype=self.dtype).reshape(rows, *self.shape[1:])
            block[where[s:e]] = chunk[uniq[s:e] - c * rows]


def is_h5(path: str | os.PathLike) -> bool:
    return Path(path).suffix in H5_SUFFIXES


def h5_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the feature dataset of ``path`` (nothing else is read)."""
    arr = H5Array(path)
    return arr.shape, arr.dtype


def write_h5_features(
    path: str | os.PathLike,
    data: Any,
    *,
    key: str = DEFAULT_KEY,
    chunk_rows: int = 1,
    compression: str | None = None,
    block_rows: int = _BLOCK_ROWS,
    dtype: Any = None,
) -> Path:
    """Write ``data`` ((N, ...) array-like, a memmap included) to ``path`` as one dataset.

    Rows are copied ``block_rows`` at a time, so ``data`` never has to fit in RAM.
    ``chunk_rows`` images per HDF5 chunk (1: a random row read touches one chunk);
    ``compression`` is passed to h5py (None, ``"gzip"``, ``"lzf"``). The file is written
    under a hidden temporary name and renamed into place. Returns ``path``.
    """
    h5py = _h5py()
    path = Path(path)
    shape = tuple(int(s) for s in data.shape)
    if not shape:
        raise DataError("cannot write a 0-d array as features", where=str(path))
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(data.dtype)
    if chunk_rows < 1 or block_rows < 1:
        raise ValueError("chunk_rows and block_rows must be >= 1")
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            chunks = (min(chunk_rows, max(shape[0], 1)), *shape[1:]) if shape[0] else None
            ds = f.create_dataset(key, shape=shape, dtype=out_dtype, chunks=chunks, compression=compression)
            for lo in range(0, shape[0], block_rows):
                hi = min(lo + block_rows, shape[0])
                ds[lo:hi] = np.asarray(data[lo:hi], dtype=out_dtype)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def fill_h5_features(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    fill: Callable[[int, int], np.ndarray],
    *,
    dtype: Any = np.float32,
    key: str = DEFAULT_KEY,
    chunk_rows: int = 1,
    block_rows: int = _BLOCK_ROWS,
) -> Path:
    """Write a feature file whose rows ``[lo, hi)`` are ``fill(lo, hi)``, block by block.

    For files larger than memory (benchmarks, converters). Atomic like
    :func:`write_h5_features`.
    """

    class _Rows:
        def __init__(self) -> None:
            self.shape = tuple(shape)
            self.dtype = np.dtype(dtype)

        def __getitem__(self, item: slice) -> np.ndarray:
            return fill(item.start, item.stop)

    return write_h5_features(path, _Rows(), key=key, chunk_rows=chunk_rows, block_rows=block_rows, dtype=dtype)
