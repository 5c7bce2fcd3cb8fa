"""The token endpoint (RFC 6749 §3.2), HTTP-free: one entry point for every grant.

``TokenEndpoint.token_response`` takes what the view read (the form, the headers, the method)
and answers with an issued token and the request's record, or raises the OAuth error (RFC 6749
§5.2) with the record attached (``OAuthError.record``), as Authlib's ``create_token_response``
lets a view do. What every grant shares happens here once: the caller's failure budget, the
body's single values (RFC 6749 §3.1-3.2), ``grant_type`` dispatch (§4.5, through the
``GrantRegistry``), client authentication (§2.3, RFC 7523 §2.2) and the DPoP proof (RFC 9449
§4.3). A grant parses its own parameters and issues (``Grant``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from ..config.settings import ClientSettings
from ..oauth import reasons
from ..oauth.dpop import Proof
from ..oauth.errors import InvalidRequest, OAuthError, UnauthorizedClient, UnsupportedGrantType
from .binding import DpopProofs
from .clients import ASSERTION_PARAMETERS, ClientRegistry
from .minting import IssuedToken
from .ratelimit import RateLimiter
from .record import RequestRecord
from .request import single_values

Request = TypeVar("Request")
Form = Mapping[str, Sequence[str]]


class Headers(Protocol):
    """The request's headers, by name (case-insensitive, as HTTP names are)."""

    def get(self, key: str) -> str | None: ...


class Grant(Protocol[Request]):
    """One grant type on the pipeline: it parses its parameters, then issues or refuses."""

    #: The ``grant_type`` value it answers (RFC 6749 §4.5).
    grant_type: str
    #: The body parameters it reads, besides client authentication's.
    parameters: frozenset[str]

    def parse(self, form: Form, values: Mapping[str, str]) -> Request:
        """The request's parameters, validated (``values``: the single-valued ones)."""
        ...

    def issue(
        self, request: Request, client: ClientSettings, proof: Proof | None, record: RequestRecord
    ) -> IssuedToken:
        """The token for ``client``'s ``request``, or the OAuth error that refuses it;
        ``record`` receives what the grant learns on the way."""
        ...


class GrantRegistry:
    """The grants the token endpoint answers, by ``grant_type``; the metadata's
    ``grant_types_supported`` (RFC 8414 §2) is theirs."""

    def __init__(self, grants: Iterable[Grant[Any]]) -> None:
        self._grants: dict[str, Grant[Any]] = {g.grant_type: g for g in grants}
        #: Every parameter of every grant.
        self.parameters: frozenset[str] = frozenset().union(
            *(g.parameters for g in self._grants.values())
        )
        names = list(self._grants)
        self._unsupported = (
            f"only the {names[0]} grant type is supported"
            if len(names) == 1
            else f"the supported grant types are {', '.join(names)}"
        )

    @property
    def grant_types(self) -> list[str]:
        return list(self._grants)

    def select(self, values: Mapping[str, str]) -> Grant[Any]:
        """The grant that ``grant_type`` names (RFC 6749 §5.2: ``unsupported_grant_type``)."""
        grant_type = values.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required", reason=reasons.PARAMETER_MISSING)
        grant = self._grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(self._unsupported)
        return grant


def check_grant_allowed(grant_type: str, client: ClientSettings) -> None:
    """RFC 6749 §5.2 ``unauthorized_client``: a client uses only the grants it is registered
    for (RFC 7591 §2 ``grant_types``; token exchange alone by default)."""
    if grant_type not in client.grant_types:
        raise UnauthorizedClient("this client may not use that grant type")


class RequestFailed(Exception):
    """The request failed with an exception that is no OAuth error (its ``__cause__``: the
    body could not be read, or a bug), with the ``record`` of the request so far, which
    ``refused`` completes once the caller has named the ``reason``."""

    def __init__(
        self,
        record: RequestRecord,
        form: Form,
        values: Mapping[str, str],
        authorization: str | None,
    ) -> None:
        super().__init__("the token request failed")
        self.record = record
        self._asked = form, values, authorization

    def refused(self, reason: str) -> RequestRecord:
        """The record, with ``reason`` and what the request asked for."""
        self.record.settle(reason)
        self.record.asked(*self._asked)
        return self.record


class TokenEndpoint:
    """``POST /token`` without HTTP: admission, dispatch, client authentication, DPoP; then
    the grant."""

    def __init__(
        self,
        grants: GrantRegistry,
        *,
        clients: ClientRegistry,
        limiter: RateLimiter,
        proofs: DpopProofs,
    ) -> None:
        self.grants = grants
        self.clients = clients
        self.limiter = limiter
        self.proofs = proofs
        #: Every parameter the endpoint reads: the grants' and client authentication's
        #: (RFC 7521 §4.2).
        self.parameters = grants.parameters | ASSERTION_PARAMETERS

    def token_response(
        self,
        form: Form | Callable[[], Form],
        headers: Headers,
        method: str,
        remote_addr: str,
    ) -> tuple[IssuedToken, RequestRecord]:
        """The token for this request, and its record; or the OAuth error that refuses it,
        carrying the record (``OAuthError.record``), or ``RequestFailed``.

        ``form`` may be a callable that reads it: it is called once the caller's address
        (``remote_addr``) is admitted, so that an address over its failure budget is refused
        before its body is read, and a body that is refused counts as its failure.
        """
        record = RequestRecord()
        record.caller_address = remote_addr
        read: Form = {}
        values: Mapping[str, str] = {}
        try:
            with self.limiter.failures_counted(remote_addr):
                read = form() if callable(form) else form
                values = single_values(read, self.parameters)
                grant = self.grants.select(values)
                client = self.clients.authenticate(headers.get("Authorization"), values)
                record.client_id = client.client_id
                check_grant_allowed(grant.grant_type, client)
                request = grant.parse(read, values)
                # One value: a WSGI server joins repeated headers into one (which no proof
                # parses).
                dpop = headers.get("DPoP")
                proof = self.proofs.proof([] if dpop is None else [dpop], method, record)
                issued = grant.issue(request, client, proof, record)
        except OAuthError as e:
            record.settle(e.reason, e.detail)
            record.asked(read, values, headers.get("Authorization"))
            e.record = record
            raise
        except Exception as e:
            raise RequestFailed(record, read, values, headers.get("Authorization")) from e
        return issued, record

    def dpop_nonce(self) -> str | None:
        """The DPoP nonce to hand out with an answer (RFC 9449 §8.2), if any."""
        return self.proofs.nonce()
