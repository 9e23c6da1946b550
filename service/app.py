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
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import faiss
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ebr.errors import EbrError
from ebr.index.guard import enable_leases
from ebr.search.sharded import ShardBackends
from service.body import BodyLimit
from service.deps import ServiceState
from service.errors import reply_for, validation_message
from service.generations import load_generation, public_reason, watch_index
from service.observability import RequestMiddleware
from service.openapi import install_openapi
from service.routes import admin, documents, fast, health, search, ui
from service.settings import Settings

logger = logging.getLogger("service")

def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"status": {"error": message}},
                        headers=headers)


_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: never turned away


def _client_key(scope: Scope) -> str:
    """Whom a request counts against: its API key (hashed) if it sends one, else its address."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return "key:" + hashlib.sha256(value).hexdigest()[:16]
    client = scope.get("client")
    return f"addr:{client[0] if client else '?'}"


class EbrApp(FastAPI):
    """The FastAPI app, except that ``POST /search`` and ``POST /search/batch`` are answered by
    ``fast`` (``service.routes.fast.FastEndpoints``: same replies, a fraction of the CPU)
    before FastAPI's middleware stack and router; in front of both, a client with more than
    ``max_inflight_per_client`` requests in flight in this worker is answered 429."""

    fast: Any = None
    inflight_limit: int = 0
    _inflight: dict[str, int]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.inflight_limit or scope["path"] in _UNLIMITED:
            await self._dispatch(scope, receive, send)
            return
        key = _client_key(scope)
        held = self._inflight.get(key, 0)
        if held >= self.inflight_limit:
            state = self.state.ebr
            state.metrics.errors.labels("http_429").inc()
            state.metrics.observe_request(scope["path"] if self.fast and self.fast.handles(scope)
                                          else "unmatched", 429, 0.0)
            await _error(429, f"too many requests in flight from this client: the limit is "
                         f"{self.inflight_limit} per worker (EBR_MAX_INFLIGHT_PER_CLIENT)",
                         {"Retry-After": "1"})(scope, receive, send)
            return
        self._inflight[key] = held + 1
        try:
            await self._dispatch(scope, receive, send)
        finally:
            left = self._inflight[key] - 1
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and fast.handles(scope):
            await fast(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _lifespan(state: ServiceState) -> Any:
    """Startup: thread pools sized together, file leases, the first load, the watcher;
    shutdown: the watcher stopped, the generation dropped."""
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ebr = state
        state.writer = ThreadPoolExecutor(1, thread_name_prefix="ebr-write",
                                          initializer=faiss.omp_set_num_threads, initargs=(1,))
        threads = settings.resolved_search_threads()  # the sizes, set together in one place
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
            threads, thread_name_prefix="ebr-search", initializer=faiss.omp_set_num_threads,
            initargs=(settings.faiss_threads,)))  # OpenMP's setting is per thread
        logger.info("%d search threads x %d faiss threads per worker, %d worker(s), %d cores",
                    threads, settings.faiss_threads, settings.workers, os.cpu_count() or 1)
        if settings.file_leases:
            enable_leases()  # from the main thread, where uvicorn runs the app
        try:
            load_generation(state)
        except EbrError as e:
            state.problems = [public_reason(f"{type(e).__name__}: {e}")]
            state.metrics.ready.set(0)
            logger.error("index not opened: %s", e)
        watcher = (asyncio.create_task(watch_index(state)) if settings.watch_seconds > 0
                   else None)
        yield
        if watcher is not None:
            watcher.cancel()
        state.writer.shutdown(wait=True)  # a write in flight finishes (and is acknowledged)
        state.current = None
        state.metrics.process_exit()

    return lifespan


def create_app(settings: Settings | None = None, shard_backends: ShardBackends | None = None,
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
    if settings.text_batch_max > 0:
        from service.batcher import TextBatcher

        state.text_batcher = TextBatcher(settings.text_batch_max,
                                         settings.resolved_encoder_lanes())

    lifespan = _lifespan(state)

    app = EbrApp(title="ebr", version="0.1.0", lifespan=lifespan, docs_url=None,
                  description="Embedding-based retrieval: IVF-PQ codes in RAM, exact re-rank "
                  "from dense vectors on disk.")
    app.state.ebr = state
    app.inflight_limit, app._inflight = settings.max_inflight_per_client, {}
    if fast_search:
        app.fast = fast.FastEndpoints(state)
    app.include_router(search.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(documents.router)
    app.include_router(ui.router)
    app.mount("/ui", ui.UiFiles(directory=ui.UI_DIR, html=True), name="ui")
    install_openapi(app, state)
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
        app.add_exception_handler(kind, _reply)
    return app
