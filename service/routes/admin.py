"""``POST /admin/reload`` (admin key) and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ebr.errors import EbrError
from service.deps import StateDep, require_admin
from service.generations import load_generation, public_reason
from service.schemas import ErrorResponse, ReloadResponse

router = APIRouter()


@router.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
             dependencies=[Depends(require_admin)],
             responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                        409: {"model": ErrorResponse}})
def reload(state: StateDep) -> ReloadResponse | JSONResponse:
    """Open the configured index directory again and swap it in if it verifies.

    The request names no path: the directory is the server's setting (point a symlink at a
    new build, then call this). A broken index is refused with 409 and the old one keeps serving.
    This reloads the worker process that receives the request; with several workers, the others
    switch through their watcher (``EBR_WATCH_SECONDS``).
    """
    try:
        version = load_generation(state)
    except EbrError as e:
        state.metrics.errors.labels("reload_refused").inc()
        return JSONResponse(status_code=409, content={"status": {
            "error": f"reload refused, generation {state.generation} keeps serving: "
                     + public_reason(f"{type(e).__name__}: {e}")}})
    return ReloadResponse(generation=state.generation, index_version=version)


@router.get("/metrics", tags=["health"], response_class=Response)
def metrics(state: StateDep) -> Response:
    """This process's metrics; with several workers (``PROMETHEUS_MULTIPROC_DIR``, set by
    ``python -m service --workers N``), all workers' together: counters and histograms summed,
    the gauges one series per live worker (label ``pid``)."""
    return Response(generate_latest(state.metrics.collect_registry()),
                    media_type=CONTENT_TYPE_LATEST)
