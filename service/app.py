"""``create_app(settings)``: the FastAPI application.

The lifespan opens the index once (verifying it) and, when the index records its text encoder,
loads the offline MiniLM. If the index cannot be opened the process still starts: ``/healthz``
answers, ``/readyz`` and the search routes return 503 with the reason. ``POST /admin/reload``
opens the configured directory again (point it, e.g. a symlink, at a new build) and swaps the
index atomically: requests in flight finish on the generation they started with, and an index
that fails verification is refused while the old one keeps serving. Every ``EbrError`` family
maps to one HTTP status here, and nothing a request sends can crash the worker.

Run: ``uvicorn --factory service.app:create_app`` (settings from ``EBR_*``) or ``python -m service``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import faiss
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ebr.errors import (
    EbrError,
    IndexFormatError,
    IndexNotReadyError,
    InputError,
    SearchParamError,
    SpecError,
)
from ebr.search.searcher import Searcher
from service.deps import Generation, ServiceState
from service.observability import RequestMiddleware
from service.routes import admin, health, search
from service.settings import Settings

logger = logging.getLogger("service")

_STATUS: list[tuple[type[EbrError], int]] = [
    (SearchParamError, 422), (InputError, 422), (SpecError, 422),
    (IndexNotReadyError, 503), (IndexFormatError, 500),
]


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


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or {}).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, f"body of {int(length)} bytes exceeds {self.limit}")(
                scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"body exceeds {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(settings: Settings | None = None, shard_backends: Any = None) -> FastAPI:
    """Build the app; ``settings`` default to ``Settings.from_env()``. ``shard_backends``:
    for sharded indexes, how shards are reached (default: in this process); the Ray Serve
    router passes deployment handles (``ebr.serve_ray``)."""
    settings = settings or Settings.from_env()
    faiss.omp_set_num_threads(settings.faiss_threads)
    state = ServiceState(settings=settings, shard_backends=shard_backends)
    if settings.micro_batch_inflight > 0:
        from service.batcher import MicroBatcher

        state.batcher = MicroBatcher(settings.micro_batch_max, settings.micro_batch_inflight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ebr = state
        try:
            install(state, *open_generation(settings, shard_backends=shard_backends))
        except EbrError as e:
            state.problems = [f"{type(e).__name__}: {e}"]
            state.metrics.ready.set(0)
            logger.error("index not opened: %s", e)
        yield
        state.current = None

    app = FastAPI(title="ebr", version="0.1.0", lifespan=lifespan,
                  description="Embedding-based retrieval: IVF-PQ codes in RAM, exact re-rank "
                  "from dense vectors on disk.")
    app.state.ebr = state
    app.include_router(search.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMiddleware, metrics=state.metrics)  # outermost: sees every reply

    @app.exception_handler(EbrError)
    async def _ebr_error(request: Request, exc: EbrError) -> JSONResponse:
        state.metrics.errors.labels(type(exc).__name__).inc()
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return _error(status, str(exc))
        return _error(500, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.errors.labels("RequestValidationError").inc()
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        state.metrics.errors.labels(f"http_{exc.status_code}").inc()
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        state.metrics.errors.labels(type(exc).__name__).inc()
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    return app
