"""Living indexes: the write-ahead log, upserts / deletes against a brute-force model of the
logical state, replay, compaction, crash recovery, payloads and the HTTP write API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ebr.errors import InputError, WriteConflictError
from ebr.index.compact import compact
from ebr.index.live import open_live
from ebr.index.logdir import live_dir, wal_path
from ebr.index.reader import open_index
from ebr.index.wal import DELETE, UPSERT, WriteAheadLog, scan
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.search.live import LiveSearcher
from ebr.spec import BuildParams, IndexSpec, SearchParams
from service.app import create_app
from service.settings import Settings

D, N, NLIST = 16, 600, 8
KEY = "w" * 20


def _build(path: Path, metric: Metric = Metric.IP, spec: str = "IVF8,PQ4", n: int = N,
           payloads: bool = True, string_ids: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, D)).astype(np.float32)
    ids = [f"d{i}" for i in range(n)] if string_ids else None
    pl = [((f"d{i}" if string_ids else i), {"n": i, "tag": "even" if i % 2 == 0 else "odd"})
          for i in range(0, n, 3)] if payloads else None
    write_index(path, x, BuildParams(spec=IndexSpec.parse(spec), metric=metric), ids,
                payloads=pl, overwrite=True)
    return x


class Model:
    """The logical state: id -> vector."""

    def __init__(self, x: np.ndarray) -> None:
        self.docs = {i: x[i] for i in range(len(x))}

    def top(self, q: np.ndarray, k: int, metric: Metric) -> list[int]:
        ids = list(self.docs)
        xb = np.stack([self.docs[i] for i in ids])
        s = xb @ q if metric is Metric.IP else -((xb - q) ** 2).sum(axis=1)
        order = np.argsort(-s, kind="stable")[:k]
        return [ids[j] for j in order]


def _check(searcher: LiveSearcher, model: Model, rng: np.random.Generator, metric: Metric,
           nq: int = 8) -> None:
    n_live = len(model.docs)
    assert searcher.ntotal == n_live
    q = rng.standard_normal((nq, D)).astype(np.float32)
    res, _ = searcher.search(q, SearchParams(k=10, nprobe=NLIST, candidates=n_live))
    ex = searcher.exact(q, 10)
    for i in range(nq):
        want = model.top(q[i], 10, metric)
        assert searcher.external_ids(res.ids[i]) == want
        assert searcher.external_ids(ex.ids[i]) == want


def _random_writes(live, model: Model, rng: np.random.Generator, steps: int,
                   next_id: list[int]) -> None:
    for _ in range(steps):
        op = rng.random()
        if op < 0.5:  # new documents
            n = int(rng.integers(1, 20))
            ids = list(range(next_id[0], next_id[0] + n))
            next_id[0] += n
        elif op < 0.75:  # replace existing ones (and maybe some new)
            pool = list(model.docs)
            ids = [int(i) for i in rng.choice(pool, size=min(10, len(pool)), replace=False)]
        else:
            pool = list(model.docs)
            ids = [int(i) for i in rng.choice(pool, size=min(15, len(pool)), replace=False)]
            ids.append(10**9 + int(rng.integers(0, 1000)))  # unknown: a no-op
            live.delete(ids)
            for i in ids:
                model.docs.pop(i, None)
            continue
        v = rng.standard_normal((len(ids), D)).astype(np.float32)
        live.upsert(ids, v, [{"id": i} for i in ids])
        for i, vec in zip(ids, v, strict=True):
            model.docs[i] = vec


@pytest.mark.parametrize("metric,spec", [(Metric.IP, "IVF8,PQ4"), (Metric.L2, "IVF8,PQ4"),
                                         (Metric.IP, "IVF8,RQ4x6")])
def test_writes_match_brute_force_model(tmp_path: Path, metric: Metric, spec: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the recent segment folds into the large one every 16 rows: many folds (each a copy
    # that shares the base's quantizer, ebr.index.segments.share_quantizer)
    monkeypatch.setattr("ebr.index.view.RECENT_ROWS", 16)
    x = _build(tmp_path / "idx", metric, spec)
    model = Model(x)
    rng = np.random.default_rng(1)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    searcher = LiveSearcher(live)
    next_id = [N]
    for _ in range(4):
        _random_writes(live, model, rng, 10, next_id)
        _check(searcher, model, rng, metric)
    deleted = set(range(N)) - set(model.docs)
    assert deleted  # the random walk deleted some base documents
    live.close()
    # a fresh process replays the log into the same state
    again = LiveSearcher(open_live(open_index(tmp_path / "idx"), tmp_path / "idx"))
    _check(again, model, rng, metric)
    again.live.close()
    # compaction folds it into a new generation with the same answers, then writes go on
    m = compact(tmp_path / "idx")
    assert m.ntotal == len(model.docs) and m.live["epoch"] == 1
    after = LiveSearcher(open_live(open_index(tmp_path / "idx"), tmp_path / "idx"))
    assert after.live.stats().delta_rows == 0 and after.live.n_dead == 0
    _check(after, model, rng, metric)
    _random_writes(after.live, model, rng, 10, next_id)
    _check(after, model, rng, metric)
    # no deleted id is ever returned, over many queries with every candidate
    q = rng.standard_normal((200, D)).astype(np.float32)
    res, _ = after.search(q, SearchParams(k=10, nprobe=NLIST, candidates=len(model.docs)))
    returned = set(after.external_ids(res.ids.ravel()))
    assert not returned & (deleted - set(model.docs))


@pytest.mark.parametrize("metric,spec", [(Metric.IP, "IVF8,PQ4"), (Metric.IP, "IVF8,RQ4x6"),
                                         (Metric.L2, "IVF8,RQ4")])
def test_delta_uses_the_base_codebooks(tmp_path: Path, metric: Metric, spec: str) -> None:
    """A document written to the delta gets the codes a build would give it: its coarse score
    equals the one of the same vector in the base (RQ: the served form's codes, the L2 norm
    code included, made for the written lists alone)."""
    x = _build(tmp_path / "idx", metric, spec)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    live.upsert([10_000, 10_001], x[5:7])
    searcher = LiveSearcher(live)
    for row, new in ((5, 10_000), (6, 10_001)):
        cand, scores = searcher.coarse(x[row:row + 1], 50, NLIST)
        ids = searcher.external_ids(cand[0])
        s = dict(zip(ids, scores[0].tolist(), strict=True))
        assert row in s and new in s and s[row] == pytest.approx(s[new], rel=1e-5, abs=1e-5)
    live.close()


def test_compaction_keeps_codes_and_carries_concurrent_writes(tmp_path: Path) -> None:
    x = _build(tmp_path / "idx")
    model = Model(x)
    rng = np.random.default_rng(2)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    next_id = [N]
    _random_writes(live, model, rng, 20, next_id)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        w = np.random.default_rng(3)
        try:
            while not stop.is_set():
                _random_writes(live, model, w, 1, next_id)
        except WriteConflictError:
            pass  # the generation was switched: this view takes no more writes
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        compact(tmp_path / "idx")
    finally:
        stop.set()
        t.join()
    assert not errors
    live.catch_up()
    assert live.sealed  # the old view knows it is superseded
    live.close()
    fresh = LiveSearcher(open_live(open_index(tmp_path / "idx"), tmp_path / "idx"))
    _check(fresh, model, rng, Metric.IP)


def test_wal_torn_tail_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    wal = WriteAheadLog.create(path, 0, b"\x01" * 16)
    v = np.ones((2, 4), dtype=np.float32)
    ends = [wal.append(1, UPSERT, [1, 2], [{"a": 1}, None], v),
            wal.append(2, DELETE, [1]),
            wal.append(3, UPSERT, ["x", "y"], None, v * 2)]
    wal.close()
    records, good = scan(path)
    assert [r.lsn for r in records] == [1, 2, 3] and good == ends[-1]
    assert records[0].payloads == [{"a": 1}, None] and np.array_equal(records[2].vectors, v * 2)
    with open(path, "r+b") as f:  # a crash mid-append: the last record is cut short
        f.truncate(ends[-1] - 5)
    wal2, recs = WriteAheadLog.open(path)
    assert [r.lsn for r in recs] == [1, 2] and os.path.getsize(path) == ends[1]
    wal2.close()
    data = bytearray(path.read_bytes())  # a flipped bit in record 2: the scan stops before it
    data[ends[0] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [r.lsn for r in scan(path)[0]] == [1]


def _writer_process(index: Path, acks: Path, seed: int) -> subprocess.Popen[bytes]:
    code = f"""
