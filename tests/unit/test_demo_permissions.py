"""The demo permissions API of ``token-exchange dev``: the reference implementation of the
contract, resource_prefixes included (README, "The permissions API")."""

from __future__ import annotations

from typing import Any

from token_exchange.serve.devmode import COUNTRIES_API, COUNTRIES_PREFIX, demo_decision
from token_exchange.sources.permissions import PermissionRequest, check_coverage, decision_from_json


def ask(*resources: str, subject: str = "dev|alice") -> dict[str, Any]:
    return demo_decision(
        {"subject": subject, "audience": COUNTRIES_API, "scopes": ["countries:read"],
         "resources": list(resources)}
    )  # fmt: skip


def test_one_country_is_answered_for_everything_under_it_and_no_more() -> None:
    answer = ask(f"{COUNTRIES_PREFIX}nl")
    assert answer["claims"]["custom_access_to_countries"] == ["nl"]
    # The narrowest prefix the answer's claims hold for: not /countries/ (they name nl alone).
    assert answer["resource_prefixes"] == [f"{COUNTRIES_PREFIX}nl"]
    decision = decision_from_json(answer)
    question = PermissionRequest(
        subject="dev|alice", issuer="dev", client_id="spa", audience=COUNTRIES_API,
        scopes=("countries:read",), resources=(f"{COUNTRIES_PREFIX}nl",),
        authorization_details=(), subject_claims={},
    )  # fmt: skip
    assert check_coverage(decision, question) is decision
    assert decision.covers([f"{COUNTRIES_PREFIX}nl/stats"])
    assert not decision.covers([f"{COUNTRIES_PREFIX}de"])
    assert not decision.covers([f"{COUNTRIES_PREFIX}nlx"])
    assert ask(f"{COUNTRIES_PREFIX}nl/stats")["claims"]["custom_access_to_countries"] == ["nl"]


def test_several_countries_or_none_name_no_prefix() -> None:
    # Two countries' claims are their union: true of neither alone.
    assert "resource_prefixes" not in ask(f"{COUNTRIES_PREFIX}nl", f"{COUNTRIES_PREFIX}de")
    assert "resource_prefixes" not in ask()
    refusal = ask(f"{COUNTRIES_PREFIX}fr")  # not alice's
    assert refusal == {"allow": False, "ttl": 30}
