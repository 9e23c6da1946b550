"""Raw vector files: ``.fbin``/``.f16bin``/``.ibin`` (8-byte ``(n, d)`` header), ``.fvecs``/``.ivecs``
(texmex, per-row dim prefix) and ``.npy``.

Readers memory-map read-only and check the file size against the header before mapping,
reporting truncation and trailing bytes separately (big-ann ``xbin_mmap``, usearch ``load_matrix``).
"""

from __future__ import annotations

import mmap as mmap_module
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ebr.errors import CorruptFileError, InputError

__all__ = [
    "BIN_DTYPES",
    "read_bin",
    "write_bin",
    "read_vecs",
    "write_vecs",
    "load_vectors",
    "check_vectors",
    "release_rows",
    "CHUNK",
    "chunks",
    "gather_rows",
    "sample_rows",
    "RowPrefetch",
]

BIN_DTYPES = {".fbin": np.float32, ".f16bin": np.float16, ".ibin": np.int32, ".i64bin": np.int64,
              ".u8bin": np.uint8}
_HEADER = 8
CHUNK = 65536  # rows per streamed chunk
_F32_MAX = float(np.finfo(np.float32).max)


def _bin_dtype(path: Path) -> np.dtype:
    try:
        return np.dtype(BIN_DTYPES[path.suffix])
    except KeyError:
        raise InputError(f"{path}: unknown binary vector suffix {path.suffix!r}") from None


