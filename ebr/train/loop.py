"""The one training loop of ebr's trainers (Distill-VQ, BiDR's towers, encoder fine-tuning).

Epochs until ``max_epochs``, an early stop after ``patience`` epochs without a better held-out
value, or a spent time budget (checked before each epoch, so a budget used up by the start
trains nothing, and after each); the best epoch's state is restored at the end. A trainer
supplies what is its own: one epoch of batches, the held-out validation, and how to snapshot
and restore its parameters. Without validation (the value is NaN) every epoch counts as best.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

__all__ = ["LoopResult", "deadline", "run_epochs"]


@dataclass(frozen=True)
class LoopResult:
    history: list[dict[str, float]]  # epoch 0 (the start) and every epoch run
    best: float  # the best held-out value (the start's if no epoch beat it)
    best_epoch: int  # 0: no epoch beat the start
    stopped: str  # max_epochs | early_stop | time_budget


def deadline(budget_s: float | None, start: float) -> Callable[[], bool]:
    """Whether a time budget of ``budget_s`` seconds counted from ``start``
    (``time.perf_counter()``) is used up; None or 0: never."""
    if not budget_s:
        return lambda: False
    return lambda: time.perf_counter() - start > budget_s

S = TypeVar("S")  # a model state: what ``snapshot`` returns and ``restore`` takes


def run_epochs(*, name: str, max_epochs: int, patience: int, start: dict[str, float],
               watch: str, train_epoch: Callable[[int], list[float]],
               validate: Callable[[], dict[str, float]], snapshot: Callable[[], S],
               restore: Callable[[S], None], budget_spent: Callable[[], bool] = lambda: False,
               progress: bool = False) -> LoopResult:
    """Run the epochs (module docstring). ``start``: the validation before any epoch;
    ``train_epoch(epoch)``: one epoch's batch losses; ``watch``: the key of ``validate()``'s
    result that decides the best epoch (higher is better)."""
    history = [{"epoch": 0, "loss": float("nan"), **start}]
    best, best_epoch, bad, stopped = start.get(watch, float("nan")), 0, 0, "max_epochs"
    best_state = snapshot()
    bar = tqdm(range(1, max_epochs + 1), desc=name, disable=not progress)
    for epoch in bar:
        if budget_spent():
            stopped = "time_budget"  # spent before this epoch: no batch, nothing to validate
            break
        losses = train_epoch(epoch)
        vals = validate()
        val = vals.get(watch, float("nan"))
        loss = float(np.mean(losses)) if losses else float("nan")
        history.append({"epoch": epoch, "loss": loss, **vals})
        bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}")
        if math.isnan(val) or val > best:
            best, best_epoch, bad = val, epoch, 0
            best_state = snapshot()
        else:
            bad += 1
            if bad >= patience:
                stopped = "early_stop"
                break
        if budget_spent():
            stopped = "time_budget"
            break
    bar.close()
    restore(best_state)
    return LoopResult(history, best, best_epoch, stopped)
