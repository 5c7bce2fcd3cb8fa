"""The static source per actor: what the user may do, intersected with what the agent may do."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from token_exchange.config.settings import (
    ConfigError,
    StaticPermissionsSettings,
    parse_settings,
)
from token_exchange.sources.permissions import Decision, PermissionRequest, StaticPermissionSource

from .test_settings import MINIMAL

API = "https://api.example.test"
TENANT = "https://tenant.example.test/"
READ, WRITE = "read", "write"


def source(*rules: dict[str, Any]) -> StaticPermissionSource:
    raw = copy.deepcopy(MINIMAL)
    raw["apis"][0]["scopes"] = [READ, WRITE]
    raw["permissions"]["web"] = {"type": "static", "rules": list(rules)}
    settings = parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    static = settings.permissions["web"]
    assert isinstance(static, StaticPermissionsSettings)
    return StaticPermissionSource(static)


def ask(
    s: StaticPermissionSource,
    *,
    subject: str = "auth0|alice",
    scopes: tuple[str, ...] = (READ, WRITE),
    agent: str | None = None,
    agent_sub: str = "agent|x",
) -> Decision:
    actor = (
        {"issuer": TENANT, "subject": agent_sub, "client_id": agent, "claims": {}}
        if agent is not None
        else None
    )
    return s.decide(
        PermissionRequest(
            subject=subject, issuer=TENANT, client_id="spa", audience=API, scopes=scopes,
            resources=(), authorization_details=(), subject_claims={"sub": subject},
            actor=actor,
        )
    )  # fmt: skip


ALICE_READS_AND_WRITES = {"subject": "auth0|alice", "issuer": TENANT, "claims": {"team": "nl"}}
BOB_READS = {"subject": "auth0|bob", "issuer": TENANT, "scopes": [READ]}
SUMMARIZER_READS = {"actor_client_id": "summarizer", "scopes": [READ]}
MAILER_WRITES = {"actor_client_id": "mailer", "scopes": [WRITE]}


def test_the_user_intersected_with_the_agent() -> None:
    s = source(ALICE_READS_AND_WRITES, BOB_READS, SUMMARIZER_READS, MAILER_WRITES)
    # Without an actor the user's rule decides, as before.
    assert ask(s) == Decision(allow=True, scopes=None, claims={"team": "nl"})
    # Alice through the summarizer: her read and write, capped at the summarizer's read.
    assert ask(s, agent="summarizer") == Decision(allow=True, scopes=(READ,), claims={"team": "nl"})
    assert ask(s, agent="mailer").scopes == (WRITE,)
    # Bob reads only: through the mailer (write only) nothing is left.
    assert ask(s, subject="auth0|bob", agent="summarizer").scopes == (READ,)
    assert ask(s, subject="auth0|bob", agent="mailer").scopes == ()


def test_an_agent_no_actor_rule_names_gets_nothing_once_any_does() -> None:
    s = source(ALICE_READS_AND_WRITES, SUMMARIZER_READS)
    assert ask(s, agent="unlisted") == Decision(allow=False)
    # No actor rules at all: the user's rules decide for every actor (as before actor rules).
    assert ask(source(ALICE_READS_AND_WRITES), agent="unlisted").allow


def test_an_actor_rule_never_grants_by_itself() -> None:
    s = source(SUMMARIZER_READS)
    assert ask(s, agent="summarizer") == Decision(allow=False)
    assert ask(s) == Decision(allow=False)


def test_an_actor_rule_can_refuse_an_agent_outright_and_match_its_sub() -> None:
    s = source(
        ALICE_READS_AND_WRITES,
        {"actor": "agent|rogue", "actor_issuer": TENANT, "allow": False},
        {"actor_client_id": "*", "actor_issuer": TENANT, "scopes": [READ]},
    )
    assert ask(s, agent="summarizer", agent_sub="agent|rogue") == Decision(allow=False)
    assert ask(s, agent="summarizer").scopes == (READ,)


def test_an_actor_rule_cannot_add_claims() -> None:
    with pytest.raises(ConfigError, match=r"rules\[1\].*cannot add claims"):
        source(ALICE_READS_AND_WRITES, {**SUMMARIZER_READS, "claims": {"x": 1}})


def test_an_actor_rule_naming_an_actor_names_its_issuer_when_there_are_several() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["upstreams"][0]["subject_prefix"] = "a|"
    raw["upstreams"].append(
        {"issuer": "https://other.example.test/", "audiences": ["a"], "subject_prefix": "b|"}
    )
    raw["permissions"]["web"] = {"type": "static", "rules": [{"actor": "agent|x"}]}
    with pytest.raises(ConfigError, match=r"rules\[0\]\.actor_issuer"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    # Another issuer's application may have the same azp: the client id names its issuer too.
    raw["permissions"]["web"]["rules"] = [{"actor_client_id": "mailer"}]
    with pytest.raises(ConfigError, match=r"rules\[0\]\.actor_issuer"):
        parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
    raw["permissions"]["web"]["rules"][0]["actor_issuer"] = "https://other.example.test/"
    parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))
