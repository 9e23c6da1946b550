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
import logging
import os
import re
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ebr.errors import EbrError
from ebr.io.encoder import TextEncoder
from ebr.io.manifest import Manifest, read_manifest
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

        si = open_sharded(path, verify_checksums=settings.verify_checksums)
        backends = shard_backends(si) if shard_backends is not None else None
        return ShardedSearcher(si, backends), None, version_of(si.manifest)
    oi = open_index(path, verify_checksums=settings.verify_checksums)
    encoder = None
    if oi.manifest.encoder and settings.text_encoder == "auto":
        old = previous.current.encoder if previous is not None and previous.current else None
        if old is not None and old.info == oi.manifest.encoder and \
                not oi.manifest.encoder.get("path"):
            encoder = old  # same packaged model: keep it loaded across reloads
        else:  # another model, or a fine-tuned one that lives in the index directory
            try:
                from ebr.io.encoder import TextEncoder

                encoder = TextEncoder(oi.manifest.encoder, base_dir=oi.path).load()
            except (ImportError, ValueError, OSError) as e:
                logger.warning("text queries disabled: %s", e)
    return Searcher(oi), encoder, version_of(oi.manifest)


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
