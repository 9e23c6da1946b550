"""The OpenAPI schema as the server really enforces it, and ``/docs`` served offline.

FastAPI's schema is built from the pydantic models; this adds what only the running server
knows, so generated clients and schema-driven fuzzers get it right: the bearer scheme (required
on the read endpoints when API keys are set, on ``/admin/*`` always), and, once an index is
open, its dimension (``vector`` has exactly ``dim`` items), whether it takes text, the
ranges of ``k``, ``nprobe``,
the candidate count and the batch size. Two rules remain outside JSON Schema and are stated in
the operation descriptions: the candidate count must be >= k, and the per-request sums
(``EBR_MAX_*_PER_REQUEST``: 413). Swagger UI's files come from the ``fastapi-offline`` package,
so ``/docs`` works with no network.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.deps import ServiceState
from service.routes.search import k_limit
from service.schemas import BatchRequest, DeleteRequest, SearchRequest, UpsertRequest

__all__ = ["install_openapi"]

READ_PATHS = ("/search", "/search/batch", "/index", "/documents/{doc_id}")
RULES = ("\n\nLimits per request (413 when exceeded): the sum of k over the searches <= {hits}, "
         "the sum of candidates <= {cand}, returned vectors <= {vec}, exact searches <= {exact}. "
         "A search's candidate count (candidates / k_coarse, or ceil(k x oversampling)) must "
         "be >= k (422).")


def _patch(schema: dict[str, Any], state: ServiceState) -> dict[str, Any]:
    s = state.settings
    out = copy.deepcopy(schema)
    comps = out.setdefault("components", {})
    # the search and write routes read their bodies themselves
    for model in (SearchRequest, BatchRequest, UpsertRequest, DeleteRequest):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        comps.setdefault("schemas", {}).update(body.pop("$defs", {}))
        comps["schemas"][model.__name__] = body
    comps.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "an API key (EBR_API_KEYS for reads, EBR_WRITE_KEYS for writes, "
                       "EBR_ADMIN_KEYS for /admin and writes)"}
    for path, ops in out.get("paths", {}).items():
        for op in ops.values():
            if path.startswith("/admin/") or (path.startswith("/documents") and
                                              path != "/documents/{doc_id}"):
                op["security"] = [{"bearer": []}]
            elif path in READ_PATHS:
                op["security"] = [{"bearer": []}] if s.api_keys else [{}, {"bearer": []}]
            if path.startswith("/search"):
                op["description"] = (op.get("description") or "") + RULES.format(
                    hits=s.max_hits_per_request, cand=s.max_candidates_per_request,
                    vec=s.max_vectors_per_request, exact=s.max_exact_per_request)
    schemas = comps.get("schemas", {})
    for name, field in (("BatchRequest", "searches"), ("UpsertRequest", "documents"),
                         ("DeleteRequest", "ids")):
        items = schemas.get(name, {}).get("properties", {}).get(field)
        if items is not None:
            items["maxItems"] = s.max_batch
    gen = state.current
    if gen is None:
        return out
    index = gen.searcher.index
    req = schemas["SearchRequest"]["properties"]  # ...and its dimension
    req["vector"]["minItems"] = req["vector"]["maxItems"] = int(index.dim)
    req["k"]["maximum"] = k_limit(s, int(index.ntotal))
    doc = schemas["DocumentIn"]["properties"]
    doc["vector"]["minItems"] = doc["vector"]["maxItems"] = int(index.dim)
    if gen.encoder is None:  # no text on this index: "text" is not a field at all
        for name, required in (("SearchRequest", ["vector"]), ("DocumentIn", ["id", "vector"])):
            del schemas[name]["properties"]["text"]
            schemas[name].pop("oneOf", None)
            schemas[name]["required"] = required
    params = schemas["SearchParamsIn"]["properties"]
    params["nprobe"]["maximum"] = int(index.nlist)
    for name in ("candidates", "k_coarse"):
        params[name]["maximum"] = int(min(s.max_candidates, index.ntotal))
    return out


def install_openapi(app: FastAPI, state: ServiceState) -> None:
    """Replace ``app.openapi`` (rebuilt when the served generation changes) and serve
    ``/docs`` from local files."""
    cache: dict[int, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        key = state.generation
        if key not in cache:
            base = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            cache.clear()
            cache[key] = _patch(base, state)
        return cache[key]

    app.openapi = openapi  # type: ignore[method-assign]
    import fastapi_offline

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-static", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ebr API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")
