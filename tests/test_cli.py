"""index_build end to end through its CLI entry point."""

import json

import numpy as np
import pytest

from ebr.index.reader import open_index
from ebr.io.vecs import write_bin, write_vecs
from index_build.__main__ import main


def test_build_inspect_evaluate(tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["--no-progress", "build", "--synthetic", "--n", "3000", "--dim", "32",
                 "--out", str(out), "--spec", "IVF16,PQ8", "--niter", "5",
                 "--list-points", "4"]) == 0
    data = tmp_path / "idx.data"
    assert (data / "qrels" / "test.tsv").exists()
    oi = open_index(out)
    assert oi.ntotal == 3000 and oi.manifest.source["kind"] == "file"
    capsys.readouterr()
    assert main(["inspect", "--index", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"] == "IVF16,PQ8" and info["memory"]["codes_bytes"] == 3000 * 8
    assert oi.probe.points.per_list == 4 and info["memory"]["probe_bytes"] > 0
    res = tmp_path / "res"
    assert main(["--no-progress", "evaluate", "--index", str(out),
                 "--queries", str(data / "queries_test.npy"),
                 "--query-ids", str(data / "queries_test_ids.txt"),
                 "--qrels", str(data / "qrels" / "test.tsv"), "--nprobe", "4", "16",
                 "--candidates", "50", "100", "--results", str(res), "--name", "e",
                 "--probe", "points"]) == 0
    assert json.loads((res / "e.json").read_text())["meta"]["probe"].startswith(
        "list points (4 per list")
    rows = json.loads((res / "e.json").read_text())["rows"]
    assert len(rows) == 1 + 2 * 2 * 2 + 2  # exact + nprobe x C x stage + a ceiling per nprobe
    assert rows[0]["system"] == "exact" and 0 < rows[0]["ndcg@10"] <= 1
    assert (res / "e.md").exists() and (res / "e.png").exists()


def test_formats_and_ids(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1200, 16)).astype(np.float32)
    write_vecs(tmp_path / "x.fvecs", x)
    write_bin(tmp_path / "x.fbin", x)
    (tmp_path / "ids.txt").write_text("".join(f"d{i}\n" for i in range(1200)))
    for name in ("x.fvecs", "x.fbin"):
        out = tmp_path / f"idx-{name}"
        assert main(["--no-progress", "build", "--input", str(tmp_path / name), "--ids",
                     str(tmp_path / "ids.txt"), "--out", str(out), "--spec", "IVF4,PQ4",
                     "--metric", "l2", "--dense-dtype", "float16", "--niter", "3"]) == 0
        oi = open_index(out)
        assert oi.ids[7] == "d7" and oi.metric.value == "l2" and oi.dense.dtype == np.float16


def test_cli_errors_exit_2(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((10, 8), np.float32))
    assert main(["build", "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "i"),
                 "--spec", "IVF4,PQ3"]) == 2  # 8 % 3 != 0
    assert main(["build", "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "i"),
                 "--spec", "IVF4,PQ4", "--list-points", "0"]) == 2
    assert main(["inspect", "--index", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "i").exists()


def test_build_distill_cli(tmp_path):
    pytest.importorskip("torch", reason="extra 'train' not installed")
    from ebr.data.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(n=2000, d=16, nq=10, nq_train=200, n_clusters=8))
    np.save(tmp_path / "x.npy", ds.xb)
    np.save(tmp_path / "q.npy", ds.xq_train)
    out = tmp_path / "idx"
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out", str(out),
                 "--spec", "IVF8,PQ4", "--niter", "5", "--codebooks", "distill",
                 "--train-queries", str(tmp_path / "q.npy"), "--distill-epochs", "2",
                 "--distill-loss", "mse+listnet", "--ivf-loss-weight", "0.5",
                 "--distill-select", "coarse", "--no-distill-guard"]) == 0
    oi = open_index(out)
    cb = oi.manifest.codebooks
    assert cb["method"] == "distill" and cb["training_queries"] == "real (200)"
    assert cb["validation_metric"] == "val_recall" and "guard" not in cb
    # the start: OPQ's rotation added to the PQ spec; weighted and unweighted runs compared
    assert "OPQ rotation added" in cb["start"]
    assert set(cb["run_choice"]["held_out_rerank_recall@10"]) == {"learned",
                                                                  "learned_unweighted"}
    assert cb["distill"]["ivf_weight"] == 0.5 and cb["ivf_weight"] == 0.5
    assert cb["distill"]["loss"] == "mse+listnet" and oi.query_map is not None
    one = tmp_path / "one"  # the spec as given, one run
    assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out", str(one),
                 "--spec", "IVF8,PQ4", "--niter", "5", "--codebooks", "distill",
                 "--train-queries", str(tmp_path / "q.npy"), "--distill-epochs", "1",
                 "--no-opq-start", "--no-choose-weighting", "--no-distill-guard"]) == 0
    cb = open_index(one).manifest.codebooks
    assert "start" not in cb and "run_choice" not in cb and cb["query_weighting"] is not None
    # RQ: the score-aware candidates from the command line, and 'off'
    for flag, want in (("3", {"3"}), ("off", None)):
        rq = tmp_path / f"rq-{flag}"
        assert main(["--no-progress", "build", "--input", str(tmp_path / "x.npy"), "--out",
                     str(rq), "--spec", "IVF8,RQ4", "--niter", "5", "--codebooks", "distill",
                     "--train-queries", str(tmp_path / "q.npy"), "--distill-epochs", "1",
                     "--score-aware", flag, "--distill-val-nprobe", "2",
                     "--distill-val-candidates", "20"]) == 0
        cb = open_index(rq).manifest.codebooks
        assert cb["guard"]["nprobe"] == 2 and cb["guard"]["candidates"] == 20
        aware = cb["score_aware"]
        if want is None:
            assert aware["off"] == "no candidates" and aware["eta"] == 1.0
        else:
            assert set(aware["candidates"]) == want and aware["eta"] == 3.0
    with pytest.raises(SystemExit):
        main(["build", "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "bad"),
              "--spec", "IVF8,RQ4", "--codebooks", "distill", "--score-aware", "2,0"])
    main(["generate", "--out", str(tmp_path / "gen"), "--n", "500", "--dim", "8"])
    assert (tmp_path / "gen" / "corpus.npy").exists()


