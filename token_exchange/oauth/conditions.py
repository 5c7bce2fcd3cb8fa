r"""Trust conditions on the claims of a verified token: compiled once, evaluated per exchange.

A condition set is a TOML table from claim name to condition (any claim, namespaced ones such as
``"https://example.com/org_id"`` included; the name is never split into a path). A name that
starts with ``/`` is an RFC 6901 JSON Pointer into the claims instead, for a member of an object
claim: ``"/kubernetes.io/serviceaccount/name"`` (``~1`` stands for ``/`` and ``~0`` for ``~``
within a member name)::

    gty = { absent = true }                 missing (or null)
    org_id = { present = true }             there and not null
    email_verified = true                   equals (for a list claim: contains)
    azp = ["app-1", "app-2"]                one of (for a list claim: shares one)
    tier = { equals = "gold" }              the same as the scalar form
    role = { one_of = ["a", "b"] }          the same as the list form
    org = { pattern = "org_[A-Za-z0-9]+" }  a full match (for a list claim: any element)

Every condition must hold. Values compare by type as well as value: ``true`` never equals
``"true"`` or ``1``, ``1`` never equals ``"1"`` or ``1.0``; strings compare code point by code
point (no Unicode normalization, no case folding). ``pattern`` only ever matches strings.

A ``pattern`` is RE2 syntax (https://github.com/google/re2/wiki/Syntax), matched by RE2: in time
linear in the value's length whatever the pattern, so no pattern an operator writes can be made
to backtrack by a value an attacker chose. What RE2 cannot compile (backreferences, lookaround,
the ``x``/``u``/``a``/``L`` flags, comments) is a configuration problem. ``\d``, ``\w``, ``\s``
and ``\b`` are ASCII-only in RE2, as an allow-list expects; ``(?i)`` folds case per Unicode.

Pure: no I/O. ``parse_conditions`` turns the configuration into a ``ConditionSet`` and a list of
problems (reported with the rest of the configuration's); nothing is compiled per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import re2

Mode = Literal["enforce", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "audit")
OPERATORS = ("equals", "one_of", "pattern", "present", "absent")

#: Longest string a ``pattern`` is matched against. Longer values never match (fail closed):
#: RE2 takes time linear in the value, and this bound keeps that at microseconds. Real ids,
#: emails and URLs are far shorter.
MAX_MATCH_LENGTH = 512
#: Longest pattern accepted in the configuration.
MAX_PATTERN_LENGTH = 1024

Scalar = str | int | bool
#: A scalar together with its type, so that ``True`` and ``1`` (equal in Python) stay apart.
_Key = tuple[type, Scalar]


class Regex(Protocol):
    """A compiled ``pattern``: an RE2 regular expression (``re2._Regexp``)."""

    def fullmatch(self, text: str) -> object | None: ...


def _re2_options() -> Any:
    options = re2.Options()
    # A pattern that does not compile is reported with the rest of the configuration's
    # problems; RE2 would also print it to stderr.
    options.log_errors = False
    # Only "does it match" is asked: no submatches to track.
    options.never_capture = True
    return options


def compile_pattern(pattern: str) -> Regex:
    """``pattern`` compiled by RE2; raises ``re2.error`` when RE2 cannot compile it.

    RE2 guarantees time linear in the input for every pattern it compiles: there is no
    catastrophic backtracking to guard against, so no pattern needs refusing for its shape.
    """
    regex: Regex = re2.compile(pattern, _re2_options())
    return regex


def _fullmatch(regex: Regex, value: str) -> bool:
    try:
        return regex.fullmatch(value) is not None
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800") is not text RE2 can read: no match.
        return False


def _key(value: Any) -> _Key | None:
    """``value`` as a comparable key, or None when it is not a string, whole number or bool."""
    if isinstance(value, str | bool | int):
        return (type(value), value)
    return None


@dataclass(frozen=True)
class Condition:
    """One compiled condition on the claim ``claim``."""

    claim: str
    operator: str
    #: The accepted values of ``equals`` / ``one_of``.
    values: frozenset[_Key] = frozenset()
    regex: Regex | None = None

    def holds(self, claims: Mapping[str, Any]) -> bool:
        value = lookup(claims, self.claim)
        # A null claim counts as absent: `{"gty": null}` is not a client-credentials token, and
        # `present` must not be satisfied by a null.
        if self.operator == "absent":
            return value is None
        if value is None:
            return False
        if self.operator == "present":
            return True
        elements = value if isinstance(value, list) else (value,)
        if self.regex is not None:
            regex = self.regex
            return any(
                isinstance(e, str) and len(e) <= MAX_MATCH_LENGTH and _fullmatch(regex, e)
                for e in elements
            )
        return any(_key(e) in self.values for e in elements)

    def describe(self) -> str:
        """For the audit log: the claim and the operator, never the token's value."""
        return f"{self.claim} {self.operator}"


