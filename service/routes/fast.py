"""Pure-ASGI doors for the hot endpoints, answered before the FastAPI app.

``POST /search``, ``POST /search/batch`` (:func:`service.routes.search.answer`), ``PUT
/documents`` and ``POST /documents/delete`` (:func:`service.routes.documents.write_answer`):
the same functions as the FastAPI routes, with the same request ids and metrics, without
FastAPI's dependency solving, request object and its six middleware layers. At 2 cores that
per-request CPU is what bounds HTTP throughput (``bench/bench_load.py``), and what a write
mix takes from searches (``bench/bench_mutations.py``). ``service.app.EbrApp`` calls it for
the requests :meth:`FastEndpoints.handles`; everything else goes through FastAPI as usual.
"""

from __future__ import annotations

import time

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.deps import ServiceState
from service.observability import new_request_id, request_id
from service.routes import documents, search
from service.routes.door import Answer

__all__ = ["FastEndpoints"]



def _routes(router: APIRouter, answer: Answer) -> dict[tuple[str, str], tuple[APIRoute, Answer]]:
    return {(method, r.path): (r, answer) for r in router.routes if isinstance(r, APIRoute)
            for method in (r.methods or ()) if method != "GET"}


class FastEndpoints:
    """The hot routes, keyed by (method, path), each with its answer function."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.routes = {**_routes(search.router, search.answer),
                       **_routes(documents.router, documents.write_answer)}

    def handles(self, scope: Scope) -> bool:
        return scope["type"] == "http" and (scope["method"], _route_path(scope)) in self.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        route, answer = self.routes[(scope["method"], path)]
        scope["route"] = route
        state = self.state
        headers = dict(scope["headers"])
        rid = new_request_id(headers.get(b"x-request-id"))
        token = request_id.set(rid)
        status, t0 = 500, time.perf_counter()
        try:
            try:
                status, reply, extra = await answer(state, path, headers, receive)
            except ClientDisconnect:
                status = 499  # nobody to answer; counted, as nginx does
                return
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(reply)).encode()),
                (b"x-request-id", rid.encode()),
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())]})
            await send({"type": "http.response.body", "body": reply})
        finally:
            request_id.reset(token)
            state.metrics.observe_request(path, status, time.perf_counter() - t0)


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
