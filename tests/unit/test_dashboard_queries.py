"""The Grafana dashboard and the Prometheus alerting rules in deploy/ (issue 27): every query is
PromQL, names a metric the service really exports (from its own registry, as a scrape reads
it) and only labels that metric has; the board shows what the issue asks for, laid out on
Grafana's 24-column grid without overlaps."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from token_exchange.obs.metrics import Metrics, SigningKeyCollector

from ..fakes import signing_key

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "token-exchange.json"
RULES = ROOT / "deploy" / "prometheus" / "token-exchange-alerts.yml"

#: Labels Prometheus adds to every scraped series, and histograms' bucket bound.
TARGET_LABELS = {"job", "instance"}
#: Series Prometheus itself writes for every scrape target.
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
#: Grafana's variables, as Grafana would substitute them.
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".+"}


def exported() -> dict[str, set[str]]:
    """Every sample name a scrape of the service can hold, with its labels."""
    registry = CollectorRegistry()
    Metrics(registry)
    now = time.time()
    keys = [signing_key(now=now - 60), replace(signing_key(now=now), activate_at=now + 3600)]

    class Keys:
        def signing_key(self) -> Any:
            return keys[0]

        def published(self) -> list[Any]:
            return keys

    registry.register(SigningKeyCollector(Keys()))
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set(getattr(family, "_labelnames", ())) | {
            label for sample in family.samples for label in sample.labels
        }
        labels |= _declared_labels(family.name)
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
        }.get(family.type, [""])
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _declared_labels(name: str) -> set[str]:
    """The label names a metric of ``Metrics`` is declared with (none sampled yet)."""
    metrics = Metrics(CollectorRegistry())
    for value in vars(metrics).values():
        if getattr(value, "_name", None) == name:
            return set(value._labelnames)
    return set()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["definition"]


def rule_queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    if expr.startswith("label_values("):  # Grafana's, not PromQL: its first argument is
        expr = expr.removeprefix("label_values(").split(",")[0]
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


ALL_QUERIES = [*dashboard_queries(), *rule_queries()]


@pytest.mark.parametrize(("where", "expr"), ALL_QUERIES)
def test_every_query_names_metrics_and_labels_the_service_exports(where: str, expr: str) -> None:
    names = {**exported(), **PROMETHEUS_SERIES}
    found = selectors(expr)
    assert found, where
    for selector in found:
        assert selector.name in names, (where, selector.name)
        for matcher in selector.matchers.matchers:
            assert matcher.name in names[selector.name] | TARGET_LABELS, (where, matcher.name)


def test_the_board_shows_what_an_on_call_engineer_looks_for() -> None:
    used = {s.name for _, expr in dashboard_queries() for s in selectors(expr)}
    assert used >= {
        "token_exchange_exchanges_total",  # exchanges by outcome
        "token_exchange_request_refusals_total",  # refusals by reason
        "token_exchange_token_refusals_total",
        "token_exchange_request_seconds_bucket",  # latency percentiles
        "token_exchange_dependency_in_flight",
        "token_exchange_dependency_breaker_state",
        "token_exchange_dependency_refusals_total",
        "token_exchange_requests_shed_total",
        "token_exchange_cache_lookups_total",  # hit ratio
        "token_exchange_signing_key_age_seconds",
        "token_exchange_signing_key_next_activation_timestamp_seconds",
        "token_exchange_jwks_loaded",
    }
    alerts = {name for name, _ in rule_queries()}
    assert alerts >= {
        "TokenExchangeDependencyBreakerOpen",
        "TokenExchangeShedding",
        "TokenExchangeRefusalSpike",
        "TokenExchangeSigningKeyTooOld",
        "TokenExchangeUpstreamKeysNotLoaded",
    }


def test_the_panels_tile_the_grid() -> None:
    board = json.loads(DASHBOARD.read_text())
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    # Every panel queries the data source the board is given (no UID of ours baked in).
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
