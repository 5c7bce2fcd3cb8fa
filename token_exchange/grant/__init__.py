"""The grants, HTTP-free, on one pipeline (``pipeline``: the token endpoint's entry point, the
grant registry) with one typed record per request (``record``). Token exchange (``rfc8693``)
is composed of steps that other grants reuse: the request (``request``), token verification
(``verification``, ``upstream``), trust policy (``trust``), delegation (``delegation``), DPoP
binding (``binding``), target and scope rules (``policy``), the permissions question
(``decision``) and minting (``minting``). Also: client authentication, introspection and
revocation, rate limits.

May import: ``oauth``, ``obs``, ``config``, ``sources``.
"""
