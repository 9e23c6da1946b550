import numpy as np

from ebr.data.synthetic import SyntheticConfig, generate, iter_chunks
from ebr.metric import Metric
from ebr.search.exact import exact_search


def test_seeded_and_chunk_invariant():
    a = generate(SyntheticConfig(n=1000, d=16, nq=20, nq_train=5, n_clusters=8))
    b = generate(SyntheticConfig(n=1000, d=16, nq=20, nq_train=5, n_clusters=8))
    np.testing.assert_array_equal(a.xb, b.xb)
    np.testing.assert_array_equal(a.xq, b.xq)
    assert a.qrels == b.qrels
    c = generate(SyntheticConfig(n=1000, d=16, nq=20, nq_train=5, n_clusters=8, seed=1))
    assert not np.array_equal(a.xb, c.xb)
    chunks = list(iter_chunks(SyntheticConfig(n=1000, d=16, n_clusters=8, chunk=300)))
    assert [len(x) for x in chunks] == [300, 300, 300, 100]


def test_structure_and_planted_relevance():
    ds = generate(SyntheticConfig(n=4000, d=128, nq=100, nq_train=10, n_clusters=16))
    assert ds.xb.dtype == np.float32 and ds.xb.shape == (4000, 128)
    np.testing.assert_allclose(np.linalg.norm(ds.xb, axis=1), 1, rtol=1e-5)
    assert all(1 <= len(r) <= 3 for r in ds.qrels)
    ex = exact_search(ds.xq, ds.xb, 10, Metric.IP)
    found = np.mean([len(set(ex.ids[i]) & set(r)) / len(r) for i, r in enumerate(ds.qrels)])
    assert 0.6 < found < 1.0  # relevant docs are findable but not trivially the top hits
    # anisotropic: a cluster's spread is dominated by a few directions
    sv = np.linalg.svd(ds.xb[:500] - ds.xb[:500].mean(0), compute_uv=False)
    assert sv[0] > 2 * sv[20]


def test_l2_unnormalised():
    ds = generate(SyntheticConfig(n=500, d=8, nq=5, nq_train=2, n_clusters=4, metric=Metric.L2))
    assert not np.allclose(np.linalg.norm(ds.xb, axis=1), 1)


def test_write_stream_matches_generate(tmp_path):
    """The streamed corpus is the in-memory one, byte for byte; queries come from its rows."""
    from ebr.data.synthetic import write_stream
    from ebr.io.vecs import read_bin

    cfg = SyntheticConfig(n=2500, d=16, nq=20, chunk=700, seed=11)
    paths = write_stream(cfg, tmp_path / "s")
    xb = read_bin(paths["corpus"])
    np.testing.assert_array_equal(xb, generate(cfg).xb)
    xq = np.load(paths["queries_test"])
    assert xq.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1, rtol=1e-5)
    assert (xq @ np.asarray(xb).T).max(axis=1).min() > 0.5  # each near its anchor row
    again = write_stream(cfg, tmp_path / "t")
    assert again["corpus"].read_bytes() == paths["corpus"].read_bytes()


def test_minilm_profile_follows_the_fitted_spectrum():
    """The 'minilm' profile: unit vectors sharing a common mean, anisotropic queries offset
    from the documents (bench/fit_generator.py compares it with SciFact in full); seeded."""
    import pytest

    from ebr.data.synthetic import MINILM_FIT

    cfg = SyntheticConfig(n=3000, d=384, nq=600, nq_train=8, profile="minilm", seed=3)
    ds = generate(cfg)
    assert np.allclose(np.linalg.norm(ds.xb, axis=1), 1, atol=1e-5)
    assert np.array_equal(ds.xb, generate(cfg).xb)
    assert abs(np.linalg.norm(ds.xb.mean(0)) - MINILM_FIT["mean_norm"]) < 0.05
    second = np.linalg.eigvalsh(ds.xq.T @ ds.xq / len(ds.xq))[::-1]
    iso = generate(SyntheticConfig(n=3000, d=384, nq=600, nq_train=8, seed=3)).xq
    second_iso = np.linalg.eigvalsh(iso.T @ iso / len(iso))[::-1]
    assert second[:10].sum() / second.sum() > 0.2 > second_iso[:10].sum() / second_iso.sum()
    assert abs(np.linalg.norm(ds.xq.mean(0) - ds.xb.mean(0)) - MINILM_FIT["query_offset"]) < 0.05
    assert abs((ds.xq @ ds.xb.T).max(1).mean() - MINILM_FIT["query_top1"]) < 0.06
    with pytest.raises(ValueError, match="profile"):
        SyntheticConfig(profile="bert")
