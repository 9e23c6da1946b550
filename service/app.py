"""``create_app(settings)``: the FastAPI application.

The lifespan opens the index once (verifying it) and, when the index records its text encoder,
loads the offline MiniLM. If the index cannot be opened the process still starts: ``/healthz``
answers, ``/readyz`` and the search routes return 503 with the reason. ``POST /admin/reload``
opens the configured directory again (point it, e.g. a symlink, at a new build) and swaps the
index atomically: requests in flight finish on the generation they started with, and an index
that fails verification is refused while the old one keeps serving. A watcher does the same by
itself when the directory changes (``watch_seconds``), which is what switches every worker of
a multi-worker server. Every ``EbrError`` family maps to one HTTP status (``service.errors``),
and nothing a request sends can crash the worker.

Run: ``uvicorn --factory service.app:create_app`` (settings from ``EBR_*``) or ``python -m service``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import faiss
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ebr.errors import EbrError
from ebr.search.searcher import Searcher
from service.body import BodyLimit
from service.deps import Generation, ServiceState
from service.errors import reply_for, validation_message
from service.observability import RequestMiddleware
from service.routes import admin, health, search
from service.settings import Settings

logger = logging.getLogger("service")

def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"status": {"error": message}},
                        headers=headers)


def open_generation(settings: Settings, previous: ServiceState | None = None,
                    shard_backends: Any = None) -> tuple[Searcher, Any, str]:
    """Open and verify ``settings.index_dir``: (searcher, text encoder or None, version).

    A sharded directory (``ebr.shards``) is served by fanning out to its shards, in this
    process, or through ``shard_backends(index) -> [backend per shard]`` (the Ray router).

    Raises :class:`EbrError` when the directory is not a whole, readable index.
    """
    from ebr.index.reader import open_index
    from ebr.io.manifest import read_manifest

    if read_manifest(Path(settings.index_dir)).shards:  # a sharded index: fan out, merge
        from ebr.shards import ShardedSearcher, open_sharded

        si = open_sharded(settings.index_dir, verify_checksums=settings.verify_checksums)
        backends = shard_backends(si) if shard_backends is not None else None
        first = next(iter(si.manifest.files.values())).sha256[:12]
        version = f"{si.manifest.build.get('created', '?')}/{first}"
        return ShardedSearcher(si, backends), None, version
    oi = open_index(settings.index_dir, verify_checksums=settings.verify_checksums)
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
    version = f"{oi.manifest.build.get('created', '?')}/{oi.manifest.files['coarse.index'].sha256[:12]}"
    return Searcher(oi), encoder, version


def install(state: ServiceState, searcher: Searcher, encoder: Any, version: str) -> None:
    """Swap in a new generation with one reference store: a request holds the generation it
    started with (searcher, encoder and version together) until it ends."""
    state.current = Generation(searcher, encoder, version, state.generation + 1)
    state.problems = []
    state.metrics.generation.set(state.generation)
    state.metrics.ready.set(1)
    logger.info("serving %s (%s, %d vectors, version %s, generation %d)",
                state.settings.index_dir, searcher.index.spec, searcher.index.ntotal, version,
                state.generation)


def index_identity(index_dir: str) -> tuple[Any, ...] | None:
    """What changes when a new build is published at ``index_dir``: the directory it resolves to
    and the inode, mtime and size of its manifest (written last, by rename). None if absent."""
    real = os.path.realpath(index_dir)
    try:
        st = os.stat(os.path.join(real, "manifest.json"))
    except OSError:
        return None
    return real, st.st_ino, st.st_mtime_ns, st.st_size


def load_generation(state: ServiceState) -> str:
    """Open ``settings.index_dir``, verify it, and serve it from the next request on; returns its
    version. Raises :class:`EbrError` when it is not a whole, readable index: then the old
    generation (if any) keeps serving, and the watcher will not retry that same build."""
    with state.reload_lock:
        identity = index_identity(state.settings.index_dir)
        try:
            searcher, encoder, version = open_generation(state.settings, state,
                                                         state.shard_backends)
        except EbrError:
            state.refused_identity = identity
            raise
        install(state, searcher, encoder, version)
        state.served_identity = identity
        return version


async def watch_index(state: ServiceState) -> None:
    """Every ``watch_seconds``, look whether ``index_dir`` now holds another build (a flipped
    symlink, a renamed directory) and load it. This is how every worker process of a
    multi-worker server switches: ``POST /admin/reload`` reaches only the one that receives it."""
    while True:
        await asyncio.sleep(state.settings.watch_seconds)
        identity = index_identity(state.settings.index_dir)
        if identity is None or identity in (state.served_identity, state.refused_identity):
            continue
        try:
            version = await run_in_threadpool(load_generation, state)
            logger.info("watcher: now serving %s", version)
        except EbrError as e:
            state.metrics.errors.labels("reload_refused").inc()
            if state.current is None:
                state.problems = [f"{type(e).__name__}: {e}"]
            logger.error("watcher: new index at %s refused, generation %d keeps serving: %s",
                         state.settings.index_dir, state.generation, e)
        except Exception:  # never let the watcher die: it is how later builds get served
            logger.exception("watcher: unexpected error")


class EbrApp(FastAPI):
    """The FastAPI app, except that ``POST /search`` and ``POST /search/batch`` are answered by
    ``fast`` (``service.routes.search.SearchEndpoints``: same replies, a fraction of the CPU)
    before FastAPI's middleware stack and router."""

    fast: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and fast.handles(scope):
            await fast(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, shard_backends: Any = None,
               fast_search: bool = True) -> FastAPI:
    """Build the app; ``settings`` default to ``Settings.from_env()``. ``shard_backends``:
    for sharded indexes, how shards are reached (default: in this process); the Ray Serve
    router passes deployment handles (``ebr.serve_ray``). ``fast_search=False`` serves the
    search endpoints through FastAPI's own routes instead (the reference the tests compare
    against)."""
    settings = settings or Settings.from_env()
    faiss.omp_set_num_threads(settings.faiss_threads)
    state = ServiceState(settings=settings, shard_backends=shard_backends)
    if settings.micro_batch_inflight > 0:
        from service.batcher import MicroBatcher

        state.batcher = MicroBatcher(settings.micro_batch_max, settings.micro_batch_inflight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ebr = state
        threads = settings.resolved_search_threads()  # the sizes, set together in one place
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(threads, thread_name_prefix="ebr-search"))
        logger.info("%d search threads x %d faiss threads per worker, %d worker(s), %d cores",
                    threads, settings.faiss_threads, settings.workers, os.cpu_count() or 1)
        try:
            load_generation(state)
        except EbrError as e:
            state.problems = [f"{type(e).__name__}: {e}"]
            state.metrics.ready.set(0)
            logger.error("index not opened: %s", e)
        watcher = (asyncio.create_task(watch_index(state)) if settings.watch_seconds > 0
                   else None)
        yield
        if watcher is not None:
            watcher.cancel()
        state.current = None
        state.metrics.process_exit()

    app = EbrApp(title="ebr", version="0.1.0", lifespan=lifespan,
                  description="Embedding-based retrieval: IVF-PQ codes in RAM, exact re-rank "
                  "from dense vectors on disk.")
    app.state.ebr = state
    if fast_search:
        app.fast = search.SearchEndpoints(state, {
            r.path: r for r in search.router.routes if isinstance(r, APIRoute)})
    app.include_router(search.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMiddleware, metrics=state.metrics)  # outermost: sees every reply

    def _reply(request: Request, exc: Exception) -> JSONResponse:
        status, message, headers = reply_for(exc, state.metrics, request.url.path)
        return _error(status, message, headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.errors.labels("RequestValidationError").inc()
        return _error(422, validation_message(exc.errors()))

    for kind in (EbrError, HTTPException, Exception):
        app.add_exception_handler(kind, _reply)  # type: ignore[arg-type]
    return app
