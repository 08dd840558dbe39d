"""The access policy and the socket's directory (``pyrexisd/access.py``), without a daemon."""

from __future__ import annotations

import os
import stat

import pytest

from pyrexisd.access import (
    AccessPolicy,
    Peer,
    Reach,
    UnsafeSocketPath,
    bind_in,
    open_socket_dir,
    resolve_group,
    resolve_user,
)

DAEMON = 1000


def test_root_and_the_daemons_uid_are_admins_and_nobody_else_gets_in_by_default() -> None:
    policy = AccessPolicy(daemon_uid=DAEMON)
    root = policy.admit(Peer(0, 0, 10))
    me = policy.admit(Peer(DAEMON, DAEMON, 11))
    assert root is not None and root.admin and (root.uid, root.pid) == (0, 10)
    assert me is not None and me.admin
    assert policy.admit(Peer(1001, 1001, 12)) is None
    assert policy.layout().reach is Reach.PRIVATE and policy.layout().dir_mode == 0o700


def test_allowed_users_and_groups_get_in_as_callers_that_are_not_admins() -> None:
    """A uid named by --allow-user, a peer whose primary group or one of whose groups is
    named by --allow-group, get in — none as an admin; anyone else still does not."""
    policy = AccessPolicy(allow_users=[1001], allow_groups=[500], daemon_uid=DAEMON)
    for peer in (Peer(1001, 1001, 1), Peer(1002, 500, 2), Peer(1003, 1003, 3, (20, 500))):
        caller = policy.admit(peer)
        assert caller is not None and not caller.admin and caller.uid == peer.uid
    assert policy.admit(Peer(1004, 1004, 4, (20, 21))) is None


@pytest.mark.parametrize(
    ("users", "groups", "reach", "dir_mode", "umask", "group"),
    [
        ((), (), Reach.PRIVATE, 0o700, 0o177, None),
        ((), (500,), Reach.GROUP, 0o750, 0o117, 500),
        ((1001,), (), Reach.ANYONE, 0o711, 0o111, None),
        ((), (500, 501), Reach.ANYONE, 0o711, 0o111, None),
    ],
)
def test_the_socket_is_as_reachable_as_the_policy_needs_and_no_more(
    users: tuple[int, ...], groups: tuple[int, ...], reach: Reach, dir_mode: int, umask: int, group: int | None
) -> None:
    layout = AccessPolicy(users, groups, daemon_uid=DAEMON).layout()
    assert (layout.reach, layout.dir_mode, layout.socket_umask, layout.group) == (reach, dir_mode, umask, group)


def test_the_directory_is_created_with_the_layouts_mode_and_the_socket_bound_with_its_own(tmp_path: str) -> None:
    layout = AccessPolicy(allow_users=[1001]).layout()
    path = os.path.join(tmp_path, "run", "s.sock")
    directory = open_socket_dir(path, layout)
    try:
        sock = bind_in(directory, layout, 16)
        try:
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        finally:
            sock.close()
    finally:
        directory.close()


def test_a_directory_others_can_write_or_a_symlink_is_refused(tmp_path: str) -> None:
    layout = AccessPolicy().layout()
    shared = os.path.join(tmp_path, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    with pytest.raises(UnsafeSocketPath, match="writable by others"):
        open_socket_dir(os.path.join(shared, "s.sock"), layout)
    real = os.path.join(tmp_path, "real")
    os.mkdir(real, 0o700)
    os.symlink(real, os.path.join(tmp_path, "link"))
    with pytest.raises(UnsafeSocketPath, match="not a directory"):
        open_socket_dir(os.path.join(tmp_path, "link", "s.sock"), layout)


def test_a_symlink_planted_in_a_directory_others_can_write_is_never_followed(tmp_path: str) -> None:
    """Given a world-writable sticky directory (like /tmp) holding a symlink to a
    directory of ours, then a socket path through that link is refused, and nothing is
    created where it points."""
    shared = os.path.join(tmp_path, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    target = os.path.join(tmp_path, "target")
    os.mkdir(target, 0o700)
    os.symlink(target, os.path.join(shared, "planted"))
    with pytest.raises(UnsafeSocketPath, match="symlink another user could have made"):
        open_socket_dir(os.path.join(shared, "planted", "sub", "s.sock"), AccessPolicy().layout())
    assert os.listdir(target) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_a_directory_of_another_uid_is_refused(tmp_path: str) -> None:
    theirs = os.path.join(tmp_path, "theirs")
    os.mkdir(theirs, 0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeSocketPath, match="belongs to uid 65534"):
        open_socket_dir(os.path.join(theirs, "s.sock"), AccessPolicy().layout())


def test_names_and_numbers_both_name_users_and_groups() -> None:
    assert resolve_user("root") == 0 and resolve_user("4321") == 4321
    assert resolve_group("root") == 0 and resolve_group("77") == 77
    with pytest.raises(ValueError, match="no user"):
        resolve_user("no-such-user-here")
    with pytest.raises(ValueError, match="no group"):
        resolve_group("no-such-group-here")
