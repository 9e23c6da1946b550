"""Score-aware (anisotropic) codes: the local search against brute force, the loss it lowers,
and the codes the writer stores for it."""

import itertools

import faiss
import numpy as np
import pytest

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.quant.additive import lift_rq, unpack_codes
from ebr.quant.anisotropic import anisotropic_loss, directions, fit_codebooks, refine_codes
from ebr.quant.encode import ScoreAware, add_with_assignment, score_aware_codes
from ebr.quant.faiss_index import extract_ivf, ivf_centroids, ivf_params
from ebr.quant.trainers import KMeansTrainer
from ebr.spec import IndexSpec


def _toy(seed=0, n=60, m=3, k=5, d=6):
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((m, k, d)).astype(np.float32)
    r = rng.standard_normal((n, d)).astype(np.float32)
    u = directions(rng.standard_normal((n, d)))
    codes = rng.integers(0, k, (n, m))
    return r, u, cb, codes


def test_refined_codes_are_coordinatewise_optimal_by_brute_force():
    r, u, cb, codes = _toy()
    eta = 5.0
    out = refine_codes(r, u, cb, codes, eta, passes=10)
    loss = anisotropic_loss(r, u, cb, out, eta)
    m, k = cb.shape[:2]
    for i in range(len(r)):  # no single codebook can do better with the others fixed
        for j in range(m):
            alt = np.repeat(out[i:i + 1], k, axis=0)
            alt[:, j] = np.arange(k)
            best = anisotropic_loss(np.repeat(r[i:i + 1], k, 0), np.repeat(u[i:i + 1], k, 0),
                                    cb, alt, eta).min()
            assert loss[i] <= best + 1e-5
    # and against the global optimum of all k^m codes: never below it, often at it
    every = np.array(list(itertools.product(range(k), repeat=m)))
    glob = np.array([anisotropic_loss(np.repeat(r[i:i + 1], len(every), 0),
                                      np.repeat(u[i:i + 1], len(every), 0), cb, every, eta).min()
                     for i in range(len(r))])
    assert np.all(loss >= glob - 1e-5)
    assert np.mean(np.isclose(loss, glob, rtol=1e-5, atol=1e-6)) >= 0.5


def test_loss_never_rises_and_input_is_kept():
    r, u, cb, codes = _toy(seed=1)
    before = codes.copy()
    for eta in (0.5, 1.0, 4.0, 30.0):
        out = refine_codes(r, u, cb, codes, eta, passes=1, chunk=7)  # chunks of 7 rows
        assert np.all(anisotropic_loss(r, u, cb, out, eta)
                      <= anisotropic_loss(r, u, cb, codes, eta) + 1e-5)
    np.testing.assert_array_equal(codes, before)
    np.testing.assert_array_equal(refine_codes(r, u, cb, codes, 2.0, passes=0), codes)


