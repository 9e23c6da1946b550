"""faiss accessors: the parts of a coarse index ebr reads and writes, in one place.

The coarse index is an ``IndexIVFPQ``, possibly behind an ``IndexPreTransform`` (OPQ rotation,
Distill-VQ's query weighting, and for additive codes the tiling that serves them as IVF-PQ:
:mod:`ebr.quant.additive`). These functions find its parts, move trained centroids and
codebooks between faiss and arrays (learned trainers), and give per-call search parameters.
"""

from __future__ import annotations

import faiss
import numpy as np

from ebr.errors import SpecError

__all__ = ["extract_ivfpq", "extract_ivf", "ivf_centroids", "ivf_params", "serves_l2_as_ip",
           "coarse_ram_bytes", "from_faiss", "to_faiss", "rotate", "prepend_transform",
           "delete_part", "same_quantizer"]


def same_quantizer(a: faiss.Index, b: faiss.Index) -> bool:
    """Whether two coarse quantizers hold the same centroids under the same metric: the same
    object, two flat ones compared in place (no copy of nlist x d floats), or any other kind
    (say the RQ served form's slice in front of a flat) by its serialised bytes."""
    a, b = faiss.downcast_index(a), faiss.downcast_index(b)
    if int(a.this) == int(b.this):
        return True
    if (a.d, a.ntotal, a.metric_type) != (b.d, b.ntotal, b.metric_type):
        return False
    if isinstance(a, faiss.IndexFlat) and isinstance(b, faiss.IndexFlat):
        n = a.ntotal * a.d
        return bool(np.array_equal(faiss.rev_swig_ptr(a.get_xb(), n),
                                   faiss.rev_swig_ptr(b.get_xb(), n)))
    return type(a) is type(b) and bool(np.array_equal(faiss.serialize_index(a),
                                                      faiss.serialize_index(b)))


def delete_part(part: faiss.Index) -> None:
    """Delete a faiss index that no Python object owns (the part another index held, its
    owner told to let go): through a wrapper told to own it, dropped at once. Taking ownership
    through its own proxy (``part.this.acquire()``) corrupts SWIG's type data in this faiss:
    later calls return bare SwigPyObjects, and a garbage collection can crash."""
    holder = faiss.IndexPreTransform(part)
    holder.own_fields = True
    del holder


def extract_ivfpq(index: faiss.Index) -> faiss.IndexIVFPQ:
    """The IndexIVFPQ inside ``index`` (itself, or under an OPQ IndexPreTransform)."""
    ivf = faiss.extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf)
    if not isinstance(ivfpq, faiss.IndexIVFPQ):
        raise SpecError(f"coarse index is {type(ivfpq).__name__}, expected IndexIVFPQ")
    return ivfpq


