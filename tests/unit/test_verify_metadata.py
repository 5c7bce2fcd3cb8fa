"""The downstream verifier's metadata URL (RFC 8414 §3: the well-known segment goes before the
issuer's path)."""

from __future__ import annotations

from token_exchange.verify import metadata_url


def test_metadata_url_inserts_the_well_known_segment() -> None:
    # RFC 8414 §3.1.
    assert (
        metadata_url("https://sts.test")
        == "https://sts.test/.well-known/oauth-authorization-server"
    )
    assert (
        metadata_url("https://sts.test/tenant1")
        == "https://sts.test/.well-known/oauth-authorization-server/tenant1"
    )
