"""The condition language, as pure functions: compiling, every operator, type confusion, limits."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import re2

from token_exchange.config.settings import ConfigError, config_warnings, parse_settings
from token_exchange.oauth.conditions import MAX_MATCH_LENGTH, ConditionSet, parse_conditions

from .test_settings import MINIMAL


def compiled(raw: dict[str, Any]) -> ConditionSet:
    conditions, problems = parse_conditions(raw, "conditions")
    assert problems == []
    return conditions


def holds(raw: dict[str, Any], claims: dict[str, Any]) -> bool:
    return compiled(raw).first_failure(claims) is None


# -- operators -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "claims", "expected"),
    [
        # A scalar: equals; for a list claim: contains.
        ("a", {"c": "a"}, True),
        ("a", {"c": "b"}, False),
        ("a", {"c": ["b", "a"]}, True),
        ("a", {"c": ["b"]}, False),
        ("a", {"c": []}, False),
        ("a", {}, False),
        ({"equals": "a"}, {"c": "a"}, True),
        ({"equals": "a"}, {"c": ["x", "a"]}, True),
        ({"equals": "a"}, {"c": "A"}, False),
        # A list: one of; for a list claim: shares one.
        (["a", "b"], {"c": "b"}, True),
        (["a", "b"], {"c": "z"}, False),
        (["a", "b"], {"c": ["z", "b"]}, True),
        (["a", "b"], {"c": ["z", "y"]}, False),
        ({"one_of": ["a", "b"]}, {"c": "a"}, True),
        ({"one_of": ["a", "b"]}, {}, False),
        # pattern: a full match; for a list claim: any element.
        ({"pattern": "org_[a-z0-9]+"}, {"c": "org_abc1"}, True),
        ({"pattern": "org_[a-z0-9]+"}, {"c": "xorg_abc1"}, False),
        ({"pattern": "org_[a-z0-9]+"}, {"c": "org_abc1!"}, False),
        ({"pattern": "^org_[a-z0-9]+$"}, {"c": "org_abc"}, True),
        # `$` matches before a final newline in Python; a full match does not let that pass.
        ({"pattern": "^org_[a-z0-9]+$"}, {"c": "org_abc\n"}, False),
        # A full match whatever the anchors say: `^a|b$` cannot match "a-and-more".
        ({"pattern": "^org_a|org_b$"}, {"c": "org_a-and-more"}, False),
        ({"pattern": "^org_a|org_b$"}, {"c": "more-org_b"}, False),
        ({"pattern": "^org_a|org_b$"}, {"c": "org_b"}, True),
        ({"pattern": "org_[a-z]+"}, {"c": ["nope", "org_x"]}, True),
        ({"pattern": "org_[a-z]+"}, {"c": ["nope", 7]}, False),
        ({"pattern": "org_[a-z]+"}, {}, False),
        # present / absent; a null is absent.
        ({"present": True}, {"c": "x"}, True),
        ({"present": True}, {"c": ""}, True),
        ({"present": True}, {"c": False}, True),
        ({"present": True}, {"c": None}, False),
        ({"present": True}, {}, False),
        ({"absent": True}, {}, True),
        ({"absent": True}, {"c": None}, True),
        ({"absent": True}, {"c": "client-credentials"}, False),
        ({"absent": True}, {"c": []}, False),
    ],
)
def test_operators(condition: Any, claims: dict[str, Any], expected: bool) -> None:
    assert holds({"c": condition}, claims) is expected


def test_every_condition_must_hold() -> None:
    raw = {"gty": {"absent": True}, "email_verified": True, "azp": ["spa"]}
    ok = {"email_verified": True, "azp": "spa"}
    assert holds(raw, ok)
    conditions = compiled(raw)
    failure = conditions.first_failure({**ok, "gty": "client-credentials"})
    assert failure is not None
    assert (failure.claim, failure.operator) == ("gty", "absent")
    failure = conditions.first_failure({**ok, "azp": "other"})
    assert failure is not None
    assert failure.describe() == "azp one_of"


def test_no_conditions_always_hold() -> None:
    conditions, problems = parse_conditions(None, "conditions")
    assert problems == []
    assert not conditions
    assert conditions.first_failure({}) is None


def test_namespaced_claim_names_are_taken_literally() -> None:
    raw = {"https://example.test/org_id": "org_1"}
    assert holds(raw, {"https://example.test/org_id": "org_1"})
    # Never read as a path into nested objects.
    assert not holds(raw, {"https://example": {"test/org_id": "org_1"}})
    assert not holds({"a.b": "x"}, {"a": {"b": "x"}})


# -- type confusion --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value"),
    [
        (True, "true"),
        (True, 1),
        (True, [1]),
        (False, 0),
        (False, ""),
        (1, True),
        (1, "1"),
        (1, 1.0),
        (0, False),
        ("1", 1),
        ("true", True),
        ("a", {"a": 1}),
        ("a", [["a"]]),
        (["a"], {"a": "a"}),
        ({"pattern": "1+"}, 111),
        ({"pattern": "True"}, True),
        ({"pattern": "a"}, ["x", ["a"]]),
        ({"pattern": ".*"}, {"a": "b"}),
    ],
)
def test_types_must_match_exactly(condition: Any, value: Any) -> None:
    assert not holds({"c": condition}, {"c": value})


def test_booleans_and_numbers_match_their_own_type() -> None:
    assert holds({"c": True}, {"c": True})
    assert holds({"c": False}, {"c": False})
    assert holds({"c": 3}, {"c": 3})
    assert holds({"c": [1, True]}, {"c": True})
    assert not holds({"c": [1, 2]}, {"c": True})


def test_unicode_is_compared_code_point_by_code_point() -> None:
    composed, decomposed = "\u00e9", "e\u0301"  # é, as one code point and as two
    assert holds({"c": composed}, {"c": composed})
    assert not holds({"c": composed}, {"c": decomposed})
    # \d means 0-9: Arabic-Indic digits are not digits of an org id.
    assert holds({"c": {"pattern": r"org_\d+"}}, {"c": "org_42"})
    assert not holds({"c": {"pattern": r"org_\d+"}}, {"c": "org_\u0664\u0662"})
    # Case matters; a dotless or Kelvin-sign look-alike is not the letter.
    assert not holds({"c": "kid"}, {"c": "\u212aid"})


@pytest.mark.parametrize(
    ("pattern", "ascii_value", "unicode_value"),
    [
        (r"\d+", "0123456789", "\u0663\u0664"),  # Arabic-Indic digits
        (r"\d+", "42", "\uff14\uff12"),  # fullwidth digits
        (r"\w+", "Az_09", "\u00e9t\u00e9"),  # é
        (r"\w+", "abc", "\u0430\u0431\u0441"),  # Cyrillic look-alikes of abc
        (r"a\sb", "a b", "a\u00a0b"),  # no-break space
        (r"a\sb", "a\tb", "a\u2003b"),  # em space
        (r"[[:alpha:]]+", "abc", "\u00e9"),
        (r"x\b.*", "x-y", "x\u00e9"),  # \b: é is not a word character, so x|é is a boundary
    ],
)
def test_pattern_classes_are_ascii(pattern: str, ascii_value: str, unicode_value: str) -> None:
    """RE2's Perl and POSIX classes are ASCII-only, as documented (no flag turns that off)."""
    assert holds({"c": {"pattern": pattern}}, {"c": ascii_value})
    if pattern.startswith("x\\b"):
        assert holds({"c": {"pattern": pattern}}, {"c": unicode_value})
    else:
        assert not holds({"c": {"pattern": pattern}}, {"c": unicode_value})