def read_bin(path: str | os.PathLike[str], mmap: bool = True,
             random_access: bool = False) -> np.ndarray:
    """Read an ``.fbin``-family file as a read-only ``(n, d)`` array (memory-mapped by default).

    random_access: ``madvise(MADV_RANDOM)`` on the mapping, for row gathers: without it every
        page fault pulls the kernel's read-ahead window around the row (cold re-rank of 200 rows
        measured 83 ms/query vs 11 ms with it; warm reads are unaffected; bench_rerank_io.py).
    """
    path = Path(path)
    dtype = _bin_dtype(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: file is missing") from None
    if size < _HEADER:
        raise CorruptFileError(f"{path}: {size} bytes, shorter than the 8-byte (n, d) header")
    n, d = (int(v) for v in np.fromfile(path, dtype=np.uint32, count=2))
    expected = _HEADER + n * d * dtype.itemsize
    if size < expected:
        raise CorruptFileError(f"{path}: truncated: header says {n} x {d} {dtype} "
                               f"({expected} bytes) but the file has {size} bytes")
    if size > expected:
        raise CorruptFileError(f"{path}: {size - expected} trailing bytes after {n} x {d} {dtype}")
    if n == 0 or d == 0:
        return np.zeros((n, d), dtype=dtype)
    if mmap:
        # a plain ndarray over a read-only mapping: np.memmap's __getitem__ costs ~20 us per gather
        with open(path, "rb") as f:
            mm = mmap_module.mmap(f.fileno(), 0, prot=mmap_module.PROT_READ)
        if random_access and hasattr(mm, "madvise"):
            mm.madvise(mmap_module.MADV_RANDOM)
        return np.frombuffer(mm, dtype=dtype, count=n * d, offset=_HEADER).reshape(n, d)
    arr = np.fromfile(path, dtype=dtype, offset=_HEADER, count=n * d).reshape(n, d)
    arr.flags.writeable = False
    return arr


def write_bin(path: str | os.PathLike[str], x: np.ndarray, chunk_rows: int = 65536) -> int:
    """Write ``x`` (2-D) as an ``.fbin``-family file in row chunks; fsync; return bytes written."""
    path = Path(path)
    dtype = _bin_dtype(path)
    if x.ndim != 2:
        raise InputError(f"write_bin expects a 2-D array, got shape {x.shape}")
    n, d = x.shape
    with open(path, "wb") as f:
        np.array([n, d], dtype=np.uint32).tofile(f)
        for i0 in range(0, n, chunk_rows):
            np.ascontiguousarray(x[i0:i0 + chunk_rows], dtype=dtype).tofile(f)
        f.flush()
        os.fsync(f.fileno())
    return _HEADER + n * d * dtype.itemsize


def read_vecs(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a texmex ``.fvecs``/``.ivecs``/``.bvecs`` file (memory-mapped, read-only view)."""
    path = Path(path)
    kind = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}.get(path.suffix)
    if kind is None:
        raise InputError(f"{path}: expected .fvecs, .ivecs or .bvecs")
    size = path.stat().st_size
    if size < 4:
        raise CorruptFileError(f"{path}: empty or shorter than one dimension prefix")
    d = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    item = np.dtype(kind).itemsize
    row = 4 + d * item
    if d <= 0 or size % row:
        raise CorruptFileError(f"{path}: size {size} is not a multiple of the row size {row} (d={d})")
    n = size // row
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(n, row)
    dims = raw[:, :4].copy().view(np.int32).ravel()
    if not (dims == d).all():
        raise CorruptFileError(f"{path}: rows have differing dimension prefixes")
    return raw[:, 4:].view(kind)


def write_vecs(path: str | os.PathLike[str], x: np.ndarray) -> None:
    path = Path(path)
    kind = {".fvecs": np.float32, ".ivecs": np.int32}[path.suffix]
    n, d = x.shape
    out = np.empty((n, d + 1), dtype=kind)
    out[:, 0:1].view(np.int32)[:] = d
    out[:, 1:] = x
    out.tofile(path)


def load_vectors(path: str | os.PathLike[str], mmap: bool = True) -> np.ndarray:
    """Load ``(n, d)`` vectors from ``.npy``, ``.fvecs``, ``.fbin`` or ``.f16bin`` (read-only)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".npy":
        try:
            x = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as e:
            raise CorruptFileError(f"{path}: not a readable .npy file: {e}") from None
    elif path.suffix in (".fvecs", ".ivecs", ".bvecs"):
        x = read_vecs(path)
    elif path.suffix in BIN_DTYPES:
        x = read_bin(path, mmap=mmap)
    else:
        raise InputError(f"{path}: unsupported vector format {path.suffix!r} "
                         "(expected .npy, .fvecs, .fbin, .f16bin)")
    if x.ndim != 2:
        raise InputError(f"{path}: expected a 2-D (n, d) array, got shape {x.shape}")
    return x


def _mapping(x: np.ndarray) -> mmap_module.mmap | None:
    """The mmap under ``x`` (through views, np.memmap or np.frombuffer), if any."""
    obj: object = x
    for _ in range(16):
        if isinstance(obj, mmap_module.mmap):
            return obj
        mm = getattr(obj, "_mmap", None)  # np.memmap (np.load(mmap_mode="r"))
        if isinstance(mm, mmap_module.mmap):
            return mm
        nxt = getattr(obj, "base", None)
        obj = nxt if nxt is not None else getattr(obj, "obj", None)  # memoryview -> exporter
        if obj is None:
            return None
    return None


def release_rows(x: np.ndarray, i0: int, i1: int) -> None:
    """Drop rows [i0, i1) of a memory-mapped array from this process' resident set
    (``MADV_DONTNEED``; the pages stay in the page cache). Streaming readers call it after each
    chunk, so reading a file larger than RAM does not grow RSS. No-op for in-memory arrays."""
    mm = _mapping(x)
    if mm is None or not hasattr(mm, "madvise") or i1 <= i0 or x.ndim != 2:
        return
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    start = x.ctypes.data - base + i0 * x.strides[0]
    end = x.ctypes.data - base + i1 * x.strides[0]
    page = mmap_module.PAGESIZE
    lo = (start // page) * page
    hi = min(-(-end // page) * page, len(mm))
    if 0 <= lo < hi:
        mm.madvise(mmap_module.MADV_DONTNEED, lo, hi - lo)


def check_vectors(x: np.ndarray, d: int | None = None, name: str = "vectors",
                  chunk_rows: int = 65536) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite, numeric ``(n, d)`` array."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", None)
        raise InputError(f"{name}: expected a 2-D (n, d) array, got shape {shape}")
    if x.dtype.kind not in "iufc":  # np.issubdtype(x.dtype, np.number), a µs faster
        raise InputError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if d is not None and x.shape[1] != d:
        raise InputError(f"{name}: dimension {x.shape[1]} does not match the index dimension {d}")
    if x.dtype == np.float32 and x.shape[0] <= chunk_rows:
        if not np.isfinite(x).all():  # one chunk (every query batch): one pass (hot path)
            bad = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise InputError(f"{name}: row {bad} contains NaN or inf")
        return
    for i0 in range(0, x.shape[0], chunk_rows):
        block = np.asarray(x[i0:i0 + chunk_rows])
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
            bad = i0 + int(np.argwhere(~np.isfinite(block))[0, 0])
            raise InputError(f"{name}: row {bad} contains NaN or inf")
        if block.size and block.dtype.itemsize > 4 and np.abs(block).max() > _F32_MAX:
            bad = i0 + int(np.argwhere(np.abs(block) > _F32_MAX)[0, 0])
            raise InputError(f"{name}: row {bad} has a value outside the float32 range")
        release_rows(x, i0, i0 + chunk_rows)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample (sorted so a memmap reads forward)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def chunks(x: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None
           ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 copy of the rows) per chunk of :data:`CHUNK` rows, ``transform``
    applied; a mapped input's pages leave RSS after each chunk, so peak memory does not grow
    with the file (bench/bench_scale.py)."""
    for i0 in range(0, x.shape[0], CHUNK):
        block = np.array(x[i0:i0 + CHUNK], dtype=np.float32)
        release_rows(x, i0, i0 + CHUNK)
        yield i0, transform(block) if transform is not None else block


def gather_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] (rows sorted) as float32, one chunk of the input at a time: a spread sample
    touches most pages of a mapped file, and each chunk's pages leave RSS once copied."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    at = 0
    for i0 in range(0, x.shape[0], CHUNK):
        sel = rows[np.searchsorted(rows, i0):np.searchsorted(rows, i0 + CHUNK)]
        out[at:at + len(sel)] = x[sel]
        at += len(sel)
        release_rows(x, i0, i0 + CHUNK)
    return out


class RowPrefetch:
    """The hybrid read path of the re-rank: mapped reads while the rows are in the page cache,
    parallel reads of the rows while they are not.

    A mapped gather of cold rows faults them in one at a time (one disk round trip each, ~11 ms
    for 200 rows in bench_rerank_io.py), where reads issued together overlap (a pool of preads:
    ~4.5 ms) and warm mapped reads cost ~0.02 ms, which any per-row system call would multiply.
    So: :meth:`observe` the time of each gather per row read; after ``slow_queries`` slow ones
    in a row (more than ``slow_us_per_row``: rows came from disk; one alone may be the
    scheduler), :meth:`hint` asks the kernel for every row of the next gathers before they run
    (``posix_fadvise(WILLNEED)``: asynchronous reads, issued together, that the gather then
    finds in the page cache); after ``calm_queries`` fast gathers in a row, it stops asking.
    Warm, it costs two clock reads per gather.
    Safe to share between threads (the switch is a flag; a lost update costs one hint).
    """

    def __init__(self, path: str | os.PathLike[str], row_bytes: int,
                 slow_us_per_row: float = 20.0, slow_queries: int = 2,
                 calm_queries: int = 16) -> None:
        if row_bytes <= 0 or slow_us_per_row <= 0 or slow_queries < 1 or calm_queries < 1:
            raise ValueError("row_bytes and slow_us_per_row must be > 0, slow_queries and "
                             "calm_queries >= 1")
        self.row_bytes = row_bytes
        self.slow_us_per_row = slow_us_per_row
        self.slow_queries = slow_queries
        self.calm_queries = calm_queries
        self.active = False
        self.hinted_rows = 0
        self.switches = 0
        self._calm = 0
        self._slow = 0
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._finalizer = weakref.finalize(self, os.close, self._fd)

    def hint(self, rows: np.ndarray) -> None:
        """While active: start reading ``rows`` (row ids, ``-1`` ignored) into the page cache."""
        if not self.active:
            return
        fd, size = self._fd, self.row_bytes
        todo = np.unique(rows[rows >= 0])
        for r in todo.tolist():
            os.posix_fadvise(fd, _HEADER + r * size, size, os.POSIX_FADV_WILLNEED)
        self.hinted_rows += len(todo)

    def observe(self, seconds: float, rows: int) -> None:
        """One gather of ``rows`` rows took ``seconds``: switch on after a slow one, off after
        ``calm_queries`` fast ones."""
        if rows <= 0:
            return
        slow = seconds * 1e6 / rows > self.slow_us_per_row
        with self._lock:
            if slow:
                self._calm = 0
                self._slow += 1
                if not self.active and self._slow >= self.slow_queries:
                    self.active = True
                    self.switches += 1
            else:
                self._slow = 0
                if self.active:
                    self._calm += 1
                    if self._calm >= self.calm_queries:
                        self.active = False
                        self.switches += 1

    def close(self) -> None:
        self._finalizer()
