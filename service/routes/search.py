"""``POST /search`` and ``POST /search/batch``.

Searches run in the thread pool (faiss and numpy release the GIL). A batch request's searches
with equal parameters run as one batched search; ``/search`` requests arriving together can
share one too (``service.batcher``, ``micro_batch_inflight``). ``service.routes.fast`` answers
both routes in front of FastAPI with the same code (``run_search``, ``run_batch``); the FastAPI
routes below document them and are the reference it is tested against."""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from ebr.errors import InputError, RequestTooLargeError, SearchParamError
from ebr.filters import Filter, parse_filter
from ebr.index.docs import select_fields
from ebr.search.live import LiveSearcher
from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardedSearcher
from ebr.spec import SearchParams
from ebr.types import SearchStats
from service.deps import (
    Generation,
    ServiceState,
    check_read,
    current_generation,
)
from service.routes.door import json_answer, openapi_body, routed
from service.schemas import (
    MAX_COMPONENT,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from service.settings import Settings

router = APIRouter(tags=["search"])  # auth in answer(), for both doors


_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
           413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
           429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def _query_vector(req: SearchRequest, gen: Generation, where: str,
                  encoded: np.ndarray | None = None) -> np.ndarray:
    searcher = gen.searcher
    if req.text is not None:
        if gen.encoder is None:
            raise InputError(f"{where}text: this index has no text encoder loaded; send 'vector'")
        return encoded if encoded is not None else gen.encoder.encode([req.text])
    vec = req.vector if req.vector is not None else []
    if len(vec) != searcher.index.dim:
        raise InputError(f"{where}vector: dimension {len(vec)} does not match the index "
                         f"dimension {searcher.index.dim}")
    x = np.asarray(vec, dtype=np.float64)[None, :]  # finite on input (pydantic)
    if np.abs(x).max() > MAX_COMPONENT:  # past this, float32 scores could overflow
        raise InputError(f"{where}vector: values must be within float32 range and |x| <= "
                         f"{MAX_COMPONENT:g}, so that scores stay finite")
    return x.astype(np.float32)


def k_limit(settings: Settings, ntotal: int) -> int:
    """The largest k a search may ask: within max_k, and within the candidate count a
    two-stage search can re-rank (max_candidates, the documents in the index)."""
    return min(settings.max_k, settings.max_candidates, ntotal)


def _params(req: SearchRequest, state: ServiceState, searcher: Searcher | ShardedSearcher,
            where: str) -> SearchParams:
    """The request's two-stage parameters, checked by ``SearchParams.validate`` (the one check;
    its errors are reported under the request's field names). Defaults adapt to the index: the
    server's nprobe at most nlist, its candidate count at least k and at most the documents;
    an oversampling factor's count is capped the same way. Values given are checked, never
    clamped."""
    s, nlist, ntotal = state.settings, searcher.index.nlist, max(searcher.ntotal, 1)
    p = req.params
    nprobe = p.nprobe if p.nprobe is not None else min(s.default_nprobe, nlist)
    if p.oversampling is not None:
        params = SearchParams.from_oversampling(req.k, p.oversampling, nprobe,
                                                min(ntotal, s.max_candidates), p.rerank)
    else:
        kc = p.candidates if p.candidates is not None else \
            min(max(s.default_candidates, req.k), ntotal, s.max_candidates)
        params = SearchParams(k=req.k, nprobe=nprobe, candidates=kc, rerank=p.rerank)
    try:
        return params.validate(nlist, ntotal, s.max_candidates)
    except SearchParamError as e:
        if e.param is None:
            raise
        raise SearchParamError(f"{where}params.{e.param}: {e.problem}") from None


def _prepare(req: SearchRequest, state: ServiceState, gen: Generation, where: str = "",
             encoded: np.ndarray | None = None) -> tuple[np.ndarray, SearchParams | None]:
    """Validate one search: (query row [1, d], two-stage params or None for exact mode);
    ``encoded``: its text's vector, encoded already."""
    searcher = gen.searcher
    x = _query_vector(req, gen, where, encoded)
    k_max = k_limit(state.settings, max(searcher.ntotal, 1))
    if req.k > k_max:  # one bound for both modes
        raise SearchParamError(f"{where}k: must be <= {k_max}, got {req.k}")
    return x, None if req.params.exact else _params(req, state, searcher, where)


def _two_stage_stats(res_st: SearchStats, row: int, batch: int, params: SearchParams,
                     state: ServiceState, row_bytes: int) -> dict[str, Any]:
    """Stats of one query of a (possibly shared) batch search."""
    per = res_st.per_query_found
    cand = int(per[row]) if per is not None else res_st.found
    state.metrics.candidates.observe(cand)
    return {"mode": "two_stage" if params.rerank else "coarse_only", "nprobe": res_st.nprobe,
            "candidates": res_st.candidates, "found": cand,
            "reranked": cand if params.rerank else 0,
            # alone, this query reads its candidates; in a batch, shared rows are read once
            "dense_bytes_read": (res_st.dense_bytes_read if batch == 1
                                 else (cand * row_bytes if params.rerank else 0)),
            "coarse_ms": 1e3 * res_st.coarse_seconds, "rerank_ms": 1e3 * res_st.rerank_seconds,
            "batch": batch}


def _result(req: SearchRequest, gen: Generation, ids: np.ndarray, scores: np.ndarray,
            stats: dict[str, Any]) -> dict[str, Any]:
    """One search's reply as plain JSON-ready data, fields that are None left out (the shape of
    ``schemas.SearchResult``, serialised by pydantic-core without building models)."""
    searcher = gen.searcher
    keep = ids >= 0
    kept = ids[keep]
    hits: list[dict[str, Any]] = [{"id": e, "score": s} for e, s in zip(
        searcher.external_ids(kept), scores[keep].tolist(), strict=True)]
    if req.with_vector:
        for h, v in zip(hits, searcher.vectors(kept).tolist(), strict=True):
            h["vector"] = v
    if req.with_payload is not False:
        payloads = searcher.payloads(kept.tolist()) or {}
        fields = None if req.with_payload is True else req.with_payload
        for h, row in zip(hits, kept.tolist(), strict=True):
            p = payloads.get(row)
            if p is not None:
                h["payload"] = select_fields(p, fields)
    out = {k: v for k, v in stats.items() if v is not None}
    out["returned"], out["index_version"] = len(hits), gen.version
    return {"hits": hits, "stats": out}


def _exact(req: SearchRequest, gen: Generation, x: np.ndarray) -> dict[str, Any]:
    oi, n = gen.searcher.index, gen.searcher.ntotal
    t0 = time.perf_counter()
    res = gen.searcher.exact(x, req.k)
    stats = {"mode": "exact", "nprobe": None, "candidates": None, "found": n,
             "reranked": n, "dense_bytes_read": int(oi.dense.nbytes),
             "coarse_ms": 0.0, "rerank_ms": 1e3 * (time.perf_counter() - t0)}
    return _result(req, gen, res.ids[0], res.scores[0], stats)


def _row_bytes(gen: Generation) -> int:
    oi = gen.searcher.index
    return int(oi.dim * oi.dense.dtype.itemsize)


def _check_budget(reqs: list[SearchRequest], params: list[SearchParams | None],
                  state: ServiceState) -> None:
    """The per-request limits on work and reply size (settings ``max_*_per_request``)."""
    s = state.settings
    totals = {
        "hits (sum of k)": (sum(r.k for r in reqs), s.max_hits_per_request,
                            "EBR_MAX_HITS_PER_REQUEST"),
        "candidates (sum of candidates)": (sum(p.candidates for p in params if p is not None),
                                         s.max_candidates_per_request,
                                         "EBR_MAX_CANDIDATES_PER_REQUEST"),
        "returned vectors (sum of k with with_vector)": (
            sum(r.k for r in reqs if r.with_vector), s.max_vectors_per_request,
            "EBR_MAX_VECTORS_PER_REQUEST"),
        "exact searches": (sum(p is None for p in params), s.max_exact_per_request,
                           "EBR_MAX_EXACT_PER_REQUEST"),
    }
    for what, (asked, limit, name) in totals.items():
        if asked > limit:
            raise RequestTooLargeError(f"request asks for {asked} {what}; the limit per "
                                       f"request is {limit} ({name}): split it")


def _filter(req: SearchRequest, gen: Generation, where: str) -> Filter:
    searcher = gen.searcher
    if not isinstance(searcher, LiveSearcher | ShardedSearcher):
        raise InputError(f"{where}filter: this index has no document table (rebuild it with "
                         "this ebr)")
    return parse_filter(req.filter, searcher.fields(), f"{where}filter")


def _filtered(req: SearchRequest, state: ServiceState, gen: Generation, x: np.ndarray,
              params: SearchParams | None, f: Filter) -> dict[str, Any]:
    """One filtered search (``search_filtered`` of a living or a sharded index: min(k,
    matches) hits)."""
    searcher = cast(LiveSearcher | ShardedSearcher, gen.searcher)
    exact = params is None
    p = params or SearchParams(k=req.k, nprobe=min(state.settings.default_nprobe,
                                                   searcher.index.nlist),
                               candidates=min(max(state.settings.default_candidates, req.k),
                                              max(searcher.ntotal, 1)))
    res, st, c = searcher.search_filtered(x, p, f, exact=exact)
    state.metrics.dense_bytes.inc(st.dense_bytes_read)
    stats = _two_stage_stats(st, 0, 1, p, state, _row_bytes(gen))
    if st.nprobe == 0:  # every match scored exactly
        stats.update(mode="exact", nprobe=None, candidates=None)
    return _result(req, gen, res.ids[0], res.scores[0], {**stats, "matches": c})


def _many(reqs: list[SearchRequest], state: ServiceState, gen: Generation,
          prefix: str = "searches") -> list[dict[str, Any]]:
    """Validate all, then one batched search per distinct parameter set (exact ones alone);
    the batch's texts go through the encoder in one call."""
    texts = [i for i, r in enumerate(reqs) if r.text is not None]
    encoded = {}
    if len(texts) > 1 and gen.encoder is not None:
        xs = gen.encoder.encode([cast(str, reqs[i].text) for i in texts])
        encoded = {i: xs[j:j + 1] for j, i in enumerate(texts)}
    prepared = [_prepare(r, state, gen, f"{prefix}[{i}]." if prefix else "", encoded.get(i))
                for i, r in enumerate(reqs)]
    _check_budget(reqs, [p for _, p in prepared], state)
    filters = {i: _filter(r, gen, f"{prefix}[{i}]." if prefix else "")
               for i, r in enumerate(reqs) if r.filter is not None}  # all checked first
    out: list[dict[str, Any] | None] = [None] * len(reqs)
    groups: dict[SearchParams, list[int]] = {}
    for i, (x, params) in enumerate(prepared):
        if i in filters:
            out[i] = _filtered(reqs[i], state, gen, x, params, filters[i])
        elif params is None:
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
            if reqs[i].with_coarse and params.rerank:
                _add_coarse(out[i], gen, prepared[i][0], params)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def _add_coarse(result: dict[str, Any], gen: Generation, x: np.ndarray,
                params: SearchParams) -> None:
    """Each hit's coarse score and rank: the coarse stage again, alone (same parameters,
    so the same candidates), its ranking read back."""
    c = params.candidates
    res, _ = gen.searcher.search(x, SearchParams(k=c, nprobe=params.nprobe, candidates=c,
                                                 rerank=False))
    keep = res.ids[0] >= 0
    where = {e: (rank, float(s)) for rank, (e, s) in enumerate(zip(
        gen.searcher.external_ids(res.ids[0][keep]), res.scores[0][keep].tolist(),
        strict=True))}
    for h in result["hits"]:
        if h["id"] in where:
            h["coarse_rank"], h["coarse_score"] = where[h["id"]]


async def run_search(req: SearchRequest, state: ServiceState, gen: Generation) -> bytes:
    """``POST /search``. With micro-batching on (``micro_batch_inflight`` > 0, the default),
    concurrent vector searches with the same parameters share one batched search; text, exact
    and ``with_vector`` requests, and everything when it is off, run alone in the thread pool.
    Texts are encoded together (``TextBatcher``); a text's batched search and reply run inside
    its ``encoding`` block (the texts arriving meanwhile wait to be encoded together), a search
    that may take long (exact, filtered, ...) after it."""
    t0 = time.perf_counter()
    if req.text is None or state.text_batcher is None or gen.encoder is None:
        return await _search_one(req, state, gen, None, t0)
    async with state.text_batcher.encoding(gen.encoder, req.text) as encoded:
        if _batched(req, state):
            return await _search_one(req, state, gen, encoded, t0)
    return await _search_one(req, state, gen, encoded, t0)


def _batched(req: SearchRequest, state: ServiceState) -> bool:
    """Whether a search runs through the micro-batcher (the rest runs alone)."""
    return state.batcher is not None and not (
        req.params.exact or req.with_vector or req.with_payload is not False
        or req.filter is not None or req.with_coarse)


async def _search_one(req: SearchRequest, state: ServiceState, gen: Generation,
                      encoded: np.ndarray | None, t0: float) -> bytes:
    """One search, its text (if any) already ``encoded`` (float32 [1, d]) or not batched."""
    if (req.text is not None and encoded is None) or not _batched(req, state):
        if encoded is not None:
            req = req.model_copy(update={"text": None, "vector": encoded[0].tolist()})
        result = (await run_in_threadpool(_many, [req], state, gen, ""))[0]
    else:
        # validation only: cheap, on the event loop
        x, maybe = _prepare(req, state, gen, "", encoded)
        params = cast(SearchParams, maybe)  # not exact mode, so never None
        _check_budget([req], [params], state)
        res, st, row, n = await state.batcher.search(gen.searcher, x, params)
        if row == 0:
            state.metrics.dense_bytes.inc(st.dense_bytes_read)
        result = _result(req, gen, res.ids[row], res.scores[row],
                         _two_stage_stats(st, row, n, params, state, _row_bytes(gen)))
    return to_json({"result": result, "status": "ok", "time": time.perf_counter() - t0})


def run_batch(req: BatchRequest, state: ServiceState, gen: Generation) -> bytes:
    """``POST /search/batch`` (blocking: run it in the thread pool)."""
    t0 = time.perf_counter()
    if len(req.searches) > state.settings.max_batch:
        raise InputError(f"searches: batch of {len(req.searches)} exceeds the limit of "
                         f"{state.settings.max_batch}")
    results = _many(list(req.searches), state, gen)
    return to_json({"result": results, "status": "ok", "time": time.perf_counter() - t0})


async def answer(state: ServiceState, path: str, headers: dict[bytes, bytes],
                 receive: Receive) -> tuple[int, bytes, dict[str, str]]:
    """The one implementation of ``POST /search`` and ``POST /search/batch``: auth, content
    type, the body (read under its limit), validation by the request models in one pass
    (pydantic-core), the search, and every failure as the app's reply for it. Returns
    (status, JSON body, extra headers). Raises ``ClientDisconnect`` when there is no one to
    answer. Both doors call it: ``service.routes.fast`` in front of FastAPI, and the FastAPI
    routes below."""

    async def handle(body: bytes) -> bytes:
        gen = current_generation(state)
        if path == "/search":
            return await run_search(SearchRequest.model_validate_json(body), state, gen)
        return await run_in_threadpool(run_batch, BatchRequest.model_validate_json(body),
                                       state, gen)

    return await json_answer(state, path, headers, receive, check_read, handle)


# The FastAPI routes document the endpoints (OpenAPI, /docs: the request bodies are the
# models', ``openapi_body``) and answer them when the app runs without ``FastEndpoints``
# (``create_app(fast_search=False)``), through the same :func:`answer`.

@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             responses=_ERRORS, openapi_extra=openapi_body(SearchRequest))
async def search(request: Request) -> Response:
    """One search (exactly one of ``vector`` or ``text``)."""
    return await routed(request, "/search", answer)


@router.post("/search/batch", response_model=BatchResponse, response_model_exclude_none=True,
             responses=_ERRORS, openapi_extra=openapi_body(BatchRequest))
async def search_batch(request: Request) -> Response:
    """Searches answered in order; equal parameters share one batched search."""
    return await routed(request, "/search/batch", answer)
