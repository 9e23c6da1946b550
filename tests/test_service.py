"""HTTP API against a tmp index: results match the library, every bad input is a 4xx."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ebr.index.reader import open_index
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(index_ip):
    with TestClient(create_app(Settings(index_dir=str(index_ip), max_batch=8, max_k=50,
                                        max_candidates=500))) as c:
        yield c


def _v(x):
    return np.asarray(x, dtype=np.float32).tolist()


def test_search_matches_library(client, index_ip, ds_ip):
    s = Searcher(open_index(index_ip))
    ref, st = s.search(ds_ip.xq[:1], SearchParams(k=5, nprobe=4, candidates=50))
    r = client.post("/search", json={"vector": _v(ds_ip.xq[0]), "k": 5,
                                     "params": {"nprobe": 4, "candidates": 50}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["time"] > 0
    hits = body["result"]["hits"]
    assert [h["id"] for h in hits] == ref.ids[0].tolist()
    np.testing.assert_allclose([h["score"] for h in hits], ref.scores[0], rtol=1e-6)
    stats = body["result"]["stats"]
    assert stats["mode"] == "two_stage" and stats["candidates"] == 50 and stats["nprobe"] == 4
    assert stats["returned"] == 5 and stats["dense_bytes_read"] == st.dense_bytes_read > 0
    assert "vector" not in hits[0]


def test_knobs(client, ds_ip):
    q = _v(ds_ip.xq[1])
    r = client.post("/search", json={"vector": q, "k": 4, "params": {"oversampling": 2.5}})
    assert r.json()["result"]["stats"]["candidates"] == 10
    r = client.post("/search", json={"vector": q, "k": 4, "params": {"refine_factor": 3}})
    assert r.json()["result"]["stats"]["candidates"] == 12
    r = client.post("/search", json={"vector": q, "k": 4, "params": {"candidates": 40}})
    assert r.json()["result"]["stats"]["candidates"] == 40
    r = client.post("/search", json={"vector": q, "k": 4, "params": {"k_coarse": 40}})  # alias
    assert r.json()["result"]["stats"]["candidates"] == 40
    r = client.post("/search", json={"vector": q, "k": 3, "params": {"rerank": False}})
    st = r.json()["result"]["stats"]
    assert st["mode"] == "coarse_only" and st["dense_bytes_read"] == 0
    r = client.post("/search", json={"vector": q, "k": 3, "params": {"exact": True},
                                     "return_vectors": True})
    hits = r.json()["result"]["hits"]
    assert r.json()["result"]["stats"]["mode"] == "exact" and len(hits[0]["vector"]) == 32
    ex = client.post("/search", json={"vector": q, "k": 3, "with_vector": True,
                                      "params": {"nprobe": 16, "candidates": 500}}).json()
    assert [h["id"] for h in ex["result"]["hits"]] == [h["id"] for h in hits]


def test_batch_in_order(client, ds_ip):
    searches = [{"vector": _v(ds_ip.xq[i]), "k": 1 + i} for i in range(3)]
    r = client.post("/search/batch", json={"searches": searches})
    assert r.status_code == 200
    res = r.json()["result"]
    assert [len(x["hits"]) for x in res] == [1, 2, 3]
    single = client.post("/search", json=searches[2]).json()["result"]["hits"]
    assert res[2]["hits"] == single


BAD = [
    ({"vector": [0.1] * 31}, "vector: dimension 31"),
    ({"vector": [0.1] * 32, "k": 0}, "k:"),
    ({"vector": [0.1] * 32, "k": 51}, "k: must be <= 50"),
    ({"vector": [0.1] * 32, "params": {"nprobe": 0}}, "params.nprobe"),
    ({"vector": [0.1] * 32, "params": {"nprobe": 17}}, "params.nprobe: must be <= 16"),
    ({"vector": [0.1] * 32, "params": {"candidates": 501}}, "params.candidates"),
    ({"vector": [0.1] * 32, "k": 20, "params": {"candidates": 10}}, "params.candidates: must be >="),
    ({"vector": [0.1] * 32, "params": {"oversampling": 0.5}}, "oversampling"),
    ({"vector": [0.1] * 32, "params": {"oversampling": 2, "candidates": 30}}, "not both"),
    ({"vector": [0.1] * 32, "colour": "red"}, "colour: Extra inputs"),
    ({"vector": [0.1] * 32, "params": {"colour": 1}}, "params.colour"),
    ({"vector": []}, "vector"),
    ({"vector": [1e300] + [0.1] * 31}, "vector: values must be within float32 range"),
    ({"vector": ["a"] * 32}, "vector.0"),
    ({}, "exactly one of 'vector' or 'text'"),
    ({"vector": [0.1] * 32, "text": "x"}, "exactly one"),
    ({"text": "hello"}, "no text encoder"),
    ([1, 2], "body"),
]


@pytest.mark.parametrize("body,msg", BAD)
def test_bad_requests(client, body, msg):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert msg in r.json()["status"]["error"]


@pytest.mark.parametrize("raw", [b'{"vector": [NaN' + b", 0.1" * 31 + b"]}",
                                 b'{"vector": [Infinity' + b", 0.1" * 31 + b"]}",
                                 b'{"vector": [1e999' + b", 0.1" * 31 + b"]}",
                                 b'{"vector": [0.1, ', b"\xff\xfe{}", b'{"text": "\xff\xfe"}'])
def test_non_finite_and_broken_json(client, raw):
    r = client.post("/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["status"]["error"]


def test_unknown_route_and_method(client):
    assert client.get("/nope").json() == {"status": {"error": "Not Found"}}
    assert client.get("/search").status_code == 405


def test_batch_errors(client, ds_ip):
    r = client.post("/search/batch", json={"searches": []})
    assert r.status_code == 422 and "searches" in r.json()["status"]["error"]
    r = client.post("/search/batch", json={"searches": [{"vector": _v(ds_ip.xq[0])}] * 9})
    assert r.status_code == 422 and "limit of 8" in r.json()["status"]["error"]
    r = client.post("/search/batch", json={"searches": [{"vector": _v(ds_ip.xq[0])},
                                                        {"vector": [1.0]}]})
    assert r.status_code == 422 and "searches[1].vector" in r.json()["status"]["error"]


def test_health_and_index(client, ds_ip):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/index").json()
    assert info["spec"] == "IVF16,PQ8" and info["count"] == len(ds_ip.xb) and info["dim"] == 32
    assert info["memory"]["coarse_ram_bytes"] < info["memory"]["dense_disk_bytes"]
    assert info["text_queries"] is False and info["codebooks"]["method"] == "kmeans"


def test_openapi_complete(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/search/batch", "/healthz", "/readyz", "/index"} <= set(spec["paths"])
    post = spec["paths"]["/search"]["post"]
    assert {"200", "422", "503"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert {"SearchRequest", "SearchResponse", "BatchRequest", "ErrorResponse", "Stats"} <= set(
        schemas)


def test_not_ready_when_index_broken(index_ip, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(index_ip, d)
    (d / "coarse.index").write_bytes(b"garbage")
    with TestClient(create_app(Settings(index_dir=str(d)))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "CorruptFileError" in r.json()["reasons"][0]
        r = c.post("/search", json={"vector": [0.0] * 32})
        assert r.status_code == 503 and "no index is open" in r.json()["status"]["error"]
        assert c.get("/index").status_code == 503


def test_settings_from_env():
    s = Settings.from_env({"EBR_INDEX_DIR": "/x", "EBR_DEFAULT_NPROBE": "8",
                           "EBR_VERIFY_CHECKSUMS": "false"})
    assert s.default_nprobe == 8 and s.verify_checksums is False
    with pytest.raises(ValueError, match="EBR_DEFAULT_NPROBE"):
        Settings.from_env({"EBR_INDEX_DIR": "/x", "EBR_DEFAULT_NPROBE": "many"})
    with pytest.raises(ValueError, match="EBR_INDEX_DIR"):
        Settings.from_env({})


def test_service_does_not_import_torch():
    code = ("import sys, service.app, ebr, ebr.search.searcher, index_build.__main__; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _same(a: list[dict], b: list[dict]) -> bool:
    """Same ids in the same order, scores equal to float32 rounding (a batched re-rank is one
    gemm, a single query's a gemv: the last bits may differ)."""
    return [h["id"] for h in a] == [h["id"] for h in b] and np.allclose(
        [h["score"] for h in a], [h["score"] for h in b], atol=1e-5)


def test_batch_groups_equal_params_and_matches_singles(client, ds_ip):
    """A batch with two parameter sets runs two batched searches; every answer equals the
    same search sent alone."""
    searches = [{"vector": _v(ds_ip.xq[i]), "k": 5,
                 "params": {"nprobe": 4 if i % 2 else 8, "candidates": 50}} for i in range(6)]
    res = client.post("/search/batch", json={"searches": searches}).json()["result"]
    assert [r["stats"]["batch"] for r in res] == [3] * 6
    for s, r in zip(searches, res, strict=True):
        alone = client.post("/search", json=s).json()["result"]
        assert alone["stats"]["batch"] == 1 and _same(alone["hits"], r["hits"])
        assert alone["stats"]["found"] == r["stats"]["found"] == 50


def test_micro_batching_shares_searches(index_ip, ds_ip):
    """Concurrent /search requests ride one batched search and get their own answers."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"vector": _v(ds_ip.xq[i]), "k": 5, "params": {"nprobe": 8, "candidates": 60}}
              for i in range(24)]
    with TestClient(create_app(Settings(index_dir=str(index_ip),
                                        micro_batch_inflight=0))) as c:
        assert c.app.state.ebr.batcher is None
        expect = [c.post("/search", json=b).json()["result"]["hits"] for b in bodies]
    with TestClient(create_app(Settings(index_dir=str(index_ip), micro_batch_inflight=1,
                                        micro_batch_max=8))) as c:
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda b: c.post("/search", json=b).json(), bodies))
        batcher = c.app.state.ebr.batcher
    assert all(_same(r["result"]["hits"], e) for r, e in zip(replies, expect, strict=True))
    sizes = [r["result"]["stats"]["batch"] for r in replies]
    assert max(sizes) > 1 and batcher.queries == 24 and batcher.batches < 24
    assert all(1 <= s <= 8 for s in sizes)


def test_text_batcher_lanes_run_calls_at_once_and_answer_each_text():
    """TextBatcher with 2 lanes: at most 2 encoder calls at once, never more; texts queued
    while both run go together in the next call; each request gets its own text's row, and an
    encoder failure answers only the requests of its call."""
    import asyncio
    import threading
    import time

    from service.batcher import TextBatcher

    class Fake:
        def __init__(self) -> None:
            self.lock, self.now, self.most, self.calls = threading.Lock(), 0, 0, []

        def encode(self, texts: list[str]) -> np.ndarray:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.calls.append(list(texts))
            time.sleep(0.05)
            with self.lock:
                self.now -= 1
            if "boom" in texts:
                raise ValueError("encoder failed")
            return np.array([[float(t[1:]), 0.0] for t in texts], dtype=np.float32)

    fake = Fake()
    batcher = TextBatcher(max_batch=8, lanes=2)

    async def run() -> list[object]:
        async def one(t: str) -> object:
            try:
                return float((await batcher.encode(fake, t))[0, 0])
            except ValueError as e:
                return str(e)
        return await asyncio.gather(*(one(f"t{i}") for i in range(20)), one("boom"))

    got = dict(zip([f"t{i}" for i in range(20)] + ["boom"], asyncio.run(run()), strict=True))
    failed = next(c for c in fake.calls if "boom" in c)
    assert len(failed) > 1 and all(got[t] == "encoder failed" for t in failed)
    assert all(got[t] == float(t[1:]) for t in got if t not in failed)
    assert fake.most == 2  # both lanes ran at once, never a third call
    # all 21 queued before the lanes started: full calls of 8, what was left in the last
    assert sorted(map(len, fake.calls)) == [5, 8, 8]
    assert batcher.texts == 21 and batcher._running == 0
    with pytest.raises(ValueError):
        TextBatcher(lanes=0)


def test_text_batcher_waits_for_the_texts_being_answered():
    """A text arriving while the texts of an earlier call are still being answered (inside
    their ``encoding`` blocks) is not encoded alone: it waits and goes with the texts that
    arrive meanwhile, in one call, when the last block ends. A lone text on an idle batcher
    goes at once, and a request abandoned after its text was encoded does not hold the next
    ones back."""
    import asyncio

    from service.batcher import TextBatcher

    class Fake:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.calls.append(list(texts))
            return np.zeros((len(texts), 2), dtype=np.float32)

    fake = Fake()
    batcher = TextBatcher(max_batch=8, lanes=1)

    async def run() -> None:
        release = asyncio.Event()

        async def answered_later(t: str) -> None:
            async with batcher.encoding(fake, t):
                await release.wait()  # its search and reply, still running

        first = [asyncio.create_task(answered_later(f"a{i}")) for i in range(3)]
        while len(fake.calls) < 1 or batcher._answering < 3:
            await asyncio.sleep(0.001)
        assert fake.calls == [["a0", "a1", "a2"]]  # idle: the first texts went at once
        late = [asyncio.create_task(batcher.encode(fake, f"b{i}")) for i in range(4)]
        await asyncio.sleep(0.05)
        assert len(fake.calls) == 1  # the lane is free, but a0..a2 are being answered
        release.set()
        await asyncio.gather(*first, *late)
        assert fake.calls[1] == ["b0", "b1", "b2", "b3"]  # one call, not b0 alone
        # a request cancelled after its text was encoded still counts as answered
        gone = asyncio.create_task(batcher.encode(fake, "c"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        await asyncio.wait_for(batcher.encode(fake, "d"), 2)
        assert batcher._answering == 0 and fake.calls[-1] == ["d"]

    asyncio.run(run())


def test_encoder_lanes_and_threads_resolve_from_the_cores():
    onnx = Settings(index_dir="x", encoder_runtime="onnx")
    assert (onnx.resolved_encoder_lanes(), onnx.resolved_encoder_threads(8)) == (1, 8)
    two = Settings(index_dir="x", encoder_runtime="onnx", workers=2, encoder_lanes=2)
    assert (two.resolved_encoder_lanes(), two.resolved_encoder_threads(8)) == (2, 2)
    # the torch fallback of an ONNX setting: one call at a time with the worker's cores
    assert two.resolved_encoder_threads(8, runtime="torch") == 4
    torch = Settings(index_dir="x", encoder_runtime="torch", encoder_lanes=4)
    assert (torch.resolved_encoder_lanes(), torch.resolved_encoder_threads(8)) == (1, 8)
    assert Settings(index_dir="x", encoder_threads=3).resolved_encoder_threads(8) == 3
    assert (onnx.resolved_encoder_batch(), torch.resolved_encoder_batch()) == (8, 64)
    assert onnx.resolved_encoder_batch("torch") == 64  # the fallback when ONNX is missing
    assert Settings(index_dir="x", encoder_batch=5).resolved_encoder_batch("torch") == 5


def _comparable(body):
    """A reply without what differs between two runs: timings and the server's time."""
    if isinstance(body, dict):
        return {k: _comparable(v) for k, v in body.items()
                if k not in ("time", "coarse_ms", "rerank_ms")}
    if isinstance(body, list):
        return [_comparable(v) for v in body]
    return body


def test_fast_search_path_answers_as_the_fastapi_routes(index_ip, ds_ip):
    """``FastEndpoints`` (the default) and FastAPI's own routes (``fast_search=False``) give
    the same status, body and headers for good and bad requests, with keys and limits on."""
    read = "r" * 16
    settings = Settings(index_dir=str(index_ip), max_batch=8, max_k=50, max_candidates=500,
                        max_body_bytes=4096, api_keys=(read,), admin_keys=("a" * 16,))
    q, auth = _v(ds_ip.xq[3]), {"authorization": f"Bearer {read}"}
    cases = [
        ("/search", {"vector": q, "k": 5, "params": {"nprobe": 4, "candidates": 50}}, auth),
        ("/search", {"vector": q, "k": 3, "params": {"rerank": False}}, auth),
        ("/search", {"vector": q, "k": 3, "params": {"exact": True}, "with_vector": True}, auth),
        ("/search", {"vector": q, "k": 2, "params": {"oversampling": 2.5}}, auth),
        ("/search/batch", {"searches": [{"vector": q, "k": 2},
                                        {"vector": q, "k": 4, "params": {"nprobe": 2}}]}, auth),
        ("/search", {"vector": q[:5]}, auth),
        ("/search", {"vector": q, "k": 51}, auth),
        ("/search", {"vector": q, "params": {"nprobe": 10_000}}, auth),
        ("/search", {"vector": [1e39] + q[1:]}, auth),
        ("/search", {"text": "no encoder"}, auth),
        ("/search", {"vector": q, "surprise": 1}, auth),
        ("/search/batch", {"searches": [{"vector": q}] * 9}, auth),
        ("/search/batch", {"searches": [{"vector": q}, {"vector": [0.0]}]}, auth),
        ("/search", {"vector": q}, {}),
        ("/search", {"vector": q}, {"authorization": "Bearer " + "x" * 16}),
        ("/search/batch", {"searches": [{"vector": q}] * 8}, auth),  # > 4096 bytes: 413
    ]
    fast_app = create_app(settings)
    used = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def handles(self, scope):
            return self.inner.handles(scope)

        async def __call__(self, scope, receive, send):
            used.append(scope["path"])
            await self.inner(scope, receive, send)

    fast_app.fast = Counting(fast_app.fast)
    with TestClient(fast_app) as fast, \
            TestClient(create_app(settings, fast_search=False)) as ref:
        for path, body, headers in cases:
            a = fast.post(path, json=body, headers=headers)
            b = ref.post(path, json=body, headers=headers)
            assert a.status_code == b.status_code, (path, body, a.text, b.text)
            assert _comparable(a.json()) == _comparable(b.json()), (path, a.text, b.text)
            assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")
            assert a.headers["x-request-id"] and a.headers["content-type"] == "application/json"
        for raw in (b'{"vector": [0.1, ', b"\xff\xfe{}", b'{"vector": [NaN]}', b"[1, 2]", b""):
            a = fast.post("/search", content=raw, headers={**auth, "content-type":
                                                           "application/json"})
            b = ref.post("/search", content=raw, headers={**auth, "content-type":
                                                          "application/json"})
            assert a.status_code == b.status_code == 422, (raw, a.text, b.text)
            assert a.json()["status"]["error"]
        for ctype in ("text/plain", None):  # JSON only, as FastAPI's strict content type
            h = {**auth, **({"content-type": ctype} if ctype else {})}
            a = fast.post("/search", content=b'{"vector": [0.1]}', headers=h)
            b = ref.post("/search", content=b'{"vector": [0.1]}', headers=h)
            assert a.status_code == b.status_code == 422 and "Content-Type" in a.text
        a = fast.post("/search", json={"vector": q}, headers={**auth, "x-request-id": "abc-1"})
        assert a.headers["x-request-id"] == "abc-1"
        metrics = fast.get("/metrics").text
        assert 'ebr_requests_total{endpoint="/search",status="422"}' in metrics
        assert 'ebr_requests_total{endpoint="/search/batch",status="413"}' in metrics
    assert len(used) == len(cases) + 8  # every search request took the fast path
