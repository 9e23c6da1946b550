"""HTTP request and response models (pydantic lives here and nowhere in ``ebr``).

Knob names follow the peers: ``nprobe`` (faiss, Milvus), and the candidate count C handed to the
re-rank as ``candidates`` (alias ``k_coarse``, ebr's name before 0.2) or as a factor of k,
``oversampling`` (Qdrant; candidates = ceil(k x oversampling)) with ``refine_factor`` (LanceDB)
as an alias. The same word, ``candidates``, names C in the library (``SearchParams``), the CLI,
the settings and the reply's stats (where ``found`` counts the candidates there were).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _integral(v: Any) -> Any:
    """JSON Schema's integer includes 3.0: take it as 3 (never "3" or true)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Int = Annotated[int, BeforeValidator(_integral)]  # an integer as JSON Schema counts them
PosInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
Factor = Annotated[float, Field(ge=1.0, le=1000.0, allow_inf_nan=False)]
MAX_COMPONENT = 1e15  # |query component|: float32 scores of products stay finite
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, json_schema_extra={
    "minimum": -MAX_COMPONENT, "maximum": MAX_COMPONENT})]  # checked by service.routes.search


DocId = Annotated[int | Annotated[str, Field(min_length=1, max_length=1024)], Field(
    description="the document's id: an integer or a string, as the index was built")]
FieldName = Annotated[str, Field(min_length=1, max_length=256)]


class _Strict(BaseModel):
    """Request models: unknown fields refused, and no coercion (``"k": "3"``, ``"k": true`` and
    vectors of numeric strings are 422, as the schema says)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _at_most_one(*names: str) -> dict[str, Any]:
    """JSON Schema: no two of ``names`` together."""
    return {"not": {"anyOf": [{"required": [a, b]} for i, a in enumerate(names)
                              for b in names[i + 1:]]}}


def _no_null(v: Any) -> Any:
    if v is None:
        raise ValueError("must not be null (leave the field out)")
    return v


def _drop_null(schema: dict[str, Any]) -> None:
    """Field schema: an optional field that may be left out but not sent as null."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    schema.pop("default", None)


def _opt(**kw: Any) -> Any:
    """An optional field: may be left out (None), not sent as null."""
    return Field(None, json_schema_extra=_drop_null, **kw)


CANDIDATE_KNOBS = ("candidates", "k_coarse", "oversampling", "refine_factor")


class SearchParamsIn(_Strict):
    """Per-search knobs. The candidate count is given at most one way: ``candidates`` (alias
    ``k_coarse``) as a count, or ``oversampling`` (alias ``refine_factor``, LanceDB) as a
    factor of k. The count must be >= k (a rule JSON Schema cannot state)."""

    model_config = ConfigDict(json_schema_extra=_at_most_one(*CANDIDATE_KNOBS))

    nprobe: PosInt | None = _opt(description="IVF lists to scan (default: server "
                               "setting, clamped to nlist)")
    candidates: PosInt | None = _opt(description="candidates handed to the exact "
                                 "re-rank (>= k)")
    k_coarse: PosInt | None = _opt(description="alias of candidates")
    oversampling: Factor | None = _opt(
                                       description="candidates = ceil(k x oversampling)")
    refine_factor: Factor | None = _opt(
                                        description="alias of oversampling (LanceDB)")
    rerank: bool = Field(True, description="false: return the coarse PQ ranking")
    exact: bool = Field(False, description="brute force over every dense vector (reference)")

    _not_null = field_validator("nprobe", *CANDIDATE_KNOBS, mode="before")(_no_null)

    @model_validator(mode="after")
    def _one_candidate_knob(self) -> SearchParamsIn:
        given = [n for n in CANDIDATE_KNOBS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of candidates (k_coarse) or oversampling "
                             f"(refine_factor), not both: got {', '.join(given)}")
        if self.k_coarse is not None:
            self.candidates = self.k_coarse
        if self.refine_factor is not None:
            self.oversampling = self.refine_factor
        return self


class SearchRequest(_Strict):
    """One search: exactly one of ``vector`` or ``text``."""

    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["vector"]}, {"required": ["text"]}],
        **_at_most_one("with_vector", "return_vectors")})

    vector: Annotated[list[FiniteFloat], Field(min_length=1, max_length=65536)] | None = _opt(
        description="query vector (index dimension)")
    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = _opt(
        description="query text (indexes that record their encoder)")
    k: Int = Field(10, ge=1, description="results to return")
    params: SearchParamsIn = Field(default_factory=SearchParamsIn)
    with_vector: bool | None = _opt(
        description="include each hit's dense vector (default false)")
    return_vectors: bool | None = _opt(description="alias of with_vector")
    filter: dict[str, Any] | None = _opt(
        description="only documents whose payload satisfies it (must / should / must_not of "
        "match value / any, range, has_id on the index's declared fields); the reply has "
        "min(k, matches) hits and stats.matches")
    with_payload: bool | Annotated[list[FieldName], Field(min_length=1, max_length=100)] = Field(
        False, description="include each hit's payload: true for all of it, or the top-level "
        "fields to return")
    with_coarse: bool = Field(False, description="include each hit's coarse (code) score and "
                              "its rank among the coarse candidates: what the exact re-rank "
                              "changed (two-stage searches without a filter; costs one more "
                              "coarse search)")

    _not_null = field_validator("vector", "text", "with_vector", "return_vectors", "filter",
                                mode="before")(_no_null)

    @model_validator(mode="after")
    def _vector_xor_text(self) -> SearchRequest:
        if (self.vector is None) == (self.text is None):
            raise ValueError("give exactly one of 'vector' or 'text'")
        if self.with_vector is not None and self.return_vectors is not None:
            raise ValueError("give with_vector or its alias return_vectors, not both")
        if self.return_vectors is not None:
            self.with_vector = self.return_vectors
        return self


