"""ebr: embedding-based retrieval with IVF-PQ codes in RAM and exact re-rank from disk.

The data's path, one module per stage; each layer imports only the layers above it in this
list (checked in CI by import-linter, ``pyproject.toml``). Covering tests in brackets.

Core (no dependencies inside ebr but each other)
    ebr.errors             the exception tree                                          [all]
    ebr.metric             Metric, the higher-is-better score rule, normalize_rows     [test_search]
    ebr.spec               IndexSpec / BuildParams (build) and SearchParams (search),  [test_spec]
                           the L2-as-inner-product rule, build_nprobe
    ebr.types              SearchResult, SearchStats, ExternalId, JsonObject, Encoder
    ebr.filters            payload filters: parse (declared fields), SQL, in memory     [test_filters]

Input                      (ebr.io, ebr.data)
    ebr.io.vecs            .npy / .fvecs / .fbin readers and writers; sampled,         [test_vecs_io]
                           chunked and gathered rows of files larger than RAM;
                           RowPrefetch, the re-rank's hybrid (cold: read together) path
    ebr.io.manifest        manifest.json: format version, sha256 per file and of      [test_index]
                           itself (manifest_sha256), provenance
    ebr.io.layout          the fixed file names of an index directory
    ebr.io.beir            BEIR corpus/queries/qrels, cached corpus embeddings         [test_text]
    ebr.io.encoder         offline MiniLM text encoder (extra 'text'; lazy torch), on  [test_text]
                           torch or ONNX Runtime (exported once, fp32 or int8)
    ebr.data.synthetic     seeded clustered corpus + queries + planted qrels           [test_synthetic]

Codes                      (ebr.quant, ebr.towers, ebr.train_config)
    ebr.quant.faiss_index  faiss accessors: the parts of a coarse index, centroids and [test_index]
                           codebooks to and from arrays, per-call search parameters
    ebr.quant.additive     RQ / LSQ codes: bit packing, the L2 norm code, lift_rq      [test_rq]
                           (served by faiss' IVF-PQ scanner)
    ebr.quant.encode       documents into their lists, score-aware codes               [test_anisotropic]
    ebr.quant.listpoints   k-means points per IVF list: a list ranked by its best      [test_probe]
                           point (default up to 4,096 points, served at rank 128)
    ebr.quant.probe        the coarse probe: the lists' points, or a graph over the     [test_probe]
                           centroids, picks a query's lists (checked at open)
    ebr.quant.anisotropic  score-aware (ScaNN) code refinement and codebook refit      [test_anisotropic]
    ebr.quant.trainers     the trainer contract (fit -> Codebooks) and faiss k-means / [test_index]
                           OPQ / RQ / LSQ training
    ebr.towers             BiDR towers as numpy (documents at build, queries at search)[test_bidr]
    ebr.train_config       DistillConfig, BiDRConfig, EncoderFineTuneConfig (no torch) [test_train]

Training                   (ebr.train: the only place torch is imported; extra 'train')
    ebr.train.loop         the one training loop: epochs, early stop, best epoch,      [test_train]
                           time budget, progress bar
    ebr.train.losses       ListNet, KL-div, MSE, Margin-MSE, InfoNCE                   [test_train]
    ebr.train.distill_model the Distill-VQ student, teacher top-K, pseudo-queries,     [test_train]
                           query weighting
    ebr.train.distill_run  one Distill-VQ fit as steps (start, score-aware, epoch,     [test_train]
                           validation, export)
    ebr.train.distill_vq   DistillVQTrainer (a CodebookTrainer); with labelled pairs   [test_bidr]
                           also BiDR stage 1
    ebr.train.sampling     labelled pairs, validation splits, locality-centric batches [test_bidr]
    ebr.train.bidr         BiDR stage 2: towers trained on the coarse shortlists       [test_bidr]
    ebr.train.encoder_ft   BiDR with more compute: fine-tune MiniLM itself             [test_text]

Index (the on-disk format)  (ebr.index)
    ebr.index.trainers     the builder's choice of trainer (make_trainer)              [test_index]
    ebr.index.writer       train_codebooks, write_index: encode, write, manifest last  [test_index]
    ebr.index.publish      staging under a lock, stale cleanup, atomic swap, 0444      [test_hardening]
    ebr.index.reader       open_index: verify, map the coarse index and dense store    [test_index]
    ebr.index.guard        leases / stat checks: files changed under a search -> 503   [test_hardening]
    ebr.index.docs         docs.sqlite: row -> (id, payload JSON); id -> row           [test_live]
    ebr.index.wal          the write-ahead log: one CRC'd record per write batch       [test_live]
    ebr.index.logdir       <index>.live/: log and rows files, writer lock, log identity[test_live]
    ebr.index.segments     codes of new documents by the base's codebooks;             [test_live]
                           copy-on-write segments; quantization error (drift)
    ebr.index.view         LiveView: base + delta + tombstones, caught up from the log [test_live]
    ebr.index.live         LiveIndex: upsert / delete (fsync before ack), recovery     [test_live]
    ebr.index.compact      base + delta - tombstones -> new generation, no retraining  [test_live]
    ebr.index.retrain      compact, then new codebooks over the current documents      [test_live]
    ebr.index.sharded      sharded directories: train once, write shards, open         [test_shards]
    ebr.index.distributed  the sharded build on Ray Data (extra 'distributed')         [test_shards]

Search (request time)       (ebr.search)
    ebr.search.searcher    Searcher: coarse top-C over codes (the L2-as-IP score       [test_search]
                           conversion) -> exact re-rank -> top-k
    ebr.search.rerank      gather candidate rows from disk, exact scores, top-k        [test_search]
    ebr.search.exact       brute-force reference                                       [test_search]
    ebr.search.sharded     fan-out over shards, exact merge (ShardedSearcher)          [test_shards]
    ebr.search.live        LiveSearcher: base + delta, tombstones excluded, re-rank    [test_live]
                           from both dense stores; filtered search and its planner      [test_filters]

Evaluate                    (ebr.eval)
    ebr.eval.metrics       recall vs exact, recall / nDCG / MRR vs qrels               [test_eval]
    ebr.eval.sweep         nprobe x candidates sweep, faiss IVFPQ+RefineFlat peer      [test_eval]
    ebr.eval.report        JSON + Markdown + recall-vs-latency PNG                     [test_eval]

Client                      (beside ebr.eval; talks to the service over HTTP, extra 'client')
    ebr.client             Client / AsyncClient on httpx: typed results, API keys,     [test_client]
                           retries with backoff and jitter, errors as ebr's exceptions

Above ebr: ``index_build`` (CLI: cli, build, commands, evaluate, sources) and ``service``
(FastAPI: app, routes (search, documents, health, admin, ui), generations, openapi, deps,
schemas, settings; ray_serve; the web page's files in service/ui/).

Scores are always higher-is-better (L2 distances are negated); missing results are ``-1`` /
``-inf``. The candidate count C is called ``candidates`` everywhere.
"""

from __future__ import annotations

from ebr.errors import (
    CorruptFileError,
    EbrError,
    IndexFormatError,
    IndexNotReadyError,
    InputError,
    ManifestVersionError,
    SearchParamError,
    SpecError,
)
from ebr.index.reader import OpenIndex, open_index
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.search.exact import exact_search
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, IndexSpec, SearchParams
from ebr.types import SearchResult, SearchStats

__version__ = "0.1.0"

__all__ = [
    "BuildParams",
    "CorruptFileError",
    "EbrError",
    "IndexFormatError",
    "IndexNotReadyError",
    "IndexSpec",
    "InputError",
    "ManifestVersionError",
    "Metric",
    "OpenIndex",
    "SearchParamError",
    "SearchParams",
    "SearchResult",
    "SearchStats",
    "Searcher",
    "SpecError",
    "exact_search",
    "open_index",
    "write_index",
]
