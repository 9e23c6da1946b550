"""Training settings: frozen, validated, torch-free, so the CLI takes its defaults from them
(one default per parameter) and a build records them without the 'train' extra installed.

    DistillConfig          Distill-VQ (and BiDR stage 1's contrastive term)   ebr.train.distill_vq
    BiDRConfig             BiDR stage 2: the towers                          ebr.train.bidr
    EncoderFineTuneConfig  fine-tuning MiniLM itself                         ebr.train.encoder_ft
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ebr.errors import SpecError
from ebr.towers import TOWER_KINDS

__all__ = ["DistillConfig", "BiDRConfig", "EncoderFineTuneConfig", "LOSS_NAMES", "SAMPLERS",
           "VAL_SPLITS", "BIDR_LOSSES"]

LOSS_NAMES = ("listnet", "kl_div", "mse", "margin_mse")  # ebr.train.losses.LOSSES
SAMPLERS = ("random_walk", "snowball", "random")  # ebr.train.sampling.batches
VAL_SPLITS = ("query", "document")  # ebr.train.sampling.split_pairs
BIDR_LOSSES = ("infonce", "debiased")  # ebr.train.losses.info_nce / debiased_info_nce


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
    # What decides the best epoch (and whether any learned change is kept at all: epoch 0 is
    # the k-means start), without labels: "rerank", the end-to-end figure users see (the
    # teacher's top 10 within the coarse top val_candidates, i.e. the re-ranked recall@10 at
    # that C), or "coarse" (coarse recall@val_k). Coarse recall can rise while the re-ranked
    # result falls (issue 21: RQ16 +9.6 points coarse, below OPQ end to end).
    select: str = "rerank"
    val_candidates: int = 200
    # Documents the index will serve, when more than the training sample (None: the sample is
    # the corpus). Validation runs in the sample, whose lists hold n_sample / corpus_size of
    # the documents, so as many fewer of them score near each query's 10th best: the serving
    # C is scaled to the sample (sample_candidates). Unscaled, a 100k sample of 10M at
    # C = 1,600 saturates (plain OPQ and the learned runs 0.999 at C = 200) and no learned
    # step can show a gain (bench/results/scale_10m_distill.md).
    corpus_size: int | None = None
    # After training, compare the learned codebooks with faiss' plain ones for the same spec
    # on the held-out queries, both as served (re-ranked recall@10 at val_nprobe and
    # val_candidates), and keep the better: learning never ends below its start.
    guard: bool = True
    # The guard's measure is each held-out query's recall averaged over the validation nprobe
    # and its halvings, this many values (1: the validation nprobe alone), because users lower
    # nprobe for speed: learned IVF centroids validated at nprobe 32 alone were kept at 1M x 384,
    # 32 B, and gave re-ranked recall@10 0.806 at nprobe 4 against plain OPQ's 0.878
    # (bench/results/frontier_generator_1m_sweep_oldrerank.md).
    guard_nprobes: int = 4
    # PQ specs without OPQ start from OPQ's rotation (free: the same bytes per vector), the best
    # unsupervised start for product codes (Debian 16 B re-ranked recall@10 0.923 against
    # k-means' 0.875; SciFact 0.926 against 0.907), and the guard then compares with plain OPQ,
    # so --codebooks distill never ends below --codebooks opq. BiDR stage 1 too: on the
    # Debian corpus (never-labelled test positives) from IVF256,PQ16 its lists covered 0.891
    # of the exact top 10 and BiDR's nDCG@10 was 0.6625, below OPQ's 0.6643.
    opq_start: bool = True
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
    # With query weighting on (inner product, no labels), train from the unweighted start too
    # (each run on half the time budget) and keep whichever serves the held-out queries
    # better end to end: neither start wins everywhere (16 B from OPQ, held-out re-ranked
    # recall@10 of the weighted / unweighted run: SciFact 0.944 / 0.941, the unseen Debian
    # corpus 0.908 / 0.936, whose weighted lists cover less; bench/results/distill_default.md).
    choose_weighting: bool = True
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
            if name not in LOSS_NAMES:
                raise SpecError(f"loss must be one of {sorted(LOSS_NAMES)} or a '+'-sum of them, "
                                f"got {self.loss!r}")
        for name in ("lr_centroids", "lr_codebooks"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")
        self._check_validation()
        for name in ("top_k", "batch_size", "max_epochs", "patience"):
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

    def _check_validation(self) -> None:
        if self.select not in ("rerank", "coarse"):
            raise SpecError(f"select must be 'rerank' or 'coarse', got {self.select!r}")
        if self.val_k < 10:
            raise SpecError(f"val_k must be >= 10 (the end-to-end figure is a recall@10), "
                            f"got {self.val_k}")
        if self.val_candidates < 10:
            raise SpecError(f"val_candidates must be >= 10, got {self.val_candidates}")
        if self.val_nprobe is not None and self.val_nprobe < 1:
            raise SpecError(f"val_nprobe must be >= 1, got {self.val_nprobe}")
        if self.corpus_size is not None and self.corpus_size < 1:
            raise SpecError(f"corpus_size must be >= 1 or None, got {self.corpus_size}")
        if not isinstance(self.guard_nprobes, int) or self.guard_nprobes < 1:
            raise SpecError(f"guard_nprobes must be an integer >= 1, got {self.guard_nprobes!r}")

    def guard_nprobe_ladder(self, nprobe: int) -> tuple[int, ...]:
        """The nprobes the guard averages over: ``nprobe`` and its halvings (rounded down,
        at least 1, without repeats), ``guard_nprobes`` values at most."""
        out: list[int] = []
        for i in range(self.guard_nprobes):
            p = max(1, nprobe >> i)
            if p not in out:
                out.append(p)
        return tuple(out)

    def sample_candidates(self, n_sample: int) -> int:
        """``val_candidates`` as a sample of ``n_sample`` documents sees it: the 10 sought
        plus the others re-ranked, scaled by the sample's share of ``corpus_size`` (rounded
        up), since the documents that score between a query's 10th best and its coarse
        C-th are as many fewer as the sample is smaller."""
        if self.corpus_size is None or self.corpus_size <= n_sample:
            return self.val_candidates
        return 10 + math.ceil((self.val_candidates - 10) * n_sample / self.corpus_size)


@dataclass(frozen=True)
class BiDRConfig:
    """Stage-2 settings.

    shortlist: N, candidates per training query from the coarse index (paper: 200).
    nprobe: lists probed for the shortlists; None: nlist // 4 (set it to the serving nprobe).
    hard_negatives: negatives drawn per query from its own shortlist, per step.
    temperature: InfoNCE temperature in score units; None: the mean spread (std) of the
        queries' shortlist scores (about 0.05 for cosine MiniLM).
    weight_decay: AdamW decay pulls the residual weights back to 0, i.e. towards the identity.
    loss: ``infonce``, or ``debiased`` (Chuang et al. 2020: the negatives' mean exp-score
        corrected for a share ``debias_prior`` of unlabelled positives among them).
    query_temperature: each training query's temperature is the spread of its own shortlist
        scores instead of the mean spread of all.
    mix_negatives: synthetic negatives per query, each a random convex mix of two of its 8
        hardest negatives in the batch (MoCHi-style hard-negative mixing; 0: off).
    train_doc_tower / lr: the defaults (query tower only, lr 1e-4) are the conservative choice
        measured on SciFact (bench/results/bidr.md): both towers at lr 1e-3 reach a higher
        nDCG@10 overall (0.777 vs 0.701) but lose 0.07 on queries whose relevant documents were
        never labelled; the defaults lose 0.004 there and give the best Recall@100.
    """

    tower: str = "linear"
    hidden: int = 256
    train_query_tower: bool = True
    train_doc_tower: bool = False
    sampler: str = "random_walk"
    shortlist: int = 200
    nprobe: int | None = None
    batch_size: int = 32
    hard_negatives: int = 15
    temperature: float | None = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    loss: str = "infonce"
    debias_prior: float = 0.1
    query_temperature: bool = False
    mix_negatives: int = 0
    max_epochs: int = 20
    patience: int = 3
    val_fraction: float = 0.15
    val_split: str = "query"  # query | document: see ebr.train.sampling.split_pairs
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tower not in TOWER_KINDS:
            raise SpecError(f"tower must be one of {TOWER_KINDS}, got {self.tower!r}")
        if self.sampler not in SAMPLERS:
            raise SpecError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name in ("hidden", "shortlist", "max_epochs", "patience", "hard_negatives"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise SpecError(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SpecError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_split not in VAL_SPLITS:
            raise SpecError(f"val_split must be one of {VAL_SPLITS}, got {self.val_split!r}")
        if self.loss not in BIDR_LOSSES:
            raise SpecError(f"loss must be one of {BIDR_LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.debias_prior < 1.0:
            raise SpecError(f"debias_prior must be in [0, 1), got {self.debias_prior}")
        if self.mix_negatives < 0:
            raise SpecError(f"mix_negatives must be >= 0, got {self.mix_negatives}")
        if not (self.train_query_tower or self.train_doc_tower):
            raise SpecError("train at least one of the query and document towers")


@dataclass(frozen=True)
class EncoderFineTuneConfig:
    epochs: int = 1
    batch_size: int = 16
    hard_negatives: int = 1  # per query, from its shortlist
    lr: float = 2e-5
    temperature: float = 0.05  # cosine units (MiniLM embeddings are unit-norm)
    max_pairs: int | None = 512  # pairs per epoch (sampled); None: all
    max_seq_length: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_seq_length"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hard_negatives < 0:
            raise SpecError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
