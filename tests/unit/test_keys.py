"""Signing keys: thumbprints (RFC 7638), files, states, signing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest

from token_exchange.oauth.jose import thumbprint
from token_exchange.sources.keys import (
    DirectoryKeyStore,
    KeyStoreError,
    MemoryKeyStore,
    Signer,
    SigningKey,
    generate_private_key,
    load_keys,
    rotate,
    shell_path,
    write_key,
)


def test_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",  # noqa: E501
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _key(alg: str = "ES256", **times: float) -> SigningKey:
    now = time.time()
    return SigningKey(
        alg=alg,
        private_key=generate_private_key(alg, rsa_bits=2048),
        publish_at=times.get("publish_at", now),
        activate_at=times.get("activate_at", now),
        deactivate_at=times.get("deactivate_at"),
        withdraw_at=times.get("withdraw_at"),
        created_at=now,
    )


def test_states_follow_from_the_times() -> None:
    key = _key(publish_at=100, activate_at=200, deactivate_at=300, withdraw_at=400)
    assert [key.state(t) for t in (50, 100, 200, 300, 400)] == [
        "pending",
        "published",
        "active",
        "draining",
        "withdrawn",
    ]


def test_signing_key_is_the_newest_active_one_and_never_unpublished() -> None:
    old = _key(publish_at=0, activate_at=0)
    new = _key(publish_at=100, activate_at=200)
    store = MemoryKeyStore([old, new], clock=lambda: 150)
    assert store.signing_key() is old
    assert [k.kid for k in store.published()] == [old.kid, new.kid]
    store.clock = lambda: 250
    assert store.signing_key() is new
    # A key whose activation time comes before its publication still waits for publication.
    early = _key(publish_at=1000, activate_at=500)
    store = MemoryKeyStore([old, early], clock=lambda: 700)
    assert store.signing_key() is old


def test_no_active_key_is_an_error() -> None:
    with pytest.raises(KeyStoreError):
        MemoryKeyStore([_key(publish_at=10**10, activate_at=10**10)]).signing_key()


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_files_round_trip(tmp_path: Path, alg: str) -> None:
    key = _key(alg)
    write_key(tmp_path, key)
    pem = tmp_path / f"key-{key.kid}.pem"
    assert oct(pem.stat().st_mode & 0o777) == "0o600"
    (loaded,), warnings = load_keys(tmp_path)
    assert warnings == []
    assert (loaded.kid, loaded.alg) == (key.kid, alg)
    token, used = Signer(DirectoryKeyStore(tmp_path)).sign({"sub": "x"})
    assert used.kid == key.kid
    public = jwt.PyJWK(dict(loaded.jwk))
    assert jwt.decode(token, public, algorithms=[alg])["sub"] == "x"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        load_keys(tmp_path / "nope")


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no signing key"):
        load_keys(tmp_path)


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    key = _key()
    write_key(tmp_path, key)
    (tmp_path / f"key-{key.kid}.pem").write_text("not a key")
    (tmp_path / "other.json").write_text("{not json")
    with pytest.raises(KeyStoreError) as raised:
        load_keys(tmp_path)
    assert f"key-{key.kid}.json" in str(raised.value)
    assert "other.json" in str(raised.value)


def test_metadata_kid_must_match_the_key(tmp_path: Path) -> None:
    key = _key()
    write_key(tmp_path, key)
    meta = tmp_path / f"key-{key.kid}.json"
    data = json.loads(meta.read_text())
    data["kid"] = "forged"
    meta.write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="thumbprint"):
        load_keys(tmp_path)


def test_loose_permissions_warn(tmp_path: Path) -> None:
    key = _key()
    write_key(tmp_path, key)
    os.chmod(tmp_path / f"key-{key.kid}.pem", 0o644)
    _, warnings = load_keys(tmp_path)
    assert "chmod 600" in warnings[0]


def test_key_for_another_algorithm_is_refused(tmp_path: Path) -> None:
    key = _key("ES256")
    write_key(tmp_path, key)
    meta = tmp_path / f"key-{key.kid}.json"
    meta.write_text(meta.read_text().replace('"ES256"', '"RS256"'))
    with pytest.raises(KeyStoreError, match="does not hold a key for RS256"):
        load_keys(tmp_path)


def test_group_read_by_our_own_group_does_not_warn(tmp_path: Path) -> None:
    # A Kubernetes Secret with fsGroup mounts keys 0440, group = the pod's own group.
    key = _key()
    write_key(tmp_path, key)
    pem = tmp_path / f"key-{key.kid}.pem"
    os.chmod(pem, 0o440)
    os.chown(pem, -1, os.getegid())
    assert load_keys(tmp_path)[1] == []
    os.chmod(pem, 0o444)  # readable by anyone: warn
    assert "chmod 600" in load_keys(tmp_path)[1][0]


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_signer_mints_what_jwt_encode_mints(tmp_path: Path, alg: str) -> None:
    key = _key(alg)
    write_key(tmp_path, key)
    claims = {"iss": "https://sts.example.test", "sub": "auth0|42", "aud": "https://a.test",
              "exp": 4_000_000_000, "iat": 1_700_000_000, "jti": "abc", "scope": "a b",
              "name": "Zoë \u2603", "act": {"sub": "x"},
              "list": [["a", 1, 2.5, None, True]]}  # fmt: skip
    signer = Signer(DirectoryKeyStore(tmp_path))
    for typ in ("at+jwt", "at+jwt", "JWT"):
        token, used = signer.sign(claims, typ=typ)
        expected = jwt.encode(
            claims, used.private_key, algorithm=alg, headers={"kid": used.kid, "typ": typ}
        )
        if alg in ("RS256", "EdDSA"):  # deterministic signatures: the very same bytes
            assert token == expected
        else:
            assert token.rsplit(".", 1)[0] == expected.rsplit(".", 1)[0]
        header = jwt.get_unverified_header(token)
        assert header == {"alg": alg, "kid": used.kid, "typ": typ}
        public = jwt.PyJWK(dict(used.jwk))
        assert jwt.decode(token, public, algorithms=[alg], audience="https://a.test") == claims


def test_signer_follows_the_key_store(tmp_path: Path) -> None:
    first, second = _key("ES256"), _key("RS256")
    store = MemoryKeyStore([first])
    signer = Signer(store)
    assert jwt.get_unverified_header(signer.sign({"sub": "x"})[0])["kid"] == first.kid
    store.keys = [second]
    token, used = signer.sign({"sub": "x"})
    assert used is second
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": second.kid, "typ": "at+jwt"}
    assert jwt.decode(token, jwt.PyJWK(dict(second.jwk)), algorithms=["RS256"])["sub"] == "x"


def dash_key(**times: float) -> SigningKey:
    """A key whose kid starts with '-' (one in 64; Ed25519 keys are cheap to make)."""
    for _ in range(5000):
        key = _key("EdDSA", **times)
        if key.kid.startswith("-"):
            return key
    raise AssertionError("no kid starting with '-' in 5000 keys")


def test_key_file_names_never_start_with_a_dash(tmp_path: Path) -> None:
    key = dash_key()
    write_key(tmp_path, key)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"key-{key.kid}.json",
        f"key-{key.kid}.pem",
    ]
    assert all(not p.name.startswith("-") for p in tmp_path.iterdir())
    ((loaded,), _) = load_keys(tmp_path)
    assert loaded.kid == key.kid


def _old_style(keys_dir: Path, key: SigningKey) -> None:
    """The key's files under the names written before the ``key-`` prefix."""
    write_key(keys_dir, key)
    for suffix in (".json", ".pem"):
        (keys_dir / f"key-{key.kid}{suffix}").rename(keys_dir / f"{key.kid}{suffix}")


