"""``manifest.json``: the versioned record of an index directory, written last and atomically.

It holds the format version, the spec, metric, dimensions, counts, ``{bytes, sha256}`` of every
file and the build's provenance. The reader refuses an unknown major version and any file whose
size or checksum disagrees.

The manifest also carries a checksum of its own content (``manifest_sha256``: sha256 of the
canonical JSON of every other field), so a damaged manifest is refused as a whole, not read
into an index that silently differs (a flipped bit in ``encoder`` once turned text queries off).
Manifests written before it was added have none and are still read (with a warning); unknown
top-level fields are refused, so a flipped bit in the checksum's own name cannot pass either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ebr.errors import CorruptFileError, IndexFormatError, ManifestVersionError
from ebr.io.layout import MANIFEST
from ebr.types import JsonObject

__all__ = ["FORMAT_VERSION", "FORMAT_VERSION_2", "READABLE_MAJORS", "Manifest", "FileEntry",
           "sha256_file", "seal", "write_manifest", "read_manifest", "verify_files"]

# major.minor; a reader accepts every minor of the majors it knows and refuses the rest.
# 1.1 added the optional query_map (coarse stage only: a 1.0 reader still ranks correctly).
# 2.0 = 1.1 + towers (the dense store holds doc_tower(v) and re-rank queries need query_tower)
# or shards (the directory holds shard indexes, not a coarse index): a 1.x reader would ignore
# either and return wrong scores or fail late, so it must refuse the directory.
# Writers use 2.0 only for those; every other index stays 1.1.
# 1.2 added docs (payload table), codebooks.encoding (what encodes new documents) and live
# (the write-ahead log this generation continues); a 1.1 reader refuses the unknown fields.
FORMAT_VERSION = "1.2"
FORMAT_VERSION_2 = "2.0"
READABLE_MAJORS = ("1", "2")
SEAL = "manifest_sha256"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    spec: str
    metric: str
    dim: int
    ntotal: int
    dense_dtype: str
    id_kind: str  # "int" | "str"
    files: dict[str, FileEntry]
    codebooks: dict[str, Any]  # {"method": "kmeans"|"opq", "train_size": ..., ...}
    build: dict[str, Any]  # created, seconds per stage, versions, params, seed
    encoder: dict[str, Any] | None = None  # set when text queries can be encoded
    source: dict[str, Any] = field(default_factory=dict)
    query_map: str | None = None  # file of a learned [d, d] query map (coarse stage only)
    towers: dict[str, str] | None = None  # {"query": file, "doc": file} (BiDR dense side)
    shards: list[dict[str, Any]] | None = None  # [{"dir", "start", "stop", "ntotal"}]
    docs: str | None = None  # the document table (ids, payloads): ebr.index.docs
    live: dict[str, Any] | None = None  # {"log_id", "epoch", "applied_lsn", "compacted"}
    format_version: str = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as written: its fields and their checksum (``manifest_sha256``)."""
        return json.dumps(seal(asdict(self)), indent=2, sort_keys=True)

    def digest(self) -> str:
        """Its ``manifest_sha256``: the checksum of its content, as written in the file."""
        return _content_digest(asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, object], where: str = MANIFEST) -> Manifest:
        d: dict[str, Any] = dict(raw)  # checked field by field below
        version = str(d.get("format_version", ""))
        major = version.split(".")[0]
        if major not in READABLE_MAJORS:
            raise ManifestVersionError(
                f"{where}: format_version {version!r} is not readable by this ebr "
                f"(reads {', '.join(m + '.x' for m in READABLE_MAJORS)})"
            )
        check_seal(d, where)
        try:
            files = {k: FileEntry(**v) for k, v in d["files"].items()}
            return cls(
                spec=str(d["spec"]), metric=str(d["metric"]), dim=int(d["dim"]),
                ntotal=int(d["ntotal"]), dense_dtype=str(d["dense_dtype"]),
                id_kind=str(d["id_kind"]), files=files, codebooks=dict(d["codebooks"]),
                build=dict(d["build"]), encoder=d.get("encoder"), source=dict(d.get("source", {})),
                query_map=d.get("query_map"),
                towers=dict(d["towers"]) if d.get("towers") else None,
                shards=[dict(x) for x in d["shards"]] if d.get("shards") else None,
                docs=d.get("docs"), live=dict(d["live"]) if d.get("live") else None,
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None


def _content_digest(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def seal(d: JsonObject) -> JsonObject:
    """``d`` (a manifest as a JSON object) with ``manifest_sha256`` set to its content's
    checksum. Whoever edits a manifest on purpose must seal it again."""
    return {**d, SEAL: _content_digest(d)}


def check_seal(d: JsonObject, where: str) -> None:
    """Refuse a manifest with fields this reader does not know, or whose own checksum does not
    match its content. One written before manifests were sealed is read, with a warning."""
    unknown = set(d) - {f.name for f in fields(Manifest)} - {SEAL}
    if unknown:
        raise CorruptFileError(f"{where}: unknown fields {sorted(unknown)} (damaged?)")
    if SEAL not in d:
        logger.warning("%s: manifest has no checksum of its own (written by an older ebr); "
                       "rebuild to get one", where)
    elif d[SEAL] != _content_digest(d):
        raise CorruptFileError(f"{where}: content does not match its {SEAL} (damaged, or "
                               "edited without sealing it again)")


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` via a temporary file, fsync and ``os.replace``."""
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: not a directory")
    if not path.exists():
        raise IndexFormatError(f"{directory}: no {MANIFEST}: not an index or an unfinished build")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(d, dict):
        raise CorruptFileError(f"{path}: manifest is not a JSON object")
    return Manifest.from_dict(d, where=str(path))


def verify_files(directory: Path, manifest: Manifest, checksums: bool = True) -> None:
    """Check every listed file exists with the recorded size (and sha256 when ``checksums``)."""
    for name, entry in manifest.files.items():
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or any(p.startswith(".") for p in parts) \
                or "\\" in name:
            raise IndexFormatError(f"{MANIFEST}: file name {name!r} escapes the index directory")
        p = directory / name
        if not p.is_file():
            raise CorruptFileError(f"{p}: listed in the manifest but missing")
        size = p.stat().st_size
        if size != entry.bytes:
            kind = "truncated" if size < entry.bytes else "longer than recorded"
            raise CorruptFileError(f"{p}: {kind}: {size} bytes, manifest says {entry.bytes}")
        if checksums:
            t0 = time.perf_counter()
            if sha256_file(p) != entry.sha256:
                raise CorruptFileError(f"{p}: sha256 does not match the manifest (file altered)")
            logger.info("verified %s (%.1f MB, %.2f s)", name, entry.bytes / 1e6,
                        time.perf_counter() - t0)
