"""The one error hierarchy of PYREXIS.

:class:`PyrexisError` is the root of every error PYREXIS raises. Below it:

* :class:`WireError` and its subclasses, one per error code of the contract: every error a
  client can see. The daemon raises these anywhere; they become failure frames only at
  the socket boundary. The client library raises the same classes when the daemon answers
  with an error, so a script can catch ``NotFound`` whichever side noticed it.
* Families that never cross the wire, defined beside the room that raises them: the
  daemon's ``StartupError`` and ``TaskDefinitionError``, the client's
  ``DaemonUnreachable``. They carry no code: a failure frame never holds one of them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PyrexisError(Exception):
    """Root of every PYREXIS error: a message for people, optional structured details."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class WireError(PyrexisError):
    """An error a client can see; ``code`` is the contract's error code."""

    code: ClassVar[str] = "internal"

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` map of a failure frame."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return err


class BadFrame(WireError):
    """A frame whose body is not exactly one msgpack map with string keys."""

    code = "bad_frame"


class FrameTooLarge(WireError):
    """A frame length above the server's ``max_frame``; the connection is closed."""

    code = "frame_too_large"


class InvalidRequest(WireError):
    """A well-formed frame whose request is malformed or whose arguments are invalid."""

    code = "invalid_request"


class UnknownOp(WireError):
    """An op this daemon does not implement."""

    code = "unknown_op"


class UnknownTask(WireError):
    """A job names a task that is not registered."""

    code = "unknown_task"


class NotFound(WireError):
    """No such job, schedule or stream."""

    code = "not_found"


class Conflict(WireError):
    """A name or client job id already in use with a different definition."""

    code = "conflict"


class InvalidState(WireError):
    """The op is not allowed in the job's current status (``details.status``)."""

    code = "invalid_state"


class Unauthorized(WireError):
    """The peer may not do this."""

    code = "unauthorized"


class Timeout(WireError):
    """A wait ran out before the job reached a terminal state."""

    code = "timeout"


class Overloaded(WireError):
    """A limit was hit (``details.limit``); try again later."""

    code = "overloaded"


class ShuttingDown(WireError):
    """The daemon is stopping and takes no new work."""

    code = "shutting_down"


class StorageError(WireError):
    """The store could not commit; nothing acknowledged was lost."""

    code = "storage_error"


class Internal(WireError):
    """A bug in the daemon; it keeps serving."""

    code = "internal"


ERROR_CLASSES: dict[str, type[WireError]] = {
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


def error_from_wire(error: Any) -> WireError:
    """Rebuild the exception of a failure frame's ``error`` map (unknown codes stay generic)."""
    if not isinstance(error, dict):
        return Internal(f"malformed error: {error!r}")
    code = error.get("code")
    message = str(error.get("message", ""))
    cls = ERROR_CLASSES.get(code) if isinstance(code, str) else None
    if cls is None:
        exc = WireError(message, error.get("details"))
        exc.code = str(code)  # type: ignore[misc]  # a code newer than this client
        return exc
    return cls(message, error.get("details"))
