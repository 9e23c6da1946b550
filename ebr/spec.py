"""Build-time and search-time parameters, as two separate frozen types.

:class:`IndexSpec` is the user-facing, faiss-factory-style description of the coarse index
(``"IVF256,PQ16"``, ``"OPQ16,IVF1024,PQ32x8"``, ``"IVF256,RQ16"``); it is parsed once, round-trips through
``str()``, and is stored in the manifest. :class:`BuildParams` adds the other build knobs.
:class:`SearchParams` is per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ebr.errors import SearchParamError, SpecError
from ebr.metric import Metric

__all__ = ["IndexSpec", "BuildParams", "SearchParams", "DENSE_DTYPES", "CODEBOOK_METHODS",
           "LIST_POINTS_MAX"]

_PART = {
    "opq": re.compile(r"^OPQ(\d+)(?:_(\d+))?$"),
    "ivf": re.compile(r"^IVF(\d+)$"),
    "pq": re.compile(r"^PQ(\d+)(?:x(\d+))?$"),
    "rq": re.compile(r"^RQ(\d+)(?:x(\d+))?$"),
    "lsq": re.compile(r"^LSQ(\d+)(?:x(\d+))?$"),
}
QUANTIZERS = ("pq", "rq", "lsq")
ADDITIVE = {"rq": "RQ", "lsq": "LSQ"}  # quantizer -> spec token: codes that sum full-d codewords
ADDITIVE_NBITS = (6, 12)  # codebooks of 64 to 4096: beam search and k-means cost grow with them
DENSE_DTYPES = ("float32", "float16")
CODEBOOK_METHODS = ("kmeans", "opq", "distill")
# list points (ebr.quant.listpoints): by default nlist x m <= 4,096 (one product of ~60 µs per
# query at d = 384), at most 16 per list; at most 64 on request
LIST_POINTS_TOTAL = 4096
LIST_POINTS_AUTO = 16
LIST_POINTS_MAX = 64


@dataclass(frozen=True)
class IndexSpec:
    """Coarse index layout: optional OPQ rotation, ``nlist`` IVF lists, then ``pq_m`` codes of
    ``pq_nbits`` per vector from a product quantizer (``PQ<M>``: M sub-spaces of d / M dims) or
    a residual quantizer (``RQ<M>[x<nbits>]``: M full-dimension codebooks of 2^nbits, default
    256, each coding what the previous ones left; more recall per byte, slower to train) or LSQ
    (``LSQ<M>[x<nbits>]``: the same additive codes, encoded jointly by local search rather than
    stage by stage; slower still). Under inner product an additive ``<M>`` is M codebooks; under
    L2 it is M - 1 codebooks and one code for each vector's norm term, which an L2 score needs
    (:func:`ebr.quant.additive.rq_stages`). Larger additive codebooks buy recall per byte
    with build time: ``RQ12x10`` (15 bytes) beats ``RQ16`` on the synthetic set.

    ``OPQ<M>_<d'>`` (``opq_dim``): the rotation also projects the vectors to d' dimensions
    before the IVF and the PQ (faiss' ``OPQMatrix(d, M, d')``, learned from a random start, not
    from a PCA: on 200k of the built-in generator a PCA start lost 1.8 points of re-ranked
    recall@10 and a PCA then a random rotation 0.2): the probe's graph, the rotation and the PQ's
    table all shrink with d', for some recall (the re-rank still scores the full vectors).
    Distill-VQ learns its centroids, codebooks and query map on top of that [d', d] rotation.

    :attr:`code_size` = ceil(``pq_m`` x ``pq_nbits`` / 8) bytes per vector: the RAM a document
    costs, besides its 8-byte id.
    """

    nlist: int
    pq_m: int
    pq_nbits: int = 8
    opq: bool = False
    quantizer: str = "pq"
    opq_dim: int | None = None

    def __post_init__(self) -> None:
        if self.nlist < 1:
            raise SpecError(f"nlist must be >= 1, got {self.nlist}")
        if self.pq_m < 1:
            raise SpecError(f"PQ M must be >= 1, got {self.pq_m}")
        if not 1 <= self.pq_nbits <= 16:
            raise SpecError(f"PQ nbits must be in [1, 16], got {self.pq_nbits}")
        if self.quantizer not in QUANTIZERS:
            raise SpecError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        lo, hi = ADDITIVE_NBITS
        if self.is_additive and not lo <= self.pq_nbits <= hi:
            raise SpecError(f"{ADDITIVE[self.quantizer]} codes must be {lo} to {hi} bits each, "
                            f"got {self.pq_nbits}")
        if self.is_additive and self.opq:
            raise SpecError(f"OPQ rotates for a product quantizer; {ADDITIVE[self.quantizer]} "
                            "codes whole vectors and has no use for it")
        if self.opq_dim is not None:
            if not self.opq:
                raise SpecError("opq_dim needs the OPQ rotation (OPQ<M>_<d'>)")
            if self.opq_dim < 1 or self.opq_dim % self.pq_m:
                raise SpecError(f"OPQ output dimension must be a positive multiple of PQ M="
                                f"{self.pq_m}, got {self.opq_dim}")

    @property
    def is_rq(self) -> bool:
        return self.quantizer == "rq"

    @property
    def is_additive(self) -> bool:
        """RQ or LSQ: each code byte picks a full-dimension codeword, the vector is their sum."""
        return self.quantizer in ADDITIVE

    def l2_as_ip(self, metric: Metric) -> bool:
        """The one rule of the served form: additive codes under L2 are served as inner product,
        each vector's norm term its last code (:mod:`ebr.quant.additive`); the searcher turns
        the served score s back into -|q - x^|^2 = 2 s - |q|^2."""
        return self.is_additive and metric is Metric.L2

    @classmethod
    def parse(cls, s: str) -> IndexSpec:
        """Parse ``[OPQ<M>,]IVF<nlist>,PQ<M>[x<nbits>]`` or ``IVF<nlist>,{RQ|LSQ}<M>[x<nbits>]``; raise
        :class:`SpecError` otherwise."""
        if not isinstance(s, str) or not s.strip():
            raise SpecError(f"index spec must be a non-empty string, got {s!r}")
        parts = [p.strip() for p in s.split(",")]
        opq_m: int | None = None
        opq_dim: int | None = None
        m_opq = _PART["opq"].match(parts[0]) if parts else None
        if m_opq:
            opq_m = int(m_opq.group(1))
            opq_dim = int(m_opq.group(2)) if m_opq.group(2) else None
            parts = parts[1:]
        expected = ("expected '[OPQ<M>[_<d'>],]IVF<nlist>,PQ<M>[x<nbits>]' or "
                    "'IVF<nlist>,RQ<M>[x<nbits>]' or 'IVF<nlist>,LSQ<M>[x<nbits>]'")
        if len(parts) != 2:
            raise SpecError(f"index spec {s!r}: {expected}")
        m_ivf = _PART["ivf"].match(parts[0])
        for q, token in ADDITIVE.items():
            m_aq = _PART[q].match(parts[1])
            if m_ivf and m_aq:
                if opq_m is not None:
                    raise SpecError(f"index spec {s!r}: OPQ applies to PQ, not {token}")
                return cls(nlist=int(m_ivf.group(1)), pq_m=int(m_aq.group(1)),
                           pq_nbits=int(m_aq.group(2)) if m_aq.group(2) else 8, quantizer=q)
        m_pq = _PART["pq"].match(parts[1])
        if not m_ivf or not m_pq:
            raise SpecError(f"index spec {s!r}: {expected}")
        pq_m = int(m_pq.group(1))
        if opq_m is not None and opq_m != pq_m:
            raise SpecError(f"index spec {s!r}: OPQ M ({opq_m}) must equal PQ M ({pq_m})")
        nbits = int(m_pq.group(2)) if m_pq.group(2) else 8
        return cls(nlist=int(m_ivf.group(1)), pq_m=pq_m, pq_nbits=nbits, opq=opq_m is not None,
                   opq_dim=opq_dim)

    def __str__(self) -> str:
        bits = f"x{self.pq_nbits}" if self.pq_nbits != 8 else ""
        if self.is_additive:
            return f"IVF{self.nlist},{ADDITIVE[self.quantizer]}{self.pq_m}{bits}"
        pq = f"PQ{self.pq_m}{bits}"
        opq = f"OPQ{self.pq_m}" + (f"_{self.opq_dim}" if self.opq_dim else "") + ","
        return (opq if self.opq else "") + f"IVF{self.nlist},{pq}"

    @property
    def code_size(self) -> int:
        """Bytes of PQ code per vector."""
        return (self.pq_m * self.pq_nbits + 7) // 8

    def check_dim(self, d: int) -> None:
        if self.opq_dim is not None and self.opq_dim > d:
            raise SpecError(f"OPQ output dimension {self.opq_dim} exceeds the vectors' {d} "
                            f"(spec {self})")
        if not self.is_additive and d % self.pq_m != 0 and self.opq_dim is None:
            raise SpecError(f"dimension {d} is not divisible by PQ M={self.pq_m} (spec {self})")

    def code_dim(self, d: int) -> int:
        """The dimension the IVF and the PQ see for d-dimensional vectors (a PQ spec)."""
        return self.opq_dim if self.opq_dim is not None else d


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides what ``write_index`` produces (recorded in the manifest).

    train_size: vectors sampled to train IVF + PQ (faiss wants >= 39 x nlist and >= 39 x 2^nbits;
        more costs k-means time linearly, less costs recall).
    dense_dtype: ``float16`` halves disk and re-rank I/O for a tiny score error (about 1e-3 relative).
    codebooks: ``kmeans`` (faiss IVFPQ), ``opq`` (rotation learned first; spec gets ``OPQ<M>``)
        or ``distill`` (Distill-VQ fine-tuning after k-means; needs the 'train' extra).
    list_points: k-means points kept per IVF list, by which the probe ranks the lists
        (:mod:`ebr.quant.listpoints`); 1: none, the centroids rank them; None (default):
        min(16, 4,096 // nlist), :attr:`points_per_list`.
    """

    spec: IndexSpec
    metric: Metric = Metric.IP
    dense_dtype: str = "float32"
    train_size: int = 100_000
    kmeans_niter: int = 20
    seed: int = 1234
    codebooks: str = "kmeans"
    normalize: bool = False  # L2-normalise inputs (cosine via inner product)
    extra: dict[str, Any] = field(default_factory=dict)
    list_points: int | None = None

    def __post_init__(self) -> None:
        if self.dense_dtype not in DENSE_DTYPES:
            raise SpecError(f"dense_dtype must be one of {DENSE_DTYPES}, got {self.dense_dtype!r}")
        if self.codebooks not in CODEBOOK_METHODS:
            raise SpecError(f"codebooks must be one of {CODEBOOK_METHODS}, got {self.codebooks!r}")
        if self.train_size < 1:
            raise SpecError(f"train_size must be >= 1, got {self.train_size}")
        if self.kmeans_niter < 1:
            raise SpecError(f"kmeans_niter must be >= 1, got {self.kmeans_niter}")
        if self.list_points is not None and (
                isinstance(self.list_points, bool) or not isinstance(self.list_points, int)
                or not 1 <= self.list_points <= LIST_POINTS_MAX):
            raise SpecError(f"list_points must be an integer in [1, {LIST_POINTS_MAX}] (1: "
                            f"none), got {self.list_points!r}")
        if self.codebooks == "opq" and not self.spec.opq:
            if self.spec.is_additive:
                raise SpecError(f"codebooks 'opq' needs a PQ spec; {self.spec} has no rotation "
                                "to learn")
            object.__setattr__(self, "spec", replace(self.spec, opq=True))
        if self.spec.l2_as_ip(self.metric) and self.spec.pq_m < 2:
            raise SpecError(f"{self.spec}: under L2 one code byte holds each vector's norm term; "
                            "it needs M >= 2 (M - 1 codebooks + the norm byte)")

    @property
    def points_per_list(self) -> int:
        """The list points this build keeps per list: ``list_points``, or by default as many
        as keep nlist x m <= LIST_POINTS_TOTAL, at most LIST_POINTS_AUTO (1: none)."""
        if self.list_points is not None:
            return self.list_points
        return max(1, min(LIST_POINTS_AUTO, LIST_POINTS_TOTAL // self.spec.nlist))


@dataclass(frozen=True)
class SearchParams:
    """Per-request knobs of the two-stage search.

    k: results returned. nprobe: IVF lists scanned (recall and latency grow with it).
    candidates: candidates the PQ stage hands to the exact re-rank (C); each costs one dense
        row read from disk. rerank=False returns the coarse (PQ-approximate) ranking.
    """

    k: int = 10
    nprobe: int = 16
    candidates: int = 100
    rerank: bool = True

    def validate(self, nlist: int, ntotal: int, max_candidates: int | None = None
                 ) -> SearchParams:
        """Check ranges against an open index (and a caller's cap on candidates): the one check
        of these parameters, the HTTP layer's too. Returns self; raises
        :class:`SearchParamError` naming the parameter."""
        if not isinstance(self.k, int) or self.k < 1:
            raise SearchParamError(f"k must be an integer >= 1, got {self.k!r}", "k",
                                   f"must be >= 1, got {self.k!r}")
        _in_range("nprobe", self.nprobe, nlist, "nlist")
        limit, why = max(ntotal, 1), "documents in the index"
        if max_candidates is not None and max_candidates < limit:
            limit, why = max_candidates, "the server's limit"
        _in_range("candidates", self.candidates, limit, why)
        if self.k > self.candidates:
            raise SearchParamError(
                f"k ({self.k}) must not exceed candidates ({self.candidates}): the re-rank can only "
                "return candidates it was given", "candidates",
                f"must be >= k ({self.k}), got {self.candidates}")
        return self

    @classmethod
    def from_oversampling(cls, k: int, oversampling: float, nprobe: int, ntotal: int,
                          rerank: bool = True) -> SearchParams:
        """Qdrant-style ``oversampling``: candidates = ceil(k x oversampling), capped at ntotal."""
        if not oversampling >= 1.0:
            raise SearchParamError(f"oversampling must be >= 1, got {oversampling!r}")
        kc = min(int(-(-k * oversampling // 1)), ntotal)
        return cls(k=k, nprobe=nprobe, candidates=max(kc, min(k, ntotal)), rerank=rerank)


def _in_range(name: str, value: object, top: int, why: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= top:
        problem = f"must be <= {top} ({why}), got {value!r}" if isinstance(value, int) and \
            value > top else f"must be an integer >= 1, got {value!r}"
        raise SearchParamError(f"{name} must be in [1, {top}] ({why}), got {value!r}", name,
                               problem)


def build_nprobe(nprobe: int | None, nlist: int) -> int:
    """The nprobe of build-time searches (training shortlists, held-out validation): the one
    given, else a quarter of the lists; never more than nlist."""
    return min(nprobe or max(1, nlist // 4), nlist)
