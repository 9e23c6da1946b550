"""``GET /healthz`` (process alive), ``GET /readyz`` (index open), ``GET /index`` (summary)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.deps import GenerationDep, StateDep, require_read
from service.schemas import ErrorResponse, Health, IndexInfo

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: StateDep) -> Health | JSONResponse:
    if state.current is None:
        body = Health(status="not ready", reasons=state.problems or ["starting"])
        return JSONResponse(status_code=503, content=body.model_dump())
    return Health(status="ready")


@router.get("/index", response_model=IndexInfo, dependencies=[Depends(require_read)],
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                       503: {"model": ErrorResponse}})
def index_info(gen: GenerationDep) -> IndexInfo:
    oi = gen.searcher.index
    m = oi.manifest
    return IndexInfo(
        spec=m.spec, metric=m.metric, count=m.ntotal, dim=m.dim,
        format_version=m.format_version, dense_dtype=m.dense_dtype,
        index_version=gen.version, generation=gen.number, codebooks=m.codebooks,
        encoder=m.encoder,
        text_queries=gen.encoder is not None,
        towers=None if not m.build.get("towers") else
        {k: v for k, v in m.build["towers"].items() if k != "history"},
        memory={k: float(v) for k, v in oi.memory().items()},
        build={k: m.build[k] for k in ("created", "seconds", "params") if k in m.build},
    )
