"""Sharded indexes: one set of codebooks, shards written independently, exact merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ebr.errors import CorruptFileError, IndexFormatError, InputError
from ebr.index.reader import open_index
from ebr.index.sharded import build_sharded, open_sharded, shard_ranges, train_once
from ebr.index.writer import write_index
from ebr.io.manifest import seal
from ebr.metric import Metric
from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardedSearcher
from ebr.spec import BuildParams, IndexSpec, SearchParams

PARAMS = BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), metric=Metric.IP, kmeans_niter=8)


@pytest.fixture(scope="module")
def built(ds_ip, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pre = train_once(ds_ip.xb, PARAMS)
    ids = [f"doc{i}" for i in range(len(ds_ip.xb))]
    write_index(root / "single", ds_ip.xb, PARAMS, ids, codebooks=pre)
    m = build_sharded(root / "sharded", ds_ip.xb, PARAMS, 3, ids, trainer=pre)
    return root, m


def test_shard_ranges_cover_everything():
    r = shard_ranges(10, 3)
    assert r[0][0] == 0 and r[-1][1] == 10 and all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
    with pytest.raises(InputError):
        shard_ranges(10, 0)


@pytest.mark.parametrize("nprobe,kc,k", [(2, 20, 5), (4, 100, 10), (16, 3000, 10)])
def test_sharded_equals_single_node(ds_ip, built, nprobe, kc, k):
    root, m = built
    assert m.format_version == "2.0" and len(m.shards) == 3 and m.ntotal == len(ds_ip.xb)
    single = Searcher(open_index(root / "single"))
    sharded = ShardedSearcher(open_sharded(root / "sharded"))
    p = SearchParams(k=k, nprobe=nprobe, candidates=kc)
    a, _ = single.search(ds_ip.xq, p)
    b, _ = sharded.search(ds_ip.xq, p)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    si = open_sharded(root / "sharded")
    assert si.external_ids(b.ids[0]) == single.index.external_ids(a.ids[0])


def test_evaluate_sharded_equals_single_node(ds_ip, built):
    """index_build evaluate on the sharded index: every recall, label and ceiling figure of
    the single index built from the same codebooks (ties aside: none on this data)."""
    from index_build.evaluate import evaluate_index

    root, _ = built
    qids = [f"q{i}" for i in range(len(ds_ip.xq))]
    qrels = {q: {f"doc{d}": 1 for d in rel} for q, rel in zip(qids, ds_ip.qrels, strict=True)}
    got = {}
    for name in ("single", "sharded"):
        rows, meta = evaluate_index(root / name, ds_ip.xq, query_ids=qids, qrels=qrels,
                                    nprobes=[1, 4], candidate_counts=[20, 100])
        got[name] = ([{k: v for k, v in r.items() if not k.startswith(("p5", "p9", "qps"))}
                      for r in rows], meta)
    assert got["sharded"][0] == got["single"][0]
    assert [r["stage"] for r in got["sharded"][0]].count("ceiling") == 2
    assert got["sharded"][1]["shards"] == 3 and got["single"][1]["shards"] is None
    for key in ("ntotal", "dense_bytes_per_vector"):
        assert got["sharded"][1][key] == pytest.approx(got["single"][1][key], rel=1e-3)
    # each shard holds its own centroids and codebooks: more fixed RAM, the same codes
    assert got["sharded"][1]["ram_bytes_per_vector"] > got["single"][1]["ram_bytes_per_vector"]
    single = Searcher(open_index(root / "single"))
    sharded = ShardedSearcher(open_sharded(root / "sharded"))
    exact = single.exact(ds_ip.xq, 10).ids
    np.testing.assert_array_equal(sharded.probed(ds_ip.xq, exact, 2),
                                  single.probed(ds_ip.xq, exact, 2))
    with pytest.raises(InputError):
        sharded.probed(ds_ip.xq, exact + len(ds_ip.xb), 2)


def test_sharded_coarse_only_reads_no_rows(ds_ip, built):
    """rerank=False: the coarse ranking, as the single index gives it, with no dense row read
    and the time on the coarse stage (before, every shard re-ranked and reported 0 s)."""
    root, _ = built
    single = Searcher(open_index(root / "single"))
    sharded = ShardedSearcher(open_sharded(root / "sharded"))
    p = SearchParams(k=10, nprobe=16, candidates=3000, rerank=False)
    a, _ = single.search(ds_ip.xq, p)
    b, st = sharded.search(ds_ip.xq, p)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert st.reranked == st.dense_rows_read == st.dense_bytes_read == 0
    assert st.rerank_seconds == 0.0 < st.coarse_seconds and st.found > 0
    _, st2 = sharded.search(ds_ip.xq, SearchParams(k=10, nprobe=16, candidates=100))
    assert st2.reranked == st2.found > 0 and st2.rerank_seconds > 0


def test_sharded_directory_is_guarded(built, tmp_path, ds_ip):
    import shutil

    root, _ = built
    with pytest.raises(IndexFormatError, match="sharded"):
        open_index(root / "sharded")
    with pytest.raises(IndexFormatError, match="not a sharded"):
        open_sharded(root / "single")
    bad = tmp_path / "bad"
    shutil.copytree(root / "sharded", bad)
    with open(bad / "shard-001" / "dense.fbin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(CorruptFileError):
        open_sharded(bad)
    # a shard from other codebooks is refused
    shutil.rmtree(bad)
    shutil.copytree(root / "sharded", bad)
    other = BuildParams(spec=PARAMS.spec, metric=Metric.IP, kmeans_niter=8, seed=99)
    write_index(bad / "shard-002", ds_ip.xb[2000:], other, overwrite=True)
    m = json.loads((bad / "manifest.json").read_text())
    from ebr.io.manifest import sha256_file

    entry = m["files"]["shard-002/manifest.json"]
    entry["sha256"] = sha256_file(bad / "shard-002" / "manifest.json")
    entry["bytes"] = (bad / "shard-002" / "manifest.json").stat().st_size
    (bad / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="codebooks differ"):
        open_sharded(bad)


def test_failed_shard_leaves_nothing(ds_ip, tmp_path):
    def boom(jobs):
        jobs[0]()
        raise RuntimeError("worker died")
    with pytest.raises(RuntimeError):
        build_sharded(tmp_path / "x", ds_ip.xb, PARAMS, 2, run=boom)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


def test_default_ids_are_global_rows(ds_ip, tmp_path):
    build_sharded(tmp_path / "s", ds_ip.xb, PARAMS, 2)
    si = open_sharded(tmp_path / "s")
    assert si.external_ids(np.array([0, 1499, 1500, 2999, -1])) == [0, 1499, 1500, 2999, None]


@pytest.mark.slow
def test_ray_build_equals_single_node(ds_ip, built, tmp_path):
    """Ray Data writes the shards (local Ray instance); the result searches like one index."""
    pytest.importorskip("ray", reason="extra 'distributed' not installed")
    from ebr.index.distributed import build_on_ray
    from ebr.io.vecs import write_bin

    root, _ = built
    write_bin(tmp_path / "x.fbin", ds_ip.xb)
    pre = train_once(ds_ip.xb, PARAMS)
    ids = [f"doc{i}" for i in range(len(ds_ip.xb))]
    m = build_on_ray(tmp_path / "ray", tmp_path / "x.fbin", PARAMS, 2, ids, trainer=pre)
    assert m.build["executor"] == "ray" and [s["ntotal"] for s in m.shards] == [1500, 1500]
    single = Searcher(open_index(root / "single"))
    si = open_sharded(tmp_path / "ray")
    p = SearchParams(k=10, nprobe=4, candidates=100)
    a, _ = single.search(ds_ip.xq, p)
    b, _ = ShardedSearcher(si).search(ds_ip.xq, p)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert si.external_ids(b.ids[0]) == single.index.external_ids(a.ids[0])


def test_service_serves_a_sharded_index(ds_ip, built):
    """The FastAPI service opens a sharded directory and answers like the single index."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root, _ = built
    replies = {}
    for name in ("single", "sharded"):
        with TestClient(create_app(Settings(index_dir=str(root / name)))) as c:
            info = c.get("/index").json()
            assert info["count"] == 3000
            out = []
            for body in ({"vector": ds_ip.xq[0].tolist(), "k": 5,
                          "params": {"nprobe": 4, "candidates": 50}},
                         {"vector": ds_ip.xq[1].tolist(), "k": 3, "with_vector": True,
                          "params": {"exact": True}},
                         {"vector": ds_ip.xq[2].tolist(), "k": 4,
                          "params": {"nprobe": 4, "candidates": 50, "rerank": False}}):
                r = c.post("/search", json=body)
                assert r.status_code == 200, r.text
                out.append([(h["id"], round(h["score"], 5), h.get("vector") is not None)
                            for h in r.json()["result"]["hits"]])
            r = c.post("/search", json={"vector": ds_ip.xq[0].tolist(), "k": 5,
                                        "params": {"nprobe": 99}})
            assert r.status_code == 422
            assert c.post("/admin/reload").status_code in (401, 403, 404)
            replies[name] = out
    assert replies["single"] == replies["sharded"]


