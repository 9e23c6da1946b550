"""BiDR stage 2 (Xiao, Liu et al., WWW 2022): the dense side, trained on the shortlists that
the (stage-1) compact codes produce.

    shortlist  top-N of each labelled training query from the trained coarse index, searched
               exactly as the server will (query map, nprobe): the candidates the re-rank sees
    towers     query tower f_q and document tower f_d on top of the frozen base embeddings
               (residual linear or small MLP, identity at start; see :mod:`ebr.towers`)
    loss       InfoNCE( <f_q(q), f_d(d+)> vs <f_q(q), f_d(d-)> ), d- = hard negatives drawn
               from q's own shortlist (positives excluded) + every other document of the batch
    batches    locality-centric: random walk or snowball over the query <-> shortlist graph,
               so in-batch negatives are hard for each other (:mod:`ebr.train.sampling`)
    guard      a held-out slice of the pairs; early stop on its nDCG@10 after re-ranking its
               shortlists with the towers; the best epoch is kept (epoch 0 = identity, so the
               towers never score below the base embeddings on that slice)

The writer then stores f_d(v) in the dense store, and the searcher applies f_q to the query
of the exact re-rank (the coarse stage keeps its own query map).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn

from ebr.errors import SpecError
from ebr.metric import Metric, normalize_rows
from ebr.quant.faiss_index import ivf_params
from ebr.spec import build_nprobe
from ebr.towers import Tower
from ebr.train.loop import deadline, run_epochs
from ebr.train.losses import debiased_info_nce, info_nce
from ebr.train.sampling import (
    ShortlistGraph,
    TrainingPairs,
    batches,
    candidates,
    split_pairs,
)
from ebr.train_config import BiDRConfig
from ebr.types import JsonObject

__all__ = ["BiDRConfig", "BiDRDenseTrainer", "TowerNet"]

logger = logging.getLogger(__name__)


class TowerNet(nn.Module):
    """The torch twin of :class:`ebr.towers.Tower` (same parameters, same function)."""

    def __init__(self, init: Tower, trainable: bool = True) -> None:
        super().__init__()
        self.kind, self.normalize = init.kind, init.normalize
        self.w = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(v.copy()),
                                                   requires_grad=trainable)
                                   for k, v in init.weights.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if self.kind == "linear":
            y = x + x @ w["A"].T + w["b"]
        else:
            y = x + torch.relu(x @ w["W1"].T + w["b1"]) @ w["W2"].T + w["b2"]
        return nn.functional.normalize(y, dim=-1) if self.normalize else y

    def export(self) -> Tower:
        return Tower(self.kind, {k: v.detach().numpy().astype(np.float32).copy()
                                 for k, v in self.w.items()}, self.normalize)


def _scores(q: torch.Tensor, d: torch.Tensor, metric: Metric) -> torch.Tensor:
    ip = q @ d.T
    if metric is Metric.IP:
        return ip
    return 2 * ip - (d * d).sum(-1)[None] - (q * q).sum(-1)[:, None]


def _ndcg10(ranked: np.ndarray, positives: list[np.ndarray]) -> float:
    """Binary-relevance nDCG@10 of ranked rows [Q, >=10] against each query's positive rows."""
    disc = 1.0 / np.log2(np.arange(2, 12))
    out = []
    for r, p in zip(ranked[:, :10], positives, strict=True):
        gain = np.isin(r, p).astype(float)
        ideal = disc[:min(len(p), 10)].sum()
        out.append(float((gain * disc[:len(gain)]).sum() / ideal))
    return float(np.mean(out)) if out else float("nan")


