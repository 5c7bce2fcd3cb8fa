"""The container and the Kubernetes manifests, checked without Docker or a cluster.

Docker cannot run here, so the Dockerfile's facts are checked statically, and the command its
image runs is run from a fresh virtual environment, health-checked with the Dockerfile's own
HEALTHCHECK command. The manifests are parsed, their config is validated by the service's own
parser, and every command they run is parsed by the service's own CLI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


# -- Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            instructions.append((name.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def only(stage: list[tuple[str, str]], name: str) -> str:
    values = [value for n, value in stage if n == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in stage:
        if name == "ENV":
            env.update(dict(shlex.split(pair)[0].split("=", 1) for pair in shlex.split(value)))
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed into a new virtual environment, as the image's build stage does."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return venv


@pytest.mark.slow
def test_the_images_command_works_in_a_fresh_virtualenv(fresh_venv: Path, tmp_path: Path) -> None:
    stage = final_stage()
    env = _env(stage)
    # The config and keys the image expects to find mounted.
    keys = tmp_path / "keys"
    subprocess.run(
        [str(fresh_venv / "bin" / "token-exchange"), "keys", "generate", "--keys-dir", str(keys)],
        check=True, timeout=60,
    )  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(
        'issuer = "https://sts.example.test"\n[signing]\nkeys_dir = "keys"\n'
        '[[upstreams]]\nissuer = "https://tenant.example.test/"\n'
        'audiences = ["https://sts.example.test"]\n'
        '[[clients]]\nclient_id = "spa"\naudiences = ["https://api.example.test"]\n'
        '[[apis]]\naudience = "https://api.example.test"\nscopes = ["read"]\n'
        'permissions = "p"\n[permissions.p]\ntype = "static"\n'
    )
    port = free_port()
    command = [*json.loads(only(stage, "ENTRYPOINT")), *json.loads(only(stage, "CMD"))]
    command = [part.replace("0.0.0.0", "127.0.0.1").replace("8080", str(port)) for part in command]
    command[0] = str(fresh_venv / "bin" / command[0])
    assert env["TOKEN_EXCHANGE_CONFIG"]
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env, "TOKEN_EXCHANGE_CONFIG": str(config)},
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}", process, log)
            healthcheck = json.loads(only(stage, "HEALTHCHECK").split("CMD", 1)[1])
            healthcheck = [p.replace("8080", str(port)) for p in healthcheck]
            healthcheck[0] = str(fresh_venv / "bin" / healthcheck[0])
            assert subprocess.run(healthcheck, timeout=30).returncode == 0
        finally:
            process.terminate()
            process.wait(30)


# -- Kubernetes ---------------------------------------------------------------------------------