@pytest.mark.slow
def test_ray_serve_router_equals_single_node(ds_ip, built):
    """Shards as Ray Serve deployments behind the ebr FastAPI router: same answers over HTTP
    as the single-node index built from the same codebooks."""
    pytest.importorskip("ray", reason="extra 'distributed' not installed")
    import socket

    import httpx
    import ray
    from ray import serve

    from service.ray_serve import serve_sharded

    root, _ = built
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    single = Searcher(open_index(root / "single"))
    try:
        for attempt in (1, 2):  # Ray Serve's proxy can miss its 60 s start on a loaded machine
            try:
                serve_sharded(root / "sharded", port=port)
                break
            except (ray.exceptions.RayError, TimeoutError):
                if attempt == 2:
                    raise
                serve.shutdown()
        base = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{base}/index", timeout=30).json()
        assert info["count"] == 3000 and info["memory"]["shards"] == 3
        p = SearchParams(k=5, nprobe=4, candidates=50)
        for i in range(5):
            r = httpx.post(f"{base}/search", json={"vector": ds_ip.xq[i].tolist(), "k": 5,
                                                  "params": {"nprobe": 4, "candidates": 50}},
                           timeout=30)
            assert r.status_code == 200, r.text
            ref, _ = single.search(ds_ip.xq[i], p)
            assert [h["id"] for h in r.json()["result"]["hits"]] == \
                single.index.external_ids(ref.ids[0])
        r = httpx.post(f"{base}/search", json={  # a filter, passed to every shard deployment
            "vector": ds_ip.xq[0].tolist(), "k": 5,
            "filter": {"has_id": ["doc1", "doc1500", "doc2999", "nope"]}}, timeout=30)
        assert r.status_code == 200, r.text
        assert sorted(h["id"] for h in r.json()["result"]["hits"]) == \
            ["doc1", "doc1500", "doc2999"]
        assert r.json()["result"]["stats"]["matches"] == 3
        bad = httpx.post(f"{base}/search", json={"vector": [1.0, 2.0], "k": 5}, timeout=30)
        assert bad.status_code == 422
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize("spec", [None, "IVF8,RQ4"])
def test_sharded_distill_keeps_lists_and_query_map(ds_ip, tmp_path, spec):
    """Learned codebooks: every shard keeps the k-means lists, the query map and (RQ) the
    score-aware code choice training used, so the sharded index answers like the single one."""
    pytest.importorskip("torch", reason="extra 'train' not installed")
    from ebr.train.distill_vq import DistillConfig, DistillVQTrainer

    params = PARAMS if spec is None else BuildParams(spec=IndexSpec.parse(spec),
                                                     metric=Metric.IP, kmeans_niter=4)
    tr = DistillVQTrainer(DistillConfig(max_epochs=1, n_pseudo=300, top_k=20, n_random=64,
                                        val_k=20, score_aware_eta=(4.0,), guard=False),
                          niter=5)  # the learned parts kept, whatever they score
    pre = train_once(ds_ip.xb, params, tr)
    assert pre.list_centroids is not None and pre.query_map is not None
    assert (pre.score_aware is None) == (spec is None)
    assert train_once(ds_ip.xb, params, pre) is pre  # shards get the k-means lists too
    # the single index trains again (same seed, same codebooks) and writes with the trainer
    # itself, so the shards' codes are checked against the trainer's, not against Pretrained
    write_index(tmp_path / "single", ds_ip.xb, params, trainer=tr)
    build_sharded(tmp_path / "sharded", ds_ip.xb, params, 2, trainer=pre)
    si = open_sharded(tmp_path / "sharded")
    assert all(oi.query_map is not None for oi in si.shards)
    p = SearchParams(k=10, nprobe=4, candidates=100)
    a, _ = Searcher(open_index(tmp_path / "single")).search(ds_ip.xq, p)
    b, _ = ShardedSearcher(si).search(ds_ip.xq, p)
    np.testing.assert_array_equal(a.ids, b.ids)
    p = SearchParams(k=10, nprobe=4, candidates=10, rerank=False)  # the coarse scores themselves
    a, _ = Searcher(open_index(tmp_path / "single")).search(ds_ip.xq, p)
    b, _ = ShardedSearcher(si).search(ds_ip.xq, p)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_sharded_rq_equals_single_node(ds_ip, ds_l2, tmp_path, metric):
    """L2: the norm byte's levels come with the shared codebooks, so shards score alike."""
    ds = ds_ip if metric == "ip" else ds_l2
    params = BuildParams(spec=IndexSpec.parse("IVF8,RQ4"), metric=Metric.parse(metric),
                         kmeans_niter=4)
    pre = train_once(ds.xb, params)
    write_index(tmp_path / "single", ds.xb, params, codebooks=pre)
    build_sharded(tmp_path / "sharded", ds.xb, params, 2, trainer=pre)
    p = SearchParams(k=10, nprobe=4, candidates=10, rerank=False)  # the RQ scores themselves
    a, _ = Searcher(open_index(tmp_path / "single")).search(ds.xq, p)
    b, _ = ShardedSearcher(open_sharded(tmp_path / "sharded")).search(ds.xq, p)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    # ids differ only among equal scores (L2's quantized norm makes ties common): a position
    # whose ids differ holds a score shared by another position of the row, or the last one
    for ra, rb, sa in zip(a.ids, b.ids, a.scores, strict=True):
        for i in np.flatnonzero(ra != rb):
            tied = np.isclose(sa, sa[i], rtol=1e-5, atol=1e-5).sum() > 1
            assert tied or i == len(sa) - 1 or ra[i] in rb, (ra, rb, sa)
