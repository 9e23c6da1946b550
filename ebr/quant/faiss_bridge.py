"""The one place that builds faiss coarse indexes from an :class:`~ebr.spec.IndexSpec`.

A *codebook trainer* turns a training sample into a trained, empty faiss index. ``kmeans`` and
``opq`` are faiss' own unsupervised training; learned trainers (Distill-VQ) plug in through the
same :class:`CodebookTrainer` protocol and hand back an index of the same layout, so the writer,
the reader and the search path never know which one ran.

Residual quantizer (``IVF<n>,RQ<M>``). Built as faiss' IndexIVFResidualQuantizer (training,
beam-search encoding), then *served* as an IndexIVFPQ over the query tiled M times
(:func:`lift_rq`): PQ sub-space m of the tiled space holds RQ codebook m (full dimension), so
the PQ scanner's table sum is sum_m <q, c_m[code_m]> = <q, RQ reconstruction>, the exact RQ
score, with the same codes. faiss' own IVF-RQ scan gives the same ranking 13-25x slower (it
decodes every code or fills a table per list; SciFact, 384-d, RQ16, nprobe 8: 2.8 or 5.3 ms per
query, against 0.21 ms).

LSQ (``IVF<n>,LSQ<M>``, faiss' IndexIVFLocalSearchQuantizer) codes are the same sum of
full-dimension codewords, encoded jointly by iterated local search instead of stage by stage;
everything below applies to them unchanged (``ivf.aq`` is either quantizer).

Codes of ``x<nbits>`` other than 8 (``RQ12x10``: 12 codebooks of 1024 in 15 bytes) are bit-packed
as faiss packs them; :func:`unpack_codes` / :func:`pack_codes` turn them into one integer per
codebook and back.

L2 is served as inner product. With x^ = c + r^ (list centroid + RQ reconstruction),
-|q - x^|^2 / 2 + |q|^2 / 2 = (<q, c> - |c|^2 / 2) + <q, r^> + v, v = -(2 <c, r^> + |r^|^2) / 2.
The first term comes from an inner-product quantizer over [c, -|c|^2 / 2] against [q, 1] (it
probes the same lists as L2), the second from M - 1 tiled RQ stages, and v from the M-th code:
2^nbits uniform levels over the training set's range of v (``aq.norm_min`` / ``aq.norm_max``, fixed
at training so every shard shares them), read against the constant 1 in the query. The
searcher turns the served score s back into -|q - x^|^2 = 2 s - |q|^2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.quant.anisotropic import directions, refine_codes
from ebr.spec import IndexSpec

__all__ = ["CodebookTrainer", "KMeansTrainer", "extract_ivfpq", "extract_ivf", "make_trainer",
           "ivf_params", "from_faiss", "to_faiss", "rotate", "prepend_transform",
           "add_with_assignment", "add_codes", "score_aware_codes", "ScoreAware",
           "coarse_ram_bytes", "lift_rq", "ivf_centroids", "rq_stages", "fit_norm_range",
           "norm_terms", "serves_l2_as_ip", "unpack_codes", "pack_codes"]

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
    """The IndexIVFPQ or, at build time of an RQ / LSQ spec, the IndexIVFResidualQuantizer /
    IndexIVFLocalSearchQuantizer in ``index``."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if not isinstance(ivf, (faiss.IndexIVFPQ, faiss.IndexIVFAdditiveQuantizer)):
        raise SpecError(f"coarse index is {type(ivf).__name__}, expected IndexIVFPQ or an "
                        "IVF additive quantizer (RQ, LSQ)")
    return ivf


