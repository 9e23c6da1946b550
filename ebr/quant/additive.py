"""Additive codes (RQ, LSQ): faiss trains and encodes them, ebr serves them as IVF-PQ.

Residual quantizer (``IVF<n>,RQ<M>``). Built as faiss' IndexIVFResidualQuantizer (training,
beam-search encoding), then *served* as an IndexIVFPQ over the query tiled M times
(:func:`lift_rq`): PQ sub-space m of the tiled space holds RQ codebook m (full dimension), so
the PQ scanner's table sum is sum_m <q, c_m[code_m]> = <q, RQ reconstruction>, the exact RQ
score, with the same codes. faiss' own IVF-RQ scan gives the same ranking 13-25x slower (it
decodes every code or fills a table per list; SciFact, 384-d, RQ16, nprobe 8: 2.8 or 5.3 ms per
query, against 0.21 ms).

LSQ (``IVF<n>,LSQ<M>``, faiss' IndexIVFLocalSearchQuantizer) codes are the same sum of
full-dimension codewords, encoded jointly by iterated local search instead of stage by stage;
everything below applies to them unchanged (``ivf.aq`` is either quantizer).

Codes of ``x<nbits>`` other than 8 (``RQ12x10``: 12 codebooks of 1024 in 15 bytes) are bit-packed
as faiss packs them; :func:`unpack_codes` / :func:`pack_codes` turn them into one integer per
codebook and back.

L2 is served as inner product. With x^ = c + r^ (list centroid + RQ reconstruction),
-|q - x^|^2 / 2 + |q|^2 / 2 = (<q, c> - |c|^2 / 2) + <q, r^> + v, v = -(2 <c, r^> + |r^|^2) / 2.
The first term comes from an inner-product quantizer over [c, -|c|^2 / 2] against [q, 1] (it
probes the same lists as L2), the second from M - 1 tiled RQ stages, and v from the M-th code:
2^nbits uniform levels over the training set's range of v (``aq.norm_min`` / ``aq.norm_max``, fixed
at training so every shard shares them), read against the constant 1 in the query. The
searcher turns the served score s back into -|q - x^|^2 = 2 s - |q|^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from ebr.errors import SpecError
from ebr.metric import Metric
from ebr.quant.faiss_index import extract_ivf, ivf_centroids, rotate
from ebr.spec import IndexSpec

__all__ = ["rq_stages", "unpack_codes", "pack_codes", "norm_terms", "fit_norm_range",
           "add_codes", "lift_rq", "served_lists"]


def rq_stages(spec: IndexSpec, metric: Metric) -> int:
    """RQ codebooks of a spec: ``RQ<M>[x<nbits>]`` is M codes, all codebooks under inner
    product; under L2 the last code is each vector's norm term (module docstring), so M - 1
    codebooks."""
    return spec.pq_m - (1 if metric is Metric.L2 else 0)


def unpack_codes(aq: faiss.AdditiveQuantizer, packed: np.ndarray) -> np.ndarray:
    """Packed codes [n, code_size] (uint8, as faiss stores them) -> one code per codebook,
    int64 [n, M]."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    nbits = aq.nbits.at(0)
    if nbits == 8:
        return packed[:, :aq.M].astype(np.int64)
    return faiss.unpack_bitstrings(packed, aq.M, nbits).astype(np.int64)


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Codes [n, M] of ``nbits`` each -> uint8 [n, ceil(M nbits / 8)], packed as faiss packs
    them (low bits first)."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** nbits):
        raise SpecError(f"codes must lie in [0, {2 ** nbits}) for {nbits}-bit codebooks")
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    return faiss.pack_bitstrings(np.ascontiguousarray(codes, dtype=np.int32), nbits)


def norm_terms(ivf: faiss.IndexIVFAdditiveQuantizer, codes: np.ndarray, lists: np.ndarray,
               centroids: np.ndarray) -> np.ndarray:
    """v = -(2 <c, r^> + |r^|^2) / 2 of RQ / LSQ codes [n, M'] in lists [n]: the part of
    -|x^|^2 / 2 that the list term leaves (module docstring)."""
    r = ivf.aq.decode(np.ascontiguousarray(codes))
    c = centroids[lists]
    return (-(2.0 * np.einsum("ij,ij->i", r, c) + np.einsum("ij,ij->i", r, r)) / 2.0
            ).astype(np.float32)


