"""The store in one SQLite file: shared by every worker process of one ``serve`` on one machine.

``serve`` runs one worker per CPU; an in-process store would keep revocations, single-use
markers (DPoP proofs, client assertions) and rate-limit counters in each worker apart. This
store keeps them in a SQLite database in WAL mode (readers never wait for the writer), so all
workers agree, and on disk, so revocations outlive a restart. It serves one machine: replicas
on several machines share Redis instead (``store.RedisStore``).

URL: ``sqlite:///absolute/path/store.db``; the configuration also takes ``sqlite:relative/path``
and resolves it against the config file's directory (``settings.py``). The directory is created
when missing.

Each call is bounded by ``timeout``: the wait for another process's write lock (tried again
every 0.2 to 2 ms) and the statement itself (a progress handler interrupts it). Calls go through a
``resilience.Guard`` (bulkhead and circuit breaker) as Redis's do; every SQLite error becomes
``StoreUnavailable``. Connections are opened lazily in the process that uses them and never
carried across a fork (SQLite forbids it): a forked worker opens its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..oauth.clock import Clock
from ..obs import tracing
from .resilience import Guard
from .store import PREFIX, StoreUnavailable

if TYPE_CHECKING:
    from ..obs.metrics import Metrics

SCHEME = "sqlite"
_T = TypeVar("_T")

# One table; `expires` is wall-clock time (time.time()), which every process and a restart share
# (a monotonic clock is per boot, and its zero is not shared). No ROWID: the key is the row.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries "
    "(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    # For the purge of expired rows (below), so it reads only what it deletes.
    "CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires)",
)
_GET = "SELECT value FROM entries WHERE key = ? AND expires > ?"
_SET = "INSERT OR REPLACE INTO entries (key, value, expires) VALUES (?, ?, ?)"
# One statement, hence atomic across processes (SQLite's write lock): inserted when absent,
# replaced when expired, left alone (no row changed) when present and alive, as SET NX.
_ADD = (
    "INSERT INTO entries (key, value, expires) VALUES (:key, :value, :expires) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
    "WHERE entries.expires <= :now"
)
# A fixed window: the counter starts at 1 with its ttl, and an expired one starts again.
_INCR = (
    "INSERT INTO entries (key, value, expires) VALUES (:key, 1, :expires) "
    "ON CONFLICT (key) DO UPDATE SET "
    "value = CASE WHEN entries.expires <= :now THEN 1 ELSE entries.value + 1 END, "
    "expires = CASE WHEN entries.expires <= :now THEN excluded.expires ELSE entries.expires END "
    "RETURNING value"
)
# Extends a live entry only (epoch.Extendable): an expired marker stays expired.
_EXPIRE = "UPDATE entries SET expires = ? WHERE key = ? AND expires > ?"
_PURGE = (
    "DELETE FROM entries WHERE key IN "
    "(SELECT key FROM entries WHERE expires <= ? ORDER BY expires LIMIT ?)"
)
#: Every this many writes, a process deletes up to ``_PURGE_BATCH`` expired rows.
_PURGE_EVERY = 256
_PURGE_BATCH = 1024
#: Consecutive failures that open the breaker: a busy timeout under a burst of writes from every
#: worker is not a dead store, and an open breaker turns revocation checks into 503s.
_FAILURE_THRESHOLD = 5
#: The pauses between tries for the write lock of the file, doubling (seconds).
_FIRST_PAUSE, _LAST_PAUSE = 0.0002, 0.002
#: How often a process looks whether its file was replaced or deleted (seconds).
_FILE_CHECK = 1.0
#: The first connection of a process may wait this long for another creating the file.
_SETUP_TIMEOUT = 5.0


def path_of(url: str) -> Path:
    """The database file of a ``sqlite:`` URL (``ValueError`` for another form)."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or parts.netloc or not parts.path or parts.query or parts.fragment:
        raise ValueError("a SQLite store URL is sqlite:///absolute/path/store.db")
    return Path(unquote(parts.path))