class BatchRequest(_Strict):
    searches: list[SearchRequest] = Field(min_length=1, description="searches, answered in order")


class DocumentIn(_Strict):
    """One document to insert or replace: exactly one of ``vector`` or ``text``."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["vector"]},
                                                           {"required": ["text"]}]})

    id: DocId
    vector: Annotated[list[FiniteFloat], Field(min_length=1, max_length=65536)] | None = _opt(
        description="the document's embedding (index dimension)")
    text: Annotated[str, Field(min_length=1, max_length=100_000)] | None = _opt(
        description="the document's text (indexes that record their encoder)")
    payload: dict[str, Any] | None = _opt(description="a JSON object stored with it")

    _not_null = field_validator("vector", "text", "payload", mode="before")(_no_null)

    @model_validator(mode="after")
    def _vector_xor_text(self) -> DocumentIn:
        if (self.vector is None) == (self.text is None):
            raise ValueError("give exactly one of 'vector' or 'text'")
        return self


class UpsertRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1, description="inserted, or replacing the "
                                        "documents with the same ids; all or nothing")


class DeleteRequest(_Strict):
    ids: list[DocId] = Field(min_length=1, description="ids to delete (unknown ones are "
                             "skipped)")


class WriteResult(BaseModel):
    status: Literal["acknowledged"] = Field("acknowledged", description="in the write-ahead "
                                            "log on disk (fsync): it survives a crash")
    operation_id: int = Field(description="the log sequence number of the write")
    count: int = Field(description="documents written, or deleted ones that existed")
    time: float


class DocumentOut(BaseModel):
    id: str | int
    payload: dict[str, Any] | None = None
    vector: list[float] | None = Field(None, description="with ?with_vector=true: the stored "
                                       "dense vector (normalised as the index stores it)")


class Hit(BaseModel):
    id: str | int
    score: float
    coarse_score: float | None = Field(None, description="with with_coarse: the score the "
                                       "codes gave it")
    coarse_rank: int | None = Field(None, description="with with_coarse: its rank (0 first) "
                                    "in the coarse candidate list")
    vector: list[float] | None = None
    payload: dict[str, Any] | None = Field(None, description="with with_payload; absent when "
                                           "the document has none")


class Stats(BaseModel):
    mode: Literal["two_stage", "coarse_only", "exact"]
    nprobe: Int | None = Field(None, description="absent in exact mode")
    candidates: Int | None = Field(None, description="candidates asked of the coarse stage (C); "
                                   "absent in exact mode")
    found: int = Field(description="candidates it found (fewer when the probed lists hold "
                       "fewer); every row in exact mode")
    reranked: int
    returned: int
    dense_bytes_read: int
    coarse_ms: float
    rerank_ms: float
    batch: int | None = Field(None, description="queries of the batched search this one ran in")
    matches: int | None = Field(None, description="with a filter: the documents it matches")
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


class LiveInfo(BaseModel):
    epoch: int = Field(description="compactions since the index was built")
    applied_lsn: int = Field(description="log records folded into the base by compaction")
    last_lsn: int = Field(description="last log record applied by this worker")
    log_bytes: int
    delta_rows: int = Field(description="rows written since the base (replaced ones too)")
    delta_live: int
    tombstones: int = Field(description="deleted or replaced rows, base and delta")
    drift: float | None = Field(None, description="quantization error of the written "
                                "documents / that of the base's, on the same codebooks: "
                                "well above 1, retrain (index_build retrain)")
    compaction: dict[str, Any] | None = Field(None, description="the last compaction")
    writable: bool


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
    encoder_runtime: str | None = Field(None, description="what runs the text encoder here: "
                                        "onnx, onnx-int8 or torch (EBR_ENCODER_RUNTIME)")
    towers: dict[str, Any] | None = Field(
        None, description="BiDR stage 2: how the towers were trained, whether they are applied")
    memory: dict[str, float]
    build: dict[str, Any]
    refused: RefusedBuild | None = Field(None, description="a newer build at the index "
                                         "directory that failed verification")
    live: LiveInfo | None = Field(None, description="writes since the base was built")
    payloads: int | None = Field(None, description="base documents with a payload")
    fields: dict[str, str] = Field(default_factory=dict, description="payload fields that "
                                   "filters take, {name: kind}")
    manifest_sha256: str = Field(description="checksum of the served build's manifest")


class RecallRow(BaseModel):
    nprobe: int
    candidates: int
    p50_ms: float
    model_config = ConfigDict(extra="allow")  # recall@<k>


class RecallReport(BaseModel):
    rows: list[RecallRow]
    queries: int
    k: int
    seed: int
    truth: str
    seconds: float
    generation: int
    index_version: str


class RefusedBuild(BaseModel):
    index_version: str | None = Field(None, description="its version, when its manifest was "
                                      "readable")
    reason: str
    at: str = Field(description="UTC time of the refusal")


class Health(BaseModel):
    status: str
    reasons: list[str] = []
    generation: int | None = Field(None, description="generation served (1 = first open)")
    index_version: str | None = Field(None, description="version of the build served")
    refused: RefusedBuild | None = Field(None, description="a newer build at the index "
                                         "directory that failed verification (the served one "
                                         "stays)")


class ReloadResponse(BaseModel):
    status: Literal["ok"] = "ok"
    generation: int
    index_version: str
