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

import glob
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import build_unseen_corpus, unseen_corpus_args  # noqa: E402

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
    args = unseen_corpus_args(__doc__.split("\n")[0], ROOT / "runs" / "debian-packages")
    pkgs = _packages()
    if not pkgs:
        raise SystemExit(f"no description lists at {LISTS}: run "
                         "apt-get -o Acquire::Languages=en update first")
    long_enough = {name: (summary, body) for name, (summary, body) in pkgs.items()
                   if len(body.split()) >= 12}
    print(json.dumps({"packages": len(pkgs),  # noqa: T201
                      **build_unseen_corpus(long_enough, args)}))

if __name__ == "__main__":
    main()
