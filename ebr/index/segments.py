"""The delta segment's codes: new documents coded with the base's own codebooks.

``codebooks.index`` (written by the build) is the trained, empty coarse index in its build
form; :func:`load_codebooks` rebuilds the :class:`~ebr.quant.trainers.Codebooks` from it, so a
document written later is assigned to a list and coded exactly as the build would have done
(Distill-VQ's and OPQ's codebooks, RQ / LSQ codes lifted to the served form included).
Segments are copy-on-write (:func:`merged`): a search holds the pair it started with.
"""

from __future__ import annotations

import faiss
import numpy as np

from ebr.errors import WritesUnsupportedError
from ebr.index.reader import OpenIndex
from ebr.io.vecs import read_bin
from ebr.quant.encode import ScoreAware
from ebr.quant.trainers import Codebooks

__all__ = ["load_codebooks", "merged", "quantization_error", "stacked", "RECENT_ROWS"]


def load_codebooks(base: OpenIndex) -> Codebooks:
    """The codebooks that encoded the base, as the build held them (``codebooks.index``); for
    an index built before they were stored, the base's own IVF-PQ emptied (its served form is
    its build form). Additive codes (RQ / LSQ) of such an old index cannot be re-encoded."""
    m = base.manifest
    enc = m.codebooks.get("encoding") if isinstance(m.codebooks, dict) else None
    if isinstance(enc, dict) and enc.get("index") in m.files:
        index = faiss.read_index(str(base.path / enc["index"]))
        centroids = None
        if enc.get("list_centroids"):
            centroids = np.array(read_bin(base.path / enc["list_centroids"], mmap=False))
        sa = enc.get("score_aware")
        score_aware = None if not sa else ScoreAware(
            eta=float(sa["eta"]), passes=int(sa["passes"]),
            query_map=base.query_map if sa.get("query_map") else None)
        return Codebooks(index=index, metric=base.metric, list_centroids=centroids,
                         query_map=base.query_map, score_aware=score_aware)
    if base.l2_as_ip or base.ivfpq.d != base.dim:
        raise WritesUnsupportedError(
            f"{base.path}: built by an ebr that did not store its codebooks, with additive "
            "(RQ/LSQ) codes: rebuild it to take writes")
    index = faiss.clone_index(base.coarse)
    index.reset()
    return Codebooks(index=index, metric=base.metric, query_map=base.query_map)


RECENT_ROWS = 2048  # rows in the small, copied-per-write part of the delta segment


def merged(segment: faiss.Index, codes: faiss.Index, add_id: int) -> faiss.Index:
    """A copy of ``segment`` with the lists of ``codes`` appended (ids + ``add_id``).
    Neither input changes (faiss' merge_from empties its source: it gets a copy)."""
    out = faiss.clone_index(segment)
    source = faiss.clone_index(codes)  # held here until the merge is done
    ivf = faiss.extract_index_ivf(out)
    ivf.merge_from(faiss.extract_index_ivf(source), add_id)
    out.ntotal = ivf.ntotal
    return out


def stacked(base: faiss.IndexIVFPQ, template: faiss.Index, segment: faiss.Index
            ) -> faiss.IndexIVFPQ | None:
    """One IVF whose list i is ``base``'s list i followed by ``segment``'s (faiss'
    ``HStackInvertedLists``: read-only, it copies neither): a single scan covers both, with one
    query table and one heap, where two scans each build their own and their results are
    merged. The segment must share the base's partition and codebooks
    (:func:`ebr.quant.probe.same_partition`); ``template`` is an empty index of the served
    form (its IVF is cloned for the codebooks; the quantizer is the base's, whose owner must
    outlive the result; the segment is kept alive by it). ``None`` where the base scans
    through faiss' precomputed L2 tables, which a copy would have to rebuild (nlist x M x 256
    floats)."""
    if base.use_precomputed_table > 0 and base.metric_type == faiss.METRIC_L2:
        return None
    seg = faiss.extract_index_ivf(segment)
    view = faiss.clone_index(faiss.extract_index_ivf(template))
    if not isinstance(view, faiss.IndexIVFPQ) or view.code_size != base.code_size:
        return None
    view.use_precomputed_table = -1  # as the base serves without tables: none built lazily
    copy = view.quantizer  # the clone's own copy of the centroids: freed, the base's shared
    view.own_fields = False
    copy.this.acquire()
    del copy
    view.quantizer = base.quantizer
    parts = faiss.InvertedListsPtrVector()
    parts.push_back(base.invlists)
    parts.push_back(seg.invlists)
    lists = faiss.HStackInvertedLists(parts.size(), parts.data())
    view.replace_invlists(lists, True)  # the view owns the stack; the stack owns neither part
    lists.this.disown()
    view.ntotal = base.ntotal + seg.ntotal
    view.__dict__["_keep"] = (base, segment, parts)
    return view


def quantization_error(codebooks_index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """|x - x^|^2 / |x|^2 per row, x^ the codebooks' reconstruction (the drift signal)."""
    rec = codebooks_index.sa_decode(codebooks_index.sa_encode(x))
    num = ((x - rec) ** 2).sum(axis=1)
    return num / np.maximum((x * x).sum(axis=1), 1e-12)
