import json
import math

import numpy as np
import pytest

from ebr.eval.metrics import (
    label_metrics,
    ndcg_per_query,
    paired_difference,
    recall_vs_exact,
    recall_vs_exact_tolerant,
)
from ebr.eval.report import markdown_table, write_report
from index_build.evaluate import evaluate_index


def test_recall_vs_exact():
    ids = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    exact = np.array([[3, 2, 9, 8], [7, 6, 5, 4]])
    assert recall_vs_exact(ids, exact, 1) == 0.0
    assert recall_vs_exact(ids, exact, 2) == pytest.approx(1 / 4)  # {2} of q1 only
    assert recall_vs_exact(ids, exact, 4) == pytest.approx((2 + 4) / 8)


def test_tolerant_recall_counts_ties():
    exact_scores = np.array([[0.9, 0.8, 0.8]])
    returned = np.array([[0.9, 0.8, 0.8]])  # another doc with the tied score
    assert recall_vs_exact_tolerant(returned, exact_scores, 3) == 1.0
    assert recall_vs_exact_tolerant(np.array([[0.9, 0.8, 0.1]]), exact_scores, 3) == \
        pytest.approx(2 / 3)


def test_label_metrics_hand_made():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q"]]
    qrels = [{"b": 1, "z": 1}, {"x": 2, "y": 1}, {}]
    m = label_metrics(ranked, qrels, ks=(1, 3), ndcg_k=3, mrr_k=3)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)  # empty-qrels query skipped
    assert m["recall@3"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 2)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg1 = 1.0  # ideal order
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    per = ndcg_per_query(ranked, qrels, k=3)
    assert per[:2] == pytest.approx([ndcg0, ndcg1]) and math.isnan(per[2])
    assert np.nanmean(per) == pytest.approx(m["ndcg@3"])


def test_paired_difference_against_hand_computed():
    a = [0.5, 0.7, float("nan"), 0.2, 1.0]
    b = [0.4, 0.7, 0.3, 0.5, 0.6]
    d = np.array([0.1, 0.0, -0.3, 0.4])  # the third query is undefined for a: left out
    mean, se, n = paired_difference(a, b)
    assert n == 4 and mean == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / 2)
    assert paired_difference(b, b) == (0.0, 0.0, 5)
    assert math.isnan(paired_difference([0.1], [0.2])[1])
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def test_evaluate_rows_and_report(index_ip, ds_ip, tmp_path):
    qrels = {f"q{i}": {str(d): 1 for d in rel} for i, rel in enumerate(ds_ip.qrels)}
    rows, meta = evaluate_index(index_ip, ds_ip.xq, query_ids=[f"q{i}" for i in range(40)],
                                qrels=qrels, nprobes=[2, 16], candidate_counts=[20, 100],
                                baseline=True)
    assert rows[0]["system"] == "exact" and rows[0]["exact_recall@10"] == 1.0
    assert len(rows) == 1 + 2 * 2 * 2 * 2 + 2  # exact + systems x nprobe x C x stage + ceilings
    full = [r for r in rows if r["nprobe"] == 16 and r["candidates"] == 100]
    for r in full:  # all lists, C = 100: both systems reach exact top-10 after re-rank
        if r["stage"] == "reranked":
            assert r["exact_recall@10"] >= 0.98
    ebr = [r for r in rows if r["system"] == "ebr" and r["stage"] != "ceiling"]
    faiss_rows = [r for r in rows if r["system"].startswith("faiss")]
    for a, b in zip(ebr, faiss_rows, strict=False):  # same training -> same recall as the peer
        assert a["exact_recall@10"] == pytest.approx(b["exact_recall@10"], abs=0.02)
    assert 0 < rows[0]["ndcg@10"] <= 1 and meta["ram_fraction_of_dense"] < 0.5
    assert meta["probe"] == "list points (16 per list, rank 32)"  # the default build's, d = 32
    assert meta["memory"]["probe_bytes"] > 0
    paths = write_report(tmp_path, "r", {"title": "t", **meta}, rows)
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(rows)
    assert paths["png"].stat().st_size > 1000
    assert "| system |" in paths["md"].read_text()
    row = {"a": float("nan"), "b": 1.23456}
    assert markdown_table([row], ["a", "b"]).splitlines()[2] == "| – | 1.2346 |"


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_evaluate_rq_against_faiss_own_ivf_rq(ds_ip, ds_l2, tmp_path, metric):
    """L2: faiss' scan decodes each vector (exact norm); ebr reads the norm byte."""
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    ds = ds_ip if metric == "ip" else ds_l2
    write_index(tmp_path / "rq", ds.xb, BuildParams(spec=IndexSpec.parse("IVF8,RQ4"),
                                                    metric=Metric.parse(metric), kmeans_niter=5,
                                                    list_points=1))  # faiss' probe, too
    rows, _ = evaluate_index(tmp_path / "rq", ds.xq, nprobes=[2], candidate_counts=[50],
                             baseline=True)
    peer = [r for r in rows if r["system"].startswith("faiss")]
    assert peer and peer[0]["system"] == "faiss IVFRQ+RefineFlat"
    ebr = [r for r in rows if r["system"] == "ebr" and r["stage"] != "ceiling"]
    for a, b in zip(ebr, peer, strict=True):  # same training, same codes: faiss' own RQ scan
        assert a["exact_recall@10"] == pytest.approx(b["exact_recall@10"], abs=0.02)


