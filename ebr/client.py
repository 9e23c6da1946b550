"""``ebr.client``: the ebr service from Python, over HTTP (httpx; extra ``client``).

    with Client("http://127.0.0.1:8000", api_key="...") as ebr:
        res = ebr.search(vector, k=10, nprobe=32, filter={"must": [...]}, with_payload=True)
        for hit in res.hits:
            print(hit.id, hit.score, hit.payload)
        ebr.upsert([Document("doc-7", vector=v, payload={"lang": "en"})])

``AsyncClient`` has the same methods as coroutines. Results are frozen dataclasses
(:class:`SearchResult`, :class:`Hit`, :class:`IndexInfo`, ...). Failures are ebr's exceptions
(``ebr.errors``) with the reply's ``status_code``: 401/403 :class:`AuthError`, 404 and 422
:class:`InputError`, 413 :class:`RequestTooLargeError`, 409 :class:`WritesUnsupportedError`,
503 :class:`IndexNotReadyError`, other 5xx and unreachable servers :class:`ServiceError`.

Every call is idempotent (searches, reads, upserts by id, deletes by id), so connection
errors and replies 429, 502, 503 and 504 are retried, ``retries`` times, after an exponential
backoff with full jitter (``backoff`` x 2^attempt, at most ``max_backoff`` seconds, or the
reply's ``Retry-After`` when it says more). A read timeout is not retried: the request may
still be running, and repeating a slow request only adds load.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

try:
    import httpx
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("ebr.client needs httpx: pip install 'ebr[client]'") from None
import numpy as np
import numpy.typing as npt

from ebr.errors import (
    AuthError,
    EbrError,
    IndexNotReadyError,
    InputError,
    RequestTooLargeError,
    ServiceError,
    WritesUnsupportedError,
)
from ebr.types import ExternalId, JsonObject, JsonValue

__all__ = ["Client", "AsyncClient", "Query", "Document", "Hit", "Stats", "SearchResult",
           "IndexInfo", "Health", "WriteAck", "StoredDocument", "RETRY_STATUSES"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                 httpx.ReadError, httpx.WriteError, httpx.PoolTimeout)
_ERRORS: dict[int, type[EbrError]] = {401: AuthError, 403: AuthError, 404: InputError,
                                      409: WritesUnsupportedError, 413: RequestTooLargeError,
                                      422: InputError, 503: IndexNotReadyError}
_T = TypeVar("_T")
Vector = Sequence[float] | npt.NDArray[np.floating]


@dataclass(frozen=True)
class Query:
    """One search: a ``vector`` or a ``text`` (when the index has an encoder), ``k``, and
    the search parameters (None: the server's defaults)."""

    vector: Vector | None = None
    text: str | None = None
    k: int = 10
    nprobe: int | None = None
    candidates: int | None = None
    rerank: bool = True
    exact: bool = False
    filter: JsonObject | None = None
    with_payload: bool | Sequence[str] = False
    with_vector: bool = False

    def body(self) -> JsonObject:
        if (self.vector is None) == (self.text is None):
            raise InputError("give a query vector or a text, not both and not neither")
        params: JsonObject = {"rerank": self.rerank, "exact": self.exact}
        if self.nprobe is not None:
            params["nprobe"] = self.nprobe
        if self.candidates is not None:
            params["candidates"] = self.candidates
        out: JsonObject = {"k": self.k, "params": params}
        if self.vector is not None:
            out["vector"] = np.asarray(self.vector, dtype=np.float64).ravel().tolist()
        else:
            out["text"] = self.text
        if self.filter is not None:
            out["filter"] = dict(self.filter)
        if self.with_payload:
            out["with_payload"] = self.with_payload if isinstance(self.with_payload, bool) \
                else list(self.with_payload)
        if self.with_vector:
            out["with_vector"] = True
        return out


@dataclass(frozen=True)
class Document:
    """A document to write: its id, a ``vector`` or a ``text``, and an optional payload."""

    id: ExternalId
    vector: Vector | None = None
    text: str | None = None
    payload: JsonObject | None = None

    def body(self) -> JsonObject:
        out: JsonObject = {"id": self.id}
        if self.vector is not None:
            out["vector"] = np.asarray(self.vector, dtype=np.float64).ravel().tolist()
        if self.text is not None:
            out["text"] = self.text
        if self.payload is not None:
            out["payload"] = dict(self.payload)
        return out


@dataclass(frozen=True)
class Hit:
    id: ExternalId
    score: float
    vector: tuple[float, ...] | None = None
    payload: JsonObject | None = None


@dataclass(frozen=True)
class Stats:
    """How the server answered one search (its ``stats``; times in milliseconds)."""

    mode: Literal["two_stage", "coarse_only", "exact"]
    found: int
    reranked: int
    returned: int
    dense_bytes_read: int
    coarse_ms: float
    rerank_ms: float
    index_version: str
    nprobe: int | None = None
    candidates: int | None = None
    batch: int | None = None
    matches: int | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[Hit, ...]
    stats: Stats

    @property
    def ids(self) -> list[ExternalId]:
        return [h.id for h in self.hits]


@dataclass(frozen=True)
class IndexInfo:
    """``GET /index``: the main facts as fields, everything in ``raw``."""

    spec: str
    metric: str
    count: int
    dim: int
    index_version: str
    generation: int
    text_queries: bool
    raw: JsonObject = field(repr=False)


@dataclass(frozen=True)
class Health:
    status: str
    reasons: tuple[str, ...] = ()
    generation: int | None = None
    index_version: str | None = None


@dataclass(frozen=True)
class WriteAck:
    """A write in the server's write-ahead log: the last record's ``operation_id`` and the
    documents written (or deleted ones that existed), over every request it took."""

    operation_id: int
    count: int
    requests: int = 1


@dataclass(frozen=True)
class StoredDocument:
    id: ExternalId
    payload: JsonObject | None = None
    vector: tuple[float, ...] | None = None


def _result(r: Any) -> SearchResult:
    hits = tuple(Hit(h["id"], float(h["score"]),
                     tuple(h["vector"]) if h.get("vector") is not None else None,
                     h.get("payload")) for h in r["hits"])
    stats = Stats(**{k: v for k, v in r["stats"].items() if k in Stats.__dataclass_fields__})
    return SearchResult(hits, stats)


def _info(r: Any) -> IndexInfo:
    return IndexInfo(str(r["spec"]), str(r["metric"]), int(r["count"]), int(r["dim"]),
                     str(r["index_version"]), int(r["generation"]), bool(r["text_queries"]), r)


def _health(r: Any) -> Health:
    return Health(str(r.get("status")), tuple(r.get("reasons") or ()), r.get("generation"),
                  r.get("index_version"))


def _ack(acks: list[Any]) -> WriteAck:
    return WriteAck(int(acks[-1]["operation_id"]), sum(int(a["count"]) for a in acks),
                    len(acks))


def _stored(r: Any) -> StoredDocument:
    v = r.get("vector")
    return StoredDocument(r["id"], r.get("payload"), tuple(v) if v is not None else None)


def _doc_path(doc_id: ExternalId) -> str:
    return "/documents/" + quote(str(doc_id), safe="")


def _error(resp: httpx.Response) -> EbrError:
    try:
        message = str(resp.json()["status"]["error"])
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500] or resp.reason_phrase
    cls = _ERRORS.get(resp.status_code, ServiceError if resp.status_code >= 500 else InputError)
    exc = cls(f"HTTP {resp.status_code}: {message}")
    exc.status_code = resp.status_code
    return exc


