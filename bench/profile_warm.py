#!/usr/bin/env python3
"""In-process micro-benchmark of POST /token: the app called as WSGI, no server, no sockets.

    python bench/profile_warm.py                        # warm: µs per exchange, best of runs
    python bench/profile_warm.py --cold                 # cold: a new subject token every time
    python bench/profile_warm.py --profile cprofile     # or pyinstrument
    python bench/profile_warm.py --compare /tmp/base    # alternate rounds: this tree vs another
    python bench/profile_warm.py --otlp --compare .     # traced at 100 % against not traced

The app is built as ``token-exchange serve`` builds it in a worker (``PROMETHEUS_MULTIPROC_DIR``
set, JSON audit lines written, to /dev/null here) from the config of ``bench/run.py``: one
upstream, the public client ``spa``, one API whose permissions come from an http source. The
fake issuer and permissions API are a bare WSGI app on a loopback thread; a warm exchange
never calls them after the first one. The body is ``bench/exchange.lua``'s.

Reports wall-clock µs per exchange (``perf_counter``) and process CPU µs (``process_time``),
best of ``--runs``: the machine is shared, so compare trees with ``--compare`` (same process
conditions, alternating rounds) rather than across separate invocations.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

ISSUER = "https://bench-tenant.example.test/"
STS_AUDIENCE = "https://sts.example.test"
API = "https://countries.example.test"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="exchanges per run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="a fresh subject token each time")
    parser.add_argument("--alg", default="ES256")
    parser.add_argument("--profile", choices=["cprofile", "pyinstrument"])
    parser.add_argument("--src", help="import token_exchange from this tree instead")
    parser.add_argument("--compare", help="alternate rounds with the tree in this directory")
    parser.add_argument("--rounds", type=int, default=4, help="rounds for --compare")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for --compare)")
    parser.add_argument(
        "--otlp",
        action="store_true",
        help="trace every request (OTLP/HTTP to a sink in another process); with --compare, "
        "this tree only",
    )
    args = parser.parse_args()
    if args.compare:
        return _compare(args)
    if args.src:
        sys.path.insert(0, os.path.abspath(args.src))
    with tempfile.TemporaryDirectory(prefix="te-profile-") as tmp:
        # As under `serve`: metrics in multi-process mode, decided when prometheus is imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tmp) / "metrics")
        (Path(tmp) / "metrics").mkdir()
        if not args.otlp:
            return _bench(args, Path(tmp))
        with _otlp_sink() as endpoint:
            # Every request sampled (the SDK's default sampler, said out loud).
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
            os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")
            # Exported, not dropped: a queue that holds a run's spans, sent every 200 ms.
            os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = "200000"
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
            return _bench(args, Path(tmp))


_SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP receiver that takes every export and keeps nothing, in a process of its
    own (its CPU is not ours)."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        yield f"http://127.0.0.1:{sink.stdout.readline().strip()}/v1/traces"
    finally:
        sink.terminate()
        sink.wait()


def _compare(args: argparse.Namespace) -> int:
    """Run this tree (or ``--src``) and ``args.compare`` alternately, each in a new process."""
    base = [sys.executable, __file__, "-n", str(args.n), "--runs", str(args.runs), "--json",
            "--alg", args.alg] + (["--cold"] if args.cold else [])  # fmt: skip
    this = [*base, "--src", args.src] if args.src else list(base)
    if args.otlp:
        this.append("--otlp")
    trees = {"this": this, "other": [*base, "--src", args.compare]}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, cmd in trees.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    for name, rows in results.items():
        wall = min(r["wall_us"] for r in rows)
        cpu = min(r["cpu_us"] for r in rows)
        print(f"{name:5} wall {wall:7.1f} µs  cpu {cpu:7.1f} µs  (best of {len(rows)} rounds)")
    this = min(r["cpu_us"] for r in results["this"])
    other = min(r["cpu_us"] for r in results["other"])
    print(f"this/other cpu: {this / other:.3f}")
    return 0


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from werkzeug.serving import make_server

    import token_exchange
    from token_exchange.config.settings import parse_settings
    from token_exchange.obs import logs
    from token_exchange.sources.keys import new_key, public_jwk, write_key
    from token_exchange.web.app import create_app

    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**public_jwk(issuer_key), "kid": "bench-issuer", "alg": "RS256", "use": "sig"}
    fakes = make_server("127.0.0.1", 0, _fakes(json.dumps({"keys": [jwk]}).encode()), threaded=True)
    threading.Thread(target=fakes.serve_forever, args=(0.05,), daemon=True).start()
    fakes_url = f"http://127.0.0.1:{fakes.port}"

    # The audit trail as `serve` writes it (logs.configure), to /dev/null.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    stderr, sys.stderr = sys.stderr, devnull
    try:
        logs.configure()
    finally:
        sys.stderr = stderr

    now = time.time()
    write_key(tmp / "keys", new_key(args.alg, publish_at=now, activate_at=now, rsa_bits=2048))
    settings = parse_settings(
        {
            "issuer": "https://sts.example.test",
            "store": {"url": "memory://"},
            "signing": {"keys_dir": "keys"},
            "upstreams": [
                {"issuer": ISSUER, "jwks_uri": f"{fakes_url}/jwks.json",
                 "audiences": [STS_AUDIENCE]}
            ],
            "clients": [{"client_id": "spa", "audiences": [API]}],
            "apis": [
                {"audience": API, "scopes": ["countries:read", "countries:write"],
                 "copy_claims": ["given_name", "email"], "permissions": "webapp"}
            ],
            "permissions": {"webapp": {"type": "http", "url": f"{fakes_url}/permissions"}},
        },
        env={},
        base_dir=tmp,
    )  # fmt: skip
    app = create_app(settings)
    gc.freeze()  # as token_exchange.serve.wsgi.application does in a worker

    def token(i: int) -> str:
        claims = {"iss": ISSUER, "sub": f"auth0|bench-{i}", "aud": [STS_AUDIENCE],
                  "iat": int(now), "exp": int(now) + 3600, "given_name": "Bench",
                  "email": f"u{i}@example.test"}  # fmt: skip
        return jwt.encode(claims, issuer_key, algorithm="RS256", headers={"kid": "bench-issuer"})

    total = args.n * args.runs + 1
    bodies = [_body(token(i)) for i in range(total)] if args.cold else [_body(token(0))]
    call = _caller(app)
    call(bodies[0])  # warms the caches (and loads the issuer's keys)
    print(f"token_exchange from {Path(token_exchange.__file__).parent}", file=sys.stderr)

    if args.profile:
        return _profile(args, call, bodies)
    walls, cpus = [], []
    k = 1
    for _ in range(args.runs):
        batch = [bodies[(k + i) % len(bodies)] for i in range(args.n)]
        k += args.n
        t0, c0 = time.perf_counter(), time.process_time()
        for body in batch:
            call(body)
        walls.append((time.perf_counter() - t0) / args.n * 1e6)
        cpus.append((time.process_time() - c0) / args.n * 1e6)
    result = {"wall_us": min(walls), "cpu_us": min(cpus)}
    if args.json:
        print(json.dumps(result))
    else:
        mode = "cold" if args.cold else "warm"
        print(f"{mode} {args.alg}: wall {min(walls):.1f} µs/exchange (runs: "
              f"{', '.join(f'{w:.0f}' for w in walls)}), cpu {min(cpus):.1f} µs")  # fmt: skip
    return 0


def _profile(args: argparse.Namespace, call: Callable[[bytes], None], bodies: list[bytes]) -> int:
    n = args.n * 2
    batch = [bodies[(1 + i) % len(bodies)] for i in range(n)]
    if args.profile == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        profiler.start()
        for body in batch:
            call(body)
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        return 0
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for body in batch:
        call(body)
    profile.disable()
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(int(os.environ.get("BENCH_PROFILE_ROWS", "35")))
    return 0


def _body(subject_token: str) -> bytes:
    """The form of bench/exchange.lua."""
    return (
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
        "&client_id=spa"
        "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
        f"&audience={quote(API, safe='')}"
        "&scope=countries%3Aread"
        f"&subject_token={subject_token}"
    ).encode()


def _caller(app: Any) -> Callable[[bytes], None]:
    """Call ``app`` with a POST /token environ like granian's; fail on any answer but 200."""
    errors = io.StringIO()
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return None

    def call(body: bytes) -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/token",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000",
            "HTTP_HOST": "127.0.0.1:8080",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": errors,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        result = app(environ, start_response)
        out = b"".join(result)
        if hasattr(result, "close"):
            result.close()
        if status.pop() != "200 OK":
            raise SystemExit(f"exchange failed: {out.decode(errors='replace')}")

    return call


def _fakes(jwks: bytes) -> Callable[..., Iterable[bytes]]:
    """The issuer's JWKS and the permissions API (the answer of bench/fakes.py)."""
    allow = json.dumps(
        {"allow": True, "scopes": ["countries:read"],
         "claims": {"custom_access_to_countries": ["nl", "de", "be"]}, "ttl": 60}
    ).encode()  # fmt: skip
    routes = {"/jwks.json": jwks, "/permissions": allow}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        body = routes.get(environ.get("PATH_INFO", ""), b"")
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("200 OK" if body else "404 Not Found", headers)
        return [body]

    return app


if __name__ == "__main__":
    sys.exit(main())
