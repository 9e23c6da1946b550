"""Brute-force reference search over the dense store (the ground truth everything is tested against).

Streams the store in row blocks and merges each block's top-k into a running top-k, so memory is
``nq x (k + block)`` whatever the corpus size (faiss ``knn_ground_truth``'s ResultHeap idea).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ebr.metric import Metric, exact_scores
from ebr.search.rerank import topk
from ebr.types import SearchResult

__all__ = ["exact_search"]


def exact_search(xq: np.ndarray, xb: np.ndarray, k: int, metric: Metric,
                 block: int = 32768, progress: bool = False,
                 exclude: np.ndarray | None = None) -> SearchResult:
    """Exact top-k of ``xq`` [nq, d] over ``xb`` [n, d] (array or memmap); ties -> smaller id.
    ``exclude``: bool [>= n], rows never returned (tombstones)."""
    nq = xq.shape[0]
    n = xb.shape[0]
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    best_ids = np.full((nq, 0), -1, dtype=np.int64)
    best = np.full((nq, 0), -np.inf, dtype=np.float32)
    for i0 in tqdm(range(0, n, block), desc="exact", disable=not progress):
        s = exact_scores(xq, xb[i0:i0 + block], metric)  # [nq, b]
        if exclude is not None:
            s[:, exclude[i0:i0 + s.shape[1]]] = -np.inf
        ids = np.broadcast_to(np.arange(i0, i0 + s.shape[1], dtype=np.int64), s.shape)
        if s.shape[1] > k:  # pre-select within the block
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, part, axis=1)
            ids = np.take_along_axis(ids, part, axis=1)
        best_ids, best = topk(np.concatenate([best, s], axis=1),
                              np.concatenate([best_ids, ids], axis=1), k)
    if best.shape[1] < k:
        best_ids, best = topk(best, best_ids, k)
    return SearchResult(best_ids, best)