def fit_norm_range(index: faiss.Index, x: np.ndarray, assign: np.ndarray | None = None) -> None:
    """Fix the range of the L2 norm byte (``aq.norm_min``/``norm_max``, saved with the index)
    from training vectors ``x`` (input space), encoded as they will be: in ``assign``'s lists
    (default: the nearest centroid), with the current codebooks. Values outside the range are
    clipped to its ends when the index is served."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer) or ivf.metric_type != faiss.METRIC_L2:
        raise SpecError("fit_norm_range: only an L2 IVF-RQ / IVF-LSQ index has a norm byte")
    xr = rotate(index, x)
    centroids = ivf_centroids(ivf)
    if assign is None:
        _, a = ivf.quantizer.search(xr, 1)
        assign = a.ravel()
    assign = np.asarray(assign, dtype=np.int64).ravel()
    codes = ivf.aq.compute_codes(np.ascontiguousarray(xr - centroids[assign]))
    v = norm_terms(ivf, codes, assign, centroids)
    ivf.aq.norm_min, ivf.aq.norm_max = float(v.min()), float(v.max())


def add_codes(ivf: faiss.IndexIVF, codes: np.ndarray, ids: np.ndarray,
              assign: np.ndarray) -> None:
    """Append ready codes [n, code_size] (uint8) with ``ids`` to lists ``assign``."""
    order = np.argsort(assign, kind="stable")
    a, ids = assign[order], np.ascontiguousarray(ids[order], dtype=np.int64)
    codes = np.ascontiguousarray(codes[order], dtype=np.uint8)
    if codes.shape[1] != ivf.code_size:
        raise SpecError(f"codes are {codes.shape[1]} bytes, the index stores {ivf.code_size}")
    lists, starts = np.unique(a, return_index=True)
    ends = np.append(starts[1:], len(a))
    for li, s, e in zip(lists.tolist(), starts.tolist(), ends.tolist(), strict=True):
        ivf.invlists.add_entries(li, e - s, faiss.swig_ptr(ids[s:e]), faiss.swig_ptr(codes[s:e]))
    ivf.ntotal += len(a)


def _norm_levels(ivf: faiss.IndexIVFAdditiveQuantizer) -> tuple[float, float]:
    """(lowest level, step) of the L2 norm code: 2^nbits uniform levels over the range fixed at
    training (module docstring)."""
    lo, hi = float(ivf.aq.norm_min), float(ivf.aq.norm_max)
    k = 2 ** ivf.aq.nbits.at(0)
    return lo, (hi - lo) / (k - 1) if hi > lo else 1.0


def _filled_lists(ivf: faiss.IndexIVF) -> Sequence[int]:
    """The lists that hold entries, read from a direct map built in C++ where the ids are 0 ..
    ntotal - 1 (a write's scratch: a Python loop over 16,384 lists costs ~65 ms); else every
    list (also where the index keeps a direct map of its own, left as it is)."""
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        return range(ivf.nlist)
    try:
        ivf.make_direct_map(True)
        placed = faiss.vector_to_array(ivf.direct_map.array)
    except RuntimeError:  # other ids: no direct map
        return range(ivf.nlist)
    finally:
        ivf.make_direct_map(False)  # also after a failed attempt, which leaves its type set
    return np.unique(placed >> 32).tolist()


def _with_norm_codes(ivf: faiss.IndexIVFAdditiveQuantizer) -> faiss.InvertedLists:
    """The lists' codes with each entry's norm code appended (the level of its v, clipped to
    the range fixed at training): the L2 served form's codes, one more per vector. Only the
    lists that hold entries are visited."""
    nbits = ivf.aq.nbits.at(0)
    k = 2 ** nbits
    lo, step = _norm_levels(ivf)
    m = ivf.aq.M + 1
    invlists = faiss.ArrayInvertedLists(ivf.nlist, (m * nbits + 7) // 8)
    cs = ivf.code_size
    for li in _filled_lists(ivf):
        n = ivf.invlists.list_size(li)
        if not n:
            continue
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(li), n * cs).reshape(n, cs)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(li), n).copy()
        centroid = ivf.quantizer.reconstruct(li)[None, :]
        v = norm_terms(ivf, codes, np.zeros(n, dtype=np.int64), centroid)
        vb = np.clip(np.rint((v - lo) / step), 0, k - 1).astype(np.int64)
        full = pack_codes(np.hstack([unpack_codes(ivf.aq, codes), vb[:, None]]), nbits)
        invlists.add_entries(li, n, faiss.swig_ptr(ids), faiss.swig_ptr(full))
    return invlists


def served_lists(index: faiss.Index) -> faiss.InvertedLists | None:
    """The lists of a filled IVF-RQ / IVF-LSQ index as its served form (:func:`lift_rq`) holds
    them: its own under inner product, with the norm codes under L2. What a write appends to a
    living index's segment, without lifting the whole index (its centroids and codebooks
    copied twice: ~16 ms per one-document write at 2,048 lists x 384). None for IVF-PQ, whose
    lists are served as they are."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer):
        return None
    if ivf.metric_type == faiss.METRIC_L2:
        return _with_norm_codes(ivf)
    return ivf.invlists


