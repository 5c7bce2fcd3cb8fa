"""The JSON Schema's ``[permissions.NAME]`` (issue 21, item 9): a mistake inside a source is
reported against that source's type and names the bad key, never the other types' branches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema.exceptions import ValidationError, best_match

SCHEMA = Path(__file__).resolve().parents[2] / "token_exchange" / "config.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def document(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "issuer": "https://sts.example.test",
        "upstreams": [
            {"issuer": "https://issuer.test/", "audiences": ["https://sts.example.test"]}
        ],
        "clients": [{"client_id": "spa", "audiences": ["https://api.example.test"]}],
        "apis": [{"audience": "https://api.example.test", "scopes": ["read"], "permissions": "x"}],
        "permissions": {"x": source},
    }


def everything(errors: list[ValidationError]) -> list[ValidationError]:
    """Every error with the errors under it (a validator reports a branch's through context)."""
    found = []
    for error in errors:
        found.append(error)
        found.extend(everything(list(error.context or [])))
    return found


def messages(validator: jsonschema.Draft7Validator, source: dict[str, Any]) -> list[str]:
    return [e.message for e in everything(list(validator.iter_errors(document(source))))]


OTHER_BRANCHES = ("'static' was expected", "'authzen' was expected", "'http' was expected")


@pytest.mark.parametrize(
    "source",
    [
        {"type": "http", "url": "https://webapp.test/p", "tiemout": 2.0},
        {"type": "static", "tiemout": 2.0},
        {"type": "authzen", "url": "https://pdp.test", "tiemout": 2.0},
    ],
    ids=["http", "static", "authzen"],
)
def test_an_unknown_key_is_named_and_only_its_own_type_is_blamed(
    validator: jsonschema.Draft7Validator, source: dict[str, Any]
) -> None:
    errors = list(validator.iter_errors(document(source)))
    best = best_match(errors)
    assert best is not None
    assert "'tiemout' was unexpected" in best.message
    assert list(best.absolute_path) == ["permissions", "x"]
    found = messages(validator, source)
    assert not [m for m in found if any(other in m for other in OTHER_BRANCHES)], found
    assert not [m for m in found if "is not valid under any of the given schemas" in m], found
    assert len(found) == len(set(found)), found  # each problem once


def test_a_wrong_type_points_at_the_key(validator: jsonschema.Draft7Validator) -> None:
    source = {"type": "http", "url": "https://webapp.test/p", "timeout": "slow"}
    best = best_match(validator.iter_errors(document(source)))
    assert best is not None
    assert list(best.absolute_path) == ["permissions", "x", "timeout"]
    assert "'slow' is not of type 'number'" in best.message
    found = messages(validator, source)
    assert not [m for m in found if any(other in m for other in OTHER_BRANCHES)], found


def test_a_missing_required_key_is_named(validator: jsonschema.Draft7Validator) -> None:
    best = best_match(validator.iter_errors(document({"type": "authzen"})))
    assert best is not None
    assert best.message == "'url' is a required property"


@pytest.mark.parametrize("source", [{"type": "htpp", "url": "https://a.test"}, {"url": "x"}])
def test_a_missing_or_unknown_type_is_named(
    validator: jsonschema.Draft7Validator, source: dict[str, Any]
) -> None:
    found = list(validator.iter_errors(document(source)))
    best = best_match(found)
    assert best is not None
    if "type" in source:
        assert list(best.absolute_path) == ["permissions", "x", "type"]
        assert best.message == "'htpp' is not one of ['authzen', 'http', 'static']"
    else:
        assert best.message == "'type' is a required property"
    assert len(everything(found)) == 1  # that alone: no branch is tried without a type


@pytest.mark.parametrize(
    "source",
    [
        {"type": "http", "url": "https://webapp.test/p", "timeout": 2.0},
        {"type": "static", "rules": [{"subject": "*", "allow": False}]},
        {"type": "authzen", "url": "https://pdp.test"},
    ],
)
def test_valid_sources_validate(
    validator: jsonschema.Draft7Validator, source: dict[str, Any]
) -> None:
    assert messages(validator, source) == []
