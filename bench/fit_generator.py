"""The generator's "minilm" profile against the embeddings it was fitted to (issue 21).

    python bench/fit_generator.py [--out bench/results]

Measures, on SciFact's MiniLM embeddings (../shared/data) and on a generated set of the same
size and dimension (``SyntheticConfig(profile="minilm")``), and on the default profile: the
power-law slope of the centred covariance's eigenvalues (ranks 2-100), the share of the second
moment in the top 10 directions, the norm of the mean, the share of variance between 64
k-means clusters, the queries' offset from the documents' mean, a query's best document score
and a document's nearest neighbour score. The profile's constants (``MINILM_FIT``) are the
SciFact column, rounded. Writes generator_fit.json and generator_fit.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ebr.data.synthetic import SyntheticConfig, generate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scifact" / "embeddings"


def stats(xb: np.ndarray, xq: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, x in (("doc", xb), ("query", xq)):
        m = x.mean(0)
        ev = np.linalg.eigvalsh(np.cov((x - m).T, bias=True))[::-1]
        second = np.linalg.eigvalsh(x.T @ x / len(x))[::-1]
        i = np.arange(2, 101)
        out[f"{name}_slope"] = round(-float(np.polyfit(np.log(i), np.log(ev[1:100]), 1)[0]), 3)
        out[f"{name}_top10_share"] = round(float(second[:10].sum() / second.sum()), 3)
        out[f"{name}_mean_norm"] = round(float(np.linalg.norm(m)), 3)
    km = faiss.Kmeans(xb.shape[1], 64, niter=20, seed=1)
    km.train(np.ascontiguousarray(xb))
    _, a = km.index.search(np.ascontiguousarray(xb), 1)
    mb = xb.mean(0)
    out["between_share_64"] = round(float(
        1 - ((xb - km.centroids[a.ravel()]) ** 2).sum() / ((xb - mb) ** 2).sum()), 3)
    out["query_offset"] = round(float(np.linalg.norm(xq.mean(0) - mb)), 3)
    out["query_top1"] = round(float((xq @ xb.T).max(1).mean()), 3)
    sd = xb[:2000] @ xb.T
    sd[np.arange(2000), np.arange(2000)] = -1
    out["doc_nn"] = round(float(sd.max(1).mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cols: dict[str, dict[str, float]] = {}
    if (DATA / "corpus_all-MiniLM-L6-v2.f32.npy").exists():
        xb = np.load(DATA / "corpus_all-MiniLM-L6-v2.f32.npy")
        xq = np.concatenate([np.load(DATA / "queries_test_all-MiniLM-L6-v2.f32.npy"),
                             np.load(DATA / "queries_train_all-MiniLM-L6-v2.f32.npy")])
        cols["SciFact MiniLM (5,183 x 384)"] = stats(xb, xq)
    for profile, d in (("minilm", 384), ("clusters", 384), ("clusters", 128)):
        ds = generate(SyntheticConfig(n=5183, d=d, nq=1109, nq_train=8, profile=profile))
        cols[f"generated {profile} (5,183 x {d})"] = stats(ds.xb, ds.xq)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generator_fit.json").write_text(json.dumps(cols, indent=2))
    keys = list(next(iter(cols.values())))
    md = ["# The generator's profiles against MiniLM on SciFact", "",
          "`python bench/fit_generator.py`", "",
          "| measure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {k} | " + " | ".join(str(c[k]) for c in cols.values()) + " |" for k in keys]
    (out / "generator_fit.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
