"""Cost curve of a single-node build and serve (issues 6, 22): N from 100k to 10M x 384.

    python bench/bench_scale.py [--n 100000 1000000 3000000 10000000] [--dim 384] [--spec-m 16]
                                [--profile minilm] [--distill-budget 0] [--target 0.95]
                                [--nprobes 16 32 64 128 256] [--candidates 100 200 400 800]
                                [--shards 2 | --shards] [--no-verify] [--steps ...]
                                [--work /tmp/ebr-scale] [--out bench/results] [--name scale]

Per N, each step in a fresh process (its peak RSS is its own):
  generate  the built-in generator (--profile, default minilm: MiniLM's fitted spectrum)
            streams corpus.fbin to disk (bounded memory)
  train     the build's training alone, timed (same sample, spec and trainer; nothing written):
            checks the training budget at 10M without the hour of encoding (not a default step)
  build     k-means IVF-PQ (nlist = 4 sqrt N or --nlist, PQ16, 100k training sample), encoding
            and the dense store written sequentially; optionally Distill-VQ with pseudo-queries
            and a time budget (--distill-budget 0 turns it off)
  exact     brute force over the dense store for the test queries' top-10 (saved once)
  serve     cold start: the dense store evicted from the page cache (posix_fadvise DONTNEED),
            open the index (checksums verified unless --no-verify); the first --sweep-queries
            queries choose nprobe and C from the grid (the cheapest reaching --target
            recall@10); the rest are answered one at a time, cold (page cache evicted again)
            with mapped reads alone (_cold_mmap), cold with the hybrid read path
            (ebr.io.vecs.RowPrefetch: rows read together once gathers turn slow; _cold), then
            warm (with it, and _warm_mmap without): recall@10, QPS, p50/p99, the share of the
            dense store resident, and the
            process' private memory (RssAnon) vs mapped file pages (RssFile, page cache)
  shards   the same build written by Ray Data into --shards shards (same codebooks: trained
           once with the same seed and sample), served by in-process fan-out with exact merge;
           reports whether every query's top-10 equals the single-node index's
Writes <name>.json, <name>.md and <name>.png (build seconds, peak RSS and QPS against N).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import proc_memory  # noqa: E402


def _data_dir(task: dict[str, Any]) -> Path:
    return Path(task["work"]) / f"data-{task['profile']}-{task['n']}"


def _index_dir(task: dict[str, Any], shards: int = 1) -> Path:
    tag = "distill" if task["distill_budget"] else "kmeans"
    return Path(task["work"]) / (f"index-{task['profile']}-{tag}-{task['n']}" +
                                 (f"-s{shards}" if shards > 1 else ""))


def generate(task: dict[str, Any]) -> dict[str, Any]:
    from ebr.data.synthetic import SyntheticConfig, write_stream

    out = _data_dir(task)
    t0 = time.perf_counter()
    if not (out / "corpus.fbin").exists():
        write_stream(SyntheticConfig(n=task["n"], d=task["dim"], nq=task["nq"],
                                     n_clusters=256, profile=task["profile"]), out)
    return {"generate_s": round(time.perf_counter() - t0, 1),
            "generate_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024)}


def _training(task: dict[str, Any]) -> tuple[Any, Any]:
    """(the build's parameters, its Distill-VQ trainer or None): one definition for the build
    and the training-only step."""
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    nlist = task["nlist"] or 2 ** round(math.log2(4 * math.sqrt(task["n"])))
    spec = IndexSpec.parse(f"IVF{nlist},PQ{task['m']}")
    trainer = None
    if task["distill_budget"]:
        from ebr.train.distill_vq import DistillConfig, DistillVQTrainer

        trainer = DistillVQTrainer(DistillConfig(
            time_budget_s=task["distill_budget"], val_nprobe=task["distill_val_nprobe"],
            val_candidates=task["distill_val_candidates"], corpus_size=task["n"]))
    params = BuildParams(spec=spec, metric=Metric.IP, train_size=100_000,
                         codebooks="distill" if trainer else "kmeans")
    return params, trainer


def _training_row(trainer: Any) -> dict[str, Any]:
    if trainer is None:
        return {}
    info = trainer.info
    guard = info.get("guard", {})
    return {"kmeans_s": info["seconds"]["kmeans_init"],
            "distill_s": round(info["seconds"]["total"] - info["seconds"]["kmeans_init"], 1),
            "codebooks_kept": guard.get("kept", "learned"),
            "codebooks_start": info.get("start", "")}


def build(task: dict[str, Any]) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.index.writer import write_index
    from ebr.io.vecs import load_vectors

    x = load_vectors(_data_dir(task) / "corpus.fbin")
    params, trainer = _training(task)
    out = _index_dir(task)
    m = write_index(out, x, params, trainer=trainer, overwrite=True)
    secs = m.build["seconds"]
    row = {"spec": str(params.spec), "build_s": secs["total"],
           "train_s": round(secs["train"], 1),
           "encode_write_s": round(secs["encode_and_write_dense"], 1),
           "coarse_checksums_s": round(secs["write_coarse_and_checksums"], 1),
           "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / 1024),
           "disk_mb": round(sum(f.bytes for f in m.files.values()) / 1e6, 1)}
    return {**row, **_training_row(trainer)}


def train(task: dict[str, Any]) -> dict[str, Any]:
    """The build's training alone (same sample, spec and trainer; nothing encoded or
    written): times the training budget at 10M without an hour of encoding."""
    import logging

    logging.basicConfig(level=logging.INFO)
    from ebr.index.writer import train_codebooks
    from ebr.io.vecs import load_vectors

    x = load_vectors(_data_dir(task) / "corpus.fbin")
    params, trainer = _training(task)
    t0 = time.perf_counter()
    train_codebooks(x, params, trainer)
    row = {"spec": str(params.spec), "train_s": round(time.perf_counter() - t0, 1),
           "train_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / 1024)}
    return {**row, **_training_row(trainer)}


def exact(task: dict[str, Any]) -> dict[str, Any]:
    """Exact top-10 of the test queries (brute force over the dense store), saved once: its own
    process, so the serving processes never map the whole store."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.index.reader import open_index
    from ebr.search.exact import exact_search
    from ebr.search.searcher import Searcher

    path = _index_dir(task) / "exact_top10.npy"
    t0 = time.perf_counter()
    if not path.exists():
        oi = open_index(_index_dir(task), verify_checksums=False)
        xq = np.load(_data_dir(task) / "queries_test.npy")
        ex = exact_search(Searcher(oi).prepare_queries(xq), oi.dense, 10, oi.metric)
        np.save(path, ex.ids)
    return {"exact_s": round(time.perf_counter() - t0, 1)}