def test_eta_trades_orthogonal_for_parallel_error():
    """From faiss' RQ codes: eta 1 lowers plain reconstruction error; a large eta cuts the
    error along each vector's direction at some cost across it."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    rq = faiss.ResidualQuantizer(16, 3, 8)
    rq.train(x)
    codes = rq.compute_codes(x).astype(np.int64)  # one byte per codebook
    cb = faiss.vector_to_array(rq.codebooks).reshape(3, 256, 16)
    u = directions(x)

    def errors(c):
        e = x - cb[np.arange(3)[None], c].sum(1)
        par = (e * u).sum(1)
        return (e * e).sum(1).mean(), (par * par).mean()

    base_sq, base_par = errors(codes)
    sq1, _ = errors(refine_codes(x, u, cb, codes, 1.0))
    assert sq1 <= base_sq
    sq8, par8 = errors(refine_codes(x, u, cb, codes, 8.0))
    assert par8 < 0.7 * base_par and sq8 > sq1


def test_codebook_fit_solves_each_codebooks_weighted_least_squares():
    r, u, cb, codes = _toy(seed=3, n=200, k=8)
    codes[:, 1] = np.where(codes[:, 1] == 7, 0, codes[:, 1])  # codeword 7 of book 1 unused
    eta = 4.0
    out = fit_codebooks(r, u, cb, codes, eta)
    np.testing.assert_array_equal(out[1, 7], cb[1, 7])  # unused: kept
    assert anisotropic_loss(r, u, out, codes, eta).sum() < anisotropic_loss(r, u, cb, codes,
                                                                            eta).sum()
    # the last codebook fitted (M - 1) is exactly optimal given the others: the gradient of
    # the loss in each of its used codewords is zero, sum_i A_i (t_i - c_k) = 0
    m = cb.shape[0] - 1
    t = r - out[np.arange(m)[None], codes[:, :m]].sum(1)
    for k in np.unique(codes[:, m]):
        rows = codes[:, m] == k
        diff = t[rows] - out[m, k]
        grad = diff.sum(0) + (eta - 1) * (u[rows] * (u[rows] * diff).sum(1, keepdims=True)).sum(0)
        np.testing.assert_allclose(grad, 0.0, atol=1e-3)


def test_argument_errors():
    r, u, cb, codes = _toy()
    with pytest.raises(SpecError, match="eta"):
        refine_codes(r, u, cb, codes, 0.0)
    with pytest.raises(SpecError, match="directions"):
        refine_codes(r, u[:, :3], cb, codes, 2.0)
    with pytest.raises(SpecError, match="codes have shape"):
        refine_codes(r, u, cb, codes[:, :2], 2.0)
    with pytest.raises(SpecError, match=r"\[M, K, d\]"):
        refine_codes(r, u, cb[0], codes, 2.0)
    with pytest.raises(SpecError, match="passes"):
        refine_codes(r, u, cb, codes, 2.0, passes=-1)


@pytest.mark.parametrize("quantizer", ["RQ", "LSQ", "RQ4x10"])
def test_writer_path_stores_the_refined_codes_and_serves_their_scores(ds_ip, quantizer):
    spec = IndexSpec.parse(f"IVF8,{quantizer}" if "x" in quantizer else f"IVF8,{quantizer}4")
    xb = ds_ip.xb[:1500]
    index = KMeansTrainer(niter=5).train_index(xb, spec, Metric.IP, 0)
    ivf = extract_ivf(index)
    _, a = ivf.quantizer.search(xb, 1)
    a = a.ravel()
    w = np.eye(32, dtype=np.float32) + 0.1 * np.random.default_rng(0).standard_normal(
        (32, 32)).astype(np.float32)  # a query map: the directions are W x
    aware = ScoreAware(6.0, w)
    add_with_assignment(index, xb, a, aware)
    want = score_aware_codes(index, xb, a, aware)
    plain = unpack_codes(ivf.aq, ivf.aq.compute_codes(xb - ivf_centroids(ivf)[a]))
    assert (want != plain).any()  # the refinement changed something
    cb = faiss.vector_to_array(ivf.aq.codebooks).reshape(4, 2 ** spec.pq_nbits, 32)
    r = xb - ivf_centroids(ivf)[a]
    u = directions(xb @ w.T)
    assert anisotropic_loss(r, u, cb, want, 6.0).mean() < anisotropic_loss(r, u, cb, plain,
                                                                           6.0).mean()
    stored = np.empty_like(want)
    for li in range(ivf.nlist):
        n = ivf.invlists.list_size(li)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(li), n)
        packed = faiss.rev_swig_ptr(ivf.invlists.get_codes(li), n * spec.code_size)
        stored[ids] = unpack_codes(ivf.aq, packed.reshape(n, spec.code_size))
    np.testing.assert_array_equal(stored, want)
    # the served form scores <q, c + sum of the stored codewords>
    served = lift_rq(index)
    q = ds_ip.xq[:5]
    d, i = served.search(q, 10, params=ivf_params(served, 8))
    rec = ivf_centroids(ivf)[a] + cb[np.arange(4)[None], want].sum(1)
    np.testing.assert_allclose(d, np.take_along_axis(q @ rec.T, i, 1), rtol=1e-4, atol=1e-4)


def test_score_aware_needs_an_inner_product_additive_index(ds_ip, ds_l2):
    pq = KMeansTrainer(niter=3).train_index(ds_ip.xb, IndexSpec.parse("IVF8,PQ4"), Metric.IP, 0)
    with pytest.raises(SpecError, match="inner-product RQ"):
        score_aware_codes(pq, ds_ip.xb[:10], np.zeros(10, dtype=np.int64), ScoreAware(2.0))
    l2 = KMeansTrainer(niter=3).train_index(ds_l2.xb, IndexSpec.parse("IVF8,RQ4"), Metric.L2, 0)
    with pytest.raises(SpecError, match="inner-product RQ"):
        score_aware_codes(l2, ds_l2.xb[:10], np.zeros(10, dtype=np.int64), ScoreAware(2.0))
