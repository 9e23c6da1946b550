"""``POST /search`` and ``POST /search/batch``.

Searches run in the thread pool (faiss and numpy release the GIL). A batch request's searches
with equal parameters run as one batched search; ``/search`` requests arriving together can
share one too (``service.batcher``, ``micro_batch_inflight``)."""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ebr.errors import InputError, SearchParamError
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams
from ebr.types import SearchStats
from service.deps import Generation, GenerationDep, ServiceState, StateDep, require_read
from service.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Hit,
    SearchRequest,
    SearchResponse,
    SearchResult,
    Stats,
)

router = APIRouter(tags=["search"], dependencies=[Depends(require_read)])


def _json(model: BaseModel) -> Response:
    """Serialise once with pydantic-core. Returning the model would make FastAPI validate it
    again against ``response_model`` (which still documents the schema), a measurable share of
    a /search request."""
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")
_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
           413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
           503: {"model": ErrorResponse}}


def _query_vector(req: SearchRequest, gen: Generation, where: str) -> np.ndarray:
    searcher = gen.searcher
    if req.text is not None:
        if gen.encoder is None:
            raise InputError(f"{where}text: this index has no text encoder loaded; send 'vector'")
        return gen.encoder.encode([req.text])
    v = np.asarray(req.vector, dtype=np.float64)
    if np.abs(v).max() > np.finfo(np.float32).max:
        raise InputError(f"{where}vector: values must be within float32 range (|x| <= 3.4e38)")
    x = v.astype(np.float32)[None, :]
    if x.shape[1] != searcher.index.dim:
        raise InputError(f"{where}vector: dimension {x.shape[1]} does not match the index "
                         f"dimension {searcher.index.dim}")
    return x


def _params(req: SearchRequest, state: ServiceState, searcher: Searcher,
            where: str) -> SearchParams:
    s, oi = state.settings, searcher.index
    p = req.params
    if p.nprobe is not None and p.nprobe > oi.nlist:
        raise SearchParamError(f"{where}params.nprobe: must be <= {oi.nlist} (nlist), "
                               f"got {p.nprobe}")
    nprobe = p.nprobe if p.nprobe is not None else min(s.default_nprobe, oi.nlist)
    if p.oversampling is not None:
        return SearchParams.from_oversampling(req.k, p.oversampling, nprobe,
                                              min(oi.ntotal, s.max_k_coarse), rerank=p.rerank)
    if p.k_coarse is not None:
        limit = min(s.max_k_coarse, oi.ntotal)
        if p.k_coarse > limit:
            raise SearchParamError(f"{where}params.k_coarse: must be <= {limit}, "
                                   f"got {p.k_coarse}")
        if p.k_coarse < req.k:
            raise SearchParamError(f"{where}params.k_coarse: must be >= k ({req.k}), "
                                   f"got {p.k_coarse}")
        kc = p.k_coarse
    else:
        kc = min(max(s.default_k_coarse, req.k), oi.ntotal, s.max_k_coarse)
    return SearchParams(k=req.k, nprobe=nprobe, k_coarse=kc, rerank=p.rerank)


def _prepare(req: SearchRequest, state: ServiceState, gen: Generation, where: str = ""
             ) -> tuple[np.ndarray, SearchParams | None]:
    """Validate one search: (query row [1, d], two-stage params or None for exact mode)."""
    searcher = gen.searcher
    x = _query_vector(req, gen, where)
    oi = searcher.index
    k_max = min(state.settings.max_k, oi.ntotal)
    if req.k > k_max:  # one bound for both modes
        raise SearchParamError(f"{where}k: must be <= {k_max}, got {req.k}")
    return x, None if req.params.exact else _params(req, state, searcher, where)


def _two_stage_stats(res_st: SearchStats, row: int, batch: int, params: SearchParams,
                     state: ServiceState, row_bytes: int) -> dict[str, Any]:
    """Stats of one query of a (possibly shared) batch search."""
    per = res_st.per_query_candidates
    cand = int(per[row]) if per is not None else res_st.candidates
    state.metrics.candidates.observe(cand)
    return {"mode": "two_stage" if params.rerank else "coarse_only", "nprobe": res_st.nprobe,
            "k_coarse": res_st.k_coarse, "candidates": cand,
            "reranked": cand if params.rerank else 0,
            # alone, this query reads its candidates; in a batch, shared rows are read once
            "dense_bytes_read": (res_st.dense_bytes_read if batch == 1
                                 else (cand * row_bytes if params.rerank else 0)),
            "coarse_ms": 1e3 * res_st.coarse_seconds, "rerank_ms": 1e3 * res_st.rerank_seconds,
            "batch": batch}


