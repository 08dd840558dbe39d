"""Whose each job is, and who may see it: the core's one rule of ownership.

Every job records the uid that submitted it (``JobRow.owner``; a schedule's runs belong to
whoever added the schedule). Jobs older than ownership have none and belong to the uid
the daemon runs as. An admin (root or the daemon's uid) sees and controls every job; any
other caller only its own, and another user's job is to it exactly like a job that does
not exist (the same ``not_found``), so ids cannot be probed.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from protocol.errors import NotFound
from pyrexisd.access import Caller, is_admin


def no_such_job(job_id: str) -> NotFound:
    """The error of a job that does not exist, or that the caller may not see: one shape."""
    return NotFound(f"no job {job_id!r}", {"job_id": job_id})


class Owners:
    """Ownership as the daemon running as ``daemon_uid`` applies it."""

    def __init__(self, daemon_uid: int | None = None) -> None:
        self.daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid

    def of(self, owner: int | None) -> int:
        """The uid a job with this ``owner`` field belongs to."""
        return self.daemon_uid if owner is None else owner

    def is_admin(self, uid: int) -> bool:
        return is_admin(uid, self.daemon_uid)

    def sees(self, caller: Caller, owner: int | None) -> bool:
        """Whether ``caller`` may see (and act on) a job with this ``owner`` field."""
        return caller.admin or self.of(owner) == caller.uid

    def lets(self, caller: Caller) -> Callable[[int | None], bool] | None:
        """The visibility test for ``caller``'s reads, or None when it sees everything."""
        if caller.admin:
            return None
        uid = caller.uid
        daemon_uid = self.daemon_uid
        return lambda owner: (daemon_uid if owner is None else owner) == uid

    def check(self, caller: Caller, owner: int | None, job_id: str) -> None:
        """Refuse, as if it did not exist, a job ``caller`` may not see."""
        if not self.sees(caller, owner):
            raise no_such_job(job_id)

    def caller_for(self, owner: int | None) -> Caller:
        """The caller a job or a schedule of ``owner`` acts as when the daemon acts for it
        (a schedule's runs): its uid, its primary group, admin when it is one."""
        uid = self.of(owner)
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
        return Caller(uid, gid, None, self.is_admin(uid))
