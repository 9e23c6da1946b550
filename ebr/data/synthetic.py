"""A seeded synthetic retrieval corpus: clustered, anisotropic vectors with held-out queries and
planted relevant documents, so the demo and the tests need no download.

Each of ``n_clusters`` clusters has a centre and its own low-rank covariance (a random basis
with geometrically decaying scales), so vectors have a low intrinsic dimension and IVF has
structure, like real embeddings. Each query is built around 1-3 planted relevant documents of
one cluster (their mean plus noise): relevance labels are known and not trivially the exact
nearest neighbours. Documents are generated chunk by chunk from per-chunk seeds, so any size can
be streamed to disk with bounded memory and the same seed always gives the same corpus.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebr.metric import Metric

__all__ = ["SyntheticConfig", "SyntheticDataset", "generate", "iter_chunks", "write_stream"]


@dataclass(frozen=True)
class SyntheticConfig:
    n: int = 20_000
    d: int = 128
    nq: int = 500  # held-out test queries
    nq_train: int = 1_000  # training queries (for learned codebooks)
    n_clusters: int = 64
    rank: int = 24  # intrinsic dimension per cluster
    spread: float = 0.6  # within-cluster spread relative to the centre norm
    query_noise: float = 1.2  # exact search then finds ~85% of the planted docs in its top 10
    metric: Metric = Metric.IP  # IP: rows are L2-normalised (cosine)
    seed: int = 1338
    chunk: int = 50_000


@dataclass(frozen=True)
class SyntheticDataset:
    config: SyntheticConfig
    xb: np.ndarray  # float32 [n, d]
    xq: np.ndarray  # float32 [nq, d]
    xq_train: np.ndarray  # float32 [nq_train, d]
    qrels: list[list[int]]  # relevant document rows per test query
    qrels_train: list[list[int]]


class _Model:
    def __init__(self, cfg: SyntheticConfig) -> None:
        rng = np.random.default_rng(cfg.seed)
        c, d, r = cfg.n_clusters, cfg.d, min(cfg.rank, cfg.d)
        self.centres = rng.standard_normal((c, d)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        bases = rng.standard_normal((c, r, d)).astype(np.float32)
        bases /= np.linalg.norm(bases, axis=2, keepdims=True)
        decay = 0.85 ** np.arange(r, dtype=np.float32)  # anisotropic: a few strong directions
        self.bases = bases * (decay / np.linalg.norm(decay) * cfg.spread)[None, :, None]
        weights = rng.dirichlet(np.full(c, 2.0))  # uneven cluster sizes
        self.weights = weights
        self.cfg = cfg

    def chunk(self, i: int) -> np.ndarray:
        cfg = self.cfg
        i0, i1 = i * cfg.chunk, min((i + 1) * cfg.chunk, cfg.n)
        rng = np.random.default_rng([cfg.seed, 1, i])
        lab = rng.choice(cfg.n_clusters, size=i1 - i0, p=self.weights)
        z = rng.standard_normal((i1 - i0, self.bases.shape[1])).astype(np.float32)
        x = self.centres[lab]
        for s in range(0, len(lab), 4096):  # bounded temporary: [4096, rank, d], not [chunk, ...]
            x[s:s + 4096] += np.einsum("nr,nrd->nd", z[s:s + 4096], self.bases[lab[s:s + 4096]])
        x += 0.02 * rng.standard_normal(x.shape).astype(np.float32)  # isotropic floor
        if cfg.metric is Metric.IP:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)


def iter_chunks(cfg: SyntheticConfig) -> Iterator[np.ndarray]:
    """Document vectors in order, ``cfg.chunk`` rows at a time (bounded memory)."""
    model = _Model(cfg)
    for i in range(-(-cfg.n // cfg.chunk)):
        yield model.chunk(i)


def _queries(xb: np.ndarray, nq: int, cfg: SyntheticConfig, stream: int
             ) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng([cfg.seed, 2, stream])
    n, d = xb.shape
    xq = np.empty((nq, d), dtype=np.float32)
    qrels: list[list[int]] = []
    anchors = rng.choice(n, size=nq, replace=nq > n)
    for i, a in enumerate(anchors):
        # 1-3 relevant docs: the anchor and its nearest documents (same topic)
        m = int(rng.integers(1, 4))
        if m > 1:
            sims = xb @ xb[a] if cfg.metric is Metric.IP else -((xb - xb[a]) ** 2).sum(1)
            near = np.argpartition(-sims, m)[:m + 1]
            rel = [int(a)] + [int(j) for j in near if j != a][:m - 1]
        else:
            rel = [int(a)]
        noise = np.asarray(rng.standard_normal(d), dtype=np.float32)
        q = xb[rel].mean(0) + cfg.query_noise * noise / np.sqrt(d)
        if cfg.metric is Metric.IP:
            q /= np.linalg.norm(q)
        xq[i] = q
        qrels.append(sorted(rel))
    return xq, qrels


def generate(cfg: SyntheticConfig | None = None) -> SyntheticDataset:
    """Generate the whole dataset in memory (for n up to a few million x d floats)."""
    cfg = cfg or SyntheticConfig()
    xb = np.concatenate(list(iter_chunks(cfg)), axis=0)
    xq, qrels = _queries(xb, cfg.nq, cfg, stream=0)
    xt, qrels_t = _queries(xb, cfg.nq_train, cfg, stream=1)
    return SyntheticDataset(cfg, xb, xq, xt, qrels, qrels_t)


def write_stream(cfg: SyntheticConfig, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``corpus.fbin`` chunk by chunk and ``queries_test.npy`` without ever holding the
    corpus: memory is one chunk, whatever ``cfg.n`` (1M x 384 is 1.5 GB on disk).

    The ``cfg.nq`` queries are random corpus rows plus noise (the ``query_noise`` of
    :func:`generate`); there are no planted qrels at this scale: evaluate against exact search.
    Same seed, same files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 3])
    anchors = np.sort(rng.choice(cfg.n, size=min(cfg.nq, cfg.n), replace=False))
    xq = np.empty((len(anchors), cfg.d), dtype=np.float32)
    path = out / "corpus.fbin"
    with open(path, "wb") as f:
        np.array([cfg.n, cfg.d], dtype=np.uint32).tofile(f)
        i0 = 0
        for block in iter_chunks(cfg):
            sel = (anchors >= i0) & (anchors < i0 + len(block))
            xq[sel] = block[anchors[sel] - i0]
            block.tofile(f)
            i0 += len(block)
        f.flush()
        os.fsync(f.fileno())
    xq += cfg.query_noise * rng.standard_normal(xq.shape).astype(np.float32) / np.sqrt(cfg.d)
    if cfg.metric is Metric.IP:
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    np.save(out / "queries_test.npy", xq)
    return {"corpus": path, "queries_test": out / "queries_test.npy"}
