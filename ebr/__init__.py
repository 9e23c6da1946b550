"""ebr: embedding-based retrieval with IVF-PQ codes in RAM and exact re-rank from disk.

The data's path, one module per stage (covering test in brackets):

Build
    ebr.data.synthetic     seeded clustered corpus + held-out queries + planted qrels  [test_synthetic]
    ebr.io.vecs            .npy / .fvecs / .fbin / .f16bin readers and writers         [test_vecs_io]
    ebr.io.beir            BEIR corpus/queries/qrels, cached corpus embeddings         [test_text]
    ebr.io.encoder         offline MiniLM text encoder (extra 'text'; lazy torch)      [test_text]
    ebr.spec               IndexSpec / BuildParams (build) and SearchParams (search)   [test_spec]
    ebr.quant.trainers codebook trainers (k-means, OPQ, RQ, LSQ) -> trained index;  [test_index]
                           from_faiss / to_faiss / add_with_assignment for learned ones;
                           lift_rq: RQ / LSQ codes served by faiss' IVF-PQ scanner      [test_rq]
    ebr.quant.anisotropic  score-aware RQ / LSQ codes (ScaNN's loss): code refinement  [test_anisotropic]
                           and codebook refit, numpy
    ebr.train.losses       ListNet, KL-div, MSE, Margin-MSE (torch; extra 'train')     [test_train]
    ebr.train.distill_vq   Distill-VQ: centroids + codebooks + query map, distilled    [test_train]
                           from the dense scores (DistillVQTrainer plugs into write_index);
                           with labelled pairs also BiDR stage 1 (contrastive codes)   [test_bidr]
    ebr.train.sampling     labelled pairs, validation splits, the locality-centric     [test_bidr]
                           batch sampler over the query <-> shortlist graph (numpy)
    ebr.train.bidr         BiDR stage 2: query/document towers trained on the coarse   [test_bidr]
                           index's shortlists (BiDRDenseTrainer -> write_index)
    ebr.train.encoder_ft   BiDR with more compute: fine-tune MiniLM itself             [test_text]
    ebr.towers             the towers as numpy (build: documents; search: queries)     [test_bidr]
    ebr.index.writer       write_index: atomic index directory, manifest last          [test_index]
    ebr.io.manifest        manifest.json: format version, sha256 per file, provenance  [test_index]

Search
    ebr.index.reader       open_index: verify, mmap the coarse index and dense store   [test_index]
    ebr.search.searcher    Searcher: coarse top-C over codes -> exact re-rank -> top-k [test_search]
    ebr.search.rerank      gather candidate rows from disk, exact scores, top-k        [test_search]
    ebr.search.exact       brute-force reference                                       [test_search]

Scale out
    ebr.shards             train once, shard indexes from one set of codebooks,        [test_shards]
                           open_sharded, exact merge (ShardedSearcher)
    ebr.distributed        the sharded build on Ray Data (extra 'distributed')         [test_shards]
    (service.ray_serve     shards as Ray Serve deployments behind the ebr router)      [test_shards]

Evaluate
    ebr.eval.metrics       recall vs exact, recall / nDCG / MRR vs qrels               [test_eval]
    ebr.eval.sweep         nprobe x candidates sweep, faiss IVFPQ+RefineFlat peer        [test_eval]
    ebr.eval.report        JSON + Markdown + recall-vs-latency PNG                     [test_eval]

Errors: ``ebr.errors`` (the tree is in its docstring). Scores are always higher-is-better
(L2 distances are negated); missing results are ``-1`` / ``-inf``.
The search path (``ebr.io``, ``ebr.index``, ``ebr.search``) never imports torch; only
``ebr.train`` does.
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
