"""The coarse probe (ebr.quant.probe): a graph over the centroids picks the lists, the IVF scans
them; the results are the flat probe's, and a graph that would miss lists is never served. The
lists' points (ebr.quant.listpoints) pick exactly the lists their definition ranks best."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

from ebr.errors import CorruptFileError, SpecError
from ebr.index.live import open_live
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.io import layout
from ebr.io.manifest import read_manifest, seal
from ebr.io.vecs import read_bin
from ebr.metric import Metric
from ebr.quant import probe as probe_mod
from ebr.quant.faiss_index import rotate
from ebr.quant.listpoints import ListPoints, fit_list_points
from ebr.search.live import LiveSearcher
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, IndexSpec, SearchParams


def _same(a: Searcher, b: Searcher, xq: np.ndarray, nprobe: int, c: int) -> None:
    for rerank in (False, True):
        p = SearchParams(k=10, nprobe=nprobe, candidates=c, rerank=rerank)
        ra, _ = a.search(xq, p)
        rb, _ = b.search(xq, p)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def opq_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((64, 32)).astype(np.float32)
    x = (centers[rng.integers(0, 64, 4000)] + 0.3 * rng.standard_normal((4000, 32))).astype(
        np.float32)
    out = tmp_path_factory.mktemp("opq") / "index"
    write_index(out, x, BuildParams(spec=IndexSpec.parse("OPQ8,IVF64,PQ8"), metric=Metric.IP,
                                    kmeans_niter=10))
    return out


def _rq_index(tmp_path_factory: pytest.TempPathFactory, metric: Metric) -> Path:
    """RQ, served through a slice of the tiled query in front of the quantizer's flat."""
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((64, 32)).astype(np.float32)
    x = (centers[rng.integers(0, 64, 3000)] + 0.3 * rng.standard_normal((3000, 32))).astype(
        np.float32)
    out = tmp_path_factory.mktemp("rq") / "index"
    write_index(out, x, BuildParams(spec=IndexSpec.parse("IVF64,RQ4"), metric=metric,
                                    kmeans_niter=10))
    return out


@pytest.fixture(scope="module")
def rq_ip_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _rq_index(tmp_path_factory, Metric.IP)


@pytest.fixture(scope="module")
def rq_l2_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _rq_index(tmp_path_factory, Metric.L2)


@pytest.mark.parametrize("fixture", ["index_ip", "index_l2", "opq_index", "rq_ip_index",
                                     "rq_l2_index"])
def test_graph_probe_gives_the_flat_probes_results(request, fixture):
    """IP, L2, an OPQ pre-transform and RQ (IP; L2 in its inner-product form): the same ids and
    scores, coarse and re-ranked, at a few lists, some and all of them; the graph holds no
    copy of the centroids."""
    path = request.getfixturevalue(fixture)
    flat = open_index(path, probe="flat")
    graph = open_index(path, probe="hnsw")
    assert flat.probe is None and graph.probe is not None
    assert graph.probe.agreement == 1.0
    # the graph reads the IVF's own centroids (an RQ index: the flat behind the slice)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(graph.coarse).quantizer)
    if isinstance(quantizer, faiss.IndexPreTransform):
        quantizer = quantizer.index
    assert int(graph.probe.graph.storage.this) == int(quantizer.this)
    rng = np.random.default_rng(0)
    xq = flat.vectors(rng.integers(0, flat.ntotal, 25)) + 0.1 * rng.standard_normal(
        (25, flat.dim)).astype(np.float32)
    for nprobe in (1, 3, flat.nlist):
        _same(Searcher(flat), Searcher(graph), xq, nprobe, 50)
    # the ceiling's rows: which of the exact top 10 the graph's lists hold, as the flat's
    exact = Searcher(flat).exact(xq, 10).ids
    for nprobe in (1, 3):
        held = Searcher(graph).probed(xq, exact, nprobe)
        np.testing.assert_array_equal(held, Searcher(flat).probed(xq, exact, nprobe))
        assert held.any()


