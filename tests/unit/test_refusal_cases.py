"""Every refusal reason has an end-to-end case in tests/test_refusals.py or is named as covered
elsewhere."""

from __future__ import annotations

from token_exchange.oauth.reasons import REASONS

from ..test_refusals import (
    CASES,
)

DPOP_CHECKS = (
    "dpop_headers", "dpop_typ", "dpop_alg", "dpop_claim", "dpop_signature", "dpop_htm",
    "dpop_iat", "dpop_jwk",
)  # fmt: skip


#: Codes whose refusal lines other tests read, and where; or, for the defaults of the error
#: classes and for codes no request over HTTP can easily provoke, where their raise is tested
#: (each is also checked by the source scan in tests/unit/test_reasons.py).
COVERED_ELSEWHERE = {
    # The jwt-bearer grant (issue 23): its refusals, audit lines included.
    "grant_type_not_allowed": "tests/unit/test_pipeline.py, test_jwt_bearer.py",
    "assertion_invalid": "tests/unit/test_reasons.py (InvalidGrant's default)",
    "assertion_not_enabled": "test_jwt_bearer.py::test_a_bad_id_jag_is_invalid_grant",
    "assertion_client": "test_jwt_bearer.py::test_a_bad_id_jag_is_invalid_grant",
    "assertion_audience": "test_jwt_bearer.py::test_a_bad_id_jag_is_invalid_grant",
    "assertion_lifetime": "test_jwt_bearer.py::test_a_bad_id_jag_is_invalid_grant",
    "assertion_replayed": "test_jwt_bearer.py::test_refusals_are_audited_with_a_reason",
    "assertion_exceeded": "test_jwt_bearer.py::test_the_request_only_narrows_what_the_id_jag_...",
    # Transaction tokens (issue 25): each refusal's audit line.
    **dict.fromkeys(
        (
            "txn_token_not_allowed",
            "txn_context_invalid",
            "scope_exceeds_subject",
            "subject_scope_unknown",
            "txn_replacements",
        ),
        "test_transaction_tokens.py::test_txn_token_requests_are_audited",
    ),
    # Defaults of the error classes, for a raise site that names no reason.
    "request_malformed": "tests/unit/test_reasons.py",
    "target_refused": "tests/unit/test_reasons.py",
    "scope_refused": "tests/unit/test_reasons.py",
    "temporarily_unavailable": "tests/unit/test_reasons.py",
    "dpop_invalid": "tests/unit/test_reasons.py",
    # Trust policy and delegation (audit lines read there).
    "condition": "test_trust_policy.py::test_condition_refusal_is_audited_with_its_reason",
    "type": "test_delegation.py (a token of ours without typ at+jwt)",
    "revoked": "test_delegation.py",
    "may_act": "test_delegation.py",
    "act_depth": "test_delegation.py",
    "act_cycle": "test_delegation.py",
    "act_invalid": "test_delegation.py",
    "chained_token_not_allowed": "test_delegation.py",
    "actor_unbound": "tests/unit/test_reasons.py (a delegating client built without conditions)",
    "scope_not_carried": "tests/unit/test_reasons.py (source scan)",
    # DPoP proof checks: each code by tests/unit/test_dpop_proofs.py; one audit path for all of them
    # (dpop_malformed, dpop_htu and dpop_replay above).
    **dict.fromkeys(DPOP_CHECKS, "tests/unit/test_dpop_proofs.py"),
    # The answer: test_dpop.py::test_with_nonces_a_proof_must_carry_the_current_one.
    "use_dpop_nonce": "tests/unit/test_reasons.py (source scan)",
    # Stores and keys that fail: raise sites checked by the source scan.
    "dpop_store_unavailable": "tests/unit/test_reasons.py (source scan)",
    "unknown_key_unconfirmed": "tests/unit/test_reasons.py (source scan)",
    "issuer_keys_unavailable": "tests/unit/test_reasons.py (source scan)",
    "client_keys_unavailable": "tests/unit/test_reasons.py (source scan)",
    "store_unavailable": "tests/unit/test_reasons.py (source scan)",
    # Delegation hardening and a store that lost its data (audit lines read there).
    "chained_token_wrong_client": "test_delegation.py",
    "derived_too_long": "tests/unit/test_delegation_rules.py",
    "store_reset": "test_store_reset.py, tests/unit/test_epoch.py",
    "dpop_store_reset": "tests/unit/test_reasons.py (source scan)",
    # Workload actors: a JWT-SVID whose sub is no SPIFFE ID of the domain that signed it.
    "spiffe_id": "test_workload_actors.py",
    "actor_delegated": "test_delegation.py",
    "actor_token_required": "test_workload_actors.py",
    "actor_only": "test_workload_actors.py",
    # /authorize refuses every request.
    "unsupported_response_type": "test_discovery.py",
}


def test_every_reason_has_a_case_or_is_covered_elsewhere() -> None:
    assert set(CASES) | set(COVERED_ELSEWHERE) == REASONS
    assert not set(CASES) & set(COVERED_ELSEWHERE)
