"""The one place that builds faiss coarse indexes from an :class:`~ebr.spec.IndexSpec`.

A *codebook trainer* turns a training sample into a trained, empty faiss index. ``kmeans`` and
``opq`` are faiss' own unsupervised training; learned trainers (Distill-VQ) plug in through the
same :class:`CodebookTrainer` protocol and hand back an index of the same layout, so the writer,
the reader and the search path never know which one ran.

Residual quantizer (``IVF<n>,RQ<M>``, inner product). Built as faiss' IndexIVFResidualQuantizer
(training, beam-search encoding), then *served* as an IndexIVFPQ over the query tiled M times
(:func:`lift_rq`): PQ sub-space m of the tiled space holds RQ codebook m (full dimension), so
the PQ scanner's table sum is sum_m <q, c_m[code_m]> = <q, RQ reconstruction>, the exact RQ
score, with the same codes. faiss' own IVF-RQ scan gives the same ranking 13-25x slower (it
decodes every code or fills a table per list; SciFact, 384-d, RQ16, nprobe 8: 2.8 or 5.3 ms per
query, against 0.21 ms).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.spec import IndexSpec

__all__ = ["CodebookTrainer", "KMeansTrainer", "extract_ivfpq", "extract_ivf", "make_trainer",
           "ivf_params", "from_faiss", "to_faiss", "rotate", "prepend_transform",
           "add_with_assignment", "coarse_ram_bytes", "lift_rq", "ivf_centroids"]

logger = logging.getLogger(__name__)


class CodebookTrainer(Protocol):
    """Trains IVF centroids + PQ codebooks on ``xt`` and returns an empty, trained index."""

    method: str

    def train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index: ...

    def describe(self) -> dict[str, Any]: ...


def extract_ivfpq(index: faiss.Index) -> faiss.IndexIVFPQ:
    """The IndexIVFPQ inside ``index`` (itself, or under an OPQ IndexPreTransform)."""
    ivf = faiss.extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf)
    if not isinstance(ivfpq, faiss.IndexIVFPQ):
        raise SpecError(f"coarse index is {type(ivfpq).__name__}, expected IndexIVFPQ")
    return ivfpq


def extract_ivf(index: faiss.Index) -> faiss.IndexIVF:
    """The IndexIVFPQ or, at build time of an RQ spec, IndexIVFResidualQuantizer in ``index``."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if not isinstance(ivf, (faiss.IndexIVFPQ, faiss.IndexIVFResidualQuantizer)):
        raise SpecError(f"coarse index is {type(ivf).__name__}, expected IndexIVFPQ or "
                        "IndexIVFResidualQuantizer")
    return ivf


def ivf_centroids(ivf: faiss.IndexIVF) -> np.ndarray:
    """The IVF centroids [nlist, d] of an IVF index (a served RQ index keeps them behind a
    dimension selection: its quantizer is an IndexPreTransform)."""
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexPreTransform):
        q = faiss.downcast_index(q.index)
    return q.reconstruct_n(0, q.ntotal).astype(np.float32)


def ivf_params(index: faiss.Index, nprobe: int) -> faiss.SearchParameters:
    """Per-call search parameters (thread-safe: nothing on the shared index is mutated)."""
    p = faiss.SearchParametersIVF()
    p.nprobe = nprobe
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = p
        outer.__dict__["_keep"] = p  # keep the inner params alive as long as the outer one
        return outer
    return p