def ivf_centroids(ivf: faiss.IndexIVF) -> np.ndarray:
    """The IVF centroids [nlist, d] of an IVF index (a served RQ index keeps them behind a
    dimension selection, its quantizer an IndexPreTransform; under L2 with -|c|^2/2 appended)."""
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexPreTransform):
        c = faiss.downcast_index(q.index)
        return c.reconstruct_n(0, c.ntotal)[:, :ivf.d // ivf.pq.M].astype(np.float32)
    return q.reconstruct_n(0, q.ntotal).astype(np.float32)


def rq_stages(spec: IndexSpec, metric: Metric) -> int:
    """RQ codebooks of a spec: ``RQ<M>[x<nbits>]`` is M codes, all codebooks under inner
    product; under L2 the last code is each vector's norm term (module docstring), so M - 1
    codebooks."""
    return spec.pq_m - (1 if metric is Metric.L2 else 0)


def unpack_codes(aq: faiss.AdditiveQuantizer, packed: np.ndarray) -> np.ndarray:
    """Packed codes [n, code_size] (uint8, as faiss stores them) -> one code per codebook,
    int64 [n, M]."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    nbits = aq.nbits.at(0)
    if nbits == 8:
        return packed[:, :aq.M].astype(np.int64)
    return faiss.unpack_bitstrings(packed, aq.M, nbits).astype(np.int64)


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Codes [n, M] of ``nbits`` each -> uint8 [n, ceil(M nbits / 8)], packed as faiss packs
    them (low bits first)."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** nbits):
        raise SpecError(f"codes must lie in [0, {2 ** nbits}) for {nbits}-bit codebooks")
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    return faiss.pack_bitstrings(np.ascontiguousarray(codes, dtype=np.int32), nbits)


def serves_l2_as_ip(index: faiss.Index) -> bool:
    """Whether a served coarse index is L2 RQ in its inner-product form (module docstring):
    its quantizer reads [q, 1] against [c, -|c|^2 / 2], one dimension more than a tile."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    q = faiss.downcast_index(ivf.quantizer)
    return (isinstance(ivf, faiss.IndexIVFPQ) and isinstance(q, faiss.IndexPreTransform)
            and q.index.d == ivf.d // ivf.pq.M + 1)


def norm_terms(ivf: faiss.IndexIVFAdditiveQuantizer, codes: np.ndarray, lists: np.ndarray,
               centroids: np.ndarray) -> np.ndarray:
    """v = -(2 <c, r^> + |r^|^2) / 2 of RQ / LSQ codes [n, M'] in lists [n]: the part of
    -|x^|^2 / 2 that the list term leaves (module docstring)."""
    r = ivf.aq.decode(np.ascontiguousarray(codes))
    c = centroids[lists]
    return (-(2.0 * np.einsum("ij,ij->i", r, c) + np.einsum("ij,ij->i", r, r)) / 2.0
            ).astype(np.float32)


def fit_norm_range(index: faiss.Index, x: np.ndarray, assign: np.ndarray | None = None) -> None:
    """Fix the range of the L2 norm byte (``aq.norm_min``/``norm_max``, saved with the index)
    from training vectors ``x`` (input space), encoded as they will be: in ``assign``'s lists
    (default: the nearest centroid), with the current codebooks. Values outside the range are
    clipped to its ends when the index is served."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer) or ivf.metric_type != faiss.METRIC_L2:
        raise SpecError("fit_norm_range: only an L2 IVF-RQ / IVF-LSQ index has a norm byte")
    xr = rotate(index, x)
    centroids = ivf_centroids(ivf)
    if assign is None:
        _, a = ivf.quantizer.search(xr, 1)
        assign = a.ravel()
    assign = np.asarray(assign, dtype=np.int64).ravel()
    codes = ivf.aq.compute_codes(np.ascontiguousarray(xr - centroids[assign]))
    v = norm_terms(ivf, codes, assign, centroids)
    ivf.aq.norm_min, ivf.aq.norm_max = float(v.min()), float(v.max())


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

    def __init__(self, niter: int = 20, opq_niter: int = 25, lsq_train_iters: int = 10,
                 lsq_encode_iters: int = 8, wide_rq_niter: int = 10) -> None:
        self.niter = niter
        self.opq_niter = opq_niter
        # RQ codebooks wider than 256: after the first, each stage's k-means runs on up to 256
        # beam candidates per centroid, 262k points for 1024 centroids against 65k for 256.
        # faiss' default of 10 iterations there (not niter) halved the start of IVF1024,RQ12x10
        # on 100k x 128 (about 400 s -> 210 s) for the same coarse recall@100 (0.7218 against
        # 0.7222; scratch run and bench row, synthetic set).
        self.wide_rq_niter = wide_rq_niter
        # LSQ: faiss' defaults are 25 training and 16 encoding iterations. On 100k x 128
        # (IVF1024,LSQ8) they took 327 s for coarse recall@100 0.6102; 10 and 8 took 87 s for
        # 0.6002 (scratch runs, synthetic set).
        self.lsq_train_iters = lsq_train_iters
        self.lsq_encode_iters = lsq_encode_iters
        self.method = "kmeans"

    def train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index:
        n, d = xt.shape
        spec.check_dim(d)
        if n < spec.nlist:
            raise SpecError(f"{n} training vectors cannot train {spec.nlist} IVF lists; "
                            "lower nlist or give more vectors")
        if spec.is_additive:
            return self._train_additive(xt, spec, metric, seed)
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

    def _train_additive(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int
                        ) -> faiss.Index:
        """faiss IVF + an additive quantizer (:func:`rq_stages` codebooks), under L2 with the
        norm byte's range from the same sample. RQ: k-means stages on what the previous stages
        left (faiss defaults: progressive-dimension k-means, beam search of width 5 to encode).
        LSQ: codebooks by least squares and codes by iterated local search, all jointly."""
        n, d = xt.shape
        k = 2 ** spec.pq_nbits
        if n < k:
            raise SpecError(f"{n} training vectors cannot train codebooks of {k} ({spec}); "
                            "give more vectors")
        stages = rq_stages(spec, metric)
        token = "RQ" if spec.is_rq else "LSQ"
        index = faiss.index_factory(d, f"IVF{spec.nlist},{token}{stages}x{spec.pq_nbits}",
                                    metric.faiss_metric)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed, ivf.cp.niter, ivf.cp.min_points_per_centroid = seed, self.niter, 1
        if spec.is_rq:
            ivf.rq.cp.seed = seed + 1
            ivf.rq.cp.niter = self.niter if k <= 256 else min(self.niter, self.wide_rq_niter)
            ivf.rq.cp.min_points_per_centroid = 1
        else:
            ivf.lsq.random_seed = seed + 1
            ivf.lsq.train_iters = self.lsq_train_iters
            ivf.lsq.encode_ils_iters = self.lsq_encode_iters
        if n < 39 * max(spec.nlist, k):
            logger.warning("%d training vectors is few for %s: faiss advises >= 39 per centroid "
                           "(%d)", n, spec, 39 * max(spec.nlist, k))
        logger.info("training %s (%s) on %d x %d vectors", spec, metric.value, n, d)
        index.train(np.ascontiguousarray(xt, dtype=np.float32))
        if metric is Metric.L2:
            fit_norm_range(index, xt)
        return index

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "kmeans_niter": self.niter,
                "wide_rq_niter": self.wide_rq_niter,
                "lsq_iters": {"train": self.lsq_train_iters, "encode": self.lsq_encode_iters}}


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
    index (build time) the codebooks are [M, 2^nbits, d]: every stage spans all dimensions.
    """
    ivf = extract_ivf(index)
    centroids = ivf_centroids(ivf)
    if isinstance(ivf, faiss.IndexIVFAdditiveQuantizer):
        codebooks = faiss.vector_to_array(ivf.aq.codebooks).reshape(ivf.aq.M, -1, ivf.d)
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
    a served RQ index, the space before the query is lifted)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(i))
            if not _is_lift_part(t):
                x = t.apply(x)
    return x


