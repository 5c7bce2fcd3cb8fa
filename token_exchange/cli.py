"""The ``token-exchange`` command: dev, serve, keys, check-config.

Every failure a user can cause (a bad config, a missing key) ends with a clear message on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from . import logs, wsgi
from .keys import (
    DEFAULT_RSA_BITS,
    KeyStoreError,
    SigningKey,
    generate_private_key,
    load_keys,
    select_signing_key,
    write_key,
)
from .settings import ENV_CONFIG, SIGNING_ALGORITHMS, ConfigError, Settings, load_settings

EXIT_USAGE = 2


class CliError(Exception):
    """A problem to report to the user in one message, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"token-exchange: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-exchange",
        description="OAuth 2.0 Token Exchange (RFC 8693) security token service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="run everything in one process with a development issuer and demo data"
    )
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--alg", choices=SIGNING_ALGORITHMS, default="ES256")
    dev.add_argument(
        "--countries-api",
        default="http://127.0.0.1:8081",
        help="URL of examples/countries_api.py, for the example SPA at /spa/",
    )
    dev.set_defaults(func=cmd_dev)

    serve = commands.add_parser("serve", help="serve in production (gunicorn)")
    serve.add_argument("--config", help=f"config file (default: ${ENV_CONFIG})")
    serve.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server in a container
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=default_workers())
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a config and report every problem")
    check.add_argument("--config", help=f"config file (default: ${ENV_CONFIG})")
    check.set_defaults(func=cmd_check_config)

    keys = commands.add_parser("keys", help="manage signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = key_commands.add_parser("generate", help="create the first key; it signs at once")
    generate.add_argument("--keys-dir", required=True, type=Path)
    generate.add_argument("--alg", choices=SIGNING_ALGORITHMS, default="ES256")
    generate.add_argument("--rsa-bits", type=int, default=DEFAULT_RSA_BITS)
    generate.set_defaults(func=cmd_keys_generate)
    listing = key_commands.add_parser("list", help="show keys and their states")
    listing.add_argument("--keys-dir", required=True, type=Path)
    listing.set_defaults(func=cmd_keys_list)
    return parser


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


# -- configuration ------------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get(ENV_CONFIG)
    if not path:
        raise CliError(f"no configuration: pass --config PATH or set {ENV_CONFIG}")
    return Path(path)


def load_checked(path: Path) -> tuple[Settings, list[str]]:
    """Load the config and its keys; raise ``CliError`` listing every problem."""
    problems: list[str] = []
    settings = None
    signing = None
    try:
        settings = load_settings(path)
        signing = settings.signing
    except ConfigError as e:
        problems.extend(e.problems)
        signing = e.signing
    warnings: list[str] = []
    if signing is not None:
        try:
            keys, warnings = load_keys(signing.keys_dir)
            select_signing_key(keys, time.time())
        except KeyStoreError as e:
            problems.append(f"signing.keys_dir: {e}")
    if problems or settings is None:
        raise CliError(f"{path} is not usable:\n" + "\n".join(f"  - {p}" for p in problems))
    return settings, warnings


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    settings, warnings = load_checked(path)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{path}: ok ({len(settings.upstreams)} upstreams, {len(settings.clients)} clients, "
        f"{len(settings.apis)} APIs)"
    )
    return 0


# -- serving ------------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from .devmode import create_dev_app, walkthrough

    logs.configure()
    app = create_dev_app(args.port, algorithm=args.alg, countries_api_url=args.countries_api)
    print(walkthrough(f"http://127.0.0.1:{args.port}"), flush=True)
    # Threaded: the demo permissions API is served by this same process.
    run_simple("127.0.0.1", args.port, app, threaded=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    # Validate before forking workers, so a bad config stops here with one clear message.
    _, warnings = load_checked(path)
    logs.configure()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    os.environ[ENV_CONFIG] = str(path.resolve())
    _Gunicorn(
        {
            "bind": f"{args.host}:{args.port}",
            "workers": args.workers,
            "worker_class": "sync",
            "timeout": 30,
            "graceful_timeout": 25,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
        }
    ).run()
    return 0


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn with our app factory; each worker builds its own app after the fork."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return wsgi.application()


# -- keys ---------------------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    keys_dir: Path = args.keys_dir
    if keys_dir.is_dir() and any(keys_dir.glob("*.json")):
        raise CliError(
            f"{keys_dir} already holds signing keys; generate creates the first key only"
        )
    if args.alg in ("RS256", "PS256") and args.rsa_bits < 2048:
        raise CliError("--rsa-bits must be at least 2048")
    now = time.time()
    key = SigningKey(
        alg=args.alg,
        private_key=generate_private_key(args.alg, rsa_bits=args.rsa_bits),
        publish_at=now,
        activate_at=now,
        created_at=now,
    )
    try:
        path = write_key(keys_dir, key)
    except OSError as e:
        raise CliError(f"cannot write to {keys_dir}: {e.strerror}") from None
    print(f"created {args.alg} key {key.kid} in {path.parent} (signs from now)")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    try:
        keys, warnings = load_keys(args.keys_dir)
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    now = time.time()
    print(f"{'KID':44}  {'ALG':6}  {'STATE':9}  PUBLISH / ACTIVATE / DEACTIVATE / WITHDRAW")
    for key in sorted(keys, key=lambda k: k.activate_at):
        meta = key.metadata()
        times = " / ".join(
            meta[n] or "-" for n in ("publish_at", "activate_at", "deactivate_at", "withdraw_at")
        )
        print(f"{key.kid:44}  {key.alg:6}  {key.state(now):9}  {times}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
