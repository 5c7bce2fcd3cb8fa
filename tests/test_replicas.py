"""Several replicas sharing one Redis, Redis dying under them, and a Redis Cluster.

The replicas are real ``token-exchange serve`` processes (gunicorn) reading one config and one
key directory, as they would behind a load balancer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    PERMISSIONS_TOKEN,
    FakeIssuer,
    FakePermissions,
    Sts,
)
from .helpers import assert_error, assert_issued, serve_process, service_toml
from .redis_servers import RedisClusterProcesses, RedisProcess

ENV = {"PERMS_TOKEN": PERMISSIONS_TOKEN}


def write_config(
    directory: Path,
    issuer: FakeIssuer,
    permissions: FakePermissions,
    store_url: str,
    extra: str = "",
) -> Path:
    subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "keys", "generate", "--keys-dir",
         str(directory / "keys")],
        check=True, capture_output=True,
    )  # fmt: skip
    path = directory / "config.toml"
    path.write_text(service_toml(issuer.issuer, permissions.url, store_url=store_url, extra=extra))
    return path


def exchange(url: str, subject_token: str) -> requests.Response:
    return requests.post(
        f"{url}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": COUNTRIES,
        },
        timeout=10,
    )


def test_two_processes_share_answers_and_rate_limits(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions, redis_url: str
) -> None:
    permissions_api.reply(
        {"allow": True, "claims": {"custom_access_to_countries": ["nl"]}, "ttl": 60}
    )
    config = write_config(
        tmp_path, issuer, permissions_api, redis_url, '[rate_limits]\nper_client = "6/minute"'
    )
    token = issuer.token()
    with serve_process(config, ENV) as first, serve_process(config, ENV) as second:
        assert_issued(exchange(first, token))
        assert_issued(exchange(second, token))
        # The second replica was served by the first one's cached answer.
        assert len(permissions_api.questions) == 1
        for url in (first, second, first, second):
            assert_issued(exchange(url, token))
        # Six exchanges so far, three on each: the limit holds across both processes.
        for url in (first, second):
            assert_error(exchange(url, token), 429, "slow_down")


def test_redis_killed_mid_run_and_restarted(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
    redis_process: RedisProcess,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    config = write_config(tmp_path, issuer, permissions_api, redis_url)
    token = issuer.token()
    with serve_process(config, ENV) as url:
        assert_issued(exchange(url, token))
        assert_issued(exchange(url, token))
        assert len(permissions_api.questions) == 1  # cached

        redis_process.kill()
        for i in range(5):  # nothing crashes; new questions go to the permissions API
            assert_issued(exchange(url, issuer.token(sub=f"auth0|{i}")))
        assert len(permissions_api.questions) == 6
        ready = requests.get(f"{url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert "store: unreachable" in ready.json()["problems"]

        redis_process.start()
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.2)
        assert_issued(exchange(url, issuer.token(sub="auth0|after")))
        assert _cached_answers(redis_process) == 1  # answers are shared through Redis again


def test_a_redis_cluster_through_the_same_store_interface(
    make_sts: Callable[..., Sts],
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_cluster: RedisClusterProcesses,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})

    def on_cluster(config: dict[str, Any]) -> None:
        config["store"] = {"url": redis_cluster.url}
        config["rate_limits"] = {"per_subject": "3/minute"}

    first, second = make_sts(on_cluster), make_sts(on_cluster)
    token = issuer.token(sub="auth0|cluster")
    body = assert_issued(first.exchange(token))
    assert_issued(second.exchange(token))
    assert len(permissions_api.questions) == 1
    assert_issued(first.exchange(token))
    assert_error(second.exchange(token), 429, "slow_down")
    # Revocation on one replica is seen by the other.
    auth = ("countries-api", COUNTRIES_API_SECRET)
    requests.post(f"{first.url}/revoke", data={"token": body["access_token"]}, auth=auth, timeout=5)
    seen = requests.post(
        f"{second.url}/introspect", data={"token": body["access_token"]}, auth=auth, timeout=5
    )
    assert seen.json() == {"active": False}
    assert requests.get(f"{second.url}/readyz", timeout=5).status_code == 200


def _cached_answers(server: RedisProcess) -> int:
    client = redis.Redis(port=server.port)
    try:
        return len(client.keys("te:v1:perm:*"))
    finally:
        client.close()
