"""The permissions answer cache in-process: what a key covers, TTLs, refusals, errors and stale
answers (RFC 9111 Cache-Control), over a memory store and a stub source."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from token_exchange.oauth.clock import ManualClock
from token_exchange.oauth.errors import UpstreamUnavailable
from token_exchange.sources.permissions import CachingPermissionSource, Decision, PermissionRequest
from token_exchange.sources.store import MemoryStore

from ..fakes import COUNTRIES


class Source:
    """A permission source whose answer each test sets; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.decision: Decision | Exception = Decision(allow=True, ttl=60)

    def decide(self, request: PermissionRequest) -> Decision:
        self.calls += 1
        if isinstance(self.decision, Exception):
            raise self.decision
        return self.decision


def question(clock: ManualClock, **overrides: Any) -> PermissionRequest:
    fields: dict[str, Any] = {
        "subject": "auth0|42",
        "issuer": "https://tenant.test/",
        "client_id": "spa",
        "audience": COUNTRIES,
        "scopes": ("countries:read",),
        "resources": (f"{COUNTRIES}/countries/nl",),
        "authorization_details": (),
        "subject_claims": {"sub": "auth0|42"},
        "valid_until": clock.now + 3600,
    }
    fields.update(overrides)
    return PermissionRequest(**fields)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def cached(source: Source, clock: ManualClock) -> CachingPermissionSource:
    store = MemoryStore(clock=clock)
    return CachingPermissionSource(
        source, store, name="webapp", max_ttl=300, refusal_ttl=10, stale_if_error=0, clock=clock
    )


def test_an_answer_is_reused_for_its_ttl(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    cached.decide(question(clock))
    clock.now += 59
    cached.decide(question(clock))
    assert source.calls == 1
    clock.now += 2
    cached.decide(question(clock))
    assert source.calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "auth0|7"},
        {"issuer": "https://other.test/"},
        {"client_id": "other"},
        {"audience": "https://other.test"},
        {"scopes": ("countries:write",)},
        {"resources": (f"{COUNTRIES}/countries/de",)},
        {"authorization_details": ({"type": "country_access"},)},
        {"actor": {"issuer": "https://tenant.test/", "subject": "svc"}},
    ],
)
def test_the_key_covers_everything_the_answer_depends_on(
    cached: CachingPermissionSource, source: Source, clock: ManualClock, change: dict[str, Any]
) -> None:
    cached.decide(question(clock))
    cached.decide(question(clock, **change))
    assert source.calls == 2


