"""Configuration: a TOML file plus environment variables, validated once, into the models the
service reads (``config_model``).

``load_settings`` reads the file, takes secrets from the environment variables the file names
(never from the file itself) and reports every problem it finds in one ``ConfigError``. Relative
paths in the file are relative to the file's own directory.

Every key is declared once, with its type, range, default and meaning, in ``config_model``;
this module checks the rules that relate several keys (a client's audiences must be APIs,
prefixes must not overlap, ...), also when some entries are invalid, so that one pass finds
every problem.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..config import config_model
from ..oauth.conditions import ConditionSet
from ..oauth.jose import MIN_RSA_BITS, parse_jwks
from ..oauth.profile import JWT_BEARER_GRANT_TYPE
from ..oauth.uris import resource_under
from .config_model import (
    CLIENT_ASSERTION_ALGORITHMS,
    ENV_STORE_URL,
    KEY_PROBLEMS,
    ApiConfig,
    AuthzenSourceConfig,
    ClientConfig,
    ConfigFile,
    HttpSourceConfig,
    Issuer,
    RateLimitsConfig,
    SigningConfig,
    SourceConfig,
    StaticRuleConfig,
    StaticSourceConfig,
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

# What the service reads, by the names its modules use: the validated models themselves.
Settings = ConfigFile
UpstreamSettings = UpstreamConfig
ClientSettings = ClientConfig
ApiSettings = ApiConfig
SigningSettings = SigningConfig
DpopSettings = config_model.DpopConfig
RateLimitSettings = RateLimitsConfig
HttpPermissionsSettings = HttpSourceConfig
StaticPermissionsSettings = StaticSourceConfig
AuthzenPermissionsSettings = AuthzenSourceConfig
StaticRule = StaticRuleConfig
PermissionsSettings = HttpSourceConfig | StaticSourceConfig | AuthzenSourceConfig
RateRule = config_model.RateRule
TransactionTokensSettings = config_model.TransactionTokensConfig


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str], *, signing: SigningConfig | None = None) -> None:
        self.problems = problems
        #: The signing section when it was valid, so key checks can still run.
        self.signing = signing
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


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
    """Validate an already-parsed TOML document; see ``load_settings``. The validation context
    holds ``env`` (where secrets are read from) and ``base_dir`` (what relative paths are
    relative to)."""
    store = raw.get("store")
    if env.get(ENV_STORE_URL) and (store is None or isinstance(store, Mapping)):
        raw = {**raw, "store": {**(store or {}), "url": env[ENV_STORE_URL]}}
    context = {"env": env, "base_dir": base_dir}
    try:
        config: ConfigFile | None = ConfigFile.model_validate(raw, context=context)
    except ValidationError as e:
        config = None
        problems = validation_problems(e, raw)
    else:
        problems = []
    rules = _Rules(raw, context)
    problems += rules.problems
    if problems or config is None:
        raise ConfigError(problems, signing=rules.signing)
    return config


class _Rules:
    """The rules that relate several keys, of one entry or of several, checked on each entry
    that validates on its own (so that they are checked when others do not); each broken one
    is in ``problems``."""

    def __init__(self, raw: Mapping[str, Any], context: dict[str, Any]) -> None:
        def valid(tp: Any, value: Any) -> Any:
            try:
                return TypeAdapter(tp).validate_python(value, context=context)
            except ValidationError as e:
                # An entry whose only problems are within values checked as a whole (a
                # condition table, reported already) is checked with what is usable of them.
                if isinstance(value, Mapping) and all(
                    error["type"] == KEY_PROBLEMS for error in e.errors()
                ):
                    usable = {error["loc"][-1]: error["ctx"]["usable"] for error in e.errors()}
                    return valid(tp, {**value, **usable})
                return None

        def entries(key: str, model: type[BaseModel]) -> dict[int, Any]:
            values = raw.get(key)
            checked = enumerate(values) if isinstance(values, list) else ()
            return {i: m for i, v in checked if (m := valid(model, v)) is not None}

        self.raw, self.problems = raw, list[str]()
        self.labels = {
            key: entry_labels(raw.get(key), model.identity)
            for key, model in (
                ("upstreams", UpstreamConfig),
                ("clients", ClientConfig),
                ("apis", ApiConfig),
            )
        }
        #: Raw entries, valid or not, so that a reference to an invalid one is not "unknown".
        self.named_audiences = self._raw_names("apis", "audience")
        #: The signing section when it is valid, for ``ConfigError``.
        self.signing: SigningConfig | None = valid(SigningConfig, raw.get("signing", {}))
        self.own_issuer: str | None = valid(Issuer, raw.get("issuer"))
        sources = raw.get("permissions")
        self.permissions: dict[str, PermissionsSettings] = {
            name: m
            for name, v in (sources.items() if isinstance(sources, Mapping) else ())
            if (m := valid(SourceConfig, v)) is not None
        }
        self.upstreams: dict[int, UpstreamConfig] = entries("upstreams", UpstreamConfig)
        self.apis: dict[int, ApiConfig] = entries("apis", ApiConfig)
        self.clients: dict[int, ClientConfig] = entries("clients", ClientConfig)
        for i, upstream in self.upstreams.items():
            self._check_upstream(i, upstream)
        for i, api in self.apis.items():
            self._check_api(i, api)
        for i, client in self.clients.items():
            self._check_client(i, client)
        self._check_duplicates()
        self._check_transaction_tokens()
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

    # -- entries ----------------------------------------------------------------------------

    def _check_upstream(self, i: int, m: UpstreamConfig) -> None:
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

    def _check_api(self, i: int, m: ApiConfig) -> None:
        sources = self.raw.get("permissions", {})
        if isinstance(sources, Mapping) and m.permissions not in sources:
            self.problem(
                f"{self.where('apis', i)}.permissions", f"no [permissions.{m.permissions}] table"
            )

    def _check_client(self, i: int, m: ClientConfig) -> None:
        where = self.where("clients", i)
        self._check_client_authentication(where, m)
        for key in ("audiences", "introspects"):
            for audience in getattr(m, key):
                if audience not in self.named_audiences:
                    self.problem(f"{where}.{key}", f"{audience} is not an [[apis]] audience")
        if not m.audiences and not m.introspects and not m.transaction_tokens:
            self.problem(f"{where}.audiences", "is required (the APIs this client may target)")
        if m.transaction_tokens:
            self._check_txn_client(where, m)
        if m.introspects and m.type != "confidential":
            self.problem(f"{where}.introspects", "only a confidential client may introspect")
        if JWT_BEARER_GRANT_TYPE in m.grant_types:
            if m.type != "confidential":
                # An assertion is a bearer credential: only a client that authenticates may
                # redeem one (ID-JAG §4.3: the client_id claim names the authenticated client).
                self.problem(
                    f"{where}.grant_types", "only a confidential client may use jwt-bearer"
                )
            if not any(u.assertions for u in self.upstreams.values()):
                self.problem(
                    f"{where}.grant_types",
                    "lists jwt-bearer, but no [[upstreams]] has assertions to redeem",
                )
        actor_conditions = m.actor_conditions
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
        elif "actor_conditions" in m.model_fields_set and not m.allow_delegation:
            self.problem(f"{where}.actor_conditions", "only for a client with allow_delegation")

    def _check_txn_client(self, where: str, m: ClientConfig) -> None:
        """A workload that may ask for Txn-Tokens authenticates with a key of its own: the
        draft wants asymmetric workload authentication (§7.3), and a Txn-Token request carries
        a user's token."""
        if "transaction_tokens" not in self.raw:
            self.problem(f"{where}.transaction_tokens", "needs a [transaction_tokens] table")
        if m.type != "confidential" or m.token_endpoint_auth_method != "private_key_jwt":
            self.problem(
                f"{where}.transaction_tokens",
                "only for a confidential client with "
                'token_endpoint_auth_method = "private_key_jwt"',
            )

    def _check_transaction_tokens(self) -> None:
        section = self.raw.get("transaction_tokens")
        if not isinstance(section, Mapping):
            return
        name, audience = section.get("permissions"), section.get("audience")
        sources = self.raw.get("permissions", {})
        if isinstance(name, str) and isinstance(sources, Mapping) and name not in sources:
            self.problem("transaction_tokens.permissions", f"no [permissions.{name}] table")
        if name is None and isinstance(sources, Mapping) and len(sources) != 1:
            self.problem(
                "transaction_tokens.permissions",
                "is required (the [permissions.NAME] asked per Txn-Token) unless there is "
                "exactly one [permissions.NAME] table",
            )
        if audience in self.named_audiences or audience == self.own_issuer:
            # A Txn-Token is no access token: no API and no issuer of ours may share its aud.
            self.problem(
                "transaction_tokens.audience",
                "must be the trust domain's own name, not an [[apis]] audience or the issuer",
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
            if client.transaction_tokens:
                # A Txn-Token's scope is the purpose the subject token's scope allows, whatever
                # its issuer calls it: no API defines those names.
                continue
            for scope in client.scopes or ():
                if scope not in theirs:
                    self.problem(
                        f"{self.where('clients', i)}.scopes",
                        f"{scope!r} is not a scope of any API client {client.client_id} may get "
                        "tokens for",
                    )
        for name, source in self.permissions.items():
            if isinstance(source, AuthzenSourceConfig) and all_apis:
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
            if not isinstance(source, StaticSourceConfig):
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
            if isinstance(source, StaticSourceConfig):
                for i, rule in enumerate(source.rules):
                    for who, issuer in (
                        ("subject", "issuer"),
                        ("actor", "actor_issuer"),
                        ("actor_client_id", "actor_issuer"),
                    ):
                        if getattr(rule, who) != "*" and getattr(rule, issuer) == "*":
                            self.problem(
                                f"permissions.{toml_key(name)}.rules[{i}].{issuer}",
                                f"is required for a rule naming {who} when several upstreams "
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
