"""Payload filters: the SQL and the in-memory evaluation agree; filtered search returns
exactly min(k, matches) hits, each satisfying the filter, equal to filtered brute force."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ebr.errors import InputError
from ebr.filters import matches, parse_filter, to_sql
from ebr.index.docs import write_docs
from ebr.index.live import open_live
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.search.live import LiveSearcher
from ebr.spec import BuildParams, IndexSpec, SearchParams

FIELDS = {"lang": "keyword", "year": "int", "score": "float", "tags": "keyword",
          "ok": "bool", "meta.src": "keyword"}
D, N = 16, 6000


def _payload(rng: np.random.Generator, i: int) -> dict:
    p = {"lang": str(rng.choice(["en", "de", "fr", "ja"], p=[0.6, 0.25, 0.1, 0.05])),
         "year": int(rng.integers(1990, 2025)), "score": float(rng.random()),
         "tags": [str(t) for t in rng.choice(["a", "b", "c", "d", "e"], size=int(
             rng.integers(0, 3)), replace=False)],
         "ok": bool(rng.random() < 0.5), "meta": {"src": str(rng.choice(["x", "y"]))}}
    if i % 17 == 0:  # missing and oddly typed fields
        p.pop("year")
        p["lang"] = 7
    if i % 23 == 0:
        p["year"] = True
    return p


FILTERS = [
    {"must": [{"key": "lang", "match": {"value": "en"}}]},
    {"must": [{"key": "tags", "match": {"any": ["a", "e"]}}]},
    {"must": [{"key": "year", "range": {"gte": 2000, "lt": 2010}}]},
    {"should": [{"key": "lang", "match": {"value": "ja"}},
                {"key": "score", "range": {"gt": 0.99}}]},
    {"must_not": [{"key": "lang", "match": {"any": ["en", "de"]}}]},
    {"must": [{"key": "ok", "match": {"value": True}}, {"key": "meta.src",
                                                         "match": {"value": "y"}}]},
    {"must": [{"key": "year", "match": {"value": 2001}}, {"key": "lang",
                                                           "match": {"value": "fr"}}]},
    {"has_id": [1, 2, 3, 99_999]},
    {"must": [{"key": "year", "range": {"lte": 1990}}], "must_not": [{"has_id": [0]}]},
]


def test_sql_and_memory_evaluation_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = [_payload(rng, i) for i in range(2000)]
    write_docs(tmp_path / "d.sqlite", list(range(2000)), list(enumerate(payloads)),
               fields=FIELDS)
    con = sqlite3.connect(tmp_path / "d.sqlite")
    for raw in FILTERS:
        f = parse_filter(raw, FIELDS)
        mem = {i for i, p in enumerate(payloads) if matches(f, i, p)}
        for arrays in ({"tags"}, set(FIELDS)):  # the scalar form where no array occurs
            where, params = to_sql(f, arrays)
            sql = {r for (r,) in con.execute(f"SELECT row FROM docs WHERE {where}", params)}
            assert sql == mem, (raw, arrays)
        plan = " ".join(str(r) for r in con.execute(f"EXPLAIN QUERY PLAN SELECT row FROM docs "
                                                     f"WHERE {to_sql(f, {'tags'})[0]}",
                                                     to_sql(f, {"tags"})[1]))
        if raw == FILTERS[2]:  # a range on a declared field: answered from its index
            assert "USING INDEX" in plan, plan
        assert 0 < len(sql) < 2000 or "has_id" in str(raw) or "lte" in str(raw)


@pytest.mark.parametrize("raw,problem", [
    ({"must": [{"key": "nope", "match": {"value": 1}}]}, "not a filterable field"),
    ({"must": [{"key": "year", "match": {"value": "x"}}]}, "expected a int value"),
    ({"must": [{"key": "lang", "range": {"gt": 1}}]}, "range needs int or float"),
    ({"must": {"key": "lang"}}, "expected a list"),
    ({"key": "lang", "match": {"value": "en"}, "extra": 1}, "expected must/should"),
    ({"has_id": []}, "1 to 10,000 ids"),
    ({"must": [{"key": "year", "range": {"between": 1}}]}, "some of gt, gte"),
    ([1], "expected an object"),
])
def test_malformed_filters_name_the_problem(raw: object, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_filter(raw, FIELDS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[dict]]:
    path = tmp_path_factory.mktemp("filters") / "idx"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D)).astype(np.float32)
    payloads = [_payload(rng, i) for i in range(N)]
    write_index(path, x, BuildParams(spec=IndexSpec.parse("IVF16,PQ4"), metric=Metric.IP),
                payloads=list(enumerate(payloads)), index_fields=FIELDS)
    return path, x, payloads


def test_filtered_search_equals_filtered_brute_force(corpus, tmp_path: Path) -> None:
    import shutil

    src, x, payloads = corpus
    shutil.copytree(src, tmp_path / "idx")  # writes go to this copy's log
    live = open_live(open_index(tmp_path / "idx"), tmp_path / "idx")
    rng = np.random.default_rng(2)
    docs = {i: (x[i], payloads[i]) for i in range(N)}
    new = rng.standard_normal((300, D)).astype(np.float32)
    new_p = [_payload(rng, N + i) for i in range(300)]
    live.upsert(list(range(N, N + 300)), new, new_p)
    docs.update({N + i: (new[i], new_p[i]) for i in range(300)})
    gone = [int(i) for i in rng.choice(N, 500, replace=False)]
    live.delete(gone)
    for i in gone:
        docs.pop(i)
    searcher = LiveSearcher(live)
    q = rng.standard_normal((6, D)).astype(np.float32)
    seen_paths = set()
    for raw in FILTERS:
        f = parse_filter(raw, FIELDS)
        keep = [i for i, (_, p) in docs.items() if matches(f, i, p)]
        c_want = len(keep)
        res, stats, c = searcher.search_filtered(q, SearchParams(k=10, nprobe=16,
                                                                 candidates=len(docs)), f)
        assert c == c_want, raw
        seen_paths.add(stats.nprobe == 0)  # the exact plan reports no nprobe
        xb = np.stack([docs[i][0] for i in keep]) if keep else np.zeros((0, D), np.float32)
        for r in range(len(q)):
            got = [i for i in searcher.external_ids(res.ids[r]) if i is not None]
            assert len(got) == min(10, c_want)
            assert all(matches(f, i, docs[i][1]) for i in got)
            want = [keep[j] for j in np.argsort(-(xb @ q[r]), kind="stable")[:10]]
            assert got == want, raw
    assert seen_paths == {True, False}  # both plans were exercised
    live.close()


def test_default_nprobe_still_returns_k(corpus) -> None:
    """A 1% filter at the default nprobe: the planner widens the probe until k survive."""
    src, x, payloads = corpus
    live = open_live(open_index(src), src, writable=False)
    searcher = LiveSearcher(live)
    f = parse_filter({"must": [{"key": "lang", "match": {"value": "ja"}},
                               {"key": "ok", "match": {"value": True}}]}, FIELDS)
    q = np.random.default_rng(3).standard_normal((20, D)).astype(np.float32)
    res, stats, c = searcher.search_filtered(q, SearchParams(k=10, nprobe=1, candidates=100),
                                             f)
    assert c >= 10
    assert all((row >= 0).sum() == 10 for row in res.ids)


def test_http_filter(corpus) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    src, x, payloads = corpus
    app = create_app(Settings(index_dir=str(src), text_encoder="off", watch_seconds=0))
    flt = {"must": [{"key": "lang", "match": {"value": "fr"}},
                    {"key": "year", "range": {"gte": 2010}}]}
    want = {i for i, p in enumerate(payloads) if matches(parse_filter(flt, FIELDS), i, p)}
    with TestClient(app) as c:
        for params in ({}, {"exact": True}, {"nprobe": 1}):
            r = c.post("/search", json={"vector": x[0].tolist(), "k": 10, "filter": flt,
                                        "params": params, "with_payload": ["lang", "year"]})
            assert r.status_code == 200, r.text
            res = r.json()["result"]
            assert res["stats"]["matches"] == len(want)
            assert len(res["hits"]) == min(10, len(want))
            assert all(h["id"] in want and h["payload"]["lang"] == "fr" for h in res["hits"])
        batch = c.post("/search/batch", json={"searches": [
            {"vector": x[1].tolist(), "k": 5, "filter": {"has_id": [1, 2, 3]}},
            {"vector": x[1].tolist(), "k": 5}]}).json()["result"]
        assert sorted(h["id"] for h in batch[0]["hits"]) == [1, 2, 3]
        assert len(batch[1]["hits"]) == 5 and "matches" not in batch[1]["stats"]
        for bad in ({"must": [{"key": "nope", "match": {"value": 1}}]},
                    {"must": [{"key": "year", "match": {"value": 10 ** 30}}]}, {"x": 1}):
            r = c.post("/search", json={"vector": x[0].tolist(), "filter": bad})
            assert r.status_code == 422 and "filter" in r.json()["status"]["error"], r.text


def test_cli_build_with_fields_and_evaluate_a_filter(tmp_path: Path) -> None:
    from index_build.__main__ import main

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", rng.standard_normal((20, D)).astype(np.float32))
    (tmp_path / "p.jsonl").write_text("\n".join(
        json.dumps({"id": i, "payload": {"year": 1990 + i % 30}}) for i in range(3000)))
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "idx"), "--spec", "IVF8,PQ4", "--payloads",
                 str(tmp_path / "p.jsonl"), "--index-field", "year:int"]) == 0
    flt = json.dumps({"must": [{"key": "year", "range": {"gte": 2015}}]})
    assert main(["--no-progress", "evaluate", "--index", str(tmp_path / "idx"), "--queries",
                 str(tmp_path / "q.npy"), "--nprobe", "8", "--candidates", "3000",
                 "--filter", flt, "--results", str(tmp_path / "r"), "--name", "f"]) == 0
    rows = json.loads((tmp_path / "r" / "f.json").read_text())["rows"]
    assert rows[0]["matches"] == 500 and rows[0]["exact_recall@10"] == 1.0
    assert rows[0]["full_k_share"] == 1.0
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "sh"), "--spec", "IVF8,PQ4", "--shards", "2", "--payloads",
                 str(tmp_path / "p.jsonl"), "--index-field", "year:int"]) == 0
    assert main(["--no-progress", "evaluate", "--index", str(tmp_path / "sh"), "--queries",
                 str(tmp_path / "q.npy"), "--nprobe", "1", "--candidates", "20",
                 "--filter", flt, "--results", str(tmp_path / "r"), "--name", "s"]) == 0
    rows = json.loads((tmp_path / "r" / "s.json").read_text())["rows"]
    assert rows[0]["matches"] == 500 and rows[0]["full_k_share"] == 1.0
    assert rows[0]["exact_recall@10"] > 0.5  # nprobe 1 of 8, widened by the planner
    bad = json.dumps({"must": [{"key": "month", "match": {"value": 1}}]})
    assert main(["--no-progress", "evaluate", "--index", str(tmp_path / "idx"), "--queries",
                 str(tmp_path / "q.npy"), "--filter", bad]) == 2


@pytest.fixture(scope="module")
def sharded(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ebr.index.sharded import build_sharded

    _, x, payloads = corpus
    path = tmp_path_factory.mktemp("filters-sharded") / "idx"
    build_sharded(path, x, BuildParams(spec=IndexSpec.parse("IVF16,PQ4"), metric=Metric.IP),
                  3, payloads=list(enumerate(payloads)), index_fields=FIELDS)
    return path


def test_sharded_filtered_search_equals_filtered_brute_force(corpus, sharded) -> None:
    """Each shard plans over its own payloads; the merge returns min(k, c) hits, c summed,
    equal to filtered brute force over the whole corpus (every candidate re-ranked)."""
    from ebr.index.sharded import open_sharded
    from ebr.search.sharded import ShardedSearcher

    _, x, payloads = corpus
    searcher = ShardedSearcher(open_sharded(sharded))
    assert searcher.fields() == FIELDS
    q = np.random.default_rng(5).standard_normal((4, D)).astype(np.float32)
    for raw in FILTERS:
        f = parse_filter(raw, FIELDS)
        keep = [i for i, p in enumerate(payloads) if matches(f, i, p)]
        for exact in (False, True):
            res, stats, c = searcher.search_filtered(
                q, SearchParams(k=10, nprobe=16, candidates=N), f, exact=exact)
            assert c == len(keep), raw
            for r in range(len(q)):
                got = [i for i in searcher.external_ids(res.ids[r]) if i is not None]
                want = [keep[j] for j in np.argsort(-(x[keep] @ q[r]), kind="stable")[:10]]
                assert got == want, (raw, exact)
    rows = searcher.payloads([0, 2500, 5999])
    assert rows == {0: payloads[0], 2500: payloads[2500], 5999: payloads[5999]}


def test_sharded_build_rejects_payloads_of_unknown_ids(tmp_path: Path) -> None:
    from ebr.index.sharded import build_sharded

    x = np.random.default_rng(6).standard_normal((600, D)).astype(np.float32)
    with pytest.raises(InputError, match="id 600"):
        build_sharded(tmp_path / "idx", x, BuildParams(spec=IndexSpec.parse("IVF4,PQ4")), 2,
                      payloads=[(1, {"a": 1}), (600, {"a": 2})])
    assert not (tmp_path / "idx").exists()


def test_http_filter_on_a_sharded_index(corpus, sharded) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    _, x, payloads = corpus
    flt = {"must": [{"key": "lang", "match": {"value": "fr"}}],
           "must_not": [{"key": "tags", "match": {"any": ["a"]}}]}
    want = {i for i, p in enumerate(payloads) if matches(parse_filter(flt, FIELDS), i, p)}
    with TestClient(create_app(Settings(index_dir=str(sharded), text_encoder="off",
                                        watch_seconds=0))) as c:
        assert c.get("/index").json()["payloads"] == N
        for params in ({}, {"exact": True}, {"nprobe": 1, "candidates": 10}):
            r = c.post("/search", json={"vector": x[3].tolist(), "k": 10, "filter": flt,
                                        "params": params, "with_payload": ["lang"]})
            assert r.status_code == 200, r.text
            res = r.json()["result"]
            assert res["stats"]["matches"] == len(want)
            assert len(res["hits"]) == 10
            assert all(h["id"] in want and h["payload"] == {"lang": "fr"} for h in res["hits"])
        r = c.post("/search", json={"vector": x[0].tolist(), "filter": {
            "must": [{"key": "nope", "match": {"value": 1}}]}})
        assert r.status_code == 422 and "not a filterable field" in r.text
