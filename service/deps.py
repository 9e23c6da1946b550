"""Request dependencies: the opened index (searcher), the optional text encoder, the settings.

They are ``async def`` on purpose: they never block, and a sync dependency costs a thread-pool
hop per request (together with the pure-ASGI middleware this took /search from 702 to 1,039 QPS
with one worker under wrk).
"""

from __future__ import annotations

import hmac
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from ebr.errors import IndexChangedError, IndexNotReadyError
from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardBackends, ShardedSearcher
from service.observability import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class Generation:
    """One opened index and what belongs to it; swapped as a whole by a reload, so a request
    that took it sees one consistent index, encoder and version to the end."""

    searcher: Searcher | ShardedSearcher
    encoder: Any  # ebr.io.encoder.TextEncoder when the index records one, else None
    version: str
    number: int  # 1 after the first successful open, +1 per reload

    def broken(self) -> str | None:
        """Why this generation may no longer be read (a file of it changed on disk), or None."""
        index = self.searcher.index
        for oi in getattr(index, "shards", (index,)):
            guard = getattr(oi, "guard", None)
            if guard is not None and guard.broken is not None:
                return str(guard.broken)
        return None


@dataclass(frozen=True)
class Refusal:
    """The last build at ``index_dir`` that failed verification (the watcher skips it until
    its files change)."""

    identity: Any  # service.generations.index_identity of the refused build
    version: str | None  # its version when its manifest could be read
    reason: str  # without absolute paths (service.generations.public_reason)
    at: str  # UTC time of the refusal


def _one_omp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)


@dataclass
class ServiceState:
    settings: Settings
    current: Generation | None = None
    problems: list[str] = field(default_factory=list)  # why the service is not ready
    metrics: Metrics = field(default_factory=Metrics)
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    shard_backends: ShardBackends | None = None  # sharded indexes: index -> backend per shard (None: local)
    batcher: Any = None  # service.batcher.MicroBatcher when micro-batching is on
    text_batcher: Any = None  # service.batcher.TextBatcher unless text_batch_max is 0
    served_identity: Any = None  # service.generations.index_identity of the served build
    refused: Refusal | None = None  # the last build refused since the served one was loaded
    # writes run here, one at a time (they are serialised by the log anyway): a write waiting
    # for the log's lock or its fsync never holds one of the search threads
    writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="ebr-write", initializer=_one_omp_thread))
    # GET /index/recall: the last answers (generation, queries, k, candidates) -> reply, and
    # one measurement at a time (each reads the whole dense store)
    recall: dict[tuple[int, int, int, int], Any] = field(default_factory=dict)
    recall_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def generation(self) -> int:
        return self.current.number if self.current is not None else 0


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ebr
    return state


def current_generation(state: ServiceState) -> Generation:
    """The generation to serve a request with, read once (a reload may swap it meanwhile)."""
    current = state.current
    if current is None:
        raise IndexNotReadyError("no index is open: " + ("; ".join(state.problems) or "starting"))
    broken = current.broken()
    if broken is not None:
        raise IndexChangedError(broken)
    return current


async def get_generation(request: Request) -> Generation:
    return current_generation(request.app.state.ebr)


StateDep = Annotated[ServiceState, Depends(get_state)]
GenerationDep = Annotated[Generation, Depends(get_generation)]


def _bearer(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: tuple[str, ...]) -> bool:
    found = False
    for key in keys:  # compare against every key: no early exit to time
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def check_read(settings: Settings, authorization: str) -> None:
    """Read endpoints: open when no API keys are set, else any read or admin key.
    ``authorization``: the request's Authorization header ("" when absent)."""
    if not settings.api_keys:
        return
    token = _bearer(authorization)
    if token is None:
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    if not _matches(token, settings.api_keys + settings.admin_keys + settings.write_keys):
        raise HTTPException(403, "invalid API key")


async def require_read(request: Request) -> None:
    check_read(request.app.state.ebr.settings, request.headers.get("authorization", ""))


def check_write(settings: Settings, authorization: str) -> None:
    """Write endpoints: never open; a write or admin key."""
    keys = settings.write_keys + settings.admin_keys
    if not keys:
        raise HTTPException(403, "writes are disabled: set EBR_WRITE_KEYS (or EBR_ADMIN_KEYS)")
    token = _bearer(authorization)
    if token is None:
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    if not _matches(token, keys):
        raise HTTPException(403, "this key may not write (EBR_WRITE_KEYS, EBR_ADMIN_KEYS)")


async def require_write(request: Request) -> None:
    check_write(request.app.state.ebr.settings, request.headers.get("authorization", ""))


async def require_admin(request: Request) -> None:
    """Admin endpoints: never open; disabled unless admin keys are set."""
    s = request.app.state.ebr.settings
    if not s.admin_keys:
        raise HTTPException(403, "admin endpoints are disabled: set EBR_ADMIN_KEYS")
    token = _bearer(request.headers.get("authorization", ""))
    if token is None:
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    if not _matches(token, s.admin_keys):
        raise HTTPException(403, "invalid admin key")
