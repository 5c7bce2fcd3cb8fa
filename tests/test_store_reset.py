"""A Redis that loses its data (restart without persistence) under replicas that keep running:
no revoked token comes back, no DPoP proof or client assertion is accepted twice, tokens minted
after the loss work, the window closes on time; and a Redis that cannot keep data is warned of.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import requests

from token_exchange.sources.epoch import EPOCH_KEY, MARKER_TTL, Epoch
from token_exchange.web.app import Overrides

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    COUNTRIES_API_SECRET,
    GRANT,
    PERMISSIONS_TOKEN,
    ClientAssertions,
    DpopKey,
    FakeIssuer,
    FakePermissions,
    SharedStore,
)
from .helpers import CLI, _serve_logging_to, assert_error, assert_issued, free_port, service_toml
from .redis_servers import RedisProcess
from .test_delegation import World, first_hop, make_world  # noqa: F401 - the fixture

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

ENV = {"PERMS_TOKEN": PERMISSIONS_TOKEN, "API_SECRET": COUNTRIES_API_SECRET}
API = ("countries-api", COUNTRIES_API_SECRET)
TOKEN_TTL = 6


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    directory: Path, issuer: FakeIssuer, permissions: FakePermissions, store_url: str
) -> tuple[Path, ClientAssertions]:
    """The config of replicas with a client that introspects and a private_key_jwt client
    (returned, to sign its assertions)."""
    subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", "keys", "generate", "--keys-dir",
         str(directory / "keys")],
        check=True, capture_output=True,
    )  # fmt: skip
    signer = ClientAssertions("signer")
    extra = f"""
[[clients]]
client_id = "countries-api"
type = "confidential"
secret_env = "API_SECRET"
audiences = []
introspects = ["{COUNTRIES}"]
[[clients]]
client_id = "signer"
type = "confidential"
token_endpoint_auth_method = "private_key_jwt"
audiences = ["{COUNTRIES}"]
jwks = {toml_value(signer.jwks())}
"""
    path = directory / "config.toml"
    path.write_text(
        service_toml(
            issuer.issuer,
            permissions.url,
            store_url=store_url,
            signing=f"token_ttl = {TOKEN_TTL}",
            extra=extra,
        )
    )
    return path, signer


@contextmanager
def serving(config: Path, workers: int = 2) -> Iterator[tuple[str, IO[str]]]:
    """``token-exchange serve`` with ``workers``; its URL and its log (JSON lines)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        for url in _serve_logging_to(log, config, ENV, free_port(), workers, "gunicorn"):
            yield url, log


def log_events(log: IO[str], name: str) -> list[dict[str, Any]]:
    log.seek(0)
    found = []
    for line in log:
        if line.startswith("{") and f'"{name}"' in line:
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    log.seek(0, 2)
    return found


def metric_samples(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=5).text
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


def token_request(issuer: FakeIssuer, **extra: str) -> dict[str, str]:
    return {
        "grant_type": GRANT,
        "subject_token": issuer.token(),
        "subject_token_type": ACCESS_TOKEN,
        "audience": COUNTRIES,
        **extra,
    }


def mint(url: str, issuer: FakeIssuer) -> str:
    response = requests.post(f"{url}/token", data=token_request(issuer, client_id="spa"), timeout=5)
    return str(assert_issued(response)["access_token"])


def introspect(url: str, token: str) -> requests.Response:
    return requests.post(f"{url}/introspect", data={"token": token}, auth=API, timeout=5)


