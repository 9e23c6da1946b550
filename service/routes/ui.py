"""The web page (``GET /ui/``: plain HTML, CSS and JavaScript from ``service/ui``, no network
beyond this server) and what only it needs: ``GET /index/recall``, recall against exact
search on sampled documents (``ebr.eval.sampled``), measured on demand and kept per
generation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ebr.eval.sampled import sampled_recall
from ebr.types import JsonObject
from service.deps import GenerationDep, StateDep, require_read
from service.schemas import ErrorResponse, RecallReport

router = APIRouter(tags=["ui"])

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
# the page loads only its own files and talks only to this server
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class UiFiles(StaticFiles):
    """The page's files, with a content security policy and no caching across upgrades."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers["content-security-policy"] = CSP
        resp.headers["x-content-type-options"] = "nosniff"
        resp.headers["cache-control"] = "no-cache"
        return resp


@router.get("/index/recall", response_model=RecallReport, dependencies=[Depends(require_read)],
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                       422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def index_recall(gen: GenerationDep, state: StateDep,
                       queries: Annotated[int, Query(ge=1, le=200)] = 50,
                       k: Annotated[int, Query(ge=1, le=100)] = 10,
                       candidates: Annotated[int | None, Query(ge=1)] = None) -> JsonObject:
    """Recall@k of the two-stage search against exact search, per nprobe, on ``queries``
    sampled documents (each searched with its own vector, itself left out), with p50
    latency; at the server's candidate count unless given. Kept until the next generation."""
    s = state.settings
    kc = min(candidates or s.default_candidates, s.max_candidates)
    key = (gen.number, queries, k, kc)

    def measure() -> JsonObject:
        with state.recall_lock:  # one at a time: each reads the whole dense store
            if key not in state.recall:
                rows, meta = sampled_recall(gen.searcher, queries=min(
                    queries, gen.searcher.index.ntotal), k=min(k, gen.searcher.ntotal - 1),
                    candidates=kc)
                state.recall = {key: {"rows": rows, **meta, "generation": gen.number,
                                      "index_version": gen.version}}
            return dict(state.recall[key])
    return await run_in_threadpool(measure)
