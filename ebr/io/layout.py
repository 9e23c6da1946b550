"""The fixed file names of an index directory. A directory without ``manifest.json`` is unfinished."""

from __future__ import annotations

MANIFEST = "manifest.json"
COARSE = "coarse.index"  # faiss IndexIVFPQ (or OPQ pre-transform), opened with IO_FLAG_MMAP
DENSE = {"float32": "dense.fbin", "float16": "dense.f16bin"}  # (n, d) header + rows
IDS_INT = "ids.i64bin"  # external integer ids, row i -> id
IDS_STR = "ids.txt"  # external string ids, one per line (no newlines inside ids)
QUERY_MAP = "query_map.fbin"  # learned [d, d] map applied to queries before the coarse search
QUERY_TOWER = "query_tower.npz"  # BiDR query tower, applied to the query of the exact re-rank
DOC_TOWER = "doc_tower.npz"  # BiDR document tower; the dense store already holds its output
DOCS = "docs.sqlite"  # row -> (external id, payload JSON): ebr.index.docs
CODEBOOKS = "codebooks.index"  # the trained, empty coarse index in its build form: new
#   documents of a living index are encoded with it (ebr.index.live)
LIST_CENTROIDS = "list_centroids.fbin"  # learned codebooks: the lists documents go to
LIST_POINTS = "list_points.fbin"  # [nlist * m, d]: the points that rank the lists (probe)
LIVE_SUFFIX = ".live"  # <index dir>.live/: the write-ahead log and delta of a living index
