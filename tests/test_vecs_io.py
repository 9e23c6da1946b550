import numpy as np
import pytest

from ebr.errors import CorruptFileError, InputError
from ebr.io.vecs import check_vectors, load_vectors, read_bin, write_bin, write_vecs

RNG = np.random.default_rng(12345)


@pytest.mark.parametrize("suffix,dtype", [(".fbin", np.float32), (".f16bin", np.float16),
                                          (".ibin", np.int32), (".i64bin", np.int64)])
@pytest.mark.parametrize("shape", [(1, 3), (97, 7), (1024, 1)])
def test_bin_round_trip(tmp_path, suffix, dtype, shape):
    x = (RNG.standard_normal(shape) * 100).astype(dtype)
    p = tmp_path / f"x{suffix}"
    assert write_bin(p, x, chunk_rows=10) == p.stat().st_size
    for mmap in (True, False):
        y = read_bin(p, mmap=mmap)
        assert y.dtype == dtype and y.shape == shape
        np.testing.assert_array_equal(y, x)
        with pytest.raises((ValueError, TypeError)):
            y[0, 0] = 1  # read-only


def test_vecs_and_npy_round_trip(tmp_path):
    x = RNG.standard_normal((13, 5)).astype(np.float32)
    write_vecs(tmp_path / "x.fvecs", x)
    np.testing.assert_array_equal(load_vectors(tmp_path / "x.fvecs"), x)
    ids = RNG.integers(0, 1000, (4, 6)).astype(np.int32)
    write_vecs(tmp_path / "i.ivecs", ids)
    np.testing.assert_array_equal(load_vectors(tmp_path / "i.ivecs"), ids)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_vectors(tmp_path / "x.npy"), x)
    write_bin(tmp_path / "x.fbin", x)
    np.testing.assert_array_equal(load_vectors(tmp_path / "x.fbin"), x)


def test_truncated_and_trailing(tmp_path):
    x = RNG.standard_normal((10, 4)).astype(np.float32)
    p = tmp_path / "x.fbin"
    write_bin(p, x)
    data = p.read_bytes()
    p.write_bytes(data[:-3])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_bin(p)
    p.write_bytes(data + b"\0\0")
    with pytest.raises(CorruptFileError, match="trailing"):
        read_bin(p)
    p.write_bytes(data[:5])
    with pytest.raises(CorruptFileError, match="header"):
        read_bin(p)
    write_vecs(tmp_path / "x.fvecs", x)
    q = tmp_path / "x.fvecs"
    q.write_bytes(q.read_bytes()[:-1])
    with pytest.raises(CorruptFileError):
        load_vectors(q)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_vectors(tmp_path / "missing.npy")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(InputError, match="unsupported"):
        load_vectors(tmp_path / "x.csv")
    np.save(tmp_path / "one.npy", np.zeros(4, dtype=np.float32))
    with pytest.raises(InputError, match="2-D"):
        load_vectors(tmp_path / "one.npy")
    x = np.ones((5, 3), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(InputError, match="row 3"):
        check_vectors(x)
    with pytest.raises(InputError, match="dimension"):
        check_vectors(np.ones((2, 3), np.float32), d=4)
    with pytest.raises(InputError, match="row 1 has a value outside the float32 range"):
        check_vectors(np.array([[1.0], [1e300]]))
    with pytest.raises(InputError, match="numeric"):
        check_vectors(np.array([["a"]]))


def test_release_rows_drops_pages_keeps_data(tmp_path):
    """Streaming readers release each chunk: RSS falls, the data stays readable."""
    import sys

    from ebr.io.vecs import release_rows

    x = np.random.default_rng(0).random((40_000, 128), dtype=np.float32)  # 20 MB
    write_bin(tmp_path / "x.fbin", x)
    np.save(tmp_path / "x.npy", x)
    for m in (read_bin(tmp_path / "x.fbin"), np.load(tmp_path / "x.npy", mmap_mode="r")):
        total = float(np.asarray(m, dtype=np.float64).sum())  # touch every page

        def rss_file() -> int:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssFile:"):
                        return int(line.split()[1]) * 1024
            return -1
        before = rss_file() if sys.platform == "linux" else None
        release_rows(m, 0, len(m))
        if before is not None:
            assert before - rss_file() > 15e6
        assert float(np.asarray(m, dtype=np.float64).sum()) == total
    release_rows(x, 0, 10)  # in-memory: a no-op


def test_row_prefetch_switches_on_slow_gathers_and_keeps_results(tmp_path, index_ip, ds_ip):
    """The hybrid read path: off while gathers are fast, on after a slow one (then every row
    of a gather is hinted to the kernel first), off again after calm_queries fast ones; the
    re-rank's answers are the same either way."""
    from ebr.index.reader import open_index
    from ebr.io.vecs import RowPrefetch
    from ebr.search.searcher import Searcher
    from ebr.spec import SearchParams

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    write_bin(tmp_path / "d.fbin", x)
    p = RowPrefetch(tmp_path / "d.fbin", 16, slow_us_per_row=20.0, slow_queries=2,
                    calm_queries=3)
    p.hint(np.array([[1, 2, -1]]))
    assert not p.active and p.hinted_rows == 0  # warm: nothing asked
    p.observe(1e-3, 10)  # 100 us per row: from disk, or the scheduler
    p.observe(1e-6, 10)
    p.observe(1e-3, 10)
    assert not p.active  # one slow gather at a time is not a cold store
    p.observe(1e-3, 10)
    assert p.active and p.switches == 1
    p.hint(np.array([[3, 3, 9, -1], [9, 0, -1, -1]]))
    assert p.hinted_rows == 3  # distinct valid rows
    for _ in range(2):
        p.observe(1e-6, 10)
    assert p.active
    p.observe(1e-3, 10)  # slow again: the calm count restarts
    for _ in range(3):
        p.observe(1e-6, 10)
    assert not p.active and p.switches == 2
    p.observe(1.0, 0)  # no rows read: no signal
    assert not p.active
    with pytest.raises(ValueError):
        RowPrefetch(tmp_path / "d.fbin", 0)
    p.close()

    plain = Searcher(open_index(index_ip, prefetch=False))
    hybrid = Searcher(open_index(index_ip))
    assert plain.index.prefetch is None and hybrid.index.prefetch is not None
    hybrid.index.prefetch.active = True  # as after a cold gather
    sp = SearchParams(k=10, nprobe=8, candidates=100)
    a, _ = plain.search(ds_ip.xq[:20], sp)
    b, _ = hybrid.search(ds_ip.xq[:20], sp)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores)
    assert hybrid.index.prefetch.hinted_rows > 0