def _dense_files(index: Path) -> list[Path]:
    from ebr.io import layout

    return [index / name for name in layout.DENSE.values() if (index / name).exists()]


def drop_cache(index: Path, mapped: Any = None) -> None:
    """Evict the dense store from the page cache. ``mapped``: this process' array over it,
    whose faulted-in pages are unmapped first (the kernel keeps pages that a process maps)."""
    import mmap

    base = mapped
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    if base is not None:
        base.madvise(mmap.MADV_DONTNEED)
    for f in _dense_files(index):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(index: Path) -> float:
    """Share of the dense store's pages in the page cache (mincore over a fresh mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    total = resident = 0
    for f in _dense_files(index):
        size = f.stat().st_size
        npages = -(-size // mmap.PAGESIZE)
        fd = os.open(f, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {f}")
            try:
                vec = np.zeros(npages, dtype=np.uint8)
                if libc.mincore(addr, size, vec.ctypes.data) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {f}")
                resident += int((vec & 1).sum())
                total += npages
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / max(total, 1)


def _timed(s: Any, xq: np.ndarray, p: Any) -> tuple[np.ndarray, list[float]]:
    lat, ids = [], []
    for i in range(len(xq)):
        t = time.perf_counter()
        r, _ = s.search(xq[i], p)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids[0])
    return np.array(ids), lat


def _lat(lat: list[float], tag: str) -> dict[str, float]:
    return {f"qps{tag}": round(len(lat) / sum(lat)),
            f"p50_ms{tag}": round(1e3 * float(np.median(lat)), 3),
            f"p99_ms{tag}": round(1e3 * float(np.percentile(lat, 99)), 3)}


def serve(task: dict[str, Any]) -> dict[str, Any]:
    """Cold start, then warm: evict the dense store from the page cache, open the index (its
    coarse part into RAM), and answer the test queries one at a time (cold: every re-rank read
    can miss); then choose nprobe and C (the fastest setting of the grid reaching
    --target recall@10) and answer them again, warm."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.eval.metrics import recall_vs_exact
    from ebr.index.reader import open_index
    from ebr.search.searcher import Searcher
    from ebr.spec import SearchParams

    index = _index_dir(task)
    ex = np.load(index / "exact_top10.npy")
    xq = np.load(_data_dir(task) / "queries_test.npy")
    drop_cache(index)
    cold_resident = resident_fraction(index)
    base = proc_memory()
    t0 = time.perf_counter()
    oi = open_index(index, verify_checksums=task["verify"])
    open_s = time.perf_counter() - t0
    s = Searcher(oi)
    # the grid, on a warm-up slice first (it also warms the coarse stage, not the dense rows)
    sweep = []
    head = xq[:task["sweep_queries"]]
    for nprobe in task["nprobes"]:
        for cands in task["candidates"]:
            r, _ = s.search(head, SearchParams(k=10, nprobe=nprobe, candidates=cands))
            sweep.append({"nprobe": nprobe, "C": cands,
                          "recall@10": recall_vs_exact(r.ids, ex[:len(head)], 10)})
    # cold: the chosen setting's first pass over the held-out rest, right after eviction
    ok = [r for r in sweep if r["recall@10"] >= task["target"]]
    # cost model: the coarse scan grows with nprobe, the re-rank with C (one read each)
    pick = min(ok, key=lambda r: (r["nprobe"] * 8 + r["C"])) if ok else \
        max(sweep, key=lambda r: r["recall@10"])
    p = SearchParams(k=10, nprobe=pick["nprobe"], candidates=pick["C"])
    rest = xq[task["sweep_queries"]:]
    pre = oi.prefetch
    assert pre is not None
    threshold = pre.slow_us_per_row
    # cold, mapped reads alone (the hybrid path held off), then cold with it, then warm
    pre.slow_us_per_row, pre.active = float("inf"), False
    drop_cache(index, oi.dense)  # the sweep read some rows: evict again
    _, cold_mmap = _timed(s, rest, p)
    drop_cache(index, oi.dense)
    pre.slow_us_per_row = threshold
    ids, cold = _timed(s, rest, p)
    after_cold = resident_fraction(index)
    hinted = pre.hinted_rows
    _timed(s, rest, p)  # the rows these queries read are all in the page cache now
    ids, warm = _timed(s, rest, p)
    pre.slow_us_per_row, pre.active = float("inf"), False
    _, warm_mmap = _timed(s, rest, p)
    st = proc_memory()
    mem = oi.memory()
    return {"open_s": round(open_s, 1), "nprobe": pick["nprobe"], "C": pick["C"],
            "recall@10": recall_vs_exact(ids, ex[task["sweep_queries"]:], 10),
            **_lat(warm, ""), **_lat(cold, "_cold"), **_lat(cold_mmap, "_cold_mmap"),
            **_lat(warm_mmap, "_warm_mmap"), "rows_hinted_cold": hinted,
            "dense_resident_cold": round(cold_resident, 4),
            "dense_resident_after_cold_pass": round(after_cold, 4),
            "serve_rss_anon_mb": round((st["RssAnon"] - base["RssAnon"]) / 1e6, 1),
            "serve_rss_anon_total_mb": round(st["RssAnon"] / 1e6, 1),
            "serve_rss_file_mb": round(st["RssFile"] / 1e6, 1),
            "coarse_ram_mb": round(mem["coarse_ram_bytes"] / 1e6, 1),
            "coarse_B_per_vec": round(mem["coarse_ram_bytes_per_vector"], 1),
            "sweep": sweep}


