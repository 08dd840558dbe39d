"""Who may connect, and who each connection is.

The kernel tells the daemon who is at the other end of a Unix socket (``SO_PEERCRED``:
the peer's uid, gid and pid when it connected; ``SO_PEERGROUPS``: its supplementary
groups). That identity, not anything a client says, is the whole basis of access:

* :class:`AccessPolicy` decides at connect time whether a peer may use the daemon at all:
  root and the daemon's own uid always, and whoever ``--allow-user`` / ``--allow-group``
  names. Root and the daemon's uid are *admins*: they see and control every job.
* :class:`Caller` is the identity a connection carries into every request; the handlers
  pass it to the job core, which decides what the caller may see and do.
* :func:`open_socket_dir` prepares the directory the socket is bound in, so that the
  socket's reachability matches the policy (owner-only unless others are allowed) and a
  shared parent such as ``/tmp`` cannot be used to swap the directory under the daemon.

The socket's file mode is a first fence only: when others are allowed the peer check is
the gate, and it is applied to every connection, whatever the mode let through.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python does not name it
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_PEER_GROUPS = 65536  # NGROUPS_MAX on Linux


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel saw it at connect time."""

    uid: int
    gid: int
    pid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request: the peer's ids and whether it is an admin (root or the
    daemon's own uid, who see and control every job). Handed explicitly from the
    connection to the handlers and from them to the job core."""

    uid: int
    gid: int
    pid: int | None
    admin: bool

    @classmethod
    def daemon(cls) -> Caller:
        """The daemon itself (start-up work, tests of the core): an admin."""
        return cls(os.geteuid(), os.getegid(), os.getpid(), True)


def is_admin(uid: int, daemon_uid: int) -> bool:
    """Admins — root and the uid the daemon runs as — see and control every job."""
    return uid == 0 or uid == daemon_uid


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the peer connected to ``sock`` (an ``AF_UNIX`` stream socket)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(uid, gid, pid, _peer_groups(sock, uid, gid))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> tuple[int, ...]:
    """The peer's supplementary groups at connect time; from the group database when the
    kernel cannot say (before Linux 4.13)."""
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            # ERANGE: the buffer is too small for the peer's groups; try a larger one.
            if exc.errno == errno.ERANGE and size < MAX_PEER_GROUPS * 4:
                size *= 4
                continue
            break
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) - len(raw) % 4])
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return ()
    return tuple(os.getgrouplist(name, gid))


class AccessPolicy:
    """Which peers may connect (see the module docstring); admins are root and ``daemon_uid``."""

    def __init__(
        self, allow_users: Iterable[int] = (), allow_groups: Iterable[int] = (), daemon_uid: int | None = None
    ) -> None:
        self.daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
        self.allow_users = frozenset(allow_users)
        self.allow_groups = frozenset(allow_groups)

    @property
    def shared(self) -> bool:
        """Whether anyone but root and the daemon's uid may connect."""
        return bool(self.allow_users or self.allow_groups)

    def is_admin(self, uid: int) -> bool:
        return is_admin(uid, self.daemon_uid)

    def admit(self, peer: Peer) -> Caller | None:
        """The caller a peer connects as, or None when it may not connect."""
        admin = self.is_admin(peer.uid)
        allowed = (
            admin
            or peer.uid in self.allow_users
            or peer.gid in self.allow_groups
            or not self.allow_groups.isdisjoint(peer.groups)
        )
        return Caller(peer.uid, peer.gid, peer.pid, admin) if allowed else None

    def layout(self) -> SocketLayout:
        """How reachable the socket must be for the peers this policy admits."""
        if not self.shared:
            return SocketLayout(Reach.PRIVATE)
        if len(self.allow_groups) == 1 and not self.allow_users:
            return SocketLayout(Reach.GROUP, next(iter(self.allow_groups)))
        return SocketLayout(Reach.ANYONE)


class Reach(Enum):
    """Who the file modes let reach the socket (the peer check then decides)."""

    PRIVATE = "private"  # directory 0700, socket 0600: the daemon's uid (and root)
    GROUP = "group"  # directory 0750, socket 0660, both of the one allowed group
    ANYONE = "anyone"  # directory 0711 (no listing), socket 0666


@dataclass(frozen=True, slots=True)
class SocketLayout:
    """The modes (and group) of the socket and of the directory the daemon creates for it."""

    reach: Reach
    group: int | None = None

    @property
    def dir_mode(self) -> int:
        return {Reach.PRIVATE: 0o700, Reach.GROUP: 0o750, Reach.ANYONE: 0o711}[self.reach]

    @property
    def socket_umask(self) -> int:
        """The umask that gives the socket its mode at ``bind`` (never a chmod after)."""
        return {Reach.PRIVATE: 0o177, Reach.GROUP: 0o117, Reach.ANYONE: 0o111}[self.reach]


class UnsafeSocketPath(Exception):
    """The socket's directory cannot be trusted (or made): the daemon refuses to start."""


