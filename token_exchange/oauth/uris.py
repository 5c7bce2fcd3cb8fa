"""URI rules shared by configuration checks and request checks (RFC 3986, RFC 8707 §2)."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Whitespace (``str.isspace``'s, Unicode's included), control characters, DEL and backslashes.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")


def url_problem(
    value: str, *, allow_http_loopback: bool = True, allow_path: bool = True
) -> str | None:
    """Why ``value`` is not an acceptable https URL for configuration, or None when it is."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.scheme == "http" and not (allow_http_loopback and is_loopback(parts.hostname)):
        return "must use https (http is accepted only for localhost)"
    if parts.fragment or "#" in value:
        return "must not contain a fragment"
    if parts.username or parts.password:
        return "must not contain credentials"
    if not allow_path and parts.path not in ("", "/"):
        return "must not contain a path"
    return None


def is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")


def resource_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable resource indicator (RFC 8707 §2), or None."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "resource is not a valid URI"
    if not parts.scheme or not (parts.netloc or parts.path):
        return "resource must be an absolute URI"
    if "#" in value:
        return "resource must not contain a fragment"
    # Characters that parsers disagree on (WHATWG reads "\\" as "/"; some decode %2F) would let
    # the permissions API see a different path than the one we matched.
    if _UNSAFE.search(value):
        return "resource must not contain whitespace, control characters or backslashes"
    if any(code in value.upper() for code in ("%2F", "%5C", "%00")):
        return "resource must not contain encoded slashes, backslashes or NUL"
    if parts.username is not None or parts.password is not None:
        return "resource must not contain user information"
    # Dot segments would let a resource under an allowed prefix point outside of it.
    # "..;x" is ".." to servers that strip path parameters (Tomcat, Spring).
    if any(unquote(segment).split(";", 1)[0] in (".", "..") for segment in parts.path.split("/")):
        return "resource must not contain '.' or '..' path segments"
    return None


def resource_under(resource: str, prefix: str) -> bool:
    """True when ``resource`` is ``prefix`` or lies under it at a path boundary.

    ``https://x.test/`` covers ``https://x.test/a``; ``https://x.test/a`` covers
    ``https://x.test/a/b`` but not ``https://x.test/ab``; nothing covers another host such as
    ``https://x.test.evil/``. Scheme, host and port are compared parsed, not as text; values
    without a host (logical names, URNs) only cover themselves.
    """
    if resource == prefix:
        return True
    # Only the prefix's parse is cached: prefixes are few (configured, or a permissions API's);
    # resources are the callers', and a cache of them would hold whatever they send.
    r, p = _origin_and_path(resource), _cached_origin_and_path(prefix)
    if r is None or p is None or r[0] != p[0]:
        return False
    r_path, p_path = r[1], p[1]
    if r_path == p_path:
        return True
    return r_path.startswith(p_path if p_path.endswith("/") else p_path + "/")


def _origin_and_path(value: str) -> tuple[tuple[str, str, int | None], str] | None:
    """(scheme, host, port) and path of an absolute URL with a host and no user information,
    the scheme's default port filled in; None for anything else."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username or parts.password:
        return None
    scheme = parts.scheme.lower()
    return (scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)), parts.path or "/"


def canonical_resource(value: str) -> str:
    """A resource indicator in its canonical form (RFC 3986 §6.2.2.1, §6.2.3; MCP's canonical
    server URI): scheme and host lower-case, the scheme's default port dropped. The path is kept
    as written (it is case-sensitive). Values without a host (URNs) are kept as they are."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return value
    if not parts.hostname or parts.username is not None:
        return value
    scheme = parts.scheme.lower()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    canonical = f"{scheme}://{netloc}{parts.path}"
    if parts.query:
        canonical += f"?{parts.query}"
    return canonical


def same_resource(canonical: str, identifier: str, *, trailing_slash_significant: bool) -> bool:
    """Whether the resource ``canonical`` (in canonical form) names the API whose canonical
    identifier is ``identifier``: equal, and, unless the API says a trailing slash is
    significant, with or without one (MCP clients send the server's URI either way)."""
    if canonical == identifier:
        return True
    return not trailing_slash_significant and canonical.rstrip("/") == identifier.rstrip("/")


#: A SPIFFE trust domain name (SPIFFE ID spec §2.1): lowercase letters, digits, dots, dashes,
#: underscores.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
#: A path segment of a SPIFFE ID (§2.2): letters, digits, dots, dashes, underscores; never "."
#: or ".." alone.
_SPIFFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def spiffe_trust_domain(issuer: str) -> str | None:
    """The trust domain of ``spiffe://<trust domain>`` (nothing after it), else None."""
    if not issuer.startswith("spiffe://"):
        return None
    domain = issuer.removeprefix("spiffe://")
    return domain if _TRUST_DOMAIN.fullmatch(domain) else None


def spiffe_id_in(value: str, trust_domain: str) -> bool:
    """Whether ``value`` is a SPIFFE ID of a workload in ``trust_domain`` (spiffe://td/path,
    §2): a non-empty path of valid segments, no query, fragment, port or user info."""
    prefix = f"spiffe://{trust_domain}/"
    if not value.startswith(prefix) or len(value) > 2048:
        return False
    segments = value.removeprefix(prefix).split("/")
    return all(_SPIFFE_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)


#: ``_origin_and_path`` of prefixes, cached: they are matched against on every request.
_cached_origin_and_path = functools.lru_cache(maxsize=1024)(_origin_and_path)
