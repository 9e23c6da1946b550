"""One Distill-VQ fit as steps over shared state: the k-means start, the score-aware choice,
one epoch of batches, validation and the export (:class:`DistillRun`). The trainer
(:mod:`ebr.train.distill_vq`) prepares the queries and pairs, runs these steps in the shared
loop (:mod:`ebr.train.loop`) and records the outcome; the method is in its module docstring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch

from ebr.metric import Metric
from ebr.quant.additive import fit_norm_range, unpack_codes
from ebr.quant.anisotropic import directions, fit_codebooks, refine_codes
from ebr.quant.faiss_index import extract_ivf, from_faiss, prepend_transform, rotate, to_faiss
from ebr.quant.trainers import KMeansTrainer
from ebr.spec import IndexSpec, build_nprobe
from ebr.train.distill_model import (
    DistillVQ,
    query_weighting,
    recall_of,
    teacher_topk,
)
from ebr.train.loop import deadline
from ebr.train.losses import LOSSES, info_nce
from ebr.types import JsonObject

if TYPE_CHECKING:
    from ebr.train.distill_vq import DistillConfig

__all__ = ["DistillRun", "Pairs"]

logger = logging.getLogger(__name__)
Pairs = tuple[np.ndarray, list[np.ndarray]]  # (queries, positive rows of the sample per query)


class DistillRun:
    """The state of one fit (module docstring). Built by the k-means start; then
    :meth:`choose_score_aware`, :meth:`epoch` / :meth:`validate` in the loop, :meth:`export`."""

    def __init__(self, cfg: DistillConfig, spec: IndexSpec, metric: Metric, seed: int,
                 niter: int, rng: np.random.Generator, t_start: float, x_init: np.ndarray,
                 xt: np.ndarray, xq: np.ndarray, labelled: Pairs | None,
                 val_pairs: Pairs | None) -> None:
        self.cfg, self.spec, self.metric, self.rng, self.t_start = cfg, spec, metric, rng, t_start
        self.budget_spent = deadline(cfg.time_budget_s, t_start)  # counted from the fit's start
        self.xt, self.n, self.labelled, self.val_pairs = xt, len(xt), labelled, val_pairs
        self._split_queries(xq)
        self._kmeans_start(x_init, seed, niter)
        t0 = time.perf_counter()
        # labelled queries are the first rows of train_q, so of its teacher top-K
        self.top = teacher_topk(self.train_q, xt, cfg.top_k, metric)
        self.val_truth = teacher_topk(self.val_q, xt, min(cfg.val_k, self.n), metric) \
            if self.nval else None
        self.t_teacher = time.perf_counter() - t0
        self._model_and_optimizer()
        self.watch = "val_positive_recall" if val_pairs is not None else (
            "val_rerank_recall" if cfg.select == "rerank" else "val_recall")
        self.eta = 1.0  # score-aware weight of the codes (1: faiss' codes)
        self.codes = self.refresh_codes()
        self.t_aware = 0.0
        self.n_lab = len(labelled[0]) if labelled is not None else 0
        self.lab_order: np.ndarray | None = None
        self.lab_pos = 0

    # -- the start ------------------------------------------------------------------------
    def _split_queries(self, xq: np.ndarray) -> None:
        cfg = self.cfg
        if self.labelled is not None:  # labels: validate on held-out pairs, train on the rest
            self.train_q = xq  # unpermuted: the labelled queries are its first rows
            self.val_q = self.val_pairs[0] if self.val_pairs is not None else xq[:0]
            self.nval = len(self.val_q)
        else:
            self.nval = min(int(len(xq) * cfg.val_fraction), cfg.max_val_queries) \
                if len(xq) >= 20 else 0
            perm = self.rng.permutation(len(xq))
            self.val_q, self.train_q = xq[perm[:self.nval]], xq[perm[self.nval:]]

    def _kmeans_start(self, x_init: np.ndarray, seed: int, niter: int) -> None:
        """faiss k-means (on the query-weighted sample, inner product); the lists it gives
        the documents stay theirs."""
        cfg, metric = self.cfg, self.metric
        self.half = w0 = None
        if cfg.query_weighting is not None and metric is Metric.IP and (
                self.labelled is None or cfg.weight_with_labels):
            self.half, w0 = query_weighting(self.train_q, cfg.query_weighting)
            x_init = x_init @ self.half.T
        index = KMeansTrainer(niter=niter).train_index(x_init, self.spec, metric, seed)
        # unweighted, this start is faiss' plain training of the spec on the sample: the guard's
        # plain competitor (a copy: export writes the learned codebooks into ``index``)
        self.plain_start = faiss.clone_index(index) if self.half is None else None
        if self.half is not None:
            index = prepend_transform(index, self.half)
        self.index, self.w0 = index, w0
        self.t_init = time.perf_counter() - self.t_start
        self.centroids0, self.codebooks0, self.rotation = from_faiss(index)
        assigner = faiss.IndexFlat(self.centroids0.shape[1], metric.faiss_metric)
        assigner.add(self.centroids0)  # the k-means lists stay the documents' lists
        _, a = assigner.search(np.ascontiguousarray(rotate(index, self.xt)), 1)
        self.assign_np = a.ravel().astype(np.int64)

    def _model_and_optimizer(self) -> None:
        cfg, spec, metric = self.cfg, self.spec, self.metric
        self.learn_map = cfg.train_query_map if cfg.train_query_map is not None \
            else self.half is None
        self.model = DistillVQ(self.centroids0, self.codebooks0, self.rotation, metric,
                               self.learn_map, self.w0, residual=spec.is_additive)
        self.xb = torch.from_numpy(np.array(self.xt))  # writable: torch refuses read-only
        self.xr = torch.from_numpy(np.array(rotate(self.index, self.xt)))
        self.assign = torch.from_numpy(self.assign_np)
        self.tau = cfg.temperature or _calibrate_tau(self.train_q, self.xt, self.top, metric)
        self.tau_c = cfg.contrastive_temperature or 4.0 * self.tau
        self.parts: list[Callable[..., torch.Tensor]] = [LOSSES[name]
                                                         for name in cfg.loss.split("+")]
        self.ivf_w = cfg.ivf_weight if cfg.ivf_weight is not None else (
            1.0 if metric is Metric.IP else 0.0)
        self.lr_c = cfg.lr_centroids if cfg.lr_centroids is not None else (
            1e-4 if spec.is_additive else 1e-3)
        self.lr_cb = cfg.lr_codebooks if cfg.lr_codebooks is not None else (
            3e-4 if spec.is_additive else 1e-3)
        groups = [{"params": [self.model.centroids], "lr": self.lr_c},
                  {"params": [self.model.codebooks], "lr": self.lr_cb}]
        if self.learn_map:
            groups.append({"params": [self.model.query_map], "lr": cfg.lr_query_map})
        self.opt = torch.optim.AdamW(groups, weight_decay=0.0)
        self.nprobe = build_nprobe(cfg.val_nprobe, spec.nlist)
        # RQ: the documents' codes come from faiss' beam search, as the export writes them,
        # redone after every epoch with the current codebooks and held in between (greedy
        # re-selection every step trained codebooks that lost to the init once beam-encoded:
        # SciFact RQ16 0.760 vs 0.786). PQ re-selects every step: its argmin is exact.
        self.native = extract_ivf(self.index) if spec.is_additive else None

    # -- codes and validation ---------------------------------------------------------------
    def residuals(self) -> np.ndarray:
        """What the codes reconstruct: the documents less their current list centroids."""
        return self.xr.numpy() - self.model.centroids.detach().numpy()[self.assign_np]

    def served_directions(self) -> np.ndarray:
        """Each document's score-aware direction: its own served query W x, unit norm."""
        with torch.no_grad():
            return directions(self.model.map_queries(self.xb).numpy())

    def refresh_codes(self, base: torch.Tensor | None = None) -> torch.Tensor | None:
        """faiss' codes with the current codebooks (or ``base``), refined for ``eta``."""
        native = self.native
        if native is None:
            return None
        cb = self.model.codebooks.detach().numpy()
        faiss.copy_array_to_vector(cb.ravel(), native.aq.codebooks)
        r = self.residuals()
        c = unpack_codes(native.aq, native.aq.compute_codes(np.ascontiguousarray(r))) \
            if base is None else base.numpy()
        if self.eta != 1.0:
            c = refine_codes(r, self.served_directions(), cb, c, self.eta,
                             self.cfg.score_aware_passes)
        return torch.from_numpy(c)

    def validate(self) -> dict[str, float]:
        """Held-out figures as the exported index would search, at ``val_nprobe``: coarse
        recall@val_k against the teacher; end to end, the share of the teacher's top 10
        within the coarse top ``val_candidates`` scaled to the sample (``sample_candidates``:
        the re-ranked recall@10 at that candidate count, since the re-rank is exact); with
        labels, the held-out positives' recall."""
        if self.val_truth is None:
            return {"val_recall": float("nan"), "val_rerank_recall": float("nan")}
        served = self.cfg.sample_candidates(self.n)
        k, c = self.val_truth.shape[1], max(self.val_truth.shape[1], served)
        found = self.model.coarse_search(torch.from_numpy(self.val_q), self.xr, self.assign,
                                         self.nprobe, min(c, self.n), codes=self.codes)
        out = {"val_recall": recall_of(found[:, :k], self.val_truth),
               "val_rerank_recall": recall_of(found[:, :served],
                                              self.val_truth[:, :10])}
        if self.val_pairs is not None:
            out["val_positive_recall"] = recall_of(found[:, :k], self.val_pairs[1])
        return out

    # -- score-aware codes --------------------------------------------------------------------
    def choose_score_aware(self) -> JsonObject:
        """Choose eta on the held-out queries with the initial codebooks, then refit the
        codebooks for it (kept only if the held-out value rises). Returns the record."""
        cfg = self.cfg
        aware: JsonObject = {"eta": 1.0, "off": None}
        t0 = time.perf_counter()
        if self.native is None or self.metric is not Metric.IP:
            aware["off"] = "inner-product RQ / LSQ only"
        elif not cfg.score_aware_eta:
            aware["off"] = "no candidates"
        elif self.val_truth is None:
            aware["off"] = "no held-out queries to choose eta"
        else:
            base, tried = self.codes, {}
            for self.eta in cfg.score_aware_eta:
                self.codes = self.refresh_codes(base)
                tried[f"{self.eta:g}"] = self.validate()[self.watch]
            self.eta = max(cfg.score_aware_eta, key=lambda e: (tried[f"{e:g}"], -abs(e - 1.0)))
            self.codes = self.refresh_codes(base)
            aware.update(eta=self.eta, candidates=tried, passes=cfg.score_aware_passes)
            logger.info("distill: score-aware codes, eta %g (held-out %s %s)", self.eta,
                        self.watch, ", ".join(f"{k}: {v:.4f}" for k, v in tried.items()))
            if self.eta != 1.0 and cfg.score_aware_rounds:
                self._refit_for_eta(aware, tried[f"{self.eta:g}"])
        self.t_aware = time.perf_counter() - t0
        return aware

    def _refit_for_eta(self, aware: dict[str, Any], before: float) -> None:
        """Refit the codebooks for eta (codes refined in between); keep what validates best."""
        cfg, model = self.cfg, self.model
        r, u = self.residuals(), self.served_directions()
        assert self.codes is not None  # additive codes: refreshed at the start
        c, cb0 = self.codes.numpy(), model.codebooks.detach().clone()
        for _ in range(cfg.score_aware_rounds):
            cb = fit_codebooks(r, u, model.codebooks.detach().numpy(), c, self.eta)
            c = refine_codes(r, u, cb, c, self.eta, cfg.score_aware_passes)
            with torch.no_grad():
                model.codebooks.copy_(torch.from_numpy(cb))
        kept, self.codes = self.codes, self.refresh_codes()  # as the export encodes them
        after = self.validate()[self.watch]
        refit_kept = after >= before
        if not refit_kept:  # keep the codebooks that validated better
            with torch.no_grad():
                model.codebooks.copy_(cb0)
            self.codes = kept
        aware.update(rounds=cfg.score_aware_rounds, after_rounds=after,
                     refit_kept=bool(refit_kept))
        logger.info("distill: codebooks refit for eta %g (%d rounds): held-out %s %.4f (%s)",
                    self.eta, cfg.score_aware_rounds, self.watch, after,
                    "kept" if refit_kept else "dropped")

    # -- training -------------------------------------------------------------------------
    def start_labels(self) -> None:
        """The order labelled queries are drawn in (drawn after the start's validation)."""
        self.lab_order = self.rng.permutation(self.n_lab) if self.n_lab else None
        self.lab_pos = 0

    def _loss(self, t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
        return sum((f(t, s, tau) for f in self.parts), torch.zeros(()))

    def epoch(self, epoch: int) -> list[float]:
        """One pass over the training queries in batches (stops early once the budget is
        spent); then the codes are redone with the new codebooks. Returns the batch losses."""
        cfg = self.cfg
        order = self.rng.permutation(len(self.train_q))
        losses = []
        for b0 in range(0, len(order), cfg.batch_size):
            loss = self._batch(order[b0:b0 + cfg.batch_size])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(float(loss.detach()))
            if self.budget_spent():
                break
        self.codes = self.refresh_codes()
        return losses

    def _batch(self, bq: np.ndarray) -> torch.Tensor:
        """The loss of one batch of training queries: distillation on the teacher's top-K,
        the batch's other candidates and random documents; with labels, the contrastive term
        of a batch of labelled queries."""
        cfg, model, rng = self.cfg, self.model, self.rng
        doc_parts = [self.top[bq].ravel(), rng.integers(0, self.n, cfg.n_random)]
        lq = picked = None
        if self.lab_order is not None and cfg.contrastive_weight > 0:
            assert self.labelled is not None  # lab_order is drawn only with labels
            if self.lab_pos + cfg.batch_size > self.n_lab:
                self.lab_order, self.lab_pos = rng.permutation(self.n_lab), 0
            lq = self.lab_order[self.lab_pos:self.lab_pos + cfg.batch_size]
            self.lab_pos += cfg.batch_size
            picked = np.array([p[rng.integers(len(p))] for p in
                               (self.labelled[1][i] for i in lq)], dtype=np.int64)
            doc_parts += [picked, self.top[lq].ravel()]  # teacher top-K of labelled lq
        docs = np.unique(np.concatenate(doc_parts))
        d_idx = torch.from_numpy(docs)
        q = torch.from_numpy(self.train_q[bq])
        with torch.no_grad():
            teacher = model.scores(q, self.xb[d_idx]) if self.metric is Metric.IP else \
                -torch.cdist(q, self.xb[d_idx]).pow(2)
        codes = None if self.codes is None else self.codes[d_idx]
        s_ivf, s_pq = model.student(q, self.xr[d_idx], self.assign[d_idx], codes)
        loss = self._loss(teacher, s_pq, self.tau) + self.ivf_w * self._loss(teacher, s_ivf,
                                                                             self.tau)
        if lq is None or picked is None or self.labelled is None:
            return loss
        target = torch.from_numpy(np.searchsorted(docs, picked))
        valid = np.ones((len(lq), len(docs)), dtype=bool)
        for i, j in enumerate(lq):
            valid[i, np.isin(docs, self.labelled[1][j])] = False
        valid[np.arange(len(lq)), target.numpy()] = True
        v = torch.from_numpy(valid)
        c_ivf, c_pq = model.student(torch.from_numpy(self.labelled[0][lq]), self.xr[d_idx],
                                    self.assign[d_idx], codes)
        return loss + cfg.contrastive_weight * (
            info_nce(c_pq, target, self.tau_c, v) + self.ivf_w * info_nce(c_ivf, target,
                                                                          self.tau_c, v))

    # -- export ---------------------------------------------------------------------------
    def export(self) -> faiss.Index:
        """The trained centroids and codebooks written into the faiss index (L2 additive: the
        norm byte's range refit on these codebooks)."""
        model = self.model
        to_faiss(self.index, model.centroids.detach().numpy(), model.codebooks.detach().numpy())
        if self.spec.l2_as_ip(self.metric):
            fit_norm_range(self.index, self.xt, self.assign_np)
        return self.index


def _calibrate_tau(xq: np.ndarray, xb: np.ndarray, top: np.ndarray, metric: Metric) -> float:
    """Temperature = mean spread (std) of each query's teacher top-K scores / 4, so the
    teacher's softmax concentrates on its top few candidates whatever the score scale."""
    sub = slice(0, min(len(xq), 256))
    q, cand = xq[sub], xb[top[sub]]  # [b, d], [b, K, d]
    s = np.einsum("bd,bkd->bk", q, cand)
    if metric is Metric.L2:
        s = -((cand - q[:, None]) ** 2).sum(-1)
    return float(max(s.std(axis=1).mean() / 4.0, 1e-6))
