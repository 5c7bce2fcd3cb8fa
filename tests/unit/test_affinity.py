"""Which CPU a worker claims (``affinity``): pure logic on a directory of claims."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from token_exchange.serve import affinity
from token_exchange.serve.affinity import (
    ENV_CLAIMS,
    claim_cpu,
    claims_directory,
    pin_this_worker,
    should_pin,
)


def test_workers_are_pinned_only_when_there_is_one_per_cpu() -> None:
    assert should_pin("auto", 2, [0, 1])
    assert should_pin("auto", 4, [2, 3, 6, 7])  # a cpuset
    assert not should_pin("off", 2, [0, 1])
    assert not should_pin("auto", 2, list(range(64)))  # a quota on a shared host
    assert not should_pin("auto", 3, [0, 1])
    assert not should_pin("auto", 1, [0])  # nothing to choose


def test_each_worker_claims_a_cpu_of_its_own(tmp_path: Path) -> None:
    live = {101, 102}
    alive = live.__contains__
    assert claim_cpu(tmp_path, [2, 3], 101, alive=alive) == 2
    assert claim_cpu(tmp_path, [2, 3], 102, alive=alive) == 3
    assert claim_cpu(tmp_path, [2, 3], 103, alive=alive) is None  # more workers than CPUs
    assert claim_cpu(tmp_path, [2, 3], 101, alive=alive) == 2  # its own claim, again


def test_a_respawned_worker_takes_the_cpu_of_the_one_that_died(tmp_path: Path) -> None:
    live = {101, 102}
    assert claim_cpu(tmp_path, [0, 1], 101, alive=live.__contains__) == 0
    assert claim_cpu(tmp_path, [0, 1], 102, alive=live.__contains__) == 1
    live.discard(101)
    live.add(201)
    assert claim_cpu(tmp_path, [0, 1], 201, alive=live.__contains__) == 0
    assert (tmp_path / "cpu-0").read_text() == "201"


def test_a_damaged_claim_is_no_claim(tmp_path: Path) -> None:
    (tmp_path / "cpu-0").write_text("not a pid")
    assert claim_cpu(tmp_path, [0, 1], 7, alive=lambda pid: True) == 0


def test_free_threaded_workers_are_threads_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert not should_pin("auto", 2, [0, 1])


def test_without_a_directory_for_the_claims_workers_run_unpinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    with claims_directory(True):
        assert ENV_CLAIMS not in os.environ
    assert "workers not pinned to CPUs" in capsys.readouterr().err
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with claims_directory(True):
        made = Path(os.environ[ENV_CLAIMS])
        assert made.is_dir()
    assert not made.exists()
    assert ENV_CLAIMS not in os.environ


def test_a_worker_started_before_the_one_it_replaces_stops_takes_its_cpu_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload starts the new workers first: every CPU is held, until the old ones stop.
    pinned: list[tuple[int, set[int]]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda tid, cpus: pinned.append((tid, cpus)))
    monkeypatch.setattr(affinity, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(affinity, "RETRY_INTERVAL", 0.01)
    monkeypatch.setenv(ENV_CLAIMS, str(tmp_path))
    old = os.getppid()  # a live process, standing for the old worker
    for cpu in (0, 1):
        (tmp_path / f"cpu-{cpu}").write_text(str(old))
    assert pin_this_worker(retry_seconds=10) is None
    time.sleep(0.05)
    assert pinned == []
    (tmp_path / "cpu-1").unlink()  # that old worker stopped
    deadline = time.monotonic() + 5
    while not pinned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pinned
    assert all(cpus == {1} for _, cpus in pinned)
    assert (tmp_path / "cpu-1").read_text() == str(os.getpid())
