"""Service settings from ``EBR_*`` environment variables (or keyword arguments in tests).

Each default documents its trade-off. Unknown or malformed values fail at startup with the
variable's name, never at the first request.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ebr.spec import SearchParams

__all__ = ["Settings"]

logger = logging.getLogger("service")
ENV_ALIASES = {"EBR_DEFAULT_K_COARSE": "default_candidates", "EBR_MAX_K_COARSE": "max_candidates"}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index_dir: str = Field(description="index directory written by index_build")
    verify_checksums: bool = Field(
        True, description="sha256 every index file at startup (reads each byte once; turn off "
        "for very large indexes: sizes are still checked)")
    coarse_probe: Literal["auto", "flat", "hnsw", "points"] = Field(
        "auto", description="how a query's IVF lists are chosen: auto, by the lists' points "
        "when the index has them (the default build), else a graph over the centroids when "
        "there are >= 1,024 lists and it finds the lists scoring every centroid finds (checked "
        "at startup), else every centroid scored; flat: every centroid scored; hnsw: the graph "
        "always; points: the lists' points always (startup fails where either cannot serve)")
    text_encoder: Literal["auto", "off"] = Field(
        "auto", description="auto: load the offline MiniLM at startup when the index records "
        "it (about 8 s and torch in memory); off: vector queries only")
    default_nprobe: int = Field(
        SearchParams.nprobe, ge=1, description="IVF lists scanned when a request gives none "
        "(at most nlist); recall and latency grow with it (default: ebr.spec.SearchParams')")
    default_candidates: int = Field(
        SearchParams.candidates, ge=1, description="candidates re-ranked when a request gives "
        "neither candidates nor oversampling; each is one row read (default: SearchParams')")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask")
    max_candidates: int = Field(10_000, ge=1, description="largest candidate count (bounds the "
                              "disk reads one request can cause)")
    max_batch: int = Field(256, ge=1, description="largest number of searches in one batch, "
                           "and of documents in one write (PUT /documents, delete)")
    max_hits_per_request: int = Field(
        10_000, ge=1, description="most hits one request may ask for: the sum of k over its "
        "searches (k x batch); bounds the reply. Over it: 413")
    max_candidates_per_request: int = Field(
        100_000, ge=1, description="most coarse candidates one request may ask to re-rank: the "
        "sum over its searches (each is one dense row read). Over it: 413")
    max_vectors_per_request: int = Field(
        1_000, ge=0, description="most dense vectors one reply may carry (the sum of k over "
        "searches with with_vector); a 384-d vector is ~8 KB of JSON. Over it: 413")
    max_exact_per_request: int = Field(
        4, ge=0, description="most exact (brute-force) searches in one request; each reads the "
        "whole dense store. Over it: 413")
    max_inflight_per_client: int = Field(
        32, ge=0, description="requests one client (its API key, else its address) may have "
        "in flight per worker; more are answered 429 with Retry-After (0: no limit)")
    micro_batch_inflight: int = Field(2, ge=0, le=64, description="adaptive micro-batching "
                                      "of /search: at most this many batched searches per "
                                      "parameter set run at once per worker; requests arriving "
                                      "meanwhile queue and run together (0: off)")
    micro_batch_max: int = Field(32, ge=1, le=1024, description="most /search requests in one "
                                 "micro-batch")
    text_batch_max: int = Field(64, ge=0, le=1024, description="text queries arriving while "
                                "the encoder is busy are encoded together in one call, up to "
                                "this many (no timer: alone, a text is encoded at once; 0: "
                                "each text encoded alone)")
    encoder_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx", description="what runs the text encoder: onnx (ONNX Runtime, the same vectors "
        "as torch, ~3x faster for a text alone; exported once to EBR_ENCODER_CACHE_DIR), "
        "onnx-int8 (int8 weights: ~2x faster again in a batch, cosine to torch ~0.99) or torch "
        "(sentence-transformers); onnx falls back to torch when ONNX Runtime is missing")
    encoder_lanes: int = Field(1, ge=1, le=64, description="text-encoder calls that run at "
                               "once per worker, each on its own thread with its own batch and "
                               "cores / (workers x lanes) threads (ONNX Runtime; torch runs one "
                               "at a time). 2 on 2 cores: +3-5% text queries/s at 32 clients, "
                               "but a lone text takes 1.7x as long (bench/bench_text.py)")
    encoder_threads: int = Field(0, ge=0, le=256, description="threads of each text-encoder "
                                 "call; 0: cores / (workers x lanes), at least 1")
    encoder_batch: int = Field(0, ge=0, le=1024, description="the most rows in one encoder "
                               "forward pass: a call's texts are sorted by length (short "
                               "ones may share a row) and split into the passes "
                               "that compute the fewest padded tokens (each pass also costs a "
                               "fixed run); 0: auto, 8 on ONNX Runtime, 64 on torch")
    watch_seconds: float = Field(2.0, ge=0, description="look this often whether index_dir "
                                 "holds a new build (flipped symlink, renamed directory) and "
                                 "load it, verified, as /admin/reload does; this is what "
                                 "switches every worker of a multi-worker server (0: off)")
    file_leases: bool = Field(True, description="hold a read lease (Linux) on the mapped index "
                              "files: a process that opens one for writing or truncates it is "
                              "held back until searches in flight finish, and the index answers "
                              "503 until a whole build is published (ebr.index.guard); off: a "
                              "stat check before each search instead")
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads per faiss call; 1 lets the "
                               "server's thread pool run requests in parallel instead")
    workers: int = Field(1, ge=1, le=256, description="worker processes of `python -m service` "
                         "(each maps the same index; one per core measured best)")
    search_threads: int = Field(0, ge=0, le=1024, description="threads per worker that run "
                                "searches, batched searches and text encoding; 0: auto, "
                                "max(4, 2 x cores / (workers x faiss_threads)); above the core "
                                "count only helps while rows come from disk (cold page cache)")
    api_keys: tuple[str, ...] = Field((), description="bearer keys for the read endpoints "
                                      "(search, index); empty: read endpoints are open",
                                      repr=False)
    admin_keys: tuple[str, ...] = Field((), description="bearer keys for /admin/*; empty: the "
                                        "admin endpoints are disabled", repr=False)
    write_keys: tuple[str, ...] = Field((), description="bearer keys for the write endpoints "
                                        "(PUT /documents, POST /documents/delete) and the read "
                                        "ones; admin keys may write too; with neither set, "
                                        "writes are disabled", repr=False)
    compact_delta_fraction: float = Field(
        0.2, ge=0, description="compact automatically (one worker, in the background) once the "
        "rows written since the base exceed this fraction of it, or tombstones do (0: never; "
        "`index_build compact` runs it by hand)")
    compact_min_rows: int = Field(10_000, ge=1, description="never compact automatically "
                                  "below this many delta rows plus tombstones")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body")
    log_format: Literal["json", "text"] = "json"
    access_log: bool = Field(False, description="one log line per request (uvicorn's access "
                             "log, with the request id): 15% of a worker's event-loop time at "
                             "full load in a profile; /metrics counts every request by "
                             "endpoint and status anyway")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @field_validator("api_keys", "admin_keys", "write_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(k.strip() for k in v.split(",") if k.strip())
        return v

    @field_validator("api_keys", "admin_keys", "write_keys")
    @classmethod
    def _long_enough(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(k) < 16 for k in v):
            raise ValueError("keys must be at least 16 characters")
        return v

    def resolved_search_threads(self, cores: int | None = None) -> int:
        """``search_threads``, with 0 resolved from the core count and the other two sizes."""
        if self.search_threads:
            return self.search_threads
        cores = cores or os.cpu_count() or 1
        return max(4, 2 * cores // (self.workers * self.faiss_threads))

    def resolved_encoder_lanes(self, runtime: str | None = None) -> int:
        """``encoder_lanes`` for ``runtime`` (default: ``encoder_runtime``); 1 on torch (the
        encoder serializes its calls)."""
        return 1 if (runtime or self.encoder_runtime) == "torch" else self.encoder_lanes

    def resolved_encoder_batch(self, runtime: str | None = None) -> int:
        """``encoder_batch``, with 0 resolved for ``runtime`` (default: ``encoder_runtime``)."""
        if self.encoder_batch:
            return self.encoder_batch
        return 64 if (runtime or self.encoder_runtime) == "torch" else 8

    def resolved_encoder_threads(self, cores: int | None = None,
                                 runtime: str | None = None) -> int:
        """``encoder_threads``, with 0 resolved: the worker's cores shared by its lanes."""
        if self.encoder_threads:
            return self.encoder_threads
        cores = cores or os.cpu_count() or 1
        return max(1, cores // (self.workers * self.resolved_encoder_lanes(runtime)))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {name: env[f"EBR_{name.upper()}"] for name in cls.model_fields
                  if f"EBR_{name.upper()}" in env}
        for old, name in ENV_ALIASES.items():  # the names before 0.2, still read
            if old in env and name not in values:
                logger.warning("%s is the old name of EBR_%s; it is still read", old,
                               name.upper())
                values[name] = env[old]
        try:
            return cls(**values)
        except ValidationError as e:
            errs = "; ".join(f"EBR_{str(err['loc'][0]).upper()}: {err['msg']}"
                             for err in e.errors())
            raise ValueError(f"invalid settings: {errs}") from None
