"""An unseen corpus for the learned-codebooks benchmarks (issue 21), built from what this
machine already has: the descriptions of Debian's packages in apt's lists (the English description lists:
``apt-get -o Acquire::Languages=en update`` fetches them). Nothing was ever tuned on it.

    python bench/make_debian_corpus.py [--out runs/debian-packages] [--docs 30000]

Documents: a package's long description (the lines after its one-line summary), packages
whose long description has at least 12 words, exact duplicates of a description dropped
(templated ``-doc`` / ``-dbg`` texts), a seeded sample of ``--docs``. Queries: the one-line
summaries of ``--queries`` of those documents (seeded, unique summaries), split in half into
train and test; each query's relevant document is its own package (qrels score 1). The
output is a BEIR directory (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv)
with MiniLM embeddings of the corpus and of both query splits in ``embeddings/``, in the
row order of corpus.jsonl and of the ``queries_<split>_ids.txt`` files, as ../shared/data's
SciFact has them. Encoding 30,000 descriptions takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LISTS = "/var/lib/apt/lists/*_main_i18n_Translation-en*"


def _packages() -> dict[str, tuple[str, str]]:
    """{package: (summary, long description)} from apt's English description lists."""
    out: dict[str, tuple[str, str]] = {}
    for path in sorted(glob.glob(LISTS)):
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True,
                              capture_output=True, text=True).stdout
        for stanza in text.split("\n\n"):
            name, summary, body, in_desc = None, None, [], False
            for line in stanza.split("\n"):
                if line.startswith("Package: "):
                    name = line[9:].strip()
                elif line.startswith("Description-en: "):
                    summary, in_desc = line[16:].strip(), True
                elif in_desc and line.startswith(" "):
                    part = line.strip()
                    body.append("" if part == "." else part)
                elif in_desc:
                    in_desc = False
            if name and summary and name not in out:
                out[name] = (summary, " ".join(p for p in body if p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "debian-packages"))
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    pkgs = _packages()
    if not pkgs:
        raise SystemExit(f"no description lists at {LISTS}: run "
                         "apt-get -o Acquire::Languages=en update first")
    seen, docs = set(), []
    for name in sorted(pkgs):
        summary, body = pkgs[name]
        if len(body.split()) >= 12 and body not in seen:
            seen.add(body)
            docs.append((name, summary, body))
    rng = np.random.default_rng(args.seed)
    docs = [docs[i] for i in np.sort(rng.choice(len(docs), min(args.docs, len(docs)),
                                                replace=False))]
    summaries: dict[str, int] = {}
    for _, summary, _ in docs:
        summaries[summary.lower()] = summaries.get(summary.lower(), 0) + 1
    unique = [i for i, (_, s, _) in enumerate(docs) if summaries[s.lower()] == 1]
    picked = rng.choice(unique, size=min(args.queries, len(unique)), replace=False)
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
        np.save(out / "embeddings" / f"queries_{split}_all-MiniLM-L6-v2.f32.npy",
                enc.encode([docs[i][1] for i in idx]))
    x = enc.encode([body for _, _, body in docs], progress=True)
    np.save(out / "embeddings" / "corpus_all-MiniLM-L6-v2.f32.npy", x)
    print(json.dumps({"out": str(out), "packages": len(pkgs), "documents": len(docs),  # noqa: T201
                      "queries": {k: len(v) for k, v in splits.items()},
                      "encode_seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
