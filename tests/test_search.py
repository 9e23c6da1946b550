"""Two-stage search against the brute-force reference."""

import numpy as np
import pytest

from ebr.errors import InputError, SearchParamError
from ebr.eval.metrics import recall_vs_exact
from ebr.index.reader import open_index
from ebr.metric import Metric, exact_scores
from ebr.quant.faiss_index import ivf_params
from ebr.search.exact import exact_search
from ebr.search.rerank import topk
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams


def _numpy_reference(xq, xb, k, metric):
    """Independent reference: float64 scores, full sort."""
    xq, xb = xq.astype(np.float64), xb.astype(np.float64)
    s = xq @ xb.T if metric is Metric.IP else -((xq[:, None, :] - xb[None]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k], np.sort(s, axis=1)[:, ::-1][:, :k]


@pytest.mark.parametrize("fixture", ["index_ip", "index_l2"])
@pytest.mark.parametrize("nq", [1, 7])
def test_full_probe_equals_exact(request, fixture, nq):
    """nprobe = nlist and candidates = ntotal: the two-stage search IS exact search."""
    oi = open_index(request.getfixturevalue(fixture))
    s = Searcher(oi)
    xq = np.asarray(oi.dense[:: oi.ntotal // nq][:nq], dtype=np.float32) + 0.01
    res, stats = s.search(xq, SearchParams(k=10, nprobe=oi.nlist, candidates=oi.ntotal))
    ref = s.exact(xq, 10)
    np.testing.assert_array_equal(res.ids, ref.ids)
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-5, atol=1e-4)
    # float32 store: compiled per-query reads; float16 (index_l2): distinct rows, read once
    reads = nq * oi.ntotal if oi.dense.dtype == np.float32 else oi.ntotal
    assert stats.found == nq * oi.ntotal and stats.dense_rows_read == reads
    ids64, s64 = _numpy_reference(xq, np.asarray(oi.dense), 10, oi.metric)
    np.testing.assert_array_equal(ref.ids, ids64)
    np.testing.assert_allclose(ref.scores, s64, rtol=1e-4, atol=1e-3)


def test_exact_blocks_and_ties():
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((1000, 8)).astype(np.float32)
    xb[500] = xb[20]  # exact duplicate: tie must go to the smaller id
    xq = xb[[20, 7]] + 0.001
    a = exact_search(xq, xb, 5, Metric.IP, block=97)
    b = exact_search(xq, xb, 5, Metric.IP, block=100000)
    np.testing.assert_array_equal(a.ids, b.ids)
    r = exact_search(xb[[20]], xb, 2, Metric.L2, block=33)
    assert r.ids[0].tolist() == [20, 500]
    assert exact_search(xq, xb[:3], 5, Metric.IP).ids[0, 3:].tolist() == [-1, -1]


def test_topk_padding_and_order():
    scores = np.array([[0.5, -np.inf, 0.9, 0.5]], dtype=np.float32)
    ids = np.array([[7, -1, 3, 2]])
    out_ids, out_scores = topk(scores, ids, 6)
    assert out_ids.tolist() == [[3, 2, 7, -1, -1, -1]]
    assert np.isneginf(out_scores[0, 3:]).all()


def test_topk_of_one_query_sorts_only_the_best_and_their_ties():
    """One query with many candidates takes the partition path; it must order exactly as the
    full sort does (two rows take that one): ties across the k-th place by smaller id, -inf
    padding last."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        c = int(rng.integers(41, 400))
        scores = rng.integers(0, 6, c).astype(np.float32)  # many ties, at the boundary too
        ids = rng.permutation(10 * c)[:c].astype(np.int64)
        pad = rng.random(c) < (0.9 if trial % 4 == 0 else 0.1)
        scores[pad], ids[pad] = -np.inf, -1
        k = int(rng.integers(1, 11))
        one = topk(scores[None], ids[None], k)
        two = topk(np.stack([scores, scores]), np.stack([ids, ids]), k)
        np.testing.assert_array_equal(one[0][0], two[0][0])
        np.testing.assert_array_equal(one[1][0], two[1][0])


@pytest.mark.parametrize("fixture,floor", [("index_ip", 0.9), ("index_l2", 0.9)])
def test_recall_floor(request, fixture, floor, ds_ip, ds_l2):
    oi = open_index(request.getfixturevalue(fixture))
    xq = ds_ip.xq if fixture == "index_ip" else ds_l2.xq
    s = Searcher(oi)
    ref = s.exact(xq, 10)
    coarse, _ = s.search(xq, SearchParams(k=10, nprobe=4, candidates=10, rerank=False))
    rr, st = s.search(xq, SearchParams(k=10, nprobe=4, candidates=100))
    r_coarse, r_rr = recall_vs_exact(coarse.ids, ref.ids, 10), recall_vs_exact(rr.ids, ref.ids, 10)
    assert r_rr >= floor
    assert r_rr > r_coarse  # the re-rank is what recovers the PQ loss
    assert st.dense_bytes_read == st.dense_rows_read * oi.dim * oi.dense.dtype.itemsize
    assert 0 < st.dense_rows_read <= len(xq) * 100


def test_coarse_only_is_faiss(index_ip, ds_ip):
    oi = open_index(index_ip)
    res, st = Searcher(oi).search(ds_ip.xq, SearchParams(k=5, nprobe=3, candidates=20, rerank=False))
    D, ids = oi.coarse.search(ds_ip.xq, 20, params=ivf_params(oi.coarse, 3))
    np.testing.assert_array_equal(res.ids, ids[:, :5])
    np.testing.assert_allclose(res.scores, D[:, :5])
    assert st.dense_bytes_read == 0 and st.reranked == 0


def test_reranked_scores_are_exact(index_l2, ds_l2):
    oi = open_index(index_l2)
    res, _ = Searcher(oi).search(ds_l2.xq, SearchParams(k=5, nprobe=2, candidates=40))
    for q, ids, sc in zip(ds_l2.xq, res.ids, res.scores, strict=False):
        want = exact_scores(q[None], np.asarray(oi.dense[ids], dtype=np.float32), Metric.L2)[0]
        np.testing.assert_allclose(sc, want, rtol=1e-4, atol=1e-3)
        assert (np.diff(sc) <= 0).all()


def test_padding_when_lists_are_short(index_ip, ds_ip):
    oi = open_index(index_ip)
    res, st = Searcher(oi).search(ds_ip.xq[:3], SearchParams(k=10, nprobe=1, candidates=2000))
    assert st.found < 3 * 2000  # one list holds fewer than 2000 docs
    for ids, sc in zip(res.ids, res.scores, strict=False):
        assert ((ids >= 0) == np.isfinite(sc)).all()


def test_search_input_errors(index_ip):
    s = Searcher(open_index(index_ip))
    q = np.zeros((1, 32), np.float32)
    with pytest.raises(InputError, match="dimension 31"):
        s.search(np.zeros((1, 31), np.float32), SearchParams())
    bad = q.copy()
    bad[0, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        s.search(bad, SearchParams())
    with pytest.raises(InputError, match="empty"):
        s.search(np.zeros((0, 32), np.float32), SearchParams())
    with pytest.raises(SearchParamError, match="nprobe"):
        s.search(q, SearchParams(nprobe=17))
    with pytest.raises(SearchParamError, match="candidates"):
        s.search(q, SearchParams(candidates=10**6))
    with pytest.raises(SearchParamError):
        s.exact(q, 0)
    assert s.search(q[0], SearchParams(k=3, nprobe=2, candidates=3))[0].ids.shape == (1, 3)


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
def test_rerank_paths_agree(metric):
    """numpy path (float16 stores): shared candidates (one gemm) and distinct candidates
    (per-query gemv) give the same top-k, reading each distinct row once."""
    from ebr.search.rerank import rerank

    rng = np.random.default_rng(11)
    xb = np.asfortranarray(rng.standard_normal((5000, 16)).astype(np.float32))  # numpy path
    xq = rng.standard_normal((6, 16)).astype(np.float32)
    shared = np.tile(rng.choice(5000, 50, replace=False), (6, 1))  # 50 rows <= 4 x 50
    distinct = rng.choice(5000, (6, 50), replace=False)  # 300 rows > 4 x 50
    distinct[:, -3:] = -1
    for cand in (shared, distinct):
        ids, scores, rows = rerank(xq, cand, xb, metric, 10)
        assert rows == len(np.unique(cand[cand >= 0]))
        for i in range(6):
            c = cand[i][cand[i] >= 0]
            want = exact_scores(xq[i:i + 1], xb[c], metric)[0]
            order = np.argsort(-want, kind="stable")[:10]
            np.testing.assert_array_equal(ids[i], c[order])
            np.testing.assert_allclose(scores[i], want[order], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
def test_compiled_rerank_matches_numpy(metric):
    """The faiss by-index kernel and the numpy path agree: ids, scores, -1 padding, k > C."""
    from ebr.search.rerank import _compiled_ok, rerank

    rng = np.random.default_rng(11)
    xb = rng.standard_normal((500, 12)).astype(np.float32)
    xq = rng.standard_normal((4, 12)).astype(np.float32)
    cand = np.stack([rng.choice(500, 30, replace=False) for _ in range(4)]).astype(np.int64)
    cand[1, 20:] = -1  # trailing padding, as the coarse search returns it
    cand[2, :] = -1
    assert _compiled_ok(xq, cand, xb)
    fast = rerank(xq, cand, xb, metric, 40)
    slow = rerank(xq, cand, np.asfortranarray(xb), metric, 40)  # not C-contiguous: numpy
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    assert fast[0][1, 20:].tolist() == [-1] * 20 and (fast[0][2] == -1).all()
    bad = cand.copy()
    bad[0, 0] = -1  # a hole before valid ids: faiss would stop there, so numpy takes it
    assert not _compiled_ok(xq, bad, xb)
    np.testing.assert_array_equal(rerank(xq, bad, xb, metric, 5)[0][0],
                                  rerank(xq, bad, np.asfortranarray(xb), metric, 5)[0][0])


def test_found_per_query_and_a_padded_single_query():
    """Valid candidates per row (faiss pads the end of a row with -1), and one query with
    fewer candidates than k: the compiled re-rank pads it with -1 / -inf and counts one row."""
    from ebr.search.rerank import _compiled_ok, found_per_query, rerank

    cand = np.array([[3, 1, 2], [4, -1, -1], [-1, -1, -1]], dtype=np.int64)
    per, total = found_per_query(cand)
    assert per.tolist() == [3, 1, 0] and total == 4
    for i, want in enumerate((3, 1, 0)):
        per, total = found_per_query(cand[i:i + 1])
        assert per.tolist() == [want] and total == want
    per, total = found_per_query(np.zeros((2, 0), dtype=np.int64))
    assert per.tolist() == [0, 0] and total == 0
    rng = np.random.default_rng(12)
    xb = rng.standard_normal((10, 8)).astype(np.float32)
    xq = rng.standard_normal((1, 8)).astype(np.float32)
    for metric in (Metric.IP, Metric.L2):
        assert _compiled_ok(xq, cand[1:2], xb)
        ids, scores, rows = rerank(xq, cand[1:2], xb, metric, 3, padded_at_end=True)
        assert ids.tolist() == [[4, -1, -1]] and rows == 1
        assert np.isfinite(scores[0, 0]) and np.isneginf(scores[0, 1:]).all()