@pytest.mark.parametrize("fixture", ["opq_index", "rq_ip_index", "rq_l2_index"])
def test_probe_transforms_queries_as_faiss_does(request, fixture):
    """The probe applies the pre-transforms with numpy over faiss' own matrices (the OPQ
    rotation; RQ's tiling and, under L2, [q, 1] in front of the quantizer): the same vectors
    as faiss' apply, batch or one query."""
    index = open_index(request.getfixturevalue(fixture), probe="hnsw")
    probe = index.probe
    xq = np.random.default_rng(6).standard_normal((7, index.dim)).astype(np.float32)

    def by_faiss(pre: faiss.IndexPreTransform, x: np.ndarray) -> np.ndarray:
        for i in range(pre.chain.size()):
            x = pre.chain.at(i).apply(x)
        return x

    want = by_faiss(probe.transform, xq) if probe.transform is not None else xq
    for batch in (xq, xq[3:4]):
        xt, _, _ = probe.pick(batch, 2)
        assert xt.dtype == np.float32 and xt.flags.c_contiguous
        np.testing.assert_allclose(xt, want[:len(batch)] if len(batch) > 1 else want[3:4],
                                   rtol=1e-5, atol=1e-5)
    if probe.quantizer_transform is not None:
        gq = probe._quantizer_chain.apply(want)
        np.testing.assert_allclose(gq, by_faiss(probe.quantizer_transform, want), rtol=1e-5,
                                   atol=1e-5)
    else:
        assert fixture == "opq_index"


@pytest.fixture(scope="module")
def pointless_index(tmp_path_factory: pytest.TempPathFactory, ds_ip) -> Path:
    """index_ip's build without list points: auto ranks lists by the centroids (or a graph)."""
    out = tmp_path_factory.mktemp("pointless") / "index"
    write_index(out, ds_ip.xb, BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), metric=Metric.IP,
                                           kmeans_niter=10, list_points=1))
    return out


def test_auto_builds_the_graph_only_for_many_lists(pointless_index, monkeypatch):
    assert open_index(pointless_index).probe is None  # 16 lists: the flat scan is cheap
    monkeypatch.setattr(probe_mod, "AUTO_MIN_NLIST", 16)
    assert open_index(pointless_index).probe.graph is not None


def test_a_graph_that_misses_lists_is_not_served(pointless_index, monkeypatch, caplog):
    monkeypatch.setattr(probe_mod, "AUTO_MIN_NLIST", 16)
    monkeypatch.setattr(probe_mod, "MIN_AGREEMENT", 1.01)  # no graph can pass
    with caplog.at_level(logging.WARNING, logger="ebr.quant.probe"):
        assert open_index(pointless_index).probe is None
    assert "scanning every centroid" in caplog.text
    with pytest.raises(SpecError, match="found"):
        open_index(pointless_index, probe="hnsw")


def test_probe_kind_is_checked(index_ip, tmp_path):
    with pytest.raises(SpecError, match="coarse probe"):
        open_index(index_ip, probe="ivf")  # type: ignore[arg-type]
    # L2 RQ is served with a slice in front of the quantizer's flat: the graph searches the
    # flat (by default only from AUTO_MIN_NLIST lists)
    rng = np.random.default_rng(0)
    write_index(tmp_path / "rq", rng.standard_normal((600, 16)).astype(np.float32),
                BuildParams(spec=IndexSpec.parse("IVF8,RQ4x6"), metric=Metric.L2,
                            list_points=1))
    assert open_index(tmp_path / "rq").probe is None
    assert open_index(tmp_path / "rq", probe="hnsw").probe is not None
    # a quantizer that is no flat scan has no graph
    other = faiss.IndexIVFPQ(faiss.IndexHNSWFlat(16, 8), 16, 8, 4, 8)
    assert probe_mod.build_probe(other, "auto") is None
    for kind in ("hnsw", "points"):
        with pytest.raises(SpecError, match="flat quantizer"):
            probe_mod.build_probe(other, kind, np.zeros((32, 16), np.float32), 2)


