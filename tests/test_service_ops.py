"""Operations: request ids, metrics, API keys, body limits, atomic reload under load."""

import json
import os
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient
from helpers import served, wait_for

from ebr.index.writer import write_index
from ebr.spec import BuildParams, IndexSpec
from service.app import create_app
from service.settings import Settings

READ, ADMIN = "r" * 20, "a" * 20


@pytest.fixture()
def live_dir(tmp_path, index_ip):
    """index_dir is a symlink the operator flips, as in a real deployment."""
    gen1 = tmp_path / "gen1"
    shutil.copytree(index_ip, gen1)
    link = tmp_path / "current"
    link.symlink_to(gen1)
    return link


def _client(index_dir, **kw):
    return TestClient(create_app(Settings(index_dir=str(index_dir), **kw)))


def _q(ds):
    return {"vector": ds.xq[0].tolist(), "k": 5}


def test_request_id_echo_and_metrics(index_ip, ds_ip):
    with _client(index_ip) as c:
        r = c.post("/search", json=_q(ds_ip), headers={"X-Request-ID": "abc-123"})
        assert r.headers["X-Request-ID"] == "abc-123"
        r = c.post("/search", json=_q(ds_ip), headers={"X-Request-ID": "bad id\n"})
        assert len(r.headers["X-Request-ID"]) == 32  # replaced by a fresh one
        c.post("/search", json={"vector": [1.0]})
        text = c.get("/metrics").text
    assert 'ebr_requests_total{endpoint="/search",status="200"} 2.0' in text
    assert 'ebr_requests_total{endpoint="/search",status="422"} 1.0' in text
    assert 'ebr_errors_total{kind="InputError"} 1.0' in text
    assert "ebr_index_generation 1.0" in text and "ebr_index_ready 1.0" in text
    assert 'ebr_request_seconds_count{endpoint="/search"} 3.0' in text
    assert "ebr_candidates_count 2.0" in text
    dense = float(text.split("\nebr_dense_bytes_read_total ")[1].split()[0])
    assert dense > 0


def test_api_keys(index_ip, ds_ip):
    with _client(index_ip, api_keys=(READ,), admin_keys=(ADMIN,)) as c:
        r = c.post("/search", json=_q(ds_ip))
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "missing bearer" in r.json()["status"]["error"]
        bad = {"Authorization": "Bearer " + "x" * 20}
        assert c.post("/search", json=_q(ds_ip), headers=bad).status_code == 403
        for key in (READ, ADMIN):
            h = {"Authorization": f"Bearer {key}"}
            assert c.post("/search", json=_q(ds_ip), headers=h).status_code == 200
            assert c.get("/index", headers=h).status_code == 200
        assert c.get("/index").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        h = {"Authorization": f"Bearer {READ}"}
        assert c.post("/admin/reload", headers=h).status_code == 403  # read key is not admin
        assert c.post("/admin/reload").status_code == 401


def test_admin_disabled_without_keys(index_ip):
    with _client(index_ip) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer " + "a" * 20})
        assert r.status_code == 403 and "disabled" in r.json()["status"]["error"]


def test_short_keys_refused():
    with pytest.raises(ValueError, match="16 characters"):
        Settings.from_env({"EBR_INDEX_DIR": "/x", "EBR_API_KEYS": "short"})
    s = Settings.from_env({"EBR_INDEX_DIR": "/x", "EBR_API_KEYS": f"{READ}, {ADMIN}"})
    assert s.api_keys == (READ, ADMIN) and READ not in repr(s)


