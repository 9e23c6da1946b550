"""Index generations: open the configured directory, swap it in, watch for the next build.

``EBR_INDEX_DIR`` is usually a symlink flipped to each new build. A load resolves it **once**
and opens every file relative to the resolved directory, so a flip during a load can never mix
two builds' files; a build is marked refused only when its directory was the same before and
after the failed load (a whole, bad build), never because something moved meanwhile. A served
generation whose files are changed on disk (``ebr.index.guard``) stops answering (503) and the
watcher loads the directory again as soon as its files change: a fixed or new build is served
again without a restart.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import threading
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ebr.errors import EbrError, WritesUnsupportedError
from ebr.index.live import LiveIndex, open_live
from ebr.index.reader import OpenIndex
from ebr.io.encoder import TextEncoder
from ebr.io.manifest import Manifest, read_manifest
from ebr.search.live import LiveSearcher
from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardBackends, ShardedSearcher
from service.deps import Generation, Refusal, ServiceState
from service.settings import Settings

__all__ = ["index_identity", "install", "load_generation", "open_generation", "public_reason",
           "watch_index"]

logger = logging.getLogger("service")
RETRY_BROKEN_SECONDS = 30.0
_PATH = re.compile(r"(?:/[^/\s:'\",;()]+)+/([^/\s:'\",;()]+)")


def public_reason(message: str) -> str:
    """``message`` with every absolute path cut to its last part: what unauthenticated probes
    may see (the logs keep the full paths)."""
    return _PATH.sub(r"\1", message)


def version_of(manifest: Manifest) -> str:
    """The build's version string: creation time / first 12 hex of the first file's sha256."""
    first = (manifest.files.get("coarse.index") or next(iter(manifest.files.values()))).sha256
    return f"{manifest.build.get('created', '?')}/{first[:12]}"


def open_generation(settings: Settings, directory: Path | None = None,
                    previous: ServiceState | None = None,
                    shard_backends: ShardBackends | None = None
                    ) -> tuple[Searcher | ShardedSearcher, TextEncoder | None, str]:
    """Open and verify ``directory`` (default: ``settings.index_dir`` resolved now):
    (searcher, text encoder or None, version).

    A sharded directory (``ebr.index.sharded``) is served by fanning out to its shards, in this
    process, or through ``shard_backends(index) -> [backend per shard]`` (the Ray router).

    Raises :class:`EbrError` when the directory is not a whole, readable index.
    """
    from ebr.index.reader import open_index

    path = directory if directory is not None else Path(os.path.realpath(settings.index_dir))
    if read_manifest(path).shards:  # a sharded index: fan out, merge
        from ebr.index.sharded import open_sharded

        si = open_sharded(path, verify_checksums=settings.verify_checksums,
                          probe=settings.coarse_probe)
        backends = shard_backends(si) if shard_backends is not None else None
        return ShardedSearcher(si, backends), None, version_of(si.manifest)
    oi = open_index(path, verify_checksums=settings.verify_checksums,
                    probe=settings.coarse_probe)
    encoder = None
    if oi.manifest.encoder and settings.text_encoder == "auto":
        old = previous.current.encoder if previous is not None and previous.current else None
        if old is not None and old.info == oi.manifest.encoder and \
                not oi.manifest.encoder.get("path"):
            encoder = old  # same packaged model: keep it loaded across reloads
        else:  # another model, or a fine-tuned one that lives in the index directory
            try:
                encoder = _load_encoder(oi.manifest.encoder, oi.path, settings)
            except (ImportError, ValueError, OSError) as e:
                logger.warning("text queries disabled: %s", e)
    return _live_searcher(oi, path), encoder, version_of(oi.manifest)


def _load_encoder(info: dict[str, object], base_dir: Path, settings: Settings) -> TextEncoder:
    """The index's text encoder on ``settings.encoder_runtime``: each call with
    ``resolved_encoder_threads`` threads (``python -m service`` sets OMP_NUM_THREADS for
    faiss, which the encoder would take too), in passes of at most ``resolved_encoder_batch``
    rows (texts, or short texts packed side by side). ONNX Runtime missing or
    unable to take the model: torch, said in the log; torch's calls run one at a time, with
    the worker's cores."""
    if settings.encoder_runtime != "torch":
        try:
            return TextEncoder(info, base_dir=base_dir, runtime=settings.encoder_runtime,
                               batch_size=settings.resolved_encoder_batch(),
                               threads=settings.resolved_encoder_threads()).load()
        except (ImportError, ValueError, OSError) as e:
            logger.warning("encoder runtime %s unavailable (%s): using torch",
                           settings.encoder_runtime, e)
    import torch

    torch.set_num_threads(settings.resolved_encoder_threads(runtime="torch"))
    return TextEncoder(info, base_dir=base_dir, batch_size=settings.resolved_encoder_batch("torch")).load()


def _live_searcher(oi: OpenIndex, path: Path) -> Searcher:
    """The index with the writes logged beside it (``ebr.index.live``): writable where the
    live directory can be written, else a read-only view; a plain searcher for an index that
    cannot take writes (say why in the log)."""
    try:
        return LiveSearcher(open_live(oi, path))
    except WritesUnsupportedError as e:
        logger.warning("writes disabled: %s", e)
        return Searcher(oi)
    except OSError as e:  # a read-only mount, no permission to create <index>.live
        logger.warning("writes disabled (%s): serving the index and its log read-only", e)
        return LiveSearcher(open_live(oi, path, writable=False))


