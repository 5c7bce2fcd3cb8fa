"""Why a request was refused: the one list of ``reason`` codes in the audit log.

Every refusal's audit line (``/token``, ``/introspect``, ``/revoke``, ``/authorize``) carries one of
``REASONS``; README "Operating it" documents each. A code is ours and stable (operators alert on
it), a bounded set fit for a metric label; the OAuth error the caller sees is coarser, and its
description never says more than the error does (``invalid_client`` always says the same).
Each ``OAuthError`` class has a default reason (``errors``); raise sites name a finer one.
"""

from __future__ import annotations

# -- the request itself (invalid_request, unsupported_grant_type) -------------------------------
REQUEST_MALFORMED = "request_malformed"
CONTENT_TYPE = "content_type"
PARAMETERS_IN_URL = "parameters_in_url"
PARAMETER_MISSING = "parameter_missing"
PARAMETER_REPEATED = "parameter_repeated"
TOKEN_TYPE_UNSUPPORTED = "token_type_unsupported"
BODY_TOO_LARGE = "body_too_large"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
#: unauthorized_client: the client's ``grant_types`` do not list the grant it used.
GRANT_TYPE_NOT_ALLOWED = "grant_type_not_allowed"
#: unauthorized_client: the client may not request Txn-Tokens (``transaction_tokens``).
TXN_TOKEN_NOT_ALLOWED = "txn_token_not_allowed"
#: invalid_request: ``request_context`` or ``request_details`` is no bounded JSON object.
TXN_CONTEXT_INVALID = "txn_context_invalid"
#: /authorize: this service serves no response type (its metadata lists none).
UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"

# -- the client (invalid_client; client_auth_ambiguous is invalid_request) -----------------------
CLIENT_ID_MISSING = "client_id_missing"
UNKNOWN_CLIENT = "unknown_client"
CLIENT_AUTH_FAILED = "client_auth_failed"
CLIENT_CREDENTIALS_MISSING = "client_credentials_missing"
CLIENT_CREDENTIALS_MALFORMED = "client_credentials_malformed"
CLIENT_AUTH_METHOD = "client_auth_method"
CLIENT_AUTH_AMBIGUOUS = "client_auth_ambiguous"
CLIENT_ID_MISMATCH = "client_id_mismatch"
CLIENT_ASSERTION_INVALID = "client_assertion_invalid"
CLIENT_NOT_CONFIDENTIAL = "client_not_confidential"

# -- the target (invalid_target) -----------------------------------------------------------------
TARGET_REFUSED = "target_refused"
TARGET_MISSING = "target_missing"
UNKNOWN_AUDIENCE = "unknown_audience"
UNKNOWN_RESOURCE = "unknown_resource"
RESOURCE_INVALID = "resource_invalid"
SEVERAL_APIS = "several_apis"
TARGET_NOT_ALLOWED = "target_not_allowed"
PERMISSIONS_DENIED = "permissions_denied"

# -- scopes and authorization details (invalid_scope, invalid_authorization_details) -------------
SCOPE_REFUSED = "scope_refused"
SCOPE_MALFORMED = "scope_malformed"
UNKNOWN_SCOPE = "unknown_scope"
SCOPE_NOT_ALLOWED = "scope_not_allowed"
NO_SCOPE_ALLOWED = "no_scope_allowed"
SCOPE_NOT_GRANTED = "scope_not_granted"
SCOPE_NOT_CARRIED = "scope_not_carried"
#: A Txn-Token's scope: the subject token states none, or the request asks for more than it has.
SUBJECT_SCOPE_UNKNOWN = "subject_scope_unknown"
SCOPE_EXCEEDS_SUBJECT = "scope_exceeds_subject"
AUTHORIZATION_DETAILS_INVALID = "authorization_details_invalid"
AUTHORIZATION_DETAILS_TYPE = "authorization_details_type"

# -- subject and actor tokens (invalid_request; tokens.CODES and the exchange's own) -------------
TOKEN_REASONS = frozenset(
    {
        # tokens.TokenRejected codes
        "too_large", "malformed", "issuer_untrusted", "type", "algorithm", "unknown_key",
        "missing_claim", "audience", "signature", "invalid", "invalid_claim", "expired",
        "not_yet_valid", "issued_in_future", "spiffe_id",
        # trust policy, revocation and delegation
        "condition", "revoked", "chained_token_not_allowed", "delegation_not_allowed",
        "actor_unbound", "actor_delegated", "actor_token_required", "actor_only", "may_act",
        "act_depth", "act_cycle", "act_invalid",
        "chained_token_wrong_client", "derived_too_long",
        # Txn-Token replacement
        "txn_replacements",
    }
)  # fmt: skip

# -- jwt-bearer assertions (invalid_grant; beside the token codes above) --------------------------
ASSERTION_INVALID = "assertion_invalid"
ASSERTION_REASONS = frozenset(
    {
        ASSERTION_INVALID, "assertion_not_enabled", "assertion_client", "assertion_audience",
        "assertion_lifetime", "assertion_replayed", "assertion_exceeded",
    }
)  # fmt: skip

# -- DPoP (invalid_dpop_proof, use_dpop_nonce, and bound tokens: invalid_request) ----------------
DPOP_INVALID = "dpop_invalid"
USE_DPOP_NONCE = "use_dpop_nonce"
DPOP_REASONS = frozenset(
    {
        DPOP_INVALID, USE_DPOP_NONCE, "dpop_required", "dpop_headers", "dpop_malformed",
        "dpop_typ", "dpop_alg", "dpop_claim", "dpop_signature", "dpop_htm", "dpop_htu",
        "dpop_iat", "dpop_replay", "dpop_jwk", "dpop_proof_missing", "dpop_key_mismatch",
        "dpop_ath", "dpop_unbound", "cnf_unsupported",
    }
)  # fmt: skip

# -- limits (slow_down) --------------------------------------------------------------------------
#: ``detail`` says which: ``per_client``, ``per_subject`` or ``failures_per_address``.
RATE_LIMITED = "rate_limited"

# -- a dependency (temporarily_unavailable, 503) and our own failure (500) -----------------------
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
ISSUER_KEYS_UNAVAILABLE = "issuer_keys_unavailable"
UNKNOWN_KEY_UNCONFIRMED = "unknown_key_unconfirmed"
CLIENT_KEYS_UNAVAILABLE = "client_keys_unavailable"
PERMISSIONS_UNAVAILABLE = "permissions_unavailable"
PERMISSIONS_ANSWER_INVALID = "permissions_answer_invalid"
SIGNING_KEY_UNAVAILABLE = "signing_key_unavailable"
STORE_UNAVAILABLE = "store_unavailable"
DPOP_STORE_UNAVAILABLE = "dpop_store_unavailable"
REVOCATION_UNAVAILABLE = "revocation_unavailable"
#: The store lost its data (``epoch``): a token, proof or assertion from before cannot be checked.
STORE_RESET = "store_reset"
DPOP_STORE_RESET = "dpop_store_reset"
INTERNAL_ERROR = "internal_error"

#: Every reason a refusal's audit line may carry.
REASONS = (
    frozenset(
        value
        for name, value in dict(globals()).items()
        if name.isupper() and isinstance(value, str)
    )
    | TOKEN_REASONS
    | ASSERTION_REASONS
    | DPOP_REASONS
)
