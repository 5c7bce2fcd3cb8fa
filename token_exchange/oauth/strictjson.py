"""RFC 8259 JSON only, in and out: what we read from callers and dependencies, and what we
send to others (the permissions API, a PDP, the tokens we sign, our answers).

Python's ``json`` module reads and writes ``NaN``, ``Infinity`` and ``-Infinity``, which are no
JSON (RFC 8259 §6): a permissions API or a JOSE library on the other side refuses them, so one
that slipped in would turn into a broken question or a token nobody can verify. It also reads
``1e400`` as infinity, integers of thousands of digits, the last of duplicate member names
(RFC 8259 §4 leaves that to the parser: two parsers may read one text two ways), and nesting
as deep as the stack allows.
``loads`` refuses all of that with ``ValueError``; ``ENCODER`` writes no NaN (``ValueError``).
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting we read: far more than any authorization details or answer needs, and far
#: below the interpreter's recursion limit (the parser and the encoder both recurse).
MAX_DEPTH = 32
#: Largest integer we read: a signed 64-bit one. A longer one is not a number any consumer of
#: ours (JavaScript's, Go's or Java's JSON) reads back as written.
MAX_INTEGER = 2**63 - 1
#: Compact, and refusing NaN and infinities (``ValueError``): for every text sent to others.
ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """``value`` as compact RFC 8259 JSON; ``ValueError`` for NaN or an infinity."""
    return ENCODER.encode(value)


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse RFC 8259 JSON; ``ValueError`` for NaN or infinities (also a number too large for a
    float, an integer beyond 64 bits), a duplicate member name, or nesting deeper than
    ``max_depth``."""
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_members,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _depth_exceeds(value, max_depth):
        raise ValueError("JSON nested too deeply")
    return value


#: What ``loads`` says of JSON it refuses beyond the parser's own errors: fixed texts.
_OWN_PROBLEMS = frozenset(
    {
        "JSON nested too deeply",
        "number out of range",
        "duplicate member name",
        *(f"{name} is not JSON" for name in ("NaN", "Infinity", "-Infinity")),
    }
)


def problem(error: ValueError) -> str:
    """What ``loads`` found wrong, fit to show the sender: the parser's message and where it
    stopped, or one of our fixed texts; never any of the text itself."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at character {error.pos}"
    text = str(error)
    return text if text in _OWN_PROBLEMS else "not JSON"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _bounded_int(text: str) -> int:
    # The length first: int() of a long text costs quadratic time (and fails past 4300 digits).
    value = int(text) if len(text) <= 20 else MAX_INTEGER + 1
    if abs(value) > MAX_INTEGER:
        raise ValueError("number out of range")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests more than ``max_depth`` arrays and objects (iteratively)."""
    level: list[Any] = [value]
    depth = 0
    while containers := [v for v in level if isinstance(v, dict | list)]:
        depth += 1
        if depth > max_depth:
            return True
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return False
