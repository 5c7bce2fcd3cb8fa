"""The OAuth and JOSE vocabulary, pure: errors (one class per RFC code) and refusal reasons, the
JOSE tables and JWK Sets (``jose``), JWT checks (``tokens``), DPoP proofs (``dpop``), trust
conditions, URI rules, the grant's names (``profile``), strict JSON, the clock.

Imports nothing of ours outside this folder (``tests/unit/test_layers.py``).
"""
