"""The one error hierarchy of PYREXIS.

Every error a client can see has a code from the contract. The daemon raises these
anywhere; they become wire errors only at the socket boundary. The client library raises
the same classes when the daemon answers with an error, so a script can catch
``NotFound`` whichever side noticed it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PyrexisError(Exception):
    """Root of every PYREXIS error; ``code`` is the contract's error code."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` map of a failure frame."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadFrame(PyrexisError):
    """A frame whose body is not exactly one msgpack map with string keys."""

    code = "bad_frame"


class FrameTooLarge(PyrexisError):
    """A frame length above the server's ``max_frame``; the connection is closed."""

    code = "frame_too_large"


class InvalidRequest(PyrexisError):
    """A well-formed frame whose request is malformed or whose arguments are invalid."""

    code = "invalid_request"


class UnknownOp(PyrexisError):
    """An op this daemon does not implement."""

    code = "unknown_op"


class UnknownTask(PyrexisError):
    """A job names a task that is not registered."""

    code = "unknown_task"


class NotFound(PyrexisError):
    """No such job, schedule or stream."""

    code = "not_found"


class Conflict(PyrexisError):
    """A name or client job id already in use with a different definition."""

    code = "conflict"


class InvalidState(PyrexisError):
    """The op is not allowed in the job's current status (``details.status``)."""

    code = "invalid_state"


class Unauthorized(PyrexisError):
    """The peer may not do this."""

    code = "unauthorized"


class Timeout(PyrexisError):
    """A wait ran out before the job reached a terminal state."""

    code = "timeout"


class Overloaded(PyrexisError):
    """A limit was hit (``details.limit``); try again later."""

    code = "overloaded"


class ShuttingDown(PyrexisError):
    """The daemon is stopping and takes no new work."""

    code = "shutting_down"


class StorageError(PyrexisError):
    """The store could not commit; nothing acknowledged was lost."""

    code = "storage_error"


class Internal(PyrexisError):
    """A bug in the daemon; it keeps serving."""

    code = "internal"


ERROR_CLASSES: dict[str, type[PyrexisError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        FrameTooLarge,
        InvalidRequest,
        UnknownOp,
        UnknownTask,
        NotFound,
        Conflict,
        InvalidState,
        Unauthorized,
        Timeout,
        Overloaded,
        ShuttingDown,
        StorageError,
        Internal,
    )
}

ERROR_CODES: tuple[str, ...] = tuple(ERROR_CLASSES)


def error_from_wire(error: Any) -> PyrexisError:
    """Rebuild the exception of a failure frame's ``error`` map (unknown codes stay generic)."""
    if not isinstance(error, dict):
        return Internal(f"malformed error: {error!r}")
    code = error.get("code")
    message = str(error.get("message", ""))
    cls = ERROR_CLASSES.get(code) if isinstance(code, str) else None
    if cls is None:
        exc = PyrexisError(message, error.get("details"))
        exc.code = str(code)  # type: ignore[misc]  # a code newer than this client
        return exc
    return cls(message, error.get("details"))
