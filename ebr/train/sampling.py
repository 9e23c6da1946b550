"""Labelled training pairs and BiDR's locality-centric batch sampling (numpy only).

TrainingPairs   query vectors + the corpus rows relevant to each (from BEIR-style qrels)
ShortlistGraph  the bipartite graph query -> its top-N shortlist from the coarse index,
                document -> the queries whose shortlist holds it
batches         one epoch's mini-batches, a partition of the training queries:
                  random_walk  q -> a random document of its shortlist -> a random query
                               holding that document -> ...  (restarts when the walk is stuck)
                  snowball     breadth-first from a seed: every query sharing a document with
                               the batch so far, nearest shortlist ranks first
                  random       uniform batches (the ablation without locality)
                With locality, a query's in-batch negatives are the other queries' positives
                and hard negatives, which sit in its own neighbourhood (BiDR, WWW 2022).
candidates      per batch: each query's positive, hard negatives drawn from its own
                shortlist (positives excluded), and the mask that keeps every query's own
                positives out of its negatives
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ebr.errors import InputError, SpecError
from ebr.train_config import SAMPLERS, VAL_SPLITS
from ebr.types import ExternalId

__all__ = ["SAMPLERS", "VAL_SPLITS", "TrainingPairs", "split_pairs", "ShortlistGraph",
           "BatchCandidates", "batches", "random_walk", "candidates"]


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPairs:
    """queries [Q, d] float32; positives[i]: int64 corpus rows relevant to query i (>= 1);
    ids: the queries' external ids, when known."""

    queries: np.ndarray
    positives: tuple[np.ndarray, ...]
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.queries.ndim != 2 or len(self.queries) != len(self.positives):
            raise InputError(f"training pairs: {self.queries.shape} queries for "
                             f"{len(self.positives)} positive lists")
        if not np.isfinite(self.queries).all():
            raise InputError("training pairs: query vectors contain NaN or inf")
        if any(len(p) == 0 for p in self.positives):
            raise InputError("training pairs: every query needs at least one positive")

    def __len__(self) -> int:
        return len(self.positives)

    @property
    def n_pairs(self) -> int:
        return int(sum(len(p) for p in self.positives))

    @classmethod
    def from_qrels(cls, queries: np.ndarray, query_ids: Sequence[str],
                   qrels: Mapping[str, Mapping[str, int]], doc_ids: Sequence[ExternalId] | None,
                   n_docs: int) -> TrainingPairs:
        """Pairs from BEIR qrels (score > 0 is relevant). ``doc_ids``: the corpus' external ids
        by row (``None``: ids are row numbers). Queries without a known positive are dropped;
        a qrel naming a document absent from the corpus is an :class:`InputError`."""
        queries = np.asarray(queries, dtype=np.float32)
        if len(query_ids) != len(queries):
            raise InputError(f"training pairs: {len(query_ids)} query ids for {len(queries)} "
                             "query vectors")
        row = ({str(d): i for i, d in enumerate(doc_ids)} if doc_ids is not None
               else {str(i): i for i in range(n_docs)})
        keep, pos = [], []
        for i, q in enumerate(query_ids):
            rel = [d for d, s in qrels.get(str(q), {}).items() if s > 0]
            unknown = [d for d in rel if d not in row]
            if unknown:
                raise InputError(f"training qrels: query {q!r} names documents not in the "
                                 f"corpus: {unknown[:5]}")
            if rel:
                keep.append(i)
                pos.append(np.unique(np.array([row[d] for d in rel], dtype=np.int64)))
        if not keep:
            raise InputError("training qrels: no query has a relevant document in the corpus")
        return cls(queries[keep], tuple(pos), tuple(str(query_ids[i]) for i in keep))

    def with_queries(self, queries: np.ndarray) -> TrainingPairs:
        """The same pairs with new query vectors (e.g. from a fine-tuned encoder)."""
        return TrainingPairs(np.asarray(queries, np.float32), self.positives, self.ids)


