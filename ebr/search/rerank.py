"""Exact re-rank: gather candidate rows from the on-disk dense store, score, keep the top k.

Candidate rows of the whole batch are de-duplicated and sorted before the gather, so the
memmap is read forward, each row once, however many queries share it.
"""

from __future__ import annotations

import numpy as np

from ebr.metric import Metric

__all__ = ["rerank", "topk"]


def topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of ``scores`` [nq, c] (higher first; ties -> smaller id first).

    ``ids`` [nq, c] holds the candidate ids (``-1`` padding, whose score must be ``-inf``).
    Returns (ids int64 [nq, k], scores float32 [nq, k]) padded with -1 / -inf.
    """
    nq, c = scores.shape
    kk = min(k, c)
    # order by (-score, id): lexsort's last key is the primary one
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :kk]
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    out_ids = np.where(np.isfinite(out_scores), out_ids, -1)
    if kk < k:
        out_ids = np.pad(out_ids, ((0, 0), (0, k - kk)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return out_ids.astype(np.int64), out_scores


def rerank(xq: np.ndarray, cand: np.ndarray, dense: np.ndarray, metric: Metric,
           k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact scores of each query's candidates, top-k.

    xq: float32 [nq, d]; cand: int64 [nq, c] row ids (``-1`` padding); dense: [n, d] memmap.
    Returns (ids [nq, k], scores [nq, k], distinct rows read).
    """
    nq, c = cand.shape
    valid = cand >= 0
    rows = np.unique(cand[valid])  # sorted: forward reads
    if rows.size == 0:
        return (np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), -np.inf, np.float32), 0)
    xr = np.asarray(dense[rows], dtype=np.float32)  # [r, d]  -- the disk read
    pos = np.searchsorted(rows, np.where(valid, cand, rows[0]))  # [nq, c]
    if rows.size <= 4 * c:
        # candidates shared across the batch (always true for one query): one gemm, gather
        scores = np.take_along_axis(xq @ xr.T, pos, axis=1)  # [nq, r] -> [nq, c]
    else:  # mostly distinct rows: per-query gemv, never an [nq, c, d] temporary
        scores = np.empty((nq, c), dtype=np.float32)
        for i in range(nq):
            scores[i] = xr[pos[i]] @ xq[i]
    if metric is Metric.L2:
        norms = np.einsum("rd,rd->r", xr, xr)  # [r], once per distinct row
        scores = 2.0 * scores - norms[pos] - np.einsum("qd,qd->q", xq, xq)[:, None]
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    ids, top = topk(scores, np.where(valid, cand, -1), k)
    return ids, top, int(rows.size)
