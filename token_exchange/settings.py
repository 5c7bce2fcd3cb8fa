"""Configuration: a TOML file plus environment variables, validated once, into frozen dataclasses.

``load_settings`` reads the file, takes secrets from the environment variables the file names
(never from the file itself) and reports every problem it finds in one ``ConfigError``. Relative
paths in the file are relative to the file's own directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

from .conditions import NO_CONDITIONS, ConditionSet, parse_conditions, parse_mode
from .uris import resource_under, url_problem

if TYPE_CHECKING:
    # authzen.py declares its own settings and imports this module (so not at run time here).
    from .authzen import AuthzenPermissionsSettings

ENV_CONFIG = "TOKEN_EXCHANGE_CONFIG"
ENV_STORE_URL = "TOKEN_EXCHANGE_STORE_URL"

#: Asymmetric JWS algorithms (RFC 7518 §3, RFC 8037). HMAC and "none" are never accepted for
#: subject tokens (RFC 8725 §3.1): an HMAC "key" would be the issuer's public key.
UPSTREAM_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: Algorithms we sign minted tokens with.
SIGNING_ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")

#: Claims that we set on every minted token and that nothing else may set (RFC 7519 §4.1,
#: RFC 9068 §2.2, RFC 8693 §4, RFC 7800, RFC 9396 §9.1).
REGISTERED_CLAIMS = frozenset(
    {
        "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "act", "cnf",
        "may_act", "authorization_details",
    }
)  # fmt: skip

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")

STORE_SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
RATE = re.compile(r"^\s*(?P<limit>\d+)\s*/\s*(?P<unit>second|minute|hour)\s*$")
RATE_WINDOWS = {"second": 1, "minute": 60, "hour": 3600}

MAX_TOKEN_TTL = 86_400
#: Longest ``act`` chain (RFC 8693 §4.1) a minted token may carry; ``max_delegation_depth``.
DEFAULT_DELEGATION_DEPTH = 4
MAX_DELEGATION_DEPTH = 10
MAX_JWKS_COOLDOWN = 30
MIN_JWKS_COOLDOWN = 1


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str], *, signing: SigningSettings | None = None) -> None:
        self.problems = problems
        #: The signing section when it was readable, so key checks can still run.
        self.signing = signing
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class StoreSettings:
    url: str = "memory://"
    #: Seconds to wait for Redis before treating it as down.
    timeout: float = 0.25
    #: Calls to the store in flight at once per worker; more are refused at once.
    max_concurrency: int = 32
    #: After a failure, the store is not tried for this long (then one probe goes through).
    breaker_cooldown: float = 1.0


@dataclass(frozen=True)
class MetricsSettings:
    #: Serve /metrics on this port instead of the main one (None: on the main port).
    port: int | None = None
    host: str = "0.0.0.0"  # noqa: S104 - the metrics port is meant for the scraper


@dataclass(frozen=True)
class RateRule:
    """At most ``limit`` events per ``window`` seconds (a fixed window)."""

    limit: int
    window: int


@dataclass(frozen=True)
class RateLimitSettings:
    per_client: RateRule | None = None
    per_subject: RateRule | None = None
    failures_per_address: RateRule | None = None


@dataclass(frozen=True)
class SigningSettings:
    keys_dir: Path = Path("keys")
    algorithm: str = "ES256"
    token_ttl: int = 300
    jwks_max_age: int = 300
    #: How often a running service looks for changes in ``keys_dir``.
    reload_interval: int = 2


@dataclass(frozen=True)
class ServerSettings:
    max_body_bytes: int = 64 * 1024
    #: Reverse proxies in front of us whose X-Forwarded-For entries we believe.
    trusted_proxies: int = 0
    #: Verified subject tokens remembered per process (0 turns the cache off).
    verified_token_cache: int = 10_000
    #: Requests in flight per worker past which new ones are answered 503 at once (shed).
    max_in_flight: int = 64


@dataclass(frozen=True)
class UpstreamSettings:
    """A trusted issuer of subject tokens (RFC 8725 §3.8: ``iss`` must match exactly)."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    #: Prepended to ``sub`` in minted tokens so equal subjects of two issuers stay distinct.
    subject_prefix: str = ""
    leeway: int = 30
    jwks_refresh_interval: int = 300
    jwks_cooldown: int = 30
    #: Longest time one JWKS or discovery fetch may take.
    jwks_timeout: float = 5.0
    #: How long a request waits for a fetch that another request started (0: not at all).
    jwks_wait: float = 1.0
    #: Requests that may wait on this issuer's key fetch at once, the fetcher included.
    jwks_max_concurrency: int = 4
    #: After a failed fetch, no new fetch for this long; then one probe goes through.
    jwks_breaker_cooldown: float = 2.0
    #: What every subject token from this issuer must satisfy (``[upstreams.conditions]``).
    conditions: ConditionSet = NO_CONDITIONS

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ClientSettings:
    client_id: str
    type: Literal["public", "confidential"]
    audiences: tuple[str, ...]
    allowed_origins: tuple[str, ...] = ()
    secret_env: str | None = None
    #: Read from the environment variable named by ``secret_env``; never from the file.
    secret: str | None = field(default=None, repr=False)
    #: May present an ``actor_token`` (delegation, RFC 8693 §1.1).
    allow_delegation: bool = False
    #: Scopes this client may ask for; None means every scope of its APIs.
    scopes: tuple[str, ...] | None = None
    #: APIs whose tokens this (confidential) client may introspect and revoke: the API itself,
    #: registered as a client. Any client may always see the tokens issued to it.
    introspects: tuple[str, ...] = ()
    #: What a subject token presented by this client must satisfy.
    subject_conditions: ConditionSet = NO_CONDITIONS
    #: Which actor tokens are this client's own; required with ``allow_delegation``.
    actor_conditions: ConditionSet = NO_CONDITIONS
    #: Longest ``act`` chain of a token minted for this client, the new actor included.
    max_delegation_depth: int = DEFAULT_DELEGATION_DEPTH