class KMeansTrainer:
    """faiss' unsupervised training: k-means IVF, then k-means PQ on the residuals (optionally OPQ).

    Polysemous training is off (the ``np`` suffix): it only serves Hamming pre-filtering, which
    ebr does not use, and it costs about 2.7x the training time (see the design notes).
    """

    def __init__(self, niter: int = 20, opq_niter: int = 25) -> None:
        self.niter = niter
        self.opq_niter = opq_niter
        self.method = "kmeans"

    def train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index:
        n, d = xt.shape
        spec.check_dim(d)
        if n < spec.nlist:
            raise SpecError(f"{n} training vectors cannot train {spec.nlist} IVF lists; "
                            "lower nlist or give more vectors")
        if spec.is_rq:
            return self._train_rq(xt, spec, metric, seed)
        if n < 2 ** spec.pq_nbits:
            raise SpecError(f"{n} training vectors cannot train 2^{spec.pq_nbits} PQ centroids; "
                            "lower PQ nbits or give more vectors")
        index = faiss.index_factory(d, str(spec), metric.faiss_metric)
        ivfpq = extract_ivfpq(index)
        ivfpq.do_polysemous_training = False
        ivfpq.cp.seed = seed
        ivfpq.cp.niter = self.niter
        ivfpq.pq.cp.seed = seed + 1
        ivfpq.pq.cp.niter = self.niter
        # faiss fprintf's a warning per k-means run below 39 points per centroid; log it once
        # through logging instead.
        ivfpq.cp.min_points_per_centroid = 1
        ivfpq.pq.cp.min_points_per_centroid = 1
        if n < 39 * max(spec.nlist, 2 ** spec.pq_nbits):
            logger.warning("%d training vectors is few for %s: faiss advises >= 39 per centroid "
                           "(%d)", n, spec, 39 * max(spec.nlist, 2 ** spec.pq_nbits))
        if spec.opq:
            self.method = "opq"
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter = self.opq_niter
        logger.info("training %s (%s) on %d x %d vectors", spec, metric.value, n, d)
        index.train(np.ascontiguousarray(xt, dtype=np.float32))
        return index

    def _train_rq(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int
                  ) -> faiss.Index:
        """faiss IVF + residual quantizer: k-means lists, then M k-means stages on what the
        previous stages left (faiss defaults: progressive-dimension k-means, beam search of
        width 5 to encode)."""
        n, d = xt.shape
        if n < 256:
            raise SpecError(f"{n} training vectors cannot train RQ codebooks of 256; "
                            "give more vectors")
        index = faiss.index_factory(d, f"IVF{spec.nlist},RQ{spec.pq_m}x8", metric.faiss_metric)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed, ivf.cp.niter, ivf.cp.min_points_per_centroid = seed, self.niter, 1
        ivf.rq.cp.seed, ivf.rq.cp.niter = seed + 1, self.niter
        ivf.rq.cp.min_points_per_centroid = 1
        if n < 39 * max(spec.nlist, 256):
            logger.warning("%d training vectors is few for %s: faiss advises >= 39 per centroid "
                           "(%d)", n, spec, 39 * max(spec.nlist, 256))
        logger.info("training %s (%s) on %d x %d vectors", spec, metric.value, n, d)
        index.train(np.ascontiguousarray(xt, dtype=np.float32))
        return index

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "kmeans_niter": self.niter}


def make_trainer(method: str, niter: int = 20) -> CodebookTrainer:
    """The default trainer of a method (``distill`` with default settings and pseudo-queries;
    build a :class:`ebr.train.distill_vq.DistillVQTrainer` yourself to pass queries)."""
    if method in ("kmeans", "opq"):
        t = KMeansTrainer(niter=niter)
        t.method = method
        return t
    if method == "distill":
        from ebr.train.distill_vq import DistillVQTrainer  # torch: only when asked for

        return DistillVQTrainer(niter=niter)
    raise SpecError(f"unknown codebook method {method!r}: expected 'kmeans', 'opq' or 'distill'")


def coarse_ram_bytes(index: faiss.Index) -> dict[str, int]:
    """What a coarse IVF-PQ index keeps in RAM, by part (bytes), from the index itself."""
    ivfpq = extract_ivfpq(index)
    linear = 0  # OPQ rotation / query weighting (the RQ tiling is an int map, not counted)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(t, faiss.LinearTransform):
                linear += t.d_in * t.d_out * 4
    parts = {
        "codes_bytes": ivfpq.ntotal * ivfpq.code_size,
        "list_ids_bytes": ivfpq.ntotal * 8,  # one int64 id per entry in the inverted lists
        "centroids_bytes": int(ivf_centroids(ivfpq).size) * 4,
        "codebook_bytes": ivfpq.pq.M * ivfpq.pq.ksub * ivfpq.pq.dsub * 4,
        "opq_bytes": linear,
        "precomputed_table_bytes": int(ivfpq.precomputed_table.size()) * 4,
    }
    parts["coarse_ram_bytes"] = sum(parts.values())
    return parts


# --- the faiss <-> arrays bridge used by learned trainers ---------------------------------


