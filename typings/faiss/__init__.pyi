# faiss is a SWIG module whose bundled stubs cover part of it; ebr treats it as untyped (Any)
# rather than cast at every call into the C++ objects. mypy finds this first (mypy_path).
from typing import Any

def __getattr__(name: str) -> Any: ...
