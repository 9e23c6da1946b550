"""Training (the only subpackage that imports torch; install the 'train' extra).

    losses       distillation losses as pure functions: ListNet, KL-div, MSE, Margin-MSE
    distill_vq   Distill-VQ: IVF centroids + PQ codebooks + a query-side map fine-tuned so the
                 quantized scores rank candidates the way the dense inner products do; with
                 labelled pairs, plus BiDR stage 1's contrastive term
    sampling     labelled pairs, validation splits, locality-centric batches (numpy only)
    bidr         BiDR stage 2: query / document towers trained on the coarse shortlists
    encoder_ft   fine-tuning the MiniLM text encoder itself on the pairs
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("ebr.train needs torch: pip install 'ebr[train]' (torch==2.13.0, CPU)") from e
