"""The names of the token exchange and of the access tokens it mints, defined once.

The grant type and token-type URNs are RFC 8693's (§2.1, §3); what an access token we mint is
and carries is the JWT profile of RFC 9068 (§2.1 ``typ``, §2.2 claims); the ``token_type`` of
an answer is RFC 6750's. The grant (``exchange``), the minting (``keys.Signer``), our own
verification (``introspection``, ``upstream`` for chained tokens) and the downstream API's
(``verify``) all read them from here, so that none can drift from the others.
"""

from __future__ import annotations

import re
from typing import Final

#: RFC 8693 §2.1: the ``grant_type`` of a token exchange request.
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 7523 §2.1: the ``grant_type`` of a JWT bearer authorization grant.
JWT_BEARER_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The grants a client may be registered for (RFC 7591 §2 ``grant_types``), ours first.
GRANT_TYPES = (GRANT_TYPE, JWT_BEARER_GRANT_TYPE)
#: draft-ietf-oauth-identity-assertion-authz-grant-04 §3.1: the JOSE ``typ`` of an ID-JAG, and
#: the grant profile an authorization server that redeems them names in its metadata (§8.1).
ID_JAG_TYP = "oauth-id-jag+jwt"
ID_JAG_PROFILE = "urn:ietf:params:oauth:grant-profile:id-jag"
#: RFC 8693 §3: token-type identifiers.
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"

#: draft-ietf-oauth-transaction-tokens-10: the token type a Txn-Token is requested and issued
#: as (§6.1, §6.4), and a replaced one presented as (§10.7); its JOSE ``typ`` (§5.1); the
#: claims every Txn-Token carries (§5.2); the ``token_type`` of the answer (§6.4, RFC 8693
#: §2.2.1: "N_A" for a token that is no access token).
TOKEN_TYPE_TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
TXN_TOKEN_TYP = "txntoken+jwt"
TXN_TOKEN_CLAIMS = ("iat", "exp", "aud", "txn", "sub", "scope", "req_wl")
TOKEN_TYPE_N_A = "N_A"

#: RFC 9068 §2.1: the JOSE ``typ`` header of an access token (``application/at+jwt``).
ACCESS_TOKEN_TYP = "at+jwt"
#: RFC 9068 §2.2: the claims every access token we mint carries, so requires when read back.
ACCESS_TOKEN_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
#: A private claim of ours (RFC 7519 §4.3) on a token minted by chained delegation: the ``jti``
#: of every token of ours it was derived from (as subject or actor token), nearest first, so
#: that revoking one deactivates every token derived from it. At most ``MAX_DERIVED_FROM``.
DERIVED_FROM = "derived_from"
MAX_DERIVED_FROM = 32
#: A private claim of ours on every token minted while the store is a shared one: the id of the
#: store's epoch (``epoch.py``) the token was minted in. After the store lost its data, a token
#: of an earlier epoch may have been revoked and nothing says so now; one of the current epoch
#: was minted after the loss, whatever the clocks of the replicas say.
STORE_EPOCH = "store_epoch"
#: RFC 6750 §6.1.1 (RFC 8693 §2.2.1, RFC 7662 §2.2): the ``token_type`` of our answers.
TOKEN_TYPE_BEARER = "Bearer"


#: Entity profiles an actor may have (OAuth 2.0 Entity Profiles §3.1, registered for the
#: "Actor Profile" usage location): the values of ``sub_profile`` in ``act``.
ACTOR_PROFILES = ("user", "service", "ai_agent")
#: A ``sub_profile`` value (Entity Profiles §3.3): space-delimited profile tokens.
SUB_PROFILE = re.compile(r"[A-Za-z0-9._-]+( [A-Za-z0-9._-]+)*")
