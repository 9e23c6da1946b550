"""The one place that builds faiss coarse indexes from an :class:`~ebr.spec.IndexSpec`.

A *codebook trainer* turns a training sample into a trained, empty faiss index. ``kmeans`` and
``opq`` are faiss' own unsupervised training; learned trainers (Distill-VQ) plug in through the
same :class:`CodebookTrainer` protocol and hand back an index of the same layout, so the writer,
the reader and the search path never know which one ran.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.spec import IndexSpec

__all__ = ["CodebookTrainer", "KMeansTrainer", "extract_ivfpq", "make_trainer", "ivf_params"]

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

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "kmeans_niter": self.niter}


def make_trainer(method: str, niter: int = 20) -> CodebookTrainer:
    if method in ("kmeans", "opq"):
        t = KMeansTrainer(niter=niter)
        t.method = method
        return t
    raise SpecError(f"unknown codebook method {method!r}: expected 'kmeans' or 'opq'")
