"""Distill-VQ's parts in torch and numpy: the student model (IVF centroids, codebooks, query
map), the teacher's top-K, pseudo-queries, query weighting and the helpers the trainer
(:mod:`ebr.train.distill_vq`) composes."""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import nn

from ebr.errors import SpecError
from ebr.metric import Metric

__all__ = ["DistillVQ", "teacher_topk", "pseudo_queries", "query_weighting", "query_spectrum",
           "recall_of", "locate"]


def teacher_topk(xq: np.ndarray, xb: np.ndarray, k: int, metric: Metric) -> np.ndarray:
    """Exact top-k row ids (faiss brute force) of each query: int64 [nq, k]."""
    _, ids = faiss.knn(np.ascontiguousarray(xq, dtype=np.float32),
                       np.ascontiguousarray(xb, dtype=np.float32), min(k, len(xb)),
                       metric=metric.faiss_metric)
    return ids.astype(np.int64)


def pseudo_queries(xb: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """Queries sampled from the corpus: random documents plus isotropic noise
    (norm = ``noise`` x the mean document norm); re-normalised when the corpus is."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(xb), size=n, replace=n > len(xb))
    x = np.asarray(xb[rows], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    eps *= noise * float(norms.mean()) / np.linalg.norm(eps, axis=1, keepdims=True)
    q = x + eps
    if np.allclose(norms, 1.0, atol=1e-3):
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


def query_weighting(queries: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(S^1/2, S^-1) for S = (1 - shrinkage) Sigma / mean eigenvalue + shrinkage I, Sigma the
    second moment of ``queries``. Documents quantized as S^1/2 x and queries mapped by S^-1
    score as before, <S^-1 q, S^1/2 x> = <q, x>, while the quantization error of S^1/2 x,
    |S^1/2 e|^2 = e' S e, is the squared score error averaged over the queries (shrunk)."""
    q = np.asarray(queries, dtype=np.float64)
    sigma = q.T @ q / max(len(q), 1)
    d = sigma.shape[0]
    s = (1.0 - shrinkage) * sigma / max(np.trace(sigma) / d, 1e-12) + shrinkage * np.eye(d)
    w, v = np.linalg.eigh(s)  # symmetric, eigenvalues >= shrinkage > 0
    half = (v * np.sqrt(w)) @ v.T
    inv = (v / w) @ v.T
    return half.astype(np.float32), inv.astype(np.float32)


def query_spectrum(queries: np.ndarray) -> dict[str, float]:
    """How unevenly the queries use the directions: the share of their second moment in the top
    10 directions and the largest over the median eigenvalue. Query weighting gains where these
    are high (SciFact's MiniLM train queries: 0.33 and 196); near-isotropic queries (0.14 and
    2.2 for the built-in generator at 128-d) leave it nothing to exploit."""
    q = np.asarray(queries, dtype=np.float64)
    w = np.clip(np.linalg.eigvalsh(q.T @ q / max(len(q), 1)), 0.0, None)[::-1]
    return {"top10_share": round(float(w[:10].sum() / max(w.sum(), 1e-300)), 4),
            "max_over_median": round(float(w[0] / max(np.median(w), 1e-300)), 1)}


class DistillVQ(nn.Module):
    """IVF centroids [nlist, d], PQ codebooks [M, ksub, dsub] (or, ``residual``, RQ codebooks
    [M, ksub, d]) and a query map W [d_in, d_in] (init I, or ``query_map``: S^-1 under query
    weighting); the rotation, when there is one, is [d, d_in] (OPQ<M>_<d'> makes d < d_in).

    Documents live in the index's working space (after OPQ, if any); queries are mapped by W in
    the input space, then rotated.
    """

    def __init__(self, centroids: np.ndarray, codebooks: np.ndarray, rotation: np.ndarray | None,
                 metric: Metric, train_query_map: bool = True,
                 query_map: np.ndarray | None = None, residual: bool = False) -> None:
        super().__init__()
        nlist, d = centroids.shape
        self.M, self.ksub, self.dsub = codebooks.shape
        self.residual = residual
        if (self.dsub if residual else self.M * self.dsub) != d:
            raise SpecError(f"codebooks {codebooks.shape} do not match dimension {d}")
        self.metric = metric
        self.centroids = nn.Parameter(torch.from_numpy(centroids.copy()))
        self.codebooks = nn.Parameter(torch.from_numpy(codebooks.copy()))
        d_in = d if rotation is None else rotation.shape[1]  # OPQ<M>_<d'>: [d', d_in]
        if rotation is not None and rotation.shape[0] != d:
            raise SpecError(f"rotation {rotation.shape} does not end in dimension {d}")
        w0 = torch.eye(d_in) if query_map is None else torch.from_numpy(
            np.ascontiguousarray(query_map, dtype=np.float32))
        self.query_map = nn.Parameter(w0, requires_grad=train_query_map)
        self.register_buffer("rotation", None if rotation is None
                             else torch.from_numpy(rotation.astype(np.float32)))

    def map_queries(self, q: torch.Tensor) -> torch.Tensor:
        """q [B, d] -> W q, rotated into the index's working space."""
        q = q @ self.query_map.T
        rotation = self.rotation  # a buffer, or None
        return q @ rotation.T if isinstance(rotation, torch.Tensor) else q

    @torch.no_grad()
    def encode(self, xr: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        """PQ codes [n, M] of the residuals xr - o(assign) (nearest codeword per sub-space)."""
        if self.residual:  # a greedy re-selection here would not be the codes the export writes
            raise SpecError("RQ codes come from faiss' beam search: pass codes= (the trainer "
                            "refreshes them every epoch)")
        n = xr.shape[0]
        r = (xr - self.centroids[assign]).view(n, self.M, self.dsub)  # [n, M, dsub]
        cb = self.codebooks  # [M, ksub, dsub]
        dist = (cb * cb).sum(-1)[None] - 2 * torch.einsum("nmd,mkd->nmk", r, cb)  # [n, M, ksub]
        return dist.argmin(-1)

    def reconstruct(self, assign: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """o(d) + concat(codewords): [n, d]; gradients reach the centroids and the selected
        codewords (the argmin itself is not differentiated: straight-through)."""
        m = torch.arange(self.M, device=codes.device)[None, :]
        cw = self.codebooks[m, codes]  # [n, M, dsub] (RQ: [n, M, d], summed)
        if self.residual:
            return self.centroids[assign] + cw.sum(1)
        return self.centroids[assign] + cw.reshape(codes.shape[0], -1)

    def scores(self, qm: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Higher-is-better scores of mapped queries [B, d] against vectors [n, d]: [B, n]."""
        ip = qm @ x.T
        if self.metric is Metric.IP:
            return ip
        return 2 * ip - (x * x).sum(-1)[None] - (qm * qm).sum(-1)[:, None]

    def student(self, q: torch.Tensor, xr: torch.Tensor, assign: torch.Tensor,
                codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(IVF scores, IVF+PQ scores) of queries q [B, d] against documents xr [n, d]
        (``codes``: the documents' codes if given, else re-selected by :meth:`encode`)."""
        qm = self.map_queries(q)
        codes = self.encode(xr, assign) if codes is None else codes
        return self.scores(qm, self.centroids[assign]), self.scores(qm, self.reconstruct(assign, codes))

    @torch.no_grad()
    def coarse_search(self, q: torch.Tensor, xr: torch.Tensor, assign: torch.Tensor, nprobe: int,
                      k: int, chunk: int = 16384, codes: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """What the exported faiss index returns: top-k ids by IVF+PQ score among documents in
        the nprobe best lists for each query. [B, k] (-1 where fewer are reachable)."""
        qm = self.map_queries(q)
        probe = self.scores(qm, self.centroids).topk(nprobe, dim=1).indices  # [B, nprobe]
        probed = torch.zeros(q.shape[0], self.centroids.shape[0], dtype=torch.bool)
        probed.scatter_(1, probe, True)
        best_s = torch.full((q.shape[0], 0), -torch.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for i0 in range(0, xr.shape[0], chunk):
            a = assign[i0:i0 + chunk]
            c = self.encode(xr[i0:i0 + chunk], a) if codes is None else codes[i0:i0 + chunk]
            rec = self.reconstruct(a, c)
            s = self.scores(qm, rec).masked_fill(~probed[:, a], -torch.inf)
            ids = torch.arange(i0, i0 + len(a))[None].expand_as(s)
            s, ids = torch.cat([best_s, s], 1), torch.cat([best_i, ids], 1)
            top = s.topk(min(k, s.shape[1]), dim=1)
            best_s, best_i = top.values, ids.gather(1, top.indices)
        return best_i.masked_fill(torch.isinf(best_s), -1)


def recall_of(found: torch.Tensor, truth: np.ndarray | list[np.ndarray]) -> float:
    f = found.numpy()
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(f, truth, strict=True)]))


def locate(x: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each vector of ``x`` in ``xt`` where it is there (to float tolerance), else -1;
    and the rows of ``x`` that are not there (in order)."""
    index = faiss.IndexFlatL2(xt.shape[1])
    index.add(np.ascontiguousarray(xt, dtype=np.float32))
    dist, at = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    tol = 1e-5 * max(float((x * x).sum(1).mean()), 1e-12)
    found = np.where(dist[:, 0] <= tol, at[:, 0], -1).astype(np.int64)
    return found, np.flatnonzero(found < 0)
