"""Socket path resolution, the same in daemon and client (contract, "Transport")."""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_SOCKET = "PYREXIS_SOCKET"
SOCKET_NAME = "pyrexisd.sock"


def default_socket_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """Where the daemon listens when neither a flag nor ``PYREXIS_SOCKET`` says otherwise."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return f"/run/pyrexis/{SOCKET_NAME}"
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "pyrexis", SOCKET_NAME)
    return f"/tmp/pyrexis-{uid}/{SOCKET_NAME}"


def resolve_socket_path(
    flag: str | None = None, env: Mapping[str, str] | None = None, uid: int | None = None
) -> str:
    """``--socket`` flag, then ``PYREXIS_SOCKET``, then :func:`default_socket_path`."""
    if flag:
        return flag
    env = os.environ if env is None else env
    from_env = env.get(ENV_SOCKET)
    if from_env:
        return from_env
    return default_socket_path(env, uid)