def _result(req: SearchRequest, gen: Generation, ids: np.ndarray, scores: np.ndarray,
            stats: dict[str, Any]) -> SearchResult:
    oi = gen.searcher.index
    keep = ids >= 0
    vecs = np.asarray(oi.dense[ids[keep]], dtype=np.float32) if req.with_vector else None
    hits = [Hit(id=e, score=float(s), vector=None if vecs is None else vecs[i].tolist())
            for i, (e, s) in enumerate(zip(oi.external_ids(ids[keep]), scores[keep],
                                           strict=True))]
    return SearchResult(hits=hits, stats=Stats(**stats, returned=len(hits),
                                               index_version=gen.version))


def _exact(req: SearchRequest, gen: Generation, x: np.ndarray) -> SearchResult:
    oi = gen.searcher.index
    t0 = time.perf_counter()
    res = gen.searcher.exact(x, req.k)
    stats = {"mode": "exact", "nprobe": None, "k_coarse": None, "candidates": oi.ntotal,
             "reranked": oi.ntotal, "dense_bytes_read": int(oi.dense.nbytes),
             "coarse_ms": 0.0, "rerank_ms": 1e3 * (time.perf_counter() - t0)}
    return _result(req, gen, res.ids[0], res.scores[0], stats)


def _row_bytes(gen: Generation) -> int:
    oi = gen.searcher.index
    return int(oi.dim * oi.dense.dtype.itemsize)


def _many(reqs: list[SearchRequest], state: ServiceState, gen: Generation,
          prefix: str = "searches") -> list[SearchResult]:
    """Validate all, then one batched search per distinct parameter set (exact ones alone)."""
    prepared = [_prepare(r, state, gen, f"{prefix}[{i}]." if prefix else "")
                for i, r in enumerate(reqs)]
    out: list[SearchResult | None] = [None] * len(reqs)
    groups: dict[SearchParams, list[int]] = {}
    for i, (x, params) in enumerate(prepared):
        if params is None:
            out[i] = _exact(reqs[i], gen, x)
        else:
            groups.setdefault(params, []).append(i)
    for params, idx in groups.items():
        res, st = gen.searcher.search(np.concatenate([prepared[i][0] for i in idx]), params)
        state.metrics.dense_bytes.inc(st.dense_bytes_read)
        for row, i in enumerate(idx):
            out[i] = _result(reqs[i], gen, res.ids[row], res.scores[row],
                             _two_stage_stats(st, row, len(idx), params, state,
                                              _row_bytes(gen)))
    return out  # type: ignore[return-value]


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             responses=_ERRORS)
async def search(req: SearchRequest, gen: GenerationDep, state: StateDep) -> Response:
    """With micro-batching on (``micro_batch_inflight`` > 0, the default), concurrent vector
    searches with the same parameters share one batched search; text, exact and
    ``with_vector`` requests, and everything when it is off, run alone in the thread pool."""
    t0 = time.perf_counter()
    batcher = state.batcher
    if batcher is None or req.text is not None or req.params.exact or req.with_vector:
        result = (await run_in_threadpool(_many, [req], state, gen, ""))[0]
    else:
        x, maybe = _prepare(req, state, gen)  # validation only: cheap, on the event loop
        params = cast(SearchParams, maybe)  # not exact mode, so never None
        res, st, row, n = await batcher.search(gen.searcher, x, params)
        if row == 0:
            state.metrics.dense_bytes.inc(st.dense_bytes_read)
        result = _result(req, gen, res.ids[row], res.scores[row],
                         _two_stage_stats(st, row, n, params, state, _row_bytes(gen)))
    return _json(SearchResponse(result=result, time=time.perf_counter() - t0))


@router.post("/search/batch", response_model=BatchResponse, response_model_exclude_none=True,
             responses=_ERRORS)
def search_batch(req: BatchRequest, gen: GenerationDep, state: StateDep) -> Response:
    t0 = time.perf_counter()
    if len(req.searches) > state.settings.max_batch:
        raise InputError(f"searches: batch of {len(req.searches)} exceeds the limit of "
                         f"{state.settings.max_batch}")
    results = _many(list(req.searches), state, gen)
    return _json(BatchResponse(result=results, time=time.perf_counter() - t0))
