"""HTTP request and response models (pydantic lives here and nowhere in ``ebr``).

Knob names follow the peers: ``nprobe`` (faiss, Milvus), ``oversampling`` (Qdrant; candidates =
ceil(k x oversampling)) with ``refine_factor`` (LanceDB) as an alias, or ``k_coarse``
(alias ``candidates``) as an explicit count.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SearchParamsIn(_Strict):
    nprobe: int | None = Field(None, ge=1, description="IVF lists to scan (default: server "
                               "setting, clamped to nlist)")
    k_coarse: int | None = Field(None, ge=1, alias="candidates",
                                 description="candidates handed to the exact re-rank")
    oversampling: float | None = Field(None, ge=1.0, le=1000.0, allow_inf_nan=False,
                                       alias="refine_factor",
                                       description="candidates = ceil(k x oversampling)")
    rerank: bool = Field(True, description="false: return the coarse PQ ranking")
    exact: bool = Field(False, description="brute force over every dense vector (reference)")

    @model_validator(mode="after")
    def _one_candidate_knob(self) -> SearchParamsIn:
        if self.k_coarse is not None and self.oversampling is not None:
            raise ValueError("give either k_coarse (candidates) or oversampling "
                             "(refine_factor), not both")
        return self


class SearchRequest(_Strict):
    vector: list[FiniteFloat] | None = Field(None, min_length=1, max_length=65536,
                                             description="query vector (index dimension)")
    text: str | None = Field(None, min_length=1, max_length=10_000,
                             description="query text (indexes that record their encoder)")
    k: int = Field(10, ge=1, description="results to return")
    params: SearchParamsIn = Field(default_factory=SearchParamsIn)
    with_vector: bool = Field(False, alias="return_vectors",
                              description="include each hit's dense vector")

    @model_validator(mode="after")
    def _vector_xor_text(self) -> SearchRequest:
        if (self.vector is None) == (self.text is None):
            raise ValueError("give exactly one of 'vector' or 'text'")
        return self


class BatchRequest(_Strict):
    searches: list[SearchRequest] = Field(min_length=1, description="searches, answered in order")


class Hit(BaseModel):
    id: str | int
    score: float
    vector: list[float] | None = None


class Stats(BaseModel):
    mode: Literal["two_stage", "coarse_only", "exact"]
    nprobe: int | None
    k_coarse: int | None
    candidates: int
    reranked: int
    returned: int
    dense_bytes_read: int
    coarse_ms: float
    rerank_ms: float
    batch: int | None = Field(None, description="queries of the batched search this one ran in")
    index_version: str


class SearchResult(BaseModel):
    hits: list[Hit]
    stats: Stats


class SearchResponse(BaseModel):
    result: SearchResult
    status: Literal["ok"] = "ok"
    time: float = Field(description="server-side seconds")


class BatchResponse(BaseModel):
    result: list[SearchResult]
    status: Literal["ok"] = "ok"
    time: float


class ErrorBody(BaseModel):
    error: str


class ErrorResponse(BaseModel):
    status: ErrorBody


class IndexInfo(BaseModel):
    spec: str
    metric: str
    count: int
    dim: int
    format_version: str
    dense_dtype: str
    index_version: str
    generation: int
    codebooks: dict[str, Any]
    encoder: dict[str, Any] | None
    text_queries: bool
    towers: dict[str, Any] | None = Field(
        None, description="BiDR stage 2: how the towers were trained, whether they are applied")
    memory: dict[str, float]
    build: dict[str, Any]


class Health(BaseModel):
    status: str
    reasons: list[str] = []


class ReloadResponse(BaseModel):
    status: Literal["ok"] = "ok"
    generation: int
    index_version: str