def lift_rq(index: faiss.Index) -> faiss.Index:
    """The servable form of a filled IVF-RQ index (module docstring): an IndexIVFPQ in d x M
    dimensions holding the same codes, behind a pre-transform that tiles the query M times;
    its quantizer reads the first d of them. Under L2 the query is [q, 1] before tiling, the
    M-th sub-space holds the norm code's levels, and the codes gain that code. Any
    pre-transform of ``index`` (query weighting) stays in front. Inner-product scores equal
    faiss' IVF-RQ scores; an IVF-PQ index is returned as is."""
    ivf = extract_ivf(index)
    if not isinstance(ivf, faiss.IndexIVFAdditiveQuantizer):
        return index
    l2 = ivf.metric_type == faiss.METRIC_L2
    if not l2 and ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SpecError("lift_rq: RQ is served for inner product and L2 only")
    d, stages, nlist = ivf.d, ivf.aq.M, ivf.nlist
    nbits = ivf.aq.nbits.at(0)
    k = 2 ** nbits
    m = stages + 1 if l2 else stages  # PQ sub-spaces of the served form, = codes per vector
    dq = d + 1 if l2 else d  # the query before tiling: q, or [q, 1] under L2
    centroids = ivf_centroids(ivf)
    probe = centroids  # what the quantizer scores the query against
    codebooks = np.zeros((m, k, d), dtype=np.float32)
    codebooks[:stages] = faiss.vector_to_array(ivf.aq.codebooks).reshape(stages, k, d)
    # the parts below are held by these locals (faiss' constructors keep raw pointers) until
    # the serialised copy, which owns its own, is made
    tiled = np.full(d * m, -1, dtype=np.int32)  # -1: a zero coordinate
    tiled[:d * stages] = np.arange(d * stages) % d
    select = np.arange(d, dtype=np.int32)
    invlists = ivf.invlists
    if l2:
        tiled[d * stages] = d  # the constant 1, read against the levels of v
        select = np.append(select, d * stages).astype(np.int32)
        probe = np.hstack([centroids, -0.5 * (centroids ** 2).sum(1, keepdims=True)])
        lo, step = _norm_levels(ivf)
        codebooks[stages, :, 0] = lo + step * np.arange(k)
        invlists = _with_norm_codes(ivf)
    sel = faiss.RemapDimensionsTransform(d * m, dq, faiss.swig_ptr(select))
    flat = faiss.IndexFlat(dq, faiss.METRIC_INNER_PRODUCT)
    flat.add(np.ascontiguousarray(probe, dtype=np.float32))
    quantizer = faiss.IndexPreTransform(sel, flat)
    lifted = faiss.IndexIVFPQ(quantizer, d * m, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(codebooks.ravel(), lifted.pq.centroids)
    lifted.is_trained = True
    lifted.replace_invlists(invlists, False)  # the codes, borrowed for the copy below
    lifted.ntotal = ivf.ntotal
    tile = faiss.RemapDimensionsTransform(dq, d * m, faiss.swig_ptr(tiled))
    top = faiss.IndexPreTransform(tile, lifted)
    if l2:  # q -> [q, 1]: the identity and a bias of 1 on the extra coordinate
        aug = faiss.LinearTransform(d, dq, True)
        faiss.copy_array_to_vector(np.eye(dq, d, dtype=np.float32).ravel(), aug.A)
        faiss.copy_array_to_vector(np.eye(1, dq, d, dtype=np.float32).ravel(), aug.b)
        aug.is_trained = True
        top.prepend_transform(aug)
    if isinstance(index, faiss.IndexPreTransform):
        for i in reversed(range(index.chain.size())):
            top.prepend_transform(index.chain.at(i))
    return faiss.deserialize_index(faiss.serialize_index(top))
