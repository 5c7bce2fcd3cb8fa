"""Configuration: a TOML file plus environment variables, validated once, into frozen dataclasses.

``load_settings`` reads the file, takes secrets from the environment variables the file names
(never from the file itself) and reports every problem it finds in one ``ConfigError``. Relative
paths in the file are relative to the file's own directory.

Every key is declared once, with its type, range, default and meaning, in ``config_model``
(pydantic); this module turns a validated file into the dataclasses below and checks the rules
that relate several keys (a client's audiences must be APIs, prefixes must not overlap, ...).
The dataclasses take their defaults from the declaration, so that code building settings
directly (``devmode``, tests) gets the same ones.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..config import config_model
from ..oauth.conditions import NO_CONDITIONS, ConditionSet, Mode, parse_conditions
from ..oauth.jose import MIN_RSA_BITS, parse_jwks
from ..oauth.uris import resource_under
from .config_model import (
    CLIENT_ASSERTION_ALGORITHMS,
    ENV_STORE_URL,
    RATE,
    RATE_WINDOWS,
    ApiConfig,
    AuthzenClaimConfig,
    AuthzenSourceConfig,
    ClientConfig,
    ConfigFile,
    DpopConfig,
    HttpSourceConfig,
    Issuer,
    MetricsConfig,
    ServerConfig,
    SigningConfig,
    SourceConfig,
    StaticRuleConfig,
    StaticSourceConfig,
    StoreConfig,
    UpstreamConfig,
    entry_labels,
    toml_key,
)
from .config_model import problems as validation_problems

ENV_CONFIG = "TOKEN_EXCHANGE_CONFIG"
# Declared with the file's keys; other modules import them from here.
SIGNING_ALGORITHMS = config_model.SIGNING_ALGORITHMS
SCOPE_TOKEN = config_model.SCOPE_TOKEN
REGISTERED_CLAIMS = config_model.REGISTERED_CLAIMS


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str], *, signing: SigningSettings | None = None) -> None:
        self.problems = problems
        #: The signing section when it was valid, so key checks can still run.
        self.signing = signing
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# The declared defaults, for the dataclasses' own (model_construct fills in defaults and
# validates nothing).
_STORE = StoreConfig.model_construct()
_SIGNING = SigningConfig.model_construct()
_SERVER = ServerConfig.model_construct()
_METRICS = MetricsConfig.model_construct()
_DPOP = DpopConfig.model_construct()
_UPSTREAM = UpstreamConfig.model_construct()
_CLIENT = ClientConfig.model_construct()
_API = ApiConfig.model_construct()
_HTTP = HttpSourceConfig.model_construct()
_RULE = StaticRuleConfig.model_construct()
_AUTHZEN = AuthzenSourceConfig.model_construct()
_AUTHZEN_CLAIM = AuthzenClaimConfig.model_construct()


@dataclass(frozen=True)
class StoreSettings:
    """``[store]``; each key's meaning, range and default: ``config_model.StoreConfig``."""

    url: str = _STORE.url
    timeout: float = _STORE.timeout
    max_concurrency: int = _STORE.max_concurrency
    breaker_cooldown: float = _STORE.breaker_cooldown


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: ``config_model.MetricsConfig``."""

    port: int | None = _METRICS.port
    host: str = _METRICS.host


@dataclass(frozen=True)
class DpopSettings:
    """``[dpop]``: ``config_model.DpopConfig``."""

    algorithms: tuple[str, ...] = tuple(_DPOP.algorithms)
    window: int = _DPOP.window
    nonce: bool = _DPOP.nonce
    nonce_lifetime: int = _DPOP.nonce_lifetime


@dataclass(frozen=True)
class RateRule:
    """At most ``limit`` events per ``window`` seconds (a fixed window)."""

    limit: int
    window: int


@dataclass(frozen=True)
class RateLimitSettings:
    """``[rate_limits]``: ``config_model.RateLimitsConfig``."""

    per_client: RateRule | None = None
    per_subject: RateRule | None = None
    failures_per_address: RateRule | None = None


@dataclass(frozen=True)
class SigningSettings:
    """``[signing]``: ``config_model.SigningConfig``; ``keys_dir`` resolved against the file's
    directory."""

    keys_dir: Path = Path(_SIGNING.keys_dir)
    algorithm: str = _SIGNING.algorithm
    token_ttl: int = _SIGNING.token_ttl
    jwks_max_age: int = _SIGNING.jwks_max_age
    reload_interval: int = _SIGNING.reload_interval


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: ``config_model.ServerConfig``."""

    max_body_bytes: int = _SERVER.max_body_bytes
    trusted_proxies: int = _SERVER.trusted_proxies
    verified_token_cache: int = _SERVER.verified_token_cache
    max_in_flight: int = _SERVER.max_in_flight
    cpu_affinity: str = _SERVER.cpu_affinity


