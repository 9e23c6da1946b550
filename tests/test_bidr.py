"""BiDR: labelled pairs, the locality-centric sampler, towers, and tower indexes end to end.

The learnable task: relevance is decided by <M q, v> with M = I + noise, so the base inner
product ranks positives imperfectly and a trained query tower can recover M.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ebr.errors import CorruptFileError, InputError, SpecError  # noqa: E402
from ebr.index.reader import open_index  # noqa: E402
from ebr.index.writer import write_index  # noqa: E402
from ebr.io.manifest import seal  # noqa: E402
from ebr.metric import Metric  # noqa: E402
from ebr.search.exact import exact_search  # noqa: E402
from ebr.search.searcher import Searcher  # noqa: E402
from ebr.spec import BuildParams, IndexSpec, SearchParams  # noqa: E402
from ebr.towers import Tower  # noqa: E402
from ebr.train.bidr import BiDRConfig, BiDRDenseTrainer, TowerNet  # noqa: E402
from ebr.train.distill_vq import DistillConfig, DistillVQTrainer  # noqa: E402
from ebr.train.sampling import (  # noqa: E402
    ShortlistGraph,
    TrainingPairs,
    batches,
    candidates,
    random_walk,
    split_pairs,
)

D, N = 16, 1500
PARAMS = BuildParams(spec=IndexSpec.parse("IVF8,PQ4"), metric=Metric.IP, kmeans_niter=8)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def task() -> dict:
    rng = np.random.default_rng(5)
    xb = _unit(rng.standard_normal((N, D)))
    m = np.eye(D) + 0.6 * rng.standard_normal((D, D)) / np.sqrt(D)

    def make(nq: int) -> tuple[np.ndarray, list[np.ndarray]]:
        xq = _unit(rng.standard_normal((nq, D)))
        top = np.argsort(-(xq @ m.T) @ xb.T, axis=1)[:, :2]  # two positives per query
        return xq, [np.sort(t) for t in top]

    xq_tr, pos_tr = make(700)
    xq_te, pos_te = make(200)
    return {"xb": xb, "pairs": TrainingPairs(xq_tr, tuple(pos_tr)), "xq_te": xq_te,
            "pos_te": pos_te}


def _ndcg(ids: np.ndarray, pos: list[np.ndarray]) -> float:
    disc = 1 / np.log2(np.arange(2, 12))
    return float(np.mean([(np.isin(r[:10], p) * disc).sum() / disc[:len(p)].sum()
                          for r, p in zip(ids, pos, strict=True)]))


# -- pairs ------------------------------------------------------------------------------------
def test_pairs_from_qrels_maps_ids_and_drops_unlabelled():
    xq = np.eye(3, 4, dtype=np.float32)
    qrels = {"a": {"d2": 1, "d0": 1}, "b": {"d1": 0}, "c": {"d1": 2}}
    p = TrainingPairs.from_qrels(xq, ["a", "b", "c"], qrels, ["d0", "d1", "d2"], 3)
    assert len(p) == 2 and p.n_pairs == 3  # "b" has only a score-0 judgement
    assert p.positives[0].tolist() == [0, 2] and p.positives[1].tolist() == [1]
    np.testing.assert_array_equal(p.queries, xq[[0, 2]])
    with pytest.raises(InputError, match="not in the corpus"):
        TrainingPairs.from_qrels(xq, ["a", "b", "c"], {"a": {"zz": 1}}, ["d0", "d1", "d2"], 3)
    with pytest.raises(InputError, match="query ids"):
        TrainingPairs.from_qrels(xq, ["a"], qrels, None, 3)
    with pytest.raises(InputError, match="NaN"):
        TrainingPairs(np.full((1, 4), np.nan, np.float32), (np.array([0]),))


def test_document_split_keeps_validation_positives_unseen():
    rng = np.random.default_rng(0)
    pos = [rng.choice(600, size=rng.integers(1, 3), replace=False) for _ in range(200)]
    tr, va = split_pairs(pos, 0.2, "document", rng)
    assert len(va) >= 40 and sorted(np.concatenate([tr, va]).tolist()) == list(range(200))
    seen = set(np.concatenate([pos[i] for i in tr]).tolist())
    assert not seen & set(np.concatenate([pos[i] for i in va]).tolist())
    tr_q, va_q = split_pairs(pos, 0.2, "query", rng)  # the query split shares documents
    assert len(va_q) == 40
    assert set(np.concatenate([pos[i] for i in tr_q]).tolist()) & \
        set(np.concatenate([pos[i] for i in va_q]).tolist())
    with pytest.raises(SpecError):
        split_pairs(pos, 0.2, "bogus", rng)
    # one giant group (every query shares document 0): no disjoint split exists
    tangled = [np.array([0, i]) for i in range(1, 101)]
    tr, va = split_pairs(tangled, 0.2, "document", rng)
    assert len(va) == 20 and len(tr) == 80


# -- sampler ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph(task) -> ShortlistGraph:
    xq, xb = task["pairs"].queries, task["xb"]
    return ShortlistGraph.build(np.argsort(-xq @ xb.T, axis=1)[:, :30])


@pytest.mark.parametrize("sampler", ["random_walk", "snowball", "random"])
def test_batches_partition_the_queries(graph, sampler):
    rng = np.random.default_rng(0)
    seen = np.concatenate(list(batches(graph, 32, sampler, rng)))
    assert sorted(seen.tolist()) == list(range(len(graph.q2d)))


def test_random_walk_stays_on_the_graph(graph):
    path = random_walk(graph, 3, 200, np.random.default_rng(1))
    assert len(path) == 201
    for a, b in zip(path, path[1:], strict=False):
        assert np.intersect1d(graph.q2d[a], graph.q2d[b]).size > 0  # a shared document


def test_locality_batches_hold_hard_negatives(graph):
    """With locality, another batch query's top document lies in a query's own shortlist
    (a hard in-batch negative) far more often than with uniform batches."""
    def hard_rate(sampler: str) -> float:
        rng = np.random.default_rng(2)
        hits = []
        for b in batches(graph, 16, sampler, rng):
            top = graph.q2d[b][:, 0]
            hits += [np.isin(top[j], graph.q2d[q]) for i, q in enumerate(b)
                     for j in range(len(b)) if j != i]
        return float(np.mean(hits))
    rw, sb, rnd = hard_rate("random_walk"), hard_rate("snowball"), hard_rate("random")
    assert rw > 1.3 * rnd and sb > 3 * rnd and sb > rw


def test_candidates_never_use_positives_as_negatives(task, graph):
    pos = list(task["pairs"].positives)
    rng = np.random.default_rng(3)
    for batch in batches(graph, 16, "random_walk", rng):
        c = candidates(batch, pos, graph, 5, rng)
        for i, q in enumerate(batch):
            assert c.docs[c.target[i]] in pos[q]  # every query has its positive
            assert c.valid[i, c.target[i]]
            negs = c.docs[c.valid[i]]
            negs = negs[negs != c.docs[c.target[i]]]
            assert not np.isin(negs, pos[q]).any()
            others = np.isin(c.docs, pos[q])
            others[c.target[i]] = False
            assert not c.valid[i, others].any()


# -- towers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_identity_tower_and_torch_twin(kind, tmp_path):
    rng = np.random.default_rng(4)
    x = _unit(rng.standard_normal((50, D)))
    ident = Tower.identity(kind, D, normalize=True)
    np.testing.assert_allclose(ident.apply(x), x, atol=1e-6)
    w = {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
         for k, v in ident.weights.items()}
    t = Tower(kind, w, normalize=True)
    net = TowerNet(t)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), t.apply(x), atol=1e-5)
    t.save(tmp_path / "t.npz")
    back = Tower.load(tmp_path / "t.npz", D)
    np.testing.assert_array_equal(back.apply(x), t.apply(x))
    with pytest.raises(CorruptFileError, match="dimension"):
        Tower.load(tmp_path / "t.npz", D + 1)
    (tmp_path / "bad.npz").write_bytes((tmp_path / "t.npz").read_bytes()[:100])
    with pytest.raises(CorruptFileError):
        Tower.load(tmp_path / "bad.npz", D)
    with pytest.raises(SpecError, match="non-finite"):
        Tower(kind, {k: np.full_like(v, np.nan) for k, v in w.items()}, True)


class _IdentityTowers:
    """A dense trainer whose towers are the identity: the index must search like a plain one."""

    def fit(self, index, vectors, metric, normalize, query_map, nlist):
        return (Tower.identity("linear", vectors.shape[1], True),
                Tower.identity("linear", vectors.shape[1], True))

    def describe(self):
        return {"method": "identity"}


def test_identity_towers_reproduce_the_base_search(task, tmp_path):
    xb, xq = task["xb"], task["xq_te"]
    base = write_index(tmp_path / "base", xb, PARAMS)
    tw = write_index(tmp_path / "tw", xb, PARAMS, dense_trainer=_IdentityTowers())
    assert base.towers is None and tw.towers == {"query": "query_tower.npz",
                                                 "doc": "doc_tower.npz"}
    assert tw.format_version == "2.0" and base.format_version.startswith("1.")
    assert tw.files["coarse.index"].sha256 == base.files["coarse.index"].sha256
    sb, st = Searcher(open_index(tmp_path / "base")), Searcher(open_index(tmp_path / "tw"))
    for nprobe, kc in ((2, 50), (8, 300)):
        p = SearchParams(k=10, nprobe=nprobe, candidates=kc)
        rb, rt = sb.search(xq, p)[0], st.search(xq, p)[0]
        np.testing.assert_array_equal(rb.ids, rt.ids)
        np.testing.assert_allclose(rb.scores, rt.scores, atol=1e-5)


# -- training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("bidr") / "index"
    dt = BiDRDenseTrainer(task["pairs"], BiDRConfig(shortlist=100, nprobe=8, max_epochs=8,
                                                    batch_size=32, lr=3e-3, seed=0))
    m = write_index(out, task["xb"], PARAMS, dense_trainer=dt)
    return out, dt, m


def test_towers_learn_the_task(task, trained, tmp_path):
    out, dt, m = trained
    h = dt.history
    assert dt.info["stored"] and dt.info["best_val_ndcg@10"] > h[0]["val_ndcg@10"] + 0.05
    assert m.build["towers"]["history"] == h and m.build["towers"]["config"]["sampler"] == \
        "random_walk"
    write_index(tmp_path / "base", task["xb"], PARAMS)
    p = SearchParams(k=10, nprobe=8, candidates=100)
    with_t = Searcher(open_index(out)).search(task["xq_te"], p)[0].ids
    without = Searcher(open_index(tmp_path / "base")).search(task["xq_te"], p)[0].ids
    assert _ndcg(with_t, task["pos_te"]) > _ndcg(without, task["pos_te"]) + 0.05


def test_trained_index_round_trips(task, trained, tmp_path):
    """Stored towers reload bit-identical; the re-rank scores f_q(q) . f_d(v) from the raw
    vectors; at nprobe = nlist and C = N it equals brute force in the towers' space."""
    out, dt, _ = trained
    oi = open_index(out)
    qt = oi.query_tower
    dtw = Tower.load(out / "doc_tower.npz", D)
    np.testing.assert_allclose(np.asarray(oi.dense), dtw.apply(task["xb"]), atol=1e-6)
    xq = task["xq_te"]
    res = Searcher(oi).search(xq, SearchParams(k=10, nprobe=8, candidates=N))[0]
    ref = exact_search(qt.apply(xq), dtw.apply(task["xb"]), 10, Metric.IP)
    np.testing.assert_array_equal(res.ids, ref.ids)
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-5)
    # a flipped byte in a tower file is caught at load
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    raw = bytearray((bad / "query_tower.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "query_tower.npz").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        open_index(bad)
    # a manifest naming a tower file it does not list is refused
    m = json.loads((out / "manifest.json").read_text())
    m["towers"]["query"] = "elsewhere.npz"
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    (bad / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(Exception, match="not listed"):
        open_index(bad)


def test_debiased_loss_against_its_formula():
    """debiased_info_nce: prior 0 is InfoNCE over the same columns; prior > 0 matches the
    formula written out in numpy (per-query temperatures included); bad priors refused."""
    from ebr.train.losses import debiased_info_nce, info_nce

    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 9, generator=g) * 0.3
    t = torch.randint(0, 9, (6,), generator=g)
    v = torch.rand(6, 9, generator=g) > 0.3
    v[torch.arange(6), t] = True
    assert float(debiased_info_nce(s, t, 0.05, v, 0.0)) == pytest.approx(
        float(info_nce(s, t, 0.05, v)), rel=1e-5)
    tau = torch.linspace(0.04, 0.09, 6)[:, None]
    got = float(debiased_info_nce(s, t, tau, v, 0.2))
    want = []
    for i in range(6):
        z = s[i].double().numpy() / float(tau[i])
        neg = v[i].numpy().copy()
        neg[int(t[i])] = False
        pos = np.exp(z[int(t[i])])
        gneg = max((np.exp(z[neg]).mean() - 0.2 * pos) / 0.8, np.exp(-1 / float(tau[i])))
        want.append(-np.log(pos / (pos + neg.sum() * gneg)))
    assert got == pytest.approx(float(np.mean(want)), rel=1e-4)
    with pytest.raises(ValueError):
        debiased_info_nce(s, t, 0.05, v, 1.0)
    with pytest.raises(SpecError):
        BiDRConfig(loss="triplet")
    with pytest.raises(SpecError):
        BiDRConfig(mix_negatives=-1)


@pytest.mark.parametrize("refinement", [{"loss": "debiased"}, {"query_temperature": True},
                                        {"mix_negatives": 8}])
def test_loss_refinements_learn_the_task(task, refinement, tmp_path):
    """Each stage-2 loss refinement still learns the task, as the plain loss does."""
    dt = BiDRDenseTrainer(task["pairs"], BiDRConfig(shortlist=100, nprobe=8, max_epochs=4,
                                                    batch_size=32, lr=3e-3, seed=0,
                                                    **refinement))
    write_index(tmp_path / "i", task["xb"], PARAMS, dense_trainer=dt)
    assert dt.info["stored"] and dt.info["best_val_ndcg@10"] > \
        dt.history[0]["val_ndcg@10"] + 0.05


def test_untrainable_task_writes_no_towers(task, tmp_path):
    """Relevance = the base inner product: nothing to learn, the towers are not stored."""
    xb = task["xb"]
    xq = task["pairs"].queries
    pairs = TrainingPairs(xq, tuple(np.sort(np.argsort(-xq @ xb.T, axis=1)[:, :2])))
    dt = BiDRDenseTrainer(pairs, BiDRConfig(shortlist=100, nprobe=8, max_epochs=3, seed=0))
    m = write_index(tmp_path / "i", xb, PARAMS, dense_trainer=dt)
    assert dt.history[0]["val_ndcg@10"] == 1.0  # the base ranking is already perfect
    assert m.towers is None and open_index(tmp_path / "i").query_tower is None
    assert m.build["towers"]["stored"] is False and m.format_version.startswith("1.")


def test_stage1_contrastive_term(task):
    """Stage 1 with labels: the contrastive term trains, validation watches positive recall."""
    pairs = task["pairs"]
    cfg = DistillConfig(max_epochs=3, batch_size=64, n_random=128, top_k=20, val_k=20,
                        val_nprobe=2, seed=0)
    tr = DistillVQTrainer(cfg, pairs=pairs, corpus=task["xb"], niter=8)
    index = tr.fit(task["xb"], PARAMS.spec, Metric.IP, seed=0).index
    assert index.is_trained and tr.info["validation_metric"] == "val_positive_recall"
    assert tr.info["labels"]["n_train_pairs"] + 2 * tr.info["labels"]["n_val_queries"] == \
        pairs.n_pairs
    h = tr.history
    assert all("val_positive_recall" in e for e in h)
    assert tr.info["best_val"] >= h[0]["val_positive_recall"]
    assert h[-1]["loss"] < h[1]["loss"] or len(h) <= 2
    # labels: no query weighting unless asked for (the contrastive term does better without)
    assert tr.info["query_weighting"] is None and tr.info["query_map"] == "trained"
    both = DistillVQTrainer(replace(cfg, max_epochs=1, weight_with_labels=True), pairs=pairs,
                            corpus=task["xb"], niter=8)
    both.fit(task["xb"], PARAMS.spec, Metric.IP, seed=0)
    assert both.info["query_weighting"]["shrinkage"] == 0.75
    assert both.info["query_map"] == "fixed (S^-1)"
    with pytest.raises(SpecError, match="corpus"):
        DistillVQTrainer(cfg, pairs=pairs)


def test_service_serves_a_tower_index(task, trained):
    """Over HTTP a tower index answers exactly what the in-process searcher answers."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    out, dt, _ = trained
    q = task["xq_te"][:5]
    ref = Searcher(open_index(out)).search(q, SearchParams(k=5, nprobe=8, candidates=100))[0]
    with TestClient(create_app(Settings(index_dir=str(out)))) as c:
        info = c.get("/index").json()
        assert info["format_version"] == "2.0" and info["towers"]["stored"] is True
        assert "history" not in info["towers"]
        for i in range(len(q)):
            r = c.post("/search", json={"vector": q[i].tolist(), "k": 5,
                                        "params": {"nprobe": 8, "candidates": 100}})
            assert r.status_code == 200, r.text
            hits = r.json()["result"]["hits"]
            assert [h["id"] for h in hits] == ref.ids[i].tolist()
            np.testing.assert_allclose([h["score"] for h in hits], ref.scores[i], atol=1e-5)
