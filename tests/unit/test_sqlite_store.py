"""The SQLite store (sqlite_store.py): one file shared by several store instances and processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from token_exchange.oauth.clock import ManualClock
from token_exchange.sources import sqlite_store
from token_exchange.sources.sqlite_store import SqliteStore, path_of, prepare
from token_exchange.sources.store import PREFIX, StoreUnavailable
from token_exchange.sources.stores import open_store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "store.db"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_store(db: Path, clock: ManualClock) -> Iterator[Callable[..., SqliteStore]]:
    """Store instances on one file, each as another worker would open it; closed at the end."""
    stores: list[SqliteStore] = []

    def make(**options: object) -> SqliteStore:
        store = SqliteStore(db, clock=clock, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_set_get_and_expiry(make_store: Callable[..., SqliteStore], clock: ManualClock) -> None:
    store = make_store()
    assert store.get("a") is None
    store.set("a", b"1", ttl=10)
    assert store.get("a") == b"1"
    clock.advance(9.9)
    assert store.get("a") == b"1"
    clock.advance(0.1)
    assert store.get("a") is None


def test_what_one_instance_writes_another_reads(make_store: Callable[..., SqliteStore]) -> None:
    one, other = make_store(), make_store()
    one.set("revoked:j1", b"1", ttl=60, durable=True)
    assert other.get("revoked:j1") == b"1"


def test_keys_are_namespaced_and_carry_their_expiry(
    make_store: Callable[..., SqliteStore], db: Path, clock: ManualClock
) -> None:
    store = make_store()
    store.set("x", b"1", ttl=10)
    store.incr("n", ttl=20)
    with sqlite3.connect(db) as raw:
        rows = sorted(raw.execute("SELECT key, expires FROM entries").fetchall())
    raw.close()
    assert rows == [(PREFIX + "n", clock() + 20), (PREFIX + "x", clock() + 10)]


def test_add_stores_only_when_absent_or_expired(
    make_store: Callable[..., SqliteStore], clock: ManualClock
) -> None:
    one, other = make_store(), make_store()
    assert one.add("jti:p1", b"1", ttl=10) is True
    assert other.add("jti:p1", b"2", ttl=10) is False
    assert one.add("jti:p1", b"3", ttl=10) is False
    assert other.get("jti:p1") == b"1"
    clock.advance(10)
    # Expired: replaceable, as SET NX would find the key gone.
    assert other.add("jti:p1", b"4", ttl=10) is True
    assert one.get("jti:p1") == b"4"


def test_incr_counts_across_instances_within_its_ttl(
    make_store: Callable[..., SqliteStore], clock: ManualClock
) -> None:
    one, other = make_store(), make_store()
    counts = [store.incr("c", ttl=60) for store in (one, other, one, other)]
    assert counts == [1, 2, 3, 4]
    assert one.get("c") == b"4"
    clock.advance(59)
    assert other.incr("c", ttl=60) == 5
    clock.advance(1)
    # A fixed window: the expired counter starts again, with a new ttl.
    assert one.incr("c", ttl=60) == 1
    clock.advance(59)
    assert other.incr("c", ttl=60) == 2


def test_entries_survive_reopening_the_file(
    make_store: Callable[..., SqliteStore], clock: ManualClock
) -> None:
    before = make_store()
    before.set("revoked:j1", b"1", ttl=300, durable=True)
    before.close()
    assert make_store().get("revoked:j1") == b"1"


def test_expired_rows_are_purged(
    make_store: Callable[..., SqliteStore], db: Path, clock: ManualClock
) -> None:
    store = make_store()
    for i in range(300):  # more than _PURGE_EVERY writes: the writers purge by themselves
        store.set(f"k{i}", b"1", ttl=1 if i < 200 else 100)
        if i == 199:
            clock.advance(2)

    def count() -> int:
        with sqlite3.connect(db) as raw:
            n = int(raw.execute("SELECT count(*) FROM entries").fetchone()[0])
        raw.close()
        return n

    assert count() == 100
    store.set("short", b"1", ttl=1)
    clock.advance(1)
    assert store.purge() == 1
    assert count() == 100


def test_prepare_creates_the_directory_and_a_wal_file(db: Path) -> None:
    prepare(db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


def test_an_unusable_path_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    db = tmp_path / "file" / "store.db"  # its directory is a file
    with pytest.raises(StoreUnavailable):
        prepare(db)
    store = SqliteStore(db)
    for call in (lambda: store.get("a"), lambda: store.set("a", b"1", 1), store.ping):
        with pytest.raises(StoreUnavailable):
            call()


def test_a_file_that_is_not_a_database_is_store_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    db.write_bytes(b"not a database" * 100)
    store = SqliteStore(db)
    with pytest.raises(StoreUnavailable):
        store.add("a", b"1", 1)


def test_a_held_write_lock_costs_a_writer_its_timeout_then_store_unavailable(
    make_store: Callable[..., SqliteStore], db: Path
) -> None:
    store = make_store(timeout=0.1)
    store.ping()  # the file exists
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.add("jti:p1", b"1", ttl=10)
        assert time.monotonic() - started < 1.0
        # WAL: readers are not held up by the writer.
        assert store.get("jti:p1") is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.add("jti:p1", b"1", ttl=10) is True


def test_open_store_takes_sqlite_urls(db: Path) -> None:
    store = open_store(f"sqlite://{db}")
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == db
        store.set("a", b"1", ttl=10)
        assert store.get("a") == b"1"
    finally:
        store.close()


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite://", "sqlite:///x.db?mode=ro"])
def test_other_sqlite_url_forms_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///absolute"):
        path_of(url)


def test_a_forked_process_opens_its_own_connection(make_store: Callable[..., SqliteStore]) -> None:
    store = make_store()
    store.set("before", b"1", ttl=60)  # the parent holds an open connection
    store._write_lock.acquire()  # and another of its threads is in the middle of a write
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = store.get("before") == b"1" and store.add("child", b"1", ttl=60)
            store.close()
        finally:
            os._exit(0 if ok else 1)
    store._write_lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child") == b"1"
    assert store.add("child", b"2", ttl=60) is False


RACER = """
import sys, time
from token_exchange.sources.sqlite_store import SqliteStore
store = SqliteStore(sys.argv[1], timeout=5.0)
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
won = [k for k in range(int(sys.argv[3])) if store.add(f"jti:{k}", sys.argv[4].encode(), 60)]
counted = [store.incr("counter", 60) for _ in range(int(sys.argv[3]))]
print(" ".join(map(str, won)))
"""


@pytest.mark.slow
def test_processes_racing_add_on_one_file_each_key_is_won_once(db: Path) -> None:
    prepare(db)
    keys, racers = 200, 4
    start = time.time() + 1.5  # every racer imported and waiting by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(db), str(start), str(keys), f"p{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(racers)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * racers
    wins = [int(k) for out in outputs for k in out.split()]
    assert sorted(wins) == list(range(keys))  # every key won, none twice
    store = SqliteStore(db)
    try:
        assert store.get("counter") == str(keys * racers).encode()  # no increment lost
    finally:
        store.close()


def test_expire_extends_a_live_entry_only(
    make_store: Callable[..., SqliteStore], clock: ManualClock
) -> None:
    # The store's epoch marker is extended this way (epoch.Extendable), never written anew.
    store = make_store()
    store.set("marker", b"m", ttl=10)
    clock.advance(9)
    assert store.expire("marker", 10)
    clock.advance(9)
    assert store.get("marker") == b"m"
    clock.advance(2)
    assert store.get("marker") is None
    assert not store.expire("marker", 10)
    assert store.get("marker") is None


def test_get_many_and_add_then_get(make_store: Callable[..., SqliteStore]) -> None:
    # What epoch.StoreEpoch reads the marker with: one statement, one transaction.
    store = make_store()
    store.set("a", b"1", ttl=10)
    store.incr("n", ttl=10)
    assert store.get_many(["a", "missing", "n", "a"]) == [b"1", None, b"1", b"1"]
    assert store.add_then_get("jti", b"x", 10, "a") == (True, b"1")
    assert store.add_then_get("jti", b"x", 10, "missing") == (False, None)


def test_a_replaced_file_is_reopened(
    make_store: Callable[..., SqliteStore], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process keeps no connection to a file that was deleted or replaced: it would read
    revocations no process opening the path sees (and miss theirs)."""
    monkeypatch.setattr(sqlite_store, "_FILE_CHECK", 0.0)
    old, other = make_store(), make_store()
    old.set("revoked:j1", b"1", ttl=60)
    assert old.get("revoked:j1") == b"1"
    for path in db.parent.glob("store.db*"):
        path.unlink()
    other.set("revoked:j2", b"1", ttl=60)  # opens the new file the path now names
    assert old.get("revoked:j1") is None  # what was in the deleted file is gone for all
    assert old.get("revoked:j2") == b"1"  # and both see the same file
