"""Operational rules without a server: default worker counts from the cgroup CPU limit, the request
id pattern."""

from __future__ import annotations

from pathlib import Path


def test_request_id_pattern_is_anchored_at_the_very_end() -> None:
    from token_exchange.web.headers import valid_request_id

    assert valid_request_id("abc-123")
    assert not valid_request_id("abc\n")


def test_default_workers_follow_the_cgroup_cpu_limit(tmp_path: Path) -> None:
    from token_exchange.serve.cli import default_workers

    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # 1.5 CPUs
    assert default_workers(cpu_max=limit, available=64) == 2
    limit.write_text("max 100000\n")
    assert default_workers(cpu_max=limit, available=3) == 3
    assert default_workers(cpu_max=tmp_path / "absent", available=1) == 1
