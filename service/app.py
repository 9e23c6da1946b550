"""``create_app(settings)``: the FastAPI application.

The lifespan opens the index once (verifying it) and, when the index records its text encoder,
loads the offline MiniLM. If the index cannot be opened the process still starts: ``/healthz``
answers, ``/readyz`` and the search routes return 503 with the reason. Every ``EbrError``
family maps to one HTTP status here, and nothing a request sends can crash the worker.

Run: ``uvicorn --factory service.app:create_app`` (settings from ``EBR_*``) or ``python -m service``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ebr.errors import (
    EbrError,
    IndexFormatError,
    IndexNotReadyError,
    InputError,
    SearchParamError,
    SpecError,
)
from service.deps import ServiceState
from service.routes import health, search
from service.settings import Settings

logger = logging.getLogger("service")

_STATUS: list[tuple[type[EbrError], int]] = [
    (SearchParamError, 422), (InputError, 422), (SpecError, 422),
    (IndexNotReadyError, 503), (IndexFormatError, 500),
]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"status": {"error": message}})


def _open(state: ServiceState) -> None:
    from ebr.index.reader import open_index
    from ebr.search.searcher import Searcher

    s = state.settings
    try:
        oi = open_index(s.index_dir, verify_checksums=s.verify_checksums)
    except EbrError as e:
        state.problems.append(f"{type(e).__name__}: {e}")
        logger.error("index not opened: %s", e)
        return
    if oi.manifest.encoder and s.text_encoder == "auto":
        try:
            from ebr.io.encoder import TextEncoder

            state.encoder = TextEncoder(oi.manifest.encoder).load()
        except (ImportError, ValueError, OSError) as e:
            logger.warning("text queries disabled: %s", e)
    coarse_sha = oi.manifest.files["coarse.index"].sha256[:12]
    state.index_version = f"{oi.manifest.build.get('created', '?')}/{coarse_sha}"
    state.searcher = Searcher(oi)
    logger.info("serving %s (%s, %d vectors, version %s)", s.index_dir, oi.spec, oi.ntotal,
                state.index_version)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to ``Settings.from_env()``."""
    settings = settings or Settings.from_env()
    faiss.omp_set_num_threads(settings.faiss_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings=settings)
        app.state.ebr = state
        _open(state)
        yield
        state.searcher = None

    app = FastAPI(title="ebr", version="0.1.0", lifespan=lifespan,
                  description="Embedding-based retrieval: IVF-PQ codes in RAM, exact re-rank "
                  "from dense vectors on disk.")
    app.include_router(search.router)
    app.include_router(health.router)

    @app.exception_handler(EbrError)
    async def _ebr_error(request: Request, exc: EbrError) -> JSONResponse:
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return _error(status, str(exc))
        return _error(500, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    return app
