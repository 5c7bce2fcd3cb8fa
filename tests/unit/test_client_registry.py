"""Client identification and authentication at the token endpoint (RFC 6749 §2.3, §3.2.1):
``ClientRegistry.authenticate`` given the Authorization header and the body, nothing else."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from token_exchange.config.settings import Settings
from token_exchange.grant.clients import ClientRegistry, basic_credentials
from token_exchange.oauth.errors import INVALID_CLIENT_DESCRIPTION, InvalidClient, InvalidRequest

from ..fakes import BACKEND_SECRET


@pytest.fixture
def registry(settings: Settings) -> ClientRegistry:
    return ClientRegistry(settings.clients)


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then RFC 7617 Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def refused(registry: ClientRegistry, authorization: str | None, form: dict[str, str]) -> str:
    """Authenticate, expecting ``invalid_client``; return its reason (for the audit line: the
    caller is told the same whatever went wrong)."""
    with pytest.raises(InvalidClient) as refusal:
        registry.authenticate(authorization, form)
    # 401 exactly when the client tried the Authorization header (RFC 6749 §5.2).
    basic_used = (authorization or "")[:6].lower() == "basic "
    assert refusal.value.status_code == (401 if basic_used else 400)
    assert refusal.value.description == INVALID_CLIENT_DESCRIPTION
    return refusal.value.reason


# -- public clients: method "none" -------------------------------------------------------------


def test_a_public_client_names_itself_in_the_body(registry: ClientRegistry) -> None:
    assert registry.authenticate(None, {"client_id": "spa"}).client_id == "spa"


def test_a_bearer_header_is_not_client_authentication(registry: ClientRegistry) -> None:
    # A SPA's HTTP interceptor adds one to every call; it is ignored, not an error.
    assert registry.authenticate("Bearer abc.def.ghi", {"client_id": "spa"}).client_id == "spa"


def test_client_id_is_required(registry: ClientRegistry) -> None:
    assert refused(registry, None, {}) == "client_id_missing"


def test_an_unknown_client_is_refused(registry: ClientRegistry) -> None:
    assert refused(registry, None, {"client_id": "nobody"}) == "unknown_client"


def test_a_public_client_presenting_a_secret_is_refused(registry: ClientRegistry) -> None:
    # Credentials that were presented must be right; a public client has none.
    assert refused(registry, None, {"client_id": "spa", "client_secret": "guess"}) == (
        "client_auth_method"
    )
    assert refused(registry, basic("spa", "guess"), {}) == "client_auth_method"


# -- confidential clients: client_secret_post and client_secret_basic -----------------------------


def test_a_confidential_client_authenticates_in_the_body(registry: ClientRegistry) -> None:
    form = {"client_id": "backend", "client_secret": BACKEND_SECRET}
    assert registry.authenticate(None, form).client_id == "backend"


def test_a_confidential_client_authenticates_with_basic(registry: ClientRegistry) -> None:
    assert registry.authenticate(basic("backend", BACKEND_SECRET), {}).client_id == "backend"


def test_basic_credentials_are_form_urldecoded(registry: ClientRegistry) -> None:
    # RFC 6749 §2.3.1: "s" sent as %73 is still "s".
    pair = f"backend:%73{BACKEND_SECRET[1:]}"
    header = "Basic " + base64.b64encode(pair.encode()).decode()
    assert registry.authenticate(header, {}).client_id == "backend"


def test_the_auth_scheme_is_case_insensitive(registry: ClientRegistry) -> None:
    header = "bAsIc " + basic("backend", BACKEND_SECRET)[6:]
    assert registry.authenticate(header, {}).client_id == "backend"


def test_a_confidential_client_without_its_secret_is_refused(registry: ClientRegistry) -> None:
    assert refused(registry, None, {"client_id": "backend"}) == "client_credentials_missing"


@pytest.mark.parametrize("secret", ["wrong", BACKEND_SECRET + "x", BACKEND_SECRET[:-1], ""])
def test_a_wrong_secret_is_refused(registry: ClientRegistry, secret: str) -> None:
    if secret:
        form = {"client_id": "backend", "client_secret": secret}
        assert refused(registry, None, form) == "client_auth_failed"
    assert refused(registry, basic("backend", secret), {}) == "client_auth_failed"


def test_basic_for_an_unknown_client_is_refused(registry: ClientRegistry) -> None:
    assert refused(registry, basic("nobody", "x"), {}) == "unknown_client"


@pytest.mark.parametrize(
    "credentials",
    [
        "not base64!",
        base64.b64encode(b"no-colon").decode(),
        base64.b64encode(b":secret-without-id").decode(),
        base64.b64encode(b"\xff\xfe:latin").decode(),
        "",
    ],
)
def test_malformed_basic_credentials_are_refused(
    registry: ClientRegistry, credentials: str
) -> None:
    assert refused(registry, f"Basic {credentials}", {}) == "client_credentials_malformed"
    with pytest.raises(InvalidClient):
        basic_credentials(f"Basic {credentials}")


# -- one method per request (RFC 6749 §2.3) -------------------------------------------------------


def test_basic_and_a_body_secret_together_are_invalid_request(registry: ClientRegistry) -> None:
    with pytest.raises(InvalidRequest, match="one client authentication method"):
        registry.authenticate(basic("backend", BACKEND_SECRET), {"client_secret": BACKEND_SECRET})


def test_a_body_client_id_must_match_basic(registry: ClientRegistry) -> None:
    reason = refused(registry, basic("backend", BACKEND_SECRET), {"client_id": "spa"})
    assert reason == "client_id_mismatch"


def test_a_body_client_id_matching_basic_is_fine(registry: ClientRegistry) -> None:
    header = basic("backend", BACKEND_SECRET)
    assert registry.authenticate(header, {"client_id": "backend"}).client_id == "backend"
