"""Signing-key rotation: the timeline, live reload, and zero failed verifications under load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
import requests

from token_exchange.sources.keys import (
    load_keys,
)

from .fakes import (
    ACCESS_TOKEN,
    COUNTRIES,
    GRANT,
    PERMISSIONS_TOKEN,
    STS_ISSUER,
    FakeIssuer,
    FakePermissions,
)
from .helpers import serve_process, service_toml

# -- the command line -------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "token_exchange.serve.cli", *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PERMS_TOKEN": PERMISSIONS_TOKEN},
    )  # fmt: skip


@pytest.mark.slow
def test_keys_commands(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys")
    assert cli("keys", "generate", "--keys-dir", keys).returncode == 0
    rotated = cli("keys", "rotate", "--keys-dir", keys, "--alg", "EdDSA", "--token-ttl", "300",
                  "--jwks-max-age", "300")  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    assert "signs from" in rotated.stdout
    assert "is withdrawn at" in rotated.stdout
    listing = cli("keys", "list", "--keys-dir", keys).stdout
    rows = {line.split()[2]: line.split() for line in listing.splitlines()[2:] if line.strip()
            and len(line.split()) >= 7}  # fmt: skip
    assert rows["published"][1] == "EdDSA"
    first = rows["active"][0]
    refused = cli("keys", "retire", first, "--keys-dir", keys)
    assert refused.returncode == 2
    assert "no key would sign" in refused.stderr
    forced = cli("keys", "retire", first, "--keys-dir", keys, "--force")
    assert forced.returncode == 0
    assert "in flight" in forced.stderr


@pytest.mark.slow
def test_rotate_reads_the_signing_section_of_a_config(tmp_path: Path) -> None:
    # The config names secrets this job does not have: [signing] is still read.
    config = tmp_path / "c.toml"
    config.write_text(
        'issuer = "https://sts.example.test"\n[signing]\ntoken_ttl = 600\njwks_max_age = 120\n'
        'algorithm = "PS256"\n[[clients]]\nclient_id = "x"\ntype = "confidential"\n'
        'secret_env = "UNSET_SECRET"\naudiences = ["a"]\n'
    )
    keys = tmp_path / "keys"
    cli("keys", "generate", "--keys-dir", str(keys))
    result = cli(
        "keys", "rotate", "--keys-dir", str(keys), "--config", str(config), "--rsa-bits", "2048"
    )
    assert result.returncode == 0, result.stderr
    metas = [json.loads(p.read_text()) for p in keys.glob("*.json")]
    new = next(m for m in metas if m["alg"] == "PS256")
    old = next(m for m in metas if m["alg"] == "ES256")
    assert old["deactivate_at"] == new["activate_at"]
    gap = _ts(new["activate_at"]) - _ts(new["publish_at"])
    assert 180 - 2 <= gap <= 180 + 2  # max-age 120 + 60 s margin
    assert _ts(old["withdraw_at"]) - _ts(old["deactivate_at"]) == 600 + 120


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.write_text("not a directory"), "is not a directory"),
        (lambda d: (d.mkdir(), (d / "abc.json").write_text("{")), "abc.json"),
    ],
)
def test_serve_refuses_an_unusable_key_directory(
    tmp_path: Path, issuer: FakeIssuer, setup: object, message: str
) -> None:
    keys = tmp_path / "keys"
    setup(keys)  # type: ignore[operator]
    config = tmp_path / "c.toml"
    config.write_text(_config(issuer, "http://127.0.0.1:9/p", 300))
    result = cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_loose_key_permissions_warn_at_start(tmp_path: Path, issuer: FakeIssuer) -> None:
    cli("keys", "generate", "--keys-dir", str(tmp_path / "keys"))
    for pem in (tmp_path / "keys").glob("*.pem"):
        pem.chmod(0o644)
    config = tmp_path / "c.toml"
    config.write_text(_config(issuer, "http://127.0.0.1:9/p", 300))
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0
    assert "chmod 600" in result.stderr


# -- rotation under a running service ----------------------------------------------------------


def _config(issuer: FakeIssuer, permissions_url: str, max_age: int) -> str:
    return service_toml(
        issuer.issuer,
        permissions_url,
        signing=f"token_ttl = 5\njwks_max_age = {max_age}\nreload_interval = 1",
    )


def _verify_throughout(
    tmp_path: Path, issuer: FakeIssuer, permissions: FakePermissions, delay: float
) -> tuple[int, int, set[str]]:
    """Mint and verify tokens for a while, rotating with ``delay`` 0.2 s into it.

    The verifier fetches our JWKS at the first token and keeps it 2 s (the max-age); the
    replicas notice a new key within 1 s (``reload_interval``). Returns (verified, failed,
    kids seen).
    """
    permissions.reply({"allow": True, "ttl": 60})
    keys = tmp_path / "keys"
    cli("keys", "generate", "--keys-dir", str(keys))
    config = tmp_path / "config.toml"
    config.write_text(_config(issuer, permissions.url, max_age=2))
    verified, failed, kids = 0, 0, set()
    with serve_process(config, {"PERMS_TOKEN": PERMISSIONS_TOKEN}, workers=2) as url:
        # A downstream verifier as PyJWT users write it: JWKS cached for the max-age we send,
        # unknown kids refetched at most once per 30 s.
        client = jwt.PyJWKClient(f"{url}/.well-known/jwks.json", lifespan=2, cooldown_duration=30)
        subject = issuer.token()
        session = requests.Session()
        rotation = threading.Timer(
            0.2,
            lambda: cli("keys", "rotate", "--keys-dir", str(keys), "--delay", str(delay),
                        "--jwks-max-age", "2", "--token-ttl", "5"),
        )  # fmt: skip
        rotation.start()
        deadline = time.monotonic() + delay + 5
        while time.monotonic() < deadline:
            response = session.post(
                f"{url}/token",
                data={"grant_type": GRANT, "client_id": "spa", "subject_token": subject,
                      "subject_token_type": ACCESS_TOKEN, "audience": COUNTRIES},
                timeout=5,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            token = response.json()["access_token"]
            kids.add(jwt.get_unverified_header(token)["kid"])
            try:
                key = client.get_signing_key_from_jwt(token)
                jwt.decode(token, key, algorithms=["ES256"], audience=COUNTRIES, issuer=STS_ISSUER)
                verified += 1
            except jwt.PyJWTError:
                failed += 1
            time.sleep(0.02)
        rotation.join()
        session.close()
    return verified, failed, kids


@pytest.mark.slow
def test_rotation_under_load_breaks_no_verification(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    verified, failed, kids = _verify_throughout(tmp_path, issuer, permissions_api, delay=6)
    assert len(kids) == 2, "the rotation happened while tokens were verified"
    assert failed == 0
    assert verified > 100


@pytest.mark.slow
def test_a_rotation_without_the_delay_would_break_verifiers(
    tmp_path: Path, issuer: FakeIssuer, permissions_api: FakePermissions
) -> None:
    # The control experiment: the same verifier, a key that signs the moment it is published.
    _, failed, kids = _verify_throughout(tmp_path, issuer, permissions_api, delay=0)
    assert len(kids) == 2
    assert failed > 0


@pytest.mark.slow
@pytest.mark.parametrize("delay", ["nan", "inf", "-1", "99999999999"])
def test_rotate_refuses_absurd_delays(tmp_path: Path, delay: str) -> None:
    keys = tmp_path / "keys"
    cli("keys", "generate", "--keys-dir", str(keys))
    result = cli("keys", "rotate", "--keys-dir", str(keys), "--delay", delay,
                 "--token-ttl", "300", "--jwks-max-age", "300")  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(list(keys.glob("*.pem"))) == 1  # no orphan key file


@pytest.mark.slow
def test_rotate_needs_the_services_lifetimes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cli("keys", "generate", "--keys-dir", str(keys), "--alg", "RS256", "--rsa-bits", "2048")
    refused = cli("keys", "rotate", "--keys-dir", str(keys))
    assert refused.returncode == 2
    assert "--config" in refused.stderr
    done = cli("keys", "rotate", "--keys-dir", str(keys), "--token-ttl", "300",
               "--jwks-max-age", "300", "--rsa-bits", "2048")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Without --alg or a config, the next key keeps the current key's algorithm.
    assert sorted(k.alg for k in load_keys(keys)[0]) == ["RS256", "RS256"]
