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
    assert len(rows) == 1 + 2 * 2 * 2 * 2  # exact + systems x nprobe x C x stage
    full = [r for r in rows if r["nprobe"] == 16 and r["candidates"] == 100]
    for r in full:  # all lists, C = 100: both systems reach exact top-10 after re-rank
        if r["stage"] == "reranked":
            assert r["exact_recall@10"] >= 0.98
    ebr = [r for r in rows if r["system"] == "ebr"]
    faiss_rows = [r for r in rows if r["system"].startswith("faiss")]
    for a, b in zip(ebr, faiss_rows, strict=False):  # same training -> same recall as the peer
        assert a["exact_recall@10"] == pytest.approx(b["exact_recall@10"], abs=0.02)
    assert 0 < rows[0]["ndcg@10"] <= 1 and meta["ram_fraction_of_dense"] < 0.5
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
                                                    metric=Metric.parse(metric), kmeans_niter=5))
    rows, _ = evaluate_index(tmp_path / "rq", ds.xq, nprobes=[2], candidate_counts=[50],
                             baseline=True)
    peer = [r for r in rows if r["system"].startswith("faiss")]
    assert peer and peer[0]["system"] == "faiss IVFRQ+RefineFlat"
    ebr = [r for r in rows if r["system"] == "ebr"]
    for a, b in zip(ebr, peer, strict=True):  # same training, same codes: faiss' own RQ scan
        assert a["exact_recall@10"] == pytest.approx(b["exact_recall@10"], abs=0.02)
