"""What an attacker and an unlucky operator found (issue 16), one test per finding."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import stat
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import served, wait_for

from ebr.errors import EbrError
from ebr.index import publish as publishing
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.io import layout
from ebr.io.manifest import read_manifest
from ebr.spec import BuildParams, IndexSpec
from service.app import create_app
from service.deps import ServiceState
from service.generations import load_generation
from service.settings import Settings

P8 = BuildParams(spec=IndexSpec.parse("IVF8,PQ8"), kmeans_niter=4)
P4 = BuildParams(spec=IndexSpec.parse("IVF8,PQ4"), kmeans_niter=4)


def _q(ds, k=5, **kw):
    return {"vector": ds.xq[0].tolist(), "k": k, **kw}


@pytest.fixture()
def own_index(tmp_path, index_ip):
    d = tmp_path / "idx"
    shutil.copytree(index_ip, d)
    return d


# 1. a file changed under a running server --------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("change", ["truncate", "rewrite", "opened for writing only"])
def test_server_survives_index_files_changed_in_place(tmp_path, own_index, ds_ip, change):
    """Before: SIGBUS on the next search and the process (both workers) died. Now: 503 with the
    reason until a whole build is there again, then 200, the process alive throughout."""
    with served(own_index, tmp_path / "log", workers=2) as (url, server):
        assert httpx.post(url + "/search", json=_q(ds_ip)).status_code == 200
        dense = own_index / layout.DENSE["float32"]
        original = dense.read_bytes()
        if change == "truncate":
            os.truncate(dense, 1000)
        elif change == "rewrite":  # same size, other bytes, written in place
            with open(dense, "r+b") as f:
                f.seek(8)
                f.write(b"\x00" * 4096)
        else:  # a writer that changes nothing (an editor, a failed `truncate`)
            open(dense, "r+b").close()
        changed = change != "opened for writing only"  # then reloaded at once: 200 or 503
        for _ in range(20):  # new connections: both workers answer some
            r = httpx.post(url + "/search", json=_q(ds_ip))
            assert r.status_code == 503 or (r.status_code == 200 and not changed), r.text
            if r.status_code == 503:
                assert "dense.fbin" in r.json()["status"]["error"]
        ready = httpx.get(url + "/readyz")
        assert (ready.status_code == 503 or not changed) and str(tmp_path) not in ready.text
        assert server.poll() is None
        if changed:
            dense.write_bytes(original)  # the operator puts the file back

        def healed() -> bool:
            return all(httpx.post(url + "/search", json=_q(ds_ip)).status_code == 200
                       for _ in range(10))

        assert wait_for(healed, 30)
        assert server.poll() is None


def test_stat_check_refuses_a_truncated_store_without_leases(own_index, ds_ip):
    """Where no lease is held (here: the app runs off the main thread), each search first
    compares the files with what was opened."""
    with TestClient(create_app(Settings(index_dir=str(own_index), watch_seconds=0))) as c:
        assert c.post("/search", json=_q(ds_ip)).status_code == 200
        os.truncate(own_index / layout.DENSE["float32"], 1000)
        r = c.post("/search", json=_q(ds_ip))
        assert r.status_code == 503 and "changed on disk" in r.json()["status"]["error"]
        assert c.get("/readyz").status_code == 503


def test_published_files_are_read_only(index_ip):
    for p in index_ip.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o222 == 0, p


# 2. one request cannot make the server allocate gigabytes ----------------------------------
def test_per_request_limits_are_named(index_ip, ds_ip):
    s = Settings(index_dir=str(index_ip), max_hits_per_request=100, max_vectors_per_request=10,
                 max_exact_per_request=1, max_candidates_per_request=1000)
    v = ds_ip.xq[0].tolist()
    cases = [
        ({"searches": [{"vector": v, "k": 50}] * 3}, "EBR_MAX_HITS_PER_REQUEST"),
        ({"searches": [{"vector": v, "k": 6, "with_vector": True}] * 2},
         "EBR_MAX_VECTORS_PER_REQUEST"),
        ({"searches": [{"vector": v, "params": {"exact": True}}] * 2},
         "EBR_MAX_EXACT_PER_REQUEST"),
        ({"searches": [{"vector": v, "params": {"candidates": 600}}] * 2},
         "EBR_MAX_CANDIDATES_PER_REQUEST"),
    ]
    with TestClient(create_app(s)) as c:
        for body, limit in cases:
            r = c.post("/search/batch", json=body)
            assert r.status_code == 413 and limit in r.json()["status"]["error"], r.text
            ok = c.post("/search/batch", json={"searches": body["searches"][:1]})
            assert ok.status_code == 200, ok.text
        r = c.post("/search", json={"vector": v, "k": 11, "with_vector": True})
        assert r.status_code == 413 and "EBR_MAX_VECTORS_PER_REQUEST" in r.text


def test_too_many_requests_in_flight_from_one_client(index_ip):
    app = create_app(Settings(index_dir=str(index_ip), max_inflight_per_client=2))
    release = asyncio.Event()
    entered = 0

    async def slow(scope, receive, send):  # stands for a search that takes a while
        nonlocal entered
        entered += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app._dispatch = slow

    async def call(client_addr, auth=b""):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/search", "client": (client_addr, 1),
                 "headers": [(b"authorization", auth)] if auth else []}
        await app(scope, receive, send)
        return sent[0]["status"], dict(sent[0].get("headers", []))

    async def scenario():
        first = [asyncio.create_task(call("10.0.0.1")) for _ in range(2)]
        while entered < 2:
            await asyncio.sleep(0)
        status, headers = await call("10.0.0.1")
        assert status == 429 and headers[b"retry-after"] == b"1"
        other = asyncio.create_task(call("10.0.0.2"))  # another client is not held back
        while entered < 3:
            await asyncio.sleep(0)
        release.set()
        assert [await t for t in first] == [(200, {}), (200, {})]
        assert (await other)[0] == 200
        assert app._inflight == {}
        assert (await call("10.0.0.1"))[0] == 200  # freed once the first ones finished

    asyncio.run(scenario())


# 3. a reload resolves the directory once ---------------------------------------------------
def test_link_flipped_during_a_load_neither_mixes_builds_nor_refuses(tmp_path, ds_ip,
                                                                    monkeypatch):
    a, b, link = tmp_path / "a", tmp_path / "b", tmp_path / "current"
    write_index(a, ds_ip.xb, P8)
    write_index(b, ds_ip.xb[:1000], P4)
    link.symlink_to(a)
    import ebr.index.reader as reader

    real_verify = reader.verify_files

    def flip_then_verify(*args, **kw):  # the operator flips the link mid-load
        if link.resolve() == a:
            link.unlink()
            link.symlink_to(b)
        return real_verify(*args, **kw)

    monkeypatch.setattr(reader, "verify_files", flip_then_verify)
    state = ServiceState(settings=Settings(index_dir=str(link)))
    load_generation(state)  # before: "coarse.index: PQ M is 4, manifest says 8", refused
    assert state.current.searcher.index.ntotal == len(ds_ip.xb) and state.refused is None
    load_generation(state)  # the next load serves what the link points at now
    assert state.current.searcher.index.ntotal == 1000 and state.generation == 2


def test_readyz_and_index_say_what_is_served_and_what_was_refused(tmp_path, ds_ip):
    a, bad, link = tmp_path / "a", tmp_path / "bad", tmp_path / "current"
    write_index(a, ds_ip.xb, P8)
    shutil.copytree(a, bad)
    os.chmod(bad / layout.COARSE, 0o644)
    (bad / layout.COARSE).write_bytes(b"not an index")
    link.symlink_to(a)
    with TestClient(create_app(Settings(index_dir=str(link), watch_seconds=0.05))) as c:
        ready = c.get("/readyz").json()
        version = ready["index_version"]
        assert ready["status"] == "ready" and ready["generation"] == 1 and ready["refused"] is None
        assert version == c.get("/index").json()["index_version"]
        link.unlink()
        link.symlink_to(bad)
        assert wait_for(lambda: c.get("/readyz").json()["refused"] is not None)
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["index_version"] == version
        assert "CorruptFileError: coarse.index: truncated" in ready["refused"]["reason"]
        assert c.get("/index").json()["refused"] == ready["refused"]


# 4. killed builds leave no staging directories for ever ------------------------------------
def test_stale_staging_directories_are_cleaned_live_ones_kept(tmp_path, ds_ip, caplog):
    old = time.time() - 3600
    stale = tmp_path / ".idx.building-dead0001"
    stale.mkdir()
    (stale / "dense.fbin").write_bytes(b"\0" * 1000)
    (tmp_path / ".idx.building-dead0001.lock").touch()
    legacy = tmp_path / ".idx.building-old00002"  # from before builds took a lock
    legacy.mkdir()
    live = tmp_path / ".idx.building-live0003"
    live.mkdir()
    lock = tmp_path / ".idx.building-live0003.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a build still running
    for p in (stale, legacy, live):
        os.utime(p, (old, old))
    try:
        with caplog.at_level(logging.WARNING, logger="ebr.index.publish"):
            write_index(tmp_path / "idx", ds_ip.xb[:500], P8)
    finally:
        os.close(fd)
    assert not stale.exists() and not legacy.exists() and live.exists() and lock.exists()
    assert not (tmp_path / ".idx.building-dead0001.lock").exists()
    assert "removed" in caplog.text and "building-dead0001" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.building-live0003",
                                                         ".idx.building-live0003.lock", "idx"]


# 5. --overwrite replaces only an index, atomically -----------------------------------------
def test_overwrite_refuses_what_is_not_an_index(tmp_path, ds_ip):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(EbrError, match="not an ebr index"):
        write_index(mine, ds_ip.xb[:500], P8, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(EbrError, match="not an ebr index"):
        write_index(tmp_path / "file", ds_ip.xb[:500], P8, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_swaps_in_one_step(tmp_path, ds_ip, monkeypatch):
    target = tmp_path / "idx"
    write_index(target, ds_ip.xb[:500], P8)
    renames = []
    monkeypatch.setattr(publishing.os, "rename", lambda *a: renames.append(a))
    write_index(target, ds_ip.xb[:700], P8, overwrite=True)
    assert renames == []  # renameat2(RENAME_EXCHANGE): the target was never missing
    assert open_index(target).ntotal == 700
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


# 6. the open probe discloses no paths ------------------------------------------------------
def test_readyz_discloses_no_paths(tmp_path):
    broken = tmp_path / "deep" / "secret" / "idx"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    with TestClient(create_app(Settings(index_dir=str(broken), watch_seconds=0))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "manifest.json" in r.text
        assert str(tmp_path) not in r.text and "secret" not in r.text
        r = c.post("/search", json={"vector": [0.0] * 32})
        assert r.status_code == 503 and str(tmp_path) not in r.text


# 7. the schema states what the server enforces; /docs works offline ------------------------
def test_openapi_states_the_rules(index_ip):
    s = Settings(index_dir=str(index_ip), api_keys=("r" * 20,), max_batch=8)
    with TestClient(create_app(s)) as c:
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs").text
        asset = c.get("/docs-static/swagger-ui-bundle.js")
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/search"]["post"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/admin/reload"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    req = spec["components"]["schemas"]["SearchRequest"]
    assert req["required"] == ["vector"] and "text" not in req["properties"]  # no encoder
    assert req["properties"]["vector"]["minItems"] == req["properties"]["vector"]["maxItems"] == 32
    assert "null" not in json.dumps(req["properties"]["vector"])
    params = spec["components"]["schemas"]["SearchParamsIn"]
    assert {"required": ["candidates", "oversampling"]} in params["not"]["anyOf"]
    assert params["properties"]["nprobe"]["maximum"] == 16
    assert spec["components"]["schemas"]["BatchRequest"]["properties"]["searches"][
        "maxItems"] == 8
    assert "cdn" not in docs.lower() and "/docs-static/swagger-ui-bundle.js" in docs
    assert asset.status_code == 200 and len(asset.content) > 100_000


# 8. strict types at the HTTP edge ----------------------------------------------------------
@pytest.mark.parametrize("body", [{"k": "3"}, {"k": True}, {"k": 3.5},
                                  {"vector": ["0.1"] * 32},
                                  {"params": {"nprobe": "4"}}, {"params": {"rerank": 1}},
                                  {"with_vector": "yes"}, {"vector": None, "text": "x"},
                                  {"params": {"k_coarse": None, "candidates": 20}}])
def test_no_coercion(index_ip, ds_ip, body):
    base = {"vector": ds_ip.xq[0].tolist(), **body}
    if "text" in body:
        base.pop("vector", None)
        base = body
    with TestClient(create_app(Settings(index_dir=str(index_ip)))) as c:
        for path, payload in (("/search", base), ("/search/batch", {"searches": [base]})):
            r = c.post(path, json=payload)
            assert r.status_code == 422, (path, payload, r.text)


def test_integers_as_json_schema_counts_them(index_ip, ds_ip):
    """3.0 is an integer to JSON Schema (and so to generated clients): taken as 3."""
    with TestClient(create_app(Settings(index_dir=str(index_ip)))) as c:
        r = c.post("/search", json={"vector": ds_ip.xq[0].tolist(), "k": 3.0,
                                    "params": {"nprobe": 4.0}})
        assert r.status_code == 200 and len(r.json()["result"]["hits"]) == 3


# 9. the manifest is protected by its own checksum ------------------------------------------
def test_every_single_bit_flip_of_the_manifest_is_refused(own_index):
    path = own_index / "manifest.json"
    os.chmod(path, 0o644)
    raw = path.read_bytes()
    original = read_manifest(own_index)
    accepted = 0
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                m = read_manifest(own_index)
            except EbrError:
                continue
            accepted += m != original  # a flip that changes nothing read may pass
    path.write_bytes(raw)
    assert accepted == 0
    assert len(raw) * 8 > 10_000


def test_manifests_written_before_the_checksum_still_open(own_index, ds_ip):
    path = own_index / "manifest.json"
    os.chmod(path, 0o644)
    m = json.loads(path.read_text())
    del m["manifest_sha256"]
    path.write_text(json.dumps(m))
    oi = open_index(own_index)
    assert oi.ntotal == len(ds_ip.xb)
    m["colour"] = "red"  # but no unknown field, sealed or not
    path.write_text(json.dumps(m))
    with pytest.raises(EbrError, match="unknown fields"):
        open_index(own_index)


def test_exact_reference_still_matches(index_ip, ds_ip):
    """The guard wraps the searches without changing them."""
    from ebr.search.searcher import Searcher

    s = Searcher(open_index(index_ip))
    got = s.exact(ds_ip.xq[:3], 5)
    scores = ds_ip.xq[:3] @ np.asarray(ds_ip.xb).T
    np.testing.assert_array_equal(got.ids, np.argsort(-scores, axis=1)[:, :5])
