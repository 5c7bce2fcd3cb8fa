"""The ``keys`` commands in process: kids that start with '-', the listing, --config."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from token_exchange.serve.cli import main
from token_exchange.sources.keys import STATES, load_keys, write_key

from .test_keys import _key, dash_key

README = Path(__file__).resolve().parents[2] / "README.md"
UTC_SECONDS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def _two_signing_keys(keys_dir: Path) -> str:
    """A key whose kid starts with '-' and another that signs too; returns the first kid."""
    dash = dash_key()
    write_key(keys_dir, dash)
    write_key(keys_dir, _key())
    return dash.kid


def _withdrawn(keys_dir: Path, kid: str) -> bool:
    now = time.time() + 1
    return any(k.kid == kid and k.state(now) == "withdrawn" for k in load_keys(keys_dir)[0])


@pytest.mark.parametrize(
    "form",
    [
        lambda d, kid: ["--keys-dir", d, "--", kid],
        lambda d, kid: ["--kid", kid, "--keys-dir", d],
        lambda d, kid: [f"--kid={kid}", "--keys-dir", d],
        lambda d, kid: [kid, "--keys-dir", d],  # a whole thumbprint is never an option
    ],
)
def test_retire_takes_a_kid_that_starts_with_a_dash(
    tmp_path: Path, form: object, capsys: pytest.CaptureFixture[str]
) -> None:
    kid = _two_signing_keys(tmp_path)
    assert main(["keys", "retire", *form(str(tmp_path), kid)]) == 0  # type: ignore[operator]
    assert f"retired {kid}" in capsys.readouterr().out
    assert _withdrawn(tmp_path, kid)


def test_a_misplaced_dash_kid_gets_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "retire", "--", "-abc", "--keys-dir", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --keys-dir" in err
    assert "goes after '--'" in err
    assert "--kid" in err


def test_retire_needs_one_kid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "retire", "--keys-dir", str(tmp_path)]) == 2
    assert "name the key to retire" in capsys.readouterr().err
    assert main(["keys", "retire", "a", "--kid", "b", "--keys-dir", str(tmp_path)]) == 2
    assert "two different key ids" in capsys.readouterr().err


def test_list_defines_every_state_and_shows_whole_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_key(tmp_path, _key(publish_at=1000.123456, activate_at=1000.5, deactivate_at=2e9))
    assert main(["keys", "list", "--keys-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.match(rf"now: {UTC_SECONDS}\n", out), out
    assert "1970-01-01T00:16:40Z  1970-01-01T00:16:40Z  2033-05-18T03:33:20Z  -" in out
    assert not re.search(r"\d\d\.\d+", out)  # no fractions of a second
    assert "retiring" not in out
    for state, meaning in STATES.items():
        assert re.search(rf"^  {state}\s+{re.escape(meaning)}$", out, re.M), state
    assert re.search(r"\sdraining\s", out)


def test_the_readme_defines_every_state() -> None:
    section = README.read_text().split("## Key rotation", 1)[1].split("\n## ", 1)[0]
    for state, meaning in STATES.items():
        assert f"`{state}`" in section
        assert meaning in section, state


def _config(tmp_path: Path) -> Path:
    # A client whose secret is not set: the keys commands read only [signing].
    config = tmp_path / "c.toml"
    config.write_text(
        'issuer = "https://sts.example.test"\n[signing]\nkeys_dir = "signing-keys"\n'
        'algorithm = "EdDSA"\n[[clients]]\nclient_id = "x"\ntype = "confidential"\n'
        'secret_env = "UNSET_SECRET"\naudiences = ["a"]\n'
    )
    return config


def test_keys_commands_take_the_directory_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(_config(tmp_path))
    keys_dir = tmp_path / "signing-keys"
    assert main(["keys", "generate", "--config", config]) == 0
    ((first,), _) = load_keys(keys_dir)
    assert first.alg == "EdDSA"  # signing.algorithm
    assert main(["keys", "list", "--config", config]) == 0
    assert first.kid in capsys.readouterr().out
    assert main(["keys", "rotate", "--config", config, "--delay", "0"]) == 0
    assert len(load_keys(keys_dir)[0]) == 2
    monkeypatch.setenv("TOKEN_EXCHANGE_CONFIG", config)
    assert main(["keys", "retire", "--kid", first.kid]) == 0
    assert _withdrawn(keys_dir, first.kid)
    assert main(["keys", "list"]) == 0
    assert first.kid in capsys.readouterr().out


def test_keys_dir_wins_over_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(_config(tmp_path))
    other = tmp_path / "other"
    assert main(["keys", "generate", "--config", config, "--keys-dir", str(other)]) == 0
    assert len(load_keys(other)[0]) == 1
    assert not (tmp_path / "signing-keys").exists()
    monkeypatch.setenv("TOKEN_EXCHANGE_CONFIG", str(tmp_path / "missing.toml"))
    # --keys-dir given: the config named by the environment is not needed, so not read.
    assert main(["keys", "list", "--keys-dir", str(other)]) == 0


def test_without_a_directory_or_a_config_the_message_names_both(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKEN_EXCHANGE_CONFIG", raising=False)
    assert main(["keys", "list"]) == 2
    err = capsys.readouterr().err
    assert "--keys-dir" in err
    assert "--config" in err
