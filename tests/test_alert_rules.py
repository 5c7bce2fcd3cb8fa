"""The alerting rules in deploy/prometheus, checked and unit-tested by Prometheus's own promtool
(Debian's prometheus package; .ci/run installs it): each alert fires on the series it is meant
for, with its labels and annotations, and stays quiet otherwise."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .unit.test_dashboard_queries import RULES

pytestmark = pytest.mark.slow

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt install prometheus)")
@pytest.mark.parametrize(
    "command",
    [["check", "rules", RULES.name], ["test", "rules", RULES.with_suffix(".test.yml").name]],
)
def test_promtool_accepts_the_rules_and_their_tests(command: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *command], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