def install(state: ServiceState, searcher: Searcher | ShardedSearcher, encoder: TextEncoder | None,
            version: str) -> None:
    """Swap in a new generation with one reference store: a request holds the generation it
    started with (searcher, encoder and version together) until it ends."""
    state.current = Generation(searcher, encoder, version, state.generation + 1)
    state.problems = []
    state.metrics.generation.set(state.generation)
    state.metrics.ready.set(1)
    logger.info("serving %s (%s, %d vectors, version %s, generation %d)",
                state.settings.index_dir, searcher.index.spec, searcher.index.ntotal, version,
                state.generation)


def index_identity(index_dir: str | os.PathLike[str]) -> tuple[object, ...] | None:
    """What changes when the build at ``index_dir`` changes: the directory it resolves to and
    the inode, size and mtime of every file under it (the manifest is written last, by
    rename). None when there is no manifest."""
    real = os.path.realpath(index_dir)
    try:
        os.stat(os.path.join(real, "manifest.json"))
        files = []
        for top, _, names in os.walk(real):
            for name in names:
                st = os.stat(os.path.join(top, name))
                files.append((os.path.relpath(os.path.join(top, name), real), st.st_ino,
                              st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    return real, tuple(sorted(files))


def _refused_version(directory: Path) -> str | None:
    try:
        return version_of(read_manifest(directory))
    except (EbrError, StopIteration):
        return None


def load_generation(state: ServiceState) -> str:
    """Open ``settings.index_dir`` (resolved once), verify it, and serve it from the next
    request on; returns its version. Raises :class:`EbrError` when it is not a whole, readable
    index: the old generation (if any) keeps serving, and the watcher does not retry that same
    build until its files change."""
    with state.reload_lock:
        real = Path(os.path.realpath(state.settings.index_dir))
        before = index_identity(real)
        try:
            searcher, encoder, version = open_generation(state.settings, real, state,
                                                         state.shard_backends)
        except EbrError as e:
            if before is not None and index_identity(real) == before:  # a bad build, no race
                state.refused = Refusal(identity=before, version=_refused_version(real),
                                        reason=public_reason(f"{type(e).__name__}: {e}"),
                                        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            raise
        install(state, searcher, encoder, version)
        state.served_identity = before
        state.refused = None
        return version


def _live_of(state: ServiceState) -> LiveIndex | None:
    current = state.current
    if current is not None and isinstance(current.searcher, LiveSearcher):
        current.searcher.live.catch_up()
        return current.searcher.live
    return None


def maybe_compact(state: ServiceState, live: LiveIndex) -> bool:
    """Start a background compaction when the delta or the tombstones passed the settings'
    threshold (``compact_delta_fraction``, ``compact_min_rows``). One process of a server does
    it: the one that takes ``compact.lock`` in the live directory. Returns whether it started."""
    s = state.settings
    changed = len(live.delta_ids) + live.n_dead
    if not s.compact_delta_fraction or not live.writable or changed < s.compact_min_rows or \
            changed < s.compact_delta_fraction * live.n_base:
        return False
    fd = os.open(live.ldir / "compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False

    def run() -> None:
        from ebr.index.compact import compact

        try:
            compact(s.index_dir, verify_checksums=False)
        except Exception:  # the next check tries again; searches and writes never stop
            logger.exception("automatic compaction failed")
        finally:
            os.close(fd)  # releases compact.lock

    logger.info("compacting: %d rows written and %d tombstones over %d base documents",
                len(live.delta_ids), live.n_dead, live.n_base)
    threading.Thread(target=run, name="ebr-compact", daemon=True).start()
    return True


async def watch_index(state: ServiceState) -> None:
    """Every ``watch_seconds``, look whether ``index_dir`` now holds another build (a flipped
    symlink, a renamed directory, files changed in place) and load it. While the served
    generation is broken (a file of it was opened for writing: ``ebr.index.guard``) the same
    directory is loaded again, since the writer may have changed nothing (a failed
    ``truncate``); a refused build is retried only when its files change, or every
    ``RETRY_BROKEN_SECONDS`` while nothing is served. This is how every worker
    process of a multi-worker server switches: ``POST /admin/reload`` reaches only the one that
    receives it."""
    last_try = 0.0
    while True:
        await asyncio.sleep(state.settings.watch_seconds)
        try:
            identity = index_identity(state.settings.index_dir)
            broken = state.current is not None and state.current.broken() is not None
            live = _live_of(state)
            if live is not None and live.sealed:  # compaction moved on: the new generation
                broken = True  # is on disk already; load it like a changed one
            elif live is not None and not broken:
                maybe_compact(state, live)
            if identity is None or (identity == state.served_identity and not broken):
                continue
            if state.refused is not None and identity == state.refused.identity and not (
                    broken and time.monotonic() - last_try > RETRY_BROKEN_SECONDS):
                continue  # the same bad build: not again (a broken one now and then)
            last_try = time.monotonic()
            version = await run_in_threadpool(load_generation, state)
            logger.info("watcher: now serving %s", version)
        except EbrError as e:
            state.metrics.errors.labels("reload_refused").inc()
            if state.current is None:
                state.problems = [public_reason(f"{type(e).__name__}: {e}")]
            logger.error("watcher: index at %s refused, generation %d stays: %s",
                         state.settings.index_dir, state.generation, e)
        except Exception:  # never let the watcher die: it is how later builds get served
            logger.exception("watcher: unexpected error")
