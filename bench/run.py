#!/usr/bin/env python3
"""Benchmark POST /token under the production server, on loopback, with wrk.

    python bench/run.py                      # warm, cold, mixed x ES256, RS256 at c=16, 10 s each
    python bench/run.py --duration 30 --concurrency 8 16 32 --scenarios warm
    python bench/run.py --rss-minutes 5      # memory: RSS per worker over a 5-minute warm run

It starts, on free ports: a fake Auth0 tenant and permissions API (``bench/fakes.py`` under
granian), a ``redis-server`` for the shared store (``--store memory`` to skip it) and
``token-exchange serve``; then drives ``/token`` with wrk (``bench/exchange.lua``) and prints,
per scenario: exchanges/s, latency p50/p95/p99, errors, and the server's CPU time per exchange.

Scenarios: **warm** reuses one subject token (verified once, permission answer cached);
**cold** sends a fresh subject token of a new user each time (RS256 verification, a call to the
permissions API); **mixed** is 90 % warm, 10 % cold. Subject tokens are signed once and cached in
``~/.cache/token-exchange-bench``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ISSUER = "https://bench-tenant.example.test/"
STS_AUDIENCE = "https://sts.example.test"
API = "https://countries.example.test"
SCENARIOS = {"warm": 1.0, "cold": 0.0, "mixed": 0.9}
TOKEN_LIFETIME = 24 * 3600


def main() -> int:
    args = _parser().parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    if shutil.which("granian") is None and not _module_available("granian"):
        print("bench: granian is not installed (pip install '.[bench]')", file=sys.stderr)
        return 2
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    issuer_key = _issuer_key(cache)
    warm_token, cold_tokens = _tokens(cache, issuer_key, args.cold_tokens)

    print(_machine(), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="te-bench-") as tmp:
        work = Path(tmp)
        (work / "warm.txt").write_text(warm_token + "\n")
        (work / "cold.txt").write_text("\n".join(cold_tokens) + "\n")
        with _fakes(work, issuer_key) as fakes_url, _redis(args.store) as store_url:
            for alg in args.algs:
                config = _config(work / alg, alg, fakes_url, store_url, args.extra_toml)
                if args.rss_minutes:
                    with _server(config, args.workers, args.server) as (url, pid):
                        _warm_up(url, warm_token)
                        rows.append(_rss_run(wrk, url, pid, work, args, alg))
                    continue
                for scenario in args.scenarios:
                    for concurrency in args.concurrency:
                        # Every run starts cold: a new server (no verified tokens, no local
                        # answers) and an empty store, so "cold" tokens are really cold.
                        _flush(store_url)
                        with _server(config, args.workers, args.server) as (url, pid):
                            _warm_up(url, warm_token)
                            rows.append(_run(wrk, url, pid, work, args, alg, scenario, concurrency))
                        print(_row(rows[-1]), flush=True)
    print()
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--algs", nargs="+", choices=["ES256", "RS256", "PS256", "EdDSA"],
                        default=["ES256", "RS256"])  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="server workers (its default)")
    parser.add_argument("--server", choices=["gunicorn", "granian"], default=None,
                        help="serving stack (default: what token-exchange serve uses)")  # fmt: skip
    parser.add_argument("--store", choices=["redis", "memory"], default="redis")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cold-tokens", type=int, default=40_000)
    parser.add_argument("--rss-minutes", type=float, default=0)
    parser.add_argument("--cache", default="~/.cache/token-exchange-bench")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--extra-toml", default="", help='appended to the config, e.g. "[server]\\n..."'
    )
    return parser


# -- set-up -------------------------------------------------------------------------------------


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _issuer_key(cache: Path) -> rsa.RSAPrivateKey:
    path = cache / "issuer-key.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _sign(args: tuple[bytes, int, int, int]) -> str:
    pem, start, count, exp = args
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    return "\n".join(
        jwt.encode(
            {"iss": ISSUER, "sub": f"auth0|bench-{i}", "aud": [STS_AUDIENCE], "iat": now,
             "exp": exp, "given_name": "Bench", "email": f"u{i}@example.test"},
            key, algorithm="RS256", headers={"kid": "bench-issuer"},
        )
        for i in range(start, start + count)
    )  # fmt: skip


def _tokens(cache: Path, key: rsa.RSAPrivateKey, count: int) -> tuple[str, list[str]]:
    """One warm token and ``count`` cold ones (distinct users), signed once and cached."""
    path = cache / f"tokens-{count}.txt"
    if path.exists() and time.time() - path.stat().st_mtime < TOKEN_LIFETIME - 3600:
        lines = path.read_text().split("\n")
        return lines[0], lines[1:]
    print(f"signing {count + 1} subject tokens (once; cached in {cache}) ...", flush=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    exp = int(time.time()) + TOKEN_LIFETIME
    chunk = 2000
    jobs = [(pem, i, min(chunk, count + 1 - i), exp) for i in range(0, count + 1, chunk)]
    with multiprocessing.Pool() as pool:
        lines = "\n".join(pool.map(_sign, jobs)).split("\n")
    path.write_text("\n".join(lines))
    return lines[0], lines[1:]


@contextmanager
def _process(args: list[str], env: dict[str, str] | None = None, log: Path | None = None
             ) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {process.args} exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
        except requests.ConnectionError:
            time.sleep(0.1)
        else:
            return
    raise SystemExit(f"bench: {url} did not answer")


@contextmanager
def _fakes(work: Path, key: rsa.RSAPrivateKey) -> Iterator[str]:
    from token_exchange.keys import public_jwk

    fakes = work / "fakes"
    fakes.mkdir()
    jwk = {**public_jwk(key), "kid": "bench-issuer", "alg": "RS256", "use": "sig"}  # type: ignore[arg-type]
    (fakes / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (fakes / "issuer.txt").write_text(ISSUER)
    port = _free_port()
    with _process(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning",
         "bench.fakes:app"],
        env={"BENCH_FAKES_DIR": str(fakes)},
    ) as process:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/jwks.json", process)
        yield url


@contextmanager
def _redis(kind: str) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
        return
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench: redis-server is not installed (or pass --store memory)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp, _process(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", tmp]
    ):  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def _flush(store_url: str) -> None:
    if store_url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(store_url)
        try:
            client.flushall()
        finally:
            client.close()


def _config(directory: Path, alg: str, fakes_url: str, store_url: str, extra: str = "") -> Path:
    from token_exchange.keys import new_key, write_key

    now = time.time()
    write_key(directory / "keys", new_key(alg, publish_at=now, activate_at=now, rsa_bits=2048))
    config = directory / "config.toml"
    config.write_text(
        f"""