def _delay(attempt: int, backoff: float, cap: float, resp: httpx.Response | None,
           rng: random.Random) -> float:
    """Full jitter over the exponential step; at least the reply's Retry-After (seconds)."""
    wait = rng.uniform(0, min(cap, backoff * 2 ** attempt))
    after = resp.headers.get("retry-after") if resp is not None else None
    if after is not None:
        try:
            wait = max(wait, min(cap, float(after)))
        except ValueError:
            pass
    return wait


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[a:a + size] for a in range(0, len(items), size)] or [items]


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int,
                 backoff: float, max_backoff: float, batch_size: int, seed: int | None) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise InputError("retries, backoff and max_backoff must be >= 0")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.url, self.retries, self.backoff = url.rstrip("/"), retries, backoff
        self.max_backoff, self.batch_size = max_backoff, batch_size
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._rng = random.Random(seed)
        self.attempts = 0  # requests sent, retries included (what a test of retries reads)

    def _retry(self, attempt: int, resp: httpx.Response | None,
               exc: Exception | None) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (raise)."""
        if attempt >= self.retries:
            return None
        if exc is not None or (resp is not None and resp.status_code in RETRY_STATUSES):
            return _delay(attempt, self.backoff, self.max_backoff, resp, self._rng)
        return None

    @staticmethod
    def _finish(resp: httpx.Response | None, exc: Exception | None) -> Any:
        if resp is None:
            raise ServiceError(f"could not reach the service: {exc}") from exc
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json()


def _query(q: Query | Mapping[str, JsonValue]) -> JsonObject:
    return q.body() if isinstance(q, Query) else dict(q)


def _document_batches(docs: Iterable[Document | Mapping[str, JsonValue]], size: int
                      ) -> Iterator[list[JsonObject]]:
    """Request bodies' document lists, ``size`` at a time, built as they are sent."""
    batch: list[JsonObject] = []
    for d in docs:
        batch.append(d.body() if isinstance(d, Document) else dict(d))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Client(_Base):
    """Synchronous client (thread-safe: one httpx connection pool)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.1,
                 max_backoff: float = 5.0, batch_size: int = 256, seed: int | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff, batch_size, seed)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout,
                                  transport=transport)

    def _call(self, method: str, path: str, body: object = None,
              params: Mapping[str, str] | None = None) -> Any:
        attempt = 0
        while True:
            resp, exc = None, None
            self.attempts += 1
            try:
                resp = self._http.request(method, path, json=body, params=params)
            except _RETRY_ERRORS as e:
                exc = e
            except httpx.TimeoutException as e:
                raise ServiceError(f"timed out after {self.timeout} s: {e}") from e
            wait = self._retry(attempt, resp, exc)
            if wait is None:
                return self._finish(resp, exc)
            time.sleep(wait)
            attempt += 1

    def search(self, vector: Vector | None = None, *, text: str | None = None, k: int = 10,
               nprobe: int | None = None, candidates: int | None = None, rerank: bool = True,
               exact: bool = False, filter: JsonObject | None = None,
               with_payload: bool | Sequence[str] = False, with_vector: bool = False
               ) -> SearchResult:
        """One search (:class:`Query` says what each parameter means)."""
        q = Query(vector, text, k, nprobe, candidates, rerank, exact, filter, with_payload,
                  with_vector)
        return _result(self._call("POST", "/search", q.body())["result"])

    def search_query(self, query: Query | Mapping[str, JsonValue]) -> SearchResult:
        """One search given as a :class:`Query` or as the JSON body ``POST /search`` takes."""
        return _result(self._call("POST", "/search", _query(query))["result"])

    def search_batch(self, queries: Sequence[Query | Mapping[str, JsonValue]]
                     ) -> list[SearchResult]:
        """Searches in one request, answered in order."""
        out = self._call("POST", "/search/batch", {"searches": [_query(q) for q in queries]})
        return [_result(r) for r in out["result"]]

    def index_info(self) -> IndexInfo:
        return _info(self._call("GET", "/index"))

    def health(self) -> Health:
        return _health(self._call("GET", "/healthz"))

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 now (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def upsert(self, documents: Iterable[Document | Mapping[str, JsonValue]]) -> WriteAck:
        """Insert or replace documents, ``batch_size`` per request (each all or nothing; an
        error stops at the failed request, the earlier ones stay written)."""
        acks = [self._call("PUT", "/documents", {"documents": part})
                for part in _document_batches(documents, self.batch_size)]
        if not acks:
            raise InputError("documents: give at least one")
        return _ack(acks)

    def delete(self, ids: Sequence[ExternalId]) -> WriteAck:
        return _ack([self._call("POST", "/documents/delete", {"ids": list(part)})
                     for part in _chunks(list(ids), self.batch_size)])

    def get(self, doc_id: ExternalId, with_vector: bool = False) -> StoredDocument | None:
        """A stored document, or None when no document has that id."""
        try:
            return _stored(self._call("GET", _doc_path(doc_id),
                                      params={"with_vector": str(with_vector).lower()}))
        except InputError as e:
            if e.status_code == 404:
                return None
            raise

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls as :class:`Client`, as coroutines (one httpx.AsyncClient pool)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.1,
                 max_backoff: float = 5.0, batch_size: int = 256, seed: int | None = None,
                 max_connections: int = 100,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff, batch_size, seed)
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                       timeout=timeout, transport=transport, limits=limits)

    async def _call(self, method: str, path: str, body: object = None,
                    params: Mapping[str, str] | None = None) -> Any:
        attempt = 0
        while True:
            resp, exc = None, None
            self.attempts += 1
            try:
                resp = await self._http.request(method, path, json=body, params=params)
            except _RETRY_ERRORS as e:
                exc = e
            except httpx.TimeoutException as e:
                raise ServiceError(f"timed out after {self.timeout} s: {e}") from e
            wait = self._retry(attempt, resp, exc)
            if wait is None:
                return self._finish(resp, exc)
            await asyncio.sleep(wait)
            attempt += 1

    async def search(self, vector: Vector | None = None, *, text: str | None = None, k: int = 10,
                     nprobe: int | None = None, candidates: int | None = None, rerank: bool = True,
                     exact: bool = False, filter: JsonObject | None = None,
                     with_payload: bool | Sequence[str] = False, with_vector: bool = False
                     ) -> SearchResult:
        q = Query(vector, text, k, nprobe, candidates, rerank, exact, filter, with_payload,
                  with_vector)
        return _result((await self._call("POST", "/search", q.body()))["result"])

    async def search_query(self, query: Query | Mapping[str, JsonValue]) -> SearchResult:
        return _result((await self._call("POST", "/search", _query(query)))["result"])

    async def search_batch(self, queries: Sequence[Query | Mapping[str, JsonValue]]
                           ) -> list[SearchResult]:
        out = await self._call("POST", "/search/batch",
                               {"searches": [_query(q) for q in queries]})
        return [_result(r) for r in out["result"]]

    async def index_info(self) -> IndexInfo:
        return _info(await self._call("GET", "/index"))

    async def health(self) -> Health:
        return _health(await self._call("GET", "/healthz"))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def upsert(self, documents: Iterable[Document | Mapping[str, JsonValue]]
                     ) -> WriteAck:
        acks = [await self._call("PUT", "/documents", {"documents": part})
                for part in _document_batches(documents, self.batch_size)]
        if not acks:
            raise InputError("documents: give at least one")
        return _ack(acks)

    async def delete(self, ids: Sequence[ExternalId]) -> WriteAck:
        return _ack([await self._call("POST", "/documents/delete", {"ids": list(part)})
                     for part in _chunks(list(ids), self.batch_size)])

    async def get(self, doc_id: ExternalId, with_vector: bool = False
                  ) -> StoredDocument | None:
        try:
            return _stored(await self._call("GET", _doc_path(doc_id),
                                            params={"with_vector": str(with_vector).lower()}))
        except InputError as e:
            if e.status_code == 404:
                return None
            raise

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
