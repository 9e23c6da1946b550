"""What several benchmarks share: the embedded BEIR sets they read (and the generator's in the
same shape), the closed-loop HTTP load they generate, and a process' memory as /proc tells it.
Imported by the bench scripts (their directory is on sys.path)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

MINILM = "all-MiniLM-L6-v2"
# the unseen corpora that bench/make_debian_corpus.py and bench/make_pydoc_corpus.py build
# (absent until built)
DEBIAN = Path(__file__).resolve().parents[1] / "runs" / "debian-packages"
PYDOC = Path(__file__).resolve().parents[1] / "runs" / "pydoc-docstrings"
UNSEEN = {"debian": DEBIAN, "pydoc": PYDOC}


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """The memory fields of ``/proc/<pid>/status`` in bytes (VmRSS, VmHWM, RssAnon: private,
    RssFile: mapped files, ...: every field given in kB). OSError once the process is gone."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def embedded_beir(d: Path) -> dict[str, Any] | None:
    """A BEIR directory with precomputed MiniLM vectors in ``embeddings/`` (the shared SciFact,
    bench/make_debian_corpus.py's corpus): corpus and test-query vectors, their ids, the test
    qrels, and the training queries with their ids and qrels. None when the vectors are absent."""
    from ebr.io.beir import load_ids, load_qrels

    emb = d / "embeddings"
    if not emb.exists():
        return None
    return {"xb": np.load(emb / f"corpus_{MINILM}.f32.npy"),
            "ids": load_ids(d / "corpus.jsonl"),
            "xq": np.load(emb / f"queries_test_{MINILM}.f32.npy"),
            "qids": load_ids(emb / "queries_test_ids.txt"),
            "qrels": load_qrels(d / "qrels" / "test.tsv"),
            "xtrain": np.load(emb / f"queries_train_{MINILM}.f32.npy"),
            "train_ids": load_ids(emb / "queries_train_ids.txt"),
            "train_qrels": load_qrels(d / "qrels" / "train.tsv")}


def embedded_set(name: str, data: Path) -> dict[str, Any] | None:
    """:func:`embedded_beir` of ``scifact`` (under the shared ``data``) or of an unseen
    corpus (``debian``, ``pydoc``: :data:`UNSEEN`)."""
    return embedded_beir(data / "scifact" if name == "scifact" else UNSEEN[name])


