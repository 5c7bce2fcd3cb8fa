"""The configuration file, declared once: every key with its type, range, default and meaning.

Pydantic v2 models of ``config.toml``: strict types (``1`` is not ``"1"`` nor ``true``),
unknown keys refused, every problem found in one pass. The validated models are what the
service reads: a key that the service reads in another form than the file's (a rate as a
``RateRule``, a condition table compiled, a list as a tuple without repeats) is turned into it
by its type (``As``); what is not in the file (secrets read from the environment, a source's
name) hangs off the model as a private attribute, out of the JSON Schema. ``settings.py`` loads
the file and checks the rules that relate several entries; the JSON Schema that editors use
(``token-exchange config-schema``) is generated from here.

Each type carries the message that explains it (``Explain``), so that a problem reads
``clients["spa"].max_delegation_depth: must be a whole number from 1 to 10`` rather than
pydantic's wording. ``problems`` renders pydantic's errors that way: entries of ``[[clients]]``,
``[[apis]]`` and ``[[upstreams]]`` are named by their ``client_id``, ``audience`` and
``issuer`` (by index when that is missing or not unique).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from ..oauth.conditions import ConditionSet, parse_conditions
from ..oauth.profile import (
    ACTOR_PROFILES,
    DERIVED_FROM,
    GRANT_TYPE,
    GRANT_TYPES,
    STORE_EPOCH,
    SUB_PROFILE,
)
from ..oauth.uris import canonical_resource, spiffe_trust_domain, url_problem

ENV_STORE_URL = "TOKEN_EXCHANGE_STORE_URL"

SigningAlgorithm = Literal["ES256", "RS256", "PS256", "EdDSA"]
#: Algorithms we sign minted tokens with.
SIGNING_ALGORITHMS: tuple[str, ...] = get_args(SigningAlgorithm)

UpstreamAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
#: Asymmetric JWS algorithms (RFC 7518 §3, RFC 8037). HMAC and "none" are never accepted for
#: subject tokens (RFC 8725 §3.1): an HMAC "key" would be the issuer's public key.
UPSTREAM_ALGORITHMS: frozenset[str] = frozenset(get_args(UpstreamAlgorithm))

#: Claims that we set on every minted token and that nothing else may set (RFC 7519 §4.1,
#: RFC 9068 §2.2, RFC 8693 §4, RFC 7800, RFC 9396 §9.1).
REGISTERED_CLAIMS = frozenset(
    {
        "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "act", "cnf",
        "may_act", "authorization_details", DERIVED_FROM, STORE_EPOCH,
    }
)  # fmt: skip

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")

STORE_SCHEMES = ("sqlite", "memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
#: The default store: a SQLite file shared by the workers of one ``serve``, relative to the
#: config file's directory (sqlite_store.py).
DEFAULT_STORE_URL = "sqlite:state/store.db"
RATE = re.compile(r"^\s*0*(?P<limit>[1-9][0-9]*)\s*/\s*(?P<unit>second|minute|hour)\s*$")
RATE_WINDOWS = {"second": 1, "minute": 60, "hour": 3600}

MAX_TOKEN_TTL = 86_400
#: Longest ``act`` chain (RFC 8693 §4.1) a minted token may carry; ``max_delegation_depth``.
DEFAULT_DELEGATION_DEPTH = 4
MAX_DELEGATION_DEPTH = 10
MAX_JWKS_COOLDOWN = 30
#: A Txn-Token lives seconds, not minutes (draft-ietf-oauth-transaction-tokens-10 §10.1: it is
#: not resistant to replay, so "MUST be kept short").
MAX_TXN_TOKEN_TTL = 600
MAX_TXN_REPLACEMENTS = 10
MIN_JWKS_COOLDOWN = 1

#: Keys that would hold a secret: refused wherever they appear, with the reason.
SECRET_KEYS = frozenset({"secret", "client_secret", "token", "password"})
SECRET_IN_FILE = (
    "secrets are never read from the file: put it in an environment variable and name that "
    "variable (secret_env / token_env)"
)

# -- types that explain themselves ---------------------------------------------------------------

#: The error type of a value of the wrong type or shape; a list reports its own message instead.
_TYPE = "config_type"
#: The error type of a value that has the right type but is not allowed; always reported as is.
_VALUE = "config_value"


#: The error type of problems found together in one key's value (a condition table, claims),
#: each a suffix of the key's path.
KEY_PROBLEMS = "config_problems"


def _error(kind: str, message: str) -> PydanticCustomError:
    # The message goes in the context: a literal "{" in it is not a format field.
    return PydanticCustomError(kind, "{message}", {"message": message})


def _problems(found: list[str], usable: Any) -> PydanticCustomError:
    """Problems ``problems`` reports one each, ``found`` after the path where they are; what is
    ``usable`` of the value (the rules between entries check it)."""
    context = {"message": "; ".join(found), "found": found, "usable": usable}
    return PydanticCustomError(KEY_PROBLEMS, "{message}", context)


class Explain:
    """``Annotated`` metadata, placed last: any failure of the type before it reads ``message``.

    ``value`` words the failure of a string that has the right type but not an allowed value
    (it receives the value); ``check`` adds a test after validation (it returns the problem, or
    None). Problems of list elements that ``value`` or ``check`` found are kept, one each;
    other failures inside a list become the list's own ``message``, once.
    """

    def __init__(
        self,
        message: str,
        *,
        value: Callable[[str], str] | None = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.message = message
        self.value = value
        self.check = check

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._validate, handler(source))

    def _validate(self, raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            value = handler(raw)
        except ValidationError as e:
            if all(error["type"] == _VALUE for error in e.errors()):
                raise
            if self.value is not None and isinstance(raw, str):
                raise _error(_VALUE, self.value(raw)) from None
            raise _error(_TYPE, self.message) from None
        if self.check is not None and (problem := self.check(value)) is not None:
            raise _error(_VALUE, problem)
        return value


class Whole:
    """``Annotated`` metadata: a whole number from ``lo`` to ``hi`` (never a bool)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        explain = Explain(f"must be a whole number from {self.lo} to {self.hi}")
        return core_schema.no_info_wrap_validator_function(
            explain._validate, core_schema.int_schema(ge=self.lo, le=self.hi, strict=True)
        )


class Seconds:
    """``Annotated`` metadata: a finite number of seconds, above 0 (or from 0), at most ``most``."""

    def __init__(self, most: float, *, zero: bool = False) -> None:
        self.most, self.zero = most, zero

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        least = "from 0" if self.zero else "above 0"
        explain = Explain(f"must be a number of seconds, {least}, <= {self.most:g}")
        number = core_schema.float_schema(
            ge=0 if self.zero else None,
            gt=None if self.zero else 0,
            le=self.most,
            allow_inf_nan=False,
            strict=True,
        )
        return core_schema.no_info_wrap_validator_function(explain._validate, number)


class As:
    """``Annotated`` metadata, before ``Explain``: the file holds (and the JSON Schema shows)
    a ``declared`` value, which ``parse`` turns into what the service reads, the annotated
    type; a value that already has that type (settings built in code) is kept as it is."""

    def __init__(self, declared: Any, parse: Callable[[Any], Any]) -> None:
        self.declared, self.parse = declared, parse

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        runtime = get_origin(source) or source

        def validate(value: Any, validate_declared: ValidatorFunctionWrapHandler) -> Any:
            return value if isinstance(value, runtime) else self.parse(validate_declared(value))

        return core_schema.no_info_wrap_validator_function(
            validate, handler.generate_schema(self.declared)
        )


