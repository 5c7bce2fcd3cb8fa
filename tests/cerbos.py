"""A real Cerbos PDP for the AuthZEN tests: installed from npm, run on loopback ports.

The binary is the npm package ``@cerbos/cerbos-linux-x64`` installed into ``.cache/cerbos``
(git-ignored) by ``.ci/run`` or, when missing, by ``cerbos_binary()`` itself; ``CERBOS_BIN``
points at another one.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import requests

from .helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "cerbos"
PACKAGE = "@cerbos/cerbos-linux-x64"
VERSION = "0.55.0"
INSTALLED = CACHE / "node_modules" / "@cerbos" / "cerbos-linux-x64" / "cerbos-linux-x64"
POLICIES = ROOT / "examples" / "cerbos" / "policies"


def cerbos_binary() -> tuple[Path | None, str]:
    """The Cerbos binary, installing it with npm when needed; or None and why not."""
    if os.environ.get("CERBOS_BIN"):
        return Path(os.environ["CERBOS_BIN"]), ""
    if INSTALLED.exists():
        return INSTALLED, ""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"{PACKAGE} is a linux-x64 binary (set CERBOS_BIN to another build)"
    npm = shutil.which("npm")
    if npm is None:
        return None, f"npm is not installed, so {PACKAGE} cannot be (set CERBOS_BIN)"
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE),
         f"{PACKAGE}@{VERSION}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not INSTALLED.exists():
        return None, f"npm install {PACKAGE}@{VERSION} failed: {done.stderr.strip()[-300:]}"
    return INSTALLED, ""


class CerbosProcess:
    """``cerbos server`` with the example policies, on free 127.0.0.1 ports."""

    def __init__(self, binary: Path, workdir: Path, policies: Path = POLICIES) -> None:
        self.binary = binary
        self.workdir = workdir
        self.policies = policies
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "cerbos.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port, grpc_port = free_port(), free_port()
        config = self.workdir / "cerbos.yaml"
        config.write_text(
            "server:\n"
            f'  httpListenAddr: "127.0.0.1:{self.port}"\n'
            f'  grpcListenAddr: "127.0.0.1:{grpc_port}"\n'
            "storage:\n"
            "  driver: disk\n"
            "  disk:\n"
            f'    directory: "{self.policies}"\n'
            "    watchForChanges: false\n"
        )
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.binary), "server", f"--config={config}"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cerbos exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/_cerbos/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("cerbos did not become healthy within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def calls(self, method: str = "AccessEvaluationBatch") -> int:
        """How many AuthZEN calls of ``method`` Cerbos has answered (counted in its own log)."""
        # Cerbos writes one "Handled request" line with a grpc.code per answered call.
        needle = f'"grpc.method":"{method}"'
        time.sleep(0.05)  # its log line is written right after the answer
        return sum(
            1
            for line in self.log_path.read_text(errors="replace").splitlines()
            if needle in line and '"grpc.code"' in line
        )
