"""Multi-process metrics: what a scrape adds up across workers (metrics.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from token_exchange.obs.metrics import forget_dead_workers

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

_WORKER = """
from token_exchange.obs.metrics import Metrics
m = Metrics()
m.in_flight.inc(5)
m.dependency_breaker_state.labels("permissions:webapp").set(2)
"""


def test_a_dead_workers_live_gauges_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _WORKER], env=env, check=True)  # a worker that died
    assert list(tmp_path.glob("gauge_live*.db"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    forget_dead_workers()
    assert not list(tmp_path.glob("gauge_live*.db"))
