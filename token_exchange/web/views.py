"""HTTP endpoints. Parse the request, call the service, render JSON; nothing else lives here.

``POST /token`` (RFC 8693), ``POST /revoke`` (RFC 7009), ``POST /introspect`` (RFC 7662),
``GET /.well-known/jwks.json`` (RFC 7517), ``GET /.well-known/oauth-authorization-server``
(RFC 8414), ``/authorize`` (refuses every request), ``GET /healthz``, ``GET /readyz``,
``GET /metrics``. Every error is RFC 6749 §5.2
JSON; no stack trace ever reaches a client. Every answer carries an ``X-Request-ID``: the
caller's, when it is a sane one, or a new one; it is in the audit line of the decision.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from flask import Blueprint, Request, Response, current_app, request
from werkzeug.exceptions import HTTPException, NotFound

from ..config.settings import ClientSettings
from ..grant.clients import ASSERTION_PARAMETERS
from ..grant.pipeline import RequestFailed
from ..grant.record import RequestRecord
from ..grant.request import single_values
from ..oauth import reasons
from ..oauth.errors import InvalidRequest, OAuthError
from ..obs import tracing
from ..obs.logs import event
from ..obs.metrics import CONTENT_TYPE, render
from .headers import request_id
from .overload import BODY

if TYPE_CHECKING:
    from .services import Services

#: One JSON line per exchange decision, on a logger of its own so operators can route it.
audit = logging.getLogger("token_exchange.audit")
log = logging.getLogger("token_exchange")

bp = Blueprint("token_exchange", __name__)

FORM_MIMETYPE = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def services() -> Services:
    return current_app.extensions["token_exchange"]  # type: ignore[no-any-return]


#: One encoder for every answer: json.dumps() with options builds a new one per call. RFC 8259
#: only (no NaN): a client's JSON parser would refuse anything else.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | list[tuple[str, str]] | None = None
) -> Response:
    """``body`` as JSON; ``headers`` besides their ``Content-Type`` (authlib's errors name
    one), which is always ``application/json``."""
    listed = [("Content-Type", "application/json")]
    if headers:
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            if name.lower() != "content-type":
                listed.append((name, value))
    return Response(_JSON.encode(body), status=status, headers=listed)


def _current_request() -> Request:
    """The request object itself: each use of the ``request`` proxy costs a context lookup."""
    return request._get_current_object()  # type: ignore[attr-defined,no-any-return]


# -- /token ------------------------------------------------------------------------------------


def _requote(error: UnicodeError) -> tuple[str, int]:
    # Percent-encoded bytes that are not UTF-8 stay percent-encoded, as werkzeug keeps them.
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return quote(error.object[error.start : error.end], safe=""), error.end


codecs.register_error("token_exchange.requote", _requote)


def _unquote(value: str) -> str:
    return unquote(value.replace("+", " "), errors="token_exchange.requote")


#: Parameters whose values are public and few (URNs, configured audiences and scopes): their
#: decoding is remembered. Never a secret, a token or a resource: a hit is faster than a miss,
#: and that must not tell anyone what another caller sent.
_MEMO_VALUES = frozenset(
    {"grant_type", "subject_token_type", "actor_token_type", "requested_token_type", "audience",
     "scope"}
)  # fmt: skip
_memo_unquote = functools.lru_cache(maxsize=256)(_unquote)


def parse_form(body: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body: each name's values, in order.

    Parsed as werkzeug's form parser parses it (``urllib.parse.parse_qsl`` with blank values
    kept), at a fraction of its cost: ``+`` is a space, percent-encoded bytes are UTF-8 (those
    that are not stay percent-encoded), a name without ``=`` has the empty value, and a body
    that is not UTF-8 is no form at all.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return {}
    form: dict[str, list[str]] = {}
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        # Decoding is only needed, and only done, when there is something to decode.
        if "+" in name or "%" in name:
            name = _memo_unquote(name) if len(name) <= 64 else _unquote(name)
        if "+" in value or "%" in value:
            memo = name in _MEMO_VALUES and len(value) <= 256
            value = _memo_unquote(value) if memo else _unquote(value)
        if name in form:
            form[name].append(value)
        else:
            form[name] = [value]
    return form


def _form(req: Request, parameters: frozenset[str]) -> dict[str, list[str]]:
    """The request's form body; refuses other encodings and parameters in the URL."""
    # The header as clients send it, compared before it is parsed (for parameters, case).
    if req.environ.get("CONTENT_TYPE") != FORM_MIMETYPE and req.mimetype != FORM_MIMETYPE:
        raise InvalidRequest(
            f"the request body must be {FORM_MIMETYPE}", reason=reasons.CONTENT_TYPE
        )
    if req.query_string and any(name in req.args for name in parameters):
        # Tokens in a URL end up in proxy and server logs: refuse rather than accept.
        raise InvalidRequest(
            "parameters must be sent in the request body, not in the URL",
            reason=reasons.PARAMETERS_IN_URL,
        )
    body = req.environ.get(BODY)
    if body is None:
        # get_data() reads through the request's stream, which enforces MAX_CONTENT_LENGTH (413).
        body = req.get_data(cache=False)
    form = parse_form(body)
    if not form and body:
        try:
            body.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(
                "the request body must be UTF-8 (RFC 6749 Appendix B)",
                reason=reasons.REQUEST_MALFORMED,
            ) from None
    return form


