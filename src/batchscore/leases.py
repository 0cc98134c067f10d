"""Run locks shared between machines: a lease in the SQL catalog's database or in S3.

A local ``flock`` (``locks.py``) excludes processes of one machine only. When runs meet in a
shared catalog or an ``s3://`` workspace, a run also takes a lease where they meet:

- a row of ``batchscore_run_locks`` in the SQL catalog's database (a primary key per
  logical run), or
- an object ``locks/<key>.json`` in the S3 workspace, written with ``If-None-Match: *``.

Acquiring inserts (the key existing means held); a heartbeat renews the lease while the run
lives; releasing deletes it. A lease that was not renewed in time — its holder died or lost
the network — is taken over by a compare-and-swap on what was read (the holder's token, S3's
ETag), so two takers can never both win. A holder on this very machine whose process is gone
is taken over at once, without waiting for the lease to run out. Lease times are the
machines' own clocks: they must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.errors import (
    BatchScoreError,
    ConfigError,
    StorageError,
    TransientStoreError,
    is_busy_error,
)

if TYPE_CHECKING:
    from batchscore.config import Settings

log = logging.getLogger("batchscore")

TABLE = "batchscore_run_locks"


@functools.cache
def this_node() -> str:
    """Where a pid means something: the host, its boot and this pid namespace (containers on
    one host share a hostname at times, never a pid namespace)."""
    parts = [socket.gethostname()]
    for read in (
        lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        lambda: os.readlink("/proc/self/ns/pid"),
    ):
        with contextlib.suppress(OSError):
            parts.append(read())
    return "/".join(parts)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists and is not a zombie (a killed process
    its parent has not reaped yet is dead for our purposes)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal said it exists
    return state not in ("Z", "X")


def iso(epoch: float) -> str:
    """Seconds since the epoch as an ISO time in UTC, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Lease:
    """Who holds a shared run lock, and until when (seconds since the epoch)."""

    run_id: str
    host: str
    pid: int
    node: str
    token: str  # this acquisition's own id: renewals and the release match on it
    acquired: float
    expires: float
    version: str = ""  # the store's compare-and-swap handle (S3: the ETag)

    @classmethod
    def mine(cls, run_id: str, seconds: float) -> Lease:
        now = time.time()
        return cls(
            run_id=run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            node=this_node(),
            token=uuid.uuid4().hex,
            acquired=now,
            expires=now + seconds,
        )

    def owner_dead(self) -> bool:
        """The holder ran on this machine and its process is gone."""
        return self.node == this_node() and not pid_alive(self.pid)

    def live(self, now: float | None = None) -> bool:
        """Held: not expired and not known to be dead."""
        return self.expires > (time.time() if now is None else now) and not self.owner_dead()

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("version")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes, version: str = "") -> Lease:
        try:
            data = json.loads(text)
            return cls(
                run_id=str(data["run_id"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                node=str(data["node"]),
                token=str(data["token"]),
                acquired=float(data["acquired"]),
                expires=float(data["expires"]),
                version=version,
            )
        except (ValueError, KeyError, TypeError):
            # Not a lease batchscore wrote: treat it as expired so it can be taken over
            # (by compare-and-swap, like any other).
            return cls("?", "?", 0, "?", "?", 0.0, 0.0, version)


class LeaseStore(abc.ABC):
    """Where shared run locks live. Each method is atomic in the store."""

    where: str  # for messages: which store, never a secret

    @abc.abstractmethod
    def read(self, key: str) -> Lease | None:
        """The lease of ``key``, or None when nobody holds one."""

    @abc.abstractmethod
    def insert(self, key: str, lease: Lease) -> Lease | None:
        """Store ``lease`` unless ``key`` has one; the stored lease, or None when it has."""

    @abc.abstractmethod
    def swap(self, key: str, old: Lease, new: Lease) -> Lease | None:
        """Replace ``old`` by ``new`` if ``old`` is still there; the stored lease, or None."""

    @abc.abstractmethod
    def delete(self, key: str, lease: Lease) -> None:
        """Remove ``lease`` if it is still there (never another holder's)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Free connections."""

    def acquire(self, key: str, me: Lease) -> tuple[Lease | None, Lease | None]:
        """(my stored lease, None) when acquired, else (None, the live holder).

        Raises:
            TransientStoreError: the lease changed hands under us again and again.
        """
        for _ in range(20):
            stored = self.insert(key, me)
            if stored is not None:
                return stored, None
            current = self.read(key)
            if current is None:
                continue  # released meanwhile: insert again
            if current.live():
                return None, current
            stored = self.swap(key, current, me)
            if stored is not None:
                log.warning(
                    "took over the run lock %s from run %s on %s (pid %s): its lease %s",
                    key,
                    current.run_id,
                    current.host,
                    current.pid,
                    "ran out at " + iso(current.expires) + " UTC"
                    if current.expires <= time.time()
                    else "was held by a process that is gone",
                )
                return stored, None
        raise TransientStoreError(f"the run lock {key} in {self.where} kept changing hands.")

    def renew(self, key: str, mine: Lease, seconds: float) -> Lease | None:
        """Extend my lease by ``seconds`` from now; None when it is no longer mine."""
        return self.swap(key, mine, dataclasses.replace(mine, expires=time.time() + seconds))


# SQL (the catalog's database) ---------------------------------------------------------------


class SqlLeaseStore(LeaseStore):
    """Leases as rows of ``batchscore_run_locks`` in a SQLAlchemy database (the SQL catalog's).

    On SQLite, WAL mode and a busy timeout let it share the file with the catalog's writers;
    a "database is locked" that outlasts them is retried here before it becomes an error.
    """

    def __init__(self, uri: str, attempts: int = 8) -> None:
        import sqlalchemy as sa

        self.where = "the catalog database (table batchscore_run_locks)"
        self.uri = uri
        self.attempts = attempts
        sqlite = uri.startswith("sqlite")
        # A busy timeout of 30 s unless the catalog's URI sets its own (``?timeout=…``).
        waits = sqlite and "timeout=" not in uri
        self.engine = sa.create_engine(uri, connect_args={"timeout": 30} if waits else {})
        from batchscore.workspace import track_engine

        track_engine(self.engine)
        if sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        self.table = sa.Table(
            TABLE,
            sa.MetaData(),
            sa.Column("lock_key", sa.String(512), primary_key=True),
            sa.Column("run_id", sa.String(128), nullable=False),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("node", sa.String(512), nullable=False),
            sa.Column("token", sa.String(64), nullable=False),
            sa.Column("acquired", sa.Float(precision=53), nullable=False),
            sa.Column("lease_expires", sa.Float(precision=53), nullable=False),
        )
        self._retrying(self._create_table)

    def _create_table(self) -> None:
        import sqlalchemy as sa

        try:
            self.table.metadata.create_all(self.engine, checkfirst=True)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if "already exists" not in str(exc).lower():  # another process created it first
                raise

    def _retrying(self, call: Any) -> Any:
        for attempt in range(self.attempts):
            try:
                return call()
            except Exception as exc:
                first_line = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                if not is_busy_error(exc):
                    error = self._not_busy(exc, first_line)
                    if error is exc:
                        raise
                    raise error from exc
                if attempt == self.attempts - 1:
                    raise TransientStoreError(
                        f"{self.where} stayed locked through {self.attempts} tries "
                        f"({first_line}): the run's lock lives there. Wait for the process "
                        "holding the catalog database, then run again; nothing was started."
                    ) from exc
                time.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    def _not_busy(self, exc: Exception, first_line: str) -> Exception:
        """The error to raise for a failure that waiting cannot fix: a full disk, a database
        that cannot be opened, else ``exc`` itself."""
        import sqlalchemy as sa

        text = first_line.lower()
        if "disk" in text and ("full" in text or "i/o" in text):
            return StorageError(
                f"cannot write the run's lock to the catalog database {self.uri} "
                f"({first_line}): the disk is full or a file size limit was "
                "reached. Free space, then run again; nothing was started."
            )
        if isinstance(exc, sa.exc.OperationalError | sa.exc.DatabaseError):
            return ConfigError(
                f"cannot open the Iceberg catalog database {self.uri} for the "
                f"run's lock ({first_line}). Check the 'catalog' settings; they "
                "are pyiceberg catalog properties."
            )
        return exc

    def _values(self, key: str, lease: Lease) -> dict[str, Any]:
        return {
            "lock_key": key,
            "run_id": lease.run_id,
            "host": lease.host,
            "pid": lease.pid,
            "node": lease.node,
            "token": lease.token,
            "acquired": lease.acquired,
            "lease_expires": lease.expires,
        }

    def read(self, key: str) -> Lease | None:
        def query() -> Lease | None:
            t = self.table
            with self.engine.connect() as con:
                row = con.execute(t.select().where(t.c.lock_key == key)).mappings().first()
            if row is None:
                return None
            return Lease(
                row["run_id"], row["host"], row["pid"], row["node"], row["token"],
                row["acquired"], row["lease_expires"],
            )  # fmt: skip

        return self._retrying(query)

    def insert(self, key: str, lease: Lease) -> Lease | None:
        import sqlalchemy as sa

        def insert() -> Lease | None:
            try:
                with self.engine.begin() as con:
                    con.execute(self.table.insert().values(**self._values(key, lease)))
            except sa.exc.IntegrityError:
                return None
            return lease

        return self._retrying(insert)

    def swap(self, key: str, old: Lease, new: Lease) -> Lease | None:
        def update() -> Lease | None:
            t = self.table
            with self.engine.begin() as con:
                done = con.execute(
                    t.update()
                    .where(t.c.lock_key == key, t.c.token == old.token)
                    .values(**self._values(key, new))
                )
            return new if done.rowcount == 1 else None

        return self._retrying(update)

    def delete(self, key: str, lease: Lease) -> None:
        def delete() -> None:
            t = self.table
            with self.engine.begin() as con:
                con.execute(t.delete().where(t.c.lock_key == key, t.c.token == lease.token))

        self._retrying(delete)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer share the catalog file (the setting persists)."""
    cursor = dbapi_connection.cursor()
    try:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
    except Exception as exc:  # busy right now: another connection will set it
        if not is_busy_error(exc):
            raise
    finally:
        cursor.close()


# S3 -----------------------------------------------------------------------------------------


class S3LeaseStore(LeaseStore):
    """Leases as objects ``<base>/locks/<key>.json``, written with S3's conditional writes:
    ``If-None-Match: *`` to acquire, ``If-Match: <ETag>`` to renew, take over and delete."""

    def __init__(self, settings: Settings, base: str) -> None:
        from batchscore.aws import client, split_s3

        self.bucket, prefix = split_s3(f"{base.rstrip('/')}/locks")
        self.prefix = prefix
        self.where = f"s3://{self.bucket}/{prefix}/"
        self.client = client("s3", settings)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}.json"

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def read(self, key: str) -> Lease | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return Lease.from_json(got["Body"].read(), version=got["ETag"])

    def _put(self, key: str, lease: Lease, **condition: str) -> Lease | None:
        from botocore.exceptions import ClientError

        try:
            put = self.client.put_object(
                Bucket=self.bucket,
                Key=self._object(key),
                Body=lease.to_json().encode(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write won the race.
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise
        return dataclasses.replace(lease, version=put["ETag"])

    def insert(self, key: str, lease: Lease) -> Lease | None:
        return self._put(key, lease, IfNoneMatch="*")

    def swap(self, key: str, old: Lease, new: Lease) -> Lease | None:
        if not old.version:
            return None
        return self._put(key, new, IfMatch=old.version)

    def delete(self, key: str, lease: Lease) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(
                Bucket=self.bucket, Key=self._object(key), IfMatch=lease.version
            )
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "NoSuchKey", "404"):
                return  # no longer mine (taken over) or gone
            raise


def open_lease_store(settings: Settings) -> LeaseStore | None:
    """The store where this pipeline's runs meet, or None when only this machine runs it.

    An ``s3://`` workspace, else a configured SQL catalog, else the Glue catalog's bucket
    (``s3://bucket/prefix/locks/``). The default catalog, SQLite inside a local workspace,
    is no meeting place beyond that workspace, which the local lock covers already.

    Raises:
        StorageError: the store cannot be reached.
    """
    try:
        if settings.remote_workspace:
            return S3LeaseStore(settings, settings.remote_workspace)
        from batchscore.catalog import choose_catalog

        # A catalog configured here or in pyiceberg's own config; not the embedded default.
        choice = choose_catalog(settings)
        properties = dict(choice.properties) if choice.source != "default" else {}
        if properties.get("type") == "sql" and properties.get("uri"):
            try:
                return SqlLeaseStore(properties["uri"])
            except ImportError as exc:  # the catalog's database driver (psycopg, …)
                raise ConfigError(
                    f"cannot open the Iceberg catalog database {properties['uri']} for the "
                    f"run's lock: {exc}. Install the driver its URI names."
                ) from exc
        glue = properties.get("type") == "glue" or (
            choice.source == "default" and settings.backend == "aws"
        )
        if glue and settings.bucket:
            return S3LeaseStore(settings, settings.s3_prefix)
    except BatchScoreError:
        raise
    except Exception as exc:
        raise StorageError(
            f"cannot open the shared run-lock store: {settings.redact(str(exc))}"
        ) from exc
    return None
