"""Codebook trainers and the one contract they share.

Every trainer (faiss k-means / OPQ here; Distill-VQ and BiDR stage 1 in :mod:`ebr.train`) has
``fit(xt, spec, metric, seed) -> Codebooks``: a trained, empty coarse index plus what the writer
needs to fill it (the lists documents go to, the query map, score-aware encoding) and the
provenance the manifest records. The writer never asks a trainer anything else; which trainer
runs is the builder's choice (:func:`ebr.index.trainers.make_trainer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.quant.additive import fit_norm_range, rq_stages
from ebr.quant.encode import ScoreAware, add_with_assignment
from ebr.quant.faiss_index import extract_ivfpq, ivf_centroids, rotate
from ebr.quant.listpoints import fit_list_points
from ebr.spec import IndexSpec
from ebr.types import JsonObject

__all__ = ["Codebooks", "CodebookTrainer", "KMeansTrainer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Codebooks:
    """What a codebook trainer returns.

    index: the trained, empty coarse index (additive codes in faiss' build form; the writer
        serves them through :func:`ebr.quant.additive.lift_rq`). :meth:`empty_index` gives a
        fresh copy, for builds that share one training (shards).
    provenance: the manifest's ``codebooks`` entry (method, settings, training history).
    list_centroids: learned trainers keep documents in the k-means lists their training
        assumed: each goes to its nearest of these (in the index's rotated space). None: faiss'
        own assignment.
    query_map: [d, d] applied to queries before the coarse search (Distill-VQ), or None.
    score_aware: anisotropic encoding of additive codes, or None.
    list_points: the lists' points, float32 [nlist * m, d] (:mod:`ebr.quant.listpoints`), or
        None; set by :meth:`with_list_points`.

    Picklable (the index travels as faiss' serialised bytes), so it ships to build workers.
    """

    index: faiss.Index
    metric: Metric
    provenance: dict[str, Any] = field(default_factory=dict)
    list_centroids: np.ndarray | None = None
    query_map: np.ndarray | None = None
    score_aware: ScoreAware | None = None
    list_points: np.ndarray | None = None

    @property
    def points_per_list(self) -> int:
        """m of :attr:`list_points` (1: none)."""
        if self.list_points is None:
            return 1
        return len(self.list_points) // int(faiss.extract_index_ivf(self.index).nlist)

    def with_list_points(self, xt: np.ndarray, m: int, seed: int) -> Codebooks:
        """These codebooks and ``m`` points per list, fitted on ``xt`` (the training sample,
        input space) in the lists its rows are encoded into."""
        ivf = faiss.extract_index_ivf(self.index)
        rotated = rotate(self.index, xt)
        lists = self.assign(self.index, xt)
        if lists is None:
            _, a = ivf.quantizer.search(rotated, 1)
            lists = a.ravel()
        points = fit_list_points(rotated, lists, ivf_centroids(ivf), m,
                                 spherical=self.metric is Metric.IP, seed=seed)
        return replace(self, list_points=points)

    def empty_index(self) -> faiss.Index:
        """A fresh copy of the trained, empty index."""
        return faiss.deserialize_index(faiss.serialize_index(self.index))

    def assign(self, index: faiss.Index, x: np.ndarray) -> np.ndarray | None:
        """IVF list of each vector of ``x`` (input space); None where faiss assigns itself."""
        if self.list_centroids is None:
            return None
        # faiss' brute-force kernel over the stored centroids, the one IndexFlat's search runs
        # (the same lists, ties included), without copying nlist x d floats into an index
        _, a = faiss.knn(rotate(index, x), np.ascontiguousarray(self.list_centroids,
                                                                dtype=np.float32),
                         1, metric=self.metric.faiss_metric)
        return a.ravel().astype(np.int64)

    def add(self, index: faiss.Index, x: np.ndarray) -> None:
        """Encode ``x`` into ``index`` (a trained index of these codebooks) in its lists."""
        lists = self.assign(index, x)
        if lists is None:
            index.add(x)
        else:
            add_with_assignment(index, x, lists, self.score_aware)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (faiss.serialize_index(self.index), self.metric, self.provenance,
                           self.list_centroids, self.query_map, self.score_aware,
                           self.list_points))


def _restore(index_bytes: np.ndarray, *rest: Any) -> Codebooks:
    return Codebooks(faiss.deserialize_index(index_bytes), *rest)


class CodebookTrainer(Protocol):
    """Trains IVF centroids + codebooks on a sample ``xt`` (normalised like the index).
    ``list_points``: the points per list the build will rank its lists by (the writer fits
    them after ``fit``); a trainer that measures its codebooks as served serves them so."""

    method: str

    def fit(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int,
            list_points: int = 1) -> Codebooks: ...


class KMeansTrainer:
    """faiss' unsupervised training: k-means IVF, then k-means PQ on the residuals (optionally OPQ).

    Polysemous training is off (the ``np`` suffix): it only serves Hamming pre-filtering, which
    ebr does not use, and it costs about 2.7x the training time (see the design notes).
    """

    def __init__(self, niter: int = 20, opq_niter: int = 25, lsq_train_iters: int = 10,
                 lsq_encode_iters: int = 8, wide_rq_niter: int = 10,
                 method: str = "kmeans") -> None:
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
        self.method = method

    def fit(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int,
            list_points: int = 1) -> Codebooks:
        """The contract: faiss' own codebooks and list assignment (``list_points``: unused)."""
        return self.codebooks(self.train_index(xt, spec, metric, seed), spec, metric)

    def codebooks(self, index: faiss.Index, spec: IndexSpec, metric: Metric) -> Codebooks:
        """:meth:`fit`'s result for an index :meth:`train_index` trained."""
        return Codebooks(index, metric, {**self.describe(),
                                         "method": "opq" if spec.opq else self.method})

    def train_index(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int
                    ) -> faiss.Index:
        """The trained, empty faiss index (the k-means start of learned trainers)."""
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

    def describe(self) -> JsonObject:
        return {"method": self.method, "kmeans_niter": self.niter,
                "wide_rq_niter": self.wide_rq_niter,
                "lsq_iters": {"train": self.lsq_train_iters, "encode": self.lsq_encode_iters}}
