"""Metrics and the one score convention of ebr: **higher is better**.

Inner product scores are ``<q, x>``; L2 scores are the *negated* squared distance
``-||q - x||^2`` so that every consumer sorts descending (faiss returns L2 ascending; we
flip it at the edge, in :func:`faiss_scores_to_ebr`).
"""

from __future__ import annotations

import enum

import faiss
import numpy as np

__all__ = ["Metric", "exact_scores", "faiss_scores_to_ebr", "normalize_rows"]


class Metric(str, enum.Enum):
    """Similarity of the index. ``ip`` is cosine when vectors are L2-normalised."""

    IP = "ip"
    L2 = "l2"

    @classmethod
    def parse(cls, s: str | Metric) -> Metric:
        if isinstance(s, Metric):
            return s
        key = str(s).strip().lower()
        aliases = {"ip": cls.IP, "inner_product": cls.IP, "dot": cls.IP, "cosine": cls.IP,
                   "l2": cls.L2, "euclidean": cls.L2}
        if key not in aliases:
            from ebr.errors import SpecError

            raise SpecError(f"unknown metric {s!r}: expected 'ip' or 'l2'")
        return aliases[key]

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self is Metric.IP else faiss.METRIC_L2


def exact_scores(xq: np.ndarray, xb: np.ndarray, metric: Metric) -> np.ndarray:
    """Exact scores (higher is better) of every query against every row.

    xq: float32 [nq, d]; xb: float32 or float16 [n, d]. Returns float32 [nq, n].
    Both the re-rank and the brute-force reference call this, so they agree bit for bit
    on the same rows.
    """
    xb = np.asarray(xb, dtype=np.float32)
    ip = xq @ xb.T  # [nq, n]
    if metric is Metric.IP:
        return ip
    # -||q - x||^2 = 2<q,x> - ||x||^2 - ||q||^2
    qn = np.einsum("ij,ij->i", xq, xq)[:, None]
    bn = np.einsum("ij,ij->i", xb, xb)[None, :]
    return 2.0 * ip - bn - qn


def faiss_scores_to_ebr(D: np.ndarray, metric: Metric) -> np.ndarray:
    """faiss distances -> ebr scores (negate L2 distances; keep -inf padding)."""
    D = np.asarray(D, dtype=np.float32)
    if metric is Metric.IP:
        return np.where(np.isfinite(D) & (D > -3.0e38), D, -np.inf).astype(np.float32)
    return np.where(np.isfinite(D) & (D < 3.0e38), -D, -np.inf).astype(np.float32)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (zero rows stay zero): the one place ebr
    normalises (cosine indexes, their queries, unit directions)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
