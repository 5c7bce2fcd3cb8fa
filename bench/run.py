#!/usr/bin/env python3
"""Benchmark POST /token under the production server, on loopback, with wrk.

    python bench/run.py                      # warm, cold, mixed x ES256, RS256 at c=16, 10 s each
    python bench/run.py --duration 30 --concurrency 8 16 32 --scenarios warm
    python bench/run.py --rss-minutes 5      # memory: RSS per worker over a 5-minute warm run
    python bench/run.py --peer --rounds 3    # warm, side by side with panva/oidc-provider
    python bench/run.py --fault permissions:16 permissions:128 jwks:16   # a dependency hangs
    python bench/run.py --scenarios warm dpop --algs ES256   # DPoP beside bearer, alternating

It starts, on free ports: a fake Auth0 tenant and permissions API (``bench/fakes.py`` under
granian), a ``redis-server`` for the shared store (``--store sqlite`` for serve's default, a
SQLite file; ``--store memory`` for one store per worker) and
``token-exchange serve``; then drives ``/token`` with wrk (``bench/exchange.lua``) and prints,
per scenario: exchanges/s, latency p50/p95/p99, errors, and the server's CPU time per exchange.

Scenarios: **warm** reuses one subject token (verified once, permission answer cached);
**cold** sends a fresh subject token of a new user each time (RS256 verification, a call to the
permissions API); **mixed** is 90 % warm, 10 % cold; **dpop** is warm with a ``DPoP`` proof
(RFC 9449) on every request, so each exchange also verifies an ES256 proof, records its ``jti``
in the store and mints a DPoP-bound token. Subject tokens are signed once and cached in
``~/.cache/token-exchange-bench``; DPoP proofs, being single-use and dated, are signed right
before each dpop run. With dpop among the scenarios, ``--rounds`` rounds (3) alternate them, and
the ratio DPoP / bearer warm is printed at the end.

``--peer`` runs warm rounds alternating ours / the peer (``../shared/peer``: oidc-provider with an
RFC 8693 grant) and prints the ratio of exchanges/s; ``--fault KIND:N`` measures warm exchanges
while N requests at a time hang on a dependency (``bench/hang.py``), and the recovery after it.
Both are described in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ISSUER = "https://bench-tenant.example.test/"
STS_AUDIENCE = "https://sts.example.test"
API = "https://countries.example.test"
SCENARIOS = {
    "warm": 1.0,
    "cold": 0.0,
    "mixed": 0.9,
    "dpop": 1.0,
    "jwt-bearer": 0.0,
    "txn": 0.0,
    "scoped": 1.0,
    "covered": 1.0,
}
#: The scoped and covered scenarios: one subject token, a resource of its own per exchange.
RESOURCE_PREFIX = f"{API}/countries/"
#: Their users: the permissions API's answers for "cover|..." cover RESOURCE_PREFIX.
SCOPED_SUB, COVERED_SUB = "auth0|scoped", "cover|bench"
#: The scenarios the peer runs too (--peer); covered is ours alone (it has no such answers).
PEER_SCENARIOS = ("warm", "cold", "scoped")
#: Targets of issue 26, side by side (--peer).
PEER_RATIO_TARGET = 1.5
#: What runs without --scenarios (dpop only when asked for: it runs in alternating rounds).
DEFAULT_SCENARIOS = ["warm", "cold", "mixed"]
#: Our token endpoint as the config's issuer states it: the ``htu`` of every DPoP proof.
TOKEN_ENDPOINT = "https://sts.example.test/token"
#: The service's default DPoP ``iat`` window (``[dpop] window``); proofs are dated when signed.
DPOP_WINDOW = 60
#: Proofs signed per second of a dpop run: more than any 2-core run has sent (a proof sent
#: twice would be refused, and counted in ``dpop_reused``).
DPOP_PROOFS_PER_SECOND = 8000
TOKEN_LIFETIME = 24 * 3600
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
#: Peer mode: our ``spa`` client is confidential, like the peer's, and both get this secret.
CLIENT_SECRET = "bench-client-secret-0123456789"
SECRET_ENV = "BENCH_CLIENT_SECRET"
#: The jwt-bearer scenario: the issuer's ID-JAGs, redeemed by the confidential client "agent".
ID_JAG_UPSTREAM = 'assertions = ["id-jag"]\nassertion_max_lifetime = 3600\n'
ID_JAG_CLIENT = f"""[[clients]]
client_id = "agent"
type = "confidential"
secret_env = "{SECRET_ENV}"
audiences = ["{API}"]
grant_types = ["urn:ietf:params:oauth:grant-type:token-exchange",
               "urn:ietf:params:oauth:grant-type:jwt-bearer"]