issuer = "https://sts.example.test"
[store]
url = "{store_url}"
[signing]
keys_dir = "keys"
[[upstreams]]
issuer = "{ISSUER}"
jwks_uri = "{fakes_url}/jwks.json"
audiences = ["{STS_AUDIENCE}"]
[[clients]]
client_id = "spa"
audiences = ["{API}"]
[[apis]]
audience = "{API}"
scopes = ["countries:read", "countries:write"]
copy_claims = ["given_name", "email"]
permissions = "webapp"
[permissions.webapp]
type = "http"
url = "{fakes_url}/permissions"
{extra.replace(chr(92) + "n", chr(10))}
"""
    )
    return config


@contextmanager
def _server(config: Path, workers: int | None, server: str | None) -> Iterator[tuple[str, int]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "token_exchange.cli", "serve", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if workers:
        cmd += ["--workers", str(workers)]
    if server:
        cmd += ["--server", server]
    with _process(cmd, log=config.parent / "server.log") as process:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/healthz", process)
        yield url, process.pid


def _warm_up(url: str, token: str) -> None:
    data = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": "spa",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": token,
        "audience": API,
        "scope": "countries:read",
    }
    with requests.Session() as session:
        for _ in range(200):
            response = session.post(url + "/token", data=data, timeout=5)
            if response.status_code != 200:
                raise SystemExit(f"bench: warm-up exchange failed: {response.text}")


# -- measuring ------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    result, todo = [], [pid]
    while todo:
        current = todo.pop()
        result.append(current)
        todo.extend(children.get(current, []))
    return result


def _cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _rss_mib(pid: int) -> list[float]:
    """RSS of each worker (the descendants of the server process)."""
    values = []
    for p in _tree(pid)[1:]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    values.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return values


def _wrk(wrk: str, url: str, work: Path, threads: int, concurrency: int, duration: float,
         warm_share: float) -> dict[str, Any]:  # fmt: skip
    env = {
        "BENCH_WARM": str(work / "warm.txt"),
        "BENCH_COLD": str(work / "cold.txt"),
        "BENCH_WARM_SHARE": str(warm_share),
        "BENCH_THREADS": str(threads),
    }
    result = subprocess.run(
        [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s",
         "-s", str(BENCH / "exchange.lua"), url],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("{"))
    return dict(json.loads(line))


def _run(wrk: str, url: str, pid: int, work: Path, args: argparse.Namespace, alg: str,
         scenario: str, concurrency: int) -> dict[str, Any]:  # fmt: skip
    cpu_before = _cpu_seconds(pid)
    stats = _wrk(wrk, url, work, args.threads, concurrency, args.duration, SCENARIOS[scenario])
    cpu = _cpu_seconds(pid) - cpu_before
    seconds = stats["duration_us"] / 1e6
    errors = sum(stats["errors"].values())
    if stats["cold_used"] > args.cold_tokens:
        print(f"warning: {scenario} reused cold tokens; raise --cold-tokens", file=sys.stderr)
    return {
        "scenario": scenario,
        "alg": alg,
        "concurrency": concurrency,
        "rate": stats["requests"] / seconds,
        "p50_ms": stats["p50_us"] / 1000,
        "p95_ms": stats["p95_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "errors": errors,
        "cpu_us": cpu / max(1, stats["requests"]) * 1e6,
        "requests": stats["requests"],
    }


def _rss_run(wrk: str, url: str, pid: int, work: Path, args: argparse.Namespace, alg: str
             ) -> dict[str, Any]:  # fmt: skip
    """Warm load for ``--rss-minutes``, sampling each worker's RSS every 10 s."""
    total = args.rss_minutes * 60
    samples = [_rss_mib(pid)]
    started = time.monotonic()
    requests_done = 0
    while time.monotonic() - started < total:
        stats = _wrk(wrk, url, work, args.threads, args.concurrency[0], 10, 1.0)
        requests_done += stats["requests"]
        samples.append(_rss_mib(pid))
        print(f"  {time.monotonic() - started:5.0f} s  RSS per worker (MiB): "
              f"{', '.join(f'{v:.1f}' for v in samples[-1])}", flush=True)  # fmt: skip
    first, last = samples[1], samples[-1]  # after the first 10 s: caches and pools are warm
    growth = max((b - a) / a * 100 for a, b in zip(first, last, strict=False))
    return {"scenario": "rss", "alg": alg, "minutes": args.rss_minutes, "requests": requests_done,
            "rss_first_mib": first, "rss_last_mib": last, "max_growth_pct": growth}  # fmt: skip