def test_live_search_with_the_graph_keeps_tombstones_out(tmp_path):
    """Deleted base documents stay out, written ones come in: the same answers as the flat
    probe's live searcher."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((800, 16)).astype(np.float32)
    write_index(tmp_path / "idx", x, BuildParams(spec=IndexSpec.parse("IVF16,PQ4"),
                                                 metric=Metric.IP))
    live = open_live(open_index(tmp_path / "idx", probe="hnsw"), tmp_path / "idx")
    dead = list(range(0, 800, 7))
    live.delete(dead)
    live.upsert([10_000, 10_001], rng.standard_normal((2, 16)).astype(np.float32), None)
    graph = LiveSearcher(live)
    flat_live = open_live(open_index(tmp_path / "idx", probe="flat"), tmp_path / "idx",
                          writable=False)
    xq = rng.standard_normal((20, 16)).astype(np.float32)
    for nprobe in (2, 16):
        _same(LiveSearcher(flat_live), graph, xq, nprobe, 600)
    res, _ = graph.search(xq, SearchParams(k=50, nprobe=16, candidates=600))
    assert not set(graph.external_ids(res.ids.ravel())) & set(dead)
    live.close()


@pytest.mark.parametrize("fixture", ["opq_index", "index_l2"])
def test_live_segments_scan_the_base_lists(request, fixture, tmp_path):
    """A living index's write segments (the large one and the recent one) share the base's
    centroids and rotation, so the base's graph picks their lists too, and the base and the
    large segment are scanned as one: the same answers as the flat probe's live searcher,
    written documents included, one query at a time as in a batch. OPQ; L2 with float16 rows
    and string ids."""
    import shutil

    from ebr.index.segments import RECENT_ROWS

    idx = tmp_path / "idx"
    shutil.copytree(request.getfixturevalue(fixture), idx)
    live = open_live(open_index(idx, probe="hnsw"), idx)
    assert live.shares_base_lists
    d, n = live.dim, live.n_base

    def ident(i: int) -> object:
        return f"doc-{i}" if live.base.manifest.id_kind == "str" else i

    rng = np.random.default_rng(9)
    n_new = RECENT_ROWS + 300  # one fold into the large segment, the rest recent
    new = rng.standard_normal((n_new, d)).astype(np.float32)
    for i0 in range(0, n_new, 500):
        live.upsert([ident(50_000 + i) for i in range(i0, min(i0 + 500, n_new))],
                    new[i0:i0 + 500], None)
    live.upsert([ident(60_000 + i) for i in range(10)],  # after the fold: the recent segment
                rng.standard_normal((10, d)).astype(np.float32), None)
    live.delete([ident(i) for i in range(0, n, 9)])
    assert live.big.ntotal and live.recent.ntotal
    # the base and the large segment scanned as one IVF (segments.stacked)
    assert live.stack is not None and live.stack.ntotal == live.n_base + live.big.ntotal
    # one copy of the centroids: the codebooks, the write scratch and every segment use the
    # base's quantizer (each copy is nlist x d floats)
    shared = _quantizer_at(live.base.coarse)
    for part in (live.codebooks.index, live._scratch, live._template, live.big, live.recent,
                 live.stack):
        assert _quantizer_at(part) == shared
    flat_live = open_live(open_index(idx, probe="flat"), idx, writable=False)
    assert flat_live.stack is None  # no shared lists: each part scanned on its own
    graph, flat = LiveSearcher(live), LiveSearcher(flat_live)
    xq = np.concatenate([new[:10] + 0.01, rng.standard_normal((10, d)).astype(np.float32)])
    for nprobe in (1, 4, live.base.nlist):
        _same(flat, graph, xq, nprobe, 300)
    res, _ = graph.search(xq[:10], SearchParams(k=1, nprobe=4, candidates=100))
    assert graph.external_ids(res.ids.ravel()) == [ident(50_000 + i) for i in range(10)]
    # one query at a time (the re-rank's own path for one query) answers as the batch does
    p = SearchParams(k=10, nprobe=4, candidates=300)
    batch, _ = graph.search(xq, p)
    for i in range(len(xq)):
        one, _ = graph.search(xq[i:i + 1], p)
        np.testing.assert_array_equal(one.ids[0], batch.ids[i])
        np.testing.assert_allclose(one.scores[0], batch.scores[i], rtol=1e-6)
    flat_live.close()
    live.close()


def test_other_centroids_do_not_share_the_partition(opq_index, tmp_path):
    """An index with other centroids does not share the base's partition; a copy does."""
    other = tmp_path / "other"
    rng2 = np.random.default_rng(4)
    write_index(other, rng2.standard_normal((4000, 32)).astype(np.float32),
                BuildParams(spec=IndexSpec.parse("OPQ8,IVF64,PQ8"), metric=Metric.IP,
                            kmeans_niter=5))
    base = open_index(opq_index)
    assert not probe_mod.same_partition(open_index(other).coarse, base.coarse)
    assert probe_mod.same_partition(open_index(opq_index).coarse, base.coarse)


