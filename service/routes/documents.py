"""``PUT /documents``, ``POST /documents/delete`` and ``GET /documents/{id}``: a living index.

A write is validated whole before anything is written (a batch is all or nothing), then
logged and fsynced by ``ebr.index.live`` before the reply: ``"status": "acknowledged"`` means
on disk. Any worker takes writes; the log's lock orders them, and every worker applies the
log before its next search (read-your-writes on every worker, not only the one that wrote).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from ebr.errors import InputError, RequestTooLargeError, WriteConflictError
from ebr.index.live import LiveIndex
from ebr.search.live import LiveSearcher
from ebr.types import ExternalId
from service.deps import (
    Generation,
    GenerationDep,
    ServiceState,
    check_write,
    current_generation,
    require_read,
)
from service.generations import load_generation
from service.routes.door import json_answer, openapi_body, routed
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
    """Run ``write(live)`` on the writer thread (``ServiceState.writer``); when compaction
    swapped the generation meanwhile, load the new one and try once more."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(state.writer, write, _live(current_generation(state)))
    except WriteConflictError:
        await run_in_threadpool(load_generation, state)
    return await loop.run_in_executor(state.writer, write, _live(current_generation(state)))


async def _upsert(req: UpsertRequest, state: ServiceState) -> dict[str, object]:
    """Insert documents, or replace those with the same ids (vector and payload together)."""
    t0 = time.perf_counter()
    _check_size(len(req.documents), state)
    gen = current_generation(state)
    live = _live(gen)
    ids = live.check_ids([d.id for d in req.documents])
    payloads = [d.payload for d in req.documents]
    lsn = await _write(state, lambda lv: lv.upsert(ids, _vectors(req.documents, gen, lv.dim),
                                                   payloads))
    return {"status": "acknowledged", "operation_id": lsn, "count": len(ids),
            "time": time.perf_counter() - t0}


async def _delete(req: DeleteRequest, state: ServiceState) -> dict[str, object]:
    t0 = time.perf_counter()
    _check_size(len(req.ids), state)
    ids = _live(current_generation(state)).check_ids(list(req.ids))
    lsn, found = await _write(state, lambda lv: lv.delete(ids))
    return {"status": "acknowledged", "operation_id": lsn, "count": found,
            "time": time.perf_counter() - t0}


async def write_answer(state: ServiceState, path: str, headers: dict[bytes, bytes],
                       receive: Receive) -> tuple[int, bytes, dict[str, str]]:
    """The one implementation of ``PUT /documents`` and ``POST /documents/delete`` (both
    doors call it, as :func:`service.routes.search.answer` for searches): the write key,
    content type, the body under its limit, pydantic-core validation of the whole batch, the
    write, every failure as the app's reply. Returns (status, JSON body, extra headers)."""

    async def handle(body: bytes) -> bytes:
        if path == "/documents":
            return to_json(await _upsert(UpsertRequest.model_validate_json(body), state))
        return to_json(await _delete(DeleteRequest.model_validate_json(body), state))

    return await json_answer(state, path, headers, receive, check_write, handle)


@router.put("/documents", response_model=WriteResult, responses=_ERRORS,
            openapi_extra=openapi_body(UpsertRequest))
async def upsert(request: Request) -> Response:
    """Insert documents, or replace those with the same ids (vector and payload together).
    Acknowledged once in the write-ahead log on disk; searched from the next request on.
    All or nothing; at most ``EBR_MAX_BATCH`` documents. A write or admin key."""
    return await routed(request, "/documents", write_answer)


@router.post("/documents/delete", response_model=WriteResult, responses=_ERRORS,
             openapi_extra=openapi_body(DeleteRequest))
async def delete(request: Request) -> Response:
    """Delete documents by id; unknown ids are skipped (``count`` says how many existed).
    Never returned by a search once acknowledged. A write or admin key."""
    return await routed(request, "/documents/delete", write_answer)


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
    key = live.check_ids([_parse_id(doc_id, live.base.manifest.id_kind)])[0]  # 422, not 500
    with live.reading():
        row = live.rows_of([key]).get(key)
        if row is None:
            raise HTTPException(404, f"no document with id {doc_id[:100]!r}")
        payload = live.payloads([row]).get(row)
        vector = live.vectors(np.array([row]))[0].tolist() if with_vector else None
    return DocumentOut(id=key, payload=payload, vector=vector)