@dataclass(frozen=True)
class ApiSettings:
    audience: str
    permissions: str
    scopes: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    copy_claims: tuple[str, ...] = ()
    authorization_details_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpPermissionsSettings:
    name: str
    url: str
    timeout: float = 2.0
    token_env: str | None = None
    token: str | None = field(default=None, repr=False)
    #: Longest time an answer is cached in the store (0: never cached).
    cache_max_ttl: int = 300
    #: Longest time a refusal is cached.
    cache_refusal_ttl: int = 10
    #: How long after expiry a cached answer may still serve while the API is down.
    stale_if_error: int = 0
    #: Calls in flight at once per worker; more are answered 503 at once, never queued.
    max_concurrency: int = 16
    #: Failures (timeouts, errors, malformed answers) in a row that open the circuit breaker.
    breaker_failures: int = 5
    #: Seconds the open breaker refuses calls before it lets one probe through.
    breaker_cooldown: float = 2.0
    type: Literal["http"] = "http"


@dataclass(frozen=True)
class StaticRule:
    """One rule of a static permissions source; the first rule that matches decides."""

    subject: str = "*"
    issuer: str = "*"
    client_id: str = "*"
    audience: str = "*"
    #: Resource URI prefixes the rule covers; every requested resource must fall under one.
    resources: tuple[str, ...] = ()
    allow: bool = True
    scopes: tuple[str, ...] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StaticPermissionsSettings:
    name: str
    rules: tuple[StaticRule, ...]
    type: Literal["static"] = "static"