class BiDRDenseTrainer:
    """Trains the query and document towers against the coarse index's shortlists.

    Used by :func:`ebr.index.writer.write_index` (``dense_trainer=``) after the coarse index
    holds every document and before the dense store is written.
    """

    method = "bidr"

    def __init__(self, pairs: TrainingPairs, config: BiDRConfig | None = None,
                 progress: bool = False) -> None:
        self.pairs = pairs
        self.config = config or BiDRConfig()
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self.info: dict[str, Any] = {}

    def shortlists(self, index: faiss.Index, queries: np.ndarray,
                   query_map: np.ndarray | None, nprobe: int) -> np.ndarray:
        """Top-N rows of each query from the coarse index, as the searcher would get them."""
        qc = queries if query_map is None else queries @ query_map.T
        _, ids = index.search(np.ascontiguousarray(qc, dtype=np.float32),
                              min(self.config.shortlist, index.ntotal),
                              params=ivf_params(index, nprobe))
        return ids.astype(np.int64)

    def fit(self, index: faiss.Index, vectors: np.ndarray, metric: Metric, normalize: bool,
            query_map: np.ndarray | None, nlist: int) -> tuple[Tower, Tower] | None:
        """Train; returns (query tower, document tower), or ``None`` when no epoch beat the
        identity on the held-out pairs (storing identity towers would only cost time)."""
        cfg = self.config
        t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        queries = self._check(vectors, normalize)
        nprobe = build_nprobe(cfg.nprobe, nlist)
        sl = self.shortlists(index, queries, query_map, nprobe)
        t_short = time.perf_counter() - t_start
        tr, va = split_pairs(self.pairs.positives, cfg.val_fraction, cfg.val_split, rng)
        run = _TowerRun(self, vectors, queries, sl, tr, va, metric, normalize, rng)
        v0 = run.validate()
        short_recall = float(np.mean([np.isin(self.pairs.positives[i], sl[i]).mean()
                                      for i in range(len(self.pairs))]))
        logger.info("bidr: %d train / %d val queries, shortlist N=%d at nprobe %d (holds %.1f%% "
                    "of the positives), sampler %s, tau %.4g, start val nDCG@10 %.4f",
                    len(tr), len(va), sl.shape[1], nprobe, 100 * short_recall, cfg.sampler,
                    run.tau, v0["val_ndcg@10"])
        nets = (run.qnet, run.dnet)
        result = run_epochs(
            name="bidr", max_epochs=cfg.max_epochs, patience=cfg.patience, start=v0,
            watch="val_ndcg@10", train_epoch=run.epoch, validate=run.validate,
            snapshot=lambda: tuple(copy.deepcopy(net.state_dict()) for net in nets),
            restore=lambda state: _load_states(nets, state),
            budget_spent=deadline(cfg.time_budget_s, t_start),
            progress=self.progress)
        self.history = result.history
        self.info = {
            "n_train_queries": int(len(tr)), "n_val_queries": int(len(va)),
            "n_pairs": self.pairs.n_pairs, "shortlist_nprobe": nprobe,
            "shortlist_positive_recall": short_recall, "temperature": float(run.tau),
            "stopped": result.stopped, "best_val_ndcg@10": result.best,
            "best_epoch": result.best_epoch, "stored": result.best_epoch > 0,
            "seconds": {"shortlists": round(t_short, 2),
                        "total": round(time.perf_counter() - t_start, 2)},
        }
        logger.info("bidr: %s after %d epochs, val nDCG@10 %.4f -> %.4f (%.1f s)",
                    result.stopped, len(self.history) - 1, self.history[0]["val_ndcg@10"],
                    result.best, time.perf_counter() - t_start)
        if result.best_epoch == 0:
            logger.warning("bidr: the towers never beat the identity on the held-out pairs; "
                           "the index is written without them")
            return None
        return run.qnet.export(), run.dnet.export()

    def _check(self, vectors: np.ndarray, normalize: bool) -> np.ndarray:
        """The pairs' queries (normalised like the index), after checking the pairs fit."""
        pairs, d = self.pairs, vectors.shape[1]
        if pairs.queries.shape[1] != d:
            raise SpecError(f"training pairs are {pairs.queries.shape[1]}-d, vectors {d}-d")
        top_row = max(int(p.max()) for p in pairs.positives)
        if top_row >= len(vectors):
            raise SpecError(f"training pairs name row {top_row}; the corpus has {len(vectors)}")
        return normalize_rows(pairs.queries) if normalize else pairs.queries

    def describe(self) -> JsonObject:
        return {"method": self.method, "config": asdict(self.config), **self.info,
                "history": self.history}


