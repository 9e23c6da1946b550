"""schemathesis hooks for ``bench/bench_fuzz.py``: the two request rules JSON Schema cannot
state (the OpenAPI descriptions say them; the server answers 422 / 413):

- a search's candidate count (candidates / k_coarse) must be >= its k;
- the per-request sums (EBR_MAX_*_PER_REQUEST) over a batch's searches.

Generated bodies that break them are dropped before they are sent, so that every remaining
schema-valid request must be accepted (``positive_data_acceptance``). Limits are read from the
same EBR_* variables the server was started with.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis


def _limit(name: str, default: int) -> int:
    return int(os.environ.get(f"EBR_MAX_{name}_PER_REQUEST", default))


def _searches(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("searches"), list):
        return [s for s in body["searches"] if isinstance(s, dict)]
    return [body] if isinstance(body, dict) else []


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _breaks_cross_field_rules(body: Any) -> bool:
    searches = _searches(body)
    hits = cand = vectors = exact = 0
    for s in searches:
        k = s.get("k", 10)
        params = s.get("params") if isinstance(s.get("params"), dict) else {}
        count = params.get("candidates", params.get("k_coarse"))
        if _num(k) and _num(count) and count < k:
            return True
        if _num(k):
            hits += k
            vectors += k if (s.get("with_vector") or s.get("return_vectors")) is True else 0
        exact += params.get("exact") is True
        cand += count if _num(count) else 100
    return (hits > _limit("HITS", 10_000) or cand > _limit("CANDIDATES", 100_000)
            or vectors > _limit("VECTORS", 1_000) or exact > _limit("EXACT", 4))


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    return not _breaks_cross_field_rules(body)


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    return not _breaks_cross_field_rules(case.body)