def _quantizer_at(index: faiss.Index) -> int:
    """Address of the coarse quantizer of the IVF in ``index``."""
    return int(faiss.extract_index_ivf(index).quantizer.this)


def test_share_quantizer_frees_the_copy_and_refuses_other_centroids():
    """Clones pointed at one quantizer search as before; their copies are deleted by faiss
    (many times over: freeing them through their SWIG proxies corrupted SWIG's type data, and
    later clones came back as bare SwigPyObjects); other centroids are refused."""
    import gc

    from ebr.index.segments import share_quantizer

    rng = np.random.default_rng(6)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    base = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 32, 4, 8, faiss.METRIC_INNER_PRODUCT)
    base.train(x)
    base.add(x)
    xq = rng.standard_normal((10, 16)).astype(np.float32)
    want = base.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=4))
    for _ in range(20):
        clone = faiss.clone_index(base)
        assert isinstance(clone, faiss.IndexIVFPQ)
        assert share_quantizer(clone, base) and _quantizer_at(clone) == _quantizer_at(base)
        got = clone.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=4))
        np.testing.assert_array_equal(got[1], want[1])
        assert share_quantizer(faiss.clone_index(clone), clone)  # chains to the owner
    gc.collect()
    other = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 32, 4, 8, faiss.METRIC_INNER_PRODUCT)
    other.train(rng.standard_normal((3000, 16)).astype(np.float32))
    before = _quantizer_at(other)
    assert not share_quantizer(other, base) and _quantizer_at(other) == before


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
def test_stacked_lists_scan_as_the_parts_merged(metric):
    """One scan of a base and a segment stacked list by list finds what scanning each and
    merging finds, tombstones excluded; a base with precomputed L2 tables is not stacked."""
    from ebr.index.segments import stacked

    rng = np.random.default_rng(5)
    xb = rng.standard_normal((6000, 16)).astype(np.float32)
    xs = rng.standard_normal((900, 16)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(16) if metric == faiss.METRIC_INNER_PRODUCT else \
        faiss.IndexFlatL2(16)
    base = faiss.IndexIVFPQ(quantizer, 16, 32, 4, 8, metric)
    base.train(xb)
    template = faiss.clone_index(base)  # trained, empty
    base.add(xb)
    seg = faiss.clone_index(template)
    seg.add_with_ids(xs, np.arange(6000, 6900))
    base.use_precomputed_table = -1
    view = stacked(base, template, seg)
    assert view is not None and view.ntotal == 6900
    dead = np.zeros(6900 // 8 + 1, dtype=np.uint8)
    dead[::7] = 0xFF  # rows in both parts excluded
    xq = rng.standard_normal((30, 16)).astype(np.float32)
    sel = faiss.IDSelectorNot(faiss.IDSelectorBitmap(len(dead) * 8, faiss.swig_ptr(dead)))
    p = faiss.SearchParametersIVF(nprobe=6, sel=sel)
    d1, i1 = base.search(xq, 50, params=p)
    d2, i2 = seg.search(xq, 50, params=p)
    dv, iv = view.search(xq, 50, params=p)
    both_d, both_i = np.concatenate([d1, d2], 1), np.concatenate([i1, i2], 1)
    order = np.argsort(-both_d if metric == faiss.METRIC_INNER_PRODUCT else both_d, axis=1,
                       kind="stable")[:, :50]
    np.testing.assert_allclose(dv, np.take_along_axis(both_d, order, 1), rtol=1e-5)
    assert (np.sort(iv, 1) == np.sort(np.take_along_axis(both_i, order, 1), 1)).mean() > 0.99
    assert (iv >= 6000).any() and not np.isin(iv, np.flatnonzero(np.unpackbits(
        dead, bitorder="little"))).any()
    if metric == faiss.METRIC_L2:
        base.use_precomputed_table = 1
        assert stacked(base, template, seg) is None


# --- list points (ebr.quant.listpoints): the lists are ranked by their best k-means point


def _lists_by_points(index, xq: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition, from the stored points: every list ranked by its best point's score
    (inner product, or minus the squared L2 distance) in the IVF's space (after OPQ); the
    nprobe best lists per query and the score gap to the next list (near-ties are skipped)."""
    entry = index.manifest.codebooks["encoding"]["list_points"]
    points = np.array(read_bin(index.path / entry["file"], mmap=False))
    g = rotate(index.coarse, Searcher(index).prepare_queries(xq))
    if index.metric is Metric.IP:
        s = g @ points.T
    else:
        s = -((g[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    best = s.reshape(len(g), index.nlist, entry["per_list"]).max(axis=2)
    order = np.argsort(-best, axis=1)
    rows = np.arange(len(g))
    gap = best[rows, order[:, nprobe - 1]] - (
        best[rows, order[:, nprobe]] if nprobe < index.nlist else -np.inf)
    return order[:, :nprobe], gap


def _list_of_rows(index) -> np.ndarray:
    ivf = index.ivfpq
    out = np.full(index.ntotal, -1, dtype=np.int64)
    for j in range(ivf.nlist):
        n = ivf.invlists.list_size(j)
        if n:
            out[faiss.rev_swig_ptr(ivf.invlists.get_ids(j), n).copy()] = j
    assert (out >= 0).all()
    return out


@pytest.mark.parametrize("fixture", ["index_ip", "index_l2", "opq_index", "rq_ip_index",
                                     "rq_l2_index"])
def test_list_points_scan_the_lists_their_best_points_pick(request, fixture):
    """IP, L2 (string ids, float16 store), OPQ, RQ (IP; L2 in its inner-product form), built
    with the default points: the coarse stage returns exactly the documents of the lists the
    stored points rank best, with the scores a scan of every list gives them; the re-rank is
    exact search over those documents; the ceiling's rows are those lists' members."""
    path = request.getfixturevalue(fixture)
    index = open_index(path)
    assert index.probe is not None and index.probe.graph is None
    assert index.probe.points is not None and index.probe.points.per_list == 16
    assert index.memory()["probe_bytes"] > 0
    everything = Searcher(open_index(path, probe="flat"))
    searcher = Searcher(index)
    rng = np.random.default_rng(8)
    xq = index.vectors(rng.integers(0, index.ntotal, 30)) + 0.2 * rng.standard_normal(
        (30, index.dim)).astype(np.float32)
    list_of = _list_of_rows(index)
    all_ids, all_scores = everything.coarse(xq, index.ntotal, index.nlist)
    exact = searcher.exact(xq, 10).ids
    checked = 0
    for nprobe in (1, 3, index.nlist // 2):
        want, gap = _lists_by_points(index, xq, nprobe)
        ids, scores = searcher.coarse(xq, index.ntotal, nprobe)
        res, _ = searcher.search(xq, SearchParams(k=10, nprobe=nprobe,
                                                  candidates=index.ntotal))
        held = searcher.probed(xq, exact, nprobe)
        dense = searcher.dense_queries(searcher.prepare_queries(xq))
        for i in np.nonzero(gap > 1e-4)[0]:
            got = ids[i][ids[i] >= 0]
            members = np.nonzero(np.isin(list_of, want[i]))[0]
            np.testing.assert_array_equal(np.sort(got), members)
            ref = dict(zip(all_ids[i].tolist(), all_scores[i].tolist(), strict=True))
            np.testing.assert_allclose(scores[i][:len(got)], [ref[r] for r in got.tolist()],
                                       rtol=1e-4, atol=1e-4)
            v = index.vectors(members)
            s = v @ dense[i] if index.metric is Metric.IP else -((v - dense[i]) ** 2).sum(1)
            top = members[np.argsort(-s, kind="stable")[:10]]
            np.testing.assert_array_equal(res.ids[i][:len(top)], top)
            assert (res.ids[i][len(top):] == -1).all()
            np.testing.assert_array_equal(held[i], np.isin(list_of[exact[i]], want[i]))
            checked += 1
    assert checked >= 60


def test_fit_list_points_keeps_small_lists_and_fills_empty_ones():
    rng = np.random.default_rng(2)
    centroids = rng.standard_normal((3, 8)).astype(np.float32)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    lists = np.array([0] * 50 + [1] * 10)  # list 2 holds nothing
    pts = fit_list_points(x, lists, centroids, 16, spherical=True, seed=0)
    assert pts.shape == (48, 8) and pts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pts[:16], axis=1), 1.0, rtol=1e-5)  # spherical
    np.testing.assert_array_equal(pts[16:26], x[50:])  # <= m members: the members themselves
    np.testing.assert_array_equal(pts[26:32], np.repeat(centroids[1:2], 6, axis=0))
    np.testing.assert_array_equal(pts[32:], np.repeat(centroids[2:3], 16, axis=0))
    with pytest.raises(SpecError, match="do not agree"):
        fit_list_points(x, lists[:10], centroids, 4, spherical=False, seed=0)


def test_served_points_at_low_rank_keep_the_leading_offsets():
    """Served at a rank below d, a point is its list's centroid plus its offset in the
    offsets' leading principal directions: exact for offsets inside that subspace."""
    rng = np.random.default_rng(3)
    anchors = rng.standard_normal((5, 12)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((12, 3)))[0].astype(np.float32)  # a 3-d subspace
    points = np.repeat(anchors, 4, axis=0) + rng.standard_normal((20, 3)).astype(
        np.float32) @ basis.T
    q = rng.standard_normal((7, 12)).astype(np.float32)
    for l2 in (False, True):
        exact = ListPoints(points, 4, anchors, l2=l2, rank=12)
        low = ListPoints(points, 4, anchors, l2=l2, rank=3)
        s = q @ points.T - (0.5 * (points ** 2).sum(1) if l2 else 0.0)
        want = s.reshape(7, 5, 4).max(axis=2)
        np.testing.assert_allclose(exact.scores(q)[0], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(low.scores(q)[0], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(low.scores(q)[1], q @ anchors.T, rtol=1e-5, atol=1e-5)
        assert low.nbytes < exact.nbytes
    with pytest.raises(SpecError, match="lists x"):
        ListPoints(points[:19], 4, anchors, l2=False)
    with pytest.raises(SpecError, match="finite"):
        ListPoints(np.full_like(points, np.nan), 4, anchors, l2=False)


def test_list_points_are_a_build_choice(ds_ip, tmp_path):
    """list_points 1: no points (the centroids rank the lists, probe 'points' refuses); the
    default keeps min(16, 4096 // nlist); the manifest says which; a damaged entry is refused."""
    x = ds_ip.xb[:1500]
    none = tmp_path / "none"
    write_index(none, x, BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), kmeans_niter=5,
                                     list_points=1))
    m = read_manifest(none)
    assert m.codebooks["encoding"]["list_points"] is None
    assert m.build["params"]["list_points"] == 1
    assert open_index(none).probe is None and not (none / layout.LIST_POINTS).exists()
    with pytest.raises(SpecError, match="no list points"):
        open_index(none, probe="points")
    four = tmp_path / "four"
    write_index(four, x, BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), kmeans_niter=5,
                                     list_points=4))
    m = read_manifest(four)
    assert m.codebooks["encoding"]["list_points"] == {"file": layout.LIST_POINTS, "per_list": 4}
    assert open_index(four).probe.points.per_list == 4
    raw = json.loads((four / layout.MANIFEST).read_text())
    raw["codebooks"]["encoding"]["list_points"]["per_list"] = 5
    (four / layout.MANIFEST).write_text(json.dumps(seal(raw)))
    with pytest.raises(CorruptFileError, match="shape"):
        open_index(four)


@pytest.mark.parametrize("bad", [0, 65, 2.5, True, "16"])
def test_list_points_parameter_is_checked(bad):
    with pytest.raises(SpecError, match="list_points"):
        BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), list_points=bad)


@pytest.mark.parametrize(("nlist", "want"), [(16, 16), (256, 16), (512, 8), (1024, 4),
                                             (2048, 2), (4096, 1), (65536, 1)])
def test_default_list_points_keep_at_most_4096(nlist, want):
    assert BuildParams(spec=IndexSpec.parse(f"IVF{nlist},PQ8")).points_per_list == want
