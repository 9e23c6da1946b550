"""Distill-VQ (Xiao et al., SIGIR 2022): learn the IVF centroids, the PQ codebooks and a
query-side linear map so that the quantized scores rank documents the way the dense inner
products do. No labels: the dense scores are the teacher.

    weight    (inner product) S = (1 - a) Sigma_q / mean eigenvalue + a I from the training
              queries; documents are quantized as S^1/2 x and queries mapped by S^-1, so that
              <S^-1 q, S^1/2 x> = <q, x> and the squared quantization error of S^1/2 x equals
              the squared score error averaged over the queries: the MSE distillation loss
              over every document, minimised in closed form by the k-means below
    init      faiss k-means IVF-PQ (or OPQ + IVF-PQ: a PQ spec gets OPQ's rotation by default,
              the same bytes) on the (weighted) training sample; with weighting, a second run
              from the unweighted start, and the guard keeps the best of both and plain
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import faiss
import numpy as np
import torch

from ebr.errors import SpecError
from ebr.io.vecs import chunks
from ebr.metric import Metric, normalize_rows
from ebr.quant.encode import ScoreAware
from ebr.quant.trainers import Codebooks
from ebr.spec import IndexSpec
from ebr.train.distill_model import DistillVQ, locate, pseudo_queries, query_spectrum, recall_of
from ebr.train.distill_run import DistillRun, Pairs
from ebr.train.loop import LoopResult, run_epochs
from ebr.train.sampling import TrainingPairs, split_pairs
from ebr.train_config import DistillConfig
from ebr.types import JsonObject

__all__ = ["DistillConfig", "DistillVQTrainer", "served_recalls", "served_rerank_recall"]

logger = logging.getLogger(__name__)


def served_recalls(cb: Codebooks, xt: np.ndarray, q: np.ndarray, truth: np.ndarray,
                   nprobes: int | Sequence[int], candidates: int, list_points: int = 1,
                   seed: int = 0) -> tuple[np.ndarray, float]:
    """Codebooks as served: ``xt`` encoded as the writer encodes documents, ``q`` mapped as
    the searcher maps queries, searched at each of ``nprobes``, its lists ranked by
    ``list_points`` points per list fitted on ``xt`` as the writer fits them (1: by the
    centroids). Returns each query's share of its exact top 10 among ``xt``
    (``truth[:, :10]``) in the coarse top ``candidates``, i.e. its re-ranked recall@10 at that
    candidate count, and the coarse recall@K of the codes against ``truth`` (K its width, 100
    as the validation keeps it), both averaged over the nprobes."""
    from ebr.quant.additive import lift_rq
    from ebr.quant.faiss_index import ivf_params
    from ebr.quant.probe import build_probe

    nprobes = (nprobes,) if isinstance(nprobes, int) else tuple(nprobes)
    if not nprobes:
        raise SpecError("served_recalls needs at least one nprobe")
    if list_points > 1 and cb.list_points is None:
        cb = cb.with_list_points(xt, list_points, seed)
    index = cb.empty_index()
    for _, block in chunks(xt):
        cb.add(index, block)
    index = lift_rq(index)
    probe = None if cb.list_points is None else build_probe(index, "points", cb.list_points,
                                                            cb.points_per_list)
    xq = np.ascontiguousarray(q if cb.query_map is None else q @ cb.query_map.T,
                              dtype=np.float32)
    k = min(max(candidates, truth.shape[1]), len(xt))
    per_query = np.zeros(len(q))
    coarse = 0.0
    for nprobe in nprobes:
        if probe is None:
            _, ids = index.search(xq, k, params=ivf_params(index, nprobe, None, False))
        else:
            _, ids = probe.search(xq, k, nprobe, ivf_params(probe.ivf, nprobe, None, False))
        per_query += [len(set(a[a >= 0].tolist()) & set(b.tolist())) / len(b)
                      for a, b in zip(ids[:, :candidates], truth[:, :10], strict=True)]
        coarse += recall_of(torch.from_numpy(ids[:, :truth.shape[1]]), truth)
    return per_query / len(nprobes), coarse / len(nprobes)


def served_rerank_recall(cb: Codebooks, xt: np.ndarray, q: np.ndarray, truth: np.ndarray,
                         nprobe: int, candidates: int, list_points: int = 1) -> float:
    """The mean re-ranked recall@10 of :func:`served_recalls` at one nprobe."""
    return float(served_recalls(cb, xt, q, truth, nprobe, candidates, list_points)[0].mean())


def _best_within_noise(per_query: dict[str, np.ndarray], coarse: dict[str, float]
                       ) -> tuple[str, list[str]]:
    """(the kept candidate, those tied with the best on the re-ranked recall): the best mean
    per-query recall, and every candidate whose paired difference to it is at most one
    standard error, are tied; of them the highest coarse recall wins, ties in the given
    order."""
    names = list(per_query)
    best = max(names, key=lambda k: per_query[k].mean())  # the first of equals
    n = len(per_query[best])
    tied = []
    for name in names:
        diff = per_query[best] - per_query[name]
        se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if diff.mean() <= se:
            tied.append(name)
    return max(tied, key=lambda k: coarse[k]), tied


@dataclass
class _Run:
    """One training run's outcome (the trainer holds the kept run's as its own state)."""

    index: faiss.Index
    metric: Metric
    list_centroids: np.ndarray
    query_map: np.ndarray | None
    score_aware: ScoreAware | None
    history: list[dict[str, float]]
    info: dict[str, Any]
    model: DistillVQ


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
        # (held-out queries, their exact top val_k in the sample, nprobe) for the guard
        self._held_out: tuple[np.ndarray, np.ndarray, int] | None = None
        self.model: DistillVQ | None = None  # the kept run's student
        self._run: _Run | None = None
        # faiss' plain codebooks for the spec on the sample, when a run started from them
        # (the unweighted one): the guard's plain competitor, not trained a second time
        self._plain_start: faiss.Index | None = None

    # -- CodebookTrainer ------------------------------------------------------------------
    def fit(self, xt: np.ndarray, spec: IndexSpec, metric: Metric, seed: int,
            list_points: int = 1) -> Codebooks:
        """The contract: the distilled index, the k-means lists documents keep, the query map
        and score-aware encoding; the training's record as provenance.

        The start: a PQ spec without OPQ gets OPQ's rotation (``opq_start``). With query
        weighting, a second run from the unweighted start (``choose_weighting``); the runs'
        codebooks and faiss' plain ones compete end to end on the held-out queries (the
        guard), see :meth:`_guard`."""
        cfg = self.config
        start = spec
        self._plain_start = None
        if cfg.opq_start and not spec.is_additive and not spec.opq:
            spec = replace(spec, opq=True)
        two = (cfg.choose_weighting and cfg.query_weighting is not None
               and metric is Metric.IP and (self.pairs is None or cfg.weight_with_labels))
        if two and cfg.time_budget_s is not None:  # each run gets half
            cfg = replace(cfg, time_budget_s=cfg.time_budget_s / 2)
        runs = {"learned": self._fit_once(cfg, xt, spec, metric, seed)}
        if two and self._held_out is not None:
            runs["learned_unweighted"] = self._fit_once(replace(cfg, query_weighting=None),
                                                        xt, spec, metric, seed)
        if spec != start:
            for run in runs.values():
                run.info["start"] = f"OPQ rotation added to {start} (same bytes per vector)"
        self._restore(runs["learned"])
        if self._held_out is not None and (cfg.guard or len(runs) > 1):
            self.codebooks = self._guard(runs, xt, spec, metric, seed, plain=cfg.guard,
                                         list_points=list_points)
        else:
            self.codebooks = self._codebooks()
        self._plain_start = None  # kept, it is in the codebooks; else no longer needed
        return self.codebooks

    def _fit_once(self, cfg: DistillConfig, xt: np.ndarray, spec: IndexSpec, metric: Metric,
                  seed: int) -> _Run:
        """One training run (self's state is that run's after it)."""
        # same seed, same codebooks: torch's CPU scatter-adds (the gradients of the selected
        # centroids and codewords) otherwise sum in thread order
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            index, list_centroids, model = self._train(cfg, xt, spec, metric, seed)
        finally:
            torch.use_deterministic_algorithms(was)
        return _Run(index, metric, list_centroids, self.query_map, self.score_aware,
                    self.history, self.info, model)

    def _restore(self, run: _Run) -> None:
        self.query_map, self.score_aware, self.history = (run.query_map, run.score_aware,
                                                          run.history)
        self.info, self.model, self._run = run.info, run.model, run

    def _codebooks(self) -> Codebooks:
        run = self._run
        if run is None:
            raise RuntimeError("no training run yet")
        return Codebooks(run.index, run.metric, self.describe(), run.list_centroids,
                         self.query_map, self.score_aware)

    def _guard(self, runs: dict[str, _Run], xt: np.ndarray, spec: IndexSpec, metric: Metric,
               seed: int, plain: bool = True, list_points: int = 1) -> Codebooks:
        """The best of the learned runs and (``plain``) faiss' plain codebooks for the spec
        (k-means, or OPQ when the spec has it or the start added it), each served as the writer
        fills and the searcher searches it, on the held-out queries at the validation candidate
        count, each query's recall averaged over the validation nprobe and its halvings
        (``guard_nprobes``): the best re-ranked recall@10, what users see. Those within one
        standard error of it (of the per-query differences) are tied on that measure (each
        served with ``list_points`` per list, as the build serves them), and the
        tie goes to the best coarse recall@100 (the same recall at a smaller C), then to the
        plain ones (a learned change is kept only where it helps), then to the first run.
        Learning never ends below its start."""
        from ebr.quant.trainers import KMeansTrainer

        q, truth, nprobe = self._held_out  # type: ignore[misc]
        c = self.config.sample_candidates(len(xt))  # the serving C, scaled to the sample
        nprobes = self.config.guard_nprobe_ladder(nprobe)  # and the lower nprobes users pick
        per_query: dict[str, np.ndarray] = {}
        coarse: dict[str, float] = {}
        plain_cb = None
        if plain:
            trainer = KMeansTrainer(niter=self.niter)
            plain_cb = trainer.fit(xt, spec, metric, seed) if self._plain_start is None else \
                trainer.codebooks(self._plain_start, spec, metric)
            per_query["plain"], coarse["plain"] = served_recalls(plain_cb, xt, q, truth,
                                                                 nprobes, c, list_points, seed)
        for name, run in runs.items():
            self._restore(run)
            per_query[name], coarse[name] = served_recalls(self._codebooks(), xt, q, truth,
                                                           nprobes, c, list_points, seed)
        kept, tied = _best_within_noise(per_query, coarse)
        self._restore(runs[kept] if kept in runs else runs["learned"])
        record = {"held_out_rerank_recall@10": {k: float(v.mean()) for k, v in
                                                per_query.items()},
                  f"held_out_coarse_recall@{truth.shape[1]}": coarse, "tied": tied,
                  "nprobe": nprobe, "nprobes": list(nprobes), "candidates": c,
                  "list_points": list_points, "sample": len(xt), "kept": kept}
        # without plain codebooks competing it is the choice between the runs, not a guard
        self.info = {**self.info, "guard" if plain else "run_choice": record}
        logger.info("distill: held-out re-ranked recall@10 at nprobe %s, C %d: %s (tied within "
                    "one standard error: %s, coarse recall %s): %s kept",
                    "/".join(map(str, nprobes)), c,
                    ", ".join(f"{k} {v.mean():.4f}" for k, v in per_query.items()),
                    ", ".join(tied), ", ".join(f"{k} {coarse[k]:.4f}" for k in tied), kept)
        if kept != "plain":
            return self._codebooks()
        assert plain_cb is not None  # kept == "plain" only when plain competed
        self.query_map, self.score_aware = None, None
        return Codebooks(plain_cb.index, metric, {**self.describe(),
                                                  "method": plain_cb.provenance["method"],
                                                  "learned_not_kept": True})

    def _train(self, cfg: DistillConfig, xt: np.ndarray, spec: IndexSpec, metric: Metric,
               seed: int) -> tuple[faiss.Index, np.ndarray, DistillVQ]:
        """(the trained index, the k-means list centroids its documents keep, the student)."""
        t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        x_init = np.ascontiguousarray(xt, dtype=np.float32)
        labelled, val_pairs, xt = self._split_pairs(cfg, x_init, rng)
        xq, kind = self._training_queries(cfg, xt, rng, labelled)
        run = DistillRun(cfg, spec, metric, seed, self.niter, rng, t_start, x_init, xt, xq,
                         labelled, val_pairs)
        if run.plain_start is not None:
            self._plain_start = run.plain_start
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
        self._held_out = (run.val_q, run.val_truth, run.nprobe) \
            if run.val_truth is not None and run.val_pairs is None else None
        index = run.export()
        self.query_map = model.query_map.detach().numpy().copy()
        self.score_aware = None if run.eta == 1.0 else ScoreAware(run.eta, self.query_map,
                                                                 cfg.score_aware_passes)
        self.model = model
        self.info = self._record(cfg, run, kind, result, aware, spectrum)
        logger.info("distill: %s after %d epochs, %s@%d %.4f -> %.4f (%.1f s)", result.stopped,
                    len(self.history) - 1, run.watch, cfg.val_k, self.history[0][run.watch],
                    result.best, time.perf_counter() - t_start)
        return index, run.centroids0, model

    def _record(self, cfg: DistillConfig, run: DistillRun, kind: str, result: LoopResult,
                aware: dict[str, Any], spectrum: dict[str, float]) -> dict[str, Any]:
        """What the manifest records of the training (with :meth:`describe`)."""
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

    def describe(self) -> JsonObject:
        return {"method": self.method, "kmeans_niter": self.niter,
                "distill": {k: v for k, v in asdict(self.config).items()}, **self.info,
                "history": self.history}

    # -- helpers ----------------------------------------------------------------------------
    def _split_pairs(self, cfg: DistillConfig, xt: np.ndarray, rng: np.random.Generator
                     ) -> tuple[Pairs | None, Pairs | None, np.ndarray]:
        """Labelled pairs in training-sample coordinates: (train queries, positives as rows
        of the returned sample), (val queries, val positives), and the sample with the
        positives it lacked appended (training only: nothing of it is exported)."""
        if self.pairs is None:
            return None, None, xt
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

    def _training_queries(self, cfg: DistillConfig, xt: np.ndarray, rng: np.random.Generator,
                          labelled: Pairs | None = None) -> tuple[np.ndarray, str]:
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
