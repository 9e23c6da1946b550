"""What every JSON POST/PUT endpoint does around its work, once: the key, the content type, the
body read under its limit, and every failure as the app's reply (never a crash).
``service.routes.search.answer`` and ``service.routes.documents.write_answer`` are this with
their own key check and handler; both doors (``service.routes.fast`` and the FastAPI routes,
:func:`routed`) call those."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from ebr.errors import InputError
from service.body import read_body
from service.deps import ServiceState
from service.errors import error_body, reply_for, validation_message
from service.settings import Settings

__all__ = ["json_answer", "openapi_body", "routed", "Answer"]

Answer = Callable[[ServiceState, str, dict[bytes, bytes], Receive],
                  Awaitable[tuple[int, bytes, dict[str, str]]]]


async def json_answer(state: ServiceState, path: str, headers: dict[bytes, bytes],
                      receive: Receive, check: Callable[[Settings, str], None],
                      handle: Callable[[bytes], Awaitable[bytes]]
                      ) -> tuple[int, bytes, dict[str, str]]:
    """(status, JSON body, extra headers) of one request: ``check`` the key, the content
    type, the body, then ``handle(body)``; pydantic's errors are 422, the rest the app's
    reply for them. Raises ``ClientDisconnect`` when there is no one to answer."""
    try:
        check(state.settings, headers.get(b"authorization", b"").decode("latin-1"))
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if not (ctype.endswith(b"/json") or ctype.endswith(b"+json")):
            raise InputError(f"body: Content-Type must be application/json, got "
                             f"{ctype.decode('latin-1')[:100] or 'none'!r}")
        body = await read_body(receive, headers.get(b"content-length"),
                               state.settings.max_body_bytes)
        return 200, await handle(body), {}
    except ValidationError as e:
        state.metrics.errors.labels("RequestValidationError").inc()
        return 422, error_body(validation_message(e.errors())), {}
    except ClientDisconnect:
        raise
    except Exception as e:  # every failure gets the app's reply for it, never a crash
        status, message, extra = reply_for(e, state.metrics, path)
        return status, error_body(message), extra


def openapi_body(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI ``requestBody`` of a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def routed(request: Request, path: str, answer: Answer) -> Response:
    """A FastAPI route answered by ``answer`` (the same as the pure-ASGI door)."""
    status, reply, extra = await answer(request.app.state.ebr, path,
                                        dict(request.scope["headers"]), request.receive)
    return Response(reply, status, headers=extra or None, media_type="application/json")
