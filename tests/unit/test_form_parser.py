"""The form parser against Werkzeug's, on fixed and random bodies (application/x-www-form-
urlencoded, RFC 6749 §3.2)."""

from __future__ import annotations

import io
import random

import pytest
from werkzeug.formparser import FormDataParser

from token_exchange.web.views import parse_form

from ..test_forms import FORM


def werkzeug_form(body: bytes) -> dict[str, list[str]]:
    """What ``request.form.to_dict(flat=False)`` answered before we parsed forms ourselves."""
    _, form, _ = FormDataParser().parse(io.BytesIO(body), FORM, len(body))
    return dict(form.to_dict(flat=False))


CASES = [
    b"",
    b"a=1",
    b"a=1&b=2&a=3",
    b"a=&b",
    b"a",
    b"=x",
    b"&&a=1&&",
    b"a==b",
    b"scope=countries%3Aread+countries%3Awrite",
    b"a+b=c+d",
    b"a%2Bb=%2B",
    b"a=%",
    b"a=%4",
    b"a=%zz",
    b"a=%E2%82%AC",
    b"a=%FF%FE",
    b"a=%E2%82",
    b"%FF=1",
    b"a=\xe2\x82\xac",
    b"a=\xff",
    b"a;b=1",
    b"a=1;b=2",
    b"a=%00",
    b"subject_token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln&client_id=spa",
]


@pytest.mark.parametrize("body", CASES)
def test_parse_form_answers_as_werkzeug(body: bytes) -> None:
    assert parse_form(body) == werkzeug_form(body)


def test_parse_form_answers_as_werkzeug_on_random_bodies() -> None:
    rng = random.Random(8693)  # noqa: S311 - reproducible test data, not secrets
    alphabet = [b"a", b"b", b"=", b"&", b"+", b"%", b"2", b"B", b"F", b"f", b"E", b"\xc3", b"\xa9",
                b"\xff", b";", b" ", b"%41", b"%C3%A9", b"%ff"]  # fmt: skip
    for _ in range(3000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert parse_form(body) == werkzeug_form(body), body