def test_old_style_file_names_are_still_read_and_renamed_by_a_rotation(tmp_path: Path) -> None:
    key = _key(publish_at=1000, activate_at=1000)
    _old_style(tmp_path, key)
    ((loaded,), _) = load_keys(tmp_path)
    assert loaded.kid == key.kid
    rotate(tmp_path, "ES256", now=2000, delay=360, token_ttl=300, jwks_max_age=300)
    names = {p.name for p in tmp_path.glob("*.*")}
    assert f"{key.kid}.json" not in names
    assert f"{key.kid}.pem" not in names
    assert f"key-{key.kid}.json" in names
    assert len(load_keys(tmp_path)[0]) == 2


def test_the_new_name_wins_over_an_old_copy_of_the_same_key(tmp_path: Path) -> None:
    # A Secret that kept an old entry after the rename: the new file is the truth.
    key = _key(publish_at=1000, activate_at=1000)
    write_key(tmp_path, key)
    _old_style(tmp_path / "x", key)
    for suffix in (".json", ".pem"):
        (tmp_path / "x" / f"{key.kid}{suffix}").rename(tmp_path / f"{key.kid}{suffix}")
    meta = tmp_path / f"{key.kid}.json"
    meta.write_text(meta.read_text().replace("ES256", "RS256"))  # would be refused if read
    ((loaded,), _) = load_keys(tmp_path)
    assert loaded.alg == "ES256"


def test_a_path_starting_with_a_dash_is_pasteable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shell_path(Path("-abc.pem")) == "./-abc.pem"
    assert shell_path(Path("/k/-abc.pem")) == "/k/-abc.pem"
    key = dash_key()
    _old_style(tmp_path, key)
    os.chmod(tmp_path / f"{key.kid}.pem", 0o644)
    monkeypatch.chdir(tmp_path)
    (warning,) = load_keys(Path("."))[1]
    assert f"chmod 600 ./{key.kid}.pem" in warning
