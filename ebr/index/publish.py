"""Staging and publishing an index directory: the only way a build reaches its target name.

A build writes into ``.NAME.building-XXXX`` next to the target while holding an exclusive
``flock`` on ``.NAME.building-XXXX.lock``; :func:`publish` makes every file read-only, fsyncs,
and moves the directory into place. Staging directories whose lock nobody holds (the build was
killed) are removed by the next build into the same parent, and the log says so.

``overwrite`` replaces only an ebr index (a directory with ``manifest.json``), never a user's
other files, and swaps the two directories in one ``renameat2(RENAME_EXCHANGE)`` where the
kernel has it (Linux >= 3.15), so the target is never missing; the parent is fsynced after.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ebr.errors import InputError
from ebr.io.layout import MANIFEST

__all__ = ["check_target", "clean_stale", "publish", "staging_dir"]

logger = logging.getLogger(__name__)
STALE_AFTER_SECONDS = 60.0  # a staging directory younger than this is never touched
_RENAME_EXCHANGE = 2


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse before any work when publishing at ``target`` would fail or destroy something:
    it exists without ``overwrite``, or it is not an ebr index (no manifest), or a symlink."""
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise InputError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    if target.is_symlink():
        raise InputError(f"{target} is a symlink: publish the build to a new directory and "
                         "point the link at it, rather than overwriting through it")
    if not target.is_dir() or not (target / MANIFEST).is_file():
        raise InputError(f"{target} is not an ebr index (no {MANIFEST}): refusing to replace "
                         "it; choose another output directory")


def _size(path: Path) -> int:
    total = 0
    for top, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def clean_stale(parent: Path, name: str) -> list[Path]:
    """Remove ``.NAME.building-*`` directories (and their lock files) left by builds that died,
    and ``.NAME.old-*`` left by an interrupted overwrite: older than
    :data:`STALE_AFTER_SECONDS` and, for staging directories, with no process holding their
    lock. Returns what was removed."""
    removed = []
    now = time.time()
    for p in sorted(parent.glob(f".{name}.building-*")) + sorted(parent.glob(f".{name}.old-*")):
        if p.suffix == ".lock":  # a lock whose build died before making its directory
            with contextlib.suppress(OSError):
                if not p.with_suffix("").exists() and now - p.stat().st_mtime > \
                        STALE_AFTER_SECONDS:
                    p.unlink()
            continue
        if not p.is_dir():
            continue
        try:
            if now - p.stat().st_mtime < STALE_AFTER_SECONDS:
                continue
        except FileNotFoundError:
            continue
        lock = p.with_name(p.name + ".lock")
        if ".building-" in p.name:
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = -1  # written before builds took a lock: age alone decides
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live build holds it
                os.close(fd)
        size = _size(p)
        shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        logger.warning("removed %s left by a build that did not finish (%.1f MB)", p,
                       size / 1e6)
        removed.append(p)
    return removed


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh staging directory next to ``target``, locked for the duration of the build and
    removed if the build fails; stale ones from killed builds are cleaned first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent, target.name)
    tmp = target.parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"
    lock = tmp.with_name(tmp.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_only(tmp: Path) -> None:
    """Every file 0444: an index is immutable once published."""
    for top, _, names in os.walk(tmp):
        for name in names:
            p = os.path.join(top, name)
            os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished staging directory ``tmp`` to ``target`` (see the module docstring).
    On refusal ``tmp`` is removed and :class:`InputError` raised."""
    try:
        check_target(target, overwrite)
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _read_only(tmp)
    _fsync_dir(tmp)
    if os.path.lexists(target):
        if _exchange(tmp, target):  # tmp now holds the old index
            _fsync_dir(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            logger.warning("renameat2(RENAME_EXCHANGE) unavailable: %s is missing for a moment "
                           "while it is replaced", target)
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        _fsync_dir(target.parent)
