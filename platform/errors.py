"""The error types a user can cause. Each message names the input and the fix.

`RagtuneError` is what the CLI prints without a traceback; the subclasses carry the HTTP status
the API answers with (400 unless said otherwise), so one mapping serves both edges.
"""


class RagtuneError(Exception):
    """A problem with the user's input or environment, printed without a traceback by the CLI."""

    status = 400
    kind = "invalid_request_error"
    param: str | None = None  # the request field at fault, when one is (the API's `param`)

    def __init__(self, *args: object, param: str | None = None):
        super().__init__(*args)
        if param is not None:
            self.param = param


class NotFoundError(RagtuneError):
    """An unknown model, adapter, collection, document or job."""

    status = 404
    kind = "not_found_error"


class AuthError(RagtuneError):
    """No key, or an unknown one."""

    status = 401
    kind = "authentication_error"


class ForbiddenError(RagtuneError):
    """A known key without the scope or the collection/adapter the request needs."""

    status = 403
    kind = "permission_error"


class TooLargeError(RagtuneError):
    status = 413
    kind = "invalid_request_error"


class OverloadedError(RagtuneError):
    """The generation queue is full: retry after `retry_after` seconds."""

    status = 429
    kind = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class GenerationTimeout(RagtuneError):
    status = 504
    kind = "timeout_error"


class ConflictError(RagtuneError):
    """The request conflicts with the state of what it names (a file a running job reads)."""

    status = 409
    kind = "conflict_error"


class LockedError(ConflictError):
    """Another process holds a collection's write lock."""


class DamagedError(RagtuneError):
    """A file of a collection or adapter is damaged (truncated, corrupted, failing its checksum)."""

    status = 500
    kind = "server_error"


class DiskFullError(RagtuneError):
    """A write failed for lack of space (ENOSPC); what was stored before is unchanged."""

    status = 507
    kind = "server_error"
