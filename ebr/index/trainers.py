"""The builder's choice of codebook trainer (the quant layer never imports ebr.train)."""

from __future__ import annotations

from ebr.errors import SpecError
from ebr.quant.trainers import CodebookTrainer, KMeansTrainer

__all__ = ["make_trainer"]


def make_trainer(method: str, niter: int = 20) -> CodebookTrainer:
    """The default trainer of a method (``distill`` with default settings and pseudo-queries;
    build a :class:`ebr.train.distill_vq.DistillVQTrainer` yourself to pass queries)."""
    if method in ("kmeans", "opq"):
        return KMeansTrainer(niter=niter, method=method)
    if method == "distill":
        from ebr.train.distill_vq import DistillVQTrainer  # torch: only when asked for

        return DistillVQTrainer(niter=niter)
    raise SpecError(f"unknown codebook method {method!r}: expected 'kmeans', 'opq' or 'distill'")
