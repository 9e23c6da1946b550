"""Payload filters: a subset of Qdrant's filter language, parsed once, evaluated two ways.

    {"must": [...], "should": [...], "must_not": [...]}      nested freely
    {"key": "lang", "match": {"value": "en"}}                  equal (any element of an array)
    {"key": "tags", "match": {"any": ["a", "b"]}}              one of
    {"key": "year", "range": {"gte": 2020, "lt": 2024}}        numbers
    {"has_id": [3, 17]}                                        external ids
    keys with dots reach into nested objects: "meta.lang"

Only declared fields may be filtered on (``--index-field year:int``, kinds ``int``, ``float``,
``keyword``, ``bool``); each is indexed in the document table. :func:`parse_filter` checks
the filter against them (an unknown key, a wrong type, a malformed condition: InputError
naming where), :func:`to_sql` turns it into a WHERE clause over ``docs`` (the base's rows),
:func:`matches` evaluates it on one payload (the delta's rows, in memory). Both follow one
semantics, tested against each other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from ebr.errors import InputError
from ebr.types import ExternalId

__all__ = ["FIELD_KINDS", "Filter", "Match", "Range", "HasId", "Bool", "parse_filter",
           "parse_field", "to_sql", "matches", "MAX_CONDITIONS"]

FIELD_KINDS = ("int", "float", "keyword", "bool")
MAX_CONDITIONS = 256  # conditions in one filter (bounds the SQL and the work)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
Scalar: TypeAlias = int | float | str | bool


@dataclass(frozen=True)
class Match:
    key: str
    kind: str  # the field's kind: a value of another JSON type never matches
    values: tuple[Scalar, ...]  # one for "value", several for "any"


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class HasId:
    ids: tuple[ExternalId, ...]


@dataclass(frozen=True)
class Bool:
    must: tuple[Filter, ...] = ()
    should: tuple[Filter, ...] = ()
    must_not: tuple[Filter, ...] = ()


Filter: TypeAlias = Match | Range | HasId | Bool


def parse_field(text: str) -> tuple[str, str]:
    """``name:kind`` of ``--index-field``."""
    name, _, kind = text.partition(":")
    if not _KEY.match(name) or kind not in FIELD_KINDS:
        raise InputError(f"--index-field {text!r}: expected name:kind, kind one of "
                         f"{', '.join(FIELD_KINDS)} (name: letters, digits, _ and dots)")
    return name, kind


def _scalar(v: object, kind: str, where: str) -> Scalar:
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "float": isinstance(v, int | float) and not isinstance(v, bool),
          "keyword": isinstance(v, str), "bool": isinstance(v, bool)}[kind]
    if not ok:
        raise InputError(f"{where}: expected a {kind} value, got {json.dumps(v)[:100]}")
    if isinstance(v, int) and not -(2 ** 63) <= v < 2 ** 63:
        raise InputError(f"{where}: {str(v)[:30]}... is out of the int64 range")
    return v  # type: ignore[return-value]


def _condition(obj: Mapping[str, object], fields: Mapping[str, str], where: str,
               count: list[int]) -> Filter:
    count[0] += 1
    if count[0] > MAX_CONDITIONS:
        raise InputError(f"filter: more than {MAX_CONDITIONS} conditions")
    keys = set(obj)
    if keys & {"must", "should", "must_not"}:
        if keys - {"must", "should", "must_not"}:
            raise InputError(f"{where}: a boolean clause takes only must, should, must_not")
        parts = {}
        for name in ("must", "should", "must_not"):
            items = obj.get(name, [])
            if not isinstance(items, list):
                raise InputError(f"{where}.{name}: expected a list of conditions")
            parts[name] = tuple(_node(c, fields, f"{where}.{name}[{i}]", count)
                                for i, c in enumerate(items))
        return Bool(**parts)
    if keys == {"has_id"}:
        ids = obj["has_id"]
        if not isinstance(ids, list) or not ids or len(ids) > 10_000 or not all(
                isinstance(i, str) or isinstance(i, int) and not isinstance(i, bool)
                and -(2 ** 63) <= i < 2 ** 63 for i in ids):
            raise InputError(f"{where}.has_id: expected 1 to 10,000 ids (int64 or strings)")
        return HasId(tuple(ids))
    key = obj.get("key")
    if not isinstance(key, str) or len(keys) != 2 or not keys & {"match", "range"}:
        raise InputError(f"{where}: expected must/should/must_not, has_id, or key with "
                         "match or range")
    if key not in fields:
        known = ", ".join(sorted(fields)) or "none: build with --index-field"
        raise InputError(f"{where}.key: {key!r} is not a filterable field (declared: {known})")
    kind = fields[key]
    if "match" in obj:
        m = obj["match"]
        if isinstance(m, dict) and set(m) == {"value"}:
            return Match(key, kind, (_scalar(m["value"], kind, f"{where}.match.value"),))
        if isinstance(m, dict) and set(m) == {"any"} and isinstance(m["any"], list) and \
                0 < len(m["any"]) <= 1000:
            return Match(key, kind, tuple(_scalar(v, kind, f"{where}.match.any[{i}]")
                                          for i, v in enumerate(m["any"])))
        raise InputError(f"{where}.match: expected {{\"value\": v}} or {{\"any\": [1 to 1,000 "
                         "values]}}")
    r = obj["range"]
    if kind not in ("int", "float"):
        raise InputError(f"{where}.range: {key!r} is a {kind} field; range needs int or float")
    if not isinstance(r, dict) or not r or set(r) - {"gt", "gte", "lt", "lte"}:
        raise InputError(f"{where}.range: expected some of gt, gte, lt, lte")
    bounds = {b: float(_scalar(v, "float", f"{where}.range.{b}")) for b, v in r.items()}
    return Range(key, **bounds)


def _node(obj: object, fields: Mapping[str, str], where: str, count: list[int]) -> Filter:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected an object")
    return _condition(obj, fields, where, count)


def parse_filter(obj: object, fields: Mapping[str, str], where: str = "filter") -> Filter:
    """The filter ``obj`` (JSON) checked against the declared ``fields`` {name: kind}."""
    return _node(obj, fields, where, [0])


_SQL_TYPES = {"int": ("integer", "real"), "float": ("integer", "real"), "keyword": ("text",),
              "bool": ("true", "false")}  # SQLite's json_type names of each kind's values


def _path(key: str) -> str:
    return "$." + key


def to_sql(f: Filter, arrays: frozenset[str] | set[str] = frozenset()
           ) -> tuple[str, list[object]]:
    """(WHERE clause over ``docs(row, id, payload)``, its parameters). ``arrays``: the fields
    that hold arrays in some document; the others are compared as scalars, in a form that
    SQLite answers from the field's expression index (``json_extract(payload, '$.key')``)."""
    if isinstance(f, Bool):
        parts: list[str] = []
        params: list[object] = []
        for sub in f.must:
            s, p = to_sql(sub, arrays)
            parts.append(s)
            params += p
        if f.should:
            subs = [to_sql(s, arrays) for s in f.should]
            parts.append("(" + " OR ".join(s for s, _ in subs) + ")")
            params += [x for _, p in subs for x in p]
        for sub in f.must_not:
            s, p = to_sql(sub, arrays)
            parts.append(f"NOT {s}")
            params += p
        return ("(" + " AND ".join(parts) + ")" if parts else "1"), params
    if isinstance(f, HasId):
        return f"(id IN ({','.join('?' * len(f.ids))}))", list(f.ids)
    path = _path(f.key)  # a declared field: checked against _KEY, safe to write in the SQL
    value = f"json_extract(payload, '{path}')"  # as the field's index was made (ebr.index.docs)
    kind = f"json_type(payload, '{path}')"
    if isinstance(f, Match):
        marks = ",".join("?" * len(f.values))
        types = ",".join(f"'{t}'" for t in _SQL_TYPES[f.kind])
        values: list[object] = [int(v) if isinstance(v, bool) else v for v in f.values]  # 1
        scalar = f"({value} IN ({marks}) AND {kind} IN ({types}))"
        if f.key not in arrays:
            return scalar, values
        return (f"({scalar} OR ({kind} = 'array' AND EXISTS (SELECT 1 FROM json_each(payload, "
                f"'{path}') WHERE type IN ({types}) AND value IN ({marks}))))",
                [*values, *values])
    ops = [(f.gt, ">"), (f.gte, ">="), (f.lt, "<"), (f.lte, "<=")]
    conds = [(f"{value} {op} ?", v) for v, op in ops if v is not None]
    return ("(" + " AND ".join(c for c, _ in conds) + f" AND {kind} IN ('integer', 'real'))",
            [v for _, v in conds])


def _get(payload: Mapping[str, object] | None, key: str) -> object:
    cur: object = payload
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _eq(a: object, b: Scalar, kind: str) -> bool:
    if kind == "bool":
        return isinstance(a, bool) and a == b
    if kind == "keyword":
        return isinstance(a, str) and a == b
    return isinstance(a, int | float) and not isinstance(a, bool) and float(a) == float(b)


def matches(f: Filter, doc_id: ExternalId, payload: Mapping[str, object] | None) -> bool:
    """Whether one document satisfies ``f`` (the semantics of :func:`to_sql`)."""
    if isinstance(f, Bool):
        return (all(matches(s, doc_id, payload) for s in f.must)
                and (not f.should or any(matches(s, doc_id, payload) for s in f.should))
                and not any(matches(s, doc_id, payload) for s in f.must_not))
    if isinstance(f, HasId):
        return doc_id in f.ids
    v = _get(payload, f.key)
    if isinstance(f, Match):
        items = v if isinstance(v, list) else [v]
        return any(_eq(x, want, f.kind) for x in items for want in f.values)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    x = float(v)
    return ((f.gt is None or x > f.gt) and (f.gte is None or x >= f.gte)
            and (f.lt is None or x < f.lt) and (f.lte is None or x <= f.lte))