PermissionsSettings: TypeAlias = (
    "HttpPermissionsSettings | StaticPermissionsSettings | AuthzenPermissionsSettings"
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
    p = _Parser(env, base_dir)
    settings = p.settings(raw)
    if p.problems or settings is None:
        raise ConfigError(p.problems, signing=p.signing_settings)
    return settings


_Section = Mapping[str, Any]


class _Parser:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.signing_settings: SigningSettings | None = None

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    # -- typed getters ----------------------------------------------------------------------

    def known(self, section: _Section, where: str, keys: set[str]) -> None:
        for key in section:
            if key in ("secret", "client_secret", "token", "password"):
                self.problem(
                    f"{where}.{key}",
                    "secrets are never read from the file: put it in an environment variable "
                    "and name that variable (secret_env / token_env)",
                )
            elif key not in keys:
                self.problem(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")

    def table(self, section: _Section, key: str, where: str) -> _Section:
        value = section.get(key, {})
        if not isinstance(value, Mapping):
            self.problem(f"{where}{key}", "must be a table")
            return {}
        return value

    def str_(self, section: _Section, key: str, where: str, default: str | None = None) -> str:
        value = section.get(key, default)
        if value is None:
            self.problem(f"{where}.{key}", "is required")
            return ""
        if not isinstance(value, str) or not value:
            self.problem(f"{where}.{key}", "must be a non-empty string")
            return ""
        return value

    def opt_str(self, section: _Section, key: str, where: str) -> str | None:
        if key not in section:
            return None
        return self.str_(section, key, where) or None

    def int_(self, section: _Section, key: str, where: str, default: int, lo: int, hi: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(f"{where}.{key}", f"must be a whole number from {lo} to {hi}")
            return default
        return value

    def bool_(self, section: _Section, key: str, where: str, default: bool) -> bool:
        value = section.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{where}.{key}", "must be true or false")
            return default
        return value

    def strs(
        self, section: _Section, key: str, where: str, *, required: bool = False
    ) -> tuple[str, ...]:
        value = section.get(key)
        if value is None:
            if required:
                self.problem(f"{where}.{key}", "is required (a list of strings)")
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(f"{where}.{key}", "must be a list of non-empty strings")
            return ()
        if required and not value:
            self.problem(f"{where}.{key}", "must not be empty")
        return tuple(dict.fromkeys(value))

    def tables(self, raw: _Section, key: str) -> list[_Section]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problem(key, f"must be an array of tables ([[{key}]])")
            return []
        return value

    def url(self, value: str, where: str, **kwargs: bool) -> None:
        if value and (why := url_problem(value, **kwargs)):
            self.problem(where, why)

    def env_secret(self, name: str | None, where: str) -> str | None:
        if name is None:
            return None
        secret = self.env.get(name)
        if not secret:
            self.problem(where, f"environment variable {name} is not set or empty")
            return None
        return secret

    # -- sections ---------------------------------------------------------------------------

    def settings(self, raw: _Section) -> Settings | None:
        self.known(
            raw,
            "config",
            {
                "issuer",
                "store",
                "signing",
                "server",
                "upstreams",
                "clients",
                "apis",
                "permissions",
                "rate_limits",
                "metrics",
            },
        )
        issuer = self.str_(raw, "issuer", "config")
        self.url(issuer, "issuer")
        if issuer.endswith("/"):
            self.problem("issuer", "must not end with '/' (it is the base of our endpoint URLs)")

        store = self.store(self.table(raw, "store", ""))
        signing = self.signing(self.table(raw, "signing", ""))
        server = self.server(self.table(raw, "server", ""))
        rate_limits = self.rate_limits(self.table(raw, "rate_limits", ""))
        metrics = self.metrics(self.table(raw, "metrics", ""))
        permissions = self.permissions(self.table(raw, "permissions", ""))
        upstreams = self.upstreams(self.tables(raw, "upstreams"), issuer)
        apis = self.apis(self.tables(raw, "apis"), permissions)
        clients = self.clients(self.tables(raw, "clients"), apis)
        self._check_scope_references(clients, apis, permissions)
        if len(upstreams) > 1:
            self._check_rule_issuers(permissions)
        if self.problems:
            return None
        return Settings(
            issuer=issuer,
            upstreams=upstreams,
            clients=clients,
            apis=apis,
            permissions=permissions,
            store=store,
            signing=signing,
            server=server,
            rate_limits=rate_limits,
            metrics=metrics,
        )

    def _check_scope_references(
        self,
        clients: tuple[ClientSettings, ...],
        apis: tuple[ApiSettings, ...],
        permissions: Mapping[str, PermissionsSettings],
    ) -> None:
        """Scopes and audiences named by clients and static rules must be ones the APIs define:
        a typo there would otherwise pass check-config and silently grant nothing."""
        by_audience = {api.audience: api for api in apis}
        every_scope = {s for api in apis for s in api.scopes}
        from .authzen import AuthzenPermissionsSettings, authzen_scope_problems  # imports us

        for name, source in permissions.items():
            if isinstance(source, AuthzenPermissionsSettings):
                used = {s for api in apis if api.permissions == name for s in api.scopes}
                self.problems += authzen_scope_problems(source, used, f"permissions.{name}")
        for i, client in enumerate(clients):
            theirs = {
                s for a in client.audiences if a in by_audience for s in by_audience[a].scopes
            }
            for scope in client.scopes or ():
                if scope not in theirs:
                    self.problem(
                        f"clients[{i}].scopes",
                        f"{scope!r} is not a scope of any API client {client.client_id} may get "
                        "tokens for",
                    )
        for name, source in permissions.items():
            if not isinstance(source, StaticPermissionsSettings):
                continue
            for i, rule in enumerate(source.rules):
                where = f"permissions.{name}.rules[{i}]"
                api = by_audience.get(rule.audience)
                if rule.audience != "*" and api is None:
                    self.problem(
                        f"{where}.audience", f"{rule.audience} is not an [[apis]] audience"
                    )
                    continue
                known = set(api.scopes) if api is not None else every_scope
                for scope in rule.scopes or ():
                    if scope not in known:
                        self.problem(
                            f"{where}.scopes",
                            f"{scope!r} is not a scope of "
                            + (f"API {rule.audience}" if api is not None else "any API"),
                        )

    def store(self, raw: _Section) -> StoreSettings:
        self.known(raw, "store", {"url", "timeout", "max_concurrency", "breaker_cooldown"})
        url = self.env.get(ENV_STORE_URL) or self.str_(raw, "url", "store", "memory://")
        if urlsplit(url).scheme not in STORE_SCHEMES:
            self.problem("store.url", f"scheme must be one of {', '.join(STORE_SCHEMES)}")
        return StoreSettings(
            url=url,
            timeout=self.seconds(raw, "timeout", "store", 0.25, 5.0),
            max_concurrency=self.int_(raw, "max_concurrency", "store", 32, 1, 1024),
            breaker_cooldown=self.seconds(raw, "breaker_cooldown", "store", 1.0, 300),
        )

    def seconds(
        self,
        section: _Section,
        key: str,
        where: str,
        default: float,
        most: float,
        *,
        zero: bool = False,
    ) -> float:
        value = section.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not zero)
            or value > most
        ):
            least = "from 0" if zero else "above 0"
            self.problem(f"{where}.{key}", f"must be a number of seconds, {least}, <= {most:g}")
            return default
        return float(value)

    def metrics(self, raw: _Section) -> MetricsSettings:
        self.known(raw, "metrics", {"port", "host"})
        port = self.int_(raw, "port", "metrics", 0, 1, 65535) if "port" in raw else None
        return MetricsSettings(port=port, host=self.str_(raw, "host", "metrics", "0.0.0.0"))  # noqa: S104 - for the scraper

    def rate_limits(self, raw: _Section) -> RateLimitSettings:
        names = ("per_client", "per_subject", "failures_per_address")
        self.known(raw, "rate_limits", set(names))
        rules: dict[str, RateRule | None] = {}
        for name in names:
            value = raw.get(name)
            rules[name] = None if value is None else self.rate_rule(value, f"rate_limits.{name}")
        return RateLimitSettings(**rules)

    def rate_rule(self, value: Any, where: str) -> RateRule | None:
        match = RATE.match(value) if isinstance(value, str) else None
        if match is None or int(match["limit"]) < 1:
            self.problem(where, 'must look like "600/minute" (per second, minute or hour)')
            return None
        return RateRule(limit=int(match["limit"]), window=RATE_WINDOWS[match["unit"]])

    def signing(self, raw: _Section) -> SigningSettings:
        self.known(
            raw,
            "signing",
            {"keys_dir", "algorithm", "token_ttl", "jwks_max_age", "reload_interval"},
        )
        keys_dir = self.base_dir / self.str_(raw, "keys_dir", "signing", "keys")
        algorithm = self.str_(raw, "algorithm", "signing", "ES256")
        if algorithm and algorithm not in SIGNING_ALGORITHMS:
            self.problem("signing.algorithm", f"must be one of {', '.join(SIGNING_ALGORITHMS)}")
        self.signing_settings = SigningSettings(
            keys_dir=keys_dir,
            algorithm=algorithm,
            token_ttl=self.int_(raw, "token_ttl", "signing", 300, 1, MAX_TOKEN_TTL),
            jwks_max_age=self.int_(raw, "jwks_max_age", "signing", 300, 0, 86_400),
            reload_interval=self.int_(raw, "reload_interval", "signing", 2, 1, 60),
        )
        return self.signing_settings

    def server(self, raw: _Section) -> ServerSettings:
        self.known(
            raw,
            "server",
            {"max_body_bytes", "trusted_proxies", "verified_token_cache", "max_in_flight"},
        )
        return ServerSettings(
            max_body_bytes=self.int_(raw, "max_body_bytes", "server", 64 * 1024, 1024, 1 << 20),
            trusted_proxies=self.int_(raw, "trusted_proxies", "server", 0, 0, 10),
            verified_token_cache=self.int_(
                raw, "verified_token_cache", "server", 10_000, 0, 1_000_000
            ),
            max_in_flight=self.int_(raw, "max_in_flight", "server", 64, 1, 4096),
        )

    def conditions(self, raw: _Section, key: str, where: str) -> ConditionSet:
        """The condition table ``key`` of ``raw`` and its ``<key>_mode`` (see ``conditions``)."""
        mode, problems = parse_mode(raw.get(f"{key}_mode"), f"{where}.{key}_mode")
        conditions, more = parse_conditions(raw.get(key), f"{where}.{key}", mode)
        self.problems.extend(problems + more)
        return conditions

    def upstreams(self, raws: list[_Section], own_issuer: str) -> tuple[UpstreamSettings, ...]:
        if not raws:
            self.problem("upstreams", "at least one [[upstreams]] entry is required")
        result: list[UpstreamSettings] = []
        for i, raw in enumerate(raws):
            where = f"upstreams[{i}]"
            self.known(
                raw,
                where,
                {
                    "issuer", "jwks_uri", "audiences", "algorithms", "subject_prefix", "leeway",
                    "jwks_refresh_interval", "jwks_cooldown", "jwks_timeout", "jwks_wait",
                    "jwks_max_concurrency", "jwks_breaker_cooldown", "conditions",
                    "conditions_mode",
                },
            )  # fmt: skip
            issuer = self.str_(raw, "issuer", where)
            self.url(issuer, f"{where}.issuer")
            jwks_uri = self.opt_str(raw, "jwks_uri", where)
            if jwks_uri:
                self.url(jwks_uri, f"{where}.jwks_uri")
            algorithms = self.strs(raw, "algorithms", where) or ("RS256",)
            for alg in algorithms:
                if alg not in UPSTREAM_ALGORITHMS:
                    self.problem(
                        f"{where}.algorithms",
                        f"{alg!r} is not allowed (only asymmetric algorithms: "
                        f"{', '.join(sorted(UPSTREAM_ALGORITHMS))})",
                    )
            prefix = raw.get("subject_prefix", "")
            if not isinstance(prefix, str):
                self.problem(f"{where}.subject_prefix", "must be a string")
                prefix = ""
            if issuer == own_issuer and not jwks_uri:
                self.problem(
                    f"{where}.jwks_uri",
                    f"is required for our own issuer ({own_issuer}/.well-known/jwks.json): "
                    "we serve no OpenID Connect discovery",
                )
            if issuer == own_issuer and prefix:
                # Our own tokens (chained delegation) already carry subjects in our namespace,
                # prefixed when they were first minted; a second prefix would make the same
                # user someone else at every hop.
                self.problem(f"{where}.subject_prefix", "must be empty for our own issuer")
            result.append(
                UpstreamSettings(
                    issuer=issuer,
                    jwks_uri=jwks_uri,
                    audiences=self.strs(raw, "audiences", where, required=True),
                    algorithms=algorithms,
                    subject_prefix=prefix,
                    leeway=self.int_(raw, "leeway", where, 30, 0, 300),
                    jwks_refresh_interval=self.int_(
                        raw, "jwks_refresh_interval", where, 300, 10, 86_400
                    ),
                    jwks_cooldown=self.int_(
                        raw, "jwks_cooldown", where, 30, MIN_JWKS_COOLDOWN, MAX_JWKS_COOLDOWN
                    ),
                    jwks_timeout=self.seconds(raw, "jwks_timeout", where, 5.0, 30),
                    jwks_wait=self.seconds(raw, "jwks_wait", where, 1.0, 30, zero=True),
                    jwks_max_concurrency=self.int_(raw, "jwks_max_concurrency", where, 4, 1, 1024),
                    jwks_breaker_cooldown=self.seconds(
                        raw, "jwks_breaker_cooldown", where, 2.0, MAX_JWKS_COOLDOWN
                    ),
                    conditions=self.conditions(raw, "conditions", where),
                )
            )
        issuers = [u.issuer for u in result]
        for issuer in {i for i in issuers if issuers.count(i) > 1}:
            self.problem("upstreams", f"issuer {issuer} is configured twice")
        # Our own issuer (chained delegation) is the exception: its subjects are already minted
        # ones, prefixed at the first hop, so the same user stays the same `sub`.
        if sum(u.issuer != own_issuer for u in result) > 1:
            self._check_prefixes(result, own_issuer)
        return tuple(result)

    def _check_prefixes(self, upstreams: list[UpstreamSettings], own_issuer: str) -> None:
        # With several issuers, the same `sub` from two of them must not become the same minted
        # `sub`. Prefixes that are non-empty and none a prefix of another guarantee that.
        for i, a in enumerate(upstreams):
            if a.issuer == own_issuer:
                continue
            if not a.subject_prefix:
                self.problem(
                    f"upstreams[{i}].subject_prefix",
                    "is required when several upstreams are configured, so that equal `sub` "
                    "values from different issuers stay distinct in minted tokens",
                )
            for j, b in enumerate(upstreams):
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
                        f"upstreams[{j}].subject_prefix",
                        f"overlaps with upstreams[{i}].subject_prefix (neither may start with "
                        "the other)",
                    )

    def _check_rule_issuers(self, permissions: Mapping[str, PermissionsSettings]) -> None:
        # The same `sub` from two issuers is two people: a rule for one subject names its issuer.
        for name, source in permissions.items():
            if isinstance(source, StaticPermissionsSettings):
                for i, rule in enumerate(source.rules):
                    if rule.subject != "*" and rule.issuer == "*":
                        self.problem(
                            f"permissions.{name}.rules[{i}].issuer",
                            "is required for a rule naming a subject when several upstreams "
                            "are configured",
                        )

    def permissions(self, raw: _Section) -> dict[str, PermissionsSettings]:
        result: dict[str, PermissionsSettings] = {}
        for name, section in raw.items():
            where = f"permissions.{name}"
            if not isinstance(section, Mapping):
                self.problem(where, "must be a table")
                continue
            kind = section.get("type")
            if kind == "http":
                self.known(
                    section,
                    where,
                    {
                        "type", "url", "timeout", "token_env", "cache_max_ttl",
                        "cache_refusal_ttl", "stale_if_error", "max_concurrency",
                        "breaker_failures", "breaker_cooldown",
                    },
                )  # fmt: skip
                url = self.str_(section, "url", where)
                self.url(url, f"{where}.url")
                timeout = section.get("timeout", 2.0)
                if (
                    isinstance(timeout, bool)
                    or not isinstance(timeout, int | float)
                    or not math.isfinite(timeout)
                    or not 0 < timeout <= 30
                ):
                    self.problem(f"{where}.timeout", "must be a number of seconds, above 0, <= 30")
                    timeout = 2.0
                token_env = self.opt_str(section, "token_env", where)
                result[name] = HttpPermissionsSettings(
                    name=name,
                    url=url,
                    timeout=float(timeout),
                    token_env=token_env,
                    token=self.env_secret(token_env, f"{where}.token_env"),
                    cache_max_ttl=self.int_(section, "cache_max_ttl", where, 300, 0, 86_400),
                    cache_refusal_ttl=self.int_(section, "cache_refusal_ttl", where, 10, 0, 3600),
                    stale_if_error=self.int_(section, "stale_if_error", where, 0, 0, 86_400),
                    max_concurrency=self.int_(section, "max_concurrency", where, 16, 1, 1024),
                    breaker_failures=self.int_(section, "breaker_failures", where, 5, 1, 1000),
                    breaker_cooldown=self.seconds(section, "breaker_cooldown", where, 2.0, 300),
                )
            elif kind == "static":
                self.known(section, where, {"type", "rules"})
                rules = [self.static_rule(r, f"{where}.rules[{i}]")
                         for i, r in enumerate(self.tables(section, "rules"))]  # fmt: skip
                result[name] = StaticPermissionsSettings(name=name, rules=tuple(rules))
            elif kind == "authzen":
                from .authzen import parse_authzen_settings  # imports this module

                authzen, problems = parse_authzen_settings(name, section, self.env)
                self.problems.extend(problems)
                result[name] = authzen
            else:
                self.problem(f"{where}.type", 'must be "http", "static" or "authzen"')
        return result

    def static_rule(self, raw: _Section, where: str) -> StaticRule:
        self.known(
            raw,
            where,
            {
                "subject",
                "issuer",
                "client_id",
                "audience",
                "resources",
                "allow",
                "scopes",
                "claims",
            },
        )
        claims = raw.get("claims", {})
        if not isinstance(claims, Mapping):
            self.problem(f"{where}.claims", "must be a table")
            claims = {}
        for name in claims:
            if name in REGISTERED_CLAIMS:
                self.problem(f"{where}.claims.{name}", "is a registered claim we set ourselves")
        try:
            json.dumps(claims, allow_nan=False)
        except (TypeError, ValueError):
            self.problem(f"{where}.claims", "values must be JSON (no dates, times or NaN)")
        for resource in (resources := self.strs(raw, "resources", where)):
            self.url(resource, f"{where}.resources")
        return StaticRule(
            subject=self.str_(raw, "subject", where, "*"),
            issuer=self.str_(raw, "issuer", where, "*"),
            client_id=self.str_(raw, "client_id", where, "*"),
            audience=self.str_(raw, "audience", where, "*"),
            resources=resources,
            allow=self.bool_(raw, "allow", where, True),
            scopes=self.strs(raw, "scopes", where) if "scopes" in raw else None,
            claims=dict(claims),
        )

    def apis(
        self, raws: list[_Section], permissions: Mapping[str, PermissionsSettings]
    ) -> tuple[ApiSettings, ...]:
        if not raws:
            self.problem("apis", "at least one [[apis]] entry is required")
        result: list[ApiSettings] = []
        for i, raw in enumerate(raws):
            where = f"apis[{i}]"
            self.known(
                raw,
                where,
                {
                    "audience", "resources", "scopes", "copy_claims", "permissions",
                    "authorization_details_types",
                },
            )  # fmt: skip
            audience = self.str_(raw, "audience", where)
            source = self.str_(raw, "permissions", where)
            if source and source not in permissions:
                self.problem(f"{where}.permissions", f"no [permissions.{source}] table")
            scopes = self.strs(raw, "scopes", where, required=True)
            for scope in scopes:
                if not SCOPE_TOKEN.match(scope):
                    self.problem(f"{where}.scopes", f"{scope!r} is not a valid scope token")
            resources = self.strs(raw, "resources", where)
            for resource in resources:
                self.url(resource, f"{where}.resources")
            copy_claims = self.strs(raw, "copy_claims", where)
            for claim in copy_claims:
                if claim in REGISTERED_CLAIMS:
                    self.problem(
                        f"{where}.copy_claims", f"{claim!r} is a registered claim we set ourselves"
                    )
            result.append(
                ApiSettings(
                    audience=audience,
                    permissions=source,
                    scopes=scopes,
                    resources=resources,
                    copy_claims=copy_claims,
                    authorization_details_types=self.strs(
                        raw, "authorization_details_types", where
                    ),
                )
            )
        audiences = [a.audience for a in result]
        for audience in {a for a in audiences if audiences.count(a) > 1}:
            self.problem("apis", f"audience {audience} is configured twice")
        self._check_resource_overlap(result)
        return tuple(result)

    def _check_resource_overlap(self, apis: list[ApiSettings]) -> None:
        # A resource must pick exactly one API: prefixes of different APIs may not nest.
        for i, a in enumerate(apis):
            for j, b in enumerate(apis):
                if i >= j:
                    continue
                for pa in (a.audience, *a.resources):
                    for pb in (b.audience, *b.resources):
                        if resource_under(pa, pb) or resource_under(pb, pa):
                            self.problem(
                                f"apis[{j}].resources",
                                f"{pb} overlaps {pa} of apis[{i}]: a resource must name one API",
                            )

    def clients(
        self, raws: list[_Section], apis: tuple[ApiSettings, ...]
    ) -> tuple[ClientSettings, ...]:
        if not raws:
            self.problem("clients", "at least one [[clients]] entry is required")
        known_audiences = {a.audience for a in apis}
        result: list[ClientSettings] = []
        for i, raw in enumerate(raws):
            where = f"clients[{i}]"
            self.known(
                raw,
                where,
                {
                    "client_id", "type", "allowed_origins", "audiences", "secret_env",
                    "allow_delegation", "scopes", "introspects", "subject_conditions",
                    "subject_conditions_mode", "actor_conditions", "actor_conditions_mode",
                    "max_delegation_depth",
                },
            )  # fmt: skip
            client_id = self.str_(raw, "client_id", where)
            kind = raw.get("type", "public")
            secret_env = self.opt_str(raw, "secret_env", where)
            secret = None
            if kind == "confidential":
                if secret_env is None:
                    self.problem(f"{where}.secret_env", "is required for a confidential client")
                secret = self.env_secret(secret_env, f"{where}.secret_env")
            elif kind == "public":
                if secret_env is not None:
                    self.problem(f"{where}.secret_env", "a public client has no secret")
            else:
                self.problem(f"{where}.type", 'must be "public" or "confidential"')
                kind = "public"
            audiences = self.strs(raw, "audiences", where)
            introspects = self.strs(raw, "introspects", where)
            for key, values in (("audiences", audiences), ("introspects", introspects)):
                for audience in values:
                    if audience not in known_audiences:
                        self.problem(f"{where}.{key}", f"{audience} is not an [[apis]] audience")
            if not audiences and not introspects:
                self.problem(f"{where}.audiences", "is required (the APIs this client may target)")
            if introspects and kind != "confidential":
                self.problem(f"{where}.introspects", "only a confidential client may introspect")
            origins = self.strs(raw, "allowed_origins", where)
            for origin in origins:
                self.url(origin, f"{where}.allowed_origins", allow_path=False)
                if origin.endswith("/"):
                    self.problem(f"{where}.allowed_origins", f"{origin} must not end with '/'")
            allow_delegation = self.bool_(raw, "allow_delegation", where, False)
            actor_conditions = self.conditions(raw, "actor_conditions", where)
            if allow_delegation and not actor_conditions:
                # Without it, any token of anyone this client holds could be its actor token.
                self.problem(
                    f"{where}.actor_conditions",
                    "is required for a client with allow_delegation: bind the actor tokens it "
                    "may present to itself (e.g. azp or sub = its own application's id)",
                )
            elif (
                allow_delegation
                and actor_conditions.mode == "enforce"
                and not pins_actor_identity(actor_conditions)
            ):
                # Conditions on gty or scope alone hold for every other client's actor tokens
                # too: one of them must say whose token it is.
                self.problem(
                    f"{where}.actor_conditions",
                    f"must bind the actor tokens of client {client_id} to its own identity: an "
                    f"equals or one_of condition on {' or '.join(ACTOR_IDENTITY_CLAIMS)} "
                    '(e.g. azp = "<its own application\'s id>")',
                )
            elif "actor_conditions" in raw and not allow_delegation:
                self.problem(f"{where}.actor_conditions", "only for a client with allow_delegation")
            result.append(
                ClientSettings(
                    client_id=client_id,
                    type=kind,
                    audiences=audiences,
                    allowed_origins=origins,
                    secret_env=secret_env,
                    secret=secret,
                    allow_delegation=allow_delegation,
                    scopes=self.strs(raw, "scopes", where) if "scopes" in raw else None,
                    introspects=introspects,
                    subject_conditions=self.conditions(raw, "subject_conditions", where),
                    actor_conditions=actor_conditions,
                    max_delegation_depth=self.int_(
                        raw,
                        "max_delegation_depth",
                        where,
                        DEFAULT_DELEGATION_DEPTH,
                        1,
                        MAX_DELEGATION_DEPTH,
                    ),
                )
            )
        ids = [c.client_id for c in result]
        for client_id in {c for c in ids if ids.count(c) > 1}:
            self.problem("clients", f"client_id {client_id} is configured twice")
        return tuple(result)


