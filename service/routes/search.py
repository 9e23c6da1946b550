"""``POST /search`` and ``POST /search/batch``. Plain ``def`` routes: they run in the thread pool,
and faiss and numpy release the GIL while they work."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from ebr.errors import InputError, SearchParamError
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams
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


def _one(req: SearchRequest, state: ServiceState, gen: Generation,
         where: str = "") -> SearchResult:
    searcher = gen.searcher
    x = _query_vector(req, gen, where)
    oi = searcher.index
    k_max = min(state.settings.max_k, oi.ntotal)
    if req.k > k_max:  # one bound for both modes
        raise SearchParamError(f"{where}k: must be <= {k_max}, got {req.k}")
    stats: dict[str, Any]
    if req.params.exact:
        t0 = time.perf_counter()
        res = searcher.exact(x, req.k)
        stats = {"mode": "exact", "nprobe": None, "k_coarse": None, "candidates": oi.ntotal,
                 "reranked": oi.ntotal, "dense_bytes_read": int(oi.dense.nbytes),
                 "coarse_ms": 0.0, "rerank_ms": 1e3 * (time.perf_counter() - t0)}
    else:
        params = _params(req, state, searcher, where)
        res, st = searcher.search(x, params)
        state.metrics.candidates.observe(st.candidates)
        state.metrics.dense_bytes.inc(st.dense_bytes_read)
        stats = {"mode": "two_stage" if params.rerank else "coarse_only", "nprobe": st.nprobe,
                 "k_coarse": st.k_coarse, "candidates": st.candidates, "reranked": st.reranked,
                 "dense_bytes_read": st.dense_bytes_read, "coarse_ms": 1e3 * st.coarse_seconds,
                 "rerank_ms": 1e3 * st.rerank_seconds}
    rows = res.ids[0]
    keep = rows >= 0
    vecs = np.asarray(oi.dense[rows[keep]], dtype=np.float32) if req.with_vector else None
    hits = [Hit(id=e, score=float(s), vector=None if vecs is None else vecs[i].tolist())
            for i, (e, s) in enumerate(zip(oi.external_ids(rows[keep]), res.scores[0][keep],
                                           strict=True))]
    return SearchResult(hits=hits, stats=Stats(**stats, returned=len(hits),
                                               index_version=gen.version))


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             responses=_ERRORS)
def search(req: SearchRequest, gen: GenerationDep, state: StateDep) -> Response:
    t0 = time.perf_counter()
    result = _one(req, state, gen)
    return _json(SearchResponse(result=result, time=time.perf_counter() - t0))


@router.post("/search/batch", response_model=BatchResponse, response_model_exclude_none=True,
             responses=_ERRORS)
def search_batch(req: BatchRequest, gen: GenerationDep, state: StateDep) -> Response:
    t0 = time.perf_counter()
    if len(req.searches) > state.settings.max_batch:
        raise InputError(f"searches: batch of {len(req.searches)} exceeds the limit of "
                         f"{state.settings.max_batch}")
    results = [_one(r, state, gen, where=f"searches[{i}].")
               for i, r in enumerate(req.searches)]
    return _json(BatchResponse(result=results, time=time.perf_counter() - t0))
