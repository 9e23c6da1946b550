"""A second unseen corpus for the learned-codebooks benchmarks (issue 21), from what this
machine already has: the docstrings of the Python packages installed beside ebr (read with
``ast``, nothing imported). Nothing was ever tuned on it.

    python bench/make_pydoc_corpus.py [--out runs/pydoc-docstrings] [--docs 30000]

Documents: a function's, method's or class's explanatory paragraph (the docstring's second
paragraph, when it is prose: not a "Parameters" / "Args:" / "Examples" section, a doctest or
a list) of at least 12 words, test modules left out, exact duplicates dropped, a seeded sample
of ``--docs`` (all of them when fewer). Queries: the docstrings' one-line summaries (4-30
words) of ``--queries`` of those documents (seeded, unique summaries), split in half into
train and test; each query's relevant document is its own (qrels score 1). The output has the
shape of bench/make_debian_corpus.py's (a BEIR directory with MiniLM embeddings). Which
documents it holds depends on the packages installed (``scripts/setup.sh`` with every extra:
~18,500 paragraphs from ~17,000 modules).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import build_unseen_corpus, unseen_corpus_args  # noqa: E402

# a second paragraph that opens a section, a doctest, a directive or a list is not prose
NOT_PROSE = re.compile(r"^(Parameters|Args|Arguments|Returns?|Yields?|Raises|Examples?|Notes?|"
                       r"See Also|Attributes|Keyword|Usage|Example usage|>>>|\.\.|:param|"
                       r":return|-|\*)")


def _paragraphs(root: Path) -> dict[str, tuple[str, str]]:
    """{qualified name: (summary, explanatory paragraph)} of the docstrings under ``root``."""
    out: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*.py")):
        if {"tests", "test"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        stack: list[tuple[ast.AST, str]] = [
            (tree, ".".join(path.relative_to(root).with_suffix("").parts))]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                name = f"{prefix}.{child.name}"
                if isinstance(child, ast.ClassDef):
                    stack.append((child, name))
                paras = re.split(r"\n\s*\n", (ast.get_docstring(child) or "").strip())
                if len(paras) < 2:
                    continue
                summary, body = " ".join(paras[0].split()), " ".join(paras[1].split())
                if (4 <= len(summary.split()) <= 30 and len(body.split()) >= 12 and
                        not NOT_PROSE.match(body) and "----" not in body[:60] and
                        "====" not in body[:60]):
                    out.setdefault(name, (summary, body))
    return out


def main() -> None:
    args = unseen_corpus_args(__doc__.split("\n")[0], ROOT / "runs" / "pydoc-docstrings")
    found = _paragraphs(Path(sysconfig.get_paths()["purelib"]))
    print(json.dumps({"docstrings": len(found),  # noqa: T201
                      **build_unseen_corpus(found, args)}))

if __name__ == "__main__":
    main()
