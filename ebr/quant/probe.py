"""The coarse probe: which IVF lists a query scans.

faiss' IVF scores every query against every centroid, a flat scan of nlist x d multiply-adds
per query. One query at a time that is most of a search with many lists: 4,096 centroids of
384 dimensions cost ~100-400 µs, more than scanning the codes of 32 lists. A graph over the
centroids (faiss ``IndexHNSWFlat``) finds the same top-nprobe lists, with their exact scores,
in a fraction of that; the IVF then scans the lists it is handed
(``IndexIVF.search_preassigned``), so the codes, the scores and the results are the flat
probe's whenever the graph finds the same lists.

The graph is built when the index is opened (seconds for 16k centroids; nothing is stored),
checked against the flat scan on probes drawn between centroids, and dropped, with a warning,
when it does not find the same lists (:data:`MIN_AGREEMENT`): the flat scan is then used, as
it is for indexes with few lists (:data:`AUTO_MIN_NLIST`) or whose quantizer is not a flat one.
RQ / LSQ indexes are served with a flat behind a slice of the tiled query
(:func:`ebr.quant.additive.lift_rq`): the graph is built over that flat and searched with the
slice of each query, ``[q]`` or, under L2, ``[q, 1]`` against ``[c, -|c|^2 / 2]``.

An index built with list points (:mod:`ebr.quant.listpoints`, the default up to 4,096 points
in all) is probed by them instead: each list is ranked by its best point, the nprobe best
lists are scanned with their centroid scores (what the IVF's scan adds to the codes'), so a
scan of the same lists gives the same results as faiss' own. ``flat`` still ranks by the
centroids alone, for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.quant.faiss_index import delete_part, same_quantizer, serves_l2_as_ip
from ebr.quant.listpoints import ListPoints

__all__ = ["Probe", "ProbeKind", "PROBE_KINDS", "build_probe", "centroid_graph", "ef_search",
           "same_partition", "AUTO_MIN_NLIST", "MIN_AGREEMENT"]

logger = logging.getLogger(__name__)

ProbeKind = Literal["auto", "flat", "hnsw", "points"]
PROBE_KINDS: tuple[str, ...] = ("auto", "flat", "hnsw", "points")
AUTO_MIN_NLIST = 1024  # fewer lists: scoring every centroid is cheap enough
MIN_AGREEMENT = 0.97  # share of the flat probe's lists the graph must find on the check
HNSW_M = 32
EF_CONSTRUCTION = 200
CHECK_PROBES = 512
CHECK_NPROBE = 32


def ef_search(nprobe: int) -> int:
    """efSearch for nprobe lists: the graph's beam, wider than the lists it returns."""
    return max(32, 2 * nprobe)


def centroid_graph(centroids: np.ndarray, metric: int) -> faiss.IndexHNSWFlat:
    """The HNSW graph over IVF centroids [nlist, d] under a faiss metric."""
    graph = faiss.IndexHNSWFlat(centroids.shape[1], HNSW_M, metric)
    graph.hnsw.efConstruction = EF_CONSTRUCTION
    graph.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return graph


def _linear_views(t: faiss.LinearTransform) -> tuple[np.ndarray, np.ndarray | None]:
    """A trained linear transform's matrix (float32 [d_out, d_in]) and bias (None without
    one) as views of faiss' own memory, not copies."""
    a = faiss.rev_swig_ptr(t.A.data(), t.d_out * t.d_in).reshape(t.d_out, t.d_in)
    return a, faiss.rev_swig_ptr(t.b.data(), t.d_out) if t.have_bias else None


