"""``tokens.parse_unverified`` parses a compact JWS itself (PyJWT parses each token again when it
verifies the signature, and its parse costs about 40 µs for a subject token). It must accept
exactly what PyJWT's parse accepts and RFC 8259 reads (``strictjson``), with the same header and
payload: a differential test over hand-made and mutated tokens."""

from __future__ import annotations

import base64
import random
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from token_exchange.oauth import strictjson
from token_exchange.oauth.tokens import TokenRejected, parse_unverified

KEY = ec.generate_private_key(ec.SECP256R1())
TOKEN = jwt.encode(
    {"iss": "https://issuer.example/", "sub": "auth0|42", "aud": "api", "exp": 2_000_000_000},
    KEY,
    algorithm="ES256",
    headers={"kid": "k1"},
)


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def pyjwt_reads(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """What PyJWT's unverified parse and strictjson together accept (the parse before)."""
    try:
        parsed = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        for segment in token.split(".")[:2]:
            strictjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (jwt.PyJWTError, RecursionError, ValueError):
        return None
    return parsed["header"], parsed["payload"]


def ours(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    try:
        parsed = parse_unverified(token)
    except TokenRejected as e:
        codes.append(e.code)
        return None
    return dict(parsed.header), dict(parsed.payload)


#: The codes of the refusals above: a token that does not parse is malformed (or too large).
codes: list[str] = []


HEADER, PAYLOAD, SIGNATURE = TOKEN.split(".")
HAND_MADE = [
    TOKEN,
    # Padding, as some issuers send it (PyJWT accepts up to two '=' on a segment of 4n).
    f"{HEADER}==.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}=.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}=",
    f"{HEADER}===.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}a",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}ab=",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}abc=",
    # Junk where base64url is expected.
    f"{HEADER}!.{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}.{PAYLOAD} .{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.{SIGNATURE}+/",
    f"{HEADER}.{PAYLOAD}.\u00e9{SIGNATURE}",
    f"{HEADER}.{PAYLOAD}.",
    f".{PAYLOAD}.{SIGNATURE}",
    f"{HEADER}..{SIGNATURE}",
    "..",
    # Not objects, not JSON, not RFC 8259.
    ".".join([b64("[]"), PAYLOAD, SIGNATURE]),
    ".".join([HEADER, b64("[1]"), SIGNATURE]),
    ".".join([HEADER, b64("1"), SIGNATURE]),
    ".".join([HEADER, b64("{"), SIGNATURE]),
    ".".join([HEADER, b64('{"a":NaN}'), SIGNATURE]),
    ".".join([HEADER, b64('{"a":1,"a":2}'), SIGNATURE]),
    ".".join([HEADER, b64("[" * 40 + "]" * 40), SIGNATURE]),
    ".".join([HEADER, b64(b"\xff\xfe"), SIGNATURE]),
    # Headers PyJWT refuses when it reads them.
    ".".join([b64('{"alg":"ES256","kid":1}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":["exp"],"exp":1}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":[]}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":"b64"}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":["b64"]}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":["b64"],"b64":true}'), PAYLOAD, SIGNATURE]),
    ".".join([b64('{"alg":"ES256","crit":["b64"],"b64":false}'), "", SIGNATURE]),
    ".".join([b64('{"alg":"ES256","b64":false}'), "", SIGNATURE]),
    ".".join([b64('{"alg":"ES256","b64":false}'), PAYLOAD, SIGNATURE]),
]


@pytest.mark.parametrize("token", HAND_MADE)
def test_hand_made_tokens_are_read_as_pyjwt_reads_them(token: str) -> None:
    assert ours(token) == pyjwt_reads(token)


def test_the_good_token_is_read() -> None:
    read = ours(TOKEN)
    assert read is not None
    assert read[0]["kid"] == "k1"
    assert read[1]["sub"] == "auth0|42"


def test_mutated_tokens_are_read_as_pyjwt_reads_them() -> None:
    rng = random.Random(8693)  # noqa: S311 - a reproducible corpus, not a secret
    valid, odd = "ABCxyz019-_", "=.!+/ \u00e9%"
    accepted = refused = 0
    for _ in range(3000):
        chars = list(TOKEN if rng.random() < 0.6 else rng.choice(HAND_MADE))
        for _ in range(rng.randint(1, 2)):
            # Most often in the signature, where a change leaves a token that still parses.
            last = "".join(chars).rfind(".") + 1
            where = rng.randrange(last, len(chars) + 1) if rng.random() < 0.6 else 0
            where = where or rng.randrange(len(chars) + 1)
            action = rng.random()
            char = rng.choice(valid if rng.random() < 0.7 else odd)
            if action < 0.6 and chars:
                chars[min(where, len(chars) - 1)] = char
            elif action < 0.8:
                chars.insert(where, char)
            elif chars:
                del chars[min(where, len(chars) - 1)]
        token = "".join(chars)
        expected = pyjwt_reads(token)
        assert ours(token) == expected, token
        accepted += expected is not None
        refused += expected is None
    # Both sides of the comparison were exercised.
    assert accepted > 300
    assert refused > 300
    assert set(codes) <= {"malformed", "too_large"}