def test_unicode_classes_and_case_folding_are_explicit() -> None:
    # Unicode only where the pattern asks for it: \p{...} classes, and (?i), which folds case
    # per Unicode (as documented: K, the Kelvin sign, is a k then; write [Kk] for ASCII only).
    assert holds({"c": {"pattern": r"\pL+"}}, {"c": "\u00e9t\u00e9"})
    assert holds({"c": {"pattern": "(?i)k"}}, {"c": "\u212a"})
    assert not holds({"c": {"pattern": "[Kk]"}}, {"c": "\u212a"})


def test_huge_values_never_match_a_pattern_and_are_quick() -> None:
    conditions = compiled({"c": {"pattern": "[a-z]+"}})
    assert conditions.first_failure({"c": "a" * MAX_MATCH_LENGTH}) is None
    started = time.perf_counter()
    assert conditions.first_failure({"c": "a" * (MAX_MATCH_LENGTH + 1)}) is not None
    assert conditions.first_failure({"c": ["a" * 100_000] * 100}) is not None
    assert time.perf_counter() - started < 0.5


# -- compiling: problems -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ({"matches": "x"}, "unknown operator matches"),
        ({"equals": "x", "pattern": "x"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"pattern": "("}, "not a valid regular expression"),
        ({"pattern": "[a-"}, "not a valid regular expression"),
        ({"pattern": ""}, "non-empty string"),
        ({"pattern": 7}, "non-empty string"),
        # What RE2 cannot compile: backreferences, lookaround, conditionals, possessive
        # quantifiers, comments and the flags RE2 does not have (x, u, a, L).
        ({"pattern": r"(a)\1"}, "not a valid regular expression"),
        ({"pattern": "(?P<x>a)(?P=x)"}, "not a valid regular expression"),
        ({"pattern": "(?!.*@clients$).+"}, "not a valid regular expression"),
        ({"pattern": "(?<=a)b"}, "not a valid regular expression"),
        ({"pattern": "(?(1)a|b)"}, "not a valid regular expression"),
        ({"pattern": "a++"}, "not a valid regular expression"),
        ({"pattern": "(a+)(?#c)+"}, "not a valid regular expression"),
        ({"pattern": "(?x)(a+) +"}, "not a valid regular expression"),
        ({"pattern": r"(?x) ( [a-z0-9.]+ ) + @example\.com"}, "not a valid regular expression"),
        ({"pattern": r"(?x:([a-z]+) +)@example\.com"}, "not a valid regular expression"),
        ({"pattern": r"(?u)org_\d+"}, "not a valid regular expression"),
        ({"pattern": r"org_(?u:\d)+"}, "not a valid regular expression"),
        ({"pattern": r"(?a)org_\d+"}, "not a valid regular expression"),
        ({"pattern": r"(?L)org_\w+"}, "not a valid regular expression"),
        ({"pattern": "a{1001}"}, "not a valid regular expression"),
        ({"pattern": r"(?:\pL{1,100}){1,10}"}, "not a valid regular expression"),  # too large
        ({"pattern": "\\"}, "not a valid regular expression"),
        ({"pattern": "\ud800"}, "not valid Unicode"),
        ({"pattern": "x" * 2000}, "longer than"),
        ({"present": False}, "use absent = true"),
        ({"absent": "yes"}, "absent must be true"),
        ({"one_of": []}, "non-empty list"),
        ({"one_of": "a"}, "non-empty list"),
        ([], "non-empty list"),
        (1.5, "strings, whole numbers or booleans"),
        ([1.5], "strings, whole numbers or booleans"),
        (["a", {"b": 1}], "strings, whole numbers or booleans"),
        ({"equals": ["a"]}, "strings, whole numbers or booleans"),
    ],
)
def test_bad_conditions_are_refused(condition: Any, problem: str) -> None:
    _, problems = parse_conditions({"c": condition}, "upstreams[0].conditions")
    assert len(problems) == 1, problems
    assert problems[0].startswith("upstreams[0].conditions.c: ")
    assert problem in problems[0]


