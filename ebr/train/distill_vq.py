"""Distill-VQ (Xiao et al., SIGIR 2022): learn the IVF centroids, the PQ codebooks and a
query-side linear map so that the quantized scores rank documents the way the dense inner
products do. No labels: the dense scores are the teacher.

    weight    (inner product) S = (1 - a) Sigma_q / mean eigenvalue + a I from the training
              queries; documents are quantized as S^1/2 x and queries mapped by S^-1, so that
              <S^-1 q, S^1/2 x> = <q, x> and the squared quantization error of S^1/2 x equals
              the squared score error averaged over the queries: the MSE distillation loss
              over every document, minimised in closed form by the k-means below
    init      faiss k-means IVF-PQ (or OPQ + IVF-PQ) on the (weighted) training sample
    teacher   t_qd = <q, v_d> (or -||q - v_d||^2), candidates = teacher top-K per query,
              the other queries' candidates in the batch, and random corpus documents
    student   s^ivf_qd = <W q, o(d)>,  s^pq_qd = <W q, o(d) + u^_d>   (L2: negated distances)
              o(d): the document's IVF centroid (assignment fixed, as in the paper);
              u^_d: its residual's PQ reconstruction, codewords re-selected every step by argmin
              and updated through the selected entries (straight-through); with an RQ spec
              the sum of M full-dimension codewords (codes: see "RQ codes" below)
    loss      w f(t, s^ivf) + f(t, s^pq), f from :mod:`ebr.train.losses` (MSE by default),
              w = 1 for inner product, 0 for L2 (``DistillConfig.ivf_weight``)
    labels    optional (BiDR stage 1, contrastive quantization): with (query, positive) pairs,
              + w * [InfoNCE(s^pq) + InfoNCE(s^ivf)] of each labelled query's positive against
              the batch's documents (its other positives masked); the distillation keeps the
              unlabelled documents' ranking, the contrastive term pulls the positives in.
              Early stopping then watches the held-out pairs' positive recall@val_k.
    export    centroids -> quantizer, codebooks -> pq.centroids (RQ: rq.codebooks), documents
              re-encoded in their fixed lists (RQ: by faiss' beam search); W is stored in the
              index directory and applied by the searcher to queries before the coarse search
              (the exact re-rank keeps the original query). L2 RQ: the student scores
              -|W q - x^|^2 with x^'s exact norm; the export codes its norm term in one byte
              whose range is refit on the trained codebooks (faiss_bridge.lift_rq).
    RQ codes  the documents' RQ codes in training are faiss' beam-search codes, redone after
              each epoch (not re-selected every step): what the export writes is what trained
    score-aware  (inner-product RQ / LSQ) codes refined to weigh the error along each
              document's served direction W x eta times (ScaNN's anisotropic loss,
              :mod:`ebr.quant.anisotropic`); eta is chosen among ``score_aware_eta`` on the
              held-out queries, then the codebooks are refit for it by weighted least squares
              (kept only if the held-out recall rises); the writer encodes every document so
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.quant.anisotropic import directions, fit_codebooks, refine_codes
from ebr.quant.faiss_bridge import (
    KMeansTrainer,
    ScoreAware,
    extract_ivf,
    fit_norm_range,
    from_faiss,
    prepend_transform,
    rotate,
    to_faiss,
    unpack_codes,
)
from ebr.spec import IndexSpec
from ebr.train.losses import LOSSES, info_nce
from ebr.train.sampling import TrainingPairs, split_pairs

__all__ = ["DistillConfig", "DistillVQ", "DistillVQTrainer", "teacher_topk", "pseudo_queries",
           "query_spectrum", "query_weighting"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Distill-VQ training settings (each default's trade-off in its comment).

    loss: listnet | kl_div | mse | margin_mse, or a '+'-sum. The paper found ListNet best on
        MS MARCO (MRR@10, a fine-tuned query encoder); with frozen embeddings and coarse
        recall@100 as the target, MSE wins here (see bench/results/distill.md), so it is the default.
    temperature: softmax temperature in score units; ``None`` calibrates it to the spread of
        the teacher's top-K scores (cosine scores differ by hundredths, raw IP by tens).
    top_k: teacher candidates per query (paper: 100-200); more = slower steps, flatter signal.
    n_random: random corpus documents added to every batch (global negatives the student must
        keep out of the top; without them nothing pushes down far documents).
    """

    loss: str = "mse"
    temperature: float | None = None
    top_k: int = 100
    n_random: int = 1024
    batch_size: int = 128
    max_epochs: int = 30
    # None: 1e-3 / 1e-3 for PQ (paper: 1e-4 over ~100x more steps, MS MARCO queries); 1e-4 /
    # 3e-4 for RQ. RQ's codes are redone once per epoch, so centroids that move 1e-3 per step
    # leave every residual's codes stale (SciFact RQ16: the held-out recall fell after the
    # first epoch; it rises for 20+ with 1e-4), and its later stages code ever smaller
    # remainders (RQ32: with codebooks at 1e-3 it fell, at 3e-4 it rose). With these defaults
    # SciFact RQ8 / RQ16 reach 0.740 / 0.823 coarse r@100 against plain RQ's 0.686 / 0.786
    # (bench/results/distill_rq_scifact.md).
    lr_centroids: float | None = None
    lr_codebooks: float | None = None
    lr_query_map: float = 1e-4
    # None: auto, trained without query weighting and fixed at S^-1 with it (trained from
    # there, it overfit SciFact's 729 training queries: coarse recall@100 0.681 vs 0.691 at
    # 16 bytes, 0.607 vs 0.617 at 8; bench/results/distill_small.md)
    train_query_map: bool | None = None
    # weight of the IVF loss f(t, s^ivf) (the PQ loss has weight 1); None: 1 for inner product,
    # 0 for L2. An L2 list score -|q - o(d)|^2 lacks each document's residual terms, so matching
    # it to the teacher drags the centroids after per-document offsets: on siftsmall (pseudo-
    # queries) the held-out recall fell after the first epoch with 1 and rises for 10-30 with 0
    # (Distill-VQ+OPQ coarse recall@100 0.7081 -> 0.7120 at 8 bytes, 0.7945 -> 0.8035 at 16;
    # bench/results/distill_small.md)
    ivf_weight: float | None = None
    n_pseudo: int | None = None  # pseudo-queries from the corpus; None: 10,000 if no queries given
    pseudo_noise: float = 0.5  # noise norm relative to the mean vector norm
    val_fraction: float = 0.1
    max_val_queries: int = 500
    val_nprobe: int | None = None  # nprobe of the validation recall; None: nlist // 4
    val_k: int = 100  # validation metric: coarse recall@val_k against exact top val_k
    patience: int = 3
    time_budget_s: float | None = None
    seed: int = 0
    contrastive_weight: float = 3.0  # labelled InfoNCE weight (only with pairs); SciFact: 1 -> 3
    # raised held-out positive recall@100 from 0.869 to 0.919 (bench/results/bidr.md)
    contrastive_temperature: float | None = None  # None: 4 x the distillation temperature
    val_split: str = "query"  # labelled pairs: query | document (sampling.split_pairs)
    # Query weighting (inner product only; None: off): quantize where squared error is the
    # squared score error over the training queries (module docstring), shrunk toward plain
    # k-means by this fraction. SciFact, IVF32 nprobe 8, coarse recall@100 vs exact, OPQ
    # 0.557 / 0.635 at 8 / 16 bytes -> 0.605 / 0.678 (0.5), 0.607 / 0.679 (0.75), 0.608 /
    # 0.676 (0.9) before any fine-tuning; with pseudo-queries 0.594 / 0.668 (0.75).
    query_weighting: float | None = 0.75
    # With labelled pairs (BiDR stage 1) the weighting is skipped unless this is set: from the
    # weighted start the contrastive term never raised the held-out positive recall on SciFact
    # (0.956 kept, against 0.981 reached from plain k-means; test Recall@100 at C = 100 0.878
    # against 0.916; bench/results/bidr.md)
    weight_with_labels: bool = False
    # Score-aware codes (inner-product RQ / LSQ only; ebr.quant.anisotropic): candidate weights
    # eta of the error along each document's direction. The one with the best held-out recall
    # on the initial codebooks is kept for training and export (1.0: faiss' codes as they are;
    # (): off). Synthetic 200k, IVF1024,RQ16, nprobe 32, faiss' RQ codebooks, coarse
    # recall@100: eta 1 0.7029, 2 0.7131, 3 0.7191, 4 0.7190, 10 0.7027, 30 0.6702 (scratch).
    score_aware_eta: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    score_aware_passes: int = 2  # sweeps over the codebooks per encoding
    # then, before fine-tuning, rounds of codebooks refit to the chosen eta by weighted least
    # squares and codes re-refined (ebr.quant.anisotropic.fit_codebooks). The same run, eta
    # 3: 0.7185 -> 0.7280 (2 rounds), 0.7290 (6 rounds) (scratch).
    score_aware_rounds: int = 2

    def __post_init__(self) -> None:
        if self.contrastive_weight < 0:
            raise SpecError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        for name in self.loss.split("+"):
            if name not in LOSSES:
                raise SpecError(f"loss must be one of {sorted(LOSSES)} or a '+'-sum of them, "
                                f"got {self.loss!r}")
        for name in ("lr_centroids", "lr_codebooks"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("top_k", "batch_size", "max_epochs", "patience", "val_k"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SpecError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.ivf_weight is not None and self.ivf_weight < 0:
            raise SpecError(f"ivf_weight must be >= 0, got {self.ivf_weight}")
        if any(not e > 0 for e in self.score_aware_eta):
            raise SpecError(f"score_aware_eta values must be > 0, got {self.score_aware_eta}")
        if self.score_aware_passes < 1:
            raise SpecError(f"score_aware_passes must be >= 1, got {self.score_aware_passes}")
        if self.score_aware_rounds < 0:
            raise SpecError(f"score_aware_rounds must be >= 0, got {self.score_aware_rounds}")
        if self.query_weighting is not None and not 0.0 < self.query_weighting <= 1.0:
            raise SpecError(f"query_weighting must be in (0, 1] or None, got "
                            f"{self.query_weighting}")


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
    [M, ksub, d]) and a query map W [d, d] (init I, or ``query_map``: S^-1 under query weighting).

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
        w0 = torch.eye(d) if query_map is None else torch.from_numpy(
            np.ascontiguousarray(query_map, dtype=np.float32))
        self.query_map = nn.Parameter(w0, requires_grad=train_query_map)
        self.register_buffer("rotation", None if rotation is None
                             else torch.from_numpy(rotation.astype(np.float32)))

    def map_queries(self, q: torch.Tensor) -> torch.Tensor:
        """q [B, d] -> W q, rotated into the index's working space."""
        q = q @ self.query_map.T
        return q if self.rotation is None else q @ self.rotation.T

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


def _recall(found: torch.Tensor, truth: np.ndarray | list[np.ndarray]) -> float:
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


class DistillVQTrainer:
    """A :class:`~ebr.quant.faiss_bridge.CodebookTrainer` that distills after k-means init.

    queries: training query vectors (labels are never used); ``None`` -> pseudo-queries.
    pairs: labelled (query, positive rows) pairs and ``corpus`` (the vectors the rows index,
        normalised like the index) -> BiDR stage 1: the contrastive term is added and the
        pairs' queries also serve as distillation queries.
    The trained query map is exposed as ``query_map`` ([d, d]) for the writer; documents are
    added with :meth:`assign` so the index keeps the lists the training assumed.
    """

    method = "distill"

    def __init__(self, config: DistillConfig | None = None, queries: np.ndarray | None = None,
                 niter: int = 20, progress: bool = False, pairs: TrainingPairs | None = None,
                 corpus: np.ndarray | None = None) -> None:
        self.config = config or DistillConfig()
        self.queries = None if queries is None else np.asarray(queries, dtype=np.float32)
        if pairs is not None and corpus is None:
            raise SpecError("pairs need the corpus their positive rows index")
        self.pairs = pairs
        self.corpus = corpus
        self.niter = niter
        self.progress = progress
        self.query_map: np.ndarray | None = None
        self.score_aware: ScoreAware | None = None  # the writer encodes documents with it
        self.history: list[dict[str, float]] = []
        self.info: dict[str, Any] = {}
        self._assigner: faiss.Index | None = None

    # -- CodebookTrainer ------------------------------------------------------------------
    def train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index:
        # same seed, same codebooks: torch's CPU scatter-adds (the gradients of the selected
        # centroids and codewords) otherwise sum in thread order
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return self._train(xt, spec, metric, seed)
        finally:
            torch.use_deterministic_algorithms(was)

    def _train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index:
        cfg = self.config
        t_start = time.perf_counter()

        def budget_spent() -> bool:
            """Whether ``time_budget_s`` (counted from here: the start is in it) is used up."""
            return bool(cfg.time_budget_s) and time.perf_counter() - t_start > cfg.time_budget_s

        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        x_init = np.ascontiguousarray(xt, dtype=np.float32)
        labelled, val_pairs, xt = self._split_pairs(x_init, rng)
        n = len(xt)
        xq, kind = self._training_queries(xt, rng, labelled)
        if labelled is not None:  # labels: validate on held-out pairs, train on the rest;
            train_q = xq  # unpermuted: the labelled queries are its first rows
            val_q = val_pairs[0] if val_pairs is not None else xq[:0]
            nval = len(val_q)
        else:
            nval = min(int(len(xq) * cfg.val_fraction), cfg.max_val_queries) if len(xq) >= 20 \
                else 0
            perm = rng.permutation(len(xq))
            val_q, train_q = xq[perm[:nval]], xq[perm[nval:]]
        half = w0 = None
        if cfg.query_weighting is not None and metric is Metric.IP and (
                labelled is None or cfg.weight_with_labels):
            half, w0 = query_weighting(train_q, cfg.query_weighting)
            x_init = x_init @ half.T
        index = KMeansTrainer(niter=self.niter).train(x_init, spec, metric, seed)
        if half is not None:
            index = prepend_transform(index, half)
        t_init = time.perf_counter() - t_start
        centroids, codebooks, rotation = from_faiss(index)
        self._assigner = faiss.IndexFlat(centroids.shape[1], metric.faiss_metric)
        self._assigner.add(centroids)  # the k-means lists stay the documents' lists
        assign_np = self._assign_rotated(rotate(index, xt))

        t0 = time.perf_counter()
        top = teacher_topk(train_q, xt, cfg.top_k, metric)  # labelled queries are its first rows
        val_truth = teacher_topk(val_q, xt, min(cfg.val_k, n), metric) if nval else None
        t_teacher = time.perf_counter() - t0

        learn_map = cfg.train_query_map if cfg.train_query_map is not None else half is None
        model = DistillVQ(centroids, codebooks, rotation, metric, learn_map, w0,
                          residual=spec.is_additive)
        xb = torch.from_numpy(np.array(xt))  # writable copies: torch refuses read-only memory
        xr = torch.from_numpy(np.array(rotate(index, xt)))
        assign = torch.from_numpy(assign_np)
        tau = cfg.temperature or self._calibrate_tau(train_q, xt, top, metric)
        tau_c = cfg.contrastive_temperature or 4.0 * tau
        parts = [LOSSES[name] for name in cfg.loss.split("+")]
        ivf_w = cfg.ivf_weight if cfg.ivf_weight is not None else (
            1.0 if metric is Metric.IP else 0.0)

        def loss_fn(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
            return sum((f(t, s, tau) for f in parts), torch.zeros(()))
        lr_c = cfg.lr_centroids if cfg.lr_centroids is not None else (
            1e-4 if spec.is_additive else 1e-3)
        lr_cb = cfg.lr_codebooks if cfg.lr_codebooks is not None else (
            3e-4 if spec.is_additive else 1e-3)
        groups = [{"params": [model.centroids], "lr": lr_c},
                  {"params": [model.codebooks], "lr": lr_cb}]
        if learn_map:
            groups.append({"params": [model.query_map], "lr": cfg.lr_query_map})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        nprobe = min(cfg.val_nprobe or max(1, spec.nlist // 4), spec.nlist)
        # RQ: the documents' codes come from faiss' beam search, as the export writes them,
        # redone after every epoch with the current codebooks and held in between (greedy
        # re-selection every step trained codebooks that lost to the init once beam-encoded:
        # SciFact RQ16 0.760 vs 0.786). PQ re-selects every step: its argmin is exact.
        native = extract_ivf(index) if spec.is_additive else None

        eta = 1.0  # score-aware weight of the codes (1: faiss' codes)

        def residuals() -> np.ndarray:
            """What the codes reconstruct: the documents less their current list centroids."""
            return xr.numpy() - model.centroids.detach().numpy()[assign_np]

        def served_directions() -> np.ndarray:
            """Each document's score-aware direction: its own served query W x, unit norm."""
            with torch.no_grad():
                return directions(model.map_queries(xb).numpy())

        def refresh_codes(base: torch.Tensor | None = None) -> torch.Tensor | None:
            """faiss' codes with the current codebooks (or ``base``), refined for ``eta``."""
            if native is None:
                return None
            cb = model.codebooks.detach().numpy()
            faiss.copy_array_to_vector(cb.ravel(), native.aq.codebooks)
            r = residuals()
            c = unpack_codes(native.aq, native.aq.compute_codes(np.ascontiguousarray(r))) \
                if base is None else base.numpy()
            if eta != 1.0:
                c = refine_codes(r, served_directions(), cb, c, eta, cfg.score_aware_passes)
            return torch.from_numpy(c)

        codes = refresh_codes()

        def validate() -> dict[str, float]:
            if val_truth is None:
                return {"val_recall": float("nan")}
            found = model.coarse_search(torch.from_numpy(val_q), xr, assign, nprobe,
                                        val_truth.shape[1], codes=codes)
            out = {"val_recall": _recall(found, val_truth)}
            if val_pairs is not None:
                out["val_positive_recall"] = _recall(found, val_pairs[1])
            return out

        watch = "val_positive_recall" if val_pairs is not None else "val_recall"
        aware: dict[str, Any] = {"eta": 1.0, "off": None}
        t0 = time.perf_counter()
        if native is None or metric is not Metric.IP:
            aware["off"] = "inner-product RQ / LSQ only"
        elif not cfg.score_aware_eta:
            aware["off"] = "no candidates"
        elif val_truth is None:
            aware["off"] = "no held-out queries to choose eta"
        else:  # choose eta on the held-out queries, with the initial codebooks
            base, tried = codes, {}
            for eta in cfg.score_aware_eta:
                codes = refresh_codes(base)
                tried[f"{eta:g}"] = validate()[watch]
            eta = max(cfg.score_aware_eta, key=lambda e: (tried[f"{e:g}"], -abs(e - 1.0)))
            codes = refresh_codes(base)
            aware.update(eta=eta, candidates=tried, passes=cfg.score_aware_passes)
            logger.info("distill: score-aware codes, eta %g (held-out %s %s)", eta, watch,
                        ", ".join(f"{k}: {v:.4f}" for k, v in tried.items()))
            if eta != 1.0 and cfg.score_aware_rounds:  # refit the codebooks for eta, the
                r, u = residuals(), served_directions()  # codes refined in between
                c, cb0 = codes.numpy(), model.codebooks.detach().clone()
                for _ in range(cfg.score_aware_rounds):
                    cb = fit_codebooks(r, u, model.codebooks.detach().numpy(), c, eta)
                    c = refine_codes(r, u, cb, c, eta, cfg.score_aware_passes)
                    with torch.no_grad():
                        model.codebooks.copy_(torch.from_numpy(cb))
                kept, codes = codes, refresh_codes()  # as the export encodes: faiss', refined
                after = validate()[watch]
                refit_kept = after >= tried[f"{eta:g}"]
                if not refit_kept:  # keep the codebooks that validated better
                    with torch.no_grad():
                        model.codebooks.copy_(cb0)
                    codes = kept
                aware.update(rounds=cfg.score_aware_rounds, after_rounds=after,
                             refit_kept=bool(refit_kept))
                logger.info("distill: codebooks refit for eta %g (%d rounds): held-out %s "
                            "%.4f (%s)", eta, cfg.score_aware_rounds, watch, after,
                            "kept" if aware["refit_kept"] else "dropped")
        t_aware = time.perf_counter() - t0
        v0 = validate()
        best = v0[watch]
        self.history = [{"epoch": 0, "loss": float("nan"), **v0}]
        best_state = copy.deepcopy(model.state_dict())
        spectrum = query_spectrum(train_q)
        logger.info("distill: %d %s queries (%d val), K=%d, tau=%.4g, start %s@%d %.4f; query "
                    "spectrum: top-10 share %.2f, max/median eigenvalue %.1f", len(train_q),
                    kind, nval, cfg.top_k, tau, watch, cfg.val_k, best,
                    spectrum["top10_share"], spectrum["max_over_median"])
        n_lab = len(labelled[0]) if labelled is not None else 0
        lab_order = rng.permutation(n_lab) if n_lab else None
        lab_pos = 0
        bad, stopped = 0, "max_epochs"
        bar = tqdm(range(1, cfg.max_epochs + 1), desc="distill", disable=not self.progress)
        for epoch in bar:
            if budget_spent():
                stopped = "time_budget"  # spent before this epoch (the start, the score-aware
                break  # step): no batch, so no code refresh and validation for nothing
            order = rng.permutation(len(train_q))
            losses = []
            for b0 in range(0, len(order), cfg.batch_size):
                bq = order[b0:b0 + cfg.batch_size]
                doc_parts = [top[bq].ravel(), rng.integers(0, n, cfg.n_random)]
                lq = None
                if lab_order is not None and cfg.contrastive_weight > 0:
                    if lab_pos + cfg.batch_size > n_lab:
                        lab_order, lab_pos = rng.permutation(n_lab), 0
                    lq = lab_order[lab_pos:lab_pos + cfg.batch_size]
                    lab_pos += cfg.batch_size
                    picked = np.array([p[rng.integers(len(p))] for p in
                                       (labelled[1][i] for i in lq)], dtype=np.int64)
                    doc_parts += [picked, top[lq].ravel()]  # teacher top-K of labelled lq
                docs = np.unique(np.concatenate(doc_parts))
                d_idx = torch.from_numpy(docs)
                q = torch.from_numpy(train_q[bq])
                with torch.no_grad():
                    teacher = model.scores(q, xb[d_idx]) if metric is Metric.IP else \
                        -torch.cdist(q, xb[d_idx]).pow(2)
                s_ivf, s_pq = model.student(q, xr[d_idx], assign[d_idx],
                                            None if codes is None else codes[d_idx])
                loss = loss_fn(teacher, s_pq, tau) + ivf_w * loss_fn(teacher, s_ivf, tau)
                if lq is not None:
                    target = torch.from_numpy(np.searchsorted(docs, picked))
                    valid = np.ones((len(lq), len(docs)), dtype=bool)
                    for i, j in enumerate(lq):
                        valid[i, np.isin(docs, labelled[1][j])] = False
                    valid[np.arange(len(lq)), target.numpy()] = True
                    v = torch.from_numpy(valid)
                    c_ivf, c_pq = model.student(torch.from_numpy(labelled[0][lq]), xr[d_idx],
                                                assign[d_idx],
                                                None if codes is None else codes[d_idx])
                    loss = loss + cfg.contrastive_weight * (
                        info_nce(c_pq, target, tau_c, v)
                        + ivf_w * info_nce(c_ivf, target, tau_c, v))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if budget_spent():
                    break
            codes = refresh_codes()
            vals = validate()
            val = vals[watch]
            self.history.append({"epoch": epoch, "loss": float(np.mean(losses)), **vals})
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", val=f"{val:.4f}")
            if val > best or val_truth is None:
                best, bad = val, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = "early_stop"
                    break
            if budget_spent():
                stopped = "time_budget"
                break
        bar.close()
        model.load_state_dict(best_state)
        to_faiss(index, model.centroids.detach().numpy(), model.codebooks.detach().numpy())
        if spec.is_additive and metric is Metric.L2:  # the norm byte's range, these codebooks
            fit_norm_range(index, xt, assign_np)
        self.query_map = model.query_map.detach().numpy().copy()
        self.score_aware = None if eta == 1.0 else ScoreAware(eta, self.query_map,
                                                             cfg.score_aware_passes)
        self.model = model
        self.info = {
            "training_queries": kind, "n_train_queries": int(len(train_q)),
            "n_val_queries": int(nval), "temperature": float(tau), "stopped": stopped,
            "validation_metric": watch, "best_val": best, "val_nprobe": nprobe,
            "query_weighting": None if half is None else {
                "shrinkage": cfg.query_weighting, "n_queries": int(len(train_q))},
            "query_spectrum": spectrum,
            "query_map": "trained" if learn_map else ("fixed (S^-1)" if half is not None
                                                     else "fixed (identity)"),
            "score_aware": aware,
            "val_k": int(cfg.val_k), "ivf_weight": ivf_w,
            "lr": {"centroids": lr_c, "codebooks": lr_cb},
            "seconds": {"kmeans_init": round(t_init, 2), "teacher": round(t_teacher, 2),
                        "score_aware": round(t_aware, 2),
                        "total": round(time.perf_counter() - t_start, 2)},
        }
        if labelled is not None:
            self.info["labels"] = {"n_train_pairs": int(sum(len(p) for p in labelled[1])),
                                   "n_train_queries": n_lab, "n_val_queries": int(nval),
                                   "contrastive_temperature": float(tau_c),
                                   "contrastive_weight": cfg.contrastive_weight}
        logger.info("distill: %s after %d epochs, %s@%d %.4f -> %.4f (%.1f s)", stopped,
                    len(self.history) - 1, watch, cfg.val_k, self.history[0][watch], best,
                    time.perf_counter() - t_start)
        return index

    def assign(self, index: faiss.Index, x: np.ndarray) -> np.ndarray:
        """IVF list of each vector (input space): the k-means assignment training used."""
        return self._assign_rotated(rotate(index, x))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "kmeans_niter": self.niter,
                "distill": {k: v for k, v in asdict(self.config).items()}, **self.info,
                "history": self.history}

    # -- helpers ----------------------------------------------------------------------------
    def _assign_rotated(self, xr: np.ndarray) -> np.ndarray:
        if self._assigner is None:
            raise SpecError("assign() called before train()")
        _, a = self._assigner.search(np.ascontiguousarray(xr, dtype=np.float32), 1)
        return a.ravel().astype(np.int64)

    def _split_pairs(self, xt: np.ndarray, rng: np.random.Generator) -> tuple[
            tuple[np.ndarray, list[np.ndarray]] | None,
            tuple[np.ndarray, list[np.ndarray]] | None, np.ndarray]:
        """Labelled pairs in training-sample coordinates: (train queries, positives as rows
        of the returned sample), (val queries, val positives), and the sample with the
        positives it lacked appended (training only: nothing of it is exported)."""
        if self.pairs is None:
            return None, None, xt
        cfg = self.config
        pairs = self.pairs
        if pairs.queries.shape[1] != xt.shape[1]:
            raise SpecError(f"training pairs are {pairs.queries.shape[1]}-d, vectors "
                            f"{xt.shape[1]}-d")
        rows = np.unique(np.concatenate(pairs.positives))
        pv = np.asarray(self.corpus[rows], dtype=np.float32)  # type: ignore[index]
        queries = pairs.queries
        if np.allclose(np.linalg.norm(xt[:1000], axis=1), 1.0, atol=1e-3):  # cosine index
            pv = pv / np.maximum(np.linalg.norm(pv, axis=1, keepdims=True), 1e-12)
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        where, missing = locate(pv, xt)
        where[missing] = len(xt) + np.arange(len(missing))
        xt = np.concatenate([xt, pv[missing]]) if len(missing) else xt
        to_local = dict(zip(rows.tolist(), where.tolist(), strict=True))
        pos = [np.array([to_local[r] for r in p.tolist()], dtype=np.int64)
               for p in pairs.positives]
        tr, va = split_pairs(pairs.positives, cfg.val_fraction, cfg.val_split, rng)
        va = va[:cfg.max_val_queries]
        nval = len(va)
        val = (queries[va], [pos[i] for i in va]) if nval else None
        return (queries[tr], [pos[i] for i in tr]), val, xt

    def _training_queries(self, xt: np.ndarray, rng: np.random.Generator,
                          labelled: tuple[np.ndarray, list[np.ndarray]] | None = None
                          ) -> tuple[np.ndarray, str]:
        cfg = self.config
        parts, kinds = [], []
        if labelled is not None:
            parts.append(labelled[0])
            kinds.append(f"labelled ({len(labelled[0])}, labels in the contrastive term only)")
        if self.queries is not None:
            if self.queries.ndim != 2 or self.queries.shape[1] != xt.shape[1]:
                raise SpecError(f"training queries have shape {self.queries.shape}, "
                                f"expected (n, {xt.shape[1]})")
            parts.append(self.queries)
            kinds.append(f"real ({len(self.queries)})")
        n_pseudo = cfg.n_pseudo if cfg.n_pseudo is not None else (
            10_000 if self.queries is None and labelled is None else 0)
        if n_pseudo:
            parts.append(pseudo_queries(xt, n_pseudo, cfg.pseudo_noise,
                                        int(rng.integers(2**31))))
            kinds.append(f"pseudo ({n_pseudo}, noise {cfg.pseudo_noise})")
        if not parts:
            raise SpecError("no training queries: give queries or n_pseudo > 0")
        return np.concatenate(parts).astype(np.float32), " + ".join(kinds)

    @staticmethod
    def _calibrate_tau(xq: np.ndarray, xb: np.ndarray, top: np.ndarray, metric: Metric) -> float:
        """Temperature = mean spread (std) of each query's teacher top-K scores / 4, so the
        teacher's softmax concentrates on its top few candidates whatever the score scale."""
        sub = slice(0, min(len(xq), 256))
        q, cand = xq[sub], xb[top[sub]]  # [b, d], [b, K, d]
        s = np.einsum("bd,bkd->bk", q, cand)
        if metric is Metric.L2:
            s = -((cand - q[:, None]) ** 2).sum(-1)
        return float(max(s.std(axis=1).mean() / 4.0, 1e-6))
