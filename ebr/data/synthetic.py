"""A seeded synthetic retrieval corpus: clustered, anisotropic vectors with held-out queries and
planted relevant documents, so the demo and the tests need no download.

Each of ``n_clusters`` clusters has a centre and its own low-rank covariance (a random basis
with geometrically decaying scales), so vectors have a low intrinsic dimension and IVF has
structure, like real embeddings. Each query is built around 1-3 planted relevant documents of
one cluster (their mean plus noise): relevance labels are known and not trivially the exact
nearest neighbours. Documents are generated chunk by chunk from per-chunk seeds, so any size can
be streamed to disk with bounded memory and the same seed always gives the same corpus.

``profile="minilm"`` follows instead the spectrum measured on real text embeddings (all-MiniLM-
L6-v2 on SciFact: 5,183 abstracts, 1,109 queries; ``bench/fit_generator.py`` measures it and
compares a generated set): one global orthonormal basis whose variances decay as a power law
(i^-0.74 for documents, i^-0.66 for the query noise), a common mean of norm 0.36 that every
document shares, 29% of the variance between 64 clusters, queries offset from the documents'
mean by a fixed vector (|mean_q - mean_d| 0.20), and query noise scaled so that a query's best
document scores about 0.62. Its queries are anisotropic as real ones are (the default profile's
are nearly isotropic: top-10 of 128 directions hold 14% of their second moment; MiniLM's hold
33% of 384), which is what query-aware codebooks exploit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebr.metric import Metric

__all__ = ["SyntheticConfig", "SyntheticDataset", "generate", "iter_chunks", "write_stream",
           "PROFILES", "MINILM_FIT"]

PROFILES = ("clusters", "minilm")
# Measured on SciFact's MiniLM embeddings (bench/fit_generator.py prints these)
MINILM_FIT = {"doc_slope": 0.74, "query_slope": 0.66, "mean_norm": 0.36, "between": 0.29,
              "query_offset": 0.20, "query_top1": 0.62, "doc_nn": 0.68}
# how the profile reaches the last two (tuned on the table of bench/fit_generator.py): each
# cluster has SUBTOPICS sub-centres holding SUBTOPIC_SHARE of the variance (documents' near
# neighbours), and the query noise is QUERY_NOISE_SCALE x query_noise
SUBTOPICS, SUBTOPIC_SHARE, QUERY_NOISE_SCALE = 16, 0.3, 0.9


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
    profile: str = "clusters"  # "clusters" (below) or "minilm" (the module docstring)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")


@dataclass(frozen=True)
class SyntheticDataset:
    config: SyntheticConfig
    xb: np.ndarray  # float32 [n, d]
    xq: np.ndarray  # float32 [nq, d]
    xq_train: np.ndarray  # float32 [nq_train, d]
    qrels: list[list[int]]  # relevant document rows per test query
    qrels_train: list[list[int]]


class _Model:
    bases: np.ndarray | None  # per-cluster bases (clusters); None: the minilm profile
    within: np.ndarray
    query_noise: np.ndarray
    query_offset: np.ndarray

    def __init__(self, cfg: SyntheticConfig) -> None:
        if cfg.profile == "minilm":
            self._fit_minilm(cfg)
            return
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

    def _fit_minilm(self, cfg: SyntheticConfig) -> None:
        """A global basis with power-law variances, a common mean, clusters drawn from the
        same spectrum (MINILM_FIT's share of the variance between them)."""
        rng = np.random.default_rng([cfg.seed, 7])
        d, f = cfg.d, MINILM_FIT
        basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        lam = np.arange(1, d + 1, dtype=np.float64) ** -f["doc_slope"]
        lam *= (1.0 - f["mean_norm"] ** 2) / lam.sum()  # unit vectors: |mean|^2 + trace = 1
        mean = rng.standard_normal(d)
        self.mean = (f["mean_norm"] * mean / np.linalg.norm(mean)).astype(np.float32)
        scale = np.sqrt(lam).astype(np.float32)
        g = rng.standard_normal((cfg.n_clusters, d)).astype(np.float32)
        centres = self.mean + (g * scale * np.sqrt(f["between"])) @ basis.T
        sub = rng.standard_normal((cfg.n_clusters, SUBTOPICS, d)).astype(np.float32)
        self.centres = (centres[:, None, :] + (sub * scale * np.sqrt(SUBTOPIC_SHARE)) @ basis.T
                        ).reshape(-1, d)  # [clusters x SUBTOPICS, d]
        rest = 1.0 - f["between"] - SUBTOPIC_SHARE
        self.within = (scale * np.sqrt(rest))[:, None] * basis.T  # [d, d]
        w = rng.dirichlet(np.full(cfg.n_clusters, 2.0))
        self.weights = (w[:, None] * rng.dirichlet(np.full(SUBTOPICS, 2.0), cfg.n_clusters)
                        ).ravel()
        qlam = np.arange(1, d + 1, dtype=np.float64) ** -f["query_slope"]
        self.query_noise = (np.sqrt(qlam / qlam.sum()).astype(np.float32)[:, None]
                            * np.linalg.qr(rng.standard_normal((d, d)))[0].T.astype(np.float32))
        off = rng.standard_normal(d)
        self.query_offset = (f["query_offset"] * off / np.linalg.norm(off)).astype(np.float32)
        self.bases = None
        self.cfg = cfg

    def chunk(self, i: int) -> np.ndarray:
        cfg = self.cfg
        i0, i1 = i * cfg.chunk, min((i + 1) * cfg.chunk, cfg.n)
        if self.bases is None:  # the minilm profile
            rng = np.random.default_rng([cfg.seed, 1, i])
            lab = rng.choice(len(self.weights), size=i1 - i0, p=self.weights)
            z = rng.standard_normal((i1 - i0, cfg.d)).astype(np.float32)
            x = self.centres[lab] + z @ self.within
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            return x.astype(np.float32)
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


def _query_noise(cfg: SyntheticConfig, rng: np.random.Generator, model: _Model | None,
                 rows: int | None = None) -> np.ndarray:
    """Queries' offsets from their documents ([d], or [rows, d]): isotropic (clusters), or
    along the queries' own spectrum plus the queries' common offset (minilm)."""
    z = np.asarray(rng.standard_normal(cfg.d if rows is None else (rows, cfg.d)),
                   dtype=np.float32)
    if model is None or model.bases is not None:
        return cfg.query_noise * z / np.sqrt(cfg.d)
    return QUERY_NOISE_SCALE * cfg.query_noise * (z @ model.query_noise) + model.query_offset


def _queries(xb: np.ndarray, nq: int, cfg: SyntheticConfig, stream: int,
             model: _Model | None = None) -> tuple[np.ndarray, list[list[int]]]:
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
        q = xb[rel].mean(0) + _query_noise(cfg, rng, model)
        if cfg.metric is Metric.IP:
            q /= np.linalg.norm(q)
        xq[i] = q
        qrels.append(sorted(rel))
    return xq, qrels


def generate(cfg: SyntheticConfig | None = None) -> SyntheticDataset:
    """Generate the whole dataset in memory (for n up to a few million x d floats)."""
    cfg = cfg or SyntheticConfig()
    model = _Model(cfg)
    xb = np.concatenate([model.chunk(i) for i in range(-(-cfg.n // cfg.chunk))], axis=0)
    xq, qrels = _queries(xb, cfg.nq, cfg, 0, model)
    xt, qrels_t = _queries(xb, cfg.nq_train, cfg, 1, model)
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
    model = _Model(cfg)
    anchors = np.sort(rng.choice(cfg.n, size=min(cfg.nq, cfg.n), replace=False))
    xq = np.empty((len(anchors), cfg.d), dtype=np.float32)
    path = out / "corpus.fbin"
    with open(path, "wb") as f:
        np.array([cfg.n, cfg.d], dtype=np.uint32).tofile(f)
        i0 = 0
        for block in (model.chunk(i) for i in range(-(-cfg.n // cfg.chunk))):
            sel = (anchors >= i0) & (anchors < i0 + len(block))
            xq[sel] = block[anchors[sel] - i0]
            block.tofile(f)
            i0 += len(block)
        f.flush()
        os.fsync(f.fileno())
    xq += _query_noise(cfg, rng, model, len(xq))
    if cfg.metric is Metric.IP:
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    np.save(out / "queries_test.npy", xq)
    return {"corpus": path, "queries_test": out / "queries_test.npy"}
