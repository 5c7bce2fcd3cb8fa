"""``GET /js/...``: the JavaScript client for SPAs and Node (``clients/js``).

``/js/token-exchange-client.js`` is the ES module a page imports from the token service itself,
so the client and the service it talks to come from one place. ``/js/token-exchange-client.tgz``
(and ``/js/token-exchange-client-<version>.tgz``) is the same package as ``npm pack`` makes it,
for ``npm install https://<sts>/js/token-exchange-client.tgz`` (Node cannot import a module from
an https URL). Both ship as package data (``token_exchange/js`` links to ``clients/js``), so
every install serves them, ``dev`` and ``serve`` alike.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, request, send_file

MODULE = "token-exchange-client.js"
#: The tarball's name, as ``npm pack`` names a package called ``@token-exchange/client``.
TARBALL = "token-exchange-client"
#: Browsers reuse it for five minutes, then revalidate it with its ETag (a 304 when unchanged).
MAX_AGE = 300
#: The mtime npm writes into every packed file (1985-10-26T08:15:00Z), so that a tarball is the
#: same bytes wherever and whenever it is built (its sha512 is what a package-lock records).
NPM_MTIME = 499162500

bp = Blueprint("jsclient", __name__)


def _public(response: Response) -> Response:
    # Public files, fetched without credentials (a module script loads in CORS mode): "*"
    # lets a page on another origin load them and grants nothing else.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get(f"/js/{MODULE}")
def client_module() -> Response:
    resource = importlib.resources.files("token_exchange.js") / MODULE
    with importlib.resources.as_file(resource) as path:
        response = send_file(path, mimetype="text/javascript", max_age=MAX_AGE, etag=True)
    return _public(response)


def package_files(directory: Path) -> list[str]:
    """What ``npm pack`` puts in the package: ``package.json`` and its ``files`` (literal
    names only: the list is ours, and a pattern in it would be a mistake to catch here)."""
    manifest = json.loads((directory / "package.json").read_bytes())
    return sorted({"package.json", *manifest["files"]})


def build_tarball(directory: Path) -> tuple[str, bytes]:
    """The package's version and its tarball in npm pack's layout (``package/<file>``, mode
    0644, owner 0, npm's fixed mtime), built deterministically: same files, same bytes."""
    version = str(json.loads((directory / "package.json").read_bytes())["version"])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in package_files(directory):
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, NPM_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    # mtime=0 and no file name in the gzip header: the bytes depend on the contents only.
    return version, gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


@functools.lru_cache(maxsize=4)
def _cached_tarball(directory: Path, stamp: tuple[Any, ...]) -> tuple[str, bytes, str]:
    """Built once per state of the files (``stamp``), not per request: gzip costs CPU."""
    del stamp  # only the cache key
    version, data = build_tarball(directory)
    return version, data, hashlib.sha256(data).hexdigest()


def _tarball() -> tuple[str, bytes, str]:
    resource = importlib.resources.files("token_exchange.js") / "package.json"
    with importlib.resources.as_file(resource) as manifest:
        directory = manifest.parent
        stamp = tuple(
            (name, (directory / name).stat().st_mtime_ns, (directory / name).stat().st_size)
            for name in package_files(directory)
        )
        return _cached_tarball(directory, stamp)


@bp.get(f"/js/{TARBALL}.tgz")
@bp.get(f"/js/{TARBALL}-<version>.tgz")
def client_tarball(version: str | None = None) -> Response:
    """The package for ``npm install <url>``; the versioned name only for the version served
    (a lockfile pins it: the same URL must keep giving the same bytes)."""
    current, data, digest = _tarball()
    if version is not None and version != current:
        abort(404)
    response = Response(data, mimetype="application/gzip")
    response.headers["Content-Disposition"] = f'attachment; filename="{TARBALL}-{current}.tgz"'
    response.cache_control.public = True
    response.cache_control.max_age = MAX_AGE
    response.set_etag(digest)
    response.make_conditional(request)  # a 304 for a matching If-None-Match
    return _public(response)
