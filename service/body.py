"""Request bodies: refused over ``max_body_bytes`` with 413 before they are read into memory,
whether the client declares a length or streams chunks."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body

__all__ = ["BodyLimit", "read_body"]


def _too_long(declared: bytes | None, limit: int) -> HTTPException | None:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return HTTPException(413, f"body of {int(declared)} bytes exceeds {limit}")
    return None


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole body (``declared``: the Content-Length header). Raises ``HTTPException(413)``
    past ``limit`` bytes, ``ClientDisconnect`` if the client goes away."""
    exc = _too_long(declared, limit)
    if exc is not None:
        raise exc
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise HTTPException(413, f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exc = _too_long(dict(scope.get("headers") or {}).get(b"content-length"), self.limit)
        if exc is not None:
            await Response(error_body(exc.detail), 413, media_type="application/json")(
                scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"body exceeds {self.limit} bytes")
            return message

        await self.app(scope, counted, send)
