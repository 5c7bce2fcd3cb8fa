#!/usr/bin/env python3
"""The serving floor: what granian and Flask cost per request under bench/run.py's load, with
no exchange in it. Issue 26 asks for a warm exchange in <= 300 µs of CPU; this says how much of
that the serving stack takes before the service does anything.

    python bench/floor.py                  # bare WSGI and Flask under granian, 3 rounds of 8 s
    python bench/floor.py --rounds 5 --duration 10

Each app (``bench/floor_apps.py``) runs under granian as ``token-exchange serve`` runs the
service: WSGI, one worker per CPU, the same blocking threads (``serving_threads`` of the bench
config: 124), runtime mode ``st``; wrk sends ``bench/exchange.lua``'s warm bodies at c=16. CPU
is the server's own (all its processes, from ``/proc``) per request, as in ``bench/run.py``.
Also printed: the Flask app's CPU per request in process (no server, no sockets), for the
factor between the two.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import _cpu_seconds, _free_port, _issuer_key, _process, _tokens, _wrk

APPS = ("bare", "flask")
#: What serve gives the bench config (`token-exchange serve` prints it; bench/README.md).
THREADS = 124


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    parser.add_argument(
        "--threads", type=int, default=THREADS, help=f"granian blocking threads (default {THREADS})"
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    from token_exchange.serve.cli import default_workers

    workers = args.workers or default_workers()
    cache = Path.home() / ".cache" / "token-exchange-bench"
    cache.mkdir(parents=True, exist_ok=True)
    warm, _ = _tokens(cache, _issuer_key(cache), 40_000)
    rows: dict[str, list[float]] = {app: [] for app in APPS}
    with tempfile.TemporaryDirectory(prefix="te-floor-") as tmp:
        work = Path(tmp)
        (work / "warm.txt").write_text(warm + "\n")
        for _ in range(args.rounds):
            for app in APPS:
                rows[app].append(
                    _serve_and_measure(wrk, work, app, workers, args.threads, args.duration)
                )
    in_process = _flask_in_process(warm)
    print(
        f"granian, {workers} workers, {args.threads} blocking threads, c=16, {args.rounds} rounds:"
    )
    for app in APPS:
        figures = ", ".join(f"{cpu:.0f}" for cpu in rows[app])
        print(f"  {app:6} CPU µs per request: {min(rows[app]):.0f} (rounds: {figures})")
    print(f"  flask in process: {in_process:.0f} µs per request")
    return 0


def _serve_and_measure(
    wrk: str, work: Path, app: str, workers: int, threads: int, duration: int
) -> float:
    port = _free_port()
    command = [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", str(workers),
               "--blocking-threads", str(threads), "--runtime-mode", "st", "--no-ws",
               "--host", "127.0.0.1", "--port", str(port), f"bench.floor_apps:{app}"]  # fmt: skip
    with _process(command, log=work / f"{app}.log") as server:
        url = f"http://127.0.0.1:{port}/token"
        _ready(url)
        before = _cpu_seconds(server.pid)
        stats = _wrk(wrk, url, work, 2, 16, duration, 1.0)
        cpu = _cpu_seconds(server.pid) - before
    return cpu / max(1, stats["requests"]) * 1e6


def _ready(url: str) -> None:
    import requests

    deadline = time.monotonic() + 20
    while True:
        try:
            requests.post(url, data="x", timeout=1)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return


def _flask_in_process(warm: str, n: int = 20_000) -> float:
    from bench.floor_apps import flask

    grant = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
    body = f"grant_type={grant}&subject_token={warm}".encode()

    def call() -> None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/token", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
        }  # fmt: skip
        flask(environ, lambda *_: None)

    for _ in range(2000):
        call()
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n * 1e6


if __name__ == "__main__":
    sys.exit(main())
