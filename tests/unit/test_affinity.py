"""Which CPU a worker claims (``affinity``): pure logic on a directory of claims."""

from __future__ import annotations

from pathlib import Path

from token_exchange.affinity import claim_cpu, should_pin


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