@dataclass(frozen=True)
class UpstreamSettings:
    """A trusted issuer of subject tokens (RFC 8725 §3.8: ``iss`` must match exactly);
    ``config_model.UpstreamConfig``."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = _UPSTREAM.jwks_uri
    algorithms: tuple[str, ...] = tuple(_UPSTREAM.algorithms)
    subject_prefix: str = _UPSTREAM.subject_prefix
    leeway: int = _UPSTREAM.leeway
    jwks_refresh_interval: int = _UPSTREAM.jwks_refresh_interval
    jwks_cooldown: int = _UPSTREAM.jwks_cooldown
    jwks_timeout: float = _UPSTREAM.jwks_timeout
    jwks_wait: float = _UPSTREAM.jwks_wait
    jwks_max_concurrency: int = _UPSTREAM.jwks_max_concurrency
    jwks_breaker_cooldown: float = _UPSTREAM.jwks_breaker_cooldown
    #: ``[upstreams.conditions]`` and ``conditions_mode``, compiled.
    conditions: ConditionSet = NO_CONDITIONS
    require_bound_tokens: bool = _UPSTREAM.require_bound_tokens

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ClientSettings:
    """A ``[[clients]]`` entry: ``config_model.ClientConfig``."""

    client_id: str
    type: Literal["public", "confidential"]
    audiences: tuple[str, ...]
    allowed_origins: tuple[str, ...] = tuple(_CLIENT.allowed_origins)
    secret_env: str | None = _CLIENT.secret_env
    #: Read from the environment variable named by ``secret_env``; never from the file.
    secret: str | None = field(default=None, repr=False)
    token_endpoint_auth_method: str | None = _CLIENT.token_endpoint_auth_method
    jwks_uri: str | None = _CLIENT.jwks_uri
    #: A JWK Set of public keys; not compared (a dict is not hashable).
    jwks: Mapping[str, Any] | None = field(default=_CLIENT.jwks, compare=False)
    allow_delegation: bool = _CLIENT.allow_delegation
    #: None means every scope of its APIs.
    scopes: tuple[str, ...] | None = None
    introspects: tuple[str, ...] = tuple(_CLIENT.introspects)
    #: ``subject_conditions`` and ``subject_conditions_mode``, compiled.
    subject_conditions: ConditionSet = NO_CONDITIONS
    #: ``actor_conditions`` and ``actor_conditions_mode``, compiled.
    actor_conditions: ConditionSet = NO_CONDITIONS
    max_delegation_depth: int = _CLIENT.max_delegation_depth
    dpop: Literal["allowed", "required"] = _CLIENT.dpop


@dataclass(frozen=True)
class ApiSettings:
    """An ``[[apis]]`` entry: ``config_model.ApiConfig``."""

    audience: str
    permissions: str
    scopes: tuple[str, ...] = ()
    resources: tuple[str, ...] = tuple(_API.resources)
    copy_claims: tuple[str, ...] = tuple(_API.copy_claims)
    authorization_details_types: tuple[str, ...] = tuple(_API.authorization_details_types)


@dataclass(frozen=True)
class HttpPermissionsSettings:
    """A ``type = "http"`` permissions source: ``config_model.HttpSourceConfig``."""

    #: Its name, the NAME of ``[permissions.NAME]``.
    name: str
    url: str
    timeout: float = _HTTP.timeout
    token_env: str | None = _HTTP.token_env
    #: Read from the environment variable named by ``token_env``; never from the file.
    token: str | None = field(default=None, repr=False)
    cache_max_ttl: int = _HTTP.cache_max_ttl
    cache_refusal_ttl: int = _HTTP.cache_refusal_ttl
    stale_if_error: int = _HTTP.stale_if_error
    max_concurrency: int = _HTTP.max_concurrency
    breaker_failures: int = _HTTP.breaker_failures
    breaker_cooldown: float = _HTTP.breaker_cooldown
    type: Literal["http"] = "http"


@dataclass(frozen=True)
class StaticRule:
    """One rule of a static permissions source; the first rule that matches decides
    (``config_model.StaticRuleConfig``)."""

    subject: str = _RULE.subject
    issuer: str = _RULE.issuer
    client_id: str = _RULE.client_id
    audience: str = _RULE.audience
    resources: tuple[str, ...] = tuple(_RULE.resources)
    allow: bool = _RULE.allow
    scopes: tuple[str, ...] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StaticPermissionsSettings:
    name: str
    rules: tuple[StaticRule, ...]
    type: Literal["static"] = "static"


@dataclass(frozen=True)
class AuthzenClaim:
    """``[permissions.NAME.claims.CLAIM]``: a claim the PDP decides
    (``config_model.AuthzenClaimConfig``). Candidates (``resource_type`` with
    ``candidates_from`` and/or ``candidates``), or ``from_context``: a path into a decision's
    ``context``, split at its dots."""

    name: str
    resource_type: str | None = _AUTHZEN_CLAIM.resource_type
    action: str = _AUTHZEN_CLAIM.action
    candidates_from: Literal["resources"] | None = _AUTHZEN_CLAIM.candidates_from
    resource_prefix: str | None = _AUTHZEN_CLAIM.resource_prefix
    candidates: tuple[str, ...] = tuple(_AUTHZEN_CLAIM.candidates)
    from_context: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AuthzenPermissionsSettings:
    """A ``type = "authzen"`` permissions source: ``config_model.AuthzenSourceConfig``."""

    #: Its name, the NAME of ``[permissions.NAME]``.
    name: str
    #: The PDP's base URL, without a trailing '/'.
    url: str
    discovery: bool = _AUTHZEN.discovery
    batch: bool = _AUTHZEN.batch
    token_env: str | None = _AUTHZEN.token_env
    #: Read from the environment variable named by ``token_env``; never from the file.
    token: str | None = field(default=None, repr=False)
    timeout: float = _AUTHZEN.timeout
    ttl: int = _AUTHZEN.ttl
    refusal_ttl: int = _AUTHZEN.refusal_ttl
    stale_if_error: int = _AUTHZEN.stale_if_error
    max_concurrency: int = _AUTHZEN.max_concurrency
    breaker_failures: int = _AUTHZEN.breaker_failures
    breaker_cooldown: float = _AUTHZEN.breaker_cooldown
    subject_type: str = _AUTHZEN.subject_type
    subject_properties: tuple[str, ...] = tuple(_AUTHZEN.subject_properties)
    actions: Mapping[str, str] = field(default_factory=dict)
    resource_type: str = _AUTHZEN.resource_type
    claims: tuple[AuthzenClaim, ...] = ()
    type: Literal["authzen"] = "authzen"


PermissionsSettings = (
    HttpPermissionsSettings | StaticPermissionsSettings | AuthzenPermissionsSettings
)
_SourceModel = HttpSourceConfig | StaticSourceConfig | AuthzenSourceConfig


def authzen_settings(
    name: str, model: AuthzenSourceConfig, env: Mapping[str, str], problems: list[str]
) -> AuthzenPermissionsSettings:
    """The source ``model`` describes; what its keys get wrong together goes to ``problems``."""
    where = f"permissions.{toml_key(name)}"
    claims = []
    for claim_name, claim in model.claims.items():
        at = f"{where}.claims.{toml_key(claim_name)}"
        # The PDP adds claims; it can never set one we are responsible for.
        if claim_name in REGISTERED_CLAIMS:
            problems.append(f"{at}: is a registered claim we set ourselves")
        if claim.from_context is not None:
            others = claim.model_fields_set - {"from_context"}
            if others:
                problems.append(
                    f"{at}: from_context takes no other key ({', '.join(sorted(others))})"
                )
        else:
            if claim.resource_type is None:
                problems.append(f"{at}.resource_type: is required for candidates")
            if claim.candidates_from is not None and claim.resource_prefix is None:
                problems.append(
                    f'{at}.resource_prefix: is required with candidates_from = "resources"'
                )
            if claim.candidates_from is None and claim.resource_prefix is not None:
                problems.append(
                    f'{at}.resource_prefix: is used only with candidates_from = "resources"'
                )
            if claim.candidates_from is None and not claim.candidates:
                problems.append(
                    f'{at}: needs candidates_from = "resources", candidates = [...], '
                    "or from_context"
                )
        fields = _fields(claim, exclude={"from_context"})
        path = None if claim.from_context is None else tuple(claim.from_context.split("."))
        claims.append(AuthzenClaim(name=claim_name, from_context=path, **fields))
    token = env.get(model.token_env) if model.token_env else None
    return AuthzenPermissionsSettings(
        name=name,
        token=token or None,
        claims=tuple(claims),
        **{
            **_fields(model, exclude={"type", "claims"}),
            "url": model.url.rstrip("/"),
            "actions": dict(model.actions),
        },
    )


@dataclass(frozen=True)
class Settings:
    issuer: str
    upstreams: tuple[UpstreamSettings, ...]
    clients: tuple[ClientSettings, ...]
    apis: tuple[ApiSettings, ...]
    permissions: Mapping[str, PermissionsSettings]
    store: StoreSettings = StoreSettings()
    signing: SigningSettings = SigningSettings()
    server: ServerSettings = ServerSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    dpop: DpopSettings = DpopSettings()

    @property
    def token_endpoint(self) -> str:
        return self.issuer.rstrip("/") + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/jwks.json"


# --------------------------------------------------------------------------------------------
# Loading


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at ``path``; raise ``ConfigError`` listing every problem."""
    env = os.environ if env is None else env
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read ({e.__class__.__name__})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML ({e})"]) from None
    return parse_settings(raw, env=env, base_dir=path.resolve().parent)


