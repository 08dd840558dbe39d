"""What the daemon and every client share: framing, error codes, statuses, socket paths.

The pydantic models live in :mod:`protocol.models`, which this module does not import,
so a client that only frames and unframes messages never pays for pydantic at start-up.
"""

from protocol.errors import PyrexisError, WireError, error_from_wire
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, decode_body, encode_frame
from protocol.paths import resolve_socket_path
from protocol.status import MODES, TERMINAL, WAITING, Status

PROTOCOL_VERSION = 1

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MODES",
    "PROTOCOL_VERSION",
    "TERMINAL",
    "WAITING",
    "FrameDecoder",
    "PyrexisError",
    "WireError",
    "Status",
    "decode_body",
    "encode_frame",
    "error_from_wire",
    "resolve_socket_path",
]