def build_ray(task: dict[str, Any]) -> dict[str, Any]:
    """The same build as shards written by Ray Data (local Ray instance on this machine)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.index.distributed import build_on_ray
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    n = task["n"]
    nlist = task["nlist"] or 2 ** round(math.log2(4 * math.sqrt(n)))
    t0 = time.perf_counter()
    build_on_ray(_index_dir(task, task["shards"]), _data_dir(task) / "corpus.fbin",
                 BuildParams(spec=IndexSpec.parse(f"IVF{nlist},PQ{task['m']}"),
                             metric=Metric.IP, train_size=100_000), task["shards"],
                 overwrite=True)
    return {"build_s": round(time.perf_counter() - t0, 1),
            "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024)}


def serve_shards(task: dict[str, Any]) -> dict[str, Any]:
    """In-process fan-out over the shards; agreement with the single-node index's answers."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.eval.metrics import recall_vs_exact
    from ebr.index.reader import open_index
    from ebr.index.sharded import open_sharded
    from ebr.search.exact import exact_search
    from ebr.search.searcher import Searcher
    from ebr.search.sharded import ShardedSearcher
    from ebr.spec import SearchParams

    si = open_sharded(_index_dir(task, task["shards"]))
    s = ShardedSearcher(si)
    single = Searcher(open_index(_index_dir(task)))
    xq = np.load(_data_dir(task) / "queries_test.npy")
    p = SearchParams(k=10, nprobe=32, candidates=200)
    s.search(xq[:20], p)
    lat, ids = [], []
    for i in range(len(xq)):
        t = time.perf_counter()
        r, _ = s.search(xq[i], p)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids[0])
    ids_a = np.array(ids)
    ref, _ = single.search(xq, p)
    ex = exact_search(single.prepare_queries(xq), single.index.dense, 10, single.index.metric)
    return {"recall@10": recall_vs_exact(ids_a, ex.ids, 10),
            "same_as_single_node": float((ids_a == ref.ids).all(axis=1).mean()),
            "qps": round(len(lat) / sum(lat)), "p50_ms": round(1e3 * float(np.median(lat)), 3),
            "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3)}


def _in_child(fn: Any, task: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        return pool.submit(fn, task).result()


def _printed_rows(log: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(single-node rows, shard rows) from the JSON rows a run printed: the last per (N,
    shards), each printed row holding every step run so far."""
    last: dict[tuple[int, int], dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            last[(r["N"], r.get("shards", 1))] = r
    ordered = sorted(last.items())
    return ([r for (_, k), r in ordered if k == 1], [r for (_, k), r in ordered if k > 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--spec-m", type=int, default=16)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--nlist", type=int, default=0,
                    help="fixed nlist for every N (0: 4 sqrt N rounded to a power of 2); a "
                    "fixed nlist isolates how the encode + write cost grows with N")
    ap.add_argument("--shards", type=int, nargs="*", default=None,
                    help="also build with Ray Data into this many shards and serve by fan-out "
                    "(default: 2 shards for N <= 1M; none above, an hour's build at 10M; "
                    "--shards alone: none)")
    ap.add_argument("--distill-budget", type=float, default=0.0,
                    help="Distill-VQ time budget in seconds (0: k-means codebooks)")
    ap.add_argument("--distill-val-nprobe", type=int, default=16,
                    help="the serving nprobe the Distill-VQ guard validates at")
    ap.add_argument("--distill-val-candidates", type=int, default=1600,
                    help="the serving C the guard validates at (scaled to the training sample)")
    ap.add_argument("--profile", default="minilm", choices=["minilm", "clusters"],
                    help="the generator's profile (minilm: fitted to MiniLM's spectrum)")
    ap.add_argument("--target", type=float, default=0.95,
                    help="re-ranked recall@10 the chosen nprobe and C must reach")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--sweep-queries", type=int, default=200,
                    help="test queries that choose nprobe and C; the rest are timed")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the sha256 of every file at open (sizes are still checked)")
    ap.add_argument("--steps", nargs="+", default=["generate", "build", "exact", "serve"],
                    choices=["generate", "train", "build", "exact", "serve"],
                    help="steps to run (serve alone: a new grid on indexes already built; "
                    "train alone: the build's training timed, nothing written)")
    ap.add_argument("--work", default="/tmp/ebr-scale")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="scale")
    ap.add_argument("--rows-from", help="write the report from the JSON rows a run printed "
                    "(its log; the last row per N), without running anything")
    ap.add_argument("--command", help="with --rows-from: the command that printed the rows")
    args = ap.parse_args()
    if args.sweep_queries >= args.nq:
        raise SystemExit("--sweep-queries must leave test queries to time")
    rows: list[dict[str, Any]] = []
    shard_rows: list[dict[str, Any]] = []
    if args.rows_from:
        rows, shard_rows = _printed_rows(Path(args.rows_from))
    for n in [] if args.rows_from else args.n:
        task = {"n": n, "dim": args.dim, "m": args.spec_m, "nq": args.nq, "work": args.work,
                "distill_budget": args.distill_budget, "nlist": args.nlist,
                "distill_val_nprobe": args.distill_val_nprobe,
                "distill_val_candidates": args.distill_val_candidates,
                "profile": args.profile, "target": args.target, "nprobes": args.nprobes,
                "candidates": args.candidates, "sweep_queries": args.sweep_queries,
                "verify": not args.no_verify}
        row: dict[str, Any] = {"N": n, "dim": args.dim}
        for step in (generate, train, build, exact, serve):
            if step.__name__ not in args.steps:
                continue
            row.update(_in_child(step, task))
            print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
        rows.append(row)
        shards = args.shards if args.shards is not None else ([2] if n <= 1_000_000 else [])
        for k in shards if "build" in args.steps else []:
            t = {**task, "shards": k}
            srow: dict[str, Any] = {"N": n, "dim": args.dim, "shards": k, "spec": row["spec"]}
            srow.update(_in_child(build_ray, t))
            srow.update(_in_child(serve_shards, t))
            print(json.dumps(srow), flush=True)
            shard_rows.append(srow)
    from ebr.eval.report import write_report

    train_only = args.steps == ["train"] or args.steps == ["generate", "train"]
    meta = {"title": f"ebr training alone: N x {args.dim} (generator profile {args.profile}), "
                     f"PQ{args.spec_m}, 100k training sample, 2 cores" if train_only else
                     f"ebr single-node cost curve: N x {args.dim} (generator profile "
                     f"{args.profile}), PQ{args.spec_m}, nprobe and C chosen per N for "
                     f"recall@10 >= {args.target}, 2 cores",
            "command": args.command or " ".join(["python bench/bench_scale.py", *sys.argv[1:]]),
            "codebooks": "Distill-VQ (pseudo-queries, budget "
                         f"{args.distill_budget:.0f} s)" if args.distill_budget else "k-means"}
    cols = ["N", "spec", "codebooks_start", "codebooks_kept", "generate_s", "build_s",
            "train_s", "kmeans_s", "distill_s", "train_peak_rss_mb",
            "encode_write_s", "coarse_checksums_s", "build_us_per_vec", "build_peak_rss_mb",
            "disk_mb", "coarse_ram_mb", "coarse_B_per_vec", "open_s", "serve_rss_anon_mb",
            "serve_rss_anon_total_mb", "serve_rss_file_mb", "nprobe", "C", "recall@10", "qps",
            "p50_ms", "p99_ms", "qps_warm_mmap", "qps_cold", "p50_ms_cold", "p99_ms_cold",
            "qps_cold_mmap", "p50_ms_cold_mmap", "p99_ms_cold_mmap",
            "dense_resident_cold", "dense_resident_after_cold_pass"]
    for r in rows:
        r["shards"] = 1
        if "build_s" in r:
            r["build_us_per_vec"] = round(1e6 * r["build_s"] / r["N"], 1)
    paths = write_report(args.out, args.name, meta, rows, plot=False, columns=cols)
    if shard_rows:
        from ebr.eval.report import markdown_table

        scols = ["N", "shards", "spec", "build_s", "build_peak_rss_mb", "recall@10",
                 "same_as_single_node", "qps", "p50_ms", "p99_ms"]
        single = [{**r, "same_as_single_node": 1.0} for r in rows]
        md = Path(paths["md"]).read_text() + "\n## 1 vs N shards (Ray Data build, " \
            "in-process fan-out)\n\n" + markdown_table(
                sorted(single + shard_rows, key=lambda r: (r["N"], r["shards"])), scols) + "\n"
        Path(paths["md"]).write_text(md)
        data = json.loads(Path(paths["json"]).read_text())
        data["shard_rows"] = shard_rows
        Path(paths["json"]).write_text(json.dumps(data, indent=2, default=str))
    if all("build_s" in r for r in rows):  # a serve-only run has no build figures to plot
        _plot(Path(args.out) / f"{args.name}.png", rows)
    print(Path(paths["md"]).read_text())
    return 0


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["N"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(n, [r["build_s"] for r in rows], "o-", label="build total")
    ax[0].plot(n, [r["train_s"] for r in rows], "s--", label="training (sample)")
    ax[0].plot(n, [r["encode_write_s"] for r in rows], "^--", label="encode + write")
    ax[0].set_ylabel("seconds")
    ax[1].plot(n, [r["build_peak_rss_mb"] for r in rows], "o-", label="build peak RSS")
    ax[1].plot(n, [r["serve_rss_anon_total_mb"] for r in rows], "s-", label="serve RssAnon")
    ax[1].plot(n, [r["disk_mb"] for r in rows], "^--", label="index on disk")
    ax[1].set_ylabel("MB")
    ax[2].plot(n, [r["qps"] for r in rows], "o-", label="single-query QPS, warm")
    ax[2].plot(n, [r["qps_cold"] for r in rows], "s--", label="cold (page cache dropped)")
    ax[2].set_ylabel("QPS (nprobe, C for recall@10 >= target)")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("N vectors")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("ebr cost curve (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