"""
#: The txn scenario: Txn-Tokens (draft-ietf-oauth-transaction-tokens-10) for the warm user's
#: token (with a scope), requested by the workload "orders-gateway" (private_key_jwt: one
#: single-use client assertion per request, signed before the run).
TXN_CLIENT_ID = "orders-gateway"
TRUST_DOMAIN = "trust-domain.example"
#: Fault mode: a second API whose permissions source hangs, a second issuer whose JWKS hangs.
SLOW_API = "https://slow.example.test"
SLOW_ISSUER = "https://slow-tenant.example.test/"
SLOW_TOKENS = 16
FAULT_KINDS = ("permissions", "jwks")
#: Fault mode targets (issue 11).
WARM_SHARE_TARGET = 0.80
WARM_P99_TARGET_MS = 50.0
RECOVERY_TARGET_S = 5.0
WARM_BACK_SHARE = 0.90
RECOVERY_MAX_S = 15.0


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    if args.peer and args.fault:
        parser.error("--peer and --fault are separate modes")
    if args.scenarios is None:
        args.scenarios = ["warm"] if args.peer else list(DEFAULT_SCENARIOS)
    if args.rounds is None:
        args.rounds = 3 if args.peer or "dpop" in args.scenarios else 1
    if args.algs is None:
        # The peer signs with ES256; compare like with like.
        args.algs = ["ES256"] if args.peer or args.fault else ["ES256", "RS256"]
    if args.peer and not set(args.scenarios) <= {*PEER_SCENARIOS, "covered"}:
        parser.error(f"--peer runs {', '.join(PEER_SCENARIOS)} side by side, and covered (ours)")
    faults = [_fault_spec(parser, spec) for spec in args.fault or ()]
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    if shutil.which("granian") is None and not _module_available("granian"):
        print("bench: granian is not installed (pip install '.[bench]')", file=sys.stderr)
        return 2
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    peer_dir = None
    if args.peer:
        peer_dir = _prepare_peer(Path(args.peer_dir) if args.peer_dir else None, cache)
        if peer_dir is None:
            return 2
    issuer_key = _issuer_key(cache)
    warm_token, cold_tokens = _tokens(cache, issuer_key, args.cold_tokens)

    print(_machine(), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="te-bench-") as tmp:
        work = Path(tmp)
        (work / "warm.txt").write_text(warm_token + "\n")
        (work / "cold.txt").write_text("\n".join(cold_tokens) + "\n")
        for scenario, sub in (("scoped", SCOPED_SUB), ("covered", COVERED_SUB)):
            (work / f"{scenario}.txt").write_text(_token(issuer_key, sub) + "\n")
        with _fakes(work, issuer_key) as fakes_url, _redis(args.store) as store_url:
            if peer_dir is not None:
                return _peer_mode(wrk, peer_dir, work, fakes_url, store_url, warm_token, args)
            if faults:
                slow_key = _issuer_key(cache, "slow-issuer-key.pem")
                return _fault_mode(wrk, faults, work, fakes_url, store_url, warm_token, slow_key,
                                   args)  # fmt: skip
            dpop_key = ec.generate_private_key(ec.SECP256R1())
            extra_toml = args.extra_toml
            if "dpop" in args.scenarios and args.duration + 15 > DPOP_WINDOW:
                # The last proof of a long run is older than the default window allows.
                extra_toml += f"\n[dpop]\nwindow = {args.duration + 60}\n"
            if "jwt-bearer" in args.scenarios:
                _assertions(work / "assertions.txt", issuer_key, args.cold_tokens)
            workload_key = None
            if "txn" in args.scenarios:
                workload_key = ec.generate_private_key(ec.SECP256R1())
                _txn_requests(work, issuer_key, workload_key, args.cold_tokens)
            for alg in args.algs:
                config = _config(work / alg, alg, fakes_url, store_url, extra_toml,
                                 jwt_bearer="jwt-bearer" in args.scenarios,
                                 workload_key=workload_key)  # fmt: skip
                if args.rss_minutes:
                    with _server(config, args.workers, args.server) as (url, pid):
                        _warm_up(url, warm_token)
                        rows.append(_rss_run(wrk, url, pid, work, args, alg))
                    continue
                for concurrency in args.concurrency:
                    for round_ in range(1, args.rounds + 1):
                        for scenario in args.scenarios:
                            # Every run starts cold: a new server (no verified tokens, no local
                            # answers) and an empty store, so "cold" tokens are really cold.
                            _flush(store_url)
                            if scenario in ("jwt-bearer", "txn"):
                                # ID-JAGs signed before the run: a store just emptied would
                                # refuse them for a while (epoch.py); this one is in service.
                                _in_service(store_url)
                            env = {SECRET_ENV: CLIENT_SECRET}  # the agent's (jwt-bearer)
                            with _server(config, args.workers, args.server, env) as (url, pid):
                                _warm_up(url, warm_token)
                                proofs = None
                                if scenario == "dpop":
                                    _check_dpop(url, warm_token, dpop_key)
                                    proofs = _dpop_proofs(work, dpop_key, args)
                                row = _run(wrk, url, pid, work, args, alg, scenario, concurrency,
                                           dpop=proofs)  # fmt: skip
                            rows.append({**row, "round": round_})
                            print(_row(rows[-1]), flush=True)
    print()
    print(_table(rows))
    summary = _dpop_summary(rows)
    if summary:
        print()
        print("\n".join(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (per phase)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=None,
                        help="default: all; with --peer: warm")  # fmt: skip
    parser.add_argument("--algs", nargs="+", choices=["ES256", "RS256", "PS256", "EdDSA"],
                        help="default: ES256 RS256 (--peer, --fault: ES256)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="server workers (its default)")
    parser.add_argument("--server", choices=["gunicorn", "granian"], default=None,
                        help="serving stack (default: what token-exchange serve uses)")  # fmt: skip
    parser.add_argument("--store", choices=["redis", "sqlite", "memory"], default="redis",
                        help="redis (a redis-server here), sqlite (serve's default: a file "
                        "shared by the workers) or memory (one store per worker)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cold-tokens", type=int, default=40_000)
    parser.add_argument("--rss-minutes", type=float, default=0)
    parser.add_argument("--dpop-proofs", type=int, default=None,
                        help=f"proofs signed per dpop run (default: {DPOP_PROOFS_PER_SECOND} "
                        "per second of --duration)")  # fmt: skip
    parser.add_argument("--cache", default="~/.cache/token-exchange-bench")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--extra-toml", default="", help='appended to the config, e.g. "[server]\\n..."'
    )
    peer = parser.add_argument_group("side by side with oidc-provider (--peer)")
    peer.add_argument("--peer", action="store_true", help="alternate rounds: ours / the peer")
    peer.add_argument("--peer-dir", help="the peer's sources (default: <repo>/../shared/peer)")
    peer.add_argument("--rounds", type=int, default=None,
                      help="rounds of ours + peer, or of the scenarios when dpop is one of them "
                      "(default 3; else 1)")  # fmt: skip
    fault = parser.add_argument_group("a dependency hangs (--fault)")
    fault.add_argument(
        "--fault",
        nargs="+",
        metavar="KIND:N",
        help=f"scenarios, KIND one of {', '.join(FAULT_KINDS)}; N hanging clients",
    )
    fault.add_argument(
        "--fault-warm-connections", type=int, default=4, help="connections of the warm load"
    )
    fault.add_argument(
        "--fault-retry",
        choices=["honour", "immediate"],
        default="honour",
        help="fault clients honour Retry-After (capped 2 s) or retry at once",
    )
    fault.add_argument(
        "--fault-think",
        type=float,
        default=60.0,
        help="seconds a fault client waits after a 200 (default: it keeps its token for the "
        "rest of the run, as a client caching it for its lifetime does)",
    )
    fault.add_argument(
        "--fault-timeout",
        type=float,
        default=2.0,
        help="timeout of the hanging permissions source (its config)",
    )
    fault.add_argument(
        "--fault-jwks-timeout",
        type=float,
        default=None,
        help="the service's JWKS fetch timeout (default: RemoteKeySet's)",
    )
    fault.add_argument(
        "--fault-source-toml",
        default="",
        help="extra lines for [permissions.slow], e.g. a concurrency share",
    )
    fault.add_argument(
        "--fault-upstream-toml",
        default="",
        help="extra lines for the hanging issuer's [[upstreams]]",
    )
    fault.add_argument(
        "--fault-jwks-cooldown",
        type=int,
        default=1,
        help="jwks_cooldown of the hanging issuer (its config)",
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


def _issuer_key(cache: Path, name: str = "issuer-key.pem") -> rsa.RSAPrivateKey:
    path = cache / name
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


def _token(key: rsa.RSAPrivateKey, sub: str) -> str:
    """One subject token of ``sub`` (the scoped and covered scenarios' users)."""
    now = int(time.time())
    return jwt.encode(
        {"iss": ISSUER, "sub": sub, "aud": [STS_AUDIENCE], "iat": now,
         "exp": now + TOKEN_LIFETIME, "given_name": "Bench", "email": "s@example.test"},
        key, algorithm="RS256", headers={"kid": "bench-issuer"},
    )  # fmt: skip


def _sign_id_jags(args: tuple[bytes, int, int, int]) -> str:
    pem, start, count, exp = args
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    return "\n".join(
        jwt.encode(
            {"iss": ISSUER, "sub": "auth0|bench-agent-user", "aud": STS_AUDIENCE,
             "client_id": "agent", "jti": f"bench-{now}-{i}", "iat": now, "exp": exp,
             "resource": API, "scope": "countries:read"},
            key, algorithm="RS256", headers={"kid": "bench-issuer", "typ": "oauth-id-jag+jwt"},
        )
        for i in range(start, start + count)
    )  # fmt: skip


def _assertions(path: Path, key: rsa.RSAPrivateKey, count: int) -> None:
    """``count`` ID-JAGs (draft-ietf-oauth-identity-assertion-authz-grant-04) for the client
    ``agent``, one user, each with its own jti (single use): signed anew for every bench run."""
    print(f"signing {count} ID-JAGs ...", flush=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    exp = int(time.time()) + 3000
    chunk = 2000
    jobs = [(pem, i, min(chunk, count - i), exp) for i in range(0, count, chunk)]
    with multiprocessing.Pool() as pool:
        path.write_text("\n".join(pool.map(_sign_id_jags, jobs)) + "\n")


def _txn_requests(work: Path, issuer_key: rsa.RSAPrivateKey, workload_key: Any,
                  count: int) -> None:  # fmt: skip
    """The txn scenario's subject token (the warm user's, with the scope a Txn-Token needs) in
    ``txn-subject.txt``, and ``count`` client assertions of the workload (each used once) in
    ``client-assertions.txt``."""
    now = int(time.time())
    subject = jwt.encode(
        {"iss": ISSUER, "sub": "auth0|bench-0", "aud": [STS_AUDIENCE], "iat": now,
         "exp": now + TOKEN_LIFETIME, "scope": "countries:read"},
        issuer_key, algorithm="RS256", headers={"kid": "bench-issuer"},
    )  # fmt: skip
    (work / "txn-subject.txt").write_text(subject + "\n")
    print(f"signing {count} client assertions ...", flush=True)
    pem = workload_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chunk = 2000
    jobs = [(pem, i, min(chunk, count - i), now + 3000) for i in range(0, count, chunk)]
    with multiprocessing.Pool() as pool:
        (work / "client-assertions.txt").write_text("\n".join(pool.map(_sign_client, jobs)) + "\n")


def _sign_client(args: tuple[bytes, int, int, int]) -> str:
    pem, start, count, exp = args
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    return "\n".join(
        jwt.encode(
            {"iss": TXN_CLIENT_ID, "sub": TXN_CLIENT_ID, "aud": TOKEN_ENDPOINT,
             "jti": f"bench-{now}-{i}", "iat": now, "exp": exp},
            key, algorithm="ES256", headers={"kid": "workload"},
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
def _process(args: list[str], env: dict[str, str] | None = None, log: Path | None = None,
             cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    grace = 20.0
    try:
        yield process
    except BaseException:
        grace = 3.0  # interrupted or failed: do not wait long for a graceful drain
        raise
    finally:
        _stop(process, grace)
        if log:
            out.close()  # type: ignore[union-attr]


def _started(pid: int) -> str | None:
    """The start time of ``pid`` (to tell it from a later process with the same id)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``process``, wait up to ``grace`` s, then SIGKILL it; and SIGKILL whatever of its
    descendants (workers) it left behind, by id, checking each is still the same process."""
    descendants = [(p, _started(p)) for p in _tree(process.pid)[1:]]
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 3
    for pid, started in descendants:
        while started is not None and _started(pid) == started and time.monotonic() < deadline:
            time.sleep(0.05)  # give an orphaned worker a moment to exit on its own
        if started is not None and _started(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


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
    with _fakes_process(work, key) as (url, _):
        yield url


@contextmanager
def _fakes_process(
    work: Path, key: rsa.RSAPrivateKey
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fake issuer and permissions API (bench/fakes.py under granian): its URL, and its
    process (to stop it halfway)."""
    from token_exchange.sources.keys import public_jwk

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
        yield url, process


@contextmanager
def _redis(kind: str) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
        return
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="te-bench-store-") as tmp:
            yield f"sqlite://{tmp}/store.db"
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
    if store_url.startswith("sqlite://"):  # no server is running: the file goes
        for suffix in ("", "-wal", "-shm"):
            Path(store_url.removeprefix("sqlite://") + suffix).unlink(missing_ok=True)
    if store_url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(store_url)
        try:
            client.flushall()
        finally:
            client.close()


def _in_service(store_url: str) -> None:
    """Mark the (emptied) store as one in service for a day: its epoch marker is old."""
    if store_url.startswith("memory:"):
        return
    from token_exchange.sources.epoch import EPOCH_KEY, MARKER_TTL, Epoch
    from token_exchange.sources.stores import open_store

    store = open_store(store_url)
    try:
        store.add(EPOCH_KEY, Epoch("bench", time.time() - 86400).encode(), MARKER_TTL)
    finally:
        store.close()


def _config(directory: Path, alg: str, fakes_url: str, store_url: str, extra: str = "", *,
            confidential: bool = False, hang_url: str | None = None, fault_timeout: float = 2.0,
            jwks_cooldown: int = 1, source_toml: str = "", upstream_toml: str = "",
            jwt_bearer: bool = False, workload_key: Any = None,
            permissions_url: str | None = None) -> Path:  # fmt: skip
    """The service's config. ``confidential``: the ``spa`` client authenticates with
    ``CLIENT_SECRET`` (from ``$BENCH_CLIENT_SECRET``). ``hang_url``: fault mode, with a second
    API whose permissions source and a second issuer whose JWKS are served by ``bench/hang.py``;
    ``source_toml`` / ``upstream_toml`` are extra lines for those two tables. ``jwt_bearer``: the
    issuer's ID-JAGs are redeemable by the confidential client ``agent`` (the same secret).
    ``workload_key``: this service is a Txn-Token service, and ``TXN_CLIENT_ID`` a workload
    that signs its client assertions with this key."""
    from token_exchange.sources.keys import new_key, write_key

    now = time.time()
    write_key(directory / "keys", new_key(alg, publish_at=now, activate_at=now, rsa_bits=2048))
    client = f'type = "confidential"\nsecret_env = "{SECRET_ENV}"\n' if confidential else ""
    audiences = f'"{API}"'
    fault_upstream = fault_api = fault_source = prefix = ""
    if hang_url:
        # Several upstreams need distinct subject prefixes, none a prefix of another.
        prefix = 'subject_prefix = "bench:"\n'
        audiences += f', "{SLOW_API}"'
        fault_upstream = f"""[[upstreams]]
issuer = "{SLOW_ISSUER}"
jwks_uri = "{hang_url}/slow-jwks.json"
audiences = ["{STS_AUDIENCE}"]
subject_prefix = "slow:"
jwks_cooldown = {jwks_cooldown}
{_lines(upstream_toml)}"""
        fault_api = f"""[[apis]]
audience = "{SLOW_API}"
scopes = ["slow:read"]
permissions = "slow"
"""
        fault_source = f"""[permissions.slow]
type = "http"
url = "{hang_url}/permissions"
timeout = {fault_timeout}
{_lines(source_toml)}"""
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
{prefix}{ID_JAG_UPSTREAM if jwt_bearer else ""}{fault_upstream}[[clients]]
client_id = "spa"
{client}audiences = [{audiences}]
{ID_JAG_CLIENT if jwt_bearer else ""}{_txn_toml(workload_key)}
[[apis]]
audience = "{API}"
scopes = ["countries:read", "countries:write"]
resources = ["{RESOURCE_PREFIX}"]
copy_claims = ["given_name", "email"]
permissions = "webapp"
{fault_api}[permissions.webapp]
type = "http"
url = "{permissions_url or fakes_url + "/permissions"}"
{fault_source}{_lines(extra)}
"""
    )
    return config


def _txn_toml(workload_key: Any) -> str:
    """The workload client and the ``[transaction_tokens]`` table, for ``workload_key``."""
    if workload_key is None:
        return ""
    from token_exchange.sources.keys import public_jwk

    jwk = ", ".join(f'{k} = "{v}"' for k, v in public_jwk(workload_key).items())
    return f"""[[clients]]
client_id = "{TXN_CLIENT_ID}"
type = "confidential"
token_endpoint_auth_method = "private_key_jwt"
transaction_tokens = true
jwks = {{ keys = [ {{ {jwk}, kid = "workload", use = "sig" }} ] }}
[transaction_tokens]
audience = "{TRUST_DOMAIN}"
permissions = "webapp"
"""


def _lines(toml: str) -> str:
    """TOML given on the command line, where a literal backslash-n is a new line."""
    text = toml.replace(chr(92) + "n", chr(10))
    return text + "\n" if text and not text.endswith("\n") else text


@contextmanager
def _server(config: Path, workers: int | None, server: str | None,
            env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:  # fmt: skip
    port = _free_port()
    cmd = [sys.executable, "-m", "token_exchange.serve.cli", "serve", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if workers:
        cmd += ["--workers", str(workers)]
    if server:
        cmd += ["--server", server]
    with _process(cmd, env=env, log=config.parent / "server.log") as process:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/healthz", process)
        yield url, process.pid


def _form(token: str, audience: str = API, scope: str = "countries:read",
          secret: str | None = None) -> dict[str, str]:  # fmt: skip
    form = {
        "grant_type": GRANT,
        "client_id": "spa",
        "subject_token_type": ACCESS_TOKEN,
        "subject_token": token,
        "audience": audience,
        "scope": scope,
    }
    if secret:
        form["client_secret"] = secret
    return form


def _warm_up(url: str, token: str, secret: str | None = None) -> None:
    data = _form(token, secret=secret)
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


#: What a grant's requests take one of each, instead of a cold subject token.
_COLD_FILES = {"jwt-bearer": "assertions.txt", "txn-token": "client-assertions.txt"}


def _wrk(wrk: str, url: str, work: Path, threads: int, concurrency: int, duration: float,
         warm_share: float, extra_form: str = "", timeout: int = 5,
         dpop: Path | None = None, grant: str = "",
         scenario: str = "") -> dict[str, Any]:  # fmt: skip
    """One wrk run; ``extra_form`` (already form-encoded, starting with ``&``) is appended to
    every body; ``dpop``: a file of proofs, one sent with each request. Answers slower than
    ``timeout`` are counted as timeouts, not latencies."""
    env = {
        # The scoped and covered scenarios: their user's token, a resource per request.
        "BENCH_WARM": str(
            work
            / (
                "scoped.txt"
                if scenario == "scoped"
                else "covered.txt"
                if scenario == "covered"
                else "warm.txt"
            )
        ),
        "BENCH_RESOURCE_PREFIX": RESOURCE_PREFIX if scenario in ("scoped", "covered") else "",
        # Warm runs never use a cold token: do not make every wrk thread read 40,000 of them.
        "BENCH_COLD": (str(work / _COLD_FILES.get(grant, "cold.txt")) if warm_share < 1 else ""),
        "BENCH_GRANT": grant,
        "BENCH_TXN_SUBJECT": str(work / "txn-subject.txt") if grant == "txn-token" else "",
        "BENCH_WARM_SHARE": str(warm_share),
        "BENCH_THREADS": str(threads),
        "BENCH_EXTRA_FORM": extra_form,
        "BENCH_DPOP": str(dpop) if dpop else "",
    }
    result = subprocess.run(
        [wrk, f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{int(duration)}s",
         "--timeout", f"{timeout}s",
         "-s", str(BENCH / "exchange.lua"), url],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("{"))
    return dict(json.loads(line))


def _run(wrk: str, url: str, pid: int, work: Path, args: argparse.Namespace, alg: str,
         scenario: str, concurrency: int, extra_form: str = "",
         dpop: Path | None = None) -> dict[str, Any]:  # fmt: skip
    cpu_before = _cpu_seconds(pid)
    grant = {"jwt-bearer": "jwt-bearer", "txn": "txn-token"}.get(scenario, "")
    if grant == "jwt-bearer":
        extra_form += f"&client_secret={CLIENT_SECRET}"
    stats = _wrk(wrk, url, work, args.threads, concurrency, args.duration, SCENARIOS[scenario],
                 extra_form, dpop=dpop, grant=grant, scenario=scenario)  # fmt: skip
    cpu = _cpu_seconds(pid) - cpu_before
    seconds = stats["duration_us"] / 1e6
    errors = sum(stats["errors"].values())
    if stats["cold_used"] > args.cold_tokens:
        print(f"warning: {scenario} reused cold tokens; raise --cold-tokens", file=sys.stderr)
    if stats.get("dpop_reused"):
        print(f"warning: {stats['dpop_reused']} DPoP proofs sent twice (refused as replays); "
              "raise --dpop-proofs", file=sys.stderr)  # fmt: skip
    return {
        "scenario": scenario,
        "alg": alg,
        "concurrency": concurrency,
        "rate": stats["requests"] / seconds,
        "p50_ms": stats["p50_us"] / 1000,
        "p95_ms": stats["p95_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "errors": errors,
        "non_2xx": stats["errors"]["status"],
        "cpu_us": cpu / max(1, stats["requests"]) * 1e6,
        "requests": stats["requests"],
        "dpop_reused": stats.get("dpop_reused", 0),
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


# -- DPoP (the dpop scenario) --------------------------------------------------------------------


def _dpop_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    from token_exchange.sources.keys import public_jwk

    return public_jwk(key)


def _sign_proofs(job: tuple[bytes, int]) -> str:
    """``count`` DPoP proofs (RFC 9449 §4.2) for POST to our token endpoint, each its own jti,
    all dated now."""
    pem, count = job
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = {"typ": "dpop+jwt", "jwk": _dpop_jwk(key)}
    now = int(time.time())
    return "\n".join(
        jwt.encode({"jti": os.urandom(16).hex(), "htm": "POST", "htu": TOKEN_ENDPOINT, "iat": now},
                   key, algorithm="ES256", headers=header)
        for _ in range(count)
    )  # fmt: skip


def _dpop_proofs(work: Path, key: ec.EllipticCurvePrivateKey, args: argparse.Namespace) -> Path:
    """A file of fresh proofs, enough for one dpop run (signed on every core, just before it)."""
    count = args.dpop_proofs or DPOP_PROOFS_PER_SECOND * args.duration
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chunk = 2000
    jobs = [(pem, min(chunk, count - i)) for i in range(0, count, chunk)]
    started = time.monotonic()
    with multiprocessing.Pool() as pool:
        proofs = pool.map(_sign_proofs, jobs)
    path = work / "dpop.txt"
    path.write_text("\n".join(proofs) + "\n")
    print(f"  signed {count:,} DPoP proofs in {time.monotonic() - started:.1f} s", flush=True)
    return path


def _check_dpop(url: str, token: str, key: ec.EllipticCurvePrivateKey) -> None:
    """A proof must really bind the token (token_type DPoP, cnf.jkt), or dpop measures bearer."""
    from token_exchange.oauth.jose import thumbprint

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    proof = _sign_proofs((pem, 1))
    response = requests.post(url + "/token", data=_form(token), headers={"DPoP": proof},
                             timeout=10)  # fmt: skip
    body = response.json() if "json" in response.headers.get("Content-Type", "") else {}
    claims = (
        jwt.decode(body["access_token"], options={"verify_signature": False})
        if "access_token" in body
        else {}
    )
    if body.get("token_type") != "DPoP" or claims.get("cnf") != {"jkt": thumbprint(_dpop_jwk(key))}:
        raise SystemExit(
            f"bench: a DPoP exchange did not mint a bound token: HTTP {response.status_code} "
            f"{response.text[:300]}"
        )


def _dpop_summary(rows: list[dict[str, Any]]) -> list[str]:
    """DPoP exchanges/s over bearer warm ones, per algorithm and concurrency, summed over the
    rounds (which alternate the two, so both see the same machine)."""
    lines = []
    rows = [r for r in rows if r["scenario"] in ("warm", "dpop")]  # not the rss rows
    for alg, concurrency in sorted({(r["alg"], r["concurrency"]) for r in rows}):
        same = [r for r in rows if r["alg"] == alg and r["concurrency"] == concurrency]
        warm = [r for r in same if r["scenario"] == "warm"]
        dpop = [r for r in same if r["scenario"] == "dpop"]
        if not warm or not dpop:
            continue
        ratio = sum(r["rate"] for r in dpop) / max(1e-9, sum(r["rate"] for r in warm))
        per_round = ", ".join(f"{d['rate'] / max(1e-9, w['rate']):.2f}"
                              for w, d in zip(warm, dpop, strict=False))  # fmt: skip
        cpu = _mean(dpop, "cpu_us") - _mean(warm, "cpu_us")
        lines += [
            f"warm {alg} c={concurrency}, {len(warm)} rounds: bearer "
            f"{_mean(warm, 'rate'):,.0f}/s mean (p99 {_join(warm, 'p99_ms', '.2f')} ms), DPoP "
            f"{_mean(dpop, 'rate'):,.0f}/s mean (p99 {_join(dpop, 'p99_ms', '.2f')} ms)",
            f"RATIO DPoP/bearer {alg} c={concurrency}: {ratio:.2f} (per round {per_round}); "
            f"DPoP costs {cpu:+.0f} µs of server CPU per exchange",
        ]
        dirty = [r for r in warm + dpop if r["errors"] or r["dpop_reused"]]
        lines += [
            f"FAIL: round {r['round']} {r['scenario']}: {r['errors']} errors, "
            f"{r['dpop_reused']} proofs reused: these figures do not compare equal work"
            for r in dirty
        ]
    return lines


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


# -- side by side with the peer (--peer) --------------------------------------------------------


#: The peer, and the permissions API both it and ours ask side by side.
PEER_FILES = ("package.json", "peer_op.mjs", "perms_stub.mjs")


def _prepare_peer(source: Path | None, cache: Path) -> Path | None:
    """Copy the peer (read-only where it lives) into the cache and ``npm install`` it once."""
    source = source or ROOT.parent / "shared" / "peer"
    node, npm = shutil.which("node"), shutil.which("npm")
    if not all((source / name).is_file() for name in PEER_FILES):
        print(f"bench: peer skipped: no {' / '.join(PEER_FILES)} in {source}", file=sys.stderr)
        return None
    if node is None or npm is None:
        print("bench: peer skipped: node and npm are needed (Debian/Ubuntu: apt-get install "
              "nodejs npm)", file=sys.stderr)  # fmt: skip
        return None
    target = cache / "peer"
    target.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in PEER_FILES:
        data = (source / name).read_bytes()
        if not (target / name).exists() or (target / name).read_bytes() != data:
            (target / name).unlink(missing_ok=True)
            (target / name).write_bytes(data)
            changed = changed or name == "package.json"
    if changed or not (target / "node_modules" / "oidc-provider").is_dir():
        print(f"installing the peer's packages (once; in {target}) ...", flush=True)
        try:
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"], cwd=target, capture_output=True,
                text=True, timeout=600,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            print("bench: peer skipped: npm install took longer than 10 minutes", file=sys.stderr)
            return None
        if result.returncode != 0:
            (target / "package.json").unlink(missing_ok=True)  # try again next time
            print(f"bench: peer skipped: npm install failed:\n{result.stderr[-2000:]}",
                  file=sys.stderr)  # fmt: skip
            return None
    return target


@contextmanager
def _stub(peer_dir: Path, work: Path) -> Iterator[str]:
    """``perms_stub.mjs``, the permissions API both sides ask: the warm user's answers cached
    (``ttl`` 300), the covered user's for every resource under ``RESOURCE_PREFIX``, everyone
    else's never (``ttl`` 0, ``no-store``: one question per exchange)."""
    port = _free_port()
    env = {"PORT": str(port), "CACHE_PREFIX": "auth0|bench-0", "COVER_PREFIX": "cover|",
           "COVERS": RESOURCE_PREFIX, "NODE_ENV": "production"}  # fmt: skip
    node = shutil.which("node") or "node"
    with _process([node, "perms_stub.mjs"], env=env, log=work / "stub.log", cwd=peer_dir):
        url = f"http://127.0.0.1:{port}/internal/permissions"
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.post(url, json={"subject": "x"}, timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url


@contextmanager
def _peer(peer_dir: Path, work: Path, permissions_url: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = {
        "PERMISSIONS_URL": permissions_url,
        "PORT": str(port),
        "WORKERS": "2",
        "UP_JWKS_FILE": str(work / "fakes" / "jwks.json"),
        "UP_ISS": ISSUER,
        "UP_AUD": STS_AUDIENCE,
        "CLIENT_SECRET": CLIENT_SECRET,
        "NODE_ENV": "production",
    }
    node = shutil.which("node") or "node"
    with _process([node, "peer_op.mjs"], env=env, log=work / "peer.log", cwd=peer_dir) as process:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/.well-known/openid-configuration", process)
        yield url, process.pid


def _check_peer(url: str, token: str) -> None:
    """The peer must really exchange the warm body, or the comparison means nothing."""
    response = requests.post(url + "/token", data=_form(token, secret=CLIENT_SECRET), timeout=10)
    body = response.json() if "json" in response.headers.get("Content-Type", "") else {}
    if response.status_code != 200 or "access_token" not in body:
        raise SystemExit(
            f"bench: the peer does not exchange the warm body: HTTP {response.status_code} "
            f"{response.text[:500]}"
        )
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    print(f"peer answers 200 with an access_token (aud {claims.get('aud')}, "
          f"sub {claims.get('sub')})", flush=True)  # fmt: skip


def _peer_mode(wrk: str, peer_dir: Path, work: Path, fakes_url: str, store_url: str,
               warm_token: str, args: argparse.Namespace) -> int:  # fmt: skip
    alg = args.algs[0]
    env = {SECRET_ENV: CLIENT_SECRET}
    extra = f"&client_secret={CLIENT_SECRET}"
    rows: list[dict[str, Any]] = []
    print(f"side by side: {args.rounds} rounds of {args.duration} s, wrk -t{args.threads}, "
          f"ours {alg} (fresh server each round) / oidc-provider (ES256), client_secret_post; "
          "both ask perms_stub.mjs", flush=True)  # fmt: skip
    with _stub(peer_dir, work) as stub_url, _peer(peer_dir, work, stub_url) as (peer_url, peer_pid):
        config = _config(work / alg, alg, fakes_url, store_url, args.extra_toml,
                         confidential=True, permissions_url=stub_url)  # fmt: skip
        _check_peer(peer_url, warm_token)
        # Node compiles hot code as it runs: give it one short, uncounted wrk run first.
        _wrk(wrk, peer_url, work, args.threads, args.concurrency[0], 3, 1.0, extra)
        print(_peer_header())
        for concurrency in args.concurrency:
            for round_ in range(1, args.rounds + 1):
                for scenario in args.scenarios:
                    _flush(store_url)
                    with _server(config, args.workers, args.server, env) as (url, pid):
                        _warm_up(url, warm_token, CLIENT_SECRET)
                        row = _run(wrk, url, pid, work, args, alg, scenario, concurrency, extra)
                    rows.append({**row, "target": "ours", "round": round_})
                    print(_peer_row(rows[-1]), flush=True)
                    if scenario not in PEER_SCENARIOS:
                        continue  # covered: the peer has no answers that cover a prefix
                    _warm_up(peer_url, warm_token, CLIENT_SECRET)
                    row = _run(wrk, peer_url, peer_pid, work, args, "ES256", scenario,
                               concurrency, extra)  # fmt: skip
                    rows.append({**row, "target": "peer", "round": round_})
                    print(_peer_row(rows[-1]), flush=True)
    summary = _peer_summary(rows, args)
    print()
    print(_peer_header())
    print("\n".join(_peer_row(r) for r in rows))
    print()
    print("\n".join(summary["lines"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "peer", "rows": rows,
                                               "summary": summary}, indent=2))  # fmt: skip
    return 0 if summary["clean"] else 1


def _peer_header() -> str:
    return (
        "| round | target | scenario | c | exchanges/s | p50 ms | p99 ms | non-2xx | errors "
        "| CPU µs/exchange |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )


def _peer_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['round']:>5} | {r['target']:6} | {r['scenario']:8} | {r['concurrency']:>3} | "
        f"{r['rate']:>11,.0f} | {r['p50_ms']:>6.2f} | {r['p99_ms']:>6.2f} | {r['non_2xx']:>7} | "
        f"{r['errors']:>6} | {r['cpu_us']:>8.0f} |"
    )


def _join(rows: list[dict[str, Any]], key: str, spec: str) -> str:
    return ", ".join(format(r[key], spec) for r in rows)


def _peer_summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per scenario and concurrency: the ratio of exchanges/s summed over rounds, and the CPU
    per exchange of each side; covered (ours alone) beside our warm."""
    lines: list[str] = []
    ratios: dict[str, float] = {}
    for concurrency in args.concurrency:
        for scenario in args.scenarios:
            ours = [r for r in rows if r["target"] == "ours" and r["scenario"] == scenario
                    and r["concurrency"] == concurrency]  # fmt: skip
            peer = [r for r in rows if r["target"] == "peer" and r["scenario"] == scenario
                    and r["concurrency"] == concurrency]  # fmt: skip
            if not ours:
                continue
            if not peer:
                warm = [r for r in rows if r["target"] == "ours" and r["scenario"] == "warm"
                        and r["concurrency"] == concurrency]  # fmt: skip
                share = (_mean(ours, "rate") / _mean(warm, "rate")) if warm else float("nan")
                lines.append(
                    f"{scenario} c={concurrency} (ours): {_mean(ours, 'rate'):,.0f}/s mean, "
                    f"{_mean(ours, 'cpu_us'):.0f} µs CPU/exchange, p99 "
                    f"{_join(ours, 'p99_ms', '.2f')} ms; {share:.0%} of our warm"
                )
                continue
            ratio = sum(r["rate"] for r in ours) / max(1e-9, sum(r["rate"] for r in peer))
            ratios[f"{scenario}@{concurrency}"] = ratio
            per_round = ", ".join(f"{o['rate'] / max(1e-9, p['rate']):.2f}"
                                  for o, p in zip(ours, peer, strict=False))  # fmt: skip
            met = "met" if ratio >= PEER_RATIO_TARGET else "NOT met"
            lines += [
                f"{scenario} c={concurrency}, {len(ours)} rounds: ours "
                f"{_mean(ours, 'rate'):,.0f}/s ({_mean(ours, 'cpu_us'):.0f} µs CPU, p99 "
                f"{_join(ours, 'p99_ms', '.2f')} ms), peer {_mean(peer, 'rate'):,.0f}/s "
                f"({_mean(peer, 'cpu_us'):.0f} µs CPU, p99 {_join(peer, 'p99_ms', '.2f')} ms)",
                f"RATIO ours/peer {scenario} c={concurrency}: {ratio:.2f} (per round {per_round}; "
                f"target >= {PEER_RATIO_TARGET}: {met})",
            ]
    dirty = [r for r in rows if r["errors"] or r["non_2xx"]]
    for r in dirty:
        lines.append(
            f"FAIL: round {r['round']} {r['target']} {r['scenario']}: {r['non_2xx']} non-2xx "
            f"answers, {r['errors']} errors in all: these figures do not compare equal work"
        )
    return {"ratio": ratios, "clean": not dirty, "lines": lines}


# -- a dependency hangs (--fault) ----------------------------------------------------------------


def _fault_spec(parser: argparse.ArgumentParser, spec: str) -> tuple[str, int]:
    kind, _, count = spec.partition(":")
    if kind not in FAULT_KINDS or not count.isdigit() or not 1 <= int(count) <= 1000:
        parser.error(f"--fault {spec}: expected KIND:N, KIND one of {', '.join(FAULT_KINDS)}, "
                     "N from 1 to 1000")  # fmt: skip
    return kind, int(count)


def _jwks_timeout(args: argparse.Namespace) -> float:
    """The service's JWKS fetch timeout: as given, or RemoteKeySet's default."""
    if args.fault_jwks_timeout is not None:
        return float(args.fault_jwks_timeout)
    from token_exchange.sources.jwks import RemoteKeySet

    default = inspect.signature(RemoteKeySet).parameters["timeout"].default
    return float(default) if isinstance(default, int | float) else 5.0


def _slow_issuer(work: Path, key: rsa.RSAPrivateKey) -> tuple[Path, list[str]]:
    """The second issuer's JWKS file (kid ``slow-1``) and a few subject tokens it signed."""
    from token_exchange.sources.keys import public_jwk

    jwk = {**public_jwk(key), "kid": "slow-1", "alg": "RS256", "use": "sig"}  # type: ignore[arg-type]
    path = work / "hang" / "slow-jwks.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    tokens = [
        jwt.encode(
            {"iss": SLOW_ISSUER, "sub": f"auth0|slow-{i}", "aud": [STS_AUDIENCE], "iat": now,
             "exp": now + TOKEN_LIFETIME, "given_name": "Slow", "email": f"s{i}@example.test"},
            key, algorithm="RS256", headers={"kid": "slow-1"},
        )
        for i in range(SLOW_TOKENS)
    ]  # fmt: skip
    return path, tokens


def _control(hang_url: str, what: str) -> dict[str, Any]:
    if what == "state":
        response = requests.get(f"{hang_url}/control/state", timeout=5)
    else:
        response = requests.post(f"{hang_url}/control/{what}", timeout=5)
    response.raise_for_status()
    return dict(response.json())


@contextmanager
def _hang(jwks: Path, hanging: bool) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, str(BENCH / "hang.py"), "--port", str(port), "--jwks", str(jwks)]
    with _process(cmd + (["--hang"] if hanging else []), log=jwks.parent / "hang.log") as process:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/control/state", process)
        yield url


class _FaultClients:
    """The fault clients (``bench/httpload.py fault``) as a subprocess, driven over stdin."""

    def __init__(self, url: str, bodies: Path, clients: int, args: argparse.Namespace,
                 max_seconds: float) -> None:  # fmt: skip
        self.out = bodies.with_suffix(".records.json")
        self.out.unlink(missing_ok=True)
        self.ready = threading.Event()
        self.done = threading.Event()
        self.first_200: float | None = None
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "httpload.py"), "fault", "--url", url + "/token",
             "--bodies", str(bodies), "--clients", str(clients), "--retry", args.fault_retry,
             "--think", str(args.fault_think), "--timeout", "15",
             "--max-seconds", str(max_seconds), "--out", str(self.out)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(30):
            self.close()
            raise SystemExit("bench: the fault clients did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.split()
            if words[:1] == ["ready"]:
                self.ready.set()
            elif words[:1] == ["first200"] and self.first_200 is None:
                self.first_200 = float(words[1])
            elif words[:1] == ["done"]:
                self.done.set()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> list[tuple[float, float, int | str]]:
        self.send("stop")
        self.done.wait(10)
        self.close()
        if not self.out.exists():
            raise SystemExit("bench: the fault clients wrote no records")
        return [tuple(r) for r in json.loads(self.out.read_text())["records"]]  # type: ignore[misc]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wrk_warm(wrk: str, url: str, work: Path, args: argparse.Namespace, duration: int
              ) -> dict[str, Any]:  # fmt: skip
    """The fault mode's warm load: 2xx per second and the latency of every answer up to 15 s."""
    c = args.fault_warm_connections
    stats = _wrk(wrk, url, work, args.threads, c, duration, 1.0, timeout=15)
    seconds = stats["duration_us"] / 1e6
    ok = stats["requests"] - stats["errors"]["status"]
    return {
        "rate": ok / seconds,
        "requests": stats["requests"],
        "non_2xx": stats["errors"]["status"],
        "timeouts": stats["errors"]["timeout"],
        "errors": sum(stats["errors"].values()),
        # wrk's percentiles are over answers; no answer at all means no latency to show.
        "p99_ms": stats["p99_us"] / 1000 if stats["requests"] else None,
        "max_ms": stats["max_us"] / 1000 if stats["requests"] else None,
    }


def _fault_mode(wrk: str, faults: list[tuple[str, int]], work: Path, fakes_url: str,
                store_url: str, warm_token: str, slow_key: rsa.RSAPrivateKey,
                args: argparse.Namespace) -> int:  # fmt: skip
    alg = args.algs[0]
    jwks_file, slow_tokens = _slow_issuer(work, slow_key)
    hang_dir = jwks_file.parent
    bodies = {
        "permissions": [_form(warm_token, SLOW_API, "slow:read")],
        "jwks": [_form(t) for t in slow_tokens],
    }
    for kind, forms in bodies.items():
        (hang_dir / f"{kind}.txt").write_text(
            "\n".join(requests.models.RequestEncodingMixin._encode_params(f) for f in forms)  # type: ignore[attr-defined]
            + "\n"
        )
    limits = {"permissions": args.fault_timeout + 1.0, "jwks": _jwks_timeout(args) + 1.0}
    retry = "honour Retry-After" if args.fault_retry == "honour" else "retry at once"
    print(f"fault mode: {args.duration} s per phase, warm load on {args.fault_warm_connections} "
          f"connections, fault clients {retry}; 503 limits: permissions "
          f"{limits['permissions']:g} s, jwks {limits['jwks']:g} s", flush=True)  # fmt: skip
    for kind in sorted({kind for kind, _ in faults}):
        if args.duration < limits[kind] + 1:
            print(f"warning: --duration {args.duration} is hardly longer than the {kind} limit "
                  f"({limits[kind]:g} s): few fault requests can be checked")  # fmt: skip
    results = []
    for i, (kind, count) in enumerate(faults):
        _flush(store_url)
        # The JWKS scenario needs the second issuer's keys never loaded: its endpoint hangs from
        # the start (the service's background prefetch then fails, touching no request).
        with _hang(jwks_file, hanging=kind == "jwks") as hang_url:
            config = _config(work / f"fault-{i}", alg, fakes_url, store_url, args.extra_toml,
                             hang_url=hang_url, fault_timeout=args.fault_timeout,
                             jwks_cooldown=args.fault_jwks_cooldown,
                             source_toml=args.fault_source_toml,
                             upstream_toml=args.fault_upstream_toml)  # fmt: skip
            with _server(config, args.workers, args.server) as (url, _pid):
                _warm_up(url, warm_token)
                result = _fault_run(wrk, url, hang_url, work, hang_dir / f"{kind}.txt", kind,
                                    count, limits[kind], args)  # fmt: skip
        results.append(result)
        print("\n".join(result["lines"]), flush=True)
    print()
    for r in results:
        print(r["verdict"])
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "fault", "scenarios": results}, indent=2))
    return 0 if all(r["pass"] for r in results) else 1


def _fault_run(wrk: str, url: str, hang_url: str, work: Path, bodies: Path, kind: str,
               count: int, limit: float, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    # (i) baseline: no fault.
    baseline = _wrk_warm(wrk, url, work, args, args.duration)

    # (ii) the dependency hangs, N fault clients, the same warm load.
    _control(hang_url, "hang")
    clients = _FaultClients(url, bodies, count, args, max_seconds=args.duration + 60)
    try:
        hang_at = time.monotonic()
        under = _wrk_warm(wrk, url, work, args, args.duration)

        # (iii) recovery: the fault clients keep going; the same warm load in 1 s wrk windows
        # (wrk's shortest run) until it is back and a fault client got a 200, at most 15 s.
        recover_at = time.monotonic()
        _control(hang_url, "recover")
        clients.send(f"mark {recover_at}")
        threshold = WARM_BACK_SHARE * baseline["rate"]
        windows: list[dict[str, Any]] = []
        while time.monotonic() - recover_at < RECOVERY_MAX_S:
            start = time.monotonic() - recover_at
            window = _wrk_warm(wrk, url, work, args, 1)
            windows.append({"start_s": start, "end_s": time.monotonic() - recover_at,
                            "rate": window["rate"], "p99_ms": window["p99_ms"]})  # fmt: skip
            if clients.first_200 is not None and any(w["rate"] >= threshold for w in windows):
                break
        records = clients.stop()
    finally:
        clients.close()
    warm_back = next((w["start_s"] for w in windows if w["rate"] >= threshold), None)
    return _fault_report(kind, count, limit, args, baseline, under, records, hang_at,
                         recover_at, clients.first_200, warm_back, windows)  # fmt: skip


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _fault_report(kind: str, count: int, limit: float, args: argparse.Namespace,
                  baseline: dict[str, Any], under: dict[str, Any],
                  records: list[tuple[float, float, int | str]], hang_at: float,
                  recover_at: float, first_200: float | None, warm_back: float | None,
                  windows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    hanging = [r for r in records if hang_at <= r[0] < recover_at]
    after = [r for r in records if r[0] >= recover_at]
    # A fault request answered while the dependency hung, or sent at least `limit` before it
    # recovered, must have had a 503 within `limit`. (One sent later may be answered after the
    # recovery, by the recovered dependency.)
    checked = [r for r in hanging if r[1] < recover_at or r[0] <= recover_at - limit]
    late = [r for r in checked if not (r[2] == 503 and r[1] - r[0] <= limit)]
    latencies_503 = [r[1] - r[0] for r in hanging if r[2] == 503]
    minted = sum(1 for r in hanging if r[2] == 200 and r[1] < recover_at)
    first_200_s = first_200 - recover_at if first_200 is not None else None
    share = under["rate"] / baseline["rate"] if baseline["rate"] else 0.0
    targets = {
        "warm": bool(share >= WARM_SHARE_TARGET and under["p99_ms"] is not None
                     and under["p99_ms"] <= WARM_P99_TARGET_MS and not under["timeouts"]),
        "prompt_503": bool(checked) and not late,
        "none_minted": minted == 0,
        "recovered": first_200_s is not None and first_200_s <= RECOVERY_TARGET_S
        and warm_back is not None and warm_back <= RECOVERY_TARGET_S,
    }  # fmt: skip
    max_503, p99_503 = max(latencies_503, default=None), _percentile(latencies_503, 99)
    result: dict[str, Any] = {
        "scenario": f"{kind}:{count}",
        "kind": kind,
        "clients": count,
        "retry": args.fault_retry,
        "duration_s": args.duration,
        "warm_connections": args.fault_warm_connections,
        "limit_503_s": limit,
        "baseline": baseline,
        "under_fault": {**under, "share_of_baseline": share},
        "fault_answers_while_hanging": _statuses(hanging),
        "fault_answers_after_recovery": _statuses(after),
        "fault_503_s": {"count": len(latencies_503), "max": max_503, "p99": p99_503},
        "checked_for_503": len(checked),
        "late_or_not_503": len(late),
        "late_or_not_503_statuses": _statuses(late),
        "minted_while_hanging": minted,
        "first_200_after_recovery_s": first_200_s,
        "warm_back_after_recovery_s": warm_back,
        "recovery_windows": windows,
        "targets": targets,
        "pass": all(targets.values()),
    }

    def ms(v: float | None) -> str:
        return "n/a (no answer)" if v is None else f"{v:.1f} ms"

    def sec(v: float | None, never: str = "not within 15 s") -> str:
        return never if v is None else f"{v:.2f} s"

    def ok(name: str) -> str:
        return "PASS" if targets[name] else "FAIL"

    b, u = baseline, under
    result["lines"] = [
        f"fault {kind}:{count} ({count} requests at a time hang on the "
        f"{'permissions API' if kind == 'permissions' else 'JWKS endpoint of an issuer'}; "
        f"503 limit {limit:g} s)",
        f"  baseline       warm {b['rate']:,.0f}/s, p99 {ms(b['p99_ms'])}",
        f"  under fault    warm {u['rate']:,.0f}/s ({u['requests']:,} answers) = {share:.0%} "
        f"of baseline, p99 of those answers "
        f"{ms(u['p99_ms'])}, max {ms(u['max_ms'])}; warm non-2xx {u['non_2xx']}, "
        f"timeouts (> 15 s) {u['timeouts']}",
        f"  answers to the fault requests sent while it hung: "
        f"{_fmt_statuses(_statuses(hanging)) or 'none'}",
        f"  503s: {len(latencies_503)}, max {sec(max_503, 'n/a')}, p99 {sec(p99_503, 'n/a')}; "
        f"not a 503 within {limit:g} s: {len(late)} of {len(checked)} checked "
        f"({_fmt_statuses(_statuses(late)) or 'none'})"
        + ("" if checked else " - nothing to check: raise --duration"),
        f"  tokens minted for fault requests while hanging: {minted}",
        f"  after recovery: first fault 200 after {sec(first_200_s)}, warm back to >= "
        f"{WARM_BACK_SHARE:.0%} after {sec(warm_back)} (1 s windows: "
        f"{_join(windows, 'rate', ',.0f')}/s); answers to fault requests sent "
        f"after it: {_fmt_statuses(_statuses(after)) or 'none'}",
    ]
    result["verdict"] = (
        f"{'PASS' if result['pass'] else 'FAIL'} fault {kind}:{count}: warm >= "
        f"{WARM_SHARE_TARGET:.0%} with p99 <= {WARM_P99_TARGET_MS:g} ms: {ok('warm')} "
        f"({share:.0%}, {ms(u['p99_ms'])}); every 503 within {limit:g} s: {ok('prompt_503')}; "
        f"0 minted while hanging: {ok('none_minted')} ({minted}); back within "
        f"{RECOVERY_TARGET_S:g} s: {ok('recovered')} (first 200 {sec(first_200_s)}, warm "
        f"{sec(warm_back)})"
    )
    result["lines"].append("  " + result["verdict"])
    return result


def _statuses(records: list[tuple[float, float, int | str]]) -> dict[str, int]:
    return dict(sorted(Counter(str(r[2]) for r in records).items()))


def _fmt_statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} x {n:,}" for status, n in counts.items())


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