def _ceiling_reference(searcher, xq, exact_ids, nprobe):
    """The definition: every document of the probed lists re-ranked (C = all), which of the
    exact top-k it returns."""
    from ebr.spec import SearchParams

    k = exact_ids.shape[1]
    res, _ = searcher.search(xq, SearchParams(k=k, nprobe=nprobe, candidates=searcher.ntotal))
    return np.array([np.isin(e, r[r >= 0]) for e, r in zip(exact_ids, res.ids, strict=True)])


@pytest.mark.parametrize("spec,metric", [("IVF16,PQ8", "ip"), ("OPQ4,IVF8,PQ4", "ip"),
                                         ("IVF8,RQ4", "l2"), ("IVF8,PQ6", "l2")])
def test_probed_is_reranking_every_document_of_the_probed_lists(ds_ip, ds_l2, tmp_path, spec,
                                                               metric):
    """Searcher.probed against its definition on seeded data: the rows of the exact top-10
    that a search re-ranking every candidate of the probed lists returns; all of them with
    every list probed, fewer with one."""
    from ebr.index.reader import open_index
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.search.searcher import Searcher
    from ebr.spec import BuildParams, IndexSpec

    ds = ds_ip if metric == "ip" else ds_l2
    parsed = IndexSpec.parse(spec)
    write_index(tmp_path / "i", ds.xb, BuildParams(spec=parsed, metric=Metric.parse(metric),
                                                   kmeans_niter=5))
    s = Searcher(open_index(tmp_path / "i"))
    exact = s.exact(ds.xq, 10).ids
    for nprobe in (1, 2, parsed.nlist):
        held = s.probed(ds.xq, exact, nprobe)
        np.testing.assert_array_equal(held, _ceiling_reference(s, ds.xq, exact, nprobe))
        if nprobe == 1:
            assert 0.2 < held.mean() < 1.0  # one list holds some of the top-10, not all
    assert s.probed(ds.xq, exact, parsed.nlist).all()
    padded = exact.copy()
    padded[:, 5:] = -1  # rows of -1 (nothing) are never held
    assert not s.probed(ds.xq, padded, 2)[:, 5:].any()
    from ebr.errors import InputError, SearchParamError

    with pytest.raises(InputError):
        s.probed(ds.xq, exact[:3], 2)  # one row list per query
    with pytest.raises(InputError):
        s.probed(ds.xq, exact + len(ds.xb), 2)  # no such rows
    with pytest.raises(SearchParamError):
        s.probed(ds.xq, exact, parsed.nlist + 1)