def parse_settings(raw: Mapping[str, Any], *, env: Mapping[str, str], base_dir: Path) -> Settings:
    """Validate an already-parsed TOML document; see ``load_settings``."""
    store = raw.get("store")
    if env.get(ENV_STORE_URL) and (store is None or isinstance(store, Mapping)):
        raw = {**raw, "store": {**(store or {}), "url": env[ENV_STORE_URL]}}
    context = {"env": env}
    try:
        config: ConfigFile | None = ConfigFile.model_validate(raw, context=context)
    except ValidationError as e:
        config = None
        problems = validation_problems(e, raw)
    else:
        problems = []
    parts = _Parts.of(config) if config is not None else _Parts.salvage(raw, context)
    built = _Build(raw, env, base_dir, parts, problems)
    if problems or config is None:
        raise ConfigError(problems, signing=built.signing)
    return Settings(
        issuer=config.issuer,
        upstreams=tuple(built.upstreams.values()),
        clients=tuple(built.clients.values()),
        apis=tuple(built.apis.values()),
        permissions=built.permissions,
        store=_store_settings(config.store, base_dir),
        signing=built.signing or SigningSettings(),
        server=ServerSettings(**_fields(config.server)),
        rate_limits=RateLimitSettings(
            **{key: _rate_rule(value) for key, value in _fields(config.rate_limits).items()}
        ),
        metrics=MetricsSettings(**_fields(config.metrics)),
        dpop=DpopSettings(**_fields(config.dpop)),
    )


