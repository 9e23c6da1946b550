"""Encoding documents into a trained coarse index in the lists its training chose, optionally
with score-aware (anisotropic) additive codes."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.quant.additive import add_codes, pack_codes, unpack_codes
from ebr.quant.anisotropic import directions, refine_codes
from ebr.quant.faiss_index import extract_ivf, rotate

__all__ = ["ScoreAware", "add_with_assignment", "score_aware_codes"]


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
    # the assigned lists' centroids alone (a write of one document would copy all of them)
    r = rotate(index, x) - ivf.quantizer.reconstruct_batch(
        np.ascontiguousarray(assign, dtype=np.int64))
    codes = unpack_codes(aq, aq.compute_codes(np.ascontiguousarray(r)))
    q = np.asarray(x, dtype=np.float32)
    if score_aware.query_map is not None:
        q = q @ score_aware.query_map.T
    codebooks = faiss.vector_to_array(aq.codebooks).reshape(aq.M, -1, ivf.d)
    return refine_codes(r, directions(rotate(index, q)), codebooks, codes, score_aware.eta,
                        score_aware.passes)