def test_probed_on_a_living_index_holds_the_delta_rows(tmp_path):
    """Written and deleted since the build: the ceiling is still what re-ranking every
    candidate of the probed lists (base, segments, tombstones) returns."""
    from ebr.index.live import open_live
    from ebr.index.reader import open_index
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.search.live import LiveSearcher
    from ebr.spec import BuildParams, IndexSpec

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 16)).astype(np.float32)
    write_index(tmp_path / "i", x, BuildParams(spec=IndexSpec.parse("IVF8,PQ4"),
                                               metric=Metric.IP, kmeans_niter=5))
    live = open_live(open_index(tmp_path / "i"), tmp_path / "i")
    try:
        live.upsert(list(range(1500, 1700)), rng.standard_normal((200, 16)).astype(np.float32) * 2)
        live.delete(list(range(0, 100)))
        s = LiveSearcher(live)
        xq = rng.standard_normal((25, 16)).astype(np.float32)
        exact = s.exact(xq, 10).ids
        assert (exact >= 1500).any()  # the written rows are in the top-10s
        for nprobe in (1, 3, 8):
            held = s.probed(xq, exact, nprobe)
            np.testing.assert_array_equal(held, _ceiling_reference(s, xq, exact, nprobe))
        assert s.probed(xq, exact, 8).all()
    finally:
        live.close()


def test_evaluate_ceiling_rows_bound_every_reranked_row(index_ip, ds_ip):
    """The ceiling row of an nprobe: at least what any C re-ranks there, and its label
    figures are those of the exact ranking kept to the probed lists."""
    qrels = {f"q{i}": {str(d): 1 for d in rel} for i, rel in enumerate(ds_ip.qrels)}
    rows, _ = evaluate_index(index_ip, ds_ip.xq, query_ids=[f"q{i}" for i in range(40)],
                             qrels=qrels, nprobes=[1, 16], candidate_counts=[20, 100])
    ceilings = {r["nprobe"]: r for r in rows if r["stage"] == "ceiling"}
    assert set(ceilings) == {1, 16}
    assert ceilings[16]["exact_recall@10"] == 1.0 and ceilings[16]["ceiling_complete"] == 1.0
    assert ceilings[16]["ndcg@10"] == pytest.approx(rows[0]["ndcg@10"])  # exact search's
    assert ceilings[1]["exact_recall@10"] < 1.0
    for r in rows:
        if r["stage"] == "reranked":
            c = ceilings[r["nprobe"]]
            assert r["exact_recall@10"] <= c["exact_recall@10"] + 1e-9
            assert r["exact_recall@1"] <= c["exact_recall@1"] + 1e-9
    # each ceiling follows the rows of its nprobe
    at = [i for i, r in enumerate(rows) if r["stage"] == "ceiling"]
    assert rows[at[0] - 1]["nprobe"] == 1 and rows[at[1] - 1]["nprobe"] == 16