def _fields(model: BaseModel, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """A validated table's keys as dataclass fields: lists become tuples, without repeats."""
    return {
        name: tuple(dict.fromkeys(value)) if isinstance(value, list) else value
        for name, value in ((n, getattr(model, n)) for n in type(model).model_fields)
        if name not in exclude
    }


def _store_settings(config: StoreConfig, base_dir: Path) -> StoreSettings:
    """``[store]``, with a relative SQLite path resolved against the file's directory."""
    fields = _fields(config)
    parts = urlsplit(config.url)
    if parts.scheme == "sqlite" and not parts.path.startswith("/"):
        fields["url"] = "sqlite://" + quote(str(base_dir / unquote(parts.path)))
    return StoreSettings(**fields)


def _rate_rule(value: str | None) -> RateRule | None:
    match = None if value is None else RATE.match(value)
    if match is None:
        return None
    return RateRule(limit=int(match["limit"]), window=RATE_WINDOWS[match["unit"]])


@dataclass
class _Parts:
    """What validated: all of the file, or (when something did not) each entry that did, by
    its index, so that the rules between entries can still be checked."""

    issuer: str | None
    signing: SigningConfig | None
    upstreams: dict[int, UpstreamConfig]
    clients: dict[int, ClientConfig]
    apis: dict[int, ApiConfig]
    permissions: dict[str, _SourceModel]

    @classmethod
    def of(cls, config: ConfigFile) -> _Parts:
        return cls(
            issuer=config.issuer,
            signing=config.signing,
            upstreams=dict(enumerate(config.upstreams)),
            clients=dict(enumerate(config.clients)),
            apis=dict(enumerate(config.apis)),
            permissions=dict(config.permissions),
        )

    @classmethod
    def salvage(cls, raw: Mapping[str, Any], context: dict[str, Any]) -> _Parts:
        def valid(adapter: TypeAdapter[Any], value: Any) -> Any:
            try:
                return adapter.validate_python(value, context=context)
            except ValidationError:
                return None

        def entries(key: str, model: type[BaseModel]) -> dict[int, Any]:
            values = raw.get(key)
            adapter = TypeAdapter(model)
            checked = enumerate(values) if isinstance(values, list) else ()
            return {i: m for i, v in checked if (m := valid(adapter, v)) is not None}

        sources = raw.get("permissions")
        source = TypeAdapter[_SourceModel](SourceConfig)
        return cls(
            issuer=valid(TypeAdapter(Issuer), raw.get("issuer")),
            signing=valid(TypeAdapter(SigningConfig), raw.get("signing", {})),
            upstreams=entries("upstreams", UpstreamConfig),
            clients=entries("clients", ClientConfig),
            apis=entries("apis", ApiConfig),
            permissions={
                name: m
                for name, v in (sources.items() if isinstance(sources, Mapping) else ())
                if (m := valid(source, v)) is not None
            },
        )


class _Build:
    """Builds the dataclasses of what validated and checks the rules between keys, adding
    each broken one to ``problems``."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        env: Mapping[str, str],
        base_dir: Path,
        parts: _Parts,
        problems: list[str],
    ) -> None:
        self.raw, self.env, self.problems = raw, env, problems
        self.labels = {
            key: entry_labels(raw.get(key), model.identity)
            for key, model in (
                ("upstreams", UpstreamConfig),
                ("clients", ClientConfig),
                ("apis", ApiConfig),
            )
        }
        self.signing = (
            None
            if parts.signing is None
            else SigningSettings(
                **_fields(parts.signing, exclude={"keys_dir"}),
                keys_dir=base_dir / parts.signing.keys_dir,
            )
        )
        #: Raw entries, valid or not, so that a reference to an invalid one is not "unknown".
        self.named_audiences = self._raw_names("apis", "audience")
        self.conditions = {
            **self._compile_conditions("upstreams", UpstreamConfig, parts.upstreams),
            **self._compile_conditions("clients", ClientConfig, parts.clients),
        }
        self.own_issuer = parts.issuer
        self.permissions = {
            name: self._source(name, source) for name, source in parts.permissions.items()
        }
        self.upstreams = {i: self._upstream(i, m) for i, m in parts.upstreams.items()}
        self.apis = {i: self._api(i, m) for i, m in parts.apis.items()}
        self.clients = {i: self._client(i, m) for i, m in parts.clients.items()}
        self._check_duplicates()
        self._check_prefixes()
        self._check_resource_overlap()
        self._check_scope_references(all_apis=len(self.apis) == self._count("apis"))
        if self._count("upstreams") > 1:
            self._check_rule_issuers()

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def where(self, key: str, index: int) -> str:
        """How problems name entry ``index`` of ``[[key]]``: ``clients["spa"]``."""
        return key + self.labels[key][index]

    def _count(self, key: str) -> int:
        entries = self.raw.get(key)
        return len(entries) if isinstance(entries, list) else 0

    def _raw_names(self, key: str, identity: str) -> set[str]:
        entries = self.raw.get(key)
        return {
            e[identity]
            for e in (entries if isinstance(entries, list) else ())
            if isinstance(e, Mapping) and isinstance(e.get(identity), str)
        }

    def _compile_conditions(
        self, key: str, model: type[BaseModel], valid: Mapping[int, BaseModel]
    ) -> dict[tuple[str, int, str], ConditionSet]:
        """Every condition table of every entry, valid or not (``conditions.parse_conditions``
        reports their problems)."""
        compiled: dict[tuple[str, int, str], ConditionSet] = {}
        entries = self.raw.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, Mapping):
                continue
            for name in (n for n in model.model_fields if n.endswith("conditions")):
                mode: Mode = getattr(valid[i], f"{name}_mode") if i in valid else "enforce"
                conditions, problems = parse_conditions(
                    entry.get(name), f"{self.where(key, i)}.{name}", mode
                )
                self.problems.extend(problems)
                compiled[key, i, name] = conditions
        return compiled

    # -- entries ----------------------------------------------------------------------------

    def _source(self, name: str, source: _SourceModel) -> PermissionsSettings:
        if isinstance(source, AuthzenSourceConfig):
            return authzen_settings(name, source, self.env, self.problems)
        if isinstance(source, StaticSourceConfig):
            return StaticPermissionsSettings(
                name=name, rules=tuple(StaticRule(**_fields(r)) for r in source.rules)
            )
        token = self.env.get(source.token_env) if source.token_env else None
        return HttpPermissionsSettings(name=name, token=token, **_fields(source))

    def _upstream(self, i: int, m: UpstreamConfig) -> UpstreamSettings:
        where = self.where("upstreams", i)
        if m.issuer == self.own_issuer and m.jwks_uri is None:
            self.problem(
                f"{where}.jwks_uri",
                f"is required for our own issuer ({m.issuer}/.well-known/jwks.json): "
                "we serve no OpenID Connect discovery",
            )
        if m.issuer == self.own_issuer and m.subject_prefix:
            # Our own tokens (chained delegation) already carry subjects in our namespace,
            # prefixed when they were first minted; a second prefix would make the same
            # user someone else at every hop.
            self.problem(f"{where}.subject_prefix", "must be empty for our own issuer")
        return UpstreamSettings(
            **_fields(m, exclude={"conditions", "conditions_mode"}),
            conditions=self.conditions["upstreams", i, "conditions"],
        )

    def _api(self, i: int, m: ApiConfig) -> ApiSettings:
        sources = self.raw.get("permissions", {})
        if isinstance(sources, Mapping) and m.permissions not in sources:
            self.problem(
                f"{self.where('apis', i)}.permissions", f"no [permissions.{m.permissions}] table"
            )
        return ApiSettings(**_fields(m))

    def _client(self, i: int, m: ClientConfig) -> ClientSettings:
        where = self.where("clients", i)
        self._check_client_authentication(where, m)
        for key in ("audiences", "introspects"):
            for audience in getattr(m, key):
                if audience not in self.named_audiences:
                    self.problem(f"{where}.{key}", f"{audience} is not an [[apis]] audience")
        if not m.audiences and not m.introspects:
            self.problem(f"{where}.audiences", "is required (the APIs this client may target)")
        if m.introspects and m.type != "confidential":
            self.problem(f"{where}.introspects", "only a confidential client may introspect")
        actor_conditions = self.conditions["clients", i, "actor_conditions"]
        if m.allow_delegation and not actor_conditions:
            # Without it, any token of anyone this client holds could be its actor token.
            self.problem(
                f"{where}.actor_conditions",
                "is required for a client with allow_delegation: bind the actor tokens it "
                "may present to itself (e.g. azp or sub = its own application's id)",
            )
        elif (
            m.allow_delegation
            and actor_conditions.mode == "enforce"
            and not pins_actor_identity(actor_conditions)
        ):
            # Conditions on gty or scope alone hold for every other client's actor tokens
            # too: one of them must say whose token it is.
            self.problem(
                f"{where}.actor_conditions",
                f"must bind the actor tokens of client {m.client_id} to its own identity: an "
                f"equals or one_of condition on {' or '.join(ACTOR_IDENTITY_CLAIMS)} "
                '(e.g. azp = "<its own application\'s id>")',
            )
        elif (
            m.allow_delegation
            and actor_conditions.mode == "enforce"
            and self._count("upstreams") > 1
            and not pins_actor_issuer(actor_conditions)
        ):
            # Identities are (issuer, sub) pairs: another issuer's token with the same azp,
            # client_id or sub is someone else's, and would pass (issue 21).
            self.problem(
                f"{where}.actor_conditions",
                f"must name the one issuer of the actor tokens of client {m.client_id} when "
                'several upstreams are configured (iss = "<an [[upstreams]] issuer>"): another '
                "issuer's token with the same " + " or ".join(ACTOR_IDENTITY_CLAIMS) + " is "
                "someone else's",
            )
        elif m.actor_conditions is not None and not m.allow_delegation:
            self.problem(f"{where}.actor_conditions", "only for a client with allow_delegation")
        conditions = {"subject_conditions", "actor_conditions"}
        return ClientSettings(
            **_fields(m, exclude={*conditions, *(f"{c}_mode" for c in conditions)}),
            secret=self.env.get(m.secret_env)
            if m.secret_env and m.type == "confidential"
            else None,
            subject_conditions=self.conditions["clients", i, "subject_conditions"],
            actor_conditions=actor_conditions,
        )

    def _check_client_authentication(self, where: str, m: ClientConfig) -> None:
        """A confidential client has exactly one way to authenticate: a secret (secret_env),
        or with private_key_jwt its public keys (jwks or jwks_uri); a public client none."""
        method = m.token_endpoint_auth_method
        if m.type == "public":
            for key in ("secret_env", "token_endpoint_auth_method", "jwks", "jwks_uri"):
                if getattr(m, key) is not None:
                    self.problem(f"{where}.{key}", "a public client does not authenticate")
            return
        if method != "private_key_jwt":
            if m.secret_env is None:
                self.problem(f"{where}.secret_env", "is required for a confidential client")
            for key in ("jwks", "jwks_uri"):
                if getattr(m, key) is not None:
                    self.problem(
                        f"{where}.{key}",
                        'is used only with token_endpoint_auth_method = "private_key_jwt"',
                    )
            return
        if m.secret_env is not None:
            self.problem(
                f"{where}.secret_env",
                "a private_key_jwt client has no secret: it signs with its own key",
            )
        if (m.jwks is None) == (m.jwks_uri is None):
            self.problem(
                f"{where}.jwks_uri", "a private_key_jwt client needs exactly one of jwks, jwks_uri"
            )
        if m.jwks is not None and not parse_jwks(m.jwks, CLIENT_ASSERTION_ALGORITHMS):
            self.problem(
                f"{where}.jwks",
                "holds no public key usable with "
                + ", ".join(CLIENT_ASSERTION_ALGORITHMS)
                + f" (RSA keys: at least {MIN_RSA_BITS} bits)",
            )

    # -- rules between entries --------------------------------------------------------------

    def _check_duplicates(self) -> None:
        for key, what, values in (
            ("upstreams", "issuer", [u.issuer for u in self.upstreams.values()]),
            ("apis", "audience", [a.audience for a in self.apis.values()]),
            ("clients", "client_id", [c.client_id for c in self.clients.values()]),
        ):
            for value in dict.fromkeys(v for v in values if values.count(v) > 1):
                self.problem(key, f"{what} {value} is configured twice")

    def _check_prefixes(self) -> None:
        # With several issuers, the same `sub` from two of them must not become the same minted
        # `sub`. Prefixes that are non-empty and none a prefix of another guarantee that. Our
        # own issuer (chained delegation) is the exception: its subjects are already minted
        # ones, prefixed at the first hop, so the same user stays the same `sub`.
        others = {i: u for i, u in self.upstreams.items() if u.issuer != self.own_issuer}
        if len(others) < 2:
            return
        for i, a in others.items():
            if not a.subject_prefix:
                self.problem(
                    f"{self.where('upstreams', i)}.subject_prefix",
                    "is required when several upstreams are configured, so that equal `sub` "
                    "values from different issuers stay distinct in minted tokens",
                )
            for j, b in others.items():
                if (
                    i < j
                    and a.subject_prefix
                    and b.subject_prefix
                    and (
                        a.subject_prefix.startswith(b.subject_prefix)
                        or b.subject_prefix.startswith(a.subject_prefix)
                    )
                ):
                    self.problem(
                        f"{self.where('upstreams', j)}.subject_prefix",
                        f"overlaps with {self.where('upstreams', i)}.subject_prefix (neither "
                        "may start with the other)",
                    )

    def _check_resource_overlap(self) -> None:
        # A resource must pick exactly one API: prefixes of different APIs may not nest.
        for i, a in self.apis.items():
            for j, b in self.apis.items():
                if i >= j:
                    continue
                for pa in (a.audience, *a.resources):
                    for pb in (b.audience, *b.resources):
                        if resource_under(pa, pb) or resource_under(pb, pa):
                            self.problem(
                                f"{self.where('apis', j)}.resources",
                                f"{pb} overlaps {pa} of {self.where('apis', i)}: a resource "
                                "must name one API",
                            )

    def _check_scope_references(self, *, all_apis: bool) -> None:
        """Scopes and audiences named by clients and static rules must be ones the APIs define:
        a typo there would otherwise pass check-config and silently grant nothing. A reference
        to an API that is itself invalid is not checked (that API's problem is reported)."""
        by_audience = {api.audience: api for api in self.apis.values()}
        every_scope = {s for api in self.apis.values() for s in api.scopes}
        for i, client in self.clients.items():
            if not all(a in by_audience for a in client.audiences):
                continue
            theirs = {s for a in client.audiences for s in by_audience[a].scopes}
            for scope in client.scopes or ():
                if scope not in theirs:
                    self.problem(
                        f"{self.where('clients', i)}.scopes",
                        f"{scope!r} is not a scope of any API client {client.client_id} may get "
                        "tokens for",
                    )
        for name, source in self.permissions.items():
            if isinstance(source, AuthzenPermissionsSettings) and all_apis:
                # An action for a scope no API using this source defines: a typo that would
                # silently ask the PDP the wrong question.
                used = {
                    s for api in self.apis.values() if api.permissions == name for s in api.scopes
                }
                for scope in source.actions:
                    if scope not in used:
                        self.problem(
                            f"permissions.{toml_key(name)}.actions.{toml_key(scope)}",
                            "is not a scope of any API using this source",
                        )
            if not isinstance(source, StaticPermissionsSettings):
                continue
            for i, rule in enumerate(source.rules):
                where = f"permissions.{toml_key(name)}.rules[{i}]"
                api = by_audience.get(rule.audience)
                if rule.audience != "*" and rule.audience not in self.named_audiences:
                    self.problem(
                        f"{where}.audience", f"{rule.audience} is not an [[apis]] audience"
                    )
                    continue
                if api is None and (rule.audience != "*" or not all_apis):
                    continue
                known = set(api.scopes) if api is not None else every_scope
                for scope in rule.scopes or ():
                    if scope not in known:
                        self.problem(
                            f"{where}.scopes",
                            f"{scope!r} is not a scope of "
                            + (f"API {rule.audience}" if api is not None else "any API"),
                        )

    def _check_rule_issuers(self) -> None:
        # The same `sub` from two issuers is two people: a rule for one subject names its issuer.
        for name, source in self.permissions.items():
            if isinstance(source, StaticPermissionsSettings):
                for i, rule in enumerate(source.rules):
                    if rule.subject != "*" and rule.issuer == "*":
                        self.problem(
                            f"permissions.{toml_key(name)}.rules[{i}].issuer",
                            "is required for a rule naming a subject when several upstreams "
                            "are configured",
                        )


#: Claims that say whose token an actor token is (Auth0: ``azp``, or ``client_id`` in the
#: RFC 9068 profile; ``sub`` is the application's ``<id>@clients``).
ACTOR_IDENTITY_CLAIMS = ("azp", "client_id", "sub")


def pins_actor_identity(conditions: ConditionSet) -> bool:
    """Whether ``conditions`` name the actor: an equals or one_of on an identity claim."""
    return any(
        c.claim in ACTOR_IDENTITY_CLAIMS and c.operator in ("equals", "one_of")
        for c in conditions.conditions
    )


def receives(client_id: str, introspects: Collection[str], audience: str) -> bool:
    """Whether a client is the API ``audience`` names, to which the tokens minted for it are
    sent: its ``client_id`` is the audience, or it ``introspects`` that API (the API itself,
    registered as a client). Only that client may present them back (chained delegation)."""
    return client_id == audience or audience in introspects


def pins_actor_issuer(conditions: ConditionSet) -> bool:
    """Whether ``conditions`` name the one issuer of the actor tokens: ``iss`` equals one
    value (a one_of naming several would let each issuer's token of the same id pass)."""
    return any(
        c.claim == "iss" and c.operator in ("equals", "one_of") and len(c.values) == 1
        for c in conditions.conditions
    )


def pins_actor_sub(conditions: ConditionSet) -> bool:
    """Whether ``conditions`` bind the actor's ``sub``, which is what ``act`` states."""
    return any(
        c.claim == "sub" and c.operator in ("equals", "one_of") for c in conditions.conditions
    )


def _label(key: str, values: list[str], index: int) -> str:
    """How warnings name entry ``index`` of ``[[key]]`` (as problems do)."""
    return key + entry_labels([{"id": v} for v in values], "id")[index]


def config_warnings(settings: Settings) -> list[str]:
    """Likely mistakes in a valid configuration, for ``check-config`` to point out.

    Warnings, not problems: each one fails closed (no token is accepted that should not be).
    """
    warnings: list[str] = []
    issuers = [u.issuer for u in settings.upstreams]
    for i, upstream in enumerate(settings.upstreams):
        host = (urlsplit(upstream.issuer).hostname or "").lower()
        if host.endswith(".auth0.com") and not upstream.issuer.endswith("/"):
            # Auth0's `iss` always ends with "/", and `iss` is compared exactly: without it,
            # every token from this tenant is refused (reason issuer_untrusted).
            warnings.append(
                f"{_label('upstreams', issuers, i)}.issuer: Auth0 issuers end with '/': "
                f"use {upstream.issuer}/ (the exact `iss` of its tokens)"
            )
    chained = settings.issuer in issuers
    for i, upstream in enumerate(settings.upstreams):
        if upstream.issuer != settings.issuer:
            continue
        for audience in upstream.audiences:
            # A token of ours comes back only from the client its aud names (exchange.receives):
            # tokens for an API that is no delegating client are accepted back by nobody.
            if not any(
                c.allow_delegation and receives(c.client_id, c.introspects, audience)
                for c in settings.clients
            ):
                warnings.append(
                    f"{_label('upstreams', issuers, i)}.audiences: {audience}: no client with "
                    "allow_delegation is that API (client_id, or introspects it), so no token "
                    "of ours for it is ever accepted back (a token of ours comes back only from "
                    "the client its aud names)"
                )
    client_ids = [c.client_id for c in settings.clients]
    for i, client in enumerate(settings.clients):
        where = _label("clients", client_ids, i)
        if chained and client.allow_delegation and client.subject_conditions:
            # Only delegating clients may present our own tokens as subject tokens; their
            # subject_conditions then see the claims we minted, not the original token's.
            warnings.append(
                f"{where}.subject_conditions: client {client.client_id} may present this "
                "service's own tokens (chained delegation); its subject_conditions are then "
                "evaluated on the claims we minted, not on those of the original subject token"
            )
        if (
            client.allow_delegation
            and client.actor_conditions.mode == "enforce"
            and not pins_actor_sub(client.actor_conditions)
        ):
            # act states the actor token's sub: azp or client_id name the application that
            # obtained the token, not whom it is about. A user who signs in through that
            # application, or a token of ours minted to it for another user, would pass.
            warnings.append(
                f"{where}.actor_conditions: client {client.client_id} binds its actor tokens "
                "without their sub, which is what act states: a token about someone else "
                "obtained through the same application (a user who signs in through it, or a "
                "token of ours minted to it for another user) passes as its actor; bind sub "
                '(Auth0 client-credentials tokens: sub = "<the application\'s client id>@clients")'
            )
        named = {
            value
            for c in client.actor_conditions.conditions
            if c.claim == "iss" and c.operator in ("equals", "one_of")
            for _, value in c.values
        }
        for issuer in sorted(str(v) for v in named if v not in issuers):
            # Fails closed (no actor token has that iss), but is surely a typo: Auth0's
            # trailing slash, say.
            warnings.append(
                f"{where}.actor_conditions.iss: {issuer} is not an [[upstreams]] issuer: no "
                "actor token from it is ever verified"
            )
        if client.allow_delegation and client.actor_conditions.mode == "audit":
            # Audit mode refuses nothing: any verified token of anyone is this client's actor
            # token until the mode is "enforce".
            warnings.append(
                f'{where}.actor_conditions_mode: "audit": client {client.client_id} may '
                "present anyone's token as its actor_token (mismatches are only logged)"
            )
    return warnings
