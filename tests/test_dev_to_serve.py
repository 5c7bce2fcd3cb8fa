"""From ``dev`` to ``serve`` (issue 13, deliver 2): ``dev --print-config`` writes a config with
which ``serve`` runs in front of a running ``dev``, and the README's commands for it work."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

import jwt
import pytest
import requests

from token_exchange.serve.devmode import COUNTRIES_API

from .helpers import (
    dev_process,
    free_port,
    readme_section,
    run_dev_walkthrough,
    run_shell_session,
    serve_process,
)
from .test_cli import CLI, run
from .test_first_hour import listening

#: Starts processes (the service, Node, npm, a browser or a virtualenv): the slow layer.
pytestmark = pytest.mark.slow

PERMISSIONS_TOKEN = "perms-token-shared-by-dev-and-serve"
CLIENT_SECRET = "client-secret-shared-by-dev-and-serve"
SHARED = {
    "TOKEN_EXCHANGE_DEV_PERMISSIONS_TOKEN": PERMISSIONS_TOKEN,
    "TOKEN_EXCHANGE_DEV_CLIENT_SECRET": CLIENT_SECRET,
}


def printed_commands(config: str) -> list[str]:
    """The shell commands in the comments at the top of a printed config."""
    return [line.removeprefix("#   ") for line in config.splitlines() if line.startswith("#   ")]


def print_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("dev", *args, "--print-config", env=env)


def test_printed_config_passes_check_config_and_names_secrets_only_by_env_var(
    tmp_path: Path,
) -> None:
    # dev is running on its port (the config is for a serve in front of it): no port check.
    with listening() as dev_port:
        result = print_config("--port", str(dev_port), "--serve-port", "9123", env=SHARED)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert PERMISSIONS_TOKEN not in result.stdout
    assert CLIENT_SECRET not in result.stdout
    config = tomllib.loads(result.stdout)
    dev_url = f"http://127.0.0.1:{dev_port}"
    assert config["issuer"] == "http://127.0.0.1:9123"
    [upstream] = config["upstreams"]
    assert upstream["issuer"] == f"{dev_url}/dev/issuer"
    assert upstream["jwks_uri"] == f"{dev_url}/dev/issuer/.well-known/jwks.json"
    [source] = config["permissions"].values()
    assert source["url"] == f"{dev_url}/dev/permissions"
    assert source["token_env"] == "TOKEN_EXCHANGE_DEV_PERMISSIONS_TOKEN"
    clients = {c["client_id"]: c for c in config["clients"]}
    assert clients["countries-api"]["secret_env"] == "TOKEN_EXCHANGE_DEV_CLIENT_SECRET"
    assert clients["spa"]["type"] == "public"
    assert config["store"]["url"] == "sqlite:state/store.db"
    path = tmp_path / "config.local.toml"
    path.write_text(result.stdout)
    # check-config wants the key directory, with a key: the printed commands make it first.
    assert run("keys", "generate", "--config", str(path), env=SHARED).returncode == 0
    assert (tmp_path / "keys" / "local").is_dir()
    checked = run("check-config", "--config", str(path), env=SHARED)
    assert checked.returncode == 0, checked.stderr
    assert f"{path}: ok" in checked.stdout, checked.stdout
    assert checked.stderr == ""  # not even a warning


def test_printed_config_without_the_shared_secrets_says_to_export_them() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SHARED}
    result = subprocess.run(
        [*CLI, "dev", "--print-config"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    tomllib.loads(result.stdout)  # still the config, on stdout alone
    for name in SHARED:
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_printed_config_keeps_keys_where_the_operator_says(tmp_path: Path) -> None:
    keys_dir = tmp_path / "my keys"
    result = print_config("--serve-keys-dir", str(keys_dir), "--alg", "RS256", env=SHARED)
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(result.stdout)
    assert config["signing"] == {"keys_dir": str(keys_dir), "algorithm": "RS256"}
    # The commands it prints reproduce this very invocation, quoted for the shell.
    assert f"--serve-keys-dir '{keys_dir}'" in result.stdout


def test_dev_takes_its_secrets_from_the_environment_and_does_not_echo_them(
    tmp_path: Path,
) -> None:
    _, lines, result = run_dev_walkthrough(tmp_path, "--print-config", env=SHARED)
    banner = "".join(lines)
    assert CLIENT_SECRET not in banner
    assert '-u "countries-api:$TOKEN_EXCHANGE_DEV_CLIENT_SECRET"' in banner
    # Pasted into a shell that has it, step 6 authenticates with it: active, revoked, inactive.
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    introspected = [json.loads(line) for line in out if line.startswith("{") and "active" in line]
    assert [i["active"] for i in introspected] == [True, False]
    assert "200" in out


@pytest.mark.parametrize(
    "args",
    [("--serve-port", "9123"), ("--serve-keys-dir", "elsewhere")],
)
def test_serve_options_of_dev_need_print_config(args: tuple[str, ...]) -> None:
    result = run("dev", *args)
    assert result.returncode == 2
    assert "--print-config" in result.stderr
    assert "Traceback" not in result.stderr


def test_print_config_refuses_serve_on_devs_own_port() -> None:
    result = print_config("--port", "9123", "--serve-port", "9123")
    assert result.returncode == 2
    assert "--serve-port" in result.stderr


def test_readme_commands_are_the_ones_the_config_prints() -> None:
    printed = print_config("--port", "8080", "--serve-port", "8090", env=SHARED).stdout
    setup = readme_section("From dev to serve")[0]
    commands = printed_commands(printed)
    assert len(commands) >= 6
    for command in commands:
        assert command in setup.splitlines(), command


GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def login(dev_url: str) -> str:
    response = requests.post(f"{dev_url}/dev/login", data={"user": "alice"}, timeout=5)
    return str(response.json()["access_token"])


def exchange_at(
    serve_url: str, dev_url: str, country: str, subject: str | None = None
) -> requests.Response:
    return requests.post(
        f"{serve_url}/token",
        data={
            "grant_type": GRANT,
            "client_id": "spa",
            "subject_token_type": ACCESS_TOKEN,
            "subject_token": subject or login(dev_url),
            "resource": f"{COUNTRIES_API}/countries/{country}",
        },
        timeout=10,
    )


def wait_ready(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while (status := requests.get(f"{url}/readyz", timeout=5).status_code) != 200:
        assert time.monotonic() < deadline, f"not ready: {status}"
        time.sleep(0.2)


def test_serve_takes_the_new_key_of_a_restarted_dev_at_its_first_token(tmp_path: Path) -> None:
    dev_port, serve_port = free_port(), free_port()
    config = tmp_path / "config.local.toml"
    printed = print_config("--port", str(dev_port), "--serve-port", str(serve_port), env=SHARED)
    config.write_text(printed.stdout)
    assert run("keys", "generate", "--config", str(config)).returncode == 0
    jwks = f"http://127.0.0.1:{dev_port}/dev/issuer/.well-known/jwks.json"
    with serve_process(config, SHARED, port=serve_port) as serve_url:
        assert serve_url == f"http://127.0.0.1:{serve_port}"
        with dev_process(dev_port, SHARED) as dev_url:
            # serve started first, while dev's issuer was down: ready once dev is up.
            wait_ready(serve_url)
            subject = login(dev_url)
            assert exchange_at(serve_url, dev_url, "nl", subject).status_code == 200
            first = requests.get(jwks, timeout=5).json()
        # dev is down: a subject token it signed still verifies, but nobody decides.
        down = exchange_at(serve_url, dev_url, "de", subject)
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "temporarily_unavailable"
        # serve refetches for an unknown key at most once per jwks_cooldown (1 s in the printed
        # config) after its last fetch, which may have been just now: a dev restarted that fast
        # would see its first new token refused once. Let the cooldown pass, as a restart does.
        time.sleep(1.1)
        # A new dev starts on its port, with a new issuer key.
        with dev_process(dev_port, SHARED) as dev_url:
            assert requests.get(jwks, timeout=5).json() != first
            response = exchange_at(serve_url, dev_url, "nl")
            assert response.status_code == 200, response.text
            assert exchange_at(serve_url, dev_url, "fr").json()["error"] == "invalid_target"


def test_readme_dev_to_serve_walkthrough_runs(tmp_path: Path) -> None:
    dev_port, serve_port = free_port(), free_port()
    setup, walkthrough = readme_section("From dev to serve")
    script = "\n".join(
        [
            "set -eu",
            setup,
            walkthrough,
            # Kept for the checks below, which verify it on their own.
            'printf "%s\\n" "$TOKEN" > minted-token',
        ]
    )
    script = (
        script.replace("127.0.0.1:8080", f"127.0.0.1:{dev_port}")
        .replace("127.0.0.1:8090", f"127.0.0.1:{serve_port}")
        .replace("--port 8080", f"--port {dev_port}")
        .replace("--port 8090", f"--port {serve_port}")
        .replace("--serve-port 8090", f"--serve-port {serve_port}")
    )
    serve_url = f"http://127.0.0.1:{serve_port}"
    with run_shell_session(script, tmp_path) as (result, out):
        logs = "".join(
            f"\n--- {name}:\n{(tmp_path / name).read_text()}"
            for name in ("dev.log", "serve.log")
            if (tmp_path / name).exists()
        )
        assert result == 0, out + logs
        lines = out.splitlines()
        # Ready (the upstream keys, from dev's issuer; our key; the store), and said so.
        assert '{"status":"ready","problems":[]} 200' in lines, out + logs
        assert requests.get(f"{serve_url}/readyz", timeout=5).status_code == 200
        token = (tmp_path / "minted-token").read_text().strip()
        # Minted by serve: it verifies with serve's JWKS, not dev's.
        header = jwt.get_unverified_header(token)
        jwks = jwt.PyJWKSet.from_dict(
            requests.get(f"{serve_url}/.well-known/jwks.json", timeout=5).json()
        )
        [key] = [k for k in jwks.keys if k.key_id == header["kid"]]
        claims = jwt.decode(
            token, key, algorithms=["ES256"], audience=COUNTRIES_API, issuer=serve_url
        )
        assert header["typ"] == "at+jwt"
        assert claims["sub"] == "dev|alice"
        assert claims["custom_access_to_countries"] == ["nl"]
        dev_jwks = requests.get(f"http://127.0.0.1:{dev_port}/.well-known/jwks.json", timeout=5)
        assert header["kid"] not in {k["kid"] for k in dev_jwks.json()["keys"]}
        # Step 3: the package's verifier, as the countries API would run it, printed the claims.
        # Every JSON answer on its own line (the readiness one followed by its status).
        answers = [json.JSONDecoder().raw_decode(line)[0] for line in lines if line[:1] == "{"]
        verified = [a for a in answers if "jti" in a and "active" not in a]
        assert verified == [claims], out
        # Step 4: a country alice may not see.
        refused = [a for a in answers if "error" in a]
        assert [r["error"] for r in refused] == ["invalid_target"], out
        # Step 5: the confidential client, with the secret dev and serve share.
        introspected = [a for a in answers if "active" in a]
        assert [(i["active"], i["sub"]) for i in introspected] == [(True, "dev|alice")], out