def from_faiss(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(centroids float32 [nlist, d], codebooks float32 [M, ksub, dsub], rotation [d, d] or None).

    ``rotation`` is the OPQ matrix R (x_rotated = x @ R.T) when the index has one. For an RQ
    index (build time) the codebooks are [M, 256, d]: every stage spans all dimensions.
    """
    ivf = extract_ivf(index)
    centroids = ivf_centroids(ivf)
    if isinstance(ivf, faiss.IndexIVFResidualQuantizer):
        codebooks = faiss.vector_to_array(ivf.rq.codebooks).reshape(ivf.rq.M, -1, ivf.d)
    else:
        pq = ivf.pq
        codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    rotation = None
    if isinstance(index, faiss.IndexPreTransform):
        lt = faiss.downcast_VectorTransform(index.chain.at(0))
        rotation = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
    return centroids.astype(np.float32), codebooks.astype(np.float32), rotation


def rotate(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Apply the index's pre-transform (OPQ, query weighting) if any: the IVF-PQ's space (for
    a served RQ index, the space before the query is tiled)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(i))
            if not isinstance(t, faiss.RemapDimensionsTransform):
                x = t.apply(x)
    return x


def prepend_transform(index: faiss.Index, w: np.ndarray) -> faiss.Index:
    """An index trained on ``x @ w.T``, made to take ``x``: its pre-transform becomes
    ``R @ w`` (after an OPQ rotation R) or ``w`` (wrapped in an IndexPreTransform)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        lt = faiss.downcast_VectorTransform(index.chain.at(0))
        r = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
        faiss.copy_array_to_vector(np.ascontiguousarray(r @ w).ravel(), lt.A)
        lt.is_orthonormal = False
        return index
    lt = faiss.LinearTransform(w.shape[1], w.shape[0], False)
    faiss.copy_array_to_vector(w.ravel(), lt.A)
    lt.is_trained = True
    out = faiss.IndexPreTransform(lt, index)
    lt.this.disown()  # the pre-transform index owns both from here on
    index.this.disown()
    out.own_fields = True
    return out


def to_faiss(index: faiss.Index, centroids: np.ndarray, codebooks: np.ndarray) -> None:
    """Write trained centroids and codebooks into an empty trained index (in place)."""
    ivfpq = extract_ivf(index)
    if ivfpq.ntotal:
        raise SpecError("to_faiss expects an empty index: codes must be re-encoded after it")
    nlist, d = centroids.shape
    if (nlist, d) != (ivfpq.nlist, ivfpq.d):
        raise SpecError(f"centroids {centroids.shape} do not fit the index ({ivfpq.nlist}, {ivfpq.d})")
    q = faiss.downcast_index(ivfpq.quantizer)
    q.reset()
    q.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if isinstance(ivfpq, faiss.IndexIVFResidualQuantizer):
        rq = ivfpq.rq
        if codebooks.shape != (rq.M, 2 ** rq.nbits.at(0), ivfpq.d):
            raise SpecError(f"codebooks {codebooks.shape} do not fit RQ "
                            f"({rq.M}, {2 ** rq.nbits.at(0)}, {ivfpq.d})")
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                                   rq.codebooks)
        if rq.codebook_cross_products.size():  # beam search's look-up table
            rq.compute_codebook_tables()
        return
    pq = ivfpq.pq
    if codebooks.shape != (pq.M, pq.ksub, pq.dsub):
        raise SpecError(f"codebooks {codebooks.shape} do not fit PQ ({pq.M}, {pq.ksub}, {pq.dsub})")
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                               pq.centroids)
    if pq.sdc_table.size():
        pq.compute_sdc_table()
    ivfpq.precomputed_table.clear()
    ivfpq.use_precomputed_table = 0


def add_with_assignment(index: faiss.Index, x: np.ndarray, assign: np.ndarray) -> None:
    """Add vectors to their given IVF lists (learned indexes keep the training assignment).

    x is in the input space; the pre-transform (OPQ), if any, is applied here.
    """
    ivfpq = extract_ivf(index)
    xr = rotate(index, x)
    n = xr.shape[0]
    a = np.ascontiguousarray(assign, dtype=np.int64).reshape(n)
    ids = np.arange(ivfpq.ntotal, ivfpq.ntotal + n, dtype=np.int64)
    ivfpq.add_core(n, faiss.swig_ptr(xr), faiss.swig_ptr(ids), faiss.swig_ptr(a))
    if index is not ivfpq:
        index.ntotal = ivfpq.ntotal


def lift_rq(index: faiss.Index) -> faiss.Index:
    """The servable form of a filled IVF-RQ index (module docstring): an IndexIVFPQ in d x M
    dimensions holding the same codes, behind a pre-transform that tiles the query M times;
    its quantizer reads the first d of them. Any pre-transform of ``index`` (query weighting)
    stays in front. Scores equal faiss' IVF-RQ scores; an IVF-PQ index is returned as is."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFResidualQuantizer):
        return index
    if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SpecError("lift_rq: RQ is served for inner product only")
    d, m, nlist = ivf.d, ivf.rq.M, ivf.nlist
    # the parts below are held by these locals (faiss' constructors keep raw pointers) until
    # the serialised copy, which owns its own, is made
    first = np.arange(d, dtype=np.int32)
    tiled = (np.arange(d * m) % d).astype(np.int32)
    select = faiss.RemapDimensionsTransform(d * m, d, faiss.swig_ptr(first))
    flat = faiss.IndexFlat(d, ivf.metric_type)
    flat.add(ivf_centroids(ivf))
    quantizer = faiss.IndexPreTransform(select, flat)
    lifted = faiss.IndexIVFPQ(quantizer, d * m, nlist, m, 8, ivf.metric_type)
    faiss.copy_array_to_vector(faiss.vector_to_array(ivf.rq.codebooks), lifted.pq.centroids)
    lifted.is_trained = True
    lifted.replace_invlists(ivf.invlists, False)  # same codes, borrowed for the copy below
    lifted.ntotal = ivf.ntotal
    tile = faiss.RemapDimensionsTransform(d, d * m, faiss.swig_ptr(tiled))
    top = faiss.IndexPreTransform(tile, lifted)
    if isinstance(index, faiss.IndexPreTransform):
        for i in reversed(range(index.chain.size())):
            top.prepend_transform(index.chain.at(i))
    return faiss.deserialize_index(faiss.serialize_index(top))