#: Claims that say whose token an actor token is (Auth0: ``azp``, or ``client_id`` in the
#: RFC 9068 profile; ``sub`` is the application's ``<id>@clients``).
ACTOR_IDENTITY_CLAIMS = ("azp", "client_id", "sub")


def pins_actor_identity(conditions: ConditionSet) -> bool:
    """Whether ``conditions`` name the actor: an equals or one_of on an identity claim."""
    return any(
        c.claim in ACTOR_IDENTITY_CLAIMS and c.operator in ("equals", "one_of")
        for c in conditions.conditions
    )


def config_warnings(settings: Settings) -> list[str]:
    """Likely mistakes in a valid configuration, for ``check-config`` to point out.

    Warnings, not problems: each one fails closed (no token is accepted that should not be).
    """
    warnings: list[str] = []
    for i, upstream in enumerate(settings.upstreams):
        host = (urlsplit(upstream.issuer).hostname or "").lower()
        if host.endswith(".auth0.com") and not upstream.issuer.endswith("/"):
            # Auth0's `iss` always ends with "/", and `iss` is compared exactly: without it,
            # every token from this tenant is refused (reason issuer_untrusted).
            warnings.append(
                f"upstreams[{i}].issuer: Auth0 issuers end with '/': "
                f"use {upstream.issuer}/ (the exact `iss` of its tokens)"
            )
    chained = any(u.issuer == settings.issuer for u in settings.upstreams)
    for i, client in enumerate(settings.clients):
        if chained and client.allow_delegation and client.subject_conditions:
            # Only delegating clients may present our own tokens as subject tokens; their
            # subject_conditions then see the claims we minted, not the original token's.
            warnings.append(
                f"clients[{i}].subject_conditions: client {client.client_id} may present this "
                "service's own tokens (chained delegation); its subject_conditions are then "
                "evaluated on the claims we minted, not on those of the original subject token"
            )
        if client.allow_delegation and client.actor_conditions.mode == "audit":
            # Audit mode refuses nothing: any verified token of anyone is this client's actor
            # token until the mode is "enforce".
            warnings.append(
                f'clients[{i}].actor_conditions_mode: "audit": client {client.client_id} may '
                "present anyone's token as its actor_token (mismatches are only logged)"
            )
    return warnings