import sys, numpy as np
from ebr.index.reader import open_index
from ebr.index.live import open_live
live = open_live(open_index({str(index)!r}, verify_checksums=False), {str(index)!r})
rng = np.random.default_rng({seed})
out = open({str(acks)!r}, "a", buffering=1)
i = 0
while True:
    i += 1
    if rng.random() < 0.3:
        ids = [int(x) for x in rng.integers(0, 2000, 5)]
        out.write("P D " + " ".join(map(str, ids)) + "\\n")
        live.delete(ids)
        out.write("D " + " ".join(map(str, ids)) + "\\n")
    else:
        ids = [{seed} * 100000 + i * 10 + j for j in range(int(rng.integers(1, 8)))]
        out.write("P U " + " ".join(map(str, ids)) + "\\n")
        live.upsert(ids, rng.standard_normal((len(ids), {D})).astype(np.float32),
                    [{{"i": x}} for x in ids])
        out.write("U " + " ".join(map(str, ids)) + "\\n")
"""
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """kill -9 a process writing through the library at 10 random points (the HTTP server:
    test_server_killed_mid_write_stream): after each, every acknowledged upsert is present,
    every acknowledged delete absent, and the log and rows recover."""
    _build(tmp_path / "idx", payloads=False)
    acks = tmp_path / "acks.txt"
    rng = np.random.default_rng(4)
    present: set[int] = set(range(N))
    for round_ in range(10):
        proc = _writer_process(tmp_path / "idx", acks, round_ + 1)
        threading.Event().wait(float(rng.uniform(0.4, 1.2)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # a writer killed before it opened the file (a slow start on a busy machine) wrote none
        lines = acks.read_text().splitlines() if acks.exists() else []
        acks.write_text("")
        pending: list[str] = []
        for line in lines:
            op, *ids = line.split()
            if op == "P":
                pending = ids  # [op, *ids]: sent, not yet acknowledged
                continue
            pending = []
            if op == "U":
                present |= {int(i) for i in ids}
            else:
                present -= {int(i) for i in ids}
        outcomes = [set(present)]  # the write in flight at the kill: logged whole, or not at all
        if pending:
            ids = {int(i) for i in pending[1:]}
            outcomes.append(present | ids if pending[0] == "U" else present - ids)
        universe = set(range(2000)) | {i for o in outcomes for i in o}
        live = open_live(open_index(tmp_path / "idx", verify_checksums=False), tmp_path / "idx")
        found = set(live.rows_of(sorted(universe)))
        assert found in outcomes, f"round {round_}"
        present = found
        assert live.stats().live_documents == len(present)
        searcher = LiveSearcher(live)
        q = np.random.default_rng(round_).standard_normal((2, D)).astype(np.float32)
        ex = searcher.exact(q, 10)
        assert set(searcher.external_ids(ex.ids.ravel())) <= present
        live.close()
    assert len(present) > N  # the writers got work done between the kills
    records, good = scan(wal_path(live_dir(tmp_path / "idx"), 0))
    assert good == os.path.getsize(wal_path(live_dir(tmp_path / "idx"), 0))


def test_bad_writes_change_nothing(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    before = live.stats()
    bad = [
        lambda: live.upsert([1, 2], np.ones((2, D + 1), np.float32)),
        lambda: live.upsert([1, 2], np.full((2, D), np.nan, np.float32)),
        lambda: live.upsert([1, 1], np.ones((2, D), np.float32)),
        lambda: live.upsert(["a"], np.ones((1, D), np.float32)),
        lambda: live.upsert([1], np.ones((1, D), np.float32), [[1, 2]]),  # type: ignore[list-item]
        lambda: live.upsert([1], np.ones((1, D), np.float32), [{"x": float("nan")}]),
        lambda: live.delete([True]),
    ]
    for call in bad:
        with pytest.raises(InputError):
            call()
    assert live.stats() == before
    live.close()


def test_log_of_another_build_is_set_aside(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    live.upsert([5000], np.ones((1, D), np.float32))
    live.close()
    _build(tmp_path / "idx")  # rebuilt from scratch: a new log id
    fresh = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    assert fresh.stats().delta_rows == 0 and not fresh.rows_of([5000])
    assert any(".stale-" in p.name for p in live_dir(tmp_path / "idx").iterdir())
    fresh.close()


# ---- HTTP ------------------------------------------------------------------------------

@pytest.fixture()
def client(tmp_path: Path):
    _build(tmp_path / "idx", string_ids=True)
    app = create_app(Settings(index_dir=str(tmp_path / "idx"), write_keys=(KEY,),
                              text_encoder="off", watch_seconds=0))
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_http_write_api(client: TestClient) -> None:
    v = [3.0] * D  # scores 144 against itself, beyond any random base vector
    r = client.put("/documents", json={"documents": [
        {"id": "new-1", "vector": v, "payload": {"title": "hello", "year": 2024}},
        {"id": "d3", "vector": [-x for x in v]}]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "acknowledged" and r.json()["count"] == 2
    hits = client.post("/search", json={"vector": v, "k": 3, "with_payload": True}).json()
    top = hits["result"]["hits"][0]
    assert top["id"] == "new-1" and top["payload"] == {"title": "hello", "year": 2024}
    only = client.post("/search", json={"vector": v, "k": 1, "with_payload": ["year"]}).json()
    assert only["result"]["hits"][0]["payload"] == {"year": 2024}
    # a base document's payload from docs.sqlite; d3 was replaced (no payload now)
    assert client.get("/documents/d6").json() == {"id": "d6", "payload": {"n": 6, "tag": "even"}}
    assert client.get("/documents/d3").json() == {"id": "d3"}
    got = client.get("/documents/new-1", params={"with_vector": "true"}).json()
    assert got["vector"] == pytest.approx(v)
    r = client.post("/documents/delete", json={"ids": ["new-1", "nope"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["count"] == 1
    assert client.get("/documents/new-1").status_code == 404
    hits = client.post("/search", json={"vector": v, "k": 20, "params": {"exact": True}}).json()
    assert "new-1" not in [h["id"] for h in hits["result"]["hits"]]
    info = client.get("/index").json()
    assert info["count"] == N and info["live"]["delta_rows"] == 2
    assert info["live"]["tombstones"] == 2 and info["payloads"] == N // 3


def test_http_writes_need_a_key_and_valid_input(client: TestClient) -> None:
    doc = {"id": "z", "vector": [0.1] * D}
    assert client.put("/documents", json={"documents": [doc]}).status_code == 401
    bad_key = {"Authorization": "Bearer " + "x" * 20}
    assert client.put("/documents", json={"documents": [doc]}, headers=bad_key).status_code == 403
    before = client.get("/index").json()["live"]["last_lsn"]
    cases = [
        {"documents": [doc, {"id": "y", "vector": [0.1] * (D - 1)}]},  # one bad: none written
        {"documents": [doc, {"id": "z", "vector": [0.1] * D}]},  # the same id twice
        {"documents": [{"id": 7, "vector": [0.1] * D}]},  # an int id on a string-id index
        {"documents": [{"id": "t", "text": "hello"}]},  # no encoder
        {"documents": [{"id": "p", "vector": [0.1] * D, "payload": [1]}]},
        {"documents": []},
        {"ids": ["a"]},
    ]
    for body in cases:
        r = client.put("/documents", json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
    assert client.get("/index").json()["live"]["last_lsn"] == before
    assert client.get("/documents/z").status_code == 404


def test_http_writes_disabled_without_keys(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    app = create_app(Settings(index_dir=str(tmp_path / "idx"), text_encoder="off",
                              watch_seconds=0))
    with TestClient(app) as c:
        r = c.put("/documents", json={"documents": [{"id": 1, "vector": [0.0] * D}]})
        assert r.status_code == 403 and "EBR_WRITE_KEYS" in r.json()["status"]["error"]
        assert c.get("/documents/3").json()["payload"] == {"n": 3, "tag": "odd"}
        assert c.get("/documents/abc").status_code == 422  # integer ids


def test_sharded_index_refuses_writes(tmp_path: Path) -> None:
    from ebr.index.sharded import build_sharded

    x = np.random.default_rng(0).standard_normal((400, D)).astype(np.float32)
    build_sharded(tmp_path / "sh", x, BuildParams(spec=IndexSpec.parse("IVF4,PQ4")), 2)
    app = create_app(Settings(index_dir=str(tmp_path / "sh"), write_keys=(KEY,),
                              text_encoder="off", watch_seconds=0))
    with TestClient(app) as c:
        r = c.put("/documents", json={"documents": [{"id": 1, "vector": [0.0] * D}]},
                  headers=AUTH)
        assert r.status_code == 409 and "sharded" in r.json()["status"]["error"]


def test_build_payloads_from_jsonl(tmp_path: Path) -> None:
    from index_build.__main__ import main

    x = np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "p.jsonl").write_text("\n".join(
        json.dumps({"id": i, "payload": {"i": i}}) for i in range(0, 300, 10)))
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "idx"), "--spec", "IVF4,PQ4", "--payloads",
                 str(tmp_path / "p.jsonl")]) == 0
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    assert live.payloads([10, 11]) == {10: {"i": 10}, 11: None}
    live.close()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": 999, "payload": {}}))
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "idx2"), "--spec", "IVF4,PQ4", "--payloads",
                 str(tmp_path / "bad.jsonl")]) == 2  # an id the index does not have
    assert not (tmp_path / "idx2").exists()


def test_retrain_keeps_documents_and_the_log(tmp_path: Path) -> None:
    """retrain: compaction, new codebooks (OPQ here) over the current documents, payloads
    kept, and the same log continued (a write after it is replayed onto the new base)."""
    from index_build.__main__ import main

    x = _build(tmp_path / "idx")
    model = Model(x)
    rng = np.random.default_rng(5)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    _random_writes(live, model, rng, 10, [N])
    live.close()
    assert main(["--no-progress", "retrain", "--index", str(tmp_path / "idx"),
                 "--codebooks", "opq"]) == 0
    oi = open_index(tmp_path / "idx")
    assert oi.manifest.codebooks["method"] == "opq" and oi.manifest.ntotal == len(model.docs)
    after = open_live(oi, tmp_path / "idx")
    kept = next(i for i in range(0, N, 3)
                if i in model.docs and np.array_equal(model.docs[i], x[i]))
    row = after.rows_of([kept])[kept]
    assert after.payloads([row]) == {row: {"n": kept, "tag": "even" if kept % 2 == 0 else "odd"}}
    v = rng.standard_normal((1, D)).astype(np.float32)
    after.upsert([99_999], v)
    model.docs[99_999] = v[0]
    after.close()
    again = LiveSearcher(open_live(open_index(tmp_path / "idx"), tmp_path / "idx"))
    _check(again, model, rng, Metric.IP)


def test_every_worker_sees_a_write_at_once(tmp_path: Path) -> None:
    """Two workers, one log: a search after the acknowledgement, on whichever worker answers
    it, returns the document (each worker applies the log before a search)."""
    from helpers import served

    from ebr.client import Client, Document

    _build(tmp_path / "idx")
    with served(tmp_path / "idx", tmp_path / "server.log", workers=2, write_keys=KEY) as (url, _):
        rng = np.random.default_rng(6)
        for t in range(10):
            v = (rng.standard_normal(D) * 5).tolist()
            with Client(url, api_key=KEY) as h:
                h.upsert([Document(50_000 + t, vector=v)])
            for _ in range(4):
                with Client(url) as h:  # a new connection: either worker
                    assert h.search(v, k=1).ids == [50_000 + t]
        with Client(url, api_key=KEY) as h:
            assert h.delete(list(range(50_000, 50_010))).count == 10
            for _ in range(6):
                assert [h.get(50_000 + t) for t in range(10)] == [None] * 10


def test_server_killed_mid_write_stream(tmp_path: Path) -> None:
    """kill -9 the HTTP server at 20 random points of a write stream: after each restart
    every acknowledged write is there, every acknowledged delete gone, the write in flight
    whole or absent."""
    from helpers import served, wait_for

    from ebr.client import Client, Document
    from ebr.errors import EbrError, ServiceError

    _build(tmp_path / "idx", payloads=False)
    rng = np.random.default_rng(7)
    present: dict[int, bool] = {}
    next_id = 100_000
    for round_ in range(20):
        with served(tmp_path / "idx", tmp_path / "server.log", write_keys=KEY) as (url, server):
            stop = threading.Event()
            acked: list[tuple[str, list[int]]] = []
            pending: list[tuple[str, list[int]]] = []  # sent, not acknowledged (at most one)

            def stream(url: str = url, stop: threading.Event = stop, acked: list = acked,
                       pending: list = pending, base: int = next_id) -> None:
                i = base
                with Client(url, api_key=KEY, timeout=10, retries=0) as h:
                    while not stop.is_set():
                        pending[:] = [("D", [i - 1, i - 2]) if i % 4 == 3 else ("U", [i])]
                        op, ids = pending[0]
                        try:
                            if op == "D":
                                h.delete(ids)
                            else:
                                h.upsert([Document(i, vector=[float(i % 7)] * D)])
                        except ServiceError as e:
                            if e.status_code is None:
                                return  # the server is gone: this write was not acknowledged
                        except EbrError:
                            pass  # refused: not acknowledged, nothing written
                        else:
                            acked.append((op, ids))
                            pending.clear()
                        i += 1

            t = threading.Thread(target=stream)
            t.start()
            assert wait_for(lambda acked=acked: bool(acked), 30)  # a busy machine is slow
            threading.Event().wait(float(rng.uniform(0.0, 0.5)))
            server.send_signal(signal.SIGKILL)
            server.wait()
            stop.set()
            t.join()
        next_id += 100_000
        for op, ids in acked:
            for i in ids:
                present[i] = op == "U"
        assert acked, "no write was acknowledged before the kill"
        live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
        # the write in flight at the kill may have been logged or not, never in part
        outcomes = [dict(present)]
        for op, ids in pending:
            outcomes.append({**present, **{i: op == "U" for i in ids}})
        found = set(live.rows_of(sorted({i for o in outcomes for i in o})))
        assert any({i for i, p in o.items() if p} == found for o in outcomes), f"round {round_}"
        present = next(o for o in outcomes if {i for i, p in o.items() if p} == found)
        live.close()


def test_get_document_rejects_ids_out_of_range(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    app = create_app(Settings(index_dir=str(tmp_path / "idx"), text_encoder="off",
                              watch_seconds=0))
    with TestClient(app) as c:
        assert c.get("/documents/" + "9" * 30).status_code == 422  # past int64: not a 500
        assert c.get("/documents/-5").status_code == 404


def test_read_only_view_replays_the_log(tmp_path: Path) -> None:
    """A view that may not write (a read-only mount) still serves every logged write."""
    from ebr.errors import WritesUnsupportedError

    x = _build(tmp_path / "idx")
    model = Model(x)
    rng = np.random.default_rng(8)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    _random_writes(live, model, rng, 10, [N])
    live.close()
    view = open_live(open_index(tmp_path / "idx"), tmp_path / "idx", writable=False)
    assert not view.writable
    _check(LiveSearcher(view), model, rng, Metric.IP)
    with pytest.raises(WritesUnsupportedError):
        view.upsert([1], np.ones((1, D), np.float32))


def test_folding_recent_rows_into_the_large_segment(tmp_path: Path, monkeypatch) -> None:
    """Every 16 rows (here) the recent part of the delta is folded into the large one: the
    answers stay those of brute force, before and after each fold, and after compaction."""
    monkeypatch.setattr("ebr.index.view.RECENT_ROWS", 16)
    x = _build(tmp_path / "idx")
    model = Model(x)
    rng = np.random.default_rng(9)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    searcher = LiveSearcher(live)
    next_id = [N]
    for _ in range(5):
        _random_writes(live, model, rng, 6, next_id)
        _check(searcher, model, rng, Metric.IP)
    assert live.big.ntotal > 0  # folds happened
    live.close()
    compact(tmp_path / "idx")
    _check(LiveSearcher(open_live(open_index(tmp_path / "idx"), tmp_path / "idx")), model, rng,
           Metric.IP)


def test_evaluate_covers_the_logged_writes(tmp_path: Path) -> None:
    """index_build evaluate on a living index measures what the service serves: base + delta
    - tombstones; with every list probed and every candidate re-ranked, recall 1.0."""
    from index_build.evaluate import evaluate_index

    _build(tmp_path / "idx")
    rng = np.random.default_rng(10)
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    new = rng.standard_normal((200, D)).astype(np.float32) * 3  # they win most top-10s
    live.upsert(list(range(N, N + 200)), new)
    live.delete(list(range(0, 300)))
    live.close()
    q = rng.standard_normal((20, D)).astype(np.float32)
    rows, meta = evaluate_index(tmp_path / "idx", q, nprobes=[NLIST], candidate_counts=[500],
                                k_max=10, baseline=True)
    assert meta["ntotal"] == N + 200 - 300
    best = [r for r in rows if r["stage"] != "exact" and r["candidates"] == 500]
    assert best and max(r["exact_recall@10"] for r in best) == pytest.approx(1.0)
    # every list probed: the ceiling holds every exact top-10 row, the written ones included
    ceiling = [r for r in rows if r["stage"] == "ceiling"]
    assert len(ceiling) == 1 and ceiling[0]["exact_recall@10"] == 1.0


def test_tombstones_match_a_flag_array_and_never_change_what_a_search_holds():
    """The dead-row bits against a bool array (the reference): kills (some twice), growth
    past the capacity, the packed bytes faiss reads (np.packbits of the flags), counts and
    masks; bytes handed to a search stay as they were when later rows die."""
    from ebr.index.tombstones import Tombstones

    rng = np.random.default_rng(7)
    t = Tombstones(10)
    ref = np.zeros(0, dtype=bool)
    held = []
    for step in range(300):
        row = int(rng.integers(0, 40 + 3 * step))  # grows past the capacity
        if row >= len(ref):
            ref = np.concatenate([ref, np.zeros(row + 1 - len(ref), dtype=bool)])
        assert t.kill(row) == (not ref[row])
        ref[row] = True
        n = len(ref) + int(rng.integers(0, 9))
        if step % 7 == 0:
            packed = t.packed(n)
            want = np.packbits(np.pad(ref, (0, n - len(ref))), bitorder="little")
            np.testing.assert_array_equal(packed, want)
            held.append((packed, want.copy()))
        assert t.count == int(ref.sum()) and t[row] and not t[t.capacity + 5]
    np.testing.assert_array_equal(t.mask(len(ref) + 5)[:len(ref)], ref)
    assert not t.mask(len(ref) + 5)[len(ref):].any()
    a, b = 30, len(ref) - 3
    assert t.count_in(a, b) == int(ref[a:b].sum())
    for _ in range(50):  # ranges on and off byte boundaries, past the capacity, empty
        a, b = sorted(int(v) for v in rng.integers(0, t.capacity + 20, 2))
        assert t.count_in(a, b) == int(ref[a:b].sum()), (a, b)
    assert t.count_in(9, 3) == 0
    for packed, want in held:  # later kills went to copies
        np.testing.assert_array_equal(packed, want)
    with pytest.raises(ValueError):
        t.kill(-1)