class _Chain:
    """The chain of an ``IndexPreTransform`` (not its index), applied to query batches: each
    linear step (OPQ, query weighting, L2 RQ's ``[q, 1]``) as one numpy product over a view of
    faiss' own matrix, other steps (an RQ index's tiling) by faiss. The same arithmetic as
    faiss' ``apply``, without its allocations and copies: ~10 µs less per query at 384 x 384.
    The views read faiss' memory: ``pre`` is kept, and its transforms must not change."""

    __slots__ = ("_pre", "_steps")

    def __init__(self, pre: faiss.IndexPreTransform) -> None:
        self._pre = pre
        steps: list[tuple[np.ndarray, np.ndarray | None] | faiss.VectorTransform] = []
        for i in range(pre.chain.size()):
            t = faiss.downcast_VectorTransform(pre.chain.at(i))
            if isinstance(t, faiss.LinearTransform) and t.is_trained:
                a, b = _linear_views(t)
                steps.append((a.T, b))
            else:
                steps.append(t)
        self._steps = tuple(steps)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, d_out] of float32 [n, d_in]."""
        for step in self._steps:
            if isinstance(step, tuple):
                x = x @ step[0]
                if step[1] is not None:
                    x += step[1]
            else:
                x = step.apply(np.ascontiguousarray(x, dtype=np.float32))
        return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class Probe:
    """A graph over an IVF's centroids, or its lists' points, that picks the lists a query
    scans.

    ``ivf``: the IVF it picks lists of (owned by the index it was built from, which must
    outlive the probe). ``transform``: the pre-transform chain (OPQ rotation, query weighting)
    queries pass before the IVF, applied here because the IVF is handed transformed queries.
    ``agreement``: the share of the flat probe's top lists the graph found on the open-time
    check. ``quantizer_transform``: the chain in front of the quantizer's flat (an RQ / LSQ
    index's slice of the tiled query), applied to what the graph searches, not to what the IVF
    scans. ``points``: the lists' points (no graph then); ``centroids``, ``centroid_l2``: the
    quantizer's rows and whether it scores them by L2 distance, for the chosen lists' scores."""

    graph: faiss.IndexHNSWFlat | None
    ivf: faiss.IndexIVF
    transform: faiss.IndexPreTransform | None
    agreement: float
    quantizer_transform: faiss.IndexPreTransform | None = None
    points: ListPoints | None = None
    centroids: np.ndarray | None = None
    centroid_l2: bool = False
    _params: dict[int, faiss.SearchParametersHNSW] = field(default_factory=dict, repr=False)
    _chain: _Chain | None = field(init=False, repr=False, default=None)
    _quantizer_chain: _Chain | None = field(init=False, repr=False, default=None)
    _nlist: int = field(init=False, repr=False, default=0)  # a SWIG attribute read costs µs
    _centroid_norms: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        for name, pre in (("_chain", self.transform),
                          ("_quantizer_chain", self.quantizer_transform)):
            object.__setattr__(self, name, None if pre is None else _Chain(pre))
        object.__setattr__(self, "_nlist", int(self.ivf.nlist))
        if self.centroids is not None:
            object.__setattr__(self, "_centroid_norms", (self.centroids ** 2).sum(axis=1))

    @property
    def points_bytes(self) -> int:
        """RAM of the list points and of the centroids' copy they are served with (0 without)."""
        if self.points is None or self.centroids is None:
            return 0
        shared = np.shares_memory(self.points.anchors, self.centroids)
        return self.points.nbytes + (0 if shared else int(self.centroids.nbytes))

    def queries(self, xq: np.ndarray) -> np.ndarray:
        """The queries as the IVF sees them (after OPQ / weighting)."""
        if self._chain is not None:
            return self._chain.apply(xq)
        return np.ascontiguousarray(xq, dtype=np.float32)

    def pick(self, xq: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the queries as the IVF sees them, their centroid scores, the lists) for ``nprobe``
        lists per query: what :meth:`scan` takes, for this IVF or another with the same
        centroids and pre-transform (:func:`same_partition`)."""
        nprobe = min(nprobe, self._nlist)
        xt = self.queries(xq)
        gq = xt if self._quantizer_chain is None else self._quantizer_chain.apply(xt)
        graph = self.graph
        if graph is None:  # build_probe sets one of graph and points
            return (xt, *self._by_points(gq, nprobe))
        p = self._params.get(nprobe)
        if p is None:  # read-only once made: one object per nprobe, shared by threads
            p = faiss.SearchParametersHNSW()
            p.efSearch = ef_search(nprobe)
            p = self._params.setdefault(nprobe, p)
        n = xt.shape[0]
        D = np.empty((n, nprobe), dtype=np.float32)
        lists = np.empty((n, nprobe), dtype=np.int64)
        graph.search_c(n, faiss.swig_ptr(gq), nprobe, faiss.swig_ptr(D),
                       faiss.swig_ptr(lists), p)
        return xt, D, lists

    def _by_points(self, gq: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(centroid scores, lists) [n, nprobe] of the nprobe lists whose best points score
        highest, best first; the scores are the quantizer's (IP, or squared L2 distance)."""
        if self.points is None or self.centroids is None or self._centroid_norms is None:
            raise SpecError("coarse probe: neither a centroid graph nor list points")
        s, dots = self.points.scores(gq)  # dots: <q, c> over the first d columns
        rows = np.arange(len(gq))[:, None]
        top = np.argpartition(-s, nprobe - 1, axis=1)[:, :nprobe] if nprobe < self._nlist \
            else np.broadcast_to(np.arange(self._nlist), s.shape)
        lists = top[rows, np.argsort(-s[rows, top], axis=1, kind="stable")].astype(np.int64)
        dots = dots[rows, lists]
        d = self.points.dim
        if self.centroids.shape[1] > d:  # L2 RQ's flat: [q, 1] against [c, -|c|^2 / 2]
            dots += (gq[:, None, d:] * self.centroids[lists][:, :, d:]).sum(axis=2)
        if self.centroid_l2:
            dots = self._centroid_norms[lists] - 2.0 * dots + \
                (gq * gq).sum(axis=1, keepdims=True)
        return np.ascontiguousarray(dots, dtype=np.float32), lists

    @staticmethod
    def scan(ivf: faiss.IndexIVF, xt: np.ndarray, D: np.ndarray, lists: np.ndarray, k: int,
             params: faiss.SearchParametersIVF) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) [nq, k] of ``ivf`` scanning the lists :meth:`pick` chose.
        ``params``: the IVF's own (nprobe, the tombstone or filter selector), not a
        pre-transform's."""
        n = xt.shape[0]
        out_d = np.empty((n, k), dtype=np.float32)
        out_i = np.empty((n, k), dtype=np.int64)
        # the C++ calls: faiss' Python wrapper of search_preassigned takes no parameters (the
        # selector and nprobe travel in them); the graph's wrapper only adds allocations
        ivf.search_preassigned_c(n, faiss.swig_ptr(xt), k, faiss.swig_ptr(lists),
                                 faiss.swig_ptr(D), faiss.swig_ptr(out_d),
                                 faiss.swig_ptr(out_i), False, params)
        return out_d, out_i

    def search(self, xq: np.ndarray, k: int, nprobe: int, params: faiss.SearchParametersIVF
               ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) [nq, k], as the index's own search gives them: the graph picks
        each query's nprobe lists, the IVF scans them."""
        xt, D, lists = self.pick(xq, nprobe)
        return self.scan(self.ivf, xt, D, lists, k, params)


