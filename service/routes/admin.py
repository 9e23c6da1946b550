"""``POST /admin/reload`` (admin key) and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ebr.errors import EbrError
from service.deps import StateDep, require_admin
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
    """
    from service.app import install, open_generation

    with state.reload_lock:
        try:
            searcher, encoder, version = open_generation(state.settings, state, state.shard_backends)
        except EbrError as e:
            state.metrics.errors.labels("reload_refused").inc()
            return JSONResponse(status_code=409, content={"status": {
                "error": f"reload refused, generation {state.generation} keeps serving: "
                         f"{type(e).__name__}: {e}"}})
        install(state, searcher, encoder, version)
        return ReloadResponse(generation=state.generation, index_version=version)


@router.get("/metrics", tags=["health"], response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
