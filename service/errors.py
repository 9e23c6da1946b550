"""How every failure becomes a reply: one HTTP status per ``EbrError`` family and one body shape,
``{"status": {"error": "..."}}``. Shared by the FastAPI exception handlers (``service.app``) and
the pure-ASGI search endpoints (``service.routes.search``), so both answer alike."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from pydantic_core import to_json
from starlette.exceptions import HTTPException

from ebr.errors import (
    EbrError,
    IndexFormatError,
    IndexNotReadyError,
    InputError,
    RequestTooLargeError,
    SearchParamError,
    SpecError,
    WriteConflictError,
    WritesUnsupportedError,
)
from service.observability import Metrics

logger = logging.getLogger("service")


_STATUS: list[tuple[type[EbrError], int]] = [
    (RequestTooLargeError, 413), (SearchParamError, 422), (InputError, 422), (SpecError, 422),
    (WriteConflictError, 503), (IndexNotReadyError, 503), (IndexFormatError, 500),
    (WritesUnsupportedError, 409),
]


def error_body(message: str) -> bytes:
    return to_json({"status": {"error": message}})


def validation_message(errors: Iterable[Mapping[str, object]]) -> str:
    """pydantic errors as ``field.path: message; ...`` (FastAPI's leading "body" dropped)."""
    parts = []
    for err in errors:
        where = err.get("loc", ())
        loc = ".".join(str(x) for x in (where if isinstance(where, list | tuple) else ())
                       if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def reply_for(exc: Exception, metrics: Metrics, path: str = "") -> tuple[int, str, dict[str, str]]:
    """(status, message, headers) for an exception raised while handling a request; counts it
    in ``ebr_errors_total`` by kind and logs the unexpected ones with their traceback."""
    if isinstance(exc, HTTPException):
        metrics.errors.labels(f"http_{exc.status_code}").inc()
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    metrics.errors.labels(type(exc).__name__).inc()
    if isinstance(exc, EbrError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return status, str(exc), {}
        return 500, str(exc), {}
    logger.error("unhandled error on %s", path, exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}", {}