@pytest.mark.parametrize(
    "pattern",
    [
        "org_[A-Za-z0-9]+",
        "^org_[A-Za-z0-9]+$",
        "(ab)+",
        "(?:ab)*c",
        "(a+)?",
        "[(+|]+",
        "a{2,5}",
        "(ab){1}",
        "(?i)auth0\\|[0-9a-f]{24}",
        "[^@]+@example\\.test",
        "(?P<org>org_[a-z]+)",
        "(?<org>org_[a-z]+)",
        "x{",
        r"\Aorg_\d+\z",
        r"\p{Greek}+",
        # Nested quantifiers are harmless under RE2 (below): no need to refuse them any more.
        "(a+)+",
        "(a|aa)*",
        r"^(\w+\s?)*$",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    compiled({"c": {"pattern": pattern}})


def test_every_invalid_pattern_is_a_problem_reported_with_the_others() -> None:
    _, problems = parse_conditions(
        {"a": {"pattern": "(?u)x"}, "b": {"pattern": "(?x)(a+) +"}, "c": {"pattern": "ok"}},
        "upstreams[0].conditions",
    )
    assert [p.split(":")[0] for p in problems] == [
        "upstreams[0].conditions.a",
        "upstreams[0].conditions.b",
    ]
    assert "invalid perl operator: (?u" in problems[0]  # RE2's reason, then ours
    assert "backreferences, lookaround" in problems[0]


# -- patterns run in linear time (RE2) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        # Exponential under a backtracking engine (Python's re): seconds to years.
        ("(a+)+", "a" * 40 + "!"),
        ("(a|aa)*", "a" * 40 + "!"),
        (r"(\w+\s?)+", "a" * 500 + "!"),
        ("(.*a){20}", "a" * 500 + "!"),
        (r"([a-z0-9.]+)+@example\.com", "a" * 60 + "@gmail.com"),
        # Polynomial: \w*\w*\w*\w*\w*@x took 10 s on 200 characters.
        (r"\w*\w*\w*\w*\w*\w*@x", "a" * MAX_MATCH_LENGTH),
        (r".*.*.*.*.*.*x", "a" * MAX_MATCH_LENGTH),
        ("[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*[a-z]*!", "a" * MAX_MATCH_LENGTH),
    ],
)
def test_patterns_that_backtrack_catastrophically_in_re_are_linear_in_re2(
    pattern: str, value: str
) -> None:
    conditions = compiled({"c": {"pattern": pattern}})
    (condition,) = conditions.conditions
    # The guarantee is RE2's: a compiled RE2 object matches in time linear in the value.
    assert isinstance(condition.regex, re2._Regexp)
    started = time.perf_counter()
    assert conditions.first_failure({"c": value}) is condition
    assert conditions.first_failure({"c": [value] * 20}) is condition
    # A backstop only (each of these takes minutes or more with re, microseconds with RE2).
    assert time.perf_counter() - started < 1.0


