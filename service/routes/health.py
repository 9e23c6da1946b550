"""``GET /healthz`` (process alive), ``GET /readyz`` (index open), ``GET /index`` (summary)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ebr.search.live import LiveSearcher
from ebr.search.sharded import ShardedSearcher
from service.deps import Generation, GenerationDep, ServiceState, StateDep, require_read
from service.generations import public_reason
from service.schemas import ErrorResponse, Health, IndexInfo, LiveInfo, RefusedBuild

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _refused(state: ServiceState) -> RefusedBuild | None:
    r = state.refused
    return None if r is None else RefusedBuild(index_version=r.version, reason=r.reason, at=r.at)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: StateDep) -> Health | JSONResponse:
    """Ready when an index is open and whole. Says which build is served and whether a newer
    one was refused; reasons carry no absolute paths (this probe is open)."""
    gen = state.current
    broken = gen.broken() if gen is not None else None
    if gen is None or broken is not None:
        reasons = [public_reason(broken)] if broken is not None else (state.problems
                                                                       or ["starting"])
        body = Health(status="not ready", reasons=reasons, refused=_refused(state),
                      generation=gen.number if gen is not None else None,
                      index_version=gen.version if gen is not None else None)
        return JSONResponse(status_code=503, content=body.model_dump())
    return Health(status="ready", generation=gen.number, index_version=gen.version,
                  refused=_refused(state))


@router.get("/index", response_model=IndexInfo, dependencies=[Depends(require_read)],
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                       503: {"model": ErrorResponse}})
def index_info(gen: GenerationDep, state: StateDep) -> IndexInfo:
    oi = gen.searcher.index
    m = oi.manifest
    return IndexInfo(
        spec=m.spec, metric=m.metric, count=gen.searcher.ntotal, dim=m.dim,
        format_version=m.format_version, dense_dtype=m.dense_dtype,
        index_version=gen.version, generation=gen.number, codebooks=m.codebooks,
        encoder=m.encoder,
        text_queries=gen.encoder is not None,
        encoder_runtime=gen.encoder.runtime if gen.encoder is not None else None,
        towers=None if not m.build.get("towers") else
        {k: v for k, v in m.build["towers"].items() if k != "history"},
        memory={k: float(v) for k, v in oi.memory().items()},
        build={k: m.build[k] for k in ("created", "seconds", "params") if k in m.build},
        refused=_refused(state),
        live=_live_info(gen),
        payloads=_payload_count(gen),
        fields=gen.searcher.fields() if isinstance(gen.searcher, LiveSearcher | ShardedSearcher)
        else {},
        manifest_sha256=m.digest(),
    )


def _live_info(gen: Generation) -> LiveInfo | None:
    searcher = gen.searcher
    if not isinstance(searcher, LiveSearcher):
        return None
    st = searcher.live.stats()
    return LiveInfo(epoch=st.epoch, applied_lsn=st.applied_lsn, last_lsn=st.last_lsn,
                    log_bytes=st.log_bytes, delta_rows=st.delta_rows, delta_live=st.delta_live,
                    tombstones=st.tombstones, drift=st.drift,
                    compaction=(searcher.live.base.manifest.live or {}).get("compacted"),
                    writable=searcher.live.writable)


def _payload_count(gen: Generation) -> int | None:
    searcher = gen.searcher
    if isinstance(searcher, ShardedSearcher):
        docs = searcher.docs()
        return None if None in docs else sum(d.count_payloads() for d in docs if d)
    if not isinstance(searcher, LiveSearcher) or searcher.live.docs is None:
        return None
    return searcher.live.docs.count_payloads()
