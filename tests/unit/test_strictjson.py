"""RFC 8259 JSON only, in and out (token_exchange/strictjson.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from token_exchange.grant.request import _parse_authorization_details
from token_exchange.oauth import strictjson
from token_exchange.oauth.errors import InvalidAuthorizationDetails, UpstreamUnavailable
from token_exchange.sources.permissions import _COMPACT, PermissionRequest, parse_answer

NOT_RFC_8259 = [
    "NaN",
    "[Infinity]",
    '{"a": -Infinity}',
    "[1e400]",  # Python reads it as inf
    "[-1e400]",
    '{"a": 1, "a": 2}',  # which one? parsers differ
    "[" + "1" * 30 + "]",
    "[" * 33 + "]" * 33,
    "[" * 5000 + "]" * 5000,  # the recursion limit
]


@pytest.mark.parametrize("text", NOT_RFC_8259)
def test_what_is_not_rfc_8259_json_or_too_deep_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the one error the module raises
        strictjson.loads(text)


@pytest.mark.parametrize(
    "text", ['{"a": [1, 2.5, -3e10, null, true, "x"]}', "[" * 32 + "]" * 32, "9223372036854775807"]
)
def test_json_is_read_as_json(text: str) -> None:
    assert strictjson.loads(text) == json.loads(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": [float("-inf")]}])
def test_nothing_but_json_is_written(value: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        strictjson.dumps(value)


@pytest.mark.parametrize("text", NOT_RFC_8259[:-2])
def test_authorization_details_must_be_rfc_8259_json(text: str) -> None:
    details = f'[{{"type": "country_access", "x": {text}}}]'
    with pytest.raises(InvalidAuthorizationDetails):
        _parse_authorization_details(details)


@pytest.mark.parametrize("text", NOT_RFC_8259)
def test_a_permissions_answer_that_is_not_rfc_8259_json_is_no_answer(text: str) -> None:
    body = f'{{"allow": true, "claims": {{"x": {text}}}}}'.encode()
    with pytest.raises(UpstreamUnavailable):
        parse_answer(200, body, {})


def test_a_question_with_nan_is_never_sent() -> None:
    """The last line: were a NaN to get into a question, encoding it fails (a bug) rather
    than send the permissions API a text it cannot read."""
    request = PermissionRequest(
        subject="auth0|42", issuer="https://tenant.example.test/", client_id="spa",
        audience="https://countries.example.test", scopes=(), resources=(),
        authorization_details=({"type": "x", "n": float("nan")},), subject_claims={},
    )  # fmt: skip
    with pytest.raises(ValueError):  # noqa: PT011
        _COMPACT.encode(request.to_json())


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"a": tru}', "Expecting value at character 6"),
        ('{"a": 1} {"b"', "Extra data at character 9"),
        ('{"a": 1, "a": 2}', "duplicate member name"),
        ("[NaN]", "NaN is not JSON"),
        ("[1e999]", "number out of range"),
        ("[" * 40 + "]" * 40, "JSON nested too deeply"),
    ],
)
def test_a_problem_is_said_without_the_text(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=r"\w") as refused:
        strictjson.loads(text)
    assert strictjson.problem(refused.value) == said


def test_another_error_is_not_repeated() -> None:
    # Only our fixed texts pass: a message that could hold what the caller sent does not.
    assert strictjson.problem(ValueError("invalid literal: hunter2")) == "not JSON"
