"""Key rotation on a key directory, in-process with a manual clock: the timeline, retirement and
failed reloads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from token_exchange.oauth.clock import ManualClock
from token_exchange.sources.keys import (
    DirectoryKeyStore,
    KeyStoreError,
    load_keys,
    new_key,
    retire,
    rotate,
    write_key,
)

T0 = 1_800_000_000.0


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    write_key(tmp_path, new_key("ES256", publish_at=T0, activate_at=T0))
    return tmp_path


def test_full_rotation_timeline(keys_dir: Path) -> None:
    clock, ticks = ManualClock(T0 + 10), ManualClock(0.0)
    store = DirectoryKeyStore(keys_dir, clock=clock, monotonic=ticks)
    first = store.signing_key()

    # Rotate at T0+1000: JWKS max-age 300 s, tokens live 300 s, the new key signs 360 s later.
    new, replaced = rotate(
        keys_dir, "ES256", now=T0 + 1000, delay=360, token_ttl=300, jwks_max_age=300
    )
    assert [k.kid for k in replaced] == [first.kid]

    def at(t: float) -> tuple[str, list[str]]:
        clock.now = T0 + t
        ticks.now += 5  # past the reload interval: the store looks at the directory again
        return store.signing_key().kid, [k.kid for k in store.published()]

    # Published at once (the running store noticed the new files), not signing yet.
    assert at(1000) == (first.kid, [first.kid, new.kid])
    assert at(1359) == (first.kid, [first.kid, new.kid])
    # Signs after the delay; the old key stays published for token lifetime + max-age.
    assert at(1360) == (new.kid, [first.kid, new.kid])
    assert at(1360 + 599) == (new.kid, [first.kid, new.kid])
    assert at(1360 + 600) == (new.kid, [new.kid])


def test_a_second_rotation_waits_for_the_first(keys_dir: Path) -> None:
    rotate(keys_dir, "ES256", now=T0 + 10, delay=360, token_ttl=300, jwks_max_age=300)
    with pytest.raises(KeyStoreError, match="already under way"):
        rotate(keys_dir, "ES256", now=T0 + 20, delay=360, token_ttl=300, jwks_max_age=300)
    rotate(
        keys_dir, "RS256", now=T0 + 400, delay=360, token_ttl=300, jwks_max_age=300, rsa_bits=2048
    )
    assert sorted(k.alg for k in load_keys(keys_dir)[0]) == ["ES256", "ES256", "RS256"]


def test_retire_withdraws_at_once_but_not_the_last_signer(keys_dir: Path) -> None:
    (only,), _ = load_keys(keys_dir)
    with pytest.raises(KeyStoreError, match="no key would sign"):
        retire(keys_dir, only.kid, now=T0 + 10)
    new, _ = rotate(keys_dir, "ES256", now=T0 + 10, delay=0, token_ttl=300, jwks_max_age=300)
    retired = retire(keys_dir, only.kid, now=T0 + 11)
    assert retired.state(T0 + 11) == "withdrawn"
    store = DirectoryKeyStore(keys_dir, clock=ManualClock(T0 + 11))
    assert [k.kid for k in store.published()] == [new.kid]
    with pytest.raises(KeyStoreError, match="no key"):
        retire(keys_dir, "nope", now=T0)


def test_a_broken_change_keeps_the_last_good_keys(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = ManualClock(0.0)
    store = DirectoryKeyStore(keys_dir, clock=ManualClock(T0 + 10), monotonic=ticks)
    kid = store.signing_key().kid
    (keys_dir / "garbage.json").write_text("{")
    ticks.now += 5
    with caplog.at_level(logging.ERROR):
        assert store.signing_key().kid == kid
    assert "signing_keys_reload_failed" in caplog.text


def test_the_directory_is_not_read_on_every_call(keys_dir: Path) -> None:
    ticks = ManualClock(0.0)
    store = DirectoryKeyStore(keys_dir, clock=ManualClock(T0 + 10), monotonic=ticks)
    rotate(keys_dir, "ES256", now=T0 + 10, delay=0, token_ttl=300, jwks_max_age=300)
    assert len(store.published()) == 1  # within the reload interval: not looked at yet
    ticks.now += 2
    assert len(store.published()) == 2


def test_retiring_the_next_key_keeps_the_current_one_signing(keys_dir: Path) -> None:
    (current,), _ = load_keys(keys_dir)
    new, _ = rotate(keys_dir, "ES256", now=T0 + 10, delay=360, token_ttl=300, jwks_max_age=300)
    retire(keys_dir, new.kid, now=T0 + 20)  # the new key leaked before it signed
    for t in (T0 + 20, T0 + 370, T0 + 100_000):
        store = DirectoryKeyStore(keys_dir, clock=ManualClock(t))
        assert store.signing_key().kid == current.kid
    # ...and the next rotation starts from a clean state.
    newer, _ = rotate(keys_dir, "ES256", now=T0 + 30, delay=360, token_ttl=300, jwks_max_age=300)
    assert DirectoryKeyStore(keys_dir, clock=ManualClock(T0 + 391)).signing_key().kid == newer.kid


def test_retire_refuses_to_leave_a_future_gap(keys_dir: Path) -> None:
    (current,), _ = load_keys(keys_dir)
    rotate(keys_dir, "ES256", now=T0 + 10, delay=360, token_ttl=300, jwks_max_age=300)
    # Retiring the current key while the next one does not sign yet leaves a gap now.
    with pytest.raises(KeyStoreError, match="no key would sign"):
        retire(keys_dir, current.kid, now=T0 + 20)


def test_a_failed_reload_is_retried_even_if_the_files_do_not_change(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import token_exchange.sources.keys as keys_module

    ticks = ManualClock(0.0)
    store = DirectoryKeyStore(keys_dir, clock=ManualClock(T0 + 10), monotonic=ticks)
    new, _ = rotate(keys_dir, "ES256", now=T0 + 10, delay=0, token_ttl=300, jwks_max_age=300)
    real_load = keys_module.load_keys
    failures = [KeyStoreError("EACCES, once")]

    def flaky(path: Path) -> Any:
        if failures:
            raise failures.pop()
        return real_load(path)

    monkeypatch.setattr(keys_module, "load_keys", flaky)
    ticks.now += 5
    assert len(store.published()) == 1  # the reload failed; the old keys serve on
    ticks.now += 5
    assert new.kid in [k.kid for k in store.published()]  # retried, though nothing changed


def test_one_change_to_a_key_directory_at_a_time(keys_dir: Path) -> None:
    import fcntl

    with (keys_dir / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another rotation is running
        with pytest.raises(KeyStoreError, match="in progress"):
            rotate(keys_dir, "ES256", now=T0 + 10, delay=360, token_ttl=300, jwks_max_age=300)
    rotate(keys_dir, "ES256", now=T0 + 10, delay=360, token_ttl=300, jwks_max_age=300)