def same_partition(a: faiss.Index, b: faiss.Index) -> bool:
    """Whether two IVF indexes (each possibly behind linear pre-transforms) turn a query into
    the same vector and the same list scores: equal transforms, metric and flat-quantizer
    centroids. Then one's probed lists serve the other (a living index's write segments)."""
    chains = []
    for index in (a, b):
        outer = faiss.downcast_index(index)
        chain = []
        if isinstance(outer, faiss.IndexPreTransform):
            for i in range(outer.chain.size()):
                t = faiss.downcast_VectorTransform(outer.chain.at(i))
                if not isinstance(t, faiss.LinearTransform) or not t.is_trained:
                    return False
                chain.append(_linear_views(t))
        chains.append(chain)
    if len(chains[0]) != len(chains[1]) or not all(
            np.array_equal(ax, ay) and (bx is by is None or (
                bx is not None and by is not None and np.array_equal(bx, by)))
            for (ax, bx), (ay, by) in zip(chains[0], chains[1], strict=True)):
        return False
    ivfs = [faiss.extract_index_ivf(x) for x in (a, b)]
    qs = [faiss.downcast_index(ivf.quantizer) for ivf in ivfs]
    if not all(isinstance(q, faiss.IndexFlat) for q in qs):
        return False
    return (ivfs[0].nlist == ivfs[1].nlist and ivfs[0].metric_type == ivfs[1].metric_type
            and same_quantizer(qs[0], qs[1]))