def extract_ivf(index: faiss.Index) -> faiss.IndexIVF:
    """The IndexIVFPQ or, at build time of an RQ / LSQ spec, the IndexIVFResidualQuantizer /
    IndexIVFLocalSearchQuantizer in ``index``."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if not isinstance(ivf, (faiss.IndexIVFPQ, faiss.IndexIVFAdditiveQuantizer)):
        raise SpecError(f"coarse index is {type(ivf).__name__}, expected IndexIVFPQ or an "
                        "IVF additive quantizer (RQ, LSQ)")
    return ivf


def ivf_centroids(ivf: faiss.IndexIVF) -> np.ndarray:
    """The IVF centroids [nlist, d] of an IVF index (a served RQ index keeps them behind a
    dimension selection, its quantizer an IndexPreTransform; under L2 with -|c|^2/2 appended)."""
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexPreTransform):
        c = faiss.downcast_index(q.index)
        return c.reconstruct_n(0, c.ntotal)[:, :ivf.d // ivf.pq.M].astype(np.float32)
    return q.reconstruct_n(0, q.ntotal).astype(np.float32)


def ivf_params(index: faiss.Index, nprobe: int, excluded: np.ndarray | None = None,
               only: bool = False) -> faiss.SearchParameters:
    """Per-call search parameters (thread-safe: nothing on the shared index is mutated).
    ``excluded``: a packed little-endian bitmap of ids the search must skip (tombstones), or
    with ``only``, the ids it may return (a filter); kept alive with the parameters."""
    p = faiss.SearchParametersIVF()
    p.nprobe = nprobe
    if excluded is not None:
        bitmap = faiss.IDSelectorBitmap(len(excluded) * 8, faiss.swig_ptr(excluded))
        sel = bitmap if only else faiss.IDSelectorNot(bitmap)
        p.sel = sel
        p.__dict__["_keep"] = (bitmap, sel, excluded)
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = p
        outer.__dict__["_keep"] = p  # keep the inner params alive as long as the outer one
        return outer
    return p


def serves_l2_as_ip(index: faiss.Index) -> bool:
    """Whether a served coarse index is L2 RQ in its inner-product form (module docstring):
    its quantizer reads [q, 1] against [c, -|c|^2 / 2], one dimension more than a tile."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    q = faiss.downcast_index(ivf.quantizer)
    return (isinstance(ivf, faiss.IndexIVFPQ) and isinstance(q, faiss.IndexPreTransform)
            and q.index.d == ivf.d // ivf.pq.M + 1)


def coarse_ram_bytes(index: faiss.Index) -> dict[str, int]:
    """What a coarse IVF-PQ index keeps in RAM, by part (bytes), from the index itself."""
    ivfpq = extract_ivfpq(index)
    linear = 0  # OPQ rotation / query weighting (the RQ tiling is an int map, not counted)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(t, faiss.LinearTransform):
                linear += t.d_in * t.d_out * 4
    parts = {
        "codes_bytes": ivfpq.ntotal * ivfpq.code_size,
        "list_ids_bytes": ivfpq.ntotal * 8,  # one int64 id per entry in the inverted lists
        "centroids_bytes": int(ivf_centroids(ivfpq).size) * 4,
        "codebook_bytes": ivfpq.pq.M * ivfpq.pq.ksub * ivfpq.pq.dsub * 4,
        "opq_bytes": linear,
        "precomputed_table_bytes": int(ivfpq.precomputed_table.size()) * 4,
    }
    parts["coarse_ram_bytes"] = sum(parts.values())
    return parts


def from_faiss(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(centroids float32 [nlist, d], codebooks float32 [M, ksub, dsub], rotation [d, d] or None).

    ``rotation`` is the OPQ matrix R (x_rotated = x @ R.T) when the index has one. For an RQ
    index (build time) the codebooks are [M, 2^nbits, d]: every stage spans all dimensions.
    """
    ivf = extract_ivf(index)
    centroids = ivf_centroids(ivf)
    if isinstance(ivf, faiss.IndexIVFAdditiveQuantizer):
        codebooks = faiss.vector_to_array(ivf.aq.codebooks).reshape(ivf.aq.M, -1, ivf.d)
    else:
        pq = ivf.pq
        codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    rotation = None
    if isinstance(index, faiss.IndexPreTransform):
        lt = faiss.downcast_VectorTransform(index.chain.at(0))
        rotation = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
    return centroids.astype(np.float32), codebooks.astype(np.float32), rotation


def rotate(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Apply the index's pre-transform (OPQ, query weighting) if any: the IVF-PQ's space (for
    a served RQ index, the space before the query is lifted)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(i))
            if not _is_lift_part(t):
                x = t.apply(x)
    return x


def _is_lift_part(t: faiss.VectorTransform) -> bool:
    """A transform :func:`lift_rq` added: the tiling, or L2's [q, 1] (the only biased one)."""
    return isinstance(t, faiss.RemapDimensionsTransform) or (
        isinstance(t, faiss.LinearTransform) and t.have_bias)


def prepend_transform(index: faiss.Index, w: np.ndarray) -> faiss.Index:
    """An index trained on ``x @ w.T``, made to take ``x``: its pre-transform becomes
    ``R @ w`` (after an OPQ rotation R) or ``w`` (wrapped in an IndexPreTransform)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        lt = faiss.downcast_VectorTransform(index.chain.at(0))
        r = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
        faiss.copy_array_to_vector(np.ascontiguousarray(r @ w).ravel(), lt.A)
        lt.is_orthonormal = False
        return index
    lt = faiss.LinearTransform(w.shape[1], w.shape[0], False)
    faiss.copy_array_to_vector(w.ravel(), lt.A)
    lt.is_trained = True
    out = faiss.IndexPreTransform(lt, index)
    lt.this.disown()  # the pre-transform index owns both from here on
    index.this.disown()
    out.own_fields = True
    return out


def to_faiss(index: faiss.Index, centroids: np.ndarray, codebooks: np.ndarray) -> None:
    """Write trained centroids and codebooks into an empty trained index (in place)."""
    ivfpq = extract_ivf(index)
    if ivfpq.ntotal:
        raise SpecError("to_faiss expects an empty index: codes must be re-encoded after it")
    nlist, d = centroids.shape
    if (nlist, d) != (ivfpq.nlist, ivfpq.d):
        raise SpecError(f"centroids {centroids.shape} do not fit the index ({ivfpq.nlist}, {ivfpq.d})")
    q = faiss.downcast_index(ivfpq.quantizer)
    q.reset()
    q.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if isinstance(ivfpq, faiss.IndexIVFAdditiveQuantizer):
        aq = ivfpq.aq
        if codebooks.shape != (aq.M, 2 ** aq.nbits.at(0), ivfpq.d):
            raise SpecError(f"codebooks {codebooks.shape} do not fit the additive quantizer "
                            f"({aq.M}, {2 ** aq.nbits.at(0)}, {ivfpq.d})")
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                                   aq.codebooks)
        if isinstance(ivfpq, faiss.IndexIVFResidualQuantizer) and \
                ivfpq.rq.codebook_cross_products.size():  # beam search's look-up table
            ivfpq.rq.compute_codebook_tables()
        return
    pq = ivfpq.pq
    if codebooks.shape != (pq.M, pq.ksub, pq.dsub):
        raise SpecError(f"codebooks {codebooks.shape} do not fit PQ ({pq.M}, {pq.ksub}, {pq.dsub})")
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                               pq.centroids)
    if pq.sdc_table.size():
        pq.compute_sdc_table()
    ivfpq.precomputed_table.clear()
    ivfpq.use_precomputed_table = 0
