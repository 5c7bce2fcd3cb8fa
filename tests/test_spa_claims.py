"""The example SPA shows a minted token's ``exp``/``iat`` as dates and times, not only as numbers
(``examples/spa/claims.js``, imported by ``app.js``, run here under Node), and ``dev`` serves
that module. Skipped, saying why, only when Node is not installed (the browser tests in
``tests/test_browser.py`` see it on the page when Chromium is there).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from .devworld import DevWorld

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SPA = ROOT / "examples" / "spa"
NODE = shutil.which("node")
NOW = 1_800_000_000  # 2027-01-15 08:00:00 UTC
# Prints describeClaims(claims) as the page would, in a fixed locale and zone, at NOW.
SCRIPT = """
import { describeClaims } from "./examples/spa/claims.js";
const [claims, now] = JSON.parse(process.argv[1]);
const options = { now: now * 1000, locale: "en-GB", timeZone: "Europe/Amsterdam" };
console.log(describeClaims(claims, options));
"""


def _describe(claims: dict[str, object]) -> str:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", SCRIPT, json.dumps([claims, NOW])],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.rstrip("\n")


@pytest.mark.skipif(NODE is None, reason="no Node.js: install Debian's nodejs (.ci/run does)")
def test_times_are_shown_as_dates() -> None:
    claims = {
        "iss": "http://127.0.0.1:8080",
        "exp": NOW + 300,
        "iat": NOW - 20,
        "nbf": NOW - 7200,
        "act": {"sub": "service|batch", "iat": NOW},  # nested: left as it is
        "custom_access_to_countries": ["nl"],
    }
    text = _describe(claims)
    lines = text.splitlines()
    # 08:05:00 UTC is 09:05:00 in Amsterdam in January (CET).
    assert f'  "exp": {NOW + 300},  // 15 Jan 2027, 09:05:00 (in 5 minutes)' in lines
    assert f'  "iat": {NOW - 20},  // 15 Jan 2027, 08:59:40 (20 seconds ago)' in lines
    assert f'  "nbf": {NOW - 7200},  // 15 Jan 2027, 07:00:00 (2 hours ago)' in lines
    assert f'    "iat": {NOW}' in lines
    # Without the annotations, it is the claims' JSON, as before.
    assert json.loads(re.sub(r"  // .*", "", text)) == claims


@pytest.mark.skipif(NODE is None, reason="no Node.js: install Debian's nodejs (.ci/run does)")
def test_other_numbers_are_left_alone() -> None:
    claims = {"exp": "soon", "iat": 10**20, "count": NOW}
    assert _describe(claims) == json.dumps(claims, indent=2)


def test_dev_serves_the_module_the_page_imports(dev_world: DevWorld) -> None:
    page = requests.get(f"{dev_world.sts_url}/spa/app.js", timeout=5)
    assert 'import { describeClaims } from "./claims.js";' in page.text
    module = requests.get(f"{dev_world.sts_url}/spa/claims.js", timeout=5)
    assert module.status_code == 200
    assert module.headers["Content-Type"].startswith("text/javascript")
    assert module.content == (SPA / "claims.js").read_bytes()
