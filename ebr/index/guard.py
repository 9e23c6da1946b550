"""``FileGuard``: keep an open index's memory-mapped files from changing under a search.

A mapped file that another process truncates makes the next touch of a page past its new end
raise SIGBUS, and the process dies (no Python exception can catch it); a file rewritten in place
silently changes the scores. An operator who rsyncs into the live directory, a ``truncate``, a
full disk: each would take the server down. Two layers keep it alive:

1. **Leases** (Linux ``F_SETLEASE`` with ``F_RDLCK``, enabled by :func:`enable_leases`): the
   kernel signals this process *before* another process opens a guarded file for writing or
   truncates it, and holds that process back (it blocks, or gets ``EAGAIN`` when it opens with
   ``O_NONBLOCK`` as coreutils ``truncate`` does) until the lease is released or
   ``/proc/sys/fs/lease-break-time`` (45 s by default) passes. On the signal the guard turns
   *broken*: new uses raise :class:`IndexChangedError`, uses in flight finish on the intact
   file, and only then is the lease released and the writer let through. No window.
2. **A stat check** where no lease can be held (not Linux, a filesystem without leases, a file
   owned by another user, or :func:`enable_leases` not called because the process does not
   serve from its main thread): every use first ``fstat``s the files and refuses when inode,
   size or mtime differ from when they were opened. A truncation that lands *during* a use can
   still fault; this layer narrows the window to one search, it cannot close it.

A file replaced by rename (``rsync`` without ``--inplace``, a new build) or unlinked is not a
fault: the mapping keeps the old inode, whose bytes stay whole and consistent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
import weakref
from pathlib import Path

from ebr.errors import IndexChangedError

__all__ = ["FileGuard", "enable_leases"]

logger = logging.getLogger(__name__)

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
_GUARDS: weakref.WeakSet[FileGuard] = weakref.WeakSet()
_GUARDS_LOCK = threading.Lock()
_LEASE_SIGNAL: int | None = None  # set by enable_leases


def enable_leases() -> bool:
    """Install the lease-break handler (once per process); from the main thread only, as
    Python requires for signal handlers. Returns whether guards opened from now on take leases.

    The handler only writes a byte to a pipe; a daemon thread does the work (marks the guards
    whose lease is being broken, waits for their uses in flight, releases the leases)."""
    global _LEASE_SIGNAL
    if _LEASE_SIGNAL is not None:
        return True
    if not hasattr(signal, "SIGRTMIN") or threading.current_thread() is not threading.main_thread():
        return False
    sig = signal.SIGRTMIN + 3  # a real-time signal nobody else uses
    r, w = os.pipe()
    os.set_blocking(w, False)

    def on_signal(signum: int, frame: object) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(w, b"!")

    signal.signal(sig, on_signal)
    threading.Thread(target=_lease_breaks, args=(r,), name="ebr-lease-breaks",
                     daemon=True).start()
    _LEASE_SIGNAL = sig
    logger.info("index file leases on: a writer to a served file is held back until searches "
                "in flight finish")
    return True


def _lease_breaks(r: int) -> None:
    while True:
        os.read(r, 4096)
        with _GUARDS_LOCK:
            guards = list(_GUARDS)
        for g in guards:
            g._on_lease_signal()


class FileGuard:
    """Guards the given files of one open index (see the module docstring).

    ``with guard.use():`` around every touch of the mapped bytes; it raises
    :class:`IndexChangedError` once a file is being (or was) changed."""

    def __init__(self, paths: list[Path]) -> None:
        self._lock = threading.Condition()
        self._inflight = 0
        self.broken: str | None = None  # why this index may no longer be read
        self._files: list[tuple[Path, int, os.stat_result, bool]] = []  # path, fd, stat, leased
        try:
            for p in paths:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                self._files.append((p, fd, os.fstat(fd), self._take_lease(p, fd)))
        except BaseException:
            self.close()
            raise
        self.leased = bool(self._files) and all(f[3] for f in self._files)
        with _GUARDS_LOCK:
            _GUARDS.add(self)

    @staticmethod
    def _take_lease(path: Path, fd: int) -> bool:
        if _LEASE_SIGNAL is None:
            return False
        try:
            fcntl.fcntl(fd, _F_SETSIG, _LEASE_SIGNAL)
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
            return True
        except OSError as e:
            if e.errno == errno.EAGAIN:  # open for writing by someone right now
                raise IndexChangedError(f"{path.name}: another process has it open for "
                                        "writing; not serving it until it is closed") from None
            logger.warning("%s: no lease (%s); falling back to a stat check per search", path,
                           os.strerror(e.errno or 0))
            return False

    def use(self) -> _Use:
        """Hold the files for one read of their mapped bytes: ``with guard.use():``."""
        return _Use(self)

    def _enter(self) -> None:
        with self._lock:
            if self.broken is None and not self.leased:
                self._stat_check()
            if self.broken is not None:
                raise IndexChangedError(self.broken)
            self._inflight += 1

    def _exit(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0 and self.broken is not None:  # only a lease break waits
                self._lock.notify_all()

    def _stat_check(self) -> None:
        for path, fd, st, leased in self._files:
            if leased:
                continue
            now = os.fstat(fd)
            if now.st_nlink and (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                self.broken = (f"{path.name} changed on disk since it was opened ({st.st_size} -> "
                               f"{now.st_size} bytes); not serving it until a whole build is "
                               "published")
                logger.error("%s: %s", path, self.broken)
                return

    def _on_lease_signal(self) -> None:
        """The lease thread: if one of our leases is being broken, stop new uses, wait for
        those in flight, then let the writer through."""
        breaking = None
        for path, fd, _, leased in self._files:
            if leased and fcntl.fcntl(fd, _F_GETLEASE) == fcntl.F_UNLCK:
                breaking = path
                break
        if breaking is None:
            return
        with self._lock:
            if self.broken is None:
                self.broken = (f"{breaking.name} is being changed on disk by another process; "
                               "not serving it until a whole build is published")
                logger.error("%s: %s", breaking, self.broken)
            while self._inflight:
                self._lock.wait()
        self.close()

    def close(self) -> None:
        """Release the leases and close the descriptors (the mappings are not ours to close)."""
        files, self._files = self._files, []
        self.leased = False
        for _, fd, _, leased in files:
            with contextlib.suppress(OSError):
                if leased:
                    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
                os.close(fd)

    def __del__(self) -> None:
        self.close()


class _Use:
    """``with guard.use():`` as a plain object, not a generator, on the search path's hot loop
    (the state lives in the guard)."""

    __slots__ = ("_guard",)

    def __init__(self, guard: FileGuard) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._guard._enter()

    def __exit__(self, *exc: object) -> None:
        self._guard._exit()
