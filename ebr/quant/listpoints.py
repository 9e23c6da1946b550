"""List points: a few k-means points per IVF list, by which the probe ranks the lists.

The probe scans the nprobe lists whose centroids score best for the query. A list is a region,
and its centroid says little about the region's side that faces the query: a query's nearest
documents often lie near the edge of a list whose centroid is not among its best nprobe. On
the unseen corpora of docs/methods.md that is what caps every 16-byte build at nprobe 32 (the
lists held 0.937 / 0.924 of the exact top 10), whatever the codes.

Each list keeps ``m`` points, the k-means centroids of its members (spherical under inner
product, in the IVF's space: after OPQ / query weighting), and a list's score for a query is
its best point's: an estimate of the best document score the list holds, exact when every
member is a point. The lists, the codes and the scores a scan gives are unchanged; only which
lists are scanned moves. The points are trained with the codebooks, on the same sample, in the
lists the documents are encoded into, so shards, compactions and the segments of a living
index share them. Cost at search: one product with nlist x m points per query instead of nlist
centroids (4,096 points of 384 dimensions, served at rank 128: ~40 µs on one core, ~60 µs for
the whole pick); in RAM: nlist x m x rank floats and a d x rank basis (2.7 MB there), fixed.
What that buys, and what it costs against a larger nprobe: docs/methods.md, "list points".
"""

from __future__ import annotations

import faiss
import numpy as np

from ebr.errors import SpecError

__all__ = ["fit_list_points", "ListPoints"]

KMEANS_NITER = 20
DEFAULT_RANK = 128  # dimensions the points' offsets from their centroids are served in


def fit_list_points(x: np.ndarray, lists: np.ndarray, centroids: np.ndarray, m: int,
                    spherical: bool, seed: int) -> np.ndarray:
    """float32 [nlist * m, d]: list j's points are rows j*m .. j*m+m-1.

    x: float32 [n, d] sample in the IVF's space; lists: its list of each row; centroids: the
    IVF's [nlist, d]. A list with at most m sampled members keeps them (and its centroid in
    the rows left); a list without any keeps its centroid."""
    nlist, d = centroids.shape
    if x.ndim != 2 or x.shape[1] != d or lists.shape != (len(x),):
        raise SpecError(f"list points: sample {x.shape}, lists {lists.shape}, centroids "
                        f"{centroids.shape} do not agree")
    out = np.repeat(np.asarray(centroids, dtype=np.float32)[:, None, :], m, axis=1)
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(nlist + 1))
    for j in range(nlist):
        members = np.ascontiguousarray(x[order[bounds[j]:bounds[j + 1]]], dtype=np.float32)
        if len(members) <= m:
            out[j, :len(members)] = members
            continue
        km = faiss.Kmeans(d, m, niter=KMEANS_NITER, seed=seed + j, spherical=spherical)
        km.cp.min_points_per_centroid = 1  # small lists: no warning, m points all the same
        km.train(members)
        out[j] = km.centroids
    return out.reshape(nlist * m, d)


class ListPoints:
    """The points of every list, served: :meth:`scores` ranks the lists for a batch of queries.

    points: float32 [nlist * m, d] (:func:`fit_list_points`); anchors: the lists' centroids
    [nlist, d]; l2: the IVF ranks lists by L2 distance (a point then scores <q, p> - |p|^2 / 2,
    the order of -|q - p|^2). A point is served as its list's centroid plus its offset from it
    in the ``rank`` leading principal directions of all offsets: one product with nlist
    centroids and one with nlist x m offsets of ``rank`` floats, not of d: 4,096 x 384 floats
    are 6 MB read from memory on every query, ~110 µs on one core. At rank 128 the docstring
    corpus of docs/methods.md kept 0.0125 of the 0.0133 nDCG@10 the exact points add to the
    lists' cap at nprobe 32, at rank 64 only 0.0082 (Debian: the whole gain at 64). rank >= d:
    exact."""

    __slots__ = ("per_list", "nlist", "rank", "_anchors", "_basis", "_offsets", "_bias")

    def __init__(self, points: np.ndarray, per_list: int, anchors: np.ndarray, l2: bool,
                 rank: int = DEFAULT_RANK) -> None:
        points = np.asarray(points, dtype=np.float32)
        anchors = np.ascontiguousarray(anchors, dtype=np.float32)
        if points.ndim != 2 or per_list < 1 or points.shape[0] % per_list \
                or anchors.shape != (points.shape[0] // per_list, points.shape[1]):
            raise SpecError(f"list points: {points.shape} is not {anchors.shape[0]} lists x "
                            f"{per_list} points of {anchors.shape[1:]}")
        if not np.isfinite(points).all():
            raise SpecError("list points: not finite")
        self.per_list, self.nlist = per_list, anchors.shape[0]
        d = points.shape[1]
        offsets = points - np.repeat(anchors, per_list, axis=0)
        basis: np.ndarray | None = None
        if rank < d:  # the leading principal directions of the offsets (uncentred)
            _, vecs = np.linalg.eigh((offsets.T @ offsets).astype(np.float64))
            basis = np.ascontiguousarray(vecs[:, ::-1][:, :rank], dtype=np.float32)
            offsets = offsets @ basis
        self.rank = min(rank, d)
        self._anchors = anchors
        self._basis = basis
        self._bias: np.ndarray | None = None
        if l2:  # -|p^|^2 / 2 of the served point p^ (anchor + offset as kept)
            full = offsets if basis is None else offsets @ basis.T
            served = np.repeat(anchors, per_list, axis=0) + full
            self._bias = _point_major(-0.5 * np.einsum("ij,ij->i", served, served),
                                      self.nlist, per_list)
        # point-major rows (point i of every list, then point i + 1): the max over a list's
        # points is then an elementwise max of m rows of nlist scores (~1 µs, not ~15)
        self._offsets = _point_major(offsets, self.nlist, per_list)

    @property
    def anchors(self) -> np.ndarray:
        """The lists' centroids [nlist, d] the points are served from (read-only use)."""
        return self._anchors

    @property
    def dim(self) -> int:
        """d: the dimensions of the IVF's space the points live in."""
        return int(self._anchors.shape[1])

    @property
    def nbytes(self) -> int:
        """RAM held (the anchors are a copy of the centroids)."""
        return int(sum(a.nbytes for a in (self._anchors, self._basis, self._offsets, self._bias)
                       if a is not None))

    def scores(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, nlist] each list's best point for each query, higher: nearer; the
        queries' inner products with the anchors, [n, nlist]); ``xq`` in the IVF's space, its
        first d columns read (L2 RQ's probe query is [q, 1])."""
        d = self._anchors.shape[1]
        q = xq[:, :d]
        off = (q if self._basis is None else q @ self._basis) @ self._offsets.T
        if self._bias is not None:
            off += self._bias
        anchored = q @ self._anchors.T
        return off.reshape(len(q), self.per_list, self.nlist).max(axis=1) + anchored, anchored


def _point_major(a: np.ndarray, nlist: int, per_list: int) -> np.ndarray:
    """Rows list-major (list j's points together) -> point-major, float32 contiguous."""
    return np.ascontiguousarray(
        a.reshape(nlist, per_list, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape),
        dtype=np.float32)
