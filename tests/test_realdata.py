"""Real data from ../shared/data (skipped cleanly when absent)."""

import numpy as np
import pytest

from ebr.eval.metrics import label_metrics, recall_vs_exact
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.io.beir import load_ids, load_qrels
from ebr.io.vecs import read_vecs
from ebr.metric import Metric
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, IndexSpec, SearchParams
from tests.conftest import shared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scifact_index(tmp_path_factory):
    emb = shared("scifact", "embeddings")
    xb = np.load(emb / "corpus_all-MiniLM-L6-v2.f32.npy")
    ids = load_ids(shared("scifact", "corpus.jsonl"))
    out = tmp_path_factory.mktemp("scifact") / "idx"
    write_index(out, xb, BuildParams(spec=IndexSpec.parse("IVF32,PQ48")), ids)
    return out


def test_scifact_exact_matches_published(scifact_index):
    emb = shared("scifact", "embeddings")
    xq = np.load(emb / "queries_test_all-MiniLM-L6-v2.f32.npy")
    qids = load_ids(emb / "queries_test_ids.txt")
    qrels = load_qrels(shared("scifact", "qrels", "test.tsv"))
    s = Searcher(open_index(scifact_index))
    ex = s.exact(xq, 100)
    ranked = [s.index.external_ids(r) for r in ex.ids]
    m = label_metrics(ranked, [qrels.get(q, {}) for q in qids])
    assert m["ndcg@10"] == pytest.approx(0.6451, abs=0.001)
    assert m["recall@100"] == pytest.approx(0.925, abs=0.002)
    res, _ = s.search(xq, SearchParams(k=10, nprobe=32, candidates=200))
    assert recall_vs_exact(res.ids, ex.ids, 10) >= 0.98
    m2 = label_metrics([s.index.external_ids(r) for r in res.ids],
                       [qrels.get(q, {}) for q in qids])
    assert m2["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=0.005)


def test_siftsmall_l2():
    base = shared("siftsmall", "siftsmall_base.fvecs")
    xb = np.array(read_vecs(base))
    xq = np.array(read_vecs(shared("siftsmall", "siftsmall_query.fvecs")))
    gt = np.array(read_vecs(shared("siftsmall", "siftsmall_groundtruth.ivecs")))
    from ebr.search.exact import exact_search

    ex = exact_search(xq, xb, 100, Metric.L2)
    assert recall_vs_exact(ex.ids, gt, 100) == 1.0  # our brute force = the published truth
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_index(f"{tmp}/i", xb, BuildParams(spec=IndexSpec.parse("IVF32,PQ16"),
                                                metric=Metric.L2))
        s = Searcher(open_index(f"{tmp}/i"))
        res, _ = s.search(xq, SearchParams(k=10, nprobe=16, candidates=200))
        assert recall_vs_exact(res.ids, gt, 10) >= 0.98
        assert s.index.memory()["ram_fraction_of_dense"] < 0.10