class _TowerRun:
    """One fit's state: the rows the shortlists and positives touch (read once), the two
    towers, their optimizer; one epoch of locality-sampled batches, and validation by
    re-ranking each held-out query's shortlist."""

    def __init__(self, trainer: BiDRDenseTrainer, vectors: np.ndarray, queries: np.ndarray,
                 sl: np.ndarray, tr: np.ndarray, va: np.ndarray, metric: Metric,
                 normalize: bool, rng: np.random.Generator) -> None:
        cfg, pairs = trainer.config, trainer.pairs
        self.cfg, self.metric, self.rng, self.tr, self.va = cfg, metric, rng, tr, va
        self.graph = ShortlistGraph.build(sl[tr])
        self.pos_tr = [pairs.positives[i] for i in tr]
        # every row training or validation touches, read once (sorted: forward reads)
        rows = np.unique(np.concatenate([sl[sl >= 0], *pairs.positives]))
        local = {r: i for i, r in enumerate(rows.tolist())}
        xd = np.asarray(vectors[rows], dtype=np.float32)
        if normalize:
            xd = normalize_rows(xd)
        self.xd_t = torch.from_numpy(xd)
        self.to_local = np.vectorize(lambda r: local.get(int(r), -1), otypes=[np.int64])
        self.xq_t = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        d = vectors.shape[1]
        self.qnet = TowerNet(Tower.identity(cfg.tower, d, normalize, cfg.hidden, cfg.seed),
                             cfg.train_query_tower)
        self.dnet = TowerNet(Tower.identity(cfg.tower, d, normalize, cfg.hidden, cfg.seed + 1),
                             cfg.train_doc_tower)
        params = [p for net in (self.qnet, self.dnet) for p in net.parameters()
                  if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.tau = cfg.temperature or _calibrate_tau(queries, xd, sl, self.to_local, metric)
        # per query: the spread of its own shortlist's scores, scaled so their mean is tau
        self.tau_q = (torch.from_numpy(_query_spreads(queries, xd, sl, self.to_local, metric,
                                                      self.tau))
                      if cfg.query_temperature else None)
        self.normalize = normalize
        self.val_sl = sl[va]
        self.val_pos = [pairs.positives[i] for i in va]
        nval = len(va)
        val_rows = np.unique(self.val_sl[self.val_sl >= 0]) if nval else np.zeros(0, np.int64)
        self.val_loc_rows = torch.from_numpy(self.to_local(val_rows)) if nval else None
        self.val_cols = np.searchsorted(val_rows, np.where(self.val_sl >= 0, self.val_sl,
                                                           val_rows[:1])) if nval else None

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Re-rank each held-out query's shortlist with the towers: nDCG@10, recall@10."""
        nval = len(self.va)
        if nval == 0 or self.val_cols is None:
            return {"val_ndcg@10": float("nan")}
        dv = self.dnet(self.xd_t[self.val_loc_rows])  # only the rows the shortlists hold
        qv = self.qnet(self.xq_t[self.va])
        s = np.empty(self.val_sl.shape, np.float32)
        for i0 in range(0, nval, 256):  # [b, N] at a time, never [nval, rows]
            sc = _scores(qv[i0:i0 + 256], dv, self.metric).numpy()
            s[i0:i0 + 256] = np.take_along_axis(sc, self.val_cols[i0:i0 + 256], 1)
        s[self.val_sl < 0] = -np.inf
        ranked = np.take_along_axis(self.val_sl, np.argsort(-s, axis=1, kind="stable"), 1)
        found = [np.isin(p, r[:10]).mean() for r, p in zip(ranked, self.val_pos, strict=True)]
        return {"val_ndcg@10": _ndcg10(ranked, self.val_pos),
                "val_recall@10": float(np.mean(found))}

    def epoch(self, epoch: int) -> list[float]:
        """One epoch of InfoNCE over locality-sampled batches; returns the batch losses."""
        cfg, losses = self.cfg, []
        for batch in batches(self.graph, cfg.batch_size, cfg.sampler, self.rng):
            cand = candidates(batch, self.pos_tr, self.graph, cfg.hard_negatives, self.rng)
            q = self.qnet(self.xq_t[self.tr[batch]])
            dv = self.dnet(self.xd_t[torch.from_numpy(self.to_local(cand.docs))])
            scores = _scores(q, dv, self.metric)
            target = torch.from_numpy(cand.target)
            valid = torch.from_numpy(cand.valid)
            if cfg.mix_negatives:
                scores, valid = self._mixed(q, dv, scores, target, valid)
            tau: float | torch.Tensor = (self.tau if self.tau_q is None else
                                         self.tau_q[self.tr[batch]][:, None])
            loss = (info_nce(scores, target, tau, valid) if cfg.loss == "infonce" else
                    debiased_info_nce(scores, target, tau, valid, cfg.debias_prior))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(float(loss.detach()))
        return losses

    def _mixed(self, q: torch.Tensor, dv: torch.Tensor, scores: torch.Tensor,
               target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mix_negatives`` synthetic negatives per query appended to its scores: convex
        mixes of two of its 8 hardest valid negatives (detached: they move the query only)."""
        b, m = scores.shape
        neg = valid.clone()
        neg[torch.arange(b), target] = False
        hard = scores.detach().masked_fill(~neg, float("-inf")).topk(min(8, m), dim=1)
        n = self.cfg.mix_negatives
        gen = torch.Generator().manual_seed(int(self.rng.integers(2 ** 31)))
        pick = torch.randint(hard.indices.shape[1], (b, n, 2), generator=gen)
        idx = hard.indices.gather(1, pick.reshape(b, -1)).reshape(b, n, 2)
        ok = torch.isfinite(hard.values.gather(1, pick.reshape(b, -1)).reshape(b, n, 2)).all(-1)
        alpha = torch.rand(b, n, 1, generator=gen)
        d = dv.detach()
        mix = alpha * d[idx[..., 0]] + (1.0 - alpha) * d[idx[..., 1]]
        if self.normalize:
            mix = torch.nn.functional.normalize(mix, dim=-1)
        ip = (q[:, None, :] * mix).sum(-1)
        extra = ip if self.metric is Metric.IP else \
            2 * ip - (mix * mix).sum(-1) - (q * q).sum(-1)[:, None]
        return torch.cat([scores, extra], 1), torch.cat([valid, ok], 1)


def _load_states(nets: tuple[TowerNet, TowerNet], states: tuple[Any, ...]) -> None:
    for net, state in zip(nets, states, strict=True):
        net.load_state_dict(state)


def _spreads(queries: np.ndarray, xd: np.ndarray, sl: np.ndarray, to_local: Any,
             metric: Metric) -> np.ndarray:
    """float64 [Q]: the std of each query's base scores over its shortlist; NaN for a query
    with fewer than 2 shortlisted rows."""
    out = np.full(len(queries), np.nan, dtype=np.float64)
    for i, (q, row) in enumerate(zip(queries, sl, strict=False)):
        loc = to_local(row[row >= 0])
        if loc.size >= 2:
            out[i] = float(_scores(torch.from_numpy(q[None].astype(np.float32)),
                                   torch.from_numpy(xd[loc]), metric).numpy().std())
    return out


def _query_spreads(queries: np.ndarray, xd: np.ndarray, sl: np.ndarray, to_local: Any,
                   metric: Metric, tau: float) -> np.ndarray:
    """float32 [Q]: each query's shortlist score spread, scaled to mean ``tau``; a query with
    fewer than 2 shortlisted rows (or no spread) gets ``tau``."""
    out = _spreads(queries, xd, sl, to_local, metric)
    ok = np.isfinite(out) & (out > 0)
    out[ok] *= tau / out[ok].mean() if ok.any() else 1.0
    out[~ok] = tau
    return out.astype(np.float32)


def _calibrate_tau(queries: np.ndarray, xd: np.ndarray, sl: np.ndarray, to_local: Any,
                   metric: Metric) -> float:
    """Mean std of the base scores over each query's shortlist (first 256 queries)."""
    spreads = _spreads(queries[:256], xd, sl[:256], to_local, metric)
    spreads = spreads[np.isfinite(spreads)]
    return float(max(spreads.mean() if spreads.size else 1.0, 1e-6))
