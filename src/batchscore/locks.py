"""One run at a time: a lock per logical run — pipeline, logical date and id range — held
while a run executes (two id ranges of one pipeline may run side by side).

Two locks, taken in this order:

- an ``flock`` on a file in the workspace (``locks/<key>.lock``): fast, and released by the
  OS when the process dies, so a killed run never leaves it behind. The file names the holder.
- when runs of other machines meet this one — an ``s3://`` workspace, a configured SQL
  catalog, the Glue catalog — a lease where they meet (``leases.py``), renewed by a heartbeat
  thread every third of ``lock_lease_seconds`` and taken over once it runs out.

``lock_holder`` tells who holds a logical run's lock without taking it, which is how the run
history tells a running run from one whose process died (``abandoned``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

from batchscore.clock import utcnow
from batchscore.config import Settings
from batchscore.errors import BatchScoreError, RunLockedError, StorageError
from batchscore.leases import Lease, LeaseStore, iso, open_lease_store

log = logging.getLogger("batchscore")

# A probe (lock_holder) holds the flock for microseconds; a run starting meanwhile waits this
# long for it rather than reporting a lock that nobody really holds.
PROBE_GRACE_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a logical run's lock."""

    run_id: str
    host: str
    pid: int | None
    since: str  # ISO time the lock was taken
    lease_expires: str | None  # ISO time (UTC) for a shared lease; None for the local lock
    where: str  # the lock file, or the shared store


def lock_key(pipeline_name: str, logical_date: str, id_range: str = "") -> str:
    """The logical run's key: a safe file and object name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pipeline_name)
    return f"{safe}__{logical_date}__{id_range or 'all'}"


def _what(pipeline_name: str, logical_date: str, id_range: str) -> str:
    ids = f" (ids {id_range})" if id_range else ""
    return f"pipeline {pipeline_name!r} for {logical_date}{ids}"


@contextlib.contextmanager
def run_lock(
    settings: Settings, pipeline_name: str, logical_date: str, run_id: str, id_range: str = ""
) -> Iterator[None]:
    """Hold the lock of one logical run (pipeline, logical date, id range) while it executes.

    Raises:
        RunLockedError: another process (or thread) holds it; the message names its run,
            host, pid and, for a shared lock, when its lease runs out.
        StorageError: the shared lock's store cannot be reached.
    """
    key = lock_key(pipeline_name, logical_date, id_range)
    what = _what(pipeline_name, logical_date, id_range)
    with _local_lock(settings, key, what, run_id):
        store = open_lease_store(settings)
        if store is None:
            yield
        else:
            try:
                with _shared_lock(settings, store, key, what, run_id):
                    yield
            finally:
                store.close()


def lock_holder(
    settings: Settings, pipeline_name: str, logical_date: str, id_range: str = ""
) -> LockHolder | None:
    """Who holds the logical run's lock now, or None; takes nothing (the local lock is tried
    for an instant and let go).

    Raises:
        StorageError: the shared lock's store cannot be reached.
    """
    key = lock_key(pipeline_name, logical_date, id_range)
    holder = _local_holder(settings, key)
    if holder is not None:
        return holder
    store = open_lease_store(settings)
    if store is None:
        return None
    try:
        lease = store.read(key)
    except BatchScoreError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot read the run lock in {store.where}: {exc}") from exc
    finally:
        store.close()
    if lease is None or not lease.live():
        return None
    return _holder_of(lease, store)


# The local lock ---------------------------------------------------------------------------


@contextlib.contextmanager
def _local_lock(settings: Settings, key: str, what: str, run_id: str) -> Iterator[None]:
    path = settings.workspace_path / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        deadline = time.monotonic() + PROBE_GRACE_SECONDS
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = _read_holder(handle)
                raise RunLockedError(
                    f"{what} is already running: run {holder.get('run_id', '?')} (host "
                    f"{holder.get('host', socket.gethostname())}, pid {holder.get('pid', '?')}, "
                    f"started {holder.get('started', '?')}). Wait for it to finish; "
                    f"'batchscore runs show {holder.get('run_id', 'RUN_ID')}' shows its progress."
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "run_id": run_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "started": utcnow().isoformat(timespec="seconds"),
                }
            )
        )
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _read_holder(handle) -> dict:  # type: ignore[no-untyped-def]
    handle.seek(0)
    try:
        data = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _local_holder(settings: Settings, key: str) -> LockHolder | None:
    path = settings.workspace_path / "locks" / f"{key}.lock"
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with handle:
        try:
            # Shared, so two probes never see each other; any run holds it exclusively.
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            data: dict = {}
            for _ in range(20):  # a holder that just took it writes its name a moment later
                data = _read_holder(handle)
                if data.get("run_id"):
                    break
                time.sleep(0.01)
            pid = data.get("pid")
            return LockHolder(
                run_id=str(data.get("run_id", "?")),
                host=str(data.get("host", socket.gethostname())),
                pid=pid if isinstance(pid, int) else None,
                since=str(data.get("started", "?")),
                lease_expires=None,
                where=str(path),
            )
        return None  # free (closing the file lets the probe's lock go)


# The shared lock --------------------------------------------------------------------------


def _holder_of(lease: Lease, store: LeaseStore) -> LockHolder:
    return LockHolder(
        run_id=lease.run_id,
        host=lease.host,
        pid=lease.pid,
        since=iso(lease.acquired),
        lease_expires=iso(lease.expires),
        where=store.where,
    )


@contextlib.contextmanager
def _shared_lock(
    settings: Settings, store: LeaseStore, key: str, what: str, run_id: str
) -> Iterator[None]:
    seconds = settings.lock_lease_seconds
    try:
        mine, holder = store.acquire(key, Lease.mine(run_id, seconds))
    except BatchScoreError:
        raise
    except Exception as exc:
        raise StorageError(
            f"cannot take the run lock of {what} in {store.where}: {settings.redact(str(exc))}"
        ) from exc
    if mine is None:
        assert holder is not None
        raise RunLockedError(
            f"{what} is already running: run {holder.run_id} on host {holder.host} (pid "
            f"{holder.pid}) has held its lock in {store.where} since {iso(holder.acquired)}; "
            f"the lease expires at {iso(holder.expires)} unless renewed. Wait for it to "
            f"finish; 'batchscore runs show {holder.run_id}' on {holder.host} shows its "
            "progress. If that process died, the lock is taken over once the lease expires."
        )
    heartbeat = _Heartbeat(store, key, mine, seconds, run_id)
    heartbeat.start()
    try:
        yield
    finally:
        last = heartbeat.stop()
        try:
            store.delete(key, last)
        except Exception as exc:  # the lease runs out by itself
            log.warning("could not release the run lock %s in %s: %s", key, store.where, exc)


class _Heartbeat:
    """Renews a lease every third of its length until stopped."""

    def __init__(self, store: LeaseStore, key: str, lease: Lease, seconds: float, run_id: str):
        self.store, self.key, self.lease, self.seconds = store, key, lease, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"batchscore-lock-{run_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Lease:
        """Stop renewing; the lease as last stored."""
        self._stop.set()
        self._thread.join()
        return self.lease

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                renewed = self.store.renew(self.key, self.lease, self.seconds)
            except Exception as exc:  # a hiccup: two more tries before the lease runs out
                log.warning("could not renew the run lock %s (retrying): %s", self.key, exc)
                continue
            if renewed is None:
                log.error(
                    "run %s lost its lock %s in %s: its lease ran out before it was renewed "
                    "and another run took it over",
                    self.lease.run_id,
                    self.key,
                    self.store.where,
                )
                return
            self.lease = renewed
