"""One driver per run directory: a lease file (`lease.json`) naming its owner, refreshed while
the driver runs.

Two drivers on one run dir would both start the same stages and publish over each other's
artifacts. A driver takes the lease before anything runs and refreshes it (a heartbeat) as it
polls; a second driver is refused with the owner named. A lease whose heartbeat is older than
`stale_after_s`, or whose driver is a dead process on this very host, is stale: a driver killed
on this host is resumed without ceremony; elsewhere, `--steal-lock` takes a stale lease over.
A live lease is never taken over.

The lease is a file on the run storage (local or any pyarrow filesystem), written atomically and
read back to confirm: object stores have no create-if-absent, so two drivers starting within the
same instant are told apart by the token they read back, not prevented by the filesystem.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from dreamray.orchestration.storage import RunStorage

LEASE_FILE = "lease.json"
# A driver refreshes its lease at most this often (each refresh is one small write).
HEARTBEAT_S = 10.0
# A lease not refreshed for this long is a dead driver's: several missed heartbeats, so a slow
# storage write or a paused driver is not mistaken for a dead one.
DEFAULT_STALE_S = 120.0

log = logging.getLogger("dreamray.orchestration")


class LeaseHeldError(RuntimeError):
    """The run directory is leased by another driver (the message names it)."""


@dataclass(frozen=True)
class Lease:
    """Who drives a run directory, and since when."""

    owner: str
    host: str
    pid: int
    token: str
    acquired_at: float
    heartbeat_at: float

    def describe(self, now: float) -> str:
        """`owner@host pid N, last heartbeat S s ago`."""
        return (f"{self.owner}@{self.host} pid {self.pid}, last heartbeat "
                f"{now - self.heartbeat_at:.0f} s ago")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLease:
    """The lease of one run directory, as held by this process."""

    def __init__(self, storage: RunStorage, stale_after_s: float = DEFAULT_STALE_S,
                 clock: Callable[[], float] = time.time):
        """Args:
        storage: the run storage.
        stale_after_s: heartbeat age after which a lease is stale.
        clock: seconds since the epoch (tests pass a fake one).
        """
        self.storage, self.stale_after_s, self.clock = storage, stale_after_s, clock
        self.held: Lease | None = None

    def read(self) -> Lease | None:
        """The lease on the run directory, if any."""
        if not self.storage.exists(LEASE_FILE):
            return None
        return Lease(**self.storage.read_json(LEASE_FILE))

    def _stale(self, lease: Lease, now: float) -> bool:
        if now - lease.heartbeat_at > self.stale_after_s:
            return True
        return lease.host == socket.gethostname() and not _process_alive(lease.pid)

    def acquire(self, steal: bool = False) -> Lease:
        """Take the lease (before the driver starts anything).

        Args:
            steal: take over a stale lease of another host (`--steal-lock`).

        Returns:
            The lease now held.

        Raises:
            LeaseHeldError: another driver holds a live lease, or a stale one of another host
                without `steal`; the message names it.
        """
        now = self.clock()
        current = self.read()
        if current is not None:
            self._check_takeover(current, now, steal)
        mine = Lease(getpass.getuser(), socket.gethostname(), os.getpid(), uuid.uuid4().hex,
                     now, now)
        self.storage.write_json(LEASE_FILE, dataclasses.asdict(mine))
        if self.read() != mine:  # another driver wrote in the same instant
            raise LeaseHeldError(f"{self.storage.uri}: another driver took the lease while this "
                                 "one was taking it; re-submit once it has finished")
        self.held = mine
        return mine

    def _check_takeover(self, current: Lease, now: float, steal: bool) -> None:
        who = current.describe(now)
        if not self._stale(current, now):
            raise LeaseHeldError(
                f"{self.storage.uri} is being run by {who}: two drivers on one run dir would "
                "redo each other's stages; wait for it to finish, or use another run dir"
            )
        if current.host != socket.gethostname() and not steal:
            raise LeaseHeldError(
                f"{self.storage.uri} is leased by {who} (stale: more than "
                f"{self.stale_after_s:.0f} s without a heartbeat); if that driver is gone, "
                "re-submit with --steal-lock"
            )
        log.warning("taking over the stale lease of %s on %s", who, self.storage.uri)

    def heartbeat(self) -> None:
        """Refresh the held lease (at most every HEARTBEAT_S).

        Raises:
            LeaseHeldError: the lease was taken over by another driver: stop.
        """
        if self.held is None:
            return
        now = self.clock()
        if now - self.held.heartbeat_at < HEARTBEAT_S:
            return
        current = self.read()
        if current is None or current.token != self.held.token:
            who = current.describe(now) if current else "nobody (the lease file is gone)"
            raise LeaseHeldError(f"{self.storage.uri}: this driver's lease is now held by {who}")
        self.held = dataclasses.replace(self.held, heartbeat_at=now)
        self.storage.write_json(LEASE_FILE, dataclasses.asdict(self.held))

    def release(self) -> None:
        """Give the lease up (when the driver ends, however it ends), if it is still ours."""
        if self.held is None:
            return
        current = self.read()
        if current is not None and current.token == self.held.token:
            self.storage.delete_file(LEASE_FILE)
        self.held = None
