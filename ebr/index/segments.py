"""The delta segment's codes: new documents coded with the base's own codebooks.

``codebooks.index`` (written by the build) is the trained, empty coarse index in its build
form; :func:`load_codebooks` rebuilds the :class:`~ebr.quant.trainers.Codebooks` from it, so a
document written later is assigned to a list and coded exactly as the build would have done
(Distill-VQ's and OPQ's codebooks, RQ / LSQ codes lifted to the served form included).
Segments are copy-on-write (:func:`merged`): a search holds the pair it started with.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import faiss
import numpy as np

from ebr.errors import WritesUnsupportedError
from ebr.index.reader import OpenIndex
from ebr.io.vecs import read_bin
from ebr.quant.encode import ScoreAware
from ebr.quant.faiss_index import delete_part, extract_ivfpq, same_quantizer
from ebr.quant.trainers import Codebooks

__all__ = ["load_codebooks", "merged", "quantization_error", "return_freed_memory",
           "share_quantizer", "stacked", "RECENT_ROWS"]


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


def share_quantizer(index: faiss.Index, owner: faiss.Index) -> bool:
    """Point the IVF of ``index`` at the quantizer of ``owner``'s IVF and free its own copy,
    where the two hold the same centroids: a living index's segments and codebooks are copies of
    one trained index, and each copy of its quantizer is nlist x d floats (25 MB at 16,384 x
    384). ``index`` keeps ``owner`` alive (pass the object that owns the quantizer: the outer
    index, not a view into it). False, nothing changed, where the centroids differ."""
    ivf, src = faiss.extract_index_ivf(index), faiss.extract_index_ivf(owner)
    mine, theirs = ivf.quantizer, src.quantizer
    if int(mine.this) == int(theirs.this):
        return True
    if ivf.nlist != src.nlist or not same_quantizer(mine, theirs):
        return False
    owned = ivf.own_fields
    ivf.own_fields = False
    ivf.quantizer = theirs
    if owned:
        delete_part(mine)
    del mine
    # the owner of the quantizer itself, never a chain (a fold's segment would otherwise keep
    # every earlier one alive)
    index.__dict__["_quantizer_owner"] = owner.__dict__.get("_quantizer_owner", owner)
    return True


def merged(segment: faiss.Index, codes: faiss.Index, add_id: int) -> faiss.Index:
    """A copy of ``segment`` with the lists of ``codes`` appended (ids + ``add_id``), sharing
    ``segment``'s quantizer. Neither input changes (faiss' merge_from empties its source: it
    gets a copy)."""
    out = faiss.clone_index(segment)
    share_quantizer(out, segment)  # the clone's own copy freed at once
    source = faiss.clone_index(codes)  # held here until the merge is done
    ivf = faiss.extract_index_ivf(out)
    ivf.merge_from(faiss.extract_index_ivf(source), add_id)
    out.ntotal = ivf.ntotal
    return out


def stacked(base: faiss.Index, template: faiss.Index, segment: faiss.Index
            ) -> faiss.IndexIVFPQ | None:
    """One IVF whose list i is ``base``'s list i followed by ``segment``'s (faiss'
    ``HStackInvertedLists``: read-only, it copies neither): a single scan covers both, with one
    query table and one heap, where two scans each build their own and their results are
    merged. The segment must share the base's partition and codebooks
    (:func:`ebr.quant.probe.same_partition`); ``base`` is the served coarse index (kept alive
    by the result, which uses its quantizer and lists); ``template`` is an empty index of the served
    form (its IVF is cloned for the codebooks; the segment is kept alive by the result).
    ``None`` where the base scans through faiss' precomputed L2 tables, which a copy would
    have to rebuild (nlist x M x 256 floats)."""
    base_ivf = extract_ivfpq(base)
    if base_ivf.use_precomputed_table > 0 and base_ivf.metric_type == faiss.METRIC_L2:
        return None
    seg = faiss.extract_index_ivf(segment)
    view = faiss.clone_index(faiss.extract_index_ivf(template))
    if not isinstance(view, faiss.IndexIVFPQ) or view.code_size != base_ivf.code_size or \
            not share_quantizer(view, base):
        return None
    view.use_precomputed_table = -1  # as the base serves without tables: none built lazily
    parts = faiss.InvertedListsPtrVector()
    parts.push_back(base_ivf.invlists)
    parts.push_back(seg.invlists)
    lists = faiss.HStackInvertedLists(parts.size(), parts.data())
    view.replace_invlists(lists, True)  # the view owns the stack; the stack owns neither part
    lists.this.disown()
    view.ntotal = base_ivf.ntotal + seg.ntotal
    view.__dict__["_keep"] = (segment, parts)
    return view


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). Opening a living index and each fold copy an index and free the copy, and glibc
    keeps what was freed: at 10M x 384 with 16,384 lists, ~50 MB of private memory held for
    nothing (bench/bench_live_probe.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def quantization_error(codebooks_index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """|x - x^|^2 / |x|^2 per row, x^ the codebooks' reconstruction (the drift signal)."""
    rec = codebooks_index.sa_decode(codebooks_index.sa_encode(x))
    num = ((x - rec) ** 2).sum(axis=1)
    return num / np.maximum((x * x).sum(axis=1), 1e-12)