def _is_lift_part(t: faiss.VectorTransform) -> bool:
    """A transform :func:`lift_rq` added: the tiling, or L2's [q, 1] (the only biased one)."""
    return isinstance(t, faiss.RemapDimensionsTransform) or (
        isinstance(t, faiss.LinearTransform) and t.have_bias)


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
    if isinstance(ivfpq, faiss.IndexIVFAdditiveQuantizer):
        aq = ivfpq.aq
        if codebooks.shape != (aq.M, 2 ** aq.nbits.at(0), ivfpq.d):
            raise SpecError(f"codebooks {codebooks.shape} do not fit the additive quantizer "
                            f"({aq.M}, {2 ** aq.nbits.at(0)}, {ivfpq.d})")
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                                   aq.codebooks)
        if isinstance(ivfpq, faiss.IndexIVFResidualQuantizer) and \
                ivfpq.rq.codebook_cross_products.size():  # beam search's look-up table
            ivfpq.rq.compute_codebook_tables()
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


@dataclass(frozen=True)
class ScoreAware:
    """Score-aware encoding of additive codes (:mod:`ebr.quant.anisotropic`): ``eta`` weighs
    the error along each document's direction, taken as the served query of the document
    itself (the query map W, then the index's pre-transform), so that it is the direction of
    the queries that score it high. Inner-product RQ / LSQ only."""

    eta: float
    query_map: np.ndarray | None = None  # W [d, d], as the searcher applies it
    passes: int = 2


