"""Prometheus metrics (one registry per app), request ids, and JSON log lines.

Every request gets an id (the client's ``X-Request-ID`` if it sent a sane one, else a new one),
echoed in the response header and attached to every log record emitted while it is handled.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import re
import secrets
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ebr.types import JsonObject

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's metrics, registered in their own registry (several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("ebr_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("ebr_requests_total", "Requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("ebr_errors_total", "Errors by kind", ["kind"], registry=r)
        self.candidates = Histogram("ebr_candidates", "Coarse candidates per search",
                                    buckets=(10, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
                                    registry=r)
        self.dense_bytes = Counter("ebr_dense_bytes_read_total",
                                   "Bytes of dense vectors read for re-ranking", registry=r)
        self.generation = Gauge("ebr_index_generation",
                                "Index generation served (1 = first open, +1 per reload)",
                                registry=r, multiprocess_mode="liveall")
        self.ready = Gauge("ebr_index_ready", "1 when an index is open", registry=r,
                           multiprocess_mode="liveall")
        self._children: dict[Any, Any] = {}  # labelled series, looked up once

    @staticmethod
    def multiprocess() -> bool:
        """True in a worker of a multi-worker server: values live in PROMETHEUS_MULTIPROC_DIR."""
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def collect_registry(self) -> CollectorRegistry:
        """What ``/metrics`` exposes: this registry, or every worker's values aggregated."""
        if not self.multiprocess():
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def process_exit(self) -> None:
        """Drop this worker's live gauges from the aggregate when it stops."""
        if self.multiprocess():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        c = self._children
        key = (endpoint, status)
        if key not in c:
            c[key] = (self.latency.labels(endpoint), self.requests.labels(endpoint, str(status)))
        latency, requests = c[key]
        latency.observe(seconds)
        requests.inc()


def new_request_id(sent: bytes | None) -> str:
    """The client's ``X-Request-ID`` if it is sane (1-128 of ``[A-Za-z0-9._:-]``), else a new one."""
    if sent:
        raw = sent.decode("latin-1")
        if _SANE_ID.match(raw):
            return raw
    return secrets.token_hex(16)


class RequestMiddleware:
    """Pure ASGI middleware: request id (contextvar + ``X-Request-ID`` response header) and
    per-endpoint latency / status metrics. (Starlette's ``BaseHTTPMiddleware`` costs an extra
    task and stream per request; this costs a dict lookup.)"""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id(dict(scope.get("headers") or {}).get(b"x-request-id"))
        token = request_id.set(rid)
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            self.metrics.observe_request(getattr(scope.get("route"), "path", "unmatched"), status,
                                         time.perf_counter() - t0)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id (+ exception)."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id.get()),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def logging_config(fmt: str = "json", level: str = "INFO") -> JsonObject:
    """``logging.config.dictConfig`` for a server process: one handler on the root logger, with
    the request id on every record. ``python -m service`` hands it to uvicorn, which applies it
    in every worker process (configuring the parent alone would leave the workers silent)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if fmt == "json" else
        {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"})
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"ebr": formatter},
        "handlers": {"ebr": {"class": "logging.StreamHandler", "formatter": "ebr",
                             "filters": ["request_id"]}},
        "root": {"handlers": ["ebr"], "level": level},
        "loggers": {"faiss.loader": {"level": "WARNING"},
                    # uvicorn's own loggers propagate to the root handler, once
                    "uvicorn": {"handlers": [], "propagate": True},
                    "uvicorn.error": {"handlers": [], "propagate": True},
                    "uvicorn.access": {"handlers": [], "propagate": True}},
    }


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Root logging for the server process (library code never configures handlers)."""
    logging.config.dictConfig(logging_config(fmt, logging.getLevelName(level)))