def unseen_corpus_args(description: str, default_out: Path) -> argparse.Namespace:
    """The command line of a script that builds an unseen corpus (``--out``, ``--docs``,
    ``--queries``, ``--seed``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def build_unseen_corpus(found: dict[str, tuple[str, str]], args: argparse.Namespace
                        ) -> dict[str, Any]:
    """``found`` ({id: (summary, body)}) as an unseen corpus under ``args.out``: in id order,
    exact duplicates of a body dropped (the first id keeps it), a seeded sample of
    ``args.docs`` of them, written by :func:`write_unseen_corpus` with ``args.queries``
    queries (the same generator draws the sample and the queries)."""
    seen, docs = set(), []
    for name in sorted(found):
        summary, body = found[name]
        if body not in seen:
            seen.add(body)
            docs.append((name, summary, body))
    if len(docs) < args.queries:
        raise SystemExit(f"only {len(docs)} distinct documents found, fewer than --queries")
    rng = np.random.default_rng(args.seed)
    docs = [docs[i] for i in np.sort(rng.choice(len(docs), min(args.docs, len(docs)),
                                                replace=False))]
    return write_unseen_corpus(Path(args.out), docs, args.queries, rng)


def write_unseen_corpus(out: Path, docs: list[tuple[str, str, str]], n_queries: int,
                        rng: np.random.Generator) -> dict[str, Any]:
    """An unseen corpus as a BEIR directory with MiniLM embeddings, the shape of the shared
    SciFact: ``docs`` as (id, summary, body); each body is a document, the summaries of
    ``n_queries`` documents whose summary is unique (drawn by ``rng``) are the queries, split in half
    into train and test, each relevant to its own document (qrels score 1); the corpus and
    both query splits encoded in ``embeddings/``, in the row order of corpus.jsonl and of the
    ``queries_<split>_ids.txt`` files."""
    import json

    summaries: dict[str, int] = {}
    for _, summary, _ in docs:
        summaries[summary.lower()] = summaries.get(summary.lower(), 0) + 1
    unique = [i for i, (_, s, _) in enumerate(docs) if summaries[s.lower()] == 1]
    picked = rng.choice(unique, size=min(n_queries, len(unique)), replace=False)
    splits = {"train": picked[: len(picked) // 2], "test": picked[len(picked) // 2:]}
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "embeddings").mkdir(exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for name, _, body in docs:
            f.write(json.dumps({"_id": name, "title": "", "text": body}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in picked:
            f.write(json.dumps({"_id": f"q-{docs[i][0]}", "text": docs[i][1]}) + "\n")
    for split, idx in splits.items():
        with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in idx:
                f.write(f"q-{docs[i][0]}\t{docs[i][0]}\t1\n")
        (out / "embeddings" / f"queries_{split}_ids.txt").write_text(
            "".join(f"q-{docs[i][0]}\n" for i in idx))
    from ebr.io.encoder import TextEncoder

    enc = TextEncoder(batch_size=128)
    t0 = time.perf_counter()
    for split, idx in splits.items():
        np.save(out / "embeddings" / f"queries_{split}_{MINILM}.f32.npy",
                enc.encode([docs[i][1] for i in idx]))
    x = enc.encode([body for _, _, body in docs], progress=True)
    np.save(out / "embeddings" / f"corpus_{MINILM}.f32.npy", x)
    return {"out": str(out), "documents": len(docs),
            "queries": {k: len(v) for k, v in splits.items()},
            "encode_seconds": round(time.perf_counter() - t0, 1)}


def per_query_json(values: np.ndarray) -> list[float | None]:
    """Each query's figure as a result file keeps it: rounded to 4 places, null (JSON) where it
    is undefined (NaN: a query without a label)."""
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def paired_text(a: list[float | None], b: list[float | None]) -> str:
    """Two systems' :func:`per_query_json` lists on the same queries as ``"+0.0012 ± 0.0010"``:
    the mean of a - b where both are defined and its paired standard error
    (:func:`ebr.eval.metrics.paired_difference`)."""
    from ebr.eval.metrics import paired_difference

    mean, se, _ = paired_difference(np.array(a, dtype=np.float64),
                                    np.array(b, dtype=np.float64))  # null -> NaN
    return f"{mean:+.4f} ± {se:.4f}"


def paired_columns(rows: list[dict[str, Any]], key: str, exact_key: str,
                   is_opq: Callable[[dict[str, Any]], bool]) -> None:
    """Each row's per-query figure ``key`` minus its own ``exact_key`` (``nDCG_vs_exact``) and
    minus that of the same set and bytes' OPQ row (``nDCG_vs_opq``), on the same queries, as
    :func:`paired_text` gives them: rows without ``key`` are left as they are."""
    scored = [r for r in rows if key in r]
    for r in scored:
        r["nDCG_vs_exact"] = paired_text(r[key], r[exact_key])
        opq = next((o for o in scored if is_opq(o)
                    and (o["set"], o["bytes"]) == (r["set"], r["bytes"])), None)
        if opq is not None and opq is not r:
            r["nDCG_vs_opq"] = paired_text(r[key], opq[key])


def generated_set(n: int = 100_000, d: int = 384) -> dict[str, Any]:
    """The generator's realistic profile (``minilm``: the spectrum fitted to MiniLM on SciFact)
    in :func:`embedded_beir`'s shape: string ids, the planted qrels of the test and the
    training queries."""
    from ebr.data.synthetic import SyntheticConfig, generate

    g = generate(SyntheticConfig(n=n, d=d, nq=500, nq_train=1000, profile="minilm"))

    def qrels(rows: list[list[int]]) -> dict[str, dict[str, int]]:
        return {str(i): {str(r): 1 for r in rel} for i, rel in enumerate(rows)}

    return {"xb": g.xb, "ids": [str(i) for i in range(len(g.xb))], "xq": g.xq,
            "qids": [str(i) for i in range(len(g.xq))], "qrels": qrels(g.qrels),
            "xtrain": g.xq_train, "train_ids": [str(i) for i in range(len(g.xq_train))],
            "train_qrels": qrels(g.qrels_train)}


async def closed_loop(url: str, clients: int, seconds: float,
                      send: Callable[[Any, int], Awaitable[object]],
                      digits: int = 2) -> dict[str, float]:
    """``clients`` concurrent clients for ``seconds``, each its own ebr.client.AsyncClient with
    one connection (one shared httpx pool of many connections costs the load generator ~2.5x
    the CPU per request at 32, on the cores the server needs); client i sends
    ``send(client, j)`` for j = i, i + clients, ... Queries/s, p50/p99 latency (ms, rounded
    to ``digits``), errors."""
    from ebr.client import AsyncClient
    from ebr.errors import EbrError

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        j = i
        async with AsyncClient(url, timeout=60, retries=0, max_connections=1) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await send(c, j)
                except EbrError:
                    errors += 1
                lat.append(time.perf_counter() - t0)
                j += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    dt = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"queries": len(lat), "errors": errors, "qps": round(len(lat) / dt, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), digits),
            "p99_ms": round(float(np.percentile(ms, 99)), digits)}


_WRK_LUA = """
local bodies = {%s}
local counter = 0
function setup(thread)
  thread:set("first", counter)
  counter = counter + 1
end
function init(args)
  i = first
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i %% #bodies) + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("EBR_WRK %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_loop(url: str, path: str, bodies: list[str], clients: int, seconds: float,
             threads: int = 1, digits: int = 2) -> dict[str, float]:
    """The same closed loop as :func:`closed_loop` (``clients`` connections, each sending its
    next request when the last is answered), driven by ``wrk`` (C, epoll, one thread by
    default): a load generator that costs the shared cores ~0.05 ms per request instead of
    Python's ~2.5 ms. ``bodies``: JSON request bodies sent in turn. Non-2xx replies, socket
    errors and timeouts count as errors. Raises FileNotFoundError when wrk is not installed
    (Debian: ``apt-get install wrk``)."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("wrk")
    if exe is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk)")
    if any("]==]" in b for b in bodies):
        raise ValueError("a body holds the Lua long-string terminator ]==]")
    lua = _WRK_LUA % ", ".join(f"[==[{b}]==]" for b in bodies)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(lua)
        f.flush()
        out = subprocess.run([exe, "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
                              "--timeout", "60s", "-s", f.name, url.rstrip("/") + path],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("EBR_WRK "))
    n, dur_us, status, sock, p50, p99 = (int(v) for v in line.split()[1:])
    return {"queries": n, "errors": status + sock, "qps": round(n / (dur_us / 1e6), 1),
            "p50_ms": round(p50 / 1e3, digits), "p99_ms": round(p99 / 1e3, digits)}