def test_one_actor_sub_through_two_applications_is_two_agents(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    # An actor token that is a user's, obtained by two agent applications: same (iss, sub).
    def via(client_id: str) -> dict[str, Any]:
        return {"issuer": "https://tenant.test/", "subject": "auth0|7", "client_id": client_id}

    cached.decide(question(clock, actor=via("summarizer")))
    cached.decide(question(clock, actor=via("summarizer")))
    assert source.calls == 1
    cached.decide(question(clock, actor=via("mailer")))
    assert source.calls == 2


def test_order_of_scopes_and_resources_does_not_matter(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    cached.decide(
        question(clock, scopes=("a", "b"), resources=("https://x.test/1", "https://x.test/2"))
    )
    cached.decide(
        question(clock, scopes=("b", "a"), resources=("https://x.test/2", "https://x.test/1"))
    )
    assert source.calls == 1


def test_ttl_is_capped_by_the_config(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = Decision(allow=True, ttl=3600)
    cached.decide(question(clock))
    clock.now += 301
    cached.decide(question(clock))
    assert source.calls == 2


def test_never_cached_beyond_the_subject_tokens_expiry(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    cached.decide(question(clock, valid_until=clock.now + 30))
    clock.now += 31
    cached.decide(question(clock, valid_until=clock.now + 3600))  # a new token, same question
    assert source.calls == 2


@pytest.mark.parametrize("decision", [Decision(allow=True, ttl=0), Decision(allow=True)])
def test_ttl_zero_or_none_is_never_cached(
    cached: CachingPermissionSource, source: Source, clock: ManualClock, decision: Decision
) -> None:
    source.decision = decision
    cached.decide(question(clock))
    cached.decide(question(clock))
    assert source.calls == 2


def test_refusals_are_cached_for_a_shorter_time(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = Decision(allow=False, ttl=60)
    assert cached.decide(question(clock)).allow is False
    clock.now += 9
    cached.decide(question(clock))
    assert source.calls == 1
    clock.now += 2
    cached.decide(question(clock))
    assert source.calls == 2


def test_errors_are_never_cached(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = UpstreamUnavailable("down")
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            cached.decide(question(clock))
    assert source.calls == 2


def test_stale_if_error_serves_a_recently_expired_answer_and_logs_it(
    source: Source, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    cached = CachingPermissionSource(
        source, MemoryStore(clock=clock), name="webapp", max_ttl=300, refusal_ttl=10,
        stale_if_error=30, clock=clock,
    )  # fmt: skip
    cached.decide(question(clock))
    source.decision = UpstreamUnavailable("down")
    clock.now += 60 + 29
    with caplog.at_level(logging.WARNING):
        assert cached.decide(question(clock)).allow is True
    assert "permissions_stale_answer_used" in caplog.text
    clock.now += 2
    with pytest.raises(UpstreamUnavailable):
        cached.decide(question(clock))


def test_stale_answers_are_not_used_by_default(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    cached.decide(question(clock))
    source.decision = UpstreamUnavailable("down")
    clock.now += 61
    with pytest.raises(UpstreamUnavailable):
        cached.decide(question(clock))


def test_the_verified_token_cache_is_bounded() -> None:
    from token_exchange.oauth.lru import ExpiringLru

    lru: ExpiringLru[bytes, object] = ExpiringLru(2)
    for i in range(3):
        lru.put(bytes([i]), object(), expires_at=10**10)
    assert [lru.get(bytes([i]), 0) is not None for i in range(3)] == [False, True, True]


def test_a_hot_question_costs_no_store_round_trip(source: Source, clock: ManualClock) -> None:
    class CountingStore(MemoryStore):
        reads = 0

        def get(self, key: str) -> bytes | None:
            CountingStore.reads += 1
            return super().get(key)

        def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
            CountingStore.reads += 1  # one round trip
            return [MemoryStore.get(self, key) for key in keys]

    cached = CachingPermissionSource(
        source, CountingStore(clock=clock), name="w", max_ttl=300, refusal_ttl=10, clock=clock
    )
    for _ in range(5):
        cached.decide(question(clock))
    assert (source.calls, CountingStore.reads) == (1, 1)
    clock.now += 61  # the local copy lives no longer than the shared entry
    cached.decide(question(clock))
    assert (source.calls, CountingStore.reads) == (2, 2)


@pytest.mark.parametrize(
    "entry",
    [
        b'{"allow": "no", "scopes": null, "claims": {}, "ttl": 60, '
        b'"authorization_details": null, "fresh_until": 9e99}',
        b'{"allow": true, "scopes": null, "claims": [1], "ttl": 60, '
        b'"authorization_details": null, "fresh_until": 9e99}',
        b'{"allow": true, "scopes": null, "claims": {}, "ttl": 60, '
        b'"authorization_details": null, "fresh_until": Infinity}',
        b'{"allow": true, "scopes": null, "claims": {"sub": "x"}, "ttl": 60, '
        b'"authorization_details": null, "fresh_until": 1800000030}',
        b"not json",
    ],
)
def test_garbage_in_the_store_is_a_miss(source: Source, clock: ManualClock, entry: bytes) -> None:
    store = MemoryStore(clock=clock)
    cached = CachingPermissionSource(
        source, store, name="w", max_ttl=300, refusal_ttl=10, clock=clock
    )
    source.decision = Decision(allow=False)
    store.set(question(clock).cache_key("w"), entry, ttl=600)
    assert cached.decide(question(clock)).allow is False
    assert source.calls == 1


def test_odd_cache_control_values_are_ignored() -> None:
    from token_exchange.sources.permissions import parse_answer

    for header in ("max-age=²", "max-age=-1", "max-age=1e3", "max-age=" + "9" * 40):
        decision = parse_answer(200, b'{"allow": true}', {"Cache-Control": header})
        assert decision.ttl is None or 0 <= decision.ttl <= 86_400


# -- answers that cover resource prefixes (resource_prefixes) -----------------------------------

COUNTRY = f"{COUNTRIES}/countries/"


def at(*paths: str) -> tuple[str, ...]:
    return tuple(f"{COUNTRIES}/{path}" for path in paths)


def test_an_answer_covers_the_resources_under_the_prefixes_it_names(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = Decision(allow=True, ttl=60, claims={"c": 1}, resource_prefixes=(COUNTRY,))
    assert cached.decide(question(clock, resources=at("countries/nl"))).claims == {"c": 1}
    for covered in (
        at("countries/de"),
        at("countries/de/stats"),
        at("countries/be", "countries/nl"),
    ):
        assert cached.decide(question(clock, resources=covered)).claims == {"c": 1}
    assert source.calls == 1
    # Not what it does not name: another path, a sibling sharing the text, the whole API.
    for other in (at("projects/1"), at("countries-evil/x"), (), at("countries/nl", "projects/1")):
        cached.decide(question(clock, resources=other))
    assert source.calls == 5
    # For its ttl only.
    clock.now += 61
    cached.decide(question(clock, resources=at("countries/fr")))
    assert source.calls == 6


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "auth0|7"},
        {"client_id": "other"},
        {"audience": "https://other.test"},
        {"scopes": ("countries:write",)},
        {"actor": {"issuer": "https://tenant.test/", "subject": "svc"}},
        {"authorization_details": ({"type": "country_access"},)},
    ],
)
def test_a_covering_answer_holds_only_for_the_same_question_otherwise(
    cached: CachingPermissionSource, source: Source, clock: ManualClock, change: dict[str, Any]
) -> None:
    source.decision = Decision(allow=True, ttl=60, resource_prefixes=(COUNTRY,))
    cached.decide(question(clock, resources=at("countries/nl")))
    cached.decide(question(clock, resources=at("countries/de"), **change))
    assert source.calls == 2


def test_a_refusal_covers_only_what_it_names_and_briefly(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = Decision(allow=False, ttl=60, resource_prefixes=(f"{COUNTRY}secret/",))
    assert not cached.decide(question(clock, resources=at("countries/secret/a"))).allow
    assert not cached.decide(question(clock, resources=at("countries/secret/b"))).allow
    assert source.calls == 1
    source.decision = Decision(allow=True, ttl=60)
    assert cached.decide(question(clock, resources=at("countries/nl"))).allow
    assert source.calls == 2
    clock.now += 11  # refusal_ttl
    assert cached.decide(question(clock, resources=at("countries/secret/c"))).allow


def test_covering_answers_are_shared_through_the_store(source: Source, clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)

    def replica() -> CachingPermissionSource:
        return CachingPermissionSource(
            source, store, name="webapp", max_ttl=300, refusal_ttl=10, clock=clock
        )

    source.decision = Decision(allow=True, ttl=60, resource_prefixes=(COUNTRY,))
    replica().decide(question(clock, resources=at("countries/nl")))
    other = f"{COUNTRIES}/projects/"
    source.decision = Decision(allow=True, ttl=60, resource_prefixes=(other,))
    replica().decide(question(clock, resources=at("projects/1")))
    assert source.calls == 2
    # A third replica finds both, in one round trip with the answer's own entry.
    third = replica()
    third.decide(question(clock, resources=at("countries/de")))
    third.decide(question(clock, resources=at("projects/2")))
    assert source.calls == 2


@pytest.mark.parametrize(
    "prefixes",
    [
        [],
        "https://x.test/",
        [1],
        ["/countries/"],
        ["urn:countries"],
        ["https://x.test/?a=1"],
        ["https://x.test/#f"],
        ["https://user@x.test/"],
        ["https://x.test:99999/"],
        ["ftp://x.test/"],
        ["https://x.test/" + "a" * 2100],
        [f"https://x.test/{i}" for i in range(33)],
    ],
)
def test_resource_prefixes_that_are_not_urls_make_a_malformed_answer(prefixes: Any) -> None:
    from token_exchange.sources.permissions import decision_from_json

    with pytest.raises(UpstreamUnavailable):
        decision_from_json({"allow": True, "resource_prefixes": prefixes})


def test_a_prefix_must_contain_a_resource_of_the_question(clock: ManualClock) -> None:
    from token_exchange.sources.permissions import check_coverage

    decision = Decision(allow=True, resource_prefixes=(COUNTRY,))
    assert check_coverage(decision, question(clock, resources=at("countries/nl"))) is decision
    for resources in (at("projects/1"), ()):
        with pytest.raises(UpstreamUnavailable):
            check_coverage(decision, question(clock, resources=resources))


def test_an_answer_about_several_resources_covers_only_if_its_prefixes_hold_them_all(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    """Claims for nl and de, with only nl's prefix: kept for the question asked, never served
    for nl/stats (it would carry de's claims there)."""
    source.decision = Decision(
        allow=True, ttl=60, claims={"c": ["nl", "de"]}, resource_prefixes=(f"{COUNTRY}nl",)
    )
    cached.decide(question(clock, resources=at("countries/nl", "countries/de")))
    cached.decide(question(clock, resources=at("countries/nl/stats")))
    assert source.calls == 2


def test_a_resource_with_a_query_is_covered_by_no_prefix(
    cached: CachingPermissionSource, source: Source, clock: ManualClock
) -> None:
    source.decision = Decision(allow=True, ttl=60, resource_prefixes=(COUNTRY,))
    cached.decide(question(clock, resources=at("countries/nl")))
    cached.decide(question(clock, resources=at("countries/nl?tenant=b")))
    assert source.calls == 2


def test_covering_answers_too_large_to_read_on_every_miss_are_not_kept(
    source: Source, clock: ManualClock
) -> None:
    store = MemoryStore(clock=clock)

    def replica() -> CachingPermissionSource:
        return CachingPermissionSource(
            source, store, name="webapp", max_ttl=300, refusal_ttl=10, clock=clock
        )

    source.decision = Decision(
        allow=True, ttl=60, claims={"big": "x" * 70_000}, resource_prefixes=(COUNTRY,)
    )
    replica().decide(question(clock, resources=at("countries/nl")))
    replica().decide(question(clock, resources=at("countries/de")))
    assert source.calls == 2
    assert store.get(question(clock).cover_key("webapp")) is None
