"""What ``--http ADDR`` means, the listening socket it becomes, and the token file.

``HOST:PORT`` (``127.0.0.1:8765``, ``[::1]:8765``, ``0.0.0.0:8765``; port 0 takes a free
one) or ``unix:/path``. A loopback address or a Unix path serves the daemon's own user
without a token; any other address needs ``--http-token-file``. No third-party import
here: the configuration checks an address without the HTTP extra.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class HttpAddress:
    """A parsed ``--http`` value: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> HttpAddress:
        """``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``; ValueError with the reason."""
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path.startswith("/"):
                raise ValueError(f"--http {text!r}: a Unix socket path must be absolute (unix:/path)")
            return cls(path=path)
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"--http {text!r}: an IPv6 address is written [ADDR]:PORT")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"--http {text!r}: expected HOST:PORT, [IPV6]:PORT or unix:/path")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"--http {text!r}: the port must be a number from 0 to 65535")
        if host not in LOOPBACK_NAMES:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"--http {text!r}: the host must be an IP address or localhost") from None
        return cls(host=host, port=int(port))

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def is_local(self) -> bool:
        """Loopback or a Unix path: only this machine can connect."""
        if self.path is not None:
            return True
        assert self.host is not None
        return self.host in LOOPBACK_NAMES or ipaddress.ip_address(self.host).is_loopback

    def bind(self, backlog: int = 512) -> socket.socket:
        """A listening, non-blocking socket. A Unix socket is created owner-only (umask at
        bind, like the protocol's socket), replacing a stale socket file but never
        anything else."""
        if self.path is not None:
            return _bind_unix(self.path, backlog)
        assert self.host is not None
        host = "127.0.0.1" if self.host == "localhost" else self.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, self.port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def shown(self, sock: socket.socket) -> str:
        """Where ``sock`` listens, as a URL (with the port the kernel chose for port 0)."""
        if self.path is not None:
            return f"unix:{self.path}"
        host, port = sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind_unix(path: str, backlog: int) -> socket.socket:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: left by a daemon that died
        else:
            raise OSError(f"something is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


MIN_TOKEN = 16  # characters: a token is a secret, not a password to remember


def read_token(path: str) -> bytes:
    """The bearer token in ``path`` (surrounding whitespace dropped). The file must be
    readable by its owner only, like an SSH key; ValueError with the reason."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            token = fh.read(4096).strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise ValueError(f"the token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    if len(token) < MIN_TOKEN or any(b <= 32 or b > 126 for b in token):
        raise ValueError(f"the token in {path} must be at least {MIN_TOKEN} printable characters without spaces")
    return token