# -- output -------------------------------------------------------------------------------------


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return (
        f"machine: {os.cpu_count()} cores, {model}; Python {platform.python_version()}; "
        f"{wrk_version.splitlines()[0] if wrk_version else 'wrk'}; load generator on the same cores"
    )


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['scenario']:5} | {r['alg']:5} | {r['concurrency']:>3} | {r['rate']:>9,.0f} | "
        f"{r['p50_ms']:>6.2f} | {r['p95_ms']:>6.2f} | {r['p99_ms']:>6.2f} | {r['errors']:>6} | "
        f"{r['cpu_us']:>8.0f} |"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    timed = [r for r in rows if r["scenario"] != "rss"]
    if timed:
        lines += [
            "| scenario | alg | c | exchanges/s | p50 ms | p95 ms | p99 ms | errors "
            "| CPU µs/exchange |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *(_row(r) for r in timed),
        ]
    for r in rows:
        if r["scenario"] == "rss":
            lines.append(
                f"RSS {r['alg']} over {r['minutes']:g} min warm ({r['requests']:,} exchanges): "
                f"first {', '.join(f'{v:.1f}' for v in r['rss_first_mib'])} MiB, last "
                f"{', '.join(f'{v:.1f}' for v in r['rss_last_mib'])} MiB, "
                f"largest growth {r['max_growth_pct']:+.1f} %"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