def lookup(claims: Mapping[str, Any], name: str) -> Any:
    """The claim ``name``, or the member a JSON Pointer ``name`` (RFC 6901) points at; None when
    there is none. A pointer only walks objects: a list on the way is no member."""
    if not name.startswith("/"):
        return claims.get(name)
    node: Any = claims
    for token in name[1:].split("/"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(token.replace("~1", "/").replace("~0", "~"))
    return node


@dataclass(frozen=True)
class ConditionSet:
    """Conditions that must all hold, and whether a failure refuses (enforce) or is only logged
    (audit)."""

    conditions: tuple[Condition, ...] = ()
    mode: Mode = "enforce"

    def first_failure(self, claims: Mapping[str, Any]) -> Condition | None:
        for condition in self.conditions:
            if not condition.holds(claims):
                return condition
        return None

    def __bool__(self) -> bool:
        return bool(self.conditions)


NO_CONDITIONS = ConditionSet()


@dataclass
class _Problems:
    where: str
    found: list[str] = field(default_factory=list)

    def add(self, claim: str, what: str) -> None:
        self.found.append(f"{self.where}.{_toml_key(claim)}: {what}")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def parse_mode(value: Any, where: str) -> tuple[Mode, list[str]]:
    """A ``*_mode`` value: "enforce" (the default) or "audit"."""
    if value is None or value == "enforce":
        return "enforce", []
    if value == "audit":
        return "audit", []
    return "enforce", [f'{where}: must be "enforce" or "audit"']


def parse_conditions(
    raw: Any, where: str, mode: Mode = "enforce"
) -> tuple[ConditionSet, list[str]]:
    """Compile the condition table ``raw`` (None: no conditions); return it and its problems."""
    problems = _Problems(where)
    if raw is None:
        return ConditionSet(mode=mode), []
    if not isinstance(raw, Mapping):
        return ConditionSet(mode=mode), [f"{where}: must be a table of claim = condition"]
    compiled: list[Condition] = []
    for claim, spec in raw.items():
        if not isinstance(claim, str) or not claim:
            problems.found.append(f"{where}: claim names must be non-empty strings")
            continue
        if claim.startswith("/") and re.search(r"~(?![01])", claim):
            problems.add(claim, "is not a JSON Pointer (RFC 6901): ~ must be ~0 or ~1")
            continue
        condition = _condition(claim, spec, problems)
        if condition is not None:
            compiled.append(condition)
    return ConditionSet(conditions=tuple(compiled), mode=mode), problems.found


def _condition(claim: str, spec: Any, problems: _Problems) -> Condition | None:
    if isinstance(spec, Mapping):
        operators = [k for k in spec if k in OPERATORS]
        unknown = [str(k) for k in spec if k not in OPERATORS]
        if unknown:
            problems.add(
                claim, f"unknown operator {', '.join(unknown)} (known: {', '.join(OPERATORS)})"
            )
            return None
        if len(operators) != 1:
            problems.add(claim, f"must have exactly one of {', '.join(OPERATORS)}")
            return None
        (operator,) = operators
        return _operator(claim, operator, spec[operator], problems)
    if isinstance(spec, list):
        return _operator(claim, "one_of", spec, problems)
    return _operator(claim, "equals", spec, problems)


def _operator(claim: str, operator: str, value: Any, problems: _Problems) -> Condition | None:
    if operator in ("present", "absent"):
        if value is not True:
            other = "absent" if operator == "present" else "present"
            problems.add(claim, f"{operator} must be true (use {other} = true for the opposite)")
            return None
        return Condition(claim, operator)
    if operator == "equals":
        key = _key(value)
        if key is None:
            problems.add(claim, _SCALAR_ONLY)
            return None
        return Condition(claim, operator, values=frozenset({key}))
    if operator == "one_of":
        if not isinstance(value, list) or not value:
            problems.add(claim, "one_of must be a non-empty list")
            return None
        keys = [_key(v) for v in value]
        if any(k is None for k in keys):
            problems.add(claim, _SCALAR_ONLY)
            return None
        return Condition(claim, operator, values=frozenset(k for k in keys if k is not None))
    # pattern
    if not isinstance(value, str) or not value:
        problems.add(claim, "pattern must be a non-empty string")
        return None
    if len(value) > MAX_PATTERN_LENGTH:
        problems.add(claim, f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
        return None
    try:
        # RE2, not Python's re: linear time whatever the pattern (see compile_pattern). Its
        # \d, \w, \s and \b are ASCII, as an allow-list expects (Arabic-Indic digits are not
        # an org id); there is no flag to change that.
        regex = compile_pattern(value)
    except re2.error as e:
        message = e.args[0] if e.args else b""
        why = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        problems.add(
            claim,
            f'pattern is not a valid regular expression for RE2 ("{why}"); RE2 has no '
            "backreferences, lookaround, comments, or flags other than i, m, s and U",
        )
        return None
    except UnicodeEncodeError:
        problems.add(claim, "pattern is not valid Unicode text")
        return None
    return Condition(claim, operator, regex=regex)


_SCALAR_ONLY = "values must be strings, whole numbers or booleans (no floats, dates or tables)"