class _Headers:
    """The request's headers as the WSGI environ holds them, by name: what werkzeug's
    ``EnvironHeaders.get`` answers, without raising a KeyError for each one absent."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def get(self, key: str) -> str | None:
        name = _ENVIRON_NAMES.get(key)
        if name is None:
            name = key.upper().replace("-", "_")
            if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = f"HTTP_{name}"
        value = self._environ.get(name)
        return value if isinstance(value, str) else None


_ENVIRON_NAMES = {"Authorization": "HTTP_AUTHORIZATION", "DPoP": "HTTP_DPOP"}


@bp.post("/token", provide_automatic_options=False)
def token() -> Response:
    svc = services()
    req = _current_request()
    endpoint = svc.endpoint
    started = time.perf_counter()
    try:
        issued, record = endpoint.token_response(
            lambda: _form(req, endpoint.parameters),
            _Headers(req.environ),
            req.method,
            req.remote_addr or "-",
        )
    except OAuthError as e:
        _decided(svc, req, e.record, started, outcome=e.error, status=e.status_code)
        raise
    except RequestFailed as e:
        failure = e.__cause__ or e
        if isinstance(failure, HTTPException):  # 413 from reading the body
            too_large = failure.code == 413
            record = e.refused(reasons.BODY_TOO_LARGE if too_large else reasons.REQUEST_MALFORMED)
            status = failure.code or 400
            _decided(svc, req, record, started, outcome="invalid_request", status=status)
        else:
            record = e.refused(reasons.INTERNAL_ERROR)
            _decided(svc, req, record, started, outcome="server_error", status=500)
    else:
        _decided(svc, req, record, started, outcome="issued", status=200)
        response = json_response(issued.response(), headers=NO_STORE)
        if (nonce := endpoint.dpop_nonce()) is not None:
            response.headers["DPoP-Nonce"] = nonce  # RFC 9449 §8.2: the one to use next
        return response
    # Raised here, outside the handler: the error handlers see the failure itself, with its
    # own traceback and context.
    raise failure


# -- /authorize ---------------------------------------------------------------------------------


#: What an authorization request's audit line names of it (RequestRecord.asked).
_AUTHORIZE_LOGGED = ("client_id", "audience", "resource", "scope")


@bp.route("/authorize", methods=["GET", "POST"], provide_automatic_options=False)
def authorize() -> Response:
    """An authorization endpoint that serves no response type: every request is refused.

    This service issues tokens only at its token endpoint (``response_types_supported`` is
    empty). RFC 8414 §2 would let it publish no authorization endpoint at all, but MCP's SDKs
    refuse authorization-server metadata without one; so there is one, and it says so. No
    client has a redirect URI here, so the refusal is shown to whoever sent the request and is
    never a redirect (RFC 6749 §4.1.2.1; no open redirector, RFC 9700 §4.11). Nothing the
    request says is echoed; the audit line names the client the query string claimed, with
    what it asked for (never its redirect URI, state or PKCE challenge).
    """
    req = _current_request()
    svc = services()
    error = reasons.UNSUPPORTED_RESPONSE_TYPE
    record = RequestRecord()
    record.settle(error, None)
    # What it asked for, from the query string and a form body already read (never read here):
    # the client_id it names (no Authorization header: at an authorization endpoint that would
    # be a user's credentials), the audience, resource and scope.
    asked = {name: req.args.getlist(name) for name in _AUTHORIZE_LOGGED}
    body = req.environ.get(BODY) if req.method == "POST" else None
    if body is not None and req.mimetype == FORM_MIMETYPE:
        for name, values in parse_form(body).items():
            if name in _AUTHORIZE_LOGGED:
                asked[name] += values
    first = {name: values[0] for name, values in asked.items() if values}
    record.asked(asked, first, None)
    _refusal_line(svc, req, "authorization_refused", "authorize", record, error, 400)
    description = (
        "this service has no authorization flow (response_types_supported is empty): it "
        "issues tokens at its token endpoint only"
    )
    return json_response({"error": error, "error_description": description}, 400, NO_STORE)


def _decided(
    svc: Services, req: Request, record: RequestRecord, started: float, **fields: Any
) -> None:
    """The audit line and the metrics of one exchange decision."""
    seconds = time.perf_counter() - started
    metrics = svc.metrics
    metrics.child(
        metrics.exchanges,
        fields["outcome"],
        record.client_id or "-",
        record.audience or "-",
    ).inc()
    metrics.child(metrics.request_seconds, "token").observe(seconds)
    if fields["outcome"] != "issued":
        metrics.child(
            metrics.request_refusals, "token", fields["outcome"], record.reason or "-"
        ).inc()
    traced = _traced(record, fields["outcome"], req)
    event(
        audit,
        "token_exchange",
        request_id=request_id(req.environ),
        **traced,
        **record.as_audit(),
        **fields,
        remote_addr=req.remote_addr,
        ms=round(seconds * 1000, 2),
    )


def _traced(record: RequestRecord, outcome: str, req: Request) -> dict[str, Any]:
    """The decision on the request's server span, and the caller's address as the audit line
    has it (behind trusted proxies, X-Forwarded-For's); the trace's id for the audit line (none
    when the request is not traced)."""
    if not tracing.traced():
        return {}
    tracing.annotate(
        **{
            "client.address": req.remote_addr,
            tracing.CLIENT_ID: record.client_id,
            tracing.AUDIENCE: record.audience,
            tracing.GRANT: record.grant,
            tracing.OUTCOME: outcome,
            tracing.REASON: record.reason,
        }
    )
    trace_id = tracing.trace_id()
    return {} if trace_id is None else {"trace_id": trace_id}


TOKEN_PARAMETERS = (
    frozenset({"token", "token_type_hint", "client_id", "client_secret"}) | ASSERTION_PARAMETERS
)


def _token_parameter(seen: dict[str, Any]) -> tuple[ClientSettings, str]:
    """Authenticate the client and read ``token`` for /revoke and /introspect; ``seen``
    receives the parameters and the client, for the audit line of a refusal.

    Failures count against the caller's address, as at /token: a client secret must not be
    guessable here either.
    """
    req = _current_request()
    with services().limiter.failures_counted(req.remote_addr or "-"):
        values = single_values(_form(req, TOKEN_PARAMETERS), TOKEN_PARAMETERS, frozenset())
        seen["values"] = values
        client = services().clients.authenticate(request.headers.get("Authorization"), values)
        seen["client_id"] = client.client_id
        token = values.get("token")
        if token is None:
            raise InvalidRequest("token is required", reason=reasons.PARAMETER_MISSING)
    return client, token


@contextlib.contextmanager
def _refusal_audited(name: str) -> Iterator[dict[str, Any]]:
    """A refusal at /revoke or /introspect as audit event ``name``, with its ``reason`` and
    the client it was or claimed to be (as at /token)."""
    req = _current_request()
    seen: dict[str, Any] = {}
    try:
        yield seen
    except (OAuthError, HTTPException) as e:
        record = RequestRecord(client_id=seen.get("client_id"))
        if isinstance(e, OAuthError):
            outcome, status, reason, detail = e.error, e.status_code, e.reason, e.detail
        else:  # 413 from reading the body
            outcome, status, detail = "invalid_request", e.code or 400, None
            reason = reasons.BODY_TOO_LARGE if status == 413 else reasons.REQUEST_MALFORMED
        record.settle(reason, detail)
        record.asked({}, seen.get("values", {}), req.headers.get("Authorization"))
        endpoint = "revoke" if name == "revocation_refused" else "introspect"
        _refusal_line(services(), req, name, endpoint, record, outcome, status)
        raise


def _refusal_line(
    svc: Services,
    req: Request,
    name: str,
    endpoint: str,
    record: RequestRecord,
    outcome: str,
    status: int,
) -> None:
    """The audit line (event ``name``) and the refusal metric of a refusal outside /token."""
    svc.metrics.child(svc.metrics.request_refusals, endpoint, outcome, record.reason or "-").inc()
    event(
        audit,
        name,
        request_id=request_id(req.environ),
        **_traced(record, outcome, req),
        **record.as_audit(),
        outcome=outcome,
        status=status,
        remote_addr=req.remote_addr,
    )


@bp.post("/revoke")
def revoke() -> Response:
    """RFC 7009: 200 whether or not the token was valid (§2.2)."""
    with _refusal_audited("revocation_refused") as seen:
        client, token = _token_parameter(seen)
        services().tokens.revoke(token, client)
    event(
        audit,
        "token_revoked",
        request_id=request_id(request.environ),
        **_traced(RequestRecord(client.client_id), "revoked", _current_request()),
        client_id=client.client_id,
    )
    return Response(status=200, headers=NO_STORE)


@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662 §2.2."""
    with _refusal_audited("introspection_refused") as seen:
        client, token = _token_parameter(seen)
        answer = services().tokens.introspect(token, client)
    return json_response(answer, headers=NO_STORE)


@bp.route("/token", methods=["OPTIONS"])
def token_preflight() -> Response:
    # CORS headers, when the origin is allowed, are added by headers.ResponseHeaders.
    return Response(status=204)


# -- errors -------------------------------------------------------------------------------------


@bp.app_errorhandler(OAuthError)
def oauth_error(error: OAuthError) -> Response:
    status, body, headers = error.render()
    return json_response(body, status, headers)


_HTTP_ERRORS = {
    405: ("invalid_request", "method not allowed"),
    413: ("invalid_request", "the request body is too large"),
    404: ("not_found", "no such endpoint"),
}


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code, description = _HTTP_ERRORS.get(status, ("invalid_request", "the request is malformed"))
    if status >= 500:
        code, description = "server_error", "internal error"
    headers = dict(NO_STORE)
    if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return json_response({"error": code, "error_description": description}, status, headers)


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> Response:
    # A bug, not the caller's fault: log the trace for us, show the caller nothing of it.
    log.error("unhandled_exception", exc_info=error)
    return json_response(
        {"error": "server_error", "error_description": "internal error"}, 500, NO_STORE
    )


# -- discovery and health -------------------------------------------------------------------------


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    svc = services()
    body = json.dumps({"keys": [dict(k.jwk) for k in svc.keys.published()]}, sort_keys=True)
    etag = hashlib.sha256(body.encode()).hexdigest()[:32]
    headers = {"Cache-Control": f"public, max-age={svc.settings.signing.jwks_max_age}"}
    if request.if_none_match.contains(etag):
        response = Response(status=304, headers=headers)
    else:
        response = Response(body, mimetype="application/json", headers=headers)
    response.set_etag(etag)
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    return json_response(services().metadata, headers={"Cache-Control": "public, max-age=3600"})


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


@bp.get("/metrics")
def metrics() -> Response:
    svc = services()
    if svc.settings.metrics.port is not None:
        # Served on their own port (see `serve`), not to whoever reaches the main one.
        return http_error(NotFound())
    return Response(render(svc.scrape_registry), mimetype=None, content_type=CONTENT_TYPE)


@bp.get("/readyz")
def readyz() -> Response:
    problems = services().readiness_problems()
    status = 503 if problems else 200
    body = {"status": "not ready" if problems else "ready", "problems": problems}
    return json_response(body, status, {"Cache-Control": "no-store"})
