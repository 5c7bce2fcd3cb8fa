#!/usr/bin/env python3
"""In-process CPU per exchange of POST /token (Flask's test client, no server in front), with
the permissions API a real HTTP server in another process (``bench/fakes.py`` under granian,
on loopback), for one warm subject token and three kinds of exchange:

* ``warm``: the same resource every time: the answer is cached after the first;
* ``scoped``: a new resource every time: one permissions question per exchange;
* ``covered``: a new resource every time, and the answer covers them all
  (``resource_prefixes``): served from the cache after the first question.

    python bench/profile_scoped.py             # µs of process CPU per exchange, each
    python bench/profile_scoped.py --profile   # and cProfile of the scoped exchanges

``scoped`` minus ``warm`` is what one permissions question costs us. Run from the repository
root (it borrows the test suite's fakes); the store is in-process memory.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes import COUNTRIES as API
from tests.fakes import ENV, TokenMaker, base_config, make_signing_key
from token_exchange.config.settings import parse_settings
from token_exchange.sources.store import MemoryStore
from token_exchange.web.app import Overrides, create_app

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="exchanges per kind")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    issuer = TokenMaker(
        "https://tenant.example.test/",
        [rsa.generate_private_key(public_exponent=65537, key_size=2048)],
    )
    tmp = Path(tempfile.mkdtemp(prefix="te-profile-scoped-"))
    (tmp / "issuer.txt").write_text(issuer.issuer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fakes = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning",
         "bench.fakes:app"],
        env={"BENCH_FAKES_DIR": str(tmp), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(f"{base}/jwks.json", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for kind, path in (("warm", "/permissions"), ("scoped", "/permissions"),
                           ("covered", "/permissions/countries")):  # fmt: skip
            run(kind, f"{base}{path}", issuer, tmp / kind, args)
    finally:
        fakes.terminate()
        fakes.wait(10)
    return 0


def run(kind: str, permissions_url: str, issuer: TokenMaker, tmp: Path, args: Any) -> None:
    make_signing_key(tmp / "keys")
    config = copy.deepcopy(base_config(issuer.issuer, permissions_url))
    config["store"] = {"url": "memory://"}
    settings = parse_settings(config, env=ENV, base_dir=tmp)
    overrides = Overrides(key_sources={issuer.issuer: issuer.key_source()}, store=MemoryStore())
    client = create_app(settings, overrides=overrides).test_client()
    subject = issuer.token(scope="countries:read")
    form = {"grant_type": EXCHANGE, "subject_token": subject, "scope": "countries:read",
            "subject_token_type": ACCESS_TOKEN, "client_id": "spa"}  # fmt: skip

    def resource(i: int) -> str:
        return f"{API}/countries/{'nl' if kind == 'warm' else i}"

    first = client.post("/token", data={**form, "resource": resource(-1)})
    assert first.status_code == 200, first.text
    forms = [{**form, "resource": resource(i)} for i in range(args.n)]
    started = time.process_time()
    for data in forms:
        response = client.post("/token", data=data)
    assert response.status_code == 200, response.text
    claims = json.loads(response.text)
    assert claims["token_type"] == "Bearer"
    print(f"{kind:8} {(time.process_time() - started) / args.n * 1e6:6.0f} µs CPU per exchange")
    if args.profile and kind == "scoped":
        more = [{**form, "resource": resource(args.n + i)} for i in range(args.n)]
        profile = cProfile.Profile()
        profile.enable()
        for data in more:
            client.post("/token", data=data)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(
            os.environ.get("PROFILE_FILTER", ""), 60
        )


if __name__ == "__main__":
    sys.exit(main())
