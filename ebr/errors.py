"""The ebr exception tree. Every error a caller can trigger is one of these.

    EbrError
    ├── SpecError              an index spec string or build parameter is invalid
    ├── SearchParamError       a search-time parameter (k, nprobe, candidates) is out of range
    ├── InputError             vectors or ids given to ebr are malformed (shape, dtype, NaN, unknown id)
    ├── IndexFormatError       an index directory cannot be opened
    │   ├── ManifestVersionError   the manifest's format version is unknown to this reader
    │   └── CorruptFileError       a file is missing, truncated, too long or fails its checksum
    └── IndexNotReadyError     no index is open (the service is starting or has none)
        └── IndexChangedError  a file of the open index is being changed on disk (ebr.index.guard)

``service.app`` maps each family to one HTTP status in one place.
"""

from __future__ import annotations

__all__ = [
    "WriteConflictError",
    "WritesUnsupportedError",
    "EbrError",
    "SpecError",
    "SearchParamError",
    "InputError",
    "IndexFormatError",
    "ManifestVersionError",
    "CorruptFileError",
    "IndexNotReadyError",
    "IndexChangedError",
]


class EbrError(Exception):
    """Base class of every error raised on purpose by ebr."""


class SpecError(EbrError, ValueError):
    """An index spec string (``"IVF256,PQ16"``) or build parameter is invalid."""


class SearchParamError(EbrError, ValueError):
    """A search parameter is out of range; the message names the parameter. ``param`` and
    ``problem`` say the same in parts (``"nprobe"``, ``"must be <= 16 (nlist), got 17"``), for
    callers that report it under their own name for the field (the HTTP layer)."""

    def __init__(self, message: str, param: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.param, self.problem = param, problem


class InputError(EbrError, ValueError):
    """Input vectors, ids or files are malformed; the message names what and where."""


class IndexFormatError(EbrError):
    """An index directory cannot be opened: the message says which file and why."""


class ManifestVersionError(IndexFormatError):
    """The manifest was written by an incompatible (newer major) format version."""


class CorruptFileError(IndexFormatError):
    """A file of the index is missing, truncated, has trailing bytes or a bad checksum."""


class IndexNotReadyError(EbrError):
    """No index is open yet."""


class IndexChangedError(IndexNotReadyError):
    """A file of the open index is being (or was) changed on disk: it is no longer served."""


class WritesUnsupportedError(EbrError):
    """The index cannot take writes (sharded, read-only, or built by an ebr that did not store
    its codebooks with additive codes)."""


class WriteConflictError(IndexNotReadyError):
    """The generation changed under a write (compaction published a new one): nothing was
    written; retry (the service reloads first)."""