def test_the_flags_re2_has_work() -> None:
    assert holds({"c": {"pattern": "(?i)org_[a-z]+"}}, {"c": "ORG_Abc"})
    assert holds({"c": {"pattern": "(?s)a.b"}}, {"c": "a\nb"})
    assert not holds({"c": {"pattern": "a.b"}}, {"c": "a\nb"})
    # Full match: $ is the very end (RE2 has no "before a final newline"), alternation included.
    assert not holds({"c": {"pattern": "org_a$"}}, {"c": "org_a\n"})
    assert holds({"c": {"pattern": "a|ab"}}, {"c": "ab"})


def test_a_value_that_is_not_valid_unicode_never_matches() -> None:
    # JSON lets a token carry a lone surrogate ("\ud800"); RE2 reads UTF-8: no match, no crash.
    conditions = compiled({"c": {"pattern": ".*"}})
    assert conditions.first_failure({"c": "a\ud800"}) is not None
    assert conditions.first_failure({"c": ["a\ud800", "b"]}) is None


def test_problems_name_a_namespaced_claim_as_toml_does() -> None:
    _, problems = parse_conditions({"https://x.test/org": {"bad": 1}}, "clients[0].conditions")
    assert problems[0].startswith('clients[0].conditions."https://x.test/org": unknown operator')


def test_a_condition_table_must_be_a_table() -> None:
    _, problems = parse_conditions(["gty"], "upstreams[0].conditions")
    assert problems == ["upstreams[0].conditions: must be a table of claim = condition"]


# -- in the settings -----------------------------------------------------------------------------