def test_body_limit(index_ip):
    with _client(index_ip, max_body_bytes=4096) as c:
        r = c.post("/search", json={"vector": [0.1] * 2000})
        assert r.status_code == 413 and "exceeds" in r.json()["status"]["error"]
        # streamed without a length (chunked): refused once the bytes pass the limit
        for path in ("/search", "/search/batch"):
            chunks = iter([b'{"vector": [', b"0.1, " * 1000, b"0.1]}"])
            r = c.post(path, content=chunks, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "exceeds 4096 bytes" in r.json()["status"]["error"]
        r = c.post("/search", content=iter([b'{"vector": [0.1', b"]}"]),
                   headers={"content-type": "application/json"})
        assert r.status_code == 422 and "dimension 1" in r.json()["status"]["error"]


def test_reload_refuses_broken_and_swaps_good(tmp_path, live_dir, ds_ip):
    h = {"Authorization": f"Bearer {ADMIN}"}
    with _client(live_dir, admin_keys=(ADMIN,), watch_seconds=0) as c:
        before = c.post("/search", json=_q(ds_ip)).json()["result"]["hits"]
        # a half-written build (no manifest) and a corrupt one are both refused
        for kind in ("half", "corrupt"):
            bad = tmp_path / kind
            shutil.copytree(os.path.realpath(live_dir), bad)
            if kind == "half":
                (bad / "manifest.json").unlink()
            else:
                data = bytearray((bad / "dense.fbin").read_bytes())
                data[100] ^= 1
                (bad / "dense.fbin").write_bytes(bytes(data))
            live_dir.unlink()
            live_dir.symlink_to(bad)
            r = c.post("/admin/reload", headers=h)
            assert r.status_code == 409 and "generation 1 keeps serving" in r.json()["status"]["error"]
            assert c.post("/search", json=_q(ds_ip)).json()["result"]["hits"] == before
            assert c.get("/readyz").status_code == 200
        # a good new build with fewer documents is swapped in
        gen2 = tmp_path / "gen2"
        write_index(gen2, ds_ip.xb[:1000], BuildParams(spec=IndexSpec.parse("IVF8,PQ8"),
                                                        kmeans_niter=5))
        live_dir.unlink()
        live_dir.symlink_to(gen2)
        r = c.post("/admin/reload", headers=h)
        assert r.status_code == 200 and r.json()["generation"] == 2
        info = c.get("/index").json()
        assert info["count"] == 1000 and info["generation"] == 2
        hits = c.post("/search", json=_q(ds_ip)).json()["result"]["hits"]
        assert all(hit["id"] < 1000 for hit in hits)
        assert "ebr_index_generation 2.0" in c.get("/metrics").text


def test_no_failed_request_during_reloads(live_dir, ds_ip):
    h = {"Authorization": f"Bearer {ADMIN}"}
    failures: list[int] = []
    stop = threading.Event()
    with _client(live_dir, admin_keys=(ADMIN,), watch_seconds=0) as c:

        def hammer(i: int) -> None:
            q = {"vector": ds_ip.xq[i % len(ds_ip.xq)].tolist(), "k": 10}
            while not stop.is_set():
                r = c.post("/search", json=q)
                if r.status_code != 200 or len(r.json()["result"]["hits"]) != 10:
                    failures.append(r.status_code)

        good = os.path.realpath(live_dir)
        broken = live_dir.parent / "broken"
        shutil.copytree(good, broken)
        (broken / "coarse.index").write_bytes(b"not an index")
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for i in range(6):  # alternate good and broken reloads under load
            live_dir.unlink()
            live_dir.symlink_to(broken if i % 2 else good)
            want = 409 if i % 2 else 200
            assert c.post("/admin/reload", headers=h).status_code == want
        stop.set()
        for t in threads:
            t.join()
        assert c.get("/index").json()["generation"] == 4
    assert failures == []


def test_watcher_switches_without_being_told(tmp_path, live_dir, ds_ip):
    """What every worker of a multi-worker server relies on: a flipped symlink is picked up,
    verified and served; a broken build is refused once and the old one keeps serving."""
    with _client(live_dir, watch_seconds=0.1) as c:
        assert c.get("/index").json()["generation"] == 1
        broken = tmp_path / "broken"
        shutil.copytree(os.path.realpath(live_dir), broken)
        (broken / "coarse.index").write_bytes(b"not an index")
        live_dir.unlink()
        live_dir.symlink_to(broken)
        refused = 'ebr_errors_total{kind="reload_refused"} 1.0'
        assert wait_for(lambda: refused in c.get("/metrics").text)
        time.sleep(0.5)  # several more polls: the same broken build is not retried
        assert refused in c.get("/metrics").text
        r = c.post("/search", json=_q(ds_ip))
        assert r.status_code == 200 and c.get("/index").json()["generation"] == 1
        gen2 = tmp_path / "gen2"
        write_index(gen2, ds_ip.xb[:1000], BuildParams(spec=IndexSpec.parse("IVF8,PQ8"),
                                                        kmeans_niter=5))
        live_dir.unlink()
        live_dir.symlink_to(gen2)
        assert wait_for(lambda: c.get("/index").json()["count"] == 1000)
        assert c.get("/index").json()["generation"] == 2
        hits = c.post("/search", json=_q(ds_ip)).json()["result"]["hits"]
        assert hits and all(hit["id"] < 1000 for hit in hits)


def test_watcher_serves_an_index_published_after_startup(tmp_path, ds_ip):
    target = tmp_path / "later"
    with _client(target, watch_seconds=0.1) as c:
        assert c.get("/readyz").status_code == 503
        write_index(target, ds_ip.xb[:500], BuildParams(spec=IndexSpec.parse("IVF4,PQ8"),
                                                         kmeans_niter=5))
        assert wait_for(lambda: c.get("/readyz").status_code == 200)
        assert c.post("/search", json=_q(ds_ip)).status_code == 200


@pytest.mark.slow
def test_multi_worker_server_switches_every_worker_and_sums_metrics(tmp_path, live_dir, ds_ip):
    """``python -m service --workers 2``: a flipped symlink reaches both workers (their
    watchers), and /metrics counts the requests of both, whichever worker answers it."""
    import httpx

    log = tmp_path / "server.log"
    with served(live_dir, log, workers=2) as (url, _):  # waits for /readyz 200
        n = 40
        for _ in range(n):  # new connections: spread over both workers by the kernel
            assert httpx.post(url + "/search", json=_q(ds_ip)).status_code == 200
        text = httpx.get(url + "/metrics").text
        assert f'ebr_requests_total{{endpoint="/search",status="200"}} {float(n)}' in text
        assert text.count("ebr_index_ready{pid=") == 2  # one live series per worker
        gen2 = tmp_path / "gen2"
        write_index(gen2, ds_ip.xb[:1000], BuildParams(spec=IndexSpec.parse("IVF8,PQ8"),
                                                        kmeans_niter=5))
        live_dir.unlink()
        live_dir.symlink_to(gen2)

        def both_switched() -> bool:
            lines = [line for line in httpx.get(url + "/metrics").text.splitlines()
                     if line.startswith("ebr_index_generation{pid=")]
            return len(lines) == 2 and all(line.endswith(" 2.0") for line in lines)

        assert wait_for(both_switched, 30)
        for _ in range(20):
            assert httpx.get(url + "/index").json()["count"] == 1000
    # both workers log, one JSON object per line (uvicorn applies the config in each)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    serving = [r for r in records if r["message"].startswith("serving ")]
    assert len(serving) == 4 and {"time", "level", "request_id"} <= set(serving[0])


def test_thread_sizes_set_together_from_settings(index_ip):
    auto = Settings(index_dir=str(index_ip), workers=2)
    assert auto.resolved_search_threads(cores=2) == 4  # the floor
    assert auto.resolved_search_threads(cores=16) == 16  # 2 x 16 / 2 workers
    assert Settings(index_dir=str(index_ip), workers=2, faiss_threads=4
                    ).resolved_search_threads(cores=32) == 8
    with _client(index_ip, search_threads=3) as c:
        import asyncio

        import anyio.to_thread

        tokens = c.portal.call(lambda: anyio.to_thread.current_default_thread_limiter()
                               .total_tokens)
        executor = c.portal.call(lambda: asyncio.get_running_loop()._default_executor)
        assert tokens == 3 and executor._max_workers == 3
        assert c.post("/search", json={"vector": [0.1] * 32, "k": 3}).status_code == 200
