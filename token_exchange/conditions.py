"""Trust conditions on the claims of a verified token: compiled once, evaluated per exchange.

A condition set is a TOML table from claim name to condition (any claim, namespaced ones such as
``"https://example.com/org_id"`` included; the name is never split into a path)::

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

Pure: no I/O. ``parse_conditions`` turns the configuration into a ``ConditionSet`` and a list of
problems (reported with the rest of the configuration's); nothing is compiled per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["enforce", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "audit")
OPERATORS = ("equals", "one_of", "pattern", "present", "absent")

#: Longest string a ``pattern`` is matched against. Longer values never match (fail closed):
#: together with refusing nested quantifiers at load time, this bounds the time any pattern can
#: take on a value an attacker chose. Real ids, emails and URLs are far shorter.
MAX_MATCH_LENGTH = 512
#: Longest pattern accepted in the configuration.
MAX_PATTERN_LENGTH = 1024

Scalar = str | int | bool
#: A scalar together with its type, so that ``True`` and ``1`` (equal in Python) stay apart.
_Key = tuple[type, Scalar]


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
    regex: re.Pattern[str] | None = None

    def holds(self, claims: Mapping[str, Any]) -> bool:
        value = claims.get(self.claim)
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
                isinstance(e, str) and len(e) <= MAX_MATCH_LENGTH and regex.fullmatch(e)
                for e in elements
            )
        return any(_key(e) in self.values for e in elements)

    def describe(self) -> str:
        """For the audit log: the claim and the operator, never the token's value."""
        return f"{self.claim} {self.operator}"


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
        # ASCII: \d, \w and \s mean what an operator writing an allow-list expects, not every
        # digit or letter of Unicode (Arabic-Indic digits are not an org id).
        regex = re.compile(value, re.ASCII)
    except re.error as e:
        problems.add(claim, f"pattern is not a valid regular expression ({e.msg})")
        return None
    if why := backtracking_risk(value):
        problems.add(claim, f"pattern {why}")
        return None
    return Condition(claim, operator, regex=regex)


_SCALAR_ONLY = "values must be strings, whole numbers or booleans (no floats, dates or tables)"
_REPEAT = re.compile(r"\{(\d*)(,?)(\d*)\}")


def backtracking_risk(pattern: str) -> str | None:
    """Why ``pattern`` could backtrack catastrophically, or None.

    A heuristic, deliberately conservative: a repeated group (``*``, ``+``, ``{n,}``, ``{n,m}``
    with m > 1) that itself contains a quantifier or an alternation (``(a+)+``, ``(a*)*``,
    ``(a|a)*``, ``(\\w+\\s?)*``) is refused, as are backreferences and conditionals. Such
    patterns can almost always be written without nesting (``(a|b)+`` is ``[ab]+``). What it
    misses (polynomial cases such as ``.*.*.*x``) is bounded by ``MAX_MATCH_LENGTH``.
    """
    # One frame per open group: does it contain a quantifier or an alternation?
    stack: list[bool] = [False]
    last_group: bool | None = None  # the frame of a group that has just closed
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        closed, last_group = last_group, None
        if c == "\\":
            if i + 1 < n and pattern[i + 1] in "123456789":
                return "uses a backreference"
            i += 2
        elif c == "[":
            i = _skip_class(pattern, i)
        elif c == "(":
            if pattern.startswith("(?P=", i) or pattern.startswith("(?(", i):
                return "uses a backreference or a conditional"
            if pattern.startswith("(?#", i):
                end = pattern.find(")", i)
                i = n if end < 0 else end + 1
                continue
            stack.append(False)
            i += 1
            if i < n and pattern[i] == "?":
                # An extension, (?:, (?P<name>, (?=, (?i) ...: its "?" is not a quantifier.
                i += 1
                if pattern.startswith("P<", i):
                    end = pattern.find(">", i)
                    i = n if end < 0 else end + 1
        elif c == ")":
            inner = stack.pop() if len(stack) > 1 else False
            stack[-1] = stack[-1] or inner
            last_group = inner
            i += 1
        elif c == "|":
            stack[-1] = True
            i += 1
        elif c in "*+?{":
            repeats, length = _quantifier(pattern, i)
            if length == 0:  # a literal "{"
                i += 1
                continue
            if repeats and closed:
                return "nests a quantifier or an alternation inside a repeated group"
            stack[-1] = True
            i += length
            if i < n and pattern[i] in "?+":  # lazy or possessive
                i += 1
        else:
            i += 1
    return None


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class that starts at ``pattern[i] == "["``."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _quantifier(pattern: str, i: int) -> tuple[bool, int]:
    """Whether the quantifier at ``i`` repeats more than once, and its length (0: none)."""
    c = pattern[i]
    if c in "*+":
        return True, 1
    if c == "?":
        return False, 1
    match = _REPEAT.match(pattern, i)
    if match is None or not (match[1] or match[3]):
        return False, 0
    low, comma, high = match[1], match[2], match[3]
    repeats = int(low) > 1 if not comma else (not high or int(high) > 1)
    return repeats, match.end() - i