def build_probe(index: faiss.Index, kind: ProbeKind = "auto",
                points: np.ndarray | None = None, per_list: int = 1) -> Probe | None:
    """The probe for the IVF in ``index``, or None where the flat scan of the centroids serves.

    points: the lists' points (float32 [nlist * per_list, d], :mod:`ebr.quant.listpoints`) or
    None. kind: ``flat`` builds nothing; ``points`` ranks lists by their points (an error
    without them); ``hnsw`` builds the centroid graph for any flat quantizer and raises if it
    fails the check; ``auto`` takes the points when there are any, else builds the graph when
    nlist >= AUTO_MIN_NLIST and keeps it only if it passes the check."""
    if kind not in PROBE_KINDS:
        raise SpecError(f"coarse probe must be one of {PROBE_KINDS}, got {kind!r}")
    if kind == "flat":
        return None
    if kind == "points" and points is None:
        raise SpecError("coarse probe points: this index has no list points (built with "
                        "list_points 1, or by an ebr before them)")
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    sliced = None  # RQ / LSQ: the quantizer's flat reads a slice of the tiled query
    if isinstance(quantizer, faiss.IndexPreTransform):
        sliced, quantizer = quantizer, faiss.downcast_index(quantizer.index)
    if not isinstance(quantizer, faiss.IndexFlat):
        if kind in ("hnsw", "points"):
            raise SpecError(f"coarse probe {kind} needs a flat quantizer, this index has "
                            f"{type(quantizer).__name__}")
        return None
    outer = faiss.downcast_index(index)
    transform = outer if isinstance(outer, faiss.IndexPreTransform) else None
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    lifted = serves_l2_as_ip(index)
    if points is not None and kind in ("auto", "points"):  # ListPoints checks the shapes
        served = ListPoints(points, per_list, centroids[:, :points.shape[1]],
                            l2=lifted or quantizer.metric_type == faiss.METRIC_L2)
        logger.info("coarse probe: %d points per list over %d lists", per_list, ivf.nlist)
        return Probe(graph=None, ivf=ivf, transform=transform, agreement=1.0,
                     quantizer_transform=sliced, points=served,
                     centroids=np.ascontiguousarray(centroids, dtype=np.float32),
                     centroid_l2=quantizer.metric_type == faiss.METRIC_L2)
    if kind == "auto" and ivf.nlist < AUTO_MIN_NLIST:
        return None
    graph = centroid_graph(centroids, quantizer.metric_type)
    # L2 RQ: the flat holds [c, -|c|^2 / 2] and reads [q, 1]: probes end in the constant 1
    agreement = _agreement(quantizer, graph, centroids, constant_last=lifted)
    if agreement < MIN_AGREEMENT:
        msg = (f"the centroid graph found {agreement:.4f} of the flat probe's lists (needs "
               f">= {MIN_AGREEMENT})")
        if kind == "hnsw":
            raise SpecError(f"coarse probe hnsw: {msg}")
        logger.warning("coarse probe: %s; scanning every centroid instead", msg)
        return None
    # the graph reads the IVF's own centroids (the same rows, in the same order): one copy of
    # nlist x d floats, not two (25 MB at 16,384 x 384)
    storage = graph.storage
    graph.own_fields = False
    graph.storage = quantizer
    delete_part(storage)
    del storage
    logger.info("coarse probe: a graph over %d centroids (agreement %.4f)", ivf.nlist, agreement)
    return Probe(graph=graph, ivf=ivf, transform=transform, agreement=agreement,
                 quantizer_transform=sliced)


def _agreement(flat: faiss.Index, graph: faiss.IndexHNSWFlat, centroids: np.ndarray,
               constant_last: bool = False) -> float:
    """Share of the flat probe's top-CHECK_NPROBE lists the graph finds, on points between two
    random centroids (a query near a list boundary: the hard case). ``constant_last``: the
    queries' last coordinate is 1 (L2 RQ's inner-product form), the probes' too."""
    rng = np.random.default_rng(0)
    n = len(centroids)
    a, b = rng.integers(0, n, CHECK_PROBES), rng.integers(0, n, CHECK_PROBES)
    w = rng.uniform(0.3, 0.7, (CHECK_PROBES, 1)).astype(np.float32)
    x = np.ascontiguousarray(w * centroids[a] + (1 - w) * centroids[b], dtype=np.float32)
    if constant_last:
        x[:, -1] = 1.0
    k = min(CHECK_NPROBE, n)
    _, want = flat.search(x, k)
    p = faiss.SearchParametersHNSW()
    p.efSearch = ef_search(k)
    _, got = graph.search(x, k, params=p)
    return float(np.mean([len(np.intersect1d(u, v)) / k for u, v in zip(want, got, strict=True)]))
