"""The one list of audit ``reason`` codes (``oauth/reasons.py``): every code a raise site
names is on it, every code on it is named somewhere, every error class has a default from it,
and the README documents exactly it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import token_exchange
from token_exchange.oauth import dpop, errors, reasons
from token_exchange.oauth.reasons import REASONS
from token_exchange.oauth.tokens import CODES

from ..helpers import README

PACKAGE = Path(token_exchange.__file__).parent
#: Calls whose ``reason=``/``code=`` keyword (or, for the grant's ``refused``, third
#: argument) is a reason code; and assignments to a request record's ``reason``.
_REASON_CALLS = frozenset({"TokenRejected", "ProofRejected", "refused"})


def _error_classes() -> list[type[errors.OAuthError]]:
    found: list[type[errors.OAuthError]] = []
    todo = [errors.OAuthError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _named(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def scan() -> tuple[dict[str, str], set[str]]:
    """Every reason code written in the package: literals (code -> where) at the raise sites,
    and the ``reasons`` constants used (their names)."""
    calls = _REASON_CALLS | {cls.__name__ for cls in _error_classes()}
    literals: dict[str, str] = {}
    constants: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            values: list[ast.expr] = []
            if isinstance(node, ast.Call) and _named(node.func) in calls:
                values += [k.value for k in node.keywords if k.arg in ("reason", "code")]
                if _named(node.func) == "refused" and len(node.args) >= 3:
                    values.append(node.args[2])
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "reason" for t in node.targets
            ):
                values.append(node.value)
            elif isinstance(node, ast.Dict):
                values += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "reason"
                ]
            elif isinstance(node, ast.FunctionDef):
                # A default: def __init__(self, reason, *, code="invalid").
                arguments = node.args
                pairs = [
                    *zip(arguments.args[::-1], arguments.defaults[::-1], strict=False),
                    *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
                ]
                values += [d for a, d in pairs if d is not None and a.arg == "code"]
            elif isinstance(node, ast.Assign) and any(
                _named(t) == "default_reason" for t in node.targets
            ):
                values.append(node.value)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "reasons"
            ):
                constants.add(node.attr)
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    literals.setdefault(value.value, where)
    return literals, constants


def test_every_code_written_at_a_raise_site_is_on_the_list() -> None:
    literals, constants = scan()
    unlisted = {code: where for code, where in literals.items() if code not in REASONS}
    assert not unlisted, f"add these to token_exchange/reasons.py and the README: {unlisted}"
    assert all(isinstance(getattr(reasons, name), str | frozenset) for name in constants)
    # The scan sees the raise sites it is meant to (it is not vacuous).
    assert {"condition", "dpop_required", "act_cycle", "dpop_htu", "expired"} <= set(literals)
    assert {"PERMISSIONS_DENIED", "UNKNOWN_CLIENT", "RATE_LIMITED"} <= constants


def test_every_code_on_the_list_is_used() -> None:
    literals, constants = scan()
    used = set(literals) | {getattr(reasons, name) for name in constants}
    unused = {code for code in REASONS if code not in used}
    assert not unused, f"no raise site names {unused}: remove them from the list"


def test_the_token_codes_kept_their_values() -> None:
    # Operators alert on them: the list includes every code tokens.TokenRejected may carry.
    assert CODES <= REASONS
    assert reasons.TOKEN_REASONS <= REASONS
    assert reasons.DPOP_REASONS <= REASONS


def test_every_error_class_has_a_default_reason_on_the_list() -> None:
    classes = _error_classes()
    assert dpop.InvalidDpopProof in classes
    assert dpop.UseDpopNonce in classes
    for cls in classes:
        assert cls.default_reason in REASONS, cls
    assert errors.InvalidRequest("x").reason == reasons.REQUEST_MALFORMED
    assert errors.InvalidTarget("x").reason == reasons.TARGET_REFUSED
    assert errors.InvalidScope("x").reason == reasons.SCOPE_REFUSED
    assert errors.TemporarilyUnavailable("x").reason == reasons.TEMPORARILY_UNAVAILABLE
    assert dpop.InvalidDpopProof("x").reason == reasons.DPOP_INVALID
    assert errors.InvalidTarget("x", reason=reasons.UNKNOWN_RESOURCE).reason == "unknown_resource"


def test_an_invalid_client_answer_says_nothing_of_the_detail() -> None:
    error = errors.InvalidClient("unknown client", reason=reasons.UNKNOWN_CLIENT)
    status, body, headers = error.render()
    assert (status, body["error_description"]) == (400, errors.INVALID_CLIENT_DESCRIPTION)
    assert (error.reason, error.detail) == ("unknown_client", "unknown client")
    status, _, headers = errors.InvalidClient("x", used_authorization_header=True).render()
    assert status == 401
    assert ("WWW-Authenticate", 'Basic realm="token-exchange", charset="UTF-8"') in headers


def test_the_readme_documents_exactly_the_list() -> None:
    text = README.read_text()
    start = text.index("**Refusal reasons**")
    table = text[start : text.index("\n\n", text.index("| --- |", start))]
    documented = set()
    for row in table.splitlines()[3:]:
        # The codes, not the config keys named in parentheses after some of them.
        codes = re.sub(r"\([^)]*\)", "", row.split("|")[2])
        documented |= set(re.findall(r"`([a-z0-9_]+)`", codes))
    documented -= {"detail", "per_client", "per_subject", "failures_per_address"}
    assert documented == REASONS, (documented - REASONS, REASONS - documented)