def config(**edits: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    for section, values in edits.items():
        raw[section][0].update(values)
    return raw


def parse(raw: dict[str, Any]) -> Any:
    return parse_settings(raw, env={}, base_dir=Path("/etc/token-exchange"))


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(raw)
    return raised.value.problems


def test_settings_compile_conditions_and_modes() -> None:
    settings = parse(
        config(
            upstreams={"conditions": {"gty": {"absent": True}}, "conditions_mode": "audit"},
            clients={"subject_conditions": {"azp": ["spa-app"]}},
        )
    )
    assert settings.upstreams[0].conditions.mode == "audit"
    assert settings.upstreams[0].conditions.conditions[0].claim == "gty"
    client = settings.clients[0]
    assert client.subject_conditions.mode == "enforce"
    assert client.subject_conditions.first_failure({"azp": "spa-app"}) is None
    assert not client.actor_conditions
    assert client.max_delegation_depth == 4


def test_every_condition_problem_is_reported_at_once() -> None:
    problems = problems_of(
        config(
            upstreams={
                "conditions": {"a": {"regex": "x"}, "b": {"pattern": "(?x)(x+) +"}},
                "conditions_mode": "warn",
            },
            clients={
                "subject_conditions": {"c": {"pattern": "["}},
                "subject_conditions_mode": "log",
            },
        )
    )
    upstream = 'upstreams["https://tenant.example.test/"]'
    assert any(p.startswith(f"{upstream}.conditions.a: unknown operator regex") for p in problems)
    assert any(p.startswith(f"{upstream}.conditions.b: pattern is not") for p in problems)
    assert f'{upstream}.conditions_mode: must be "enforce" or "audit"' in problems
    assert any(
        p.startswith('clients["spa"].subject_conditions.c: pattern is not') for p in problems
    )
    assert 'clients["spa"].subject_conditions_mode: must be "enforce" or "audit"' in problems
    assert len(problems) == 5, problems


def test_a_delegating_client_must_bind_its_actor_tokens() -> None:
    problems = problems_of(config(clients={"allow_delegation": True}))
    assert len(problems) == 1
    assert problems[0].startswith('clients["spa"].actor_conditions: is required for a client with')
    settings = parse(
        config(clients={"allow_delegation": True, "actor_conditions": {"azp": "agent-app"}})
    )
    assert settings.clients[0].actor_conditions


@pytest.mark.parametrize(
    "actor_conditions",
    [
        # True of every client-credentials token of the tenant, whoever it was issued to.
        {"gty": "client-credentials"},
        {"gty": "client-credentials", "scope": "agent"},
        # Identity claims, but conditions that do not say whose token it is.
        {"azp": {"present": True}},
        {"sub": {"pattern": ".+@clients"}},
        {"client_id": {"absent": True}},
        {"aud": "agent-app"},
    ],
)
def test_a_delegating_clients_actor_conditions_must_name_its_own_identity(
    actor_conditions: dict[str, Any],
) -> None:
    problems = problems_of(
        config(
            clients={
                "client_id": "agent-n",
                "allow_delegation": True,
                "actor_conditions": actor_conditions,
            }
        )
    )
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        'clients["agent-n"].actor_conditions: must bind the actor tokens of'
    )
    assert "client agent-n" in problems[0]
    assert "azp or client_id or sub" in problems[0]


@pytest.mark.parametrize(
    "actor_conditions",
    [
        {"sub": {"equals": "agent-app@clients"}},
        {"sub": {"one_of": ["agent-app@clients"]}, "scope": {"pattern": ".*"}},
        {"azp": "agent-app", "sub": "agent-app@clients", "gty": "client-credentials"},
    ],
)
def test_actor_conditions_naming_the_actor_are_accepted(
    actor_conditions: dict[str, Any],
) -> None:
    settings = parse(
        config(clients={"allow_delegation": True, "actor_conditions": actor_conditions})
    )
    assert config_warnings(settings) == []