def add_with_assignment(index: faiss.Index, x: np.ndarray, assign: np.ndarray,
                        score_aware: ScoreAware | None = None) -> None:
    """Add vectors to their given IVF lists (learned indexes keep the training assignment).

    x is in the input space; the pre-transform (OPQ, query weighting), if any, is applied here.
    ``score_aware``: additive codes start from faiss' encoding and are refined for it.
    """
    ivfpq = extract_ivf(index)
    n = len(x)
    a = np.ascontiguousarray(assign, dtype=np.int64).reshape(n)
    ids = np.arange(ivfpq.ntotal, ivfpq.ntotal + n, dtype=np.int64)
    if score_aware is None:
        xr = rotate(index, x)
        ivfpq.add_core(n, faiss.swig_ptr(xr), faiss.swig_ptr(ids), faiss.swig_ptr(a))
    else:
        codes = score_aware_codes(index, x, a, score_aware)
        add_codes(ivfpq, pack_codes(codes, ivfpq.aq.nbits.at(0)), ids, a)
    if index is not ivfpq:
        index.ntotal = ivfpq.ntotal


def score_aware_codes(index: faiss.Index, x: np.ndarray, assign: np.ndarray,
                      score_aware: ScoreAware) -> np.ndarray:
    """The codes [n, M] (int64) that :func:`add_with_assignment` stores for ``x`` (input space)
    in lists ``assign`` of an inner-product IVF-RQ / IVF-LSQ index under ``score_aware``."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer) or \
            ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SpecError("score-aware encoding is for inner-product RQ / LSQ indexes")
    aq = ivf.aq
    r = rotate(index, x) - ivf_centroids(ivf)[assign]
    codes = unpack_codes(aq, aq.compute_codes(np.ascontiguousarray(r)))
    q = np.asarray(x, dtype=np.float32)
    if score_aware.query_map is not None:
        q = q @ score_aware.query_map.T
    codebooks = faiss.vector_to_array(aq.codebooks).reshape(aq.M, -1, ivf.d)
    return refine_codes(r, directions(rotate(index, q)), codebooks, codes, score_aware.eta,
                        score_aware.passes)


def add_codes(ivf: faiss.IndexIVF, codes: np.ndarray, ids: np.ndarray,
              assign: np.ndarray) -> None:
    """Append ready codes [n, code_size] (uint8) with ``ids`` to lists ``assign``."""
    order = np.argsort(assign, kind="stable")
    a, ids = assign[order], np.ascontiguousarray(ids[order], dtype=np.int64)
    codes = np.ascontiguousarray(codes[order], dtype=np.uint8)
    if codes.shape[1] != ivf.code_size:
        raise SpecError(f"codes are {codes.shape[1]} bytes, the index stores {ivf.code_size}")
    lists, starts = np.unique(a, return_index=True)
    ends = np.append(starts[1:], len(a))
    for li, s, e in zip(lists.tolist(), starts.tolist(), ends.tolist(), strict=True):
        ivf.invlists.add_entries(li, e - s, faiss.swig_ptr(ids[s:e]), faiss.swig_ptr(codes[s:e]))
    ivf.ntotal += len(a)


def lift_rq(index: faiss.Index) -> faiss.Index:
    """The servable form of a filled IVF-RQ index (module docstring): an IndexIVFPQ in d x M
    dimensions holding the same codes, behind a pre-transform that tiles the query M times;
    its quantizer reads the first d of them. Under L2 the query is [q, 1] before tiling, the
    M-th sub-space holds the norm code's levels, and the codes gain that code. Any
    pre-transform of ``index`` (query weighting) stays in front. Inner-product scores equal
    faiss' IVF-RQ scores; an IVF-PQ index is returned as is."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer):
        return index
    l2 = ivf.metric_type == faiss.METRIC_L2
    if not l2 and ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SpecError("lift_rq: RQ is served for inner product and L2 only")
    d, stages, nlist = ivf.d, ivf.aq.M, ivf.nlist
    nbits = ivf.aq.nbits.at(0)
    k = 2 ** nbits
    m = stages + 1 if l2 else stages  # PQ sub-spaces of the served form, = codes per vector
    dq = d + 1 if l2 else d  # the query before tiling: q, or [q, 1] under L2
    centroids = ivf_centroids(ivf)
    probe = centroids  # what the quantizer scores the query against
    codebooks = np.zeros((m, k, d), dtype=np.float32)
    codebooks[:stages] = faiss.vector_to_array(ivf.aq.codebooks).reshape(stages, k, d)
    # the parts below are held by these locals (faiss' constructors keep raw pointers) until
    # the serialised copy, which owns its own, is made
    tiled = np.full(d * m, -1, dtype=np.int32)  # -1: a zero coordinate
    tiled[:d * stages] = np.arange(d * stages) % d
    select = np.arange(d, dtype=np.int32)
    invlists = ivf.invlists
    if l2:
        tiled[d * stages] = d  # the constant 1, read against the levels of v
        select = np.append(select, d * stages).astype(np.int32)
        probe = np.hstack([centroids, -0.5 * (centroids ** 2).sum(1, keepdims=True)])
        lo, hi = float(ivf.aq.norm_min), float(ivf.aq.norm_max)
        step = (hi - lo) / (k - 1) if hi > lo else 1.0
        codebooks[stages, :, 0] = lo + step * np.arange(k)
        invlists = faiss.ArrayInvertedLists(nlist, (m * nbits + 7) // 8)
        cs = ivf.code_size
        for li in range(nlist):
            n = ivf.invlists.list_size(li)
            if not n:
                continue
            codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(li), n * cs).reshape(n, cs)
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(li), n).copy()
            v = norm_terms(ivf, codes, np.full(n, li), centroids)
            vb = np.clip(np.rint((v - lo) / step), 0, k - 1).astype(np.int64)
            full = pack_codes(np.hstack([unpack_codes(ivf.aq, codes), vb[:, None]]), nbits)
            invlists.add_entries(li, n, faiss.swig_ptr(ids), faiss.swig_ptr(full))
    sel = faiss.RemapDimensionsTransform(d * m, dq, faiss.swig_ptr(select))
    flat = faiss.IndexFlat(dq, faiss.METRIC_INNER_PRODUCT)
    flat.add(np.ascontiguousarray(probe, dtype=np.float32))
    quantizer = faiss.IndexPreTransform(sel, flat)
    lifted = faiss.IndexIVFPQ(quantizer, d * m, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(codebooks.ravel(), lifted.pq.centroids)
    lifted.is_trained = True
    lifted.replace_invlists(invlists, False)  # the codes, borrowed for the copy below
    lifted.ntotal = ivf.ntotal
    tile = faiss.RemapDimensionsTransform(dq, d * m, faiss.swig_ptr(tiled))
    top = faiss.IndexPreTransform(tile, lifted)
    if l2:  # q -> [q, 1]: the identity and a bias of 1 on the extra coordinate
        aug = faiss.LinearTransform(d, dq, True)
        faiss.copy_array_to_vector(np.eye(dq, d, dtype=np.float32).ravel(), aug.A)
        faiss.copy_array_to_vector(np.eye(1, dq, d, dtype=np.float32).ravel(), aug.b)
        aug.is_trained = True
        top.prepend_transform(aug)
    if isinstance(index, faiss.IndexPreTransform):
        for i in reversed(range(index.chain.size())):
            top.prepend_transform(index.chain.at(i))
    return faiss.deserialize_index(faiss.serialize_index(top))
