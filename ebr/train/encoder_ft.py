"""BiDR's dense side with more compute: fine-tune the text encoder itself (MiniLM) instead of
training towers on its frozen output.

    negatives  each training query's shortlist from a coarse IVF-PQ index over the base
               embeddings (positives excluded): the documents the codes would hand the re-rank
    loss       InfoNCE of <E(q), E(d+)> against the batch's positives and hard negatives
               (every other document of the batch, the query's own positives masked)
    sample     ``max_pairs`` caps the (query, positive) pairs per epoch: on CPU (about 25
               abstracts/s forward alone) a few hundred pairs take minutes
    result     the fine-tuned model, saved by the builder into the index directory; the corpus
               is re-encoded with it and the rest of the build (codes, stages 1 and 2) runs on
               the new embeddings. The service then encodes text queries with that model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ebr.errors import SpecError
from ebr.train.loop import run_epochs
from ebr.train.losses import info_nce
from ebr.train_config import EncoderFineTuneConfig
from ebr.types import JsonObject

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["EncoderFineTuneConfig", "fine_tune_encoder"]

logger = logging.getLogger(__name__)


def fine_tune_encoder(model: SentenceTransformer, query_texts: Sequence[str], doc_texts: Sequence[str],
                      positives: Sequence[np.ndarray], shortlists: np.ndarray,
                      config: EncoderFineTuneConfig | None = None,
                      progress: bool = False) -> JsonObject:
    """Fine-tune a sentence-transformers ``model`` in place.

    query_texts[i] has relevant documents ``positives[i]`` (rows of ``doc_texts``) and
    shortlist rows ``shortlists[i]`` (``-1`` padding). Returns a description (settings, loss
    per epoch, seconds) for the manifest.
    """
    cfg = config or EncoderFineTuneConfig()
    if not (len(query_texts) == len(positives) == len(shortlists)):
        raise SpecError("query_texts, positives and shortlists must have one entry per query")
    t_start = time.perf_counter()
    run = _EncoderRun(model, query_texts, doc_texts, positives, shortlists, cfg)
    model.train()
    result = run_epochs(name="fine-tune encoder", max_epochs=cfg.epochs, patience=cfg.epochs,
                        start={}, watch="none", train_epoch=run.epoch, validate=dict,
                        snapshot=lambda: None, restore=lambda _: None, progress=progress)
    model.eval()
    return {"config": asdict(cfg), "n_pairs": len(run.pairs), "steps": run.n_steps,
            "loss_per_epoch": [h["loss"] for h in result.history[1:]],
            "seconds": round(time.perf_counter() - t_start, 2)}


class _EncoderRun:
    """The state of one fine-tuning: the (query, positive) pairs, the optimizer, the draws."""

    def __init__(self, model: Any, query_texts: Sequence[str], doc_texts: Sequence[str],
                 positives: Sequence[np.ndarray], shortlists: np.ndarray,
                 cfg: EncoderFineTuneConfig) -> None:
        self.model, self.query_texts, self.doc_texts = model, query_texts, doc_texts
        self.positives, self.shortlists, self.cfg = positives, shortlists, cfg
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        model.max_seq_length = min(cfg.max_seq_length, model.max_seq_length or cfg.max_seq_length)
        self.pairs = [(i, int(p)) for i, ps in enumerate(positives) for p in ps]
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                     lr=cfg.lr)
        self.n_steps = 0

    def embed(self, texts: list[str]) -> torch.Tensor:
        model = self.model
        prep = getattr(model, "preprocess", None) or model.tokenize  # ST >= 6 renamed it
        feats = {k: v.to(model.device) for k, v in prep(texts).items()
                 if isinstance(v, torch.Tensor)}
        return torch.nn.functional.normalize(model(feats)["sentence_embedding"], dim=-1)

    def epoch(self, epoch: int) -> list[float]:
        cfg = self.cfg
        order = self.rng.permutation(len(self.pairs))
        if cfg.max_pairs is not None:
            order = order[:cfg.max_pairs]
        losses = []
        for b0 in range(0, len(order), cfg.batch_size):
            batch = [self.pairs[j] for j in order[b0:b0 + cfg.batch_size]]
            if len(batch) < 2:
                continue
            loss = self.batch_loss(batch)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.n_steps += 1
            losses.append(float(loss.detach()))
        logger.info("encoder fine-tuning: epoch %d, loss %.4f", epoch,
                    float(np.mean(losses)) if losses else float("nan"))
        return losses

    def batch_loss(self, batch: list[tuple[int, int]]) -> torch.Tensor:
        """InfoNCE of each query against its positive, the batch's other positives and up
        to ``hard_negatives`` of its own shortlist (its other positives masked)."""
        cfg, positives = self.cfg, self.positives
        docs = [p for _, p in batch]
        for q, _ in batch:
            sl = self.shortlists[q]
            neg = sl[(sl >= 0) & ~np.isin(sl, positives[q])]
            if neg.size and cfg.hard_negatives:
                docs += self.rng.choice(neg, size=min(cfg.hard_negatives, neg.size),
                                        replace=False).tolist()
        uniq, inv = np.unique(np.array(docs), return_inverse=True)
        target = torch.from_numpy(inv[:len(batch)].astype(np.int64))
        valid = np.ones((len(batch), len(uniq)), dtype=bool)
        for i, (q, _) in enumerate(batch):
            valid[i, np.isin(uniq, positives[q])] = False
            valid[i, inv[i]] = True
        qe = self.embed([self.query_texts[q] for q, _ in batch])
        de = self.embed([self.doc_texts[d] for d in uniq.tolist()])
        return info_nce(qe @ de.T, target, cfg.temperature, torch.from_numpy(valid))
