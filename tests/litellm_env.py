"""LiteLLM for the agent-client test: its own virtual environment in ``.cache/litellm``
(git-ignored; ~400 MB, kept apart from ours), made by ``.ci/run`` or, when missing, by
``litellm_python()`` itself; ``LITELLM_PYTHON`` points at another interpreter that has it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "litellm"
#: The published version tested (its MCP ``oauth2_token_exchange`` mode), and what its
#: gateway modules import beyond the base package.
REQUIREMENTS = ("litellm==1.110.2", "expression", "PyJWT")


def litellm_python() -> tuple[Path | None, str]:
    """A Python that can import LiteLLM's gateway, installing it when needed; or None and why."""
    if os.environ.get("LITELLM_PYTHON"):
        return Path(os.environ["LITELLM_PYTHON"]), ""
    python = VENV / "bin" / "python"
    if not _usable(python):
        done = subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
        if done.returncode != 0 or not _usable(python):
            return None, f"could not install {' '.join(REQUIREMENTS)}: {done.stderr[-300:]}"
    return python, ""


def _usable(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import litellm.proxy.mcp_server.outbound_credentials"],
        capture_output=True, timeout=120, check=False,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )  # fmt: skip
    return probe.returncode == 0
