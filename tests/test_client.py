"""``ebr.client``: retries (injected 503 / 429 / dropped connections, without the caller
noticing), errors as ebr's exceptions, and every call against the real server, equal to the
in-process searcher."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import served

from ebr.client import AsyncClient, Client, Document, Query
from ebr.errors import (
    AuthError,
    IndexNotReadyError,
    InputError,
    RequestTooLargeError,
    ServiceError,
    WritesUnsupportedError,
)
from ebr.index.reader import open_index
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams

READ, WRITE = "read-key-0123456789", "write-key-0123456789"
HIT = {"result": {"hits": [{"id": 7, "score": 0.5}], "stats": {
    "mode": "two_stage", "nprobe": 4, "candidates": 50, "found": 50, "reranked": 50,
    "returned": 1, "dense_bytes_read": 6400, "coarse_ms": 0.1, "rerank_ms": 0.2,
    "index_version": "abc"}}, "status": "ok", "time": 0.001}


def _scripted(replies: list[object]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with ``replies`` in order: (status, body), a response, or an
    exception to raise."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = replies.pop(0)
        if isinstance(r, Exception):
            raise r
        if isinstance(r, httpx.Response):
            return r
        status, body = r  # type: ignore[misc]
        return httpx.Response(status, json=body)
    return httpx.MockTransport(handler), seen


def test_one_injected_503_is_retried_without_the_caller_noticing() -> None:
    transport, seen = _scripted([(503, {"status": {"error": "no index open"}}), (200, HIT)])
    with Client("http://ebr", transport=transport, backoff=0.001, seed=0) as c:
        res = c.search([0.1, 0.2], k=1, nprobe=4)
    assert res.ids == [7] and res.stats.nprobe == 4 and res.hits[0].score == 0.5
    assert len(seen) == 2 and c.attempts == 2
    assert json.loads(seen[1].content) == json.loads(seen[0].content)  # the same request


def test_connection_errors_and_429_are_retried_then_raised() -> None:
    transport, seen = _scripted([httpx.ConnectError("refused"), (429, {}), (502, {}),
                                 (200, HIT)])
    with Client("http://ebr", transport=transport, backoff=0.001, retries=3) as c:
        assert c.search([1.0], k=1).ids == [7]
    assert len(seen) == 4
    transport, seen = _scripted([httpx.ConnectError("refused")] * 3)
    with Client("http://ebr", transport=transport, backoff=0.001, retries=2) as c, \
            pytest.raises(ServiceError, match="could not reach"):
        c.health()
    assert len(seen) == 3  # the first try and two retries
    transport, seen = _scripted([(503, {"status": {"error": "starting"}})] * 2)
    with Client("http://ebr", transport=transport, backoff=0.001, retries=1) as c, \
            pytest.raises(IndexNotReadyError, match="starting") as e:
        c.index_info()
    assert e.value.status_code == 503


def test_retry_after_is_honoured_and_backoff_is_capped(monkeypatch) -> None:
    """The waits themselves, recorded (not the wall clock, which a busy machine stretches)."""
    import ebr.client

    waits: list[float] = []
    monkeypatch.setattr(ebr.client.time, "sleep", waits.append)
    transport, _ = _scripted([httpx.Response(429, headers={"retry-after": "0.2"}), (200, HIT)])
    c = Client("http://ebr", transport=transport, backoff=0.0, max_backoff=0.3)
    assert c.search([1.0]).ids == [7]
    assert waits == [pytest.approx(0.2)]  # backoff 0, but the server asked for 0.2 s
    waits.clear()
    transport, _ = _scripted([(503, {})] * 4 + [(200, HIT)])
    c = Client("http://ebr", transport=transport, backoff=10.0, max_backoff=0.05, retries=4)
    assert c.search([1.0]).ids == [7]
    assert len(waits) == 4 and all(0 <= w <= 0.05 for w in waits)  # capped at max_backoff


@pytest.mark.parametrize("status,exc", [(401, AuthError), (403, AuthError), (422, InputError),
                                        (413, RequestTooLargeError), (404, InputError),
                                        (409, WritesUnsupportedError), (500, ServiceError)])
def test_errors_are_ebr_exceptions_with_the_api_message(status: int, exc: type) -> None:
    transport, seen = _scripted([(status, {"status": {"error": "k must be in [1, 9]"}})])
    with Client("http://ebr", transport=transport) as c, \
            pytest.raises(exc, match=r"HTTP \d+: k must be in \[1, 9\]") as e:
        c.search([1.0], k=99)
    assert e.value.status_code == status and len(seen) == 1  # not retried


def test_query_bodies_and_bad_input() -> None:
    body = Query(np.array([1, 2], dtype=np.float32), k=3, nprobe=8, filter={"has_id": [1]},
                 with_payload=["title"]).body()
    assert body == {"k": 3, "params": {"rerank": True, "exact": False, "nprobe": 8},
                    "vector": [1.0, 2.0], "filter": {"has_id": [1]}, "with_payload": ["title"]}
    assert Query(text="hello").body()["text"] == "hello"
    with pytest.raises(InputError, match="not both"):
        Query([1.0], text="x").body()
    with pytest.raises(InputError, match="retries"):
        Client(retries=-1)
    with pytest.raises(InputError, match="batch_size"):
        Client(batch_size=0)


def test_client_against_the_server(index_ip: Path, ds_ip, tmp_path: Path) -> None:
    """Every call over real HTTP; searches equal the in-process searcher's."""
    shutil.copytree(index_ip, tmp_path / "idx")
    searcher = Searcher(open_index(tmp_path / "idx"))
    with served(tmp_path / "idx", tmp_path / "log", api_keys=READ, write_keys=WRITE) as (url, _):
        with Client(url) as anonymous, pytest.raises(AuthError, match="401"):
            anonymous.index_info()
        with Client(url, api_key=READ) as c:
            info = c.index_info()
            assert (info.count, info.dim, info.spec) == (3000, 32, "IVF16,PQ8")
            assert c.health().status == "ok" and c.ready()
            res = c.search(ds_ip.xq[0], k=5, nprobe=4, candidates=50)
            ref, _ = searcher.search(ds_ip.xq[0], SearchParams(k=5, nprobe=4, candidates=50))
            assert res.ids == searcher.external_ids(ref.ids[0])
            assert np.allclose([h.score for h in res.hits], ref.scores[0], atol=1e-5)
            batch = c.search_batch([Query(ds_ip.xq[1], k=3, exact=True),
                                    {"vector": ds_ip.xq[2].tolist(), "k": 2}])
            assert [len(b.hits) for b in batch] == [3, 2] and batch[0].stats.mode == "exact"
            assert c.search_query({"vector": ds_ip.xq[2].tolist(), "k": 2}).ids == batch[1].ids
            with pytest.raises(InputError, match="422"):
                c.search([1.0, 2.0])
            with pytest.raises(AuthError, match="403"):
                c.upsert([Document(1, vector=ds_ip.xq[0])])
        with Client(url, api_key=WRITE, batch_size=2) as w:
            ack = w.upsert([Document(10_000 + i, vector=ds_ip.xq[i], payload={"i": i})
                            for i in range(5)])
            assert ack.count == 5 and ack.requests == 3
            got = w.get(10_003, with_vector=True)
            assert got is not None and got.payload == {"i": 3}
            assert np.allclose(got.vector, ds_ip.xq[3], atol=1e-5)
            assert w.get(99_999) is None
            assert w.search(ds_ip.xq[4], k=1, exact=True).ids == [10_004]
            assert w.delete([10_003, 99_999]).count == 1 and w.get(10_003) is None
            sync = [w.search(ds_ip.xq[i], k=4, nprobe=4, candidates=50).ids for i in range(6)]

        async def run() -> list[list[object]]:
            async with AsyncClient(url, api_key=READ) as ac:
                out = await asyncio.gather(*(ac.search(ds_ip.xq[i], k=4, nprobe=4,
                                                       candidates=50) for i in range(6)))
                assert (await ac.index_info()).count == 3004
                return [r.ids for r in out]
        assert asyncio.run(run()) == sync
