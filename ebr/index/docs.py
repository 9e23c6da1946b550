"""The document table of a generation: row -> (external id, payload), in SQLite.

``docs.sqlite`` is written once by the build (in WAL journal mode, then checkpointed into the
single file the manifest checksums) and opened read-only (``immutable=1``: no lock, no
``-wal``/``-shm`` files next to the read-only generation)::

    docs(row INTEGER PRIMARY KEY, id UNIQUE NOT NULL, payload TEXT)  -- payload: a JSON object

It answers the two questions a living index asks of its base: "which row holds id X?" (writes,
``GET /documents/{id}``) and "what is the payload of row r?" (``with_payload``). Its ids are
stored as the index's id kind (INTEGER or TEXT), so ``1`` and ``"1"`` stay distinct.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ebr.errors import InputError
from ebr.filters import Filter, parse_field, to_sql
from ebr.types import ExternalId, JsonObject

__all__ = ["DocStore", "write_docs", "payload_json", "select_fields", "MAX_PAYLOAD_BYTES"]

MAX_PAYLOAD_BYTES = 1 << 20  # one document's payload, as JSON
_CHUNK = 50_000


def payload_json(payload: object, where: str) -> str | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InputError(f"{where}: a payload must be a JSON object, got {type(payload).__name__}")
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: payload is not JSON ({e})") from None
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise InputError(f"{where}: payload is over {MAX_PAYLOAD_BYTES} bytes of JSON")
    return text


def write_docs(path: Path, ids: Sequence[ExternalId] | np.ndarray,
               payloads: Iterable[tuple[ExternalId, JsonObject]] | None = None,
               rows_payloads: Iterable[tuple[int, str | None]] | None = None,
               fields: Mapping[str, str] | None = None) -> int:
    """Write ``path``: one row per id (row i holds ``ids[i]``), then the payloads, matched by
    id (``payloads``: (id, object) pairs, e.g. a JSONL file) or by row (``rows_payloads``:
    (row, JSON text)). Returns how many payloads were stored. Unknown ids raise InputError."""
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")  # the build fsyncs the finished file itself
        con.execute("CREATE TABLE docs(row INTEGER PRIMARY KEY, id UNIQUE NOT NULL, "
                    "payload TEXT)")
        con.execute("CREATE TABLE fields(name TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                    "arrays INTEGER NOT NULL DEFAULT 0)")
        for i, (name, kind) in enumerate(sorted((fields or {}).items())):
            parse_field(f"{name}:{kind}")  # checked: the name goes into the index's SQL
            con.execute("INSERT INTO fields(name, kind) VALUES (?, ?)", (name, kind))
            con.execute(f"CREATE INDEX field_{i} ON docs(json_extract(payload, '$.{name}'))")
        id_list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        for a in range(0, len(id_list), _CHUNK):
            con.executemany("INSERT INTO docs(row, id) VALUES (?, ?)",
                            ((a + i, x) for i, x in enumerate(id_list[a:a + _CHUNK])))
        stored = 0
        if payloads is not None:
            for doc_id, payload in payloads:
                cur = con.execute("UPDATE docs SET payload = ? WHERE id = ?",
                                  (payload_json(payload, f"payload of id {doc_id!r}"), doc_id))
                if cur.rowcount != 1:
                    raise InputError(f"payloads: id {doc_id!r} is not a document of the index")
                stored += 1
        if rows_payloads is not None:
            for row, text in rows_payloads:
                con.execute("UPDATE docs SET payload = ? WHERE row = ?", (text, row))
                stored += text is not None
        for (name,) in con.execute("SELECT name FROM fields").fetchall():  # arrays anywhere?
            con.execute("UPDATE fields SET arrays = EXISTS (SELECT 1 FROM docs WHERE "
                        f"json_type(payload, '$.{name}') = 'array') WHERE name = ?", (name,))
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        con.close()
    return stored


def select_fields(payload: JsonObject, fields: Sequence[str] | None) -> JsonObject:
    """The payload, or only the named top-level fields of it (absent ones left out)."""
    if fields is None:
        return payload
    return {f: payload[f] for f in fields if f in payload}


class DocStore:
    """Read-only access to a generation's ``docs.sqlite`` (one connection per thread)."""

    def __init__(self, path: Path, id_kind: str) -> None:
        self.path, self.id_kind = path, id_kind
        self._local = threading.local()
        self._payload_count: int | None = None
        self._array_fields: set[str] | None = None
        self._con()  # fail now, not at the first request, if the file is not a database

    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True,
                                  check_same_thread=False)
            con.execute("SELECT count(*) FROM docs WHERE row = -1").fetchone()
            self._local.con = con
        return con

    def rows_of(self, ids: Sequence[ExternalId]) -> dict[ExternalId, int]:
        """The rows of those ``ids`` that the table holds."""
        out: dict[ExternalId, int] = {}
        con = self._con()
        for a in range(0, len(ids), 500):
            part = list(ids[a:a + 500])
            q = f"SELECT id, row FROM docs WHERE id IN ({','.join('?' * len(part))})"
            out.update({i: int(r) for i, r in con.execute(q, part)})
        return out

    def payload_texts(self, rows: Sequence[int]) -> dict[int, str | None]:
        """JSON text of the payload of each of ``rows`` (None: the row has none)."""
        out: dict[int, str | None] = {}
        con = self._con()
        for a in range(0, len(rows), 500):
            part = [int(r) for r in rows[a:a + 500]]
            q = f"SELECT row, payload FROM docs WHERE row IN ({','.join('?' * len(part))})"
            out.update({int(r): p for r, p in con.execute(q, part)})
        return out

    def iter_payloads(self) -> Iterable[tuple[int, str | None]]:
        """(row, payload JSON text) of every row that has a payload, in row order."""
        con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
        try:
            yield from con.execute("SELECT row, payload FROM docs WHERE payload IS NOT NULL "
                                   "ORDER BY row")
        finally:
            con.close()

    def fields(self) -> dict[str, str]:
        """The filterable fields {name: kind} (``--index-field``); none in older tables."""
        try:
            return {n: k for n, k in self._con().execute("SELECT name, kind FROM fields")}
        except sqlite3.OperationalError:
            return {}

    def rows_matching(self, f: Filter) -> np.ndarray:
        """Rows (int64, ascending) whose document satisfies ``f``."""
        where, params = to_sql(f, self._arrays())
        cur = self._con().execute(f"SELECT row FROM docs WHERE {where} ORDER BY row", params)
        return np.fromiter((r for (r,) in cur), dtype=np.int64)

    def _arrays(self) -> set[str]:
        if self._array_fields is None:
            try:
                self._array_fields = {n for (n,) in self._con().execute(
                    "SELECT name FROM fields WHERE arrays")}
            except sqlite3.OperationalError:
                self._array_fields = set()
        return self._array_fields

    def count_payloads(self) -> int:
        """Rows with a payload (counted once: the table never changes)."""
        if self._payload_count is None:
            self._payload_count = int(self._con().execute(
                "SELECT count(*) FROM docs WHERE payload IS NOT NULL").fetchone()[0])
        return self._payload_count