@dataclass(frozen=True, slots=True)
class SocketDir:
    """The directory the socket lives in, held open: every later step (probe, unlink,
    bind) goes through this descriptor, so a directory swapped in meanwhile is never used."""

    fd: int
    name: str  # the socket's file name in it

    @property
    def bind_path(self) -> str:
        """A path to the socket that resolves through the open directory, not by name."""
        via_fd = f"/proc/self/fd/{self.fd}/{self.name}"
        return via_fd if os.path.isdir(f"/proc/self/fd/{self.fd}") else self.name

    def close(self) -> None:
        os.close(self.fd)


def open_socket_dir(path: str, layout: SocketLayout) -> SocketDir:
    """Open (creating it with the layout's mode when missing) the directory of ``path``.

    The directory must be a real directory (not a symlink), owned by the daemon's uid and
    writable by nobody else: in a shared place like ``/tmp`` anyone could otherwise make
    it first, or swap it for a link to a directory of their choosing.
    """
    parent, name = os.path.split(os.path.abspath(path))
    _refuse_planted_links(parent)
    created = False
    if not os.path.lexists(parent):
        grand = os.path.dirname(parent)
        if grand and not os.path.isdir(grand):
            os.makedirs(grand, mode=0o700, exist_ok=True)
        old = os.umask(0o777 & ~layout.dir_mode)
        try:
            os.mkdir(parent, layout.dir_mode)
            created = True
        except FileExistsError:
            pass  # made by someone else meanwhile: checked like any existing directory
        finally:
            os.umask(old)
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeSocketPath(f"{parent} is not a directory the daemon can use: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        if st.st_uid != euid:
            raise UnsafeSocketPath(f"{parent} belongs to uid {st.st_uid}, not to the daemon's uid {euid}")
        if st.st_mode & 0o022:
            raise UnsafeSocketPath(
                f"{parent} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "give the socket a directory of its own"
            )
        if created and layout.group is not None:
            try:
                os.fchown(fd, -1, layout.group)
            except OSError as exc:
                raise UnsafeSocketPath(f"cannot give {parent} to group {layout.group}: {exc.strerror or exc}") from None
        if not created:
            _warn_if_unreachable(parent, st, layout)
        return SocketDir(fd, name)
    except BaseException:
        os.close(fd)
        raise


def _refuse_planted_links(directory: str) -> None:
    """Refuse a path whose components include a symlink somebody else could have put
    there: one owned by another user, or in a directory others may write (``/tmp``). Such
    a link would make the daemon create and bind where that user chose. Links the system
    made (``/var/run`` → ``/run``) are fine."""
    euid = os.geteuid()
    current = os.sep
    for part in directory.strip(os.sep).split(os.sep):
        if not part:
            continue
        here = os.path.join(current, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return  # what does not exist yet, the daemon creates itself
        if stat.S_ISLNK(st.st_mode):
            holder = os.stat(current)
            if st.st_uid not in (0, euid) or holder.st_mode & 0o022:
                raise UnsafeSocketPath(f"{here} is a symlink another user could have made; refusing to follow it")
        current = os.path.realpath(here)


def _warn_if_unreachable(parent: str, st: os.stat_result, layout: SocketLayout) -> None:
    """An existing directory is used as it is; say so when allowed peers cannot get in."""
    mode = stat.S_IMODE(st.st_mode)
    if layout.reach is Reach.ANYONE and not mode & 0o001:
        log.warning("%s is mode %04o: allowed users cannot reach the socket (it needs o+x)", parent, mode)
    elif layout.reach is Reach.GROUP and not (mode & 0o001 or (mode & 0o010 and st.st_gid == layout.group)):
        log.warning("%s is mode %04o, group %d: the allowed group cannot reach the socket", parent, mode, st.st_gid)


def bind_in(directory: SocketDir, layout: SocketLayout, backlog: int) -> socket.socket:
    """A listening socket bound in ``directory`` with the layout's mode, set by the umask
    at ``bind`` (the umask is process-wide: this runs before any job or thread starts)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(layout.socket_umask)
    try:
        sock.bind(directory.bind_path)
        if layout.group is not None:
            # The file's group; its mode was set by the bind. The peer check admits only
            # the allowed group anyway, so the instant before this call opens nothing.
            os.chown(directory.name, -1, layout.group, dir_fd=directory.fd, follow_symlinks=False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def resolve_user(text: str) -> int:
    """A ``--allow-user`` value: a user name or a numeric uid."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"no user named {text!r}") from None


def resolve_group(text: str) -> int:
    """A ``--allow-group`` value: a group name or a numeric gid."""
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group named {text!r}") from None


__all__ = [
    "AccessPolicy",
    "Caller",
    "Peer",
    "Reach",
    "SocketDir",
    "SocketLayout",
    "UnsafeSocketPath",
    "bind_in",
    "is_admin",
    "open_socket_dir",
    "peer_of",
    "resolve_group",
    "resolve_user",
]
