"""List `Any` in the signatures of public functions and methods (the "no Any at public
boundaries" rule of the house plan). Exit status 1 when any is found."""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def _mentions_any(node: ast.AST | None) -> bool:
    return node is not None and any(isinstance(n, ast.Name) and n.id == "Any" or
                                    isinstance(n, ast.Attribute) and n.attr == "Any"
                                    for n in ast.walk(node))


def _public(path: Path) -> bool:
    return not any(part.startswith("_") and part != "__init__.py" for part in path.parts)


def scan(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if not _public(path.relative_to(root.parent)):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for scope in [tree, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                              and not n.name.startswith("_")]]:
            for fn in getattr(scope, "body", []):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if fn.name.startswith("_") and fn.name != "__init__":
                    continue
                a = fn.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs,
                        *[x for x in (a.vararg, a.kwarg) if x is not None]]
                if any(_mentions_any(x.annotation) for x in args) or _mentions_any(fn.returns):
                    found.append(f"{path}:{fn.lineno}: {fn.name}")
    return found


if __name__ == "__main__":
    hits = [h for r in (sys.argv[1:] or ["ebr", "service", "index_build"]) for h in scan(Path(r))]
    sys.stdout.write("".join(h + "\n" for h in hits))
    sys.exit(1 if hits else 0)