def _unique(values: list[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


def _lax(item: Any, **constraints: Any) -> Any:
    """A list of ``item``: what the file holds where the service reads a tuple (that code
    building settings may pass)."""
    return Annotated[list[item], Field(strict=False, **constraints)]


@dataclass(frozen=True)
class RateRule:
    """At most ``limit`` events per ``window`` seconds (a fixed window)."""

    limit: int
    window: int


def _rate_rule(value: str) -> RateRule:
    limit, unit = value.split("/")  # as the declared pattern, RATE, has it
    return RateRule(limit=int(limit), window=RATE_WINDOWS[unit.strip()])


def _compile(table: Any) -> ConditionSet:
    """A condition table compiled (``conditions.parse_conditions`` finds its problems); its
    mode is set by the ``*_mode`` key (``Section._modes``)."""
    conditions, found = parse_conditions(table, "")
    if found:
        raise _problems(found, conditions)
    return conditions


def _not_registered(claim: str) -> str | None:
    return (
        f"{claim!r} is a registered claim we set ourselves" if claim in REGISTERED_CLAIMS else None
    )


def _origin_problem(origin: str) -> str | None:
    why = url_problem(origin, allow_path=False)
    return why or (f"{origin} must not end with '/'" if origin.endswith("/") else None)


def _store_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and (
        parts.netloc or not parts.path or parts.query or parts.fragment
    ):
        return "a SQLite store is sqlite:///absolute/path.db or sqlite:path/relative/to/this.db"
    if parts.scheme in STORE_SCHEMES:
        return None
    return f"scheme must be one of {', '.join(STORE_SCHEMES)}"


def _issuer_problem(issuer: str) -> str | None:
    if why := url_problem(issuer):
        return why
    if issuer.endswith("/"):
        return "must not end with '/' (it is the base of our endpoint URLs)"
    return None


def _upstream_issuer_problem(issuer: str) -> str | None:
    if issuer.startswith("spiffe://"):
        return (
            None
            if spiffe_trust_domain(issuer)
            else (
                "must be spiffe://<trust domain> (lowercase letters, digits, '.', '-', '_'; no "
                "path) or an https URL"
            )
        )
    return url_problem(issuer)


def _claims_problem(claims: dict[str, Any]) -> str | None:
    if registered := sorted(set(claims) & REGISTERED_CLAIMS):
        names = " and ".join(repr(name) for name in registered)
        are = "is a registered claim" if len(registered) == 1 else "are registered claims"
        return f"{names} {are} we set ourselves"
    try:
        json.dumps(claims, allow_nan=False)
    except (TypeError, ValueError):
        return "values must be JSON (no dates, times or NaN)"
    return None


_NON_EMPTY = "must be a non-empty string"
_STRINGS = "must be a list of non-empty strings"
_SOME_STRINGS = "must be a non-empty list of non-empty strings"
_URI = {"format": "uri"}

Text = Annotated[str, Field(min_length=1, strict=True), Explain(_NON_EMPTY)]
Url = Annotated[
    str,
    Field(min_length=1, strict=True, json_schema_extra=_URI),
    Explain(_NON_EMPTY, check=url_problem),
]
Origin = Annotated[
    str,
    Field(min_length=1, strict=True, json_schema_extra=_URI),
    Explain(_NON_EMPTY, check=_origin_problem),
]
Issuer = Annotated[
    str,
    Field(min_length=1, strict=True, json_schema_extra=_URI),
    Explain(_NON_EMPTY, check=_issuer_problem),
]


def _actor_profile_problem(value: str) -> str | None:
    names = value.split(" ")
    if not SUB_PROFILE.fullmatch(value) or len(set(names)) != len(names):
        return "must be space-separated profile names, each once"
    if unknown := [n for n in names if n not in ACTOR_PROFILES]:
        return f"{', '.join(unknown)}: an actor is one of {', '.join(ACTOR_PROFILES)}"
    return None


ActorProfile = Annotated[
    str,
    Field(min_length=1, strict=True),
    Explain(_NON_EMPTY, check=_actor_profile_problem),
]
UpstreamIssuer = Annotated[
    str,
    Field(min_length=1, strict=True, json_schema_extra=_URI),
    Explain(_NON_EMPTY, check=_upstream_issuer_problem),
]
Scope = Annotated[
    str,
    Field(pattern=SCOPE_TOKEN.pattern, strict=True),
    Explain(_NON_EMPTY, value=lambda v: f"{v!r} is not a valid scope token"),
]
CopiedClaim = Annotated[
    str,
    Field(
        min_length=1, strict=True, json_schema_extra={"not": {"enum": sorted(REGISTERED_CLAIMS)}}
    ),
    Explain(_NON_EMPTY, check=_not_registered),
]
EnvName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", strict=True),
    Explain(
        "must be the name of an environment variable",
        value=lambda v: (
            "must be the name of an environment variable (letters, digits and _), "
            "not the secret itself"
        ),
    ),
]
Rate = Annotated[
    RateRule,
    As(
        Annotated[
            str,
            Field(
                pattern=RATE.pattern.replace("?P<limit>", "").replace("?P<unit>", ""), strict=True
            ),
        ],
        _rate_rule,
    ),
    Explain('must look like "600/minute" (per second, minute or hour)'),
]
StoreUrl = Annotated[
    str, Field(min_length=1, strict=True), Explain(_NON_EMPTY, check=_store_url_problem)
]
Bool = Annotated[bool, Field(strict=True), Explain("must be true or false")]
Mode = Annotated[Literal["enforce", "audit"], Explain('must be "enforce" or "audit"')]
Strings = Annotated[tuple[str, ...], As(_lax(Text), _unique), Explain(_STRINGS)]
Urls = Annotated[tuple[str, ...], As(_lax(Url), _unique), Explain(_STRINGS)]

_SCALAR: JsonSchemaValue = {"type": ["string", "integer", "boolean"]}
_CONDITION: JsonSchemaValue = {
    "description": 'equals ("v"), one of (["v", "w"]), or a table with exactly one operator',
    "anyOf": [
        _SCALAR,
        {"type": "array", "items": _SCALAR, "minItems": 1},
        {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
            "properties": {
                "equals": _SCALAR,
                "one_of": {"type": "array", "items": _SCALAR, "minItems": 1},
                "pattern": {"type": "string", "minLength": 1, "description": "RE2, full match"},
                "present": {"const": True},
                "absent": {"const": True},
            },
        },
    ],
}
#: A table of claim = condition, compiled by ``conditions.parse_conditions`` (which reports its
#: problems); described here for editors. Its default is validated (into no conditions).
Conditions = Annotated[
    ConditionSet,
    As(Any, _compile),
    WithJsonSchema({"type": "object", "additionalProperties": _CONDITION}),
]


# -- the file ------------------------------------------------------------------------------------


class Section(BaseModel):
    """A table of the file: strict types, no unknown keys, each key's docstring its meaning."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True, defer_build=True
    )
    #: The key that names an entry of an array of tables in problems (``clients["spa"]``).
    identity: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _modes(self) -> Self:
        """Each compiled condition table (``Conditions``) takes the mode of its ``*_mode``."""
        for name in type(self).model_fields:
            if name.endswith("conditions"):
                mode = getattr(self, f"{name}_mode")
                self.__dict__[name] = replace(getattr(self, name), mode=mode)
        return self


class Named(Section):
    """An entry named by its key in a table of the file (``[permissions.NAME]``).

    What is not in the file (here, the name) is a private attribute, read through a cached
    property: reading a private attribute goes through pydantic's ``__getattr__`` (slow)."""

    _name: str = PrivateAttr("")

    @cached_property
    def name(self) -> str:
        return self._name

    def named(self, name: str) -> Self:
        self._name = name
        self.__dict__.pop("name", None)
        return self


def _env(info: ValidationInfo) -> Mapping[str, str]:
    """The environment that secrets are read from: the validation context's ``env``."""
    env: Mapping[str, str] = (info.context or {}).get("env", {})
    return env


def _require_env(name: str, info: ValidationInfo) -> None:
    if not _env(info).get(name):
        raise _error(_VALUE, f"environment variable {name} is not set or empty")


class StoreConfig(Section, title="[store]"):
    """Where cached permission answers, rate-limit counters and revocations live."""

    url: StoreUrl = Field(default=DEFAULT_STORE_URL, validate_default=True)
    """sqlite:path/to/file.db (relative to this file's directory; sqlite:///absolute/path.db):
    shared by the workers of one machine, kept across restarts; redis://host:6379/0,
    rediss://..., redis+cluster://host:7000 or rediss+cluster://... for replicas on several
    machines; memory:// (one process: serve --workers 1 only). The environment variable
    TOKEN_EXCHANGE_STORE_URL wins."""
    timeout: Annotated[float, Seconds(5.0)] = 0.25
    """Seconds to wait for Redis (or for another worker's write to the SQLite file) before
    treating the store as down."""
    max_concurrency: Annotated[int, Whole(1, 1024)] = 32
    """Calls to the store in flight at once per worker; more fail at once (a cache miss)."""
    breaker_cooldown: Annotated[float, Seconds(300)] = 1.0
    """Seconds the store is not tried after a failure; then one probe goes through."""

    @field_validator("url")
    @classmethod
    def _resolve(cls, url: str, info: ValidationInfo) -> str:
        """A relative SQLite path, against the validation context's ``base_dir`` (the file's
        directory)."""
        parts, base_dir = urlsplit(url), (info.context or {}).get("base_dir")
        if base_dir is None or parts.scheme != "sqlite" or parts.path.startswith("/"):
            return url
        return "sqlite://" + quote(str(base_dir / unquote(parts.path)))


class SigningConfig(Section, title="[signing]"):
    """Our signing keys and the tokens we mint."""

    keys_dir: Annotated[Path, As(Text, Path)] = Field(default=Path("keys"), validate_default=True)
    """Where `token-exchange keys` writes keys and the service reads them (relative to this
    file's directory)."""
    algorithm: Annotated[
        SigningAlgorithm, Explain(f"must be one of {', '.join(SIGNING_ALGORITHMS)}")
    ] = "ES256"
    """Algorithm of the keys the tools create."""
    token_ttl: Annotated[int, Whole(1, MAX_TOKEN_TTL)] = 300
    """Lifetime of minted tokens in seconds, never beyond the subject token's exp."""
    jwks_max_age: Annotated[int, Whole(0, 86_400)] = 300
    """Cache-Control max-age of /.well-known/jwks.json, in seconds."""
    reload_interval: Annotated[int, Whole(1, 60)] = 2
    """How often, in seconds, a running service looks for changes in keys_dir."""

    @field_validator("keys_dir")
    @classmethod
    def _resolve(cls, keys_dir: Path, info: ValidationInfo) -> Path:
        """Against the validation context's ``base_dir`` (the file's directory)."""
        base_dir: Path | None = (info.context or {}).get("base_dir")
        return keys_dir if base_dir is None else base_dir / keys_dir


class ServerConfig(Section, title="[server]"):
    """Limits of the HTTP server."""

    max_body_bytes: Annotated[int, Whole(1024, 1 << 20)] = 64 * 1024
    """Larger request bodies get 413."""
    trusted_proxies: Annotated[int, Whole(0, 10)] = 0
    """How many reverse proxies in front of us have their X-Forwarded-For entries believed."""
    verified_token_cache: Annotated[int, Whole(0, 1_000_000)] = 10_000
    """Verified subject tokens remembered per process (0 turns the cache off)."""
    max_in_flight: Annotated[int, Whole(1, 4096)] = 64
    """Requests in flight per worker past which new ones are shed (503, Retry-After: 1)."""
    cpu_affinity: Annotated[Literal["auto", "off"], Explain('must be "auto" or "off"')] = "auto"
    """Under serve, "auto" runs each worker on a CPU of its own when there are as many workers
    as CPUs the service may run on (e.g. a container's cpuset); "off" leaves them to the kernel."""


class MetricsConfig(Section, title="[metrics]"):
    """Prometheus metrics. Without a port they are served at /metrics on the main port, where
    anyone who reaches the service can read client ids, audiences and issuers."""

    port: Annotated[int, Whole(1, 65535)] | None = None
    """Serve /metrics on this port instead of the main one."""
    host: Text = "0.0.0.0"  # noqa: S104 - the metrics port is meant for the scraper
    """Address the metrics port binds."""


UrlPath = Annotated[
    str, Field(strict=True, pattern=r"^/[^\s?#]*$"), Explain("must be a path that starts with /")
]


class TracingConfig(Section, title="[tracing]"):
    """OpenTelemetry traces. Whether they are on, where they are sent, the service name, the
    sampler and the batch delays are the standard OTEL_* environment variables' to say (README,
    "Traces"); this table holds only what they cannot."""

    skip_paths: Annotated[
        tuple[str, ...], As(_lax(UrlPath), _unique), Explain("must be a list of paths")
    ] = ("/healthz", "/readyz", "/metrics")
    """Paths no span is made for (probes and scrapes would drown the exchanges)."""
    trust_incoming: Bool = True
    """Continue the trace a caller's W3C traceparent names (a gateway's, a SPA's). false: each
    request starts a trace of its own, linked to the caller's, so that callers choose neither
    trace ids nor sampling."""


class RateLimitsConfig(Section, title="[rate_limits]"):
    """Limits counted in the store, shared by all replicas; beyond one: 429 with Retry-After.
    Each is "N/second", "N/minute" or "N/hour"; none by default."""

    per_client: Rate | None = None
    """Exchanges per client_id (counted once the subject token verifies)."""
    per_subject: Rate | None = None
    """Exchanges per user (issuer + sub)."""
    failures_per_address: Rate | None = None
    """Failed requests at /token, /introspect, /revoke per IPv4 address or IPv6 /64."""


#: Algorithms a DPoP proof may be signed with (RFC 9449 §4.3 step 5: asymmetric only).
DpopAlgorithm = UpstreamAlgorithm


def _not_asymmetric(value: str) -> str:
    return (
        f"{value!r} is not allowed (only asymmetric algorithms: "
        f"{', '.join(sorted(UPSTREAM_ALGORITHMS))})"
    )


UpstreamAlgorithms = Annotated[
    tuple[str, ...],
    As(
        _lax(
            Annotated[UpstreamAlgorithm, Explain(_NON_EMPTY, value=_not_asymmetric)], min_length=1
        ),
        _unique,
    ),
    Explain(_SOME_STRINGS),
]
#: DPoP proofs may use any algorithm an upstream may (asymmetric ones).
DpopAlgorithms = UpstreamAlgorithms


class DpopConfig(Section, title="[dpop]"):
    """DPoP proofs (RFC 9449) at /token: who sends one gets a token bound to its key."""

    algorithms: DpopAlgorithms = ("ES256", "RS256", "PS256", "EdDSA")
    """Algorithms accepted in DPoP proofs, advertised as dpop_signing_alg_values_supported."""
    window: Annotated[int, Whole(1, 600)] = 60
    """Seconds a proof's iat may be off our clock, either way; a proof's jti is remembered in
    the store (shared by all replicas) for twice as long."""
    nonce: Bool = False
    """Require server-provided nonces (RFC 9449 §8): a proof without the current one gets 400
    use_dpop_nonce and the nonce to use in DPoP-Nonce; every issued token's answer carries it."""
    nonce_lifetime: Annotated[int, Whole(10, 86_400)] = 300
    """Seconds between new nonces; a nonce is accepted for one to two lifetimes."""


class UpstreamConfig(Section, title="[[upstreams]]"):
    """A trusted issuer of subject tokens (RFC 8725 §3.8: `iss` must match exactly)."""

    identity: ClassVar[str | None] = "issuer"

    issuer: UpstreamIssuer
    """The exact `iss` of its tokens (Auth0's ends with '/'); or spiffe://<trust domain>: its
    tokens are JWT-SVIDs whose `sub` is a SPIFFE ID of that trust domain (their `iss`, if
    any, is not what finds them), verified with the keys of the SPIFFE bundle at jwks_uri."""
    audiences: Annotated[
        tuple[str, ...], As(_lax(Text, min_length=1), _unique), Explain(_SOME_STRINGS)
    ]
    """The subject token's `aud` must contain one of these (your Auth0 API identifier)."""
    jwks_uri: Url | None = None
    """Where its keys are; by default found by OpenID Connect discovery at
    <issuer>/.well-known/openid-configuration."""
    algorithms: UpstreamAlgorithms = ("RS256",)
    """Algorithms its tokens may be signed with: asymmetric ones only, never HS* or none."""
    subject_prefix: Annotated[str, Field(strict=True), Explain("must be a string")] = ""
    """Prepended to `sub` in minted tokens; required and distinct when several upstreams are
    configured."""
    leeway: Annotated[int, Whole(0, 300)] = 30
    """Clock skew allowed on exp / nbf / iat, in seconds."""
    jwks_refresh_interval: Annotated[int, Whole(10, 86_400)] = 300
    """Seconds between background refreshes of the issuer's keys."""
    jwks_cooldown: Annotated[int, Whole(MIN_JWKS_COOLDOWN, MAX_JWKS_COOLDOWN)] = 30
    """At most one refetch per this many seconds for an unknown `kid`."""
    jwks_timeout: Annotated[float, Seconds(30)] = 5.0
    """Longest time one JWKS or discovery fetch may take."""
    jwks_wait: Annotated[float, Seconds(30, zero=True)] = 1.0
    """How long a request waits for a fetch another request started (0: not at all)."""
    jwks_max_concurrency: Annotated[int, Whole(1, 1024)] = 4
    """Requests fetching or waiting for this issuer's keys at once; more get 503 at once."""
    jwks_breaker_cooldown: Annotated[float, Seconds(MAX_JWKS_COOLDOWN)] = 2.0
    """After a failed fetch, no new fetch for this long; then one probe goes through."""
    conditions: Conditions = Field(default=None, validate_default=True)
    """What every subject token from this issuer must satisfy, all of it (README, "Trust
    policy")."""
    conditions_mode: Mode = "enforce"
    """"audit": refuse nothing, log what would be refused."""
    require_bound_tokens: Bool = False
    """Every token from this issuer (subject or actor token) must be DPoP-bound (cnf.jkt) and
    sent with a DPoP proof by its key; a bound one always is, whatever this says."""
    assertions: Annotated[
        tuple[Literal["id-jag", "workload"], ...],
        As(_lax(Literal["id-jag", "workload"]), _unique),
        Explain('must be a list of "id-jag" and "workload"'),
    ] = ()
    """Which of its JWTs clients may redeem with the jwt-bearer grant (RFC 7523): "id-jag" its
    Identity Assertion JWT Authorization Grants (typ oauth-id-jag+jwt, aud = our issuer),
    "workload" its plain JWTs whose aud is our token endpoint or issuer (workload identity).
    Empty: its tokens are subject and actor tokens only."""
    assertion_max_lifetime: Annotated[int, Whole(10, 3600)] = 300
    """Longest lifetime (exp - iat, in seconds) of an assertion of this issuer we redeem."""
    actor_only: Bool = False
    """Its tokens are actor tokens only, never subject tokens (reason actor_only): a workload
    issuer's (a cluster's service accounts, a SPIFFE trust domain), whose tokens are no user's."""

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    @property
    def trust_domain(self) -> str | None:
        """The SPIFFE trust domain of an issuer spiffe://<trust domain>, else None."""
        return spiffe_trust_domain(self.issuer)

    @model_validator(mode="after")
    def _spiffe_bundle(self) -> Self:
        if self.trust_domain is not None and self.jwks_uri is None:
            # A trust domain has no discovery document: its bundle endpoint is configured.
            raise _error(_VALUE, "a SPIFFE trust domain needs jwks_uri (its bundle endpoint)")
        if self.trust_domain is not None and self.assertions:
            # JWT-SVIDs carry neither the jti nor the iss an assertion needs.
            raise _error(_VALUE, "a SPIFFE trust domain's JWT-SVIDs are no jwt-bearer assertions")
        if self.actor_only and self.assertions:
            raise _error(_VALUE, "an actor_only issuer's tokens are no assertions either")
        return self


#: RFC 7591 §2 names of the ways a confidential client may authenticate (OpenID Connect Core
#: §9); unset: either secret method.
ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
#: What private_key_jwt client assertions may be signed with (RFC 7523 §3): asymmetric only,
#: never HS* (the "secret" would be the client's public key) nor none (RFC 8725 §3.1).
CLIENT_ASSERTION_ALGORITHMS: tuple[str, ...] = SIGNING_ALGORITHMS
#: JWK members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _jwks_problem(jwks: dict[str, Any]) -> str | None:
    keys = jwks.get("keys")
    if set(jwks) != {"keys"} or not isinstance(keys, list) or not keys:
        return "must be a JWK Set: a table with a non-empty keys array (and nothing else)"
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            return f"keys[{i}] must be a table (a JWK)"
        if private := [m for m in PRIVATE_JWK_MEMBERS if m in key]:
            # A private key here would be a secret in the file, and one we never need.
            return (
                f"keys[{i}] holds private key material ({', '.join(private)}): "
                "put only the client's public keys here"
            )
    return None


_JWKS_SCHEMA: JsonSchemaValue = {
    "type": "object",
    "required": ["keys"],
    "additionalProperties": False,
    "properties": {
        "keys": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["kty"],
                "not": {"anyOf": [{"required": [m]} for m in PRIVATE_JWK_MEMBERS]},
            },
        }
    },
}
#: An inline JWK Set of public keys (RFC 7517 §5).
PublicJwks = Annotated[
    dict[str, Any],
    Field(strict=True),
    WithJsonSchema(_JWKS_SCHEMA),
    Explain("must be a table (a JWK Set: keys = [...])", check=_jwks_problem),
]


