"""Training (the only subpackage that imports torch; install the 'train' extra).

    losses       distillation losses as pure functions: ListNet, KL-div, MSE, Margin-MSE
    distill_vq   Distill-VQ: IVF centroids + PQ codebooks + a query-side map fine-tuned so the
                 quantized scores rank candidates the way the dense inner products do
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("ebr.train needs torch: pip install 'ebr[train]' (torch==2.13.0, CPU)") from e
