"""``index_build`` / ``python -m index_build``: the offline builder.

    index_build build     vectors (.npy/.fvecs/.fbin), a BEIR directory or --synthetic -> index dir
    index_build evaluate  held-out queries -> recall / nDCG / latency sweep (JSON, Markdown, PNG)
    index_build inspect   print an index directory's manifest summary and memory
    index_build generate  write the built-in synthetic dataset (corpus, queries, qrels) to a dir
    index_build compact   fold a living index's write-ahead log into a new generation
    index_build retrain   compact, then learn the codebooks again from the current documents
    index_build demo      generate -> build -> evaluate on the built-in data (the README's main job)
"""

from __future__ import annotations

import logging

import faiss

from ebr.errors import EbrError
from index_build.build import build
from index_build.cli import parser
from index_build.commands import compact, demo, evaluate, generate, inspect, retrain

logger = logging.getLogger("index_build")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    try:
        {"build": build, "evaluate": evaluate, "inspect": inspect, "generate": generate,
         "demo": demo, "compact": compact, "retrain": retrain}[args.cmd](args)
    except EbrError as e:
        logger.error("%s: %s", type(e).__name__, e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