def until_answered(call: Callable[[], requests.Response]) -> requests.Response:
    """The first answer that is not a 503 (the store's breaker closes again within a second)."""
    deadline = time.monotonic() + 5
    while True:
        response = call()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_redis_restarted_empty_under_two_replicas_of_two_workers(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
    redis_process: RedisProcess,
) -> None:
    permissions_api.reply({"allow": True, "ttl": 60})
    config, signer = write_config(tmp_path, issuer, permissions_api, redis_url)
    key = DpopKey()
    with serving(config) as (first, first_log), serving(config) as (second, second_log):
        replicas = (first, second)
        tokens = [mint(replicas[i % 2], issuer) for i in range(4)]
        minted_at = time.time()
        for token, url in zip(tokens[:2], replicas, strict=True):
            assert requests.post(f"{url}/revoke", data={"token": token}, auth=API, timeout=5).ok
        for url in replicas * 2:  # each replica's two workers
            assert [introspect(url, t).json()["active"] for t in tokens] == [0, 0, 1, 1]
        proof = key.proof()
        used = requests.post(
            f"{first}/token", data=token_request(issuer, client_id="spa"),
            headers={"DPoP": proof}, timeout=5,
        )  # fmt: skip
        assert used.json()["token_type"] == "DPoP", used.text
        assertion = signer.form()
        assert_issued(
            requests.post(f"{second}/token", data=token_request(issuer, **assertion), timeout=5)
        )

        killed = time.time()
        redis_process.kill()
        redis_process.start()  # empty: no AOF, no RDB
        restarted = time.time()

        # Load for about 1.5 s: both replicas, all workers, old tokens and the used proof.
        outcomes: list[tuple[str, int, Any]] = []

        def load(url: str) -> None:
            while time.time() < restarted + 1.5:
                for token in tokens:
                    answer = introspect(url, token)
                    outcomes.append(("introspect", answer.status_code, answer.json()))
                replay = requests.post(
                    f"{url}/token", data=token_request(issuer, client_id="spa"),
                    headers={"DPoP": proof}, timeout=5,
                )  # fmt: skip
                outcomes.append(("replay", replay.status_code, replay.json()))
                replay = requests.post(
                    f"{url}/token", data=token_request(issuer, **assertion), timeout=5
                )
                outcomes.append(("replay", replay.status_code, replay.json()))

        threads = [threading.Thread(target=load, args=(url,)) for url in replicas * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.time() < minted_at + TOKEN_TTL, "the old tokens must still be unexpired"
        answered = [o for o in outcomes if o[1] != 503]
        assert len(answered) > 20
        # No token from before the loss is active again, revoked or not; the proof is not
        # accepted again (503: made before the loss; or 400: used before, once recorded).
        assert all(o[2] == {"active": False} for o in answered if o[0] == "introspect")
        assert all(o[1] in (400, 503) for o in outcomes if o[0] == "replay")

        # Tokens minted after the loss (and the clock-skew allowance) work, and are revocable.
        time.sleep(max(0.0, restarted + 3 - time.time()))
        fresh = [mint(url, issuer) for url in replicas]
        for url in replicas * 2:
            answers = [until_answered(lambda u=url, t=t: introspect(u, t)).json() for t in fresh]
            assert [a["active"] for a in answers] == [True, True]
        assert requests.post(f"{second}/revoke", data={"token": fresh[0]}, auth=API, timeout=5).ok
        for url in replicas * 2:
            assert introspect(url, fresh[0]).json() == {"active": False}
        # A new proof made now could have been used before the loss, for all we know (its iat
        # is within the window, and clients' clocks may be off by that much): it must carry a
        # nonce drawn since the loss (RFC 9449 §8), which no proof from before can.
        refused = requests.post(
            f"{first}/token", data=token_request(issuer, client_id="spa"),
            headers={"DPoP": key.proof()}, timeout=5,
        )  # fmt: skip
        assert_error(refused, 400, "use_dpop_nonce")
        nonce = refused.headers["DPoP-Nonce"]
        for url in replicas:  # the same nonce on every replica: derived from the new epoch
            with_nonce = requests.post(
                f"{url}/token", data=token_request(issuer, client_id="spa"),
                headers={"DPoP": key.proof(nonce=nonce)}, timeout=5,
            )  # fmt: skip
            assert with_nonce.status_code == 200, with_nonce.text
            assert with_nonce.json()["token_type"] == "DPoP"

        resets = log_events(first_log, "store_reset") + log_events(second_log, "store_reset")
        assert resets, "every replica that notices logs it"
        assert len({r["epoch"] for r in resets}) == 1  # one new epoch, agreed by all
        assert sum(r["written_here"] for r in resets) == 1
        (closes_at,) = {r["window_closes_at"] for r in resets}
        assert closes_at == pytest.approx(resets[0]["reset_at"] + 2 + TOKEN_TTL)
        # Noticed after the kill (a replica may read the empty store before `restarted` is
        # taken) and soon after the restart.
        assert killed <= resets[0]["reset_at"] <= restarted + 3

        # The window closes on time: the next read after it says so.
        time.sleep(max(0.0, closes_at + 0.2 - time.time()))
        for url in (first, first):  # reads the store (and its marker) in both workers, likely
            assert introspect(url, mint(url, issuer)).json()["active"] is True
        closed = log_events(first_log, "store_reset_window_closed")
        assert closed
        assert closed[0]["closed_at"] == closes_at
        samples = [metric_samples(url) for url in replicas]
        # Counted once, by the one process that wrote the new epoch (replicas add up).
        assert sum(m.get("token_exchange_store_resets_total", 0) for m in samples) == 1
        gauge = "token_exchange_store_reset_window_closes_timestamp_seconds"
        assert all(m[gauge] == pytest.approx(closes_at, abs=0.001) for m in samples)

        # The Redis of the tests keeps nothing on disk: the start-up log said so.
        assert any(
            "neither AOF" in e["problem"] for e in log_events(first_log, "store_not_durable")
        )


def in_service(store: SharedStore) -> SharedStore:
    """``store`` with the epoch marker of a store in use for a day (not an empty one)."""
    store.add(EPOCH_KEY, Epoch("old", time.time() - 86400).encode(), MARKER_TTL)
    return store


def test_an_assertion_used_before_the_loss_is_not_accepted_again(
    make_sts: Callable[..., Any], issuer: FakeIssuer
) -> None:
    signer = ClientAssertions("signer")
    store = in_service(SharedStore())

    def with_signer(config: dict[str, Any]) -> None:
        config["clients"].append(
            {
                "client_id": "signer",
                "type": "confidential",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": signer.jwks(),
                "audiences": [COUNTRIES],
            }
        )

    sts = make_sts(with_signer, overrides=Overrides(store=store))
    form = signer.form()
    assert_issued(sts.exchange(issuer.token(), **{"client_id": None, **form}))
    store.forget()
    again = sts.exchange(issuer.token(), **{"client_id": None, **form})
    assert_error(again, 503, "temporarily_unavailable")
    assert 0 < int(again.headers["Retry-After"]) <= 33
    # One without iat could be anything up to an hour old: refused for that long.
    no_iat = sts.exchange(issuer.token(), **{"client_id": None, **signer.form(iat=None)})
    assert_error(no_iat, 503, "temporarily_unavailable")


def test_a_token_from_before_the_loss_is_no_subject_token_in_a_chained_exchange(
    make_world: Callable[..., World],  # noqa: F811 - the fixture imported above
    issuer: FakeIssuer,
) -> None:
    store = in_service(SharedStore())
    world = make_world(store=store)
    first = first_hop(world, issuer)
    assert_issued(world.exchange("agent-n", first, world.actor("agent-n")))
    store.forget()
    body = assert_error(
        world.exchange("agent-n", first, world.actor("agent-n")), 400, "invalid_request"
    )
    assert body["error_description"] == "subject_token cannot be checked for revocation"


def test_check_config_warns_of_a_redis_that_keeps_nothing(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
    redis_process: RedisProcess,
) -> None:
    config, _ = write_config(tmp_path, issuer, permissions_api, redis_url)

    def check() -> str:
        result = subprocess.run(
            [*CLI, "check-config", "--config", str(config)],
            capture_output=True, text=True, timeout=60, env={**ENV, "PATH": ""},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stderr

    assert "neither AOF (appendonly no) nor RDB snapshots" in check()
    client = redis.Redis(port=redis_process.port)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("appendonly", "yes")
        warnings = check()
        assert "neither AOF" not in warnings
        assert "RDB snapshots only" not in warnings
        assert "maxmemory-policy allkeys-lru" in warnings
        # Snapshots alone: a restart goes back to the last one, marker included.
        client.config_set("appendonly", "no")
        client.config_set("save", "3600 1")
        assert "RDB snapshots only" in check()
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("appendonly", "no")
        client.config_set("save", "")
        client.close()
    redis_process.kill()
    assert "store not reachable: its persistence was not checked" in check()


def test_a_store_restored_from_a_copy_is_marked_reset(
    tmp_path: Path,
    issuer: FakeIssuer,
    permissions_api: FakePermissions,
    redis_url: str,
    redis_process: RedisProcess,
) -> None:
    """A copy holds the epoch marker too, so nothing would tell that the writes since it are
    gone: `store mark-reset` says so, and every replica then fails closed as after a loss."""
    permissions_api.reply({"allow": True, "ttl": 60})
    config, _ = write_config(tmp_path, issuer, permissions_api, redis_url)
    with serving(config) as (url, log):
        token = mint(url, issuer)
        assert introspect(url, token).json()["active"] is True
        result = subprocess.run(
            [sys.executable, "-m", "token_exchange.serve.cli", "store", "mark-reset",
             "--config", str(config)],
            capture_output=True, text=True, timeout=60, env={**ENV, "PATH": ""},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert introspect(url, token).json() == {"active": False}
        time.sleep(1.1)  # each worker reads the marker again before it mints (epoch.RECHECK)
        assert introspect(url, mint(url, issuer)).json()["active"] is True
        assert log_events(log, "store_reset")
