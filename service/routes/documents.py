"""``PUT /documents``, ``POST /documents/delete`` and ``GET /documents/{id}``: a living index.

A write is validated whole before anything is written (a batch is all or nothing), then
logged and fsynced by ``ebr.index.live`` before the reply: ``"status": "acknowledged"`` means
on disk. Any worker takes writes; the log's lock orders them, and every worker applies the
log before its next search (read-your-writes on every worker, not only the one that wrote).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from ebr.errors import InputError, WriteConflictError
from ebr.index.live import LiveIndex
from ebr.search.live import LiveSearcher
from ebr.types import ExternalId
from service.deps import (
    Generation,
    GenerationDep,
    ServiceState,
    StateDep,
    current_generation,
    require_read,
    require_write,
)
from service.errors import RequestTooLargeError
from service.generations import load_generation
from service.schemas import (
    MAX_COMPONENT,
    DeleteRequest,
    DocumentIn,
    DocumentOut,
    ErrorResponse,
    UpsertRequest,
    WriteResult,
)

router = APIRouter(tags=["documents"])
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_ERRORS: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorResponse} for s in (401, 403, 404, 409, 413, 422, 503)}


def _live(gen: Generation) -> LiveIndex:
    searcher = gen.searcher
    if not isinstance(searcher, LiveSearcher):
        reason = ("sharded indexes do not take writes: write to the source and rebuild"
                  if getattr(searcher.index, "shards", None) else
                  "this index cannot take writes (see the server log; rebuild it with this ebr)")
        raise HTTPException(409, reason)
    return searcher.live


def _vectors(docs: list[DocumentIn], gen: Generation, dim: int) -> np.ndarray:
    """[n, dim] float32: given vectors checked, texts encoded in one call."""
    out = np.empty((len(docs), dim), dtype=np.float32)
    texts = [(i, d.text) for i, d in enumerate(docs) if d.text is not None]
    if texts:
        if gen.encoder is None:
            raise InputError(f"documents[{texts[0][0]}].text: this index has no text encoder "
                             "loaded; send 'vector'")
        out[[i for i, _ in texts]] = gen.encoder.encode([t for _, t in texts])
    for i, d in enumerate(docs):
        if d.vector is None:
            continue
        if len(d.vector) != dim:
            raise InputError(f"documents[{i}].vector: dimension {len(d.vector)} does not "
                             f"match the index dimension {dim}")
        v = np.asarray(d.vector, dtype=np.float64)
        if np.abs(v).max() > MAX_COMPONENT:
            raise InputError(f"documents[{i}].vector: |x| must be <= {MAX_COMPONENT:g}")
        out[i] = v
    return out


def _check_size(n: int, state: ServiceState) -> None:
    if n > state.settings.max_batch:
        raise RequestTooLargeError(f"{n} documents in one write; the limit is "
                                   f"{state.settings.max_batch} (EBR_MAX_BATCH): split it")


async def _write(state: ServiceState, write: Callable[[LiveIndex], T]) -> T:
    """Run ``write(live)`` in the thread pool; when compaction swapped the generation
    meanwhile, load the new one and try once more."""
    try:
        return await run_in_threadpool(write, _live(current_generation(state)))
    except WriteConflictError:
        await run_in_threadpool(load_generation, state)
    return await run_in_threadpool(write, _live(current_generation(state)))


async def _parse(request: Request, model: type[M]) -> M:
    """The body as ``model``, parsed by pydantic-core straight from the bytes (a batch of
    vectors is several times faster this way than through FastAPI's json.loads)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype.endswith("/json") or ctype.endswith("+json")):
        raise InputError(f"body: Content-Type must be application/json, got {ctype[:100]!r}")
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


def _doc(model: type[BaseModel]) -> dict[str, object]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


@router.put("/documents", response_model=WriteResult, dependencies=[Depends(require_write)],
            responses=_ERRORS, openapi_extra=_doc(UpsertRequest))
async def upsert(request: Request, state: StateDep, gen: GenerationDep) -> WriteResult:
    """Insert documents, or replace those with the same ids (vector and payload together).
    Acknowledged once in the write-ahead log on disk; searched from the next request on.
    Body: ``UpsertRequest``."""
    t0 = time.perf_counter()
    req = await _parse(request, UpsertRequest)
    _check_size(len(req.documents), state)
    live = _live(gen)
    ids = live.check_ids([d.id for d in req.documents])
    x = await run_in_threadpool(_vectors, req.documents, gen, live.dim)
    payloads = [d.payload for d in req.documents]
    lsn = await _write(state, lambda lv: lv.upsert(ids, x, payloads))
    return WriteResult(operation_id=lsn, count=len(ids), time=time.perf_counter() - t0)


@router.post("/documents/delete", response_model=WriteResult,
             dependencies=[Depends(require_write)], responses=_ERRORS,
             openapi_extra=_doc(DeleteRequest))
async def delete(request: Request, state: StateDep, gen: GenerationDep) -> WriteResult:
    """Delete documents by id; unknown ids are skipped (``count`` says how many existed).
    Never returned by a search once acknowledged. Body: ``DeleteRequest``."""
    t0 = time.perf_counter()
    req = await _parse(request, DeleteRequest)
    _check_size(len(req.ids), state)
    ids = _live(gen).check_ids(list(req.ids))
    lsn, found = await _write(state, lambda lv: lv.delete(ids))
    return WriteResult(operation_id=lsn, count=found, time=time.perf_counter() - t0)


def _parse_id(raw: str, id_kind: str) -> ExternalId:
    if id_kind != "int":
        return raw
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"id: this index has integer ids, got {raw[:100]!r}") from None


@router.get("/documents/{doc_id}", response_model=DocumentOut, response_model_exclude_none=True,
            dependencies=[Depends(require_read)], responses=_ERRORS)
def get_document(doc_id: str, gen: GenerationDep,
                 with_vector: Annotated[bool, Query(description="include the stored dense "
                                                    "vector")] = False) -> DocumentOut:
    """A document's payload (and stored vector); 404 when no live document has this id."""
    searcher = gen.searcher
    if not isinstance(searcher, LiveSearcher):
        raise HTTPException(409, "this index has no document table")
    live = searcher.live
    live.catch_up()
    key = _parse_id(doc_id, live.base.manifest.id_kind)
    with live.reading():
        row = live.rows_of([key]).get(key)
        if row is None:
            raise HTTPException(404, f"no document with id {doc_id[:100]!r}")
        payload = live.payloads([row]).get(row)
        vector = live.vectors(np.array([row]))[0].tolist() if with_vector else None
    return DocumentOut(id=key, payload=payload, vector=vector)