def split_pairs(positives: Sequence[np.ndarray], fraction: float, mode: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) query numbers.

    query: a random ``fraction`` of the queries. Their positives may also be positives of
        training queries, so validation rewards memorising documents (on SciFact 64% of test
        positives are cited by some train query, and this split cannot tell the two apart).
    document: whole groups of queries that share positives (connected components of the
        query - positive graph), so no validation positive is a training positive: the split
        measures what carries over to documents never labelled.
    """
    if mode not in VAL_SPLITS:
        raise SpecError(f"val_split must be one of {VAL_SPLITS}, got {mode!r}")
    nq = len(positives)
    nval = int(nq * fraction) if nq >= 20 else 0
    if nval == 0:
        return np.arange(nq), np.zeros(0, np.int64)
    if mode == "query":
        perm = rng.permutation(nq)
        return np.sort(perm[nval:]), np.sort(perm[:nval])
    parent = list(range(nq))  # union-find over queries sharing a positive

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    owner: dict[int, int] = {}
    for q, ps in enumerate(positives):
        for d in ps.tolist():
            if d in owner:
                parent[find(q)] = find(owner[d])
            else:
                owner[d] = q
    groups: dict[int, list[int]] = {}
    for q in range(nq):
        groups.setdefault(find(q), []).append(q)
    val: list[int] = []
    for g in rng.permutation(np.array(list(groups), dtype=np.int64)).tolist():
        if len(val) >= nval:
            break
        if len(val) + len(groups[g]) <= 1.5 * nval:  # a giant group would eat the train set
            val += groups[g]
    if len(val) < nval // 2:
        logger.warning("validation split: the queries' positives are too entangled for a "
                       "document-disjoint split (%d of %d wanted); splitting by query",
                       len(val), nval)
        return split_pairs(positives, fraction, "query", rng)
    is_val = np.zeros(nq, bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass(frozen=True)
class ShortlistGraph:
    """q2d [Q, N]: each query's shortlist rows (``-1`` padding); d2q: row -> query numbers."""

    q2d: np.ndarray
    d2q: dict[int, np.ndarray]

    @classmethod
    def build(cls, shortlists: np.ndarray) -> ShortlistGraph:
        q2d = np.asarray(shortlists, dtype=np.int64)
        qs, ranks = np.nonzero(q2d >= 0)
        docs = q2d[qs, ranks]
        order = np.lexsort((ranks, docs))  # by document, then by the document's rank
        docs, qs = docs[order], qs[order]
        cuts = np.flatnonzero(np.diff(docs)) + 1
        d2q = {int(g[0]): q for g, q in zip(np.split(docs, cuts), np.split(qs, cuts),
                                            strict=True) if len(g)}
        return cls(q2d, d2q)

    def neighbours(self, q: int) -> np.ndarray:
        """Queries sharing a shortlist document with ``q`` (``q`` excluded), ordered by the
        best rank the shared document has in ``q``'s shortlist."""
        docs = self.q2d[q][self.q2d[q] >= 0]
        if docs.size == 0:
            return np.zeros(0, np.int64)
        nb = np.concatenate([self.d2q[int(d)] for d in docs])
        _, first = np.unique(nb, return_index=True)
        nb = nb[np.sort(first)]
        return nb[nb != q]


def random_walk(graph: ShortlistGraph, start: int, steps: int, rng: np.random.Generator
                ) -> list[int]:
    """The queries visited by a walk of ``steps`` hops q -> d -> q' over the graph."""
    path = [start]
    q = start
    for _ in range(steps):
        docs = graph.q2d[q][graph.q2d[q] >= 0]
        if docs.size == 0:
            break
        d = int(docs[rng.integers(len(docs))])
        qs = graph.d2q[d]
        q = int(qs[rng.integers(len(qs))])
        path.append(q)
    return path


def batches(graph: ShortlistGraph, batch_size: int, sampler: str, rng: np.random.Generator
            ) -> Iterator[np.ndarray]:
    """One epoch: mini-batches of query numbers that together cover every query once."""
    if sampler not in SAMPLERS:
        raise SpecError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if batch_size < 2:
        raise SpecError(f"batch_size must be >= 2, got {batch_size}")
    nq = len(graph.q2d)
    if sampler == "random":
        order = rng.permutation(nq)
        for b0 in range(0, nq, batch_size):
            yield order[b0:b0 + batch_size]
        return
    free = np.ones(nq, dtype=bool)
    order = rng.permutation(nq)  # seeds, in random order
    pos = 0
    while free.any():
        while not free[order[pos]]:
            pos += 1
        seed = int(order[pos])
        free[seed] = False
        batch = [seed]
        if sampler == "snowball":
            frontier = [seed]
            while frontier and len(batch) < batch_size:
                nxt = []
                for q in frontier:
                    for r in graph.neighbours(q):
                        if free[r] and len(batch) < batch_size:
                            free[r] = False
                            batch.append(int(r))
                            nxt.append(int(r))
                frontier = nxt
        else:  # random_walk: walk on; a stuck walk (all neighbours used) restarts at random
            q, stuck = seed, 0
            while len(batch) < batch_size and stuck < 4 * batch_size:
                step = random_walk(graph, q, 1, rng)
                q = step[-1]
                if free[q]:
                    free[q] = False
                    batch.append(q)
                    stuck = 0
                else:
                    stuck += 1
        if len(batch) < batch_size:  # an exhausted neighbourhood: fill from anywhere
            rest = np.flatnonzero(free)
            fill = rng.permutation(rest)[:batch_size - len(batch)]
            free[fill] = False
            batch.extend(int(f) for f in fill)
        yield np.array(batch, dtype=np.int64)


@dataclass(frozen=True)
class BatchCandidates:
    """docs [m]: distinct corpus rows scored in the batch; target [B]: column of each query's
    sampled positive; valid [B, m]: False where a column is another positive of that query
    (never a negative)."""

    docs: np.ndarray
    target: np.ndarray
    valid: np.ndarray


def candidates(batch: np.ndarray, positives: Sequence[np.ndarray], graph: ShortlistGraph,
               n_hard: int, rng: np.random.Generator) -> BatchCandidates:
    """One sampled positive and ``n_hard`` shortlist negatives per query; every document of
    the batch is a negative for every query it is not relevant to."""
    pos_pick, hard = [], []
    for q in batch:
        p = positives[q]
        pos_pick.append(int(p[rng.integers(len(p))]))
        sl = graph.q2d[q]
        neg = sl[(sl >= 0) & ~np.isin(sl, p)]
        if neg.size:
            hard.append(rng.choice(neg, size=min(n_hard, neg.size), replace=False))
    docs = np.unique(np.concatenate([np.array(pos_pick, np.int64), *hard]))
    target = np.searchsorted(docs, pos_pick)
    valid = np.ones((len(batch), len(docs)), dtype=bool)
    for i, q in enumerate(batch):
        other = np.isin(docs, positives[q])
        other[target[i]] = False
        valid[i, other] = False
    return BatchCandidates(docs, target, valid)
