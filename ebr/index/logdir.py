"""The live directory of an index: ``<index dir>.live/``, where its writes are logged.

    lock                 flock: one appender at a time, across worker processes
    wal-<epoch>.log      the write-ahead log (ebr.index.wal): the truth about the delta
    delta-<epoch>.rows   dense rows of upserted documents, raw [rows, dim] in the base's dtype

It sits beside the directory the index path resolves to, so that compaction, which replaces
the directory, keeps it; and a build from scratch at another path gets its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ebr.index.wal import UPSERT, Record
from ebr.io import layout
from ebr.io.manifest import Manifest

__all__ = ["live_dir", "wal_path", "rows_path", "writer_lock", "sync_rows", "log_identity"]


def live_dir(index_dir: str | os.PathLike[str]) -> Path:
    """Where the log of the index at ``index_dir`` lives: beside the directory it resolves to
    (a symlink flipped to a new build from scratch gets a new log; compaction, which replaces
    the directory's contents in place, keeps it)."""
    p = Path(os.path.realpath(index_dir))
    return p.with_name(p.name + layout.LIVE_SUFFIX)


def wal_path(ldir: Path, epoch: int) -> Path:
    return ldir / f"wal-{epoch:06d}.log"


def rows_path(ldir: Path, epoch: int) -> Path:
    return ldir / f"delta-{epoch:06d}.rows"


@contextlib.contextmanager
def writer_lock(ldir: Path) -> Iterator[None]:
    """The cross-process writer lock (flock on ``<live dir>/lock``)."""
    fd = os.open(ldir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sync_rows(path: Path, records: Sequence[Record],
              prepare: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
              after_lsn: int) -> None:
    """Make the rows file hold the dense rows of the upserts in ``records`` past
    ``after_lsn``, in order: rows that differ are rewritten, rows beyond them cut (a crash
    may leave rows of a write that was never logged, or lose rows the log holds)."""
    n_bytes = 0
    with open(path, "a+b") as f:
        for r in records:
            if r.op != UPSERT or r.vectors is None or r.lsn <= after_lsn:
                continue
            data = prepare(r.vectors)[1].tobytes()
            f.seek(n_bytes)
            if f.read(len(data)) != data:
                os.pwrite(f.fileno(), data, n_bytes)
            n_bytes += len(data)
        f.truncate(n_bytes)
        f.flush()
        os.fsync(f.fileno())


def log_identity(manifest: Manifest) -> str:
    """The id (32 hex digits) of the log a generation continues; for an index built before
    logs existed, one derived from its build."""
    live = manifest.live or {}
    if isinstance(live.get("log_id"), str) and len(live["log_id"]) == 32:
        return str(live["log_id"])
    seed = f"{manifest.build.get('created')}/{manifest.spec}/{manifest.ntotal}/{manifest.dim}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]
