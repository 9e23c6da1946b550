"""Distillation losses: ``loss(teacher, student, tau)`` over candidate lists.

teacher, student: float [B, K] scores of the same K candidates for each of B queries (higher
is better). An optional boolean ``mask`` [B, K] marks valid entries. Each returns a scalar mean
over queries. Distill-VQ found ListNet best overall, KL-div close, MSE / Margin-MSE worse.
``info_nce`` is the labelled contrastive loss of BiDR (a target column instead of a teacher).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ebr.train_config import LOSS_NAMES

__all__ = ["listnet", "kl_div", "mse", "margin_mse", "info_nce", "debiased_info_nce", "LOSSES",
           "DistillLoss"]

DistillLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
_NEG = -1e9


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.masked_fill(~mask, _NEG)


def listnet(teacher: torch.Tensor, student: torch.Tensor, tau: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's top-one distributions:
    -sum_d softmax(t/tau)_d log softmax(s/tau)_d."""
    p = F.softmax(_masked(teacher / tau, mask), dim=-1)
    log_q = F.log_softmax(_masked(student / tau, mask), dim=-1)
    return -(p * log_q).sum(-1).mean()


def kl_div(teacher: torch.Tensor, student: torch.Tensor, tau: float = 1.0,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of the softmax distributions (ListNet minus the teacher entropy)."""
    log_p = F.log_softmax(_masked(teacher / tau, mask), dim=-1)
    log_q = F.log_softmax(_masked(student / tau, mask), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def mse(teacher: torch.Tensor, student: torch.Tensor, tau: float = 1.0,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between scores (scale-sensitive; tau divides both)."""
    diff = (student - teacher) / tau
    if mask is not None:
        return (diff.pow(2) * mask).sum() / mask.sum().clamp(min=1)
    return diff.pow(2).mean()


def margin_mse(teacher: torch.Tensor, student: torch.Tensor, tau: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the margins to each query's top teacher candidate (shift-invariant)."""
    top = teacher.masked_fill(~mask, _NEG).argmax(-1, keepdim=True) if mask is not None \
        else teacher.argmax(-1, keepdim=True)
    t = teacher.gather(-1, top) - teacher
    s = student.gather(-1, top) - student
    return mse(t, s, tau, mask)


def info_nce(scores: torch.Tensor, target: torch.Tensor, tau: float | torch.Tensor = 1.0,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive loss with labels (BiDR): -log softmax(s/tau)[target] per query, mean.

    scores [B, m]; target [B] column of each query's positive; valid [B, m] False on columns
    that must not count as negatives (the query's other positives).
    """
    return F.cross_entropy(_masked(scores / tau, valid), target)


def debiased_info_nce(scores: torch.Tensor, target: torch.Tensor,
                      tau: float | torch.Tensor = 1.0, valid: torch.Tensor | None = None,
                      prior: float = 0.1) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020): the negatives are unlabelled
    documents, a share ``prior`` of which are in truth relevant; their mean exp-score is
    corrected for it, g = max((mean_n e^{s_n} - prior e^{s_p}) / (1 - prior), e^{-1/tau}),
    and the loss is -log(e^{s_p} / (e^{s_p} + N g)) per query (N its valid negatives), mean.
    Same arguments as :func:`info_nce`; ``tau`` may be a [B, 1] tensor (one per query).
    ``prior`` = 0 is InfoNCE over the same columns."""
    if not 0.0 <= prior < 1.0:
        raise ValueError(f"prior must be in [0, 1), got {prior}")
    s = scores / tau
    rows = torch.arange(len(s))
    neg = torch.ones_like(s, dtype=torch.bool) if valid is None else valid.clone()
    neg[rows, target] = False
    top = s.masked_fill(~neg, _NEG).amax(-1).clamp(min=s[rows, target]).detach()
    pos = s[rows, target] - top
    e_neg = (s - top[:, None]).exp() * neg
    n = neg.sum(-1).clamp(min=1)
    floor = (-1.0 / torch.as_tensor(tau).reshape(-1)) - top  # e^{-1/tau}, shifted like s
    g = torch.maximum((e_neg.sum(-1) / n - prior * pos.exp()) / (1.0 - prior), floor.exp())
    return (-pos + torch.log(pos.exp() + n * g)).mean()


LOSSES: dict[str, DistillLoss] = {"listnet": listnet, "kl_div": kl_div, "mse": mse,
                                  "margin_mse": margin_mse}

if tuple(LOSSES) != LOSS_NAMES:  # pragma: no cover - the two lists are edited together
    raise ImportError(f"ebr.train_config.LOSS_NAMES {LOSS_NAMES} != LOSSES {tuple(LOSSES)}")
