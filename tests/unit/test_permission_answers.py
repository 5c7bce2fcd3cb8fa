"""Reading a permissions API answer: refusals, reserved claims, ttl and Cache-Control."""

from __future__ import annotations

import pytest

from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.sources.permissions import Decision, parse_answer


def test_parse_answer_ttl_and_cache_control() -> None:
    assert parse_answer(200, b'{"allow": true, "ttl": 60}', {}).ttl == 60
    assert parse_answer(200, b'{"allow": true}', {"Cache-Control": "max-age=30"}).ttl == 30
    assert parse_answer(200, b'{"allow": true}', {"Cache-Control": "no-store"}).ttl == 0
    no_store = {"Cache-Control": "private, no-store"}
    assert parse_answer(200, b'{"allow": true, "ttl": 60}', no_store).ttl == 0
    assert parse_answer(200, b'{"allow": true}', {}).ttl is None


def test_parse_answer_refusal() -> None:
    assert parse_answer(403, b"", {}) == Decision(allow=False)
    assert parse_answer(200, b'{"allow": false}', {}).allow is False


def test_parse_answer_rejects_reserved_claims() -> None:
    with pytest.raises(UpstreamUnavailable):
        parse_answer(200, b'{"allow": true, "claims": {"sub": "x"}}', {})