@pytest.mark.parametrize(
    "actor_conditions",
    [
        {"azp": "agent-app", "gty": "client-credentials"},
        {"client_id": ["agent-app", "agent-app-2"]},
        {"azp": "agent-app", "sub": {"pattern": ".+@clients"}},
    ],
)
def test_actor_conditions_that_leave_the_actors_sub_unbound_are_warned_about(
    actor_conditions: dict[str, Any],
) -> None:
    """Issue 21, 2: act states the actor token's sub. azp or client_id name the application
    that obtained it: a user who signs in through it passes as the agent (act.sub = the user),
    and so does a token of ours minted to the agent for another user."""
    settings = parse(
        config(
            clients={
                "client_id": "agent",
                "allow_delegation": True,
                "actor_conditions": actor_conditions,
            }
        )
    )
    (warning,) = config_warnings(settings)
    assert warning.startswith(
        'clients["agent"].actor_conditions: client agent binds its actor tokens without their sub'
    )
    assert 'bind sub (Auth0 client-credentials tokens: sub = "<' in warning


def two_issuers(raw: dict[str, Any], own: bool = False) -> dict[str, Any]:
    """``raw`` with a second upstream: another tenant, or our own issuer (chained delegation)."""
    raw["upstreams"][0]["subject_prefix"] = "t|"
    other = (
        # The tokens of ours that the agent, an API too, receives and presents back.
        {"issuer": raw["issuer"], "audiences": ["agent"], "jwks_uri": raw["issuer"] + "/jwks"}
        if own
        else {"issuer": "https://other.example.test/", "subject_prefix": "o|", "audiences": ["x"]}
    )
    raw["upstreams"].append(other)
    return raw


@pytest.mark.parametrize("own", [False, True])
@pytest.mark.parametrize(
    "iss",
    [
        None,
        {"pattern": "https://.*"},
        ["https://tenant.example.test/", "https://other.example.test/"],
    ],
)
def test_with_several_upstreams_actor_conditions_must_name_one_issuer(own: bool, iss: Any) -> None:
    """Issue 21, 3: with two upstreams, another tenant's azp = agent-a token passed."""
    actor_conditions = {"sub": "agent-app@clients", **({"iss": iss} if iss else {})}
    raw = config(
        clients={
            "client_id": "agent",
            "allow_delegation": True,
            "actor_conditions": actor_conditions,
        }
    )
    parse(raw)  # one upstream: its tokens are the only ones verified
    (problem,) = problems_of(two_issuers(raw, own))
    assert problem.startswith(
        'clients["agent"].actor_conditions: must name the one issuer of the actor tokens of '
        "client agent when several upstreams are configured"
    )
    for one in ("https://tenant.example.test/", ["https://tenant.example.test/"]):
        raw["clients"][0]["actor_conditions"]["iss"] = one
        assert config_warnings(parse(raw)) == []
    # Audit mode refuses nothing anyway, and is warned about as such.
    raw["clients"][0]["actor_conditions"] = actor_conditions
    raw["clients"][0]["actor_conditions_mode"] = "audit"
    (warning,) = config_warnings(parse(raw))
    assert "actor_conditions_mode" in warning


def test_an_actor_issuer_that_is_no_upstream_is_warned_about() -> None:
    raw = config(
        clients={
            "client_id": "agent",
            "allow_delegation": True,
            # Auth0's iss ends with a slash: no actor token would ever pass.
            "actor_conditions": {"iss": "https://tenant.example.test", "sub": "a@clients"},
        }
    )
    (warning,) = config_warnings(parse(raw))
    assert warning == (
        'clients["agent"].actor_conditions.iss: https://tenant.example.test is not an '
        "[[upstreams]] issuer: no actor token from it is ever verified"
    )


def test_actor_conditions_in_audit_mode_need_no_identity_but_are_warned_about() -> None:
    settings = parse(
        config(
            clients={
                "client_id": "agent-n",
                "allow_delegation": True,
                "actor_conditions": {"gty": "client-credentials"},
                "actor_conditions_mode": "audit",
            }
        )
    )
    (warning,) = config_warnings(settings)
    assert warning.startswith(
        'clients["agent-n"].actor_conditions_mode: "audit": client agent-n may'
    )