def test_operating_points_against_brute_force():
    """The frontier: every re-ranked row of the system that no other row of it matches or
    beats on recall at no greater p50 (checked pairwise), cheapest first; the pick is the
    cheapest reaching the target."""
    from ebr.eval.sweep import operating_points

    rng = np.random.default_rng(5)
    rows = [{"system": "ebr", "stage": "reranked", "nprobe": int(p), "candidates": int(c),
             "exact_recall@10": float(rng.choice([0.8, 0.9, 0.95, 0.99])),
             "p50_ms": float(rng.uniform(0.1, 2))}
            for p, c in rng.integers(1, 64, size=(40, 2))]
    rows += [{"system": "ebr", "stage": "coarse", "nprobe": 1, "candidates": 1,
              "exact_recall@10": 1.0, "p50_ms": 0.01},  # not re-ranked: never a point
             {"system": "faiss", "stage": "reranked", "nprobe": 1, "candidates": 1,
              "exact_recall@10": 1.0, "p50_ms": 0.01}]  # another system's
    frontier, pick = operating_points(rows, "ebr", 0.95)
    mine = rows[:40]
    want = [r for r in mine if not any(
        o is not r and o["p50_ms"] <= r["p50_ms"] and o["exact_recall@10"] >= r["exact_recall@10"]
        and (o["p50_ms"], -o["exact_recall@10"]) < (r["p50_ms"], -r["exact_recall@10"])
        for o in mine)]
    want.sort(key=lambda r: r["p50_ms"])
    assert [(f["nprobe"], f["candidates"], f["p50_ms"]) for f in frontier] == \
        [(r["nprobe"], r["candidates"], r["p50_ms"]) for r in want]
    reach = [r for r in mine if r["exact_recall@10"] >= 0.95]
    least = [r for r in reach if not any(o["nprobe"] <= r["nprobe"] and
                                         o["candidates"] <= r["candidates"] and
                                         (o["nprobe"], o["candidates"]) !=
                                         (r["nprobe"], r["candidates"]) for o in reach)]
    best = min(least, key=lambda r: r["p50_ms"])
    assert (pick["nprobe"], pick["candidates"], pick["p50_ms"]) == \
        (best["nprobe"], best["candidates"], best["p50_ms"])
    # more work measured faster by noise is never the pick
    noisy = [{"system": "ebr", "stage": "reranked", "nprobe": p, "candidates": c,
              "exact_recall@10": 0.96, "p50_ms": t}
             for p, c, t in [(32, 200, 0.34), (32, 400, 0.31), (64, 200, 0.30), (16, 800, 0.5)]]
    pick = operating_points(noisy, "ebr", 0.95)[1]
    assert (pick["nprobe"], pick["candidates"]) == (32, 200)
    assert operating_points(rows, "ebr", None)[1] is None
    assert operating_points(rows, "ebr", 1.0)[1] is None  # no row reaches 1.0
    with pytest.raises(ValueError):
        operating_points(rows, "ebr", 1.5)


def test_evaluate_recommends_serving_parameters(index_ip, ds_ip):
    rows, meta = evaluate_index(index_ip, ds_ip.xq, nprobes=[1, 16], candidate_counts=[20, 100],
                                target_recall=0.9)
    pick = meta["recommended_point"]
    assert pick["exact_recall@10"] >= 0.9 and any(
        r["stage"] == "reranked" and (r["nprobe"], r["candidates"]) ==
        (pick["nprobe"], pick["candidates"]) for r in rows)
    assert meta["recommended"].startswith(f"nprobe {pick['nprobe']}, candidates "
                                          f"{pick['candidates']}:")
    _, meta = evaluate_index(index_ip, ds_ip.xq, nprobes=[1], candidate_counts=[20, 100],
                             target_recall=1.0)  # one list of 16 cannot hold every top 10
    assert "the probed lists cap it" in meta["recommended"] and "--nprobe" in meta["recommended"]
    from ebr.errors import InputError

    with pytest.raises(InputError):  # refused before any sweep
        evaluate_index(index_ip, ds_ip.xq, nprobes=[1], candidate_counts=[20], target_recall=0)


def test_evaluate_picks_lists_as_asked(index_ip, ds_ip):
    """probe='flat' ranks the lists by their centroids (no points in RAM); the default by the
    build's list points; each report says which."""
    _, flat = evaluate_index(index_ip, ds_ip.xq, nprobes=[2], candidate_counts=[50],
                             probe="flat")
    assert flat["probe"] == "centroids (every one scored)"
    assert flat["memory"]["probe_bytes"] == 0
    rows, points = evaluate_index(index_ip, ds_ip.xq, nprobes=[2], candidate_counts=[50])
    assert points["probe"].startswith("list points") and points["memory"]["probe_bytes"] > 0
    assert any(r["stage"] == "ceiling" for r in rows)
