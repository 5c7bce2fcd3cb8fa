"""A key directory that cannot be used: each message names the real problem and its remedy.

Issue 21, item 6. Tests run as root, which reads any file whatever its mode, so a directory or
file the service may not read is simulated by making the one ``os`` call fail as it would for
another user (``PermissionError``), or by a path of the wrong kind (a file for the directory, a
directory for the ``.pem``), which fails for root too.
"""

from __future__ import annotations

import errno
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from token_exchange.serve.cli import main
from token_exchange.sources.keys import (
    KeyStoreError,
    SigningKey,
    generate_private_key,
    load_keys,
    write_key,
)

from ..helpers import service_toml


def key(**times: float) -> SigningKey:
    now = time.time()
    return SigningKey(
        alg="ES256",
        private_key=generate_private_key("ES256"),
        publish_at=times.get("publish_at", now - 100),
        activate_at=times.get("activate_at", now - 100),
        deactivate_at=times.get("deactivate_at"),
        withdraw_at=times.get("withdraw_at"),
        created_at=now - 100,
    )


def withdrawn() -> SigningKey:
    now = time.time()
    return key(deactivate_at=now - 10, withdraw_at=now - 5)


def denied(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, path: Path) -> None:
    """``module.<name>(path)`` fails with EACCES, as it does for a user without permission."""
    real = getattr(module, name)

    def call(target: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(os.fsdecode(target)) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(module, name, call)


def test_a_directory_that_cannot_be_listed_is_not_reported_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key(tmp_path, key())
    denied(monkeypatch, os, "scandir", tmp_path)
    with pytest.raises(KeyStoreError) as raised:
        load_keys(tmp_path)
    message = str(raised.value)
    assert "cannot be listed" in message
    assert "Permission denied" in message
    assert "keys generate" not in message  # the old, wrong remedy
    assert f"uid {os.geteuid()}" in message  # who must be allowed to read it


def test_keys_generate_into_a_directory_that_cannot_be_listed_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    denied(monkeypatch, os, "scandir", tmp_path)
    assert main(["keys", "generate", "--keys-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be listed" in err
    assert "Permission denied" in err
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_directory_should_be_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("not a directory")
    with pytest.raises(KeyStoreError, match=r"is not a directory"):
        load_keys(path)


def test_an_unreadable_pem_is_reported_under_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = write_key(tmp_path, key())
    pem = meta.with_suffix(".pem")
    denied(monkeypatch, io, "open", pem)
    with pytest.raises(KeyStoreError) as raised:
        load_keys(tmp_path)
    message = str(raised.value)
    assert f"{pem.name}: cannot be read (Permission denied)" in message
    assert f"{meta.name}:" not in message
    assert f"uid {os.geteuid()}" in message


def test_a_pem_that_is_a_directory_is_named(tmp_path: Path) -> None:
    meta = write_key(tmp_path, key())
    pem = meta.with_suffix(".pem")
    pem.unlink()
    pem.mkdir()
    with pytest.raises(KeyStoreError, match=rf"{pem.name}: cannot be read \(Is a directory\)"):
        load_keys(tmp_path)


def test_a_missing_pem_is_named(tmp_path: Path) -> None:
    meta = write_key(tmp_path, key())
    meta.with_suffix(".pem").unlink()
    with pytest.raises(KeyStoreError, match=rf"{meta.stem}\.pem: missing"):
        load_keys(tmp_path)


def test_check_config_with_every_key_withdrawn_names_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(service_toml("https://issuer.test/", "https://webapp.test/permissions"))
    write_key(tmp_path / "keys", withdrawn())
    monkeypatch.setenv("PERMS_TOKEN", "x")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "every key" in err
    assert "withdrawn" in err
    assert f"token-exchange keys generate --keys-dir {tmp_path / 'keys'}" in err


def test_keys_generate_works_when_every_key_is_withdrawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = withdrawn()
    write_key(tmp_path, old)
    assert main(["keys", "generate", "--keys-dir", str(tmp_path)]) == 0
    assert "signs from now" in capsys.readouterr().out
    keys, _ = load_keys(tmp_path)
    states = {k.kid: k.state(time.time()) for k in keys}
    assert states.pop(old.kid) == "withdrawn"
    assert list(states.values()) == ["active"]


@pytest.mark.parametrize(
    "existing",
    [lambda: key(), lambda: key(publish_at=time.time() + 60, activate_at=time.time() + 120)],
    ids=["active", "pending"],
)
def test_keys_generate_still_refuses_a_directory_with_a_key_that_signs_or_will(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: Any
) -> None:
    write_key(tmp_path, existing())
    assert main(["keys", "generate", "--keys-dir", str(tmp_path)]) == 2
    assert "keys rotate" in capsys.readouterr().err
    assert len(load_keys(tmp_path)[0]) == 1