def test_subject_conditions_that_will_see_our_own_tokens_are_warned_about() -> None:
    raw = config(
        clients={
            "client_id": "agent",
            "allow_delegation": True,
            "actor_conditions": {"iss": MINIMAL["upstreams"][0]["issuer"], "sub": "a@clients"},
            "subject_conditions": {"gty": {"absent": True}},
        }
    )
    # Without our own issuer as an upstream, no token of ours is ever a subject token.
    assert config_warnings(parse(raw)) == []
    own = {
        "issuer": raw["issuer"],
        "audiences": ["agent"],  # the agent is an API too: its tokens come back from it
        "jwks_uri": raw["issuer"] + "/.well-known/jwks.json",
    }
    raw["upstreams"][0]["subject_prefix"] = "t|"
    raw["upstreams"].append(own)
    (warning,) = config_warnings(parse(raw))
    assert warning.startswith('clients["agent"].subject_conditions: client agent may present')
    assert "evaluated on the claims we minted" in warning
    # A client that may not delegate is refused our tokens: nothing to warn about (but that
    # no client presents back the tokens for "agent").
    raw["clients"][0] = {
        "client_id": "spa",
        "audiences": ["https://api.example.test"],
        "subject_conditions": {"gty": {"absent": True}},
    }
    (warning,) = config_warnings(parse(raw))
    assert warning.startswith('upstreams["https://sts.example.test"].audiences: agent: no client')


def test_actor_conditions_without_delegation_are_a_mistake() -> None:
    problems = problems_of(config(clients={"actor_conditions": {"azp": "x"}}))
    assert problems == ['clients["spa"].actor_conditions: only for a client with allow_delegation']


@pytest.mark.parametrize("depth", [0, 11, "3", True])
def test_max_delegation_depth_is_bounded(depth: Any) -> None:
    problems = problems_of(config(clients={"max_delegation_depth": depth}))
    assert problems == ['clients["spa"].max_delegation_depth: must be a whole number from 1 to 10']


def test_our_own_issuer_as_upstream_keeps_subjects_unprefixed() -> None:
    raw = config()
    raw["upstreams"][0]["subject_prefix"] = "t|"
    own = {
        "issuer": raw["issuer"],
        "audiences": ["https://api.example.test"],
        "jwks_uri": raw["issuer"] + "/.well-known/jwks.json",
    }
    # Our own issuer needs no prefix beside another upstream (its subjects are minted ones).
    parse({**raw, "upstreams": [*raw["upstreams"], own]})
    parse({**raw, "upstreams": [raw["upstreams"][0] | {"subject_prefix": ""}, own]})
    prefixed = own | {"subject_prefix": "s|"}
    problems = problems_of({**raw, "upstreams": [*raw["upstreams"], prefixed]})
    assert problems == [
        'upstreams["https://sts.example.test"].subject_prefix: must be empty for our own issuer'
    ]
    undiscoverable = {k: v for k, v in own.items() if k != "jwks_uri"}
    problems = problems_of({**raw, "upstreams": [*raw["upstreams"], undiscoverable]})
    assert problems == [
        'upstreams["https://sts.example.test"].jwks_uri: is required for our own issuer '
        "(https://sts.example.test/.well-known/jwks.json): we serve no OpenID Connect discovery"
    ]


@pytest.mark.parametrize(
    ("issuer", "warned"),
    [
        ("https://example.eu.auth0.com", True),
        ("https://EXAMPLE.auth0.com", True),
        ("https://example.eu.auth0.com/", False),
        ("https://login.example.test", False),
        ("https://auth0.com.evil.test", False),
    ],
)
def test_auth0_issuer_without_its_trailing_slash_is_warned_about(issuer: str, warned: bool) -> None:
    raw = config()
    raw["upstreams"][0]["issuer"] = issuer
    warnings = config_warnings(parse(raw))
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].startswith(f"upstreams[\"{issuer}\"].issuer: Auth0 issuers end with '/'")


def test_example_config_carries_the_auth0_recipe() -> None:
    from .test_settings import EXAMPLE, EXAMPLE_ENV, load_settings

    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    upstream = settings.upstreams[0].conditions
    assert upstream.mode == "enforce"
    assert upstream.first_failure({"gty": "client-credentials"}) is not None
    spa = settings.clients[0].subject_conditions
    assert spa.first_failure({"azp": "auth0-spa-client-id"}) is None
    assert spa.first_failure({"azp": "another-app"}) is not None
    assert settings.clients[2].actor_conditions
    assert config_warnings(settings) == []


