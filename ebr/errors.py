"""The ebr exception tree. Every error a caller can trigger is one of these.

    EbrError
    ├── SpecError              an index spec string or build parameter is invalid
    ├── SearchParamError       a search-time parameter (k, nprobe, candidates) is out of range
    ├── InputError             vectors or ids given to ebr are malformed (shape, dtype, NaN, unknown id)
    │   └── RequestTooLargeError   a request asks for more than the server's per-request limits
    ├── IndexFormatError       an index directory cannot be opened
    │   ├── ManifestVersionError   the manifest's format version is unknown to this reader
    │   └── CorruptFileError       a file is missing, truncated, too long or fails its checksum
    ├── IndexNotReadyError     no index is open (the service is starting or has none)
    │   ├── IndexChangedError  a file of the open index is being changed on disk (ebr.index.guard)
    │   └── WriteConflictError a write met a generation change: nothing was written, retry
    ├── WritesUnsupportedError the index takes no writes (sharded, read-only)
    ├── AuthError              the service refused the API key (HTTP 401 / 403; ebr.client)
    └── ServiceError           the service failed or could not be reached (ebr.client)

``service.app`` maps each family to one HTTP status in one place.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "RequestTooLargeError",
    "ServiceError",
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
    """Base class of every error raised on purpose by ebr. ``status_code``: the HTTP status
    of the reply it was raised for (``ebr.client``), else None."""

    status_code: int | None = None


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


class RequestTooLargeError(InputError):
    """One request asks for more work or a larger reply than the server's per-request limits
    (the message names the limit and its ``EBR_*`` setting): HTTP 413."""


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


class AuthError(EbrError, PermissionError):
    """The service refused the request's API key: missing, unknown, or not allowed to write
    (HTTP 401 / 403, raised by ``ebr.client``)."""


class ServiceError(EbrError):
    """The service answered with a server error, or could not be reached after the client's
    retries (``ebr.client``); ``status_code`` is None for a connection that failed."""
