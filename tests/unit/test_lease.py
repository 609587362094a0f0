"""One driver per run directory: the lease names its owner, goes stale, and is taken over only
when its driver is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from dreamray.orchestration import lease as lease_mod
from dreamray.orchestration.lease import LEASE_FILE, LeaseHeldError, RunLease
from dreamray.orchestration.storage import RunStorage


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lease_of(storage: RunStorage, clock: Clock, **fields) -> None:
    base = {"owner": "alice", "host": "gpu-node-7", "pid": 4242, "token": "theirs",
            "acquired_at": clock.now, "heartbeat_at": clock.now}
    storage.write_json(LEASE_FILE, {**base, **fields})


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_acquire_heartbeat_release(tmp_path):
    storage, clock = RunStorage(str(tmp_path)), Clock()
    lease = RunLease(storage, clock=clock)
    held = lease.acquire()
    assert held.pid == os.getpid() and held.host == socket.gethostname()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == held.token
    clock.now += lease_mod.HEARTBEAT_S + 1
    lease.heartbeat()
    assert lease.read().heartbeat_at == clock.now
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_second_driver_is_refused_with_the_owner_named(tmp_path):
    storage, clock = RunStorage(str(tmp_path)), Clock()
    _lease_of(storage, clock)
    clock.now += 30
    with pytest.raises(LeaseHeldError, match=r"alice@gpu-node-7 pid 4242, last heartbeat 30 s"):
        RunLease(storage, clock=clock).acquire()
    with pytest.raises(LeaseHeldError, match="is being run by"):
        RunLease(storage, clock=clock).acquire(steal=True)  # a live lease is never stolen
    assert lease_mod.RunLease(storage).read().token == "theirs"


def test_a_stale_lease_of_another_host_needs_steal_lock(tmp_path):
    storage, clock = RunStorage(str(tmp_path)), Clock()
    _lease_of(storage, clock)
    clock.now += lease_mod.DEFAULT_STALE_S + 1
    with pytest.raises(LeaseHeldError, match="stale.*--steal-lock"):
        RunLease(storage, clock=clock).acquire()
    held = RunLease(storage, clock=clock).acquire(steal=True)
    assert RunLease(storage).read() == held


def test_a_dead_driver_on_this_host_is_taken_over_at_once(tmp_path):
    storage, clock = RunStorage(str(tmp_path)), Clock()
    _lease_of(storage, clock, host=socket.gethostname(), pid=_dead_pid())
    held = RunLease(storage, clock=clock).acquire()  # no --steal-lock, no waiting
    assert held.pid == os.getpid()


def test_a_driver_whose_lease_was_taken_stops(tmp_path):
    storage, clock = RunStorage(str(tmp_path)), Clock()
    mine = RunLease(storage, clock=clock)
    mine.acquire()
    _lease_of(storage, clock, token="thief")
    clock.now += lease_mod.HEARTBEAT_S + 1
    with pytest.raises(LeaseHeldError, match="now held by alice@gpu-node-7"):
        mine.heartbeat()
    mine.release()  # not ours any more: left in place
    assert RunLease(storage).read().token == "thief"
