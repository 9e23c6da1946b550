"""Retrieval metrics on ranked id lists.

Against **relevance labels** (BEIR conventions, as pytrec_eval computes them): recall@k =
|relevant in top k| / |relevant|, nDCG@k with the graded qrels score as gain and log2 discount,
MRR@k. Against **exact search**: recall@k = |top k ∩ exact top k| / k (faiss'
``knn_intersection_measure``), plus a tie-tolerant variant (ann-benchmarks ``knn_threshold``):
a returned id counts if its exact score is at least the k-th exact score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["recall_vs_exact", "recall_vs_exact_tolerant", "label_metrics", "ndcg_per_query",
           "paired_difference"]


def recall_vs_exact(ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean |ids[:, :k] ∩ exact_ids[:, :k]| / k over queries."""
    if ids.shape[0] != exact_ids.shape[0]:
        raise ValueError("ids and exact_ids have different numbers of queries")
    hits = [len(set(a[:k][a[:k] >= 0].tolist()) & set(b[:k].tolist()))
            for a, b in zip(ids, exact_ids, strict=True)]
    return float(np.mean(hits)) / k


def recall_vs_exact_tolerant(scores_of_ids: np.ndarray, exact_scores: np.ndarray, k: int,
                             eps: float = 1e-5) -> float:
    """Tie-tolerant recall: share of returned top-k whose *exact* score >= the k-th exact score."""
    thr = exact_scores[:, k - 1:k] - eps * np.maximum(1.0, np.abs(exact_scores[:, k - 1:k]))
    return float(np.mean((scores_of_ids[:, :k] >= thr).sum(1) / k))


def label_metrics(ranked: Sequence[Sequence[str | None]], qrels: Sequence[Mapping[str, int]],
                  ks: Sequence[int] = (1, 10, 100), ndcg_k: int = 10,
                  mrr_k: int = 10) -> dict[str, float]:
    """Recall@ks, nDCG@ndcg_k and MRR@mrr_k of ranked external ids against graded qrels.

    Queries with no relevant document are skipped (as BEIR does).
    """
    rec: dict[int, list[float]] = {k: [] for k in ks}
    ndcg, mrr = [], []
    for ranking, rel in zip(ranked, qrels, strict=True):
        rel = {d: g for d, g in rel.items() if g > 0}
        if not rel:
            continue
        ranking = list(ranking)
        for k in ks:
            rec[k].append(len(rel.keys() & set(ranking[:k])) / len(rel))
        ndcg.append(_ndcg(ranking, rel, ndcg_k))
        rr = 0.0
        for i, d in enumerate(ranking[:mrr_k]):
            if d in rel:
                rr = 1.0 / (i + 1)
                break
        mrr.append(rr)
    out = {f"recall@{k}": float(np.mean(v)) if v else float("nan") for k, v in rec.items()}
    out[f"ndcg@{ndcg_k}"] = float(np.mean(ndcg)) if ndcg else float("nan")
    out[f"mrr@{mrr_k}"] = float(np.mean(mrr)) if mrr else float("nan")
    return out


def _ndcg(ranking: Sequence[str | None], rel: Mapping[str, int], k: int) -> float:
    """nDCG@k of one ranking against its positive grades (at least one)."""
    gains = [0 if d is None else rel.get(d, 0) for d in ranking[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(rel.values(), reverse=True)[:k]
    return float(dcg / sum(g / np.log2(i + 2) for i, g in enumerate(ideal)))


def ndcg_per_query(ranked: Sequence[Sequence[str | None]], qrels: Sequence[Mapping[str, int]],
                   k: int = 10) -> np.ndarray:
    """Each query's nDCG@k (as :func:`label_metrics` averages them); NaN for a query with no
    relevant document. What :func:`paired_difference` compares two systems on."""
    out = np.full(len(qrels), np.nan)
    for i, (ranking, rel) in enumerate(zip(ranked, qrels, strict=True)):
        rel = {d: g for d, g in rel.items() if g > 0}
        if rel:
            out[i] = _ndcg(list(ranking), rel, k)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """The mean of ``a - b`` over the queries where both are defined (not NaN), its standard
    error (sample standard deviation / sqrt(n)), and n: how far apart two systems are on the
    same queries, and whether that is more than the queries' noise."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D and of the same length, not {x.shape} and "
                         f"{y.shape}")
    d = x - y
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else float("nan")), float("nan"), len(d)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d)
