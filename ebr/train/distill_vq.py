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
              whose range is refit on the trained codebooks (ebr.quant.additive.lift_rq).
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

from ebr.errors import SpecError
from ebr.metric import Metric, normalize_rows
from ebr.quant.encode import ScoreAware
from ebr.quant.trainers import Codebooks
from ebr.spec import IndexSpec
from ebr.train.distill_model import locate, pseudo_queries, query_spectrum
from ebr.train.distill_run import DistillRun, Pairs
from ebr.train.loop import LoopResult, run_epochs
from ebr.train.losses import LOSSES
from ebr.train.sampling import TrainingPairs, split_pairs

__all__ = ["DistillConfig", "DistillVQTrainer"]

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


class DistillVQTrainer:
    """A :class:`~ebr.quant.trainers.CodebookTrainer` that distills after k-means init.

    queries: training query vectors (labels are never used); ``None`` -> pseudo-queries.
    pairs: labelled (query, positive rows) pairs and ``corpus`` (the vectors the rows index,
        normalised like the index) -> BiDR stage 1: the contrastive term is added and the
        pairs' queries also serve as distillation queries.
    :meth:`fit` returns :class:`~ebr.quant.trainers.Codebooks` with the trained query map
    ([d, d]) and the k-means lists documents keep, as training assumed them.
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
        self.codebooks: Codebooks | None = None  # what the last fit returned
        self._assigner: faiss.Index | None = None

    # -- CodebookTrainer ------------------------------------------------------------------
    def fit(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> Codebooks:
        """The contract: the distilled index, the k-means lists documents keep, the query map
        and score-aware encoding; the training's record as provenance."""
        # same seed, same codebooks: torch's CPU scatter-adds (the gradients of the selected
        # centroids and codewords) otherwise sum in thread order
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            index = self._train(xt, spec, metric, seed)
        finally:
            torch.use_deterministic_algorithms(was)
        if self._assigner is None:
            raise SpecError("internal: training ended without its list assignment")
        self.codebooks = Codebooks(index, metric, self.describe(),
                                   self._assigner.reconstruct_n(0, self._assigner.ntotal),
                                   self.query_map, self.score_aware)
        return self.codebooks

    def _train(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int) -> faiss.Index:
        cfg = self.config
        t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        x_init = np.ascontiguousarray(xt, dtype=np.float32)
        labelled, val_pairs, xt = self._split_pairs(x_init, rng)
        xq, kind = self._training_queries(xt, rng, labelled)
        run = DistillRun(cfg, spec, metric, seed, self.niter, rng, t_start, x_init, xt, xq,
                         labelled, val_pairs)
        self._assigner = run.assigner
        aware = run.choose_score_aware()
        v0 = run.validate()
        spectrum = query_spectrum(run.train_q)
        logger.info("distill: %d %s queries (%d val), K=%d, tau=%.4g, start %s@%d %.4f; query "
                    "spectrum: top-10 share %.2f, max/median eigenvalue %.1f", len(run.train_q),
                    kind, run.nval, cfg.top_k, run.tau, run.watch, cfg.val_k, v0[run.watch],
                    spectrum["top10_share"], spectrum["max_over_median"])
        run.start_labels()
        model = run.model
        result = run_epochs(
            name="distill", max_epochs=cfg.max_epochs, patience=cfg.patience, start=v0,
            watch=run.watch, train_epoch=run.epoch, validate=run.validate,
            snapshot=lambda: copy.deepcopy(model.state_dict()), restore=model.load_state_dict,
            budget_spent=run.budget_spent, progress=self.progress)
        self.history = result.history
        index = run.export()
        self.query_map = model.query_map.detach().numpy().copy()
        self.score_aware = None if run.eta == 1.0 else ScoreAware(run.eta, self.query_map,
                                                                 cfg.score_aware_passes)
        self.model = model
        self.info = self._record(run, kind, result, aware, spectrum)
        logger.info("distill: %s after %d epochs, %s@%d %.4f -> %.4f (%.1f s)", result.stopped,
                    len(self.history) - 1, run.watch, cfg.val_k, self.history[0][run.watch],
                    result.best, time.perf_counter() - t_start)
        return index

    def _record(self, run: DistillRun, kind: str, result: LoopResult, aware: dict[str, Any],
                spectrum: dict[str, float]) -> dict[str, Any]:
        """What the manifest records of the training (with :meth:`describe`)."""
        cfg = self.config
        info: dict[str, Any] = {
            "training_queries": kind, "n_train_queries": int(len(run.train_q)),
            "n_val_queries": int(run.nval), "temperature": float(run.tau),
            "stopped": result.stopped, "validation_metric": run.watch, "best_val": result.best,
            "val_nprobe": run.nprobe,
            "query_weighting": None if run.half is None else {
                "shrinkage": cfg.query_weighting, "n_queries": int(len(run.train_q))},
            "query_spectrum": spectrum,
            "query_map": "trained" if run.learn_map else (
                "fixed (S^-1)" if run.half is not None else "fixed (identity)"),
            "score_aware": aware,
            "val_k": int(cfg.val_k), "ivf_weight": run.ivf_w,
            "lr": {"centroids": run.lr_c, "codebooks": run.lr_cb},
            "seconds": {"kmeans_init": round(run.t_init, 2),
                        "teacher": round(run.t_teacher, 2),
                        "score_aware": round(run.t_aware, 2),
                        "total": round(time.perf_counter() - run.t_start, 2)},
        }
        if run.labelled is not None:
            info["labels"] = {"n_train_pairs": int(sum(len(p) for p in run.labelled[1])),
                              "n_train_queries": run.n_lab, "n_val_queries": int(run.nval),
                              "contrastive_temperature": float(run.tau_c),
                              "contrastive_weight": cfg.contrastive_weight}
        return info

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "kmeans_niter": self.niter,
                "distill": {k: v for k, v in asdict(self.config).items()}, **self.info,
                "history": self.history}

    # -- helpers ----------------------------------------------------------------------------
    def _split_pairs(self, xt: np.ndarray, rng: np.random.Generator) -> tuple[
            Pairs | None, Pairs | None, np.ndarray]:
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
            pv, queries = normalize_rows(pv), normalize_rows(queries)
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
                          labelled: Pairs | None = None
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