def test_build_bidr_cli(tmp_path):
    """Labelled pairs through the CLI: stage 1 (contrastive) + stage 2 (towers) recorded."""
    pytest.importorskip("torch", reason="extra 'train' not installed")
    data = tmp_path / "gen"
    assert main(["--no-progress", "generate", "--out", str(data), "--n", "3000",
                 "--dim", "16"]) == 0
    out = tmp_path / "idx"
    common = ["--no-progress", "build", "--input", str(data / "corpus.npy"), "--out", str(out),
              "--spec", "IVF8,PQ4", "--niter", "5"]
    labels = ["--train-queries", str(data / "queries_train.npy"),
              "--train-query-ids", str(data / "queries_train_ids.txt"),
              "--train-qrels", str(data / "qrels" / "train.tsv")]
    assert main(common + labels + ["--codebooks", "distill", "--distill-epochs", "2",
                                   "--towers", "linear", "--tower-epochs", "2",
                                   "--sampler", "snowball"]) == 0
    m = open_index(out).manifest
    assert m.codebooks["validation_metric"] == "val_positive_recall"
    assert m.codebooks["labels"]["n_train_pairs"] > 0
    tw = m.build["towers"]
    assert tw["method"] == "bidr" and tw["config"]["sampler"] == "snowball"
    assert (m.towers is not None) == tw["stored"]
    with pytest.raises(SystemExit, match="--train-qrels"):
        main(common + ["--towers", "linear", "--overwrite"])
    with pytest.raises(SystemExit, match="--train-query-ids"):
        main(common + labels[:2] + labels[4:] + ["--overwrite"])


def test_build_shards_cli(tmp_path, capsys):
    from ebr.index.sharded import open_sharded
    from ebr.search.sharded import ShardedSearcher
    from ebr.spec import SearchParams

    data = tmp_path / "gen"
    assert main(["--no-progress", "generate", "--out", str(data), "--n", "3000", "--dim", "16",
                 "--stream"]) == 0
    out = tmp_path / "idx"
    assert main(["--no-progress", "build", "--input", str(data / "corpus.fbin"), "--out",
                 str(out), "--spec", "IVF8,PQ4", "--niter", "5", "--shards", "3"]) == 0
    si = open_sharded(out)
    assert [s["ntotal"] for s in si.manifest.shards] == [1000, 1000, 1000]
    res, _ = ShardedSearcher(si).search(np.load(data / "queries_test.npy")[:3],
                                        SearchParams(k=5, nprobe=8, candidates=3000))
    assert (res.ids >= 0).all()
    capsys.readouterr()
    assert main(["inspect", "--index", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["shards"]) == 3 and info["memory"]["codes_bytes"] == 3000 * 4