def test_the_readme_recipe_is_a_valid_config() -> None:
    import re
    import tomllib

    from .test_settings import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Recipe: Auth0 and a SPA") :]
    block = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    raw = dict(tomllib.loads(block))
    raw["issuer"] = "https://sts.example.com"
    api = {"audience": "https://countries.example.com", "scopes": ["r"], "permissions": "w"}
    raw["apis"] = [api]
    raw["permissions"] = {"w": {"type": "http", "url": "https://app.example.test/perms"}}
    settings = parse(raw)
    conditions = settings.upstreams[0].conditions
    user = {"email_verified": True, "org_id": "org_9aZ"}
    assert conditions.first_failure(user) is None
    assert conditions.first_failure({**user, "gty": "client-credentials"}) is not None
    assert settings.clients[0].subject_conditions.conditions[0].claim == "azp"


def test_the_readme_delegation_recipe_binds_what_lands_in_act() -> None:
    """Issue 21, 2: the recipe bound azp alone, and a user's token signed in through the
    agent's application passed as the agent's actor (act.sub = that user)."""
    import re
    import tomllib

    from .test_settings import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Delegation") :]
    block = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    raw = dict(tomllib.loads(block))
    app = "<the Auth0 client id of the agent's M2M application>"
    issuer = raw["clients"][0]["actor_conditions"]["iss"]
    raw |= {
        "issuer": "https://sts.example.com",
        "upstreams": [{"issuer": issuer, "audiences": ["https://sts.example.com"]}],
        "apis": [
            {"audience": "https://countries.example.com", "scopes": ["r"], "permissions": "w"}
        ],
        "permissions": {"w": {"type": "http", "url": "https://app.example.test/perms"}},
    }
    settings = parse_settings(raw, env={"AGENT_SECRET": "s"}, base_dir=Path("/etc/te"))
    assert config_warnings(settings) == []
    conditions = settings.clients[0].actor_conditions
    agent = {"iss": issuer, "sub": f"{app}@clients", "azp": app, "gty": "client-credentials"}
    assert conditions.first_failure(agent) is None
    # A user who signed in through the agent's application; another tenant's token.
    assert conditions.first_failure({**agent, "sub": "auth0|alice"}) is not None
    assert conditions.first_failure({**agent, "iss": "https://other.example.test/"}) is not None
    # Our own issuer beside the tenant (chains): the recipe names its one issuer.
    raw["upstreams"].append(
        {
            "issuer": raw["issuer"],
            "audiences": ["https://countries.example.com"],
            "jwks_uri": raw["issuer"] + "/.well-known/jwks.json",
        }
    )
    parse_settings(raw, env={"AGENT_SECRET": "s"}, base_dir=Path("/etc/te"))


def test_tokens_of_ours_that_no_client_may_present_back_are_warned_about() -> None:
    """A token of ours comes back only from the client its aud names (issue 21, 1): listing
    an API that is no delegating client among our own upstream's audiences is a dead end, as
    after an upgrade from chains that passed the countries API's tokens from agent to agent."""
    issuer = MINIMAL["upstreams"][0]["issuer"]
    raw = config(
        clients={
            "client_id": "agent",
            "type": "confidential",
            "secret_env": "AGENT_SECRET",
            "allow_delegation": True,
            "actor_conditions": {"iss": issuer, "sub": "agent-app@clients"},
        }
    )
    two_issuers(raw, own=True)
    raw["upstreams"][1]["audiences"] = ["agent", "https://api.example.test"]
    env = {"AGENT_SECRET": "s"}
    (warning,) = config_warnings(parse_settings(raw, env=env, base_dir=Path("/etc/te")))
    assert warning == (
        'upstreams["https://sts.example.test"].audiences: https://api.example.test: no client '
        "with allow_delegation is that API (client_id, or introspects it), so no token of ours "
        "for it is ever accepted back (a token of ours comes back only from the client its aud "
        "names)"
    )
    # The API registered as a client (it introspects its tokens) that may delegate.
    raw["clients"][0]["introspects"] = ["https://api.example.test"]
    assert config_warnings(parse_settings(raw, env=env, base_dir=Path("/etc/te"))) == []