#: RFC 7591 §2 grant_types values we serve.
GrantTypeName = Literal[
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
]


class ClientConfig(Section, title="[[clients]]"):
    """A caller of /token (and, if confidential, of /introspect and /revoke)."""

    identity: ClassVar[str | None] = "client_id"

    client_id: Text
    """The client's id, sent as client_id (public) or authenticated (confidential)."""
    type: Annotated[
        Literal["public", "confidential"], Explain('must be "public" or "confidential"')
    ] = "public"
    """"public" (no secret, e.g. a SPA) or "confidential" (authenticates with a secret)."""
    audiences: Strings = ()
    """The APIs ([[apis]] audiences) this client may get tokens for; required unless it only
    introspects."""
    allowed_origins: Annotated[tuple[str, ...], As(_lax(Origin), _unique), Explain(_STRINGS)] = ()
    """Browser origins (https://host[:port], no path) that get CORS headers on /token."""
    secret_env: EnvName | None = None
    """Confidential clients: the environment variable holding the secret (must be set)."""
    token_endpoint_auth_method: (
        Annotated[
            ClientAuthMethod,
            Explain('must be "client_secret_basic", "client_secret_post" or "private_key_jwt"'),
        ]
        | None
    ) = None
    """Confidential clients: how they authenticate at /token, /introspect and /revoke; by
    default client_secret_basic or client_secret_post (with secret_env). "private_key_jwt":
    a JWT signed with one of its keys (jwks or jwks_uri) instead of a secret."""
    jwks_uri: Url | None = None
    """private_key_jwt: where the client publishes its public keys (a JWK Set)."""
    jwks: PublicJwks | None = None
    """private_key_jwt: the client's public keys inline, a JWK Set (keys = [...]); public
    members only."""
    allow_delegation: Bool = False
    """May send an actor_token (RFC 8693 delegation); then actor_conditions is required."""
    scopes: Strings | None = None
    """Scopes this client may ask for; by default every scope of its APIs. With
    transaction_tokens, a Txn-Token's scope too (any names: the subject tokens' own)."""
    introspects: Strings = ()
    """APIs whose tokens this confidential client may introspect and revoke (the API itself,
    registered as a client)."""
    subject_conditions: Conditions = Field(default=None, validate_default=True)
    """What a subject token this client presents must satisfy, on top of its issuer's."""
    subject_conditions_mode: Mode = "enforce"
    """"audit": refuse nothing, log what would be refused."""
    actor_conditions: Conditions = Field(default=None, validate_default=True)
    """Which actor tokens are this client's own (required with allow_delegation): equals or
    one_of on azp, client_id or sub."""
    actor_conditions_mode: Mode = "enforce"
    """"audit": refuse nothing, log what would be refused."""
    max_delegation_depth: Annotated[int, Whole(1, MAX_DELEGATION_DEPTH)] = DEFAULT_DELEGATION_DEPTH
    """Longest `act` chain of a token minted for this client, the new actor included."""
    require_actor_token: Bool = False
    """Every token exchange of this client carries its actor_token (allow_delegation): set it
    for an agent's client, whose exchanges without one would get the user's own permissions,
    past every cap on the agent (reason actor_token_required)."""
    delegated_token_ttl: Annotated[int, Whole(1, MAX_TOKEN_TTL)] | None = None
    """Longest lifetime, in seconds, of a token minted for this client that carries `act`
    (an agent acting for a user); [signing] token_ttl by default."""
    actor_sub_profile: ActorProfile | None = None
    """What this client's actors are, stated as `act.sub_profile` in the tokens they get
    (OAuth Actor Profile): "ai_agent", "service" or "user", or several space-separated."""
    grant_types: Annotated[
        tuple[GrantTypeName, ...],
        As(_lax(GrantTypeName, min_length=1), _unique),
        Explain("must be a non-empty list of " + ", ".join(GRANT_TYPES)),
    ] = (GRANT_TYPE,)
    """The grants this client may use at /token (RFC 7591 §2): token exchange by default; the
    jwt-bearer grant (RFC 7523, ID-JAGs and workload JWTs) for a confidential client."""
    dpop: Annotated[Literal["allowed", "required"], Explain('must be "allowed" or "required"')] = (
        "allowed"
    )
    """"allowed": a request with a DPoP proof gets a DPoP-bound token, one without a bearer
    token; "required": a request without a proof is refused (invalid_dpop_proof)."""
    transaction_tokens: Bool = False
    """May request Txn-Tokens ([transaction_tokens]) and replace them: a confidential client
    that authenticates with private_key_jwt (a workload of the trust domain)."""

    #: Read from the environment variable named by ``secret_env``; never from the file.
    _secret: str | None = PrivateAttr(None)

    @cached_property
    def secret(self) -> str | None:
        return self._secret

    @field_validator("secret_env")
    @classmethod
    def _secret_is_set(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None and info.data.get("type") == "confidential":
            _require_env(name, info)
        return name

    @model_validator(mode="after")
    def _read_secret(self, info: ValidationInfo) -> Self:
        if self.secret_env is not None and self.type == "confidential":
            self._secret = _env(info).get(self.secret_env) or None
        return self


class ApiConfig(Section, title="[[apis]]"):
    """A downstream API that tokens can be minted for."""

    identity: ClassVar[str | None] = "audience"

    audience: Text
    """The minted `aud`; `audience=` in a request names it."""
    permissions: Text
    """Which [permissions.NAME] source decides."""
    scopes: Annotated[
        tuple[str, ...], As(_lax(Scope, min_length=1), _unique), Explain(_SOME_STRINGS)
    ]
    """The scopes this API defines (RFC 6749 §3.3 scope tokens)."""
    resources: Urls = ()
    """RFC 8707 resource URI prefixes of this API, matched at a path boundary."""
    trailing_slash_significant: Bool = False
    """A resource equal to the audience but for a trailing slash names another thing: by
    default it names this API (MCP clients send a server's URI with or without one)."""

    @cached_property
    def canonical_audience(self) -> str:
        """The audience as a resource indicator in canonical form (``uris.canonical_resource``)."""
        return canonical_resource(self.audience)

    copy_claims: Annotated[tuple[str, ...], As(_lax(CopiedClaim), _unique), Explain(_STRINGS)] = ()
    """Claims copied from the subject token when present (never a registered claim)."""
    authorization_details_types: Strings = ()
    """RFC 9396 authorization_details types this API accepts."""


class Source(Named):
    """A ``[permissions.NAME]`` source; ``token``: read from the environment variable that
    ``token_env`` names, never from the file."""

    _token: str | None = PrivateAttr(None)

    @cached_property
    def token(self) -> str | None:
        return self._token

    @field_validator("token_env", check_fields=False)
    @classmethod
    def _token_is_set(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None:
            _require_env(name, info)
        return name

    @model_validator(mode="after")
    def _read_token(self, info: ValidationInfo) -> Self:
        if name := getattr(self, "token_env", None):
            self._token = _env(info).get(name) or None
        return self


class HttpSourceConfig(Source, title='[permissions.NAME], type = "http"'):
    """The web application's permissions API: we POST the question, it answers (README, "The
    permissions API")."""

    type: Literal["http"]
    """"http": ask the web application's permissions API."""
    url: Url
    """Where we POST the question."""
    timeout: Annotated[float, Seconds(30)] = 2.0
    """Connect + read timeout, in seconds."""
    token_env: EnvName | None = None
    """The environment variable holding a bearer token we send (must be set)."""
    cache_max_ttl: Annotated[int, Whole(0, 86_400)] = 300
    """Answers are cached in the store for their ttl, at most this many seconds (0: never)."""
    cache_refusal_ttl: Annotated[int, Whole(0, 3600)] = 10
    """Refusals (allow false, 403, or none of the requested scopes granted) are cached at most
    this many seconds."""
    stale_if_error: Annotated[int, Whole(0, 86_400)] = 0
    """While the API is down, an answer expired less than this many seconds ago still serves."""
    max_concurrency: Annotated[int, Whole(1, 1024)] = 16
    """Calls in flight at once per worker; more get 503 at once, never a queue."""
    breaker_failures: Annotated[int, Whole(1, 1000)] = 5
    """Failures (timeouts, errors, bad answers) in a row that open the circuit breaker."""
    breaker_cooldown: Annotated[float, Seconds(300)] = 2.0
    """Seconds the open breaker refuses calls before it lets one probe through."""


class StaticRuleConfig(Section, title="[[permissions.NAME.rules]]"):
    """One rule of a static source; the first rule that matches decides, no match refuses."""

    subject: Text = "*"
    """The `sub` it applies to ("*": any)."""
    issuer: Text = "*"
    """The issuer it applies to ("*": any); required with a subject when there are several
    upstreams."""
    client_id: Text = "*"
    """The client it applies to ("*": any)."""
    audience: Text = "*"
    """The API ([[apis]] audience) it applies to ("*": any)."""
    resources: Urls = ()
    """Resource URI prefixes it covers: every requested resource must lie under one (empty:
    any, or no, resource)."""
    actor: Text = "*"
    """The acting party's `sub` it applies to ("*": any). A rule that names an actor (here,
    in actor_issuer or in actor_client_id) is an actor rule: it caps what that actor may get
    for a user and never grants by itself."""
    actor_issuer: Text = "*"
    """The acting party's issuer it applies to ("*": any)."""
    actor_client_id: Text = "*"
    """The acting party's client (its token's `client_id`, else `azp`) it applies to ("*":
    any)."""
    allow: Bool = True
    """false refuses."""
    scopes: Strings | None = None
    """The scopes granted (narrowing the request); by default as requested. In an actor
    rule: the most the actor may get, intersected with the user's."""
    claims: Annotated[
        dict[str, Any], Field(strict=True), Explain("must be a table", check=_claims_problem)
    ] = {}
    """Claims added to the token (JSON values; never a registered claim). Not in an actor
    rule: the user's rule sets them."""

    @property
    def names_actor(self) -> bool:
        return (self.actor, self.actor_issuer, self.actor_client_id) != ("*", "*", "*")

    @model_validator(mode="after")
    def _actor_rule_sets_no_claims(self) -> Self:
        if self.names_actor and self.claims:
            raise _error(_VALUE, "an actor rule caps scopes and cannot add claims")
        return self


class StaticSourceConfig(Source, title='[permissions.NAME], type = "static"'):
    """Permissions decided by rules in this file."""

    type: Literal["static"]
    """"static": decide by the rules below."""
    rules: list[StaticRuleConfig] = []
    """[[permissions.NAME.rules]]: first match decides, no match refuses."""


#: AuthZEN names (subject and resource types, action names, IDs): what a PDP keeps short.
MAX_AUTHZEN_NAME = 256
#: Candidate resource IDs of one claim, all evaluated in the batch of every exchange.
MAX_AUTHZEN_CANDIDATES = 100
_AUTHZEN_NAME = f"must be a non-empty string of at most {MAX_AUTHZEN_NAME} characters"
AuthzenName = Annotated[
    str, Field(min_length=1, max_length=MAX_AUTHZEN_NAME, strict=True), Explain(_AUTHZEN_NAME)
]


def _pdp_url_problem(url: str) -> str | None:
    if why := url_problem(url):
        return why
    return "must not contain a query" if urlsplit(url).query or "?" in url else None


def _prefix_problem(prefix: str) -> str | None:
    if why := url_problem(prefix):
        return why
    return None if prefix.endswith("/") else "must end with '/' (the ID is what follows)"


class AuthzenClaimConfig(Named, title="[permissions.NAME.claims.CLAIM]"):
    """A claim of the minted token that the PDP decides. Either candidates (``resource_type``
    with ``candidates_from`` and/or ``candidates``): each candidate resource ID is evaluated in
    the same batch and the claim lists the granted IDs; or ``from_context`` alone: the value at
    that path in the ``context`` of the first granted scope's decision."""

    resource_type: AuthzenName | None = None
    """Resource type of the candidate evaluations (required for candidates)."""
    action: AuthzenName = "read"
    """Action name of the candidate evaluations."""
    candidates_from: Annotated[Literal["resources"], Explain('must be "resources"')] | None = None
    """"resources": the IDs of the requested resource indicators under resource_prefix; each
    must be granted, or the exchange is refused (invalid_target)."""
    resource_prefix: (
        Annotated[
            str,
            Field(min_length=1, strict=True, json_schema_extra=_URI),
            Explain(_NON_EMPTY, check=_prefix_problem),
        ]
        | None
    ) = None
    """URI prefix of the requested resources this claim covers, ending with '/' (required with
    candidates_from)."""
    candidates: Annotated[
        tuple[str, ...],
        As(_lax(AuthzenName, max_length=MAX_AUTHZEN_CANDIDATES), _unique),
        Explain(f"must be a list of at most {MAX_AUTHZEN_CANDIDATES} non-empty strings"),
    ] = ()
    """IDs evaluated when the request names no resource under resource_prefix."""
    from_context: (
        Annotated[
            tuple[str, ...],
            As(
                Annotated[str, Field(pattern=r"^[^.]+(\.[^.]+){0,7}$", strict=True)],
                lambda path: tuple(path.split(".")),
            ),
            Explain("must be a dotted path such as 'claims.tenant' (at most 8 parts)"),
        ]
        | None
    ) = None
    """Dotted path into a decision's context, such as "claims.tenant"."""


def _claims(claims: dict[str, AuthzenClaimConfig]) -> tuple[AuthzenClaimConfig, ...]:
    """``[permissions.NAME.claims]`` as the service reads them, each named; what the keys of
    one claim get wrong together is a problem."""
    found = []
    for name, claim in claims.items():
        at = "." + toml_key(name)
        # The PDP adds claims; it can never set one we are responsible for.
        if name in REGISTERED_CLAIMS:
            found.append(f"{at}: is a registered claim we set ourselves")
        if claim.from_context is not None:
            if others := claim.model_fields_set - {"from_context"}:
                found.append(f"{at}: from_context takes no other key ({', '.join(sorted(others))})")
            continue
        if claim.resource_type is None:
            found.append(f"{at}.resource_type: is required for candidates")
        if claim.candidates_from is not None and claim.resource_prefix is None:
            found.append(f'{at}.resource_prefix: is required with candidates_from = "resources"')
        if claim.candidates_from is None and claim.resource_prefix is not None:
            found.append(f'{at}.resource_prefix: is used only with candidates_from = "resources"')
        if claim.candidates_from is None and not claim.candidates:
            found.append(
                f'{at}: needs candidates_from = "resources", candidates = [...], or from_context'
            )
    named = tuple(claim.named(name) for name, claim in claims.items())
    if found:
        raise _problems(found, named)
    return named


class AuthzenSourceConfig(Source, title='[permissions.NAME], type = "authzen"'):
    """A policy decision point speaking the OpenID AuthZEN Authorization API 1.0: one batch
    evaluation per exchange, one per requested scope and candidate resource (README, "An
    AuthZEN PDP as permissions source")."""

    type: Literal["authzen"]
    """"authzen": ask an AuthZEN PDP."""
    url: Annotated[
        str,
        Field(min_length=1, strict=True, json_schema_extra=_URI),
        Explain(_NON_EMPTY, check=_pdp_url_problem),
        AfterValidator(lambda url: url.rstrip("/")),
    ]
    """The PDP's base URL (its PDP identifier); no query."""
    discovery: Bool = True
    """Read the endpoints from /.well-known/authzen-configuration (else the standard paths)."""
    batch: Bool = True
    """Without discovery: whether the PDP has the batch endpoint /access/v1/evaluations."""
    token_env: EnvName | None = None
    """The environment variable holding a bearer token we send (must be set)."""
    timeout: Annotated[float, Seconds(30)] = 2.0
    """Seconds for everything one exchange asks the PDP (metadata and evaluations)."""
    ttl: Annotated[int, Whole(0, 86_400)] = 60
    """Seconds an answer is cached (AuthZEN answers carry none; 0: never); never beyond the
    subject token's expiry."""
    refusal_ttl: Annotated[int, Whole(0, 3600)] = 10
    """Seconds a refusal (a requested resource denied, or none of the requested scopes granted)
    is cached at most."""
    stale_if_error: Annotated[int, Whole(0, 86_400)] = 0
    """While the PDP is down, an answer expired less than this many seconds ago still serves."""
    max_concurrency: Annotated[int, Whole(1, 1024)] = 16
    """Calls in flight at once per worker; more get 503 at once, never a queue."""
    breaker_failures: Annotated[int, Whole(1, 1000)] = 5
    """Failures (timeouts, errors, bad answers) in a row that open the circuit breaker."""
    breaker_cooldown: Annotated[float, Seconds(300)] = 2.0
    """Seconds the open breaker refuses calls before it lets one probe through."""
    subject_type: AuthzenName = "user"
    """subject.type of every evaluation; subject.id is the subject token's sub."""
    subject_properties: Annotated[
        tuple[str, ...],
        As(_lax(Text, max_length=50), _unique),
        Explain("must be a list of at most 50 non-empty strings"),
    ] = ()
    """Subject-token claims sent as subject.properties (part of the answer's cache key)."""
    actions: dict[str, AuthzenName] = {}
    """Action name per scope (scope = "action"); a scope not listed is its own action name."""
    resource_type: AuthzenName = "api"
    """resource.type of the scope evaluations; resource.id is the API's audience."""
    claims: Annotated[
        tuple[AuthzenClaimConfig, ...], As(dict[str, AuthzenClaimConfig], _claims)
    ] = Field(default={}, validate_default=True)
    """[permissions.NAME.claims.CLAIM]: claims the PDP decides (never a registered claim)."""


SourceConfig = Annotated[
    HttpSourceConfig | StaticSourceConfig | AuthzenSourceConfig, Field(discriminator="type")
]


class TransactionTokensConfig(Section, title="[transaction_tokens]"):
    """This service is its trust domain's Txn-Token service (draft-ietf-oauth-transaction-tokens
    -10): workloads exchange a user's token for a short-lived Txn-Token carrying the
    permissions answer (tctx) through an internal call chain."""

    audience: Text
    """The trust domain: `aud` of every Txn-Token, and the `audience` a request must name."""
    permissions: Text | None = None
    """The [permissions.NAME] source asked per Txn-Token ("grant": "txn-token", with the
    request's request_details); its answer's claims become `tctx`. Optional when there is
    only one [permissions.NAME] table."""
    token_ttl: Annotated[int, Whole(1, MAX_TXN_TOKEN_TTL)] = 60
    """Lifetime of a Txn-Token in seconds, never beyond the subject token's exp; a replacement
    never outlives the Txn-Token it replaces."""
    max_replacements: Annotated[int, Whole(0, MAX_TXN_REPLACEMENTS)] = 3
    """How many replacements in succession a transaction's Txn-Token may go through (each
    adds its workload to the call chain, whose length this bounds); 0: never."""


class ConfigFile(Section):
    """token-exchange configuration (config.toml). Secrets never live in this file: it names
    the environment variables that hold them. Relative paths are relative to its directory."""

    model_config = ConfigDict(title="token-exchange configuration")

    issuer: Issuer
    """`iss` of minted tokens and base URL of our endpoints (no trailing /)."""
    store: StoreConfig = Field(default_factory=dict, validate_default=True)
    signing: SigningConfig = Field(default_factory=dict, validate_default=True)
    server: ServerConfig = Field(default_factory=dict, validate_default=True)
    rate_limits: RateLimitsConfig = Field(default_factory=dict, validate_default=True)
    metrics: MetricsConfig = Field(default_factory=dict, validate_default=True)
    tracing: TracingConfig = Field(default_factory=dict, validate_default=True)
    dpop: DpopConfig = Field(default_factory=dict, validate_default=True)
    upstreams: Annotated[tuple[UpstreamConfig, ...], As(_lax(UpstreamConfig, min_length=1), tuple)]
    """[[upstreams]]: trusted issuers of subject tokens, one table each."""
    clients: Annotated[tuple[ClientConfig, ...], As(_lax(ClientConfig, min_length=1), tuple)]
    """[[clients]]: callers of /token, one table each."""
    apis: Annotated[tuple[ApiConfig, ...], As(_lax(ApiConfig, min_length=1), tuple)]
    """[[apis]]: downstream APIs that tokens can be minted for, one table each."""
    permissions: Annotated[
        dict[str, SourceConfig],
        AfterValidator(lambda sources: {n: s.named(n) for n, s in sources.items()}),
    ] = {}
    """[permissions.NAME]: the sources that decide what a user may do, by name."""
    transaction_tokens: TransactionTokensConfig | None = None
    """[transaction_tokens]: present when this service issues Txn-Tokens."""

    @property
    def token_endpoint(self) -> str:
        return self.issuer.rstrip("/") + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/jwks.json"


# -- problems ------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(name: str) -> str:
    """``name`` as TOML writes a key: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def entry_labels(entries: Any, identity: str | None) -> list[str]:
    """How problems name each entry of an array of tables: ``["spa"]`` by its ``identity`` key
    when that is a unique non-empty string, ``[1]`` otherwise."""
    if not isinstance(entries, list):
        return []
    ids = [e.get(identity) if identity and isinstance(e, Mapping) else None for e in entries]
    return [
        f"[{json.dumps(id_, ensure_ascii=False)}]"
        if isinstance(id_, str) and id_ and ids.count(id_) == 1
        else f"[{i}]"
        for i, id_ in enumerate(ids)
    ]


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated`` and without ``| None`` (TOML has no null)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = _declared(get_args(tp)[0], tp.__metadata__)
        elif _is_union(tp) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return tp


def _declared(tp: Any, metadata: Sequence[Any]) -> Any:
    """What the file holds for a key of type ``tp`` with ``metadata`` (``As``)."""
    return next((m.declared for m in metadata if isinstance(m, As)), tp)


def _is_union(tp: Any) -> bool:
    import types

    return get_origin(tp) in (Union, types.UnionType)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag(model: Any) -> str:
    field = model.model_fields["type"]
    (tag,) = get_args(field.annotation)
    return str(tag)


class _Place:
    """Where an error is: its path as the operator would write it, and what is there."""

    def __init__(self, loc: Sequence[int | str], raw: Mapping[str, Any]) -> None:
        tp: Any = ConfigFile
        data: Any = raw
        text = ""
        #: The table the last key is in, and the type at the end.
        self.table: type[BaseModel] | None = None
        for part in loc:
            tp = _unwrap(tp)
            if _is_union(tp):
                # A discriminated union's tag ("http"): not part of what the operator wrote.
                tp = next((m for m in get_args(tp) if _tag(m) == part), None)
                continue
            if isinstance(part, int):
                element = _unwrap(get_args(tp)[0]) if get_origin(tp) is list else None
                labels = entry_labels(data, getattr(element, "identity", None))
                text += labels[part] if part < len(labels) else f"[{part}]"
                data = data[part] if isinstance(data, list) and part < len(data) else None
                tp = element if get_origin(tp) is list else None
                self.table = None
                continue
            text += ("." if text else "") + toml_key(part)
            data = data.get(part) if isinstance(data, Mapping) else None
            if _is_model(tp):
                self.table = tp
                field = tp.model_fields.get(part)
                tp = None if field is None else _declared(field.annotation, field.metadata)
            elif get_origin(tp) is dict:
                self.table = None
                tp = get_args(tp)[1]
            else:
                self.table = None
                tp = None
        self.path = text
        self.type = _unwrap(tp)


def problems(error: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    """pydantic's errors as our problems: ``path: what is wrong (and how to fix it)``."""
    found: list[str] = []
    for e in error.errors(include_url=False):
        loc = e["loc"]
        place = _Place(loc, raw)
        path, kind = place.path or "config", e["type"]
        if kind == KEY_PROBLEMS:
            found.extend(p for p in (path + f for f in e["ctx"]["found"]) if p not in found)
            continue
        if kind in (_TYPE, _VALUE):
            what = e["msg"]
        elif kind == "extra_forbidden":
            what = _unknown_key(str(loc[-1]), _Place(loc[:-1], raw).type)
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            path += ".type"
            what = "must be " + " or ".join(f'"{_tag(m)}"' for m in get_args(place.type))
        elif kind in ("missing", "too_short") and _tables_of(place.type):
            what = f"at least one [[{path}]] entry is required"
        elif kind == "missing":
            what = "is required"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            what = "must be a table"
        elif kind == "list_type" and _tables_of(place.type):
            what = f"must be an array of tables ([[{path}]])"
        else:  # not expected: every key's type explains itself
            what = e["msg"][:1].lower() + e["msg"][1:]
        if (problem := f"{path}: {what}") not in found:
            found.append(problem)
    return found


def _tables_of(tp: Any) -> bool:
    return get_origin(tp) is list and _is_model(_unwrap(get_args(tp)[0]))


def _unknown_key(key: str, table: Any) -> str:
    if key in SECRET_KEYS:
        return SECRET_IN_FILE
    known = sorted(table.model_fields) if _is_model(table) else []
    if close := difflib.get_close_matches(key, known, n=1):
        return f"unknown key, did you mean {close[0]}?"
    return f"unknown key (known: {', '.join(known)})"


# -- JSON Schema ---------------------------------------------------------------------------------


class _TomlJsonSchema(GenerateJsonSchema):
    """TOML has no null: an optional key is one that may be left out, not one that may be null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        generated = super().default_schema(schema)
        if "default" in generated and generated["default"] is None:
            del generated["default"]
        return generated


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.toml, for editors (taplo, Even Better TOML) and CI.

    Draft 7, with ``definitions`` rather than 2019-09's ``$defs``: taplo documents Draft 4
    support, and draft 7 is the oldest that has everything used here (``const``, numeric
    ``exclusiveMinimum``).
    """
    schema = ConfigFile.model_json_schema(
        ref_template="#/definitions/{model}", schema_generator=_TomlJsonSchema
    )
    draft7: dict[str, Any] = _draft7(
        _if_then(
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                **{("definitions" if k == "$defs" else k): v for k, v in schema.items()},
            },
            schema.get("$defs", {}),
        )
    )
    return draft7


def _if_then(schema: Any, definitions: Mapping[str, Any]) -> Any:
    """Each ``oneOf`` chosen by a discriminator (``[permissions.NAME]`` by ``type``) as one
    ``if``/``then`` per value: validators (taplo, jsonschema) then report a mistake against the
    branch its ``type`` names, naming the bad key, where a ``oneOf`` gets every branch's errors
    (taplo repeats one message per key) or a blanket "not valid under any of the schemas"."""
    if isinstance(schema, list):
        return [_if_then(s, definitions) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _if_then(value, definitions) for key, value in schema.items()}
    discriminator = schema.pop("discriminator", None)
    if discriminator is None or "oneOf" not in schema:
        if discriminator is not None:
            schema["discriminator"] = discriminator
        return schema
    del schema["oneOf"]
    name = discriminator["propertyName"]
    mapping: Mapping[str, str] = discriminator["mapping"]
    meanings = [
        definitions[ref.rsplit("/", 1)[-1]]["properties"][name].get("description", value)
        for value, ref in mapping.items()
    ]
    return {
        **schema,
        "type": "object",
        "required": [name],
        "properties": {name: {"enum": list(mapping), "description": " ".join(meanings)}},
        "allOf": [
            {
                "if": {"properties": {name: {"const": value}}, "required": [name]},
                "then": {"$ref": ref},
            }
            for value, ref in mapping.items()
        ],
    }


def _draft7(schema: Any) -> Any:
    """Draft 7 ignores every keyword beside ``$ref``: a described reference becomes an
    ``allOf`` of one, so that editors still show the key's description. Descriptions lose the
    line breaks of the docstrings they come from."""
    if isinstance(schema, list):
        return [_draft7(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {
        key: " ".join(value.split()) if key == "description" else _draft7(value)
        for key, value in schema.items()
    }
    if "$ref" in schema and len(schema) > 1:
        return {"allOf": [{"$ref": schema.pop("$ref")}], **schema}
    return schema


def json_schema_text() -> str:
    """``json_schema()`` as the text of ``token_exchange/config.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