def prepare(path: Path, *, timeout: float = _SETUP_TIMEOUT) -> None:
    """Create the directory, the file and its table, in WAL mode; raise ``StoreUnavailable``
    when that fails. ``serve`` calls it before it starts the workers, so that an unwritable
    path stops it with one message; it leaves no connection open across the fork."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(path, timeout)
        try:
            _setup(db)
            db.execute(_PURGE, (time.time(), 1 << 30))
        finally:
            db.close()
    except (sqlite3.Error, OSError) as e:
        raise StoreUnavailable(_describe(e)) from e


@dataclass
class _Connection:
    db: sqlite3.Connection
    #: When the statement running on it must stop (time.monotonic()); checked by SQLite.
    deadline: float = 0.0


class SqliteStore:
    """``store.Store`` in a SQLite file in WAL mode, shared by the processes that open it.

    Every entry leaves only by expiring (nothing is evicted early, so durable entries and
    single-use markers are safe); expired rows are purged now and then by the writers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        max_concurrency: int = 32,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.clock = clock
        self.guard = Guard(
            "store",
            max_concurrency=max_concurrency,
            failure_threshold=_FAILURE_THRESHOLD,
            cooldown=retry_after,
            metrics=metrics,
            refused=lambda message, _retry_after: StoreUnavailable(message),
        )
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[_Connection] = []
        self._set_up = False
        self._writes = 0
        #: (device, inode) of the file the pooled connections have open, and when it was
        #: last compared with the path's.
        self._file: tuple[int, int] | None = None
        self._file_checked = 0.0
        # Connections inherited through a fork: never used nor closed in the child (closing
        # one would write to a file the parent still has open), only kept from the collector.
        self._inherited: list[_Connection] = []
        # A lock some thread held at the fork would stay held in the child: new ones there.
        forked = weakref.WeakMethod(self._forked)
        os.register_at_fork(after_in_child=lambda: (method := forked()) and method())

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        row = self._run(lambda db: db.execute(_GET, (PREFIX + key, self.clock())).fetchone())
        return None if row is None else _as_bytes(row[0])

    def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        # Nothing is ever evicted here, so `durable` needs nothing more.
        now = self.clock()
        self._write(
            lambda db: db.execute(_SET, (PREFIX + key, value, now + ttl)).rowcount, "INSERT"
        )

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        now = self.clock()
        params = {"key": PREFIX + key, "value": value, "expires": now + ttl, "now": now}
        return self._write(lambda db: db.execute(_ADD, params).rowcount, "INSERT") == 1

    def incr(self, key: str, ttl: float) -> int:
        now = self.clock()
        params = {"key": PREFIX + key, "expires": now + ttl, "now": now}
        # fetchall: the statement runs to its end, so its write commits before the return.
        return int(self._write(lambda db: db.execute(_INCR, params).fetchall()[0][0], "INSERT"))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` read in one statement, from one snapshot of the file
        (``epoch.Pipelined``: the epoch marker is read with what it vouches for)."""
        names = [PREFIX + key for key in keys]
        marks = ", ".join("?" * len(names))
        statement = f"SELECT key, value FROM entries WHERE key IN ({marks}) AND expires > ?"  # noqa: S608 (only "?"s)
        rows = dict(self._run(lambda db: db.execute(statement, (*names, self.clock())).fetchall()))
        return [_as_bytes(rows.get(name)) for name in names]

    def add_then_get(
        self, key: str, value: bytes, ttl: float, then: str
    ) -> tuple[bool, bytes | None]:
        """``add(key, value, ttl)`` then ``get(then)`` in one transaction (``epoch.Pipelined``)."""
        now = self.clock()
        params = {"key": PREFIX + key, "value": value, "expires": now + ttl, "now": now}

        def run(db: sqlite3.Connection) -> tuple[bool, Any]:
            db.execute("BEGIN IMMEDIATE")
            try:
                added = db.execute(_ADD, params).rowcount == 1
                row = db.execute(_GET, (PREFIX + then, now)).fetchone()
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            return added, None if row is None else row[0]

        added, other = self._write(run, "INSERT")
        return added, _as_bytes(other)

    def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` ``ttl`` more seconds if it exists (``epoch.Extendable``: the store's
        epoch marker is extended, never written anew)."""
        now = self.clock()
        return (
            self._write(
                lambda db: db.execute(_EXPIRE, (now + ttl, PREFIX + key, now)).rowcount, "UPDATE"
            )
            == 1
        )

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1 FROM entries LIMIT 1").fetchall())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = (self._idle, []) if self._pid == os.getpid() else ([], [])
        for connection in idle:
            connection.db.close()

    def purge(self) -> int:
        """Delete up to ``_PURGE_BATCH`` expired rows; return how many went."""
        purge = (self.clock(), _PURGE_BATCH)
        return int(
            self._run(lambda db: db.execute(_PURGE, purge).rowcount, write=True, operation="DELETE")
        )

    def _write(self, statement: Callable[[sqlite3.Connection], _T], operation: str) -> _T:
        result = self._run(statement, write=True, operation=operation)
        self._writes += 1  # not exact across threads; it only spaces the purges out
        if self._writes % _PURGE_EVERY == 0:
            # Best effort: a purge that fails is tried again later; the write itself succeeded.
            with contextlib.suppress(StoreUnavailable):
                self.purge()
                # The checkpoint (WAL into the database file, with its fsync) is done here,
                # outside the write lock, not by whichever write crosses the WAL's threshold.
                self._run(
                    lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall(),
                    operation="PRAGMA",
                )
        return result

    def _run(
        self,
        statement: Callable[[sqlite3.Connection], _T],
        *,
        write: bool = False,
        operation: str = "SELECT",
    ) -> _T:
        """``statement`` through the guard; a client span named by its SQL ``operation`` when
        the request is traced (the database conventions: never a key or a value)."""
        if tracing.recording():
            attributes = {
                "db.system.name": "sqlite",
                "db.operation.name": operation,
                "db.collection.name": "entries",
            }
            with tracing.span(f"{operation} entries", tracing.CLIENT, attributes):
                return self._guarded(statement, write)
        return self._guarded(statement, write)

    def _guarded(self, statement: Callable[[sqlite3.Connection], _T], write: bool) -> _T:
        with self.guard.call():  # raises StoreUnavailable at once when busy or marked down
            deadline = time.monotonic() + self.timeout
            # One writer per process at a time: the others wait on this lock, woken as soon as
            # it is free, rather than in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms...
            # between tries; so only the processes contend for the file's write lock.
            if write and not self._write_lock.acquire(timeout=self.timeout):
                raise StoreUnavailable("store: another write of this worker took too long")
            try:
                return self._execute(statement, deadline)
            finally:
                if write:
                    self._write_lock.release()

    def _execute(self, statement: Callable[[sqlite3.Connection], _T], deadline: float) -> _T:
        try:
            connection = self._checkout()
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(_describe(e)) from e
        connection.deadline = deadline
        pause = _FIRST_PAUSE
        try:
            while True:
                try:
                    return statement(connection.db)
                except sqlite3.OperationalError as e:
                    # Another process holds the write lock. Tried again here, often, rather than
                    # by SQLite's busy handler, whose pauses grow to 100 ms: a worker whose
                    # threads write one after another would hold the lock while the other
                    # worker sleeps.
                    busy = getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                    if not busy or time.monotonic() + pause > deadline:
                        raise
                time.sleep(pause)
                pause = min(2 * pause, _LAST_PAUSE)
        except sqlite3.Error as e:
            raise StoreUnavailable(_describe(e)) from e
        finally:
            self._checkin(connection)

    def _checkout(self) -> _Connection:
        stale: list[_Connection] = []
        with self._lock:
            if self._pid != os.getpid():  # forked: what the parent opened is not ours
                self._inherited.extend(self._idle)
                self._idle = []
                self._pid = os.getpid()
                self._set_up = False
            elif self._replaced():
                # The file was deleted or replaced under us: connections still open on the old
                # one would keep reading what every process that opens the path does not see
                # (revocations, used proofs). Reopen: the new file's missing epoch marker is
                # then a reset (epoch.py), as it is for every other process.
                stale, self._idle, self._set_up = self._idle, [], False
            connection = self._idle.pop() if self._idle else None
            set_up = self._set_up
        for old in stale:
            old.db.close()
        if connection is not None:
            return connection
        if not set_up:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(self.path, _SETUP_TIMEOUT)
        connection = _Connection(db)
        # Interrupts a statement past its deadline (checked every 1000 SQLite VM steps).
        db.set_progress_handler(lambda: time.monotonic() > connection.deadline, 1000)
        if not set_up:
            connection.deadline = time.monotonic() + _SETUP_TIMEOUT
            try:
                _setup(db)
            except BaseException:
                db.close()
                raise
            with self._lock:
                self._set_up = True
        # From here on, _execute waits for the write lock itself (below).
        db.execute("PRAGMA busy_timeout = 0")
        with self._lock:
            if self._file is None:
                self._file = _identity(self.path)
        return connection

    def _replaced(self) -> bool:
        """Whether the file at ``path`` is no longer the one the pooled connections have open
        (looked at no more than once per ``_FILE_CHECK`` seconds; called under ``_lock``)."""
        now = time.monotonic()
        if self._file is None or now - self._file_checked < _FILE_CHECK:
            return False
        self._file_checked = now
        current = _identity(self.path)
        if current == self._file:
            return False
        self._file = None
        return True

    def _checkin(self, connection: _Connection) -> None:
        if connection.db.in_transaction:
            # A transaction that could not be rolled back (interrupted at its deadline): never
            # hand this connection out again.
            with contextlib.suppress(sqlite3.Error):
                connection.db.close()
            return
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append(connection)
                return
        self._inherited.append(connection)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when there is no such file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _as_bytes(value: Any) -> bytes | None:
    """A row's value as the store hands it out: a counter is an integer in its row."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): each statement is its own transaction, and every write
    # here is one statement. check_same_thread=False: a connection serves one thread at a time
    # (the pool above), not always the same one.
    db = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False, cached_statements=16
    )
    db.execute(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
    # WAL: durable across a crash of the process; NORMAL skips the fsync per commit (an OS crash
    # or power loss may lose the last commits, never corrupt the file).
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")  # see SqliteStore._write
    return db


def _setup(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError("cannot switch to WAL mode")
    for statement in _SCHEMA:
        db.execute(statement)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or type(error).__name__} ({error.filename or 'the store'})"
    # sqlite3's messages name no value of ours ("database is locked", "interrupted").
    return f"{type(error).__name__} from the store: {error}"


def open_sqlite_store(url: str, **options: Any) -> SqliteStore:
    """The store for a ``sqlite:///path`` URL; ``options`` as ``SqliteStore``'s."""
    return SqliteStore(path_of(url), **options)
