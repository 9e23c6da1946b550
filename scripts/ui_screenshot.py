"""Screenshot of the web page on a real index: SciFact (MiniLM vectors from ../shared/data,
titles and abstracts as payloads, a derived ``words`` field to filter on, Distill-VQ
codebooks, text queries through the offline encoder), a text query, the recall panel.

    .venv/bin/python scripts/ui_screenshot.py [--out docs/ui.png]

Needs the extras serve, text, train and test (playwright) and Debian's chromium."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ebr.index.trainers import make_trainer  # noqa: E402
from ebr.index.writer import write_index  # noqa: E402
from ebr.io.beir import corpus_payloads  # noqa: E402
from ebr.io.encoder import MINILM  # noqa: E402
from ebr.metric import Metric  # noqa: E402
from ebr.spec import BuildParams, IndexSpec  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scifact"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build(out: Path) -> None:
    if (out / "manifest.json").exists():
        return
    x = np.load(DATA / "embeddings" / "corpus_all-MiniLM-L6-v2.f32.npy")
    payloads = [(i, {**p, "words": len(p["text"].split())}) for i, p in corpus_payloads(DATA)]
    write_index(out, x, BuildParams(spec=IndexSpec.parse("IVF64,PQ16"), metric=Metric.IP,
                                    normalize=True, codebooks="distill"),
                [i for i, _ in payloads], trainer=make_trainer("distill"),
                encoder=dict(MINILM), payloads=payloads, index_fields={"words": "int"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "ui.png"))
    ap.add_argument("--index", default=str(ROOT / "runs" / "ui-scifact"))
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    build(Path(args.index))
    env = {**os.environ, "EBR_INDEX_DIR": args.index, "EBR_PORT": str(args.port)}
    server = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = b.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + "/ui/")
            page.wait_for_function("() => !document.getElementById('mode-text').disabled")
            page.check("input[name=mode][value=text]")
            page.get_by_test_id("query").fill("ketogenic diet reduces seizures in epilepsy")
            page.get_by_test_id("k").fill("8")
            page.get_by_test_id("nprobe").fill("8")
            page.get_by_test_id("candidates").fill("100")
            page.get_by_test_id("search").click()
            page.wait_for_function("() => document.querySelectorAll('[data-testid=hit]')"
                                   ".length === 8")
            page.get_by_test_id("measure").click()
            page.get_by_test_id("recall").wait_for(state="visible", timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
            b.close()
        print(f"wrote {args.out}")  # noqa: T201 - a script's output
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
