"""The ``token-exchange`` command: dev, serve, keys, check-config, config-schema.

Every failure a user can cause (a bad config, a missing key) ends with a clear message on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gunicorn.app.base import BaseApplication

from ..config.config_model import json_schema_text
from ..config.settings import (
    ENV_CONFIG,
    SIGNING_ALGORITHMS,
    ConfigError,
    Settings,
    SigningSettings,
    config_warnings,
    load_settings,
)
from ..oauth.jose import MIN_RSA_BITS
from ..obs import logs, tracing
from ..sources.epoch import mark_reset
from ..sources.keys import (
    DEFAULT_RSA_BITS,
    ROTATION_MARGIN,
    STATES,
    KeyStoreError,
    display_time,
    generate,
    load_keys,
    require_signing_key,
    retire,
    rotate,
    select_signing_key,
)
from ..sources.store import StoreUnavailable, durability_problems
from ..sources.stores import open_store
from ..web.overload import serving_threads

# Nothing here imports the app at module level: `serve` must set PROMETHEUS_MULTIPROC_DIR before
# prometheus-client is first imported (it picks its multi-process mode then).
from . import affinity

log = logging.getLogger(__name__)

EXIT_USAGE = 2
#: A command whose output went into a closed pipe: the status of one killed by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_WARNINGS = 1
DEFAULT_PORT = 8080
SERVERS = ("granian", "gunicorn")
DEFAULT_SERVER = "granian"


class CliError(Exception):
    """A problem to report to the user in one message, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Written now, inside the handler below, not at exit, where a closed pipe would
            # print "Exception ignored ... BrokenPipeError".
            sys.stdout.flush()
    except BrokenPipeError:
        # `token-exchange keys list | head`: the reader has gone, so there is no one to tell.
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"token-exchange: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit finds no pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-exchange",
        description="OAuth 2.0 Token Exchange (RFC 8693) security token service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="run everything in one process with a development issuer and demo data"
    )
    dev.add_argument(
        "--port", type=int, default=8080, help="port on 127.0.0.1 to listen on (default 8080)"
    )
    dev.add_argument(
        "--alg",
        choices=SIGNING_ALGORITHMS,
        default="ES256",
        help="algorithm of the in-memory signing key (default ES256)",
    )
    dev.add_argument(
        "--countries-api",
        default="http://127.0.0.1:8081",
        help="URL of examples/countries_api.py, for the example SPA at /spa/ "
        "(default http://127.0.0.1:8081)",
    )
    dev.add_argument(
        "--print-config",
        action="store_true",
        help="print the config of a `serve` in front of the dev on --port, and the commands "
        "to run both, then exit (README: From dev to serve)",
    )
    dev.add_argument(
        "--serve-port",
        type=int,
        help="with --print-config: the port of that serve on 127.0.0.1 (default 8090)",
    )
    dev.add_argument(
        "--serve-keys-dir",
        help="with --print-config: its signing.keys_dir, relative to the config file "
        "(default keys/local)",
    )
    dev.set_defaults(func=cmd_dev)

    serve = commands.add_parser(
        "serve", help="serve in production (granian by default, or gunicorn; see --server)"
    )
    serve.add_argument("--config", help=f"config file (default: ${ENV_CONFIG})")
    serve.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a server in a container
        help="address to listen on (default 0.0.0.0, every interface)",
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    workers = default_workers()
    serve.add_argument(
        "--workers",
        type=int,
        default=workers,
        help=f"worker processes (default: one per usable CPU, here {workers})",
    )
    serve.add_argument(
        "--server",
        choices=SERVERS,
        default=DEFAULT_SERVER,
        help=f"WSGI server (default {DEFAULT_SERVER}; see bench/README.md)",
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a config and report every problem")
    check.add_argument("--config", help=f"config file (default: ${ENV_CONFIG})")
    check.add_argument(
        "--port",
        type=int,
        help=f"the --port serve will be given: checked against [metrics] port (default: "
        f"serve's default, {DEFAULT_PORT}, with a warning only)",
    )
    check.add_argument(
        "--strict", action="store_true", help="fail (exit status 1) on warnings too, for CI"
    )
    check.set_defaults(func=cmd_check_config)

    schema = commands.add_parser(
        "config-schema",
        help="print the JSON Schema of the config file, for editors (see README, Configuration)",
    )
    schema.set_defaults(func=cmd_config_schema)

    store = commands.add_parser("store", help="the shared store (see README, Running replicas)")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    mark_reset = store_commands.add_parser(
        "mark-reset",
        help="after restoring the store from a backup or a snapshot: treat it as reset",
        description=(
            "Remove the store's epoch marker, so that every replica treats the store as one "
            "that lost its data: tokens minted before now are refused until they expire, and "
            "DPoP proofs and client assertions from before are not accepted. Run it after "
            "restoring a backup or a snapshot, or after a failover to a replica that may lag "
            "behind: what was written since the copy was taken (revocations, used proofs) is "
            "gone, and nothing else would say so."
        ),
    )
    mark_reset.add_argument("--config", help=f"config file (default: ${ENV_CONFIG})")
    mark_reset.set_defaults(func=cmd_store_mark_reset)

    keys = commands.add_parser("keys", help="manage signing keys")
    key_commands = keys.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", parser_class=_KeysParser
    )
    config_help = (
        f"take signing.keys_dir from this config (default: ${ENV_CONFIG}); --keys-dir wins"
    )
    generate = key_commands.add_parser("generate", help="create the first key; it signs at once")
    generate.add_argument("--keys-dir", type=Path, help="default: signing.keys_dir of --config")
    generate.add_argument("--config", help=config_help)
    generate.add_argument(
        "--alg", choices=SIGNING_ALGORITHMS, help="default: signing.algorithm, else ES256"
    )
    generate.add_argument("--rsa-bits", type=int, default=DEFAULT_RSA_BITS)
    generate.set_defaults(func=cmd_keys_generate)
    rotate = key_commands.add_parser(
        "rotate", help="publish a new key now; it signs after the delay, replacing the current"
    )
    rotate.add_argument("--keys-dir", type=Path, help="default: signing.keys_dir of --config")
    rotate.add_argument("--alg", choices=SIGNING_ALGORITHMS, help="default: signing.algorithm")
    rotate.add_argument(
        "--config",
        help="read signing.keys_dir, token_ttl, jwks_max_age and algorithm from this config "
        f"(default: ${ENV_CONFIG} when one of them is not given)",
    )
    rotate.add_argument("--token-ttl", type=int, help="longest token lifetime (default 300)")
    rotate.add_argument("--jwks-max-age", type=int, help="JWKS Cache-Control max-age (default 300)")
    rotate.add_argument(
        "--delay",
        type=float,
        help=f"seconds until the new key signs (default: JWKS max-age + {ROTATION_MARGIN})",
    )
    rotate.add_argument("--rsa-bits", type=int, default=DEFAULT_RSA_BITS)
    rotate.set_defaults(func=cmd_keys_rotate)
    listing = key_commands.add_parser(
        "list", help="show keys, their states (with a legend) and times (UTC)"
    )
    listing.add_argument("--keys-dir", type=Path, help="default: signing.keys_dir of --config")
    listing.add_argument("--config", help=config_help)
    listing.set_defaults(func=cmd_keys_list)
    retire_ = key_commands.add_parser(
        "retire",
        help="withdraw a key now (emergency: tokens it signed stop verifying)",
        epilog=f"{RETIRE_HINT}.",
    )
    retire_.takes_kid = True
    retire_.add_argument("kid", nargs="?", metavar="KID", help="the key id (see `keys list`)")
    retire_.add_argument("--kid", dest="kid_option", metavar="KID", help="the key id, as an option")
    retire_.add_argument("--keys-dir", type=Path, help="default: signing.keys_dir of --config")
    retire_.add_argument("--config", help=config_help)
    retire_.add_argument("--force", action="store_true", help="even if no other key would sign")
    retire_.set_defaults(func=cmd_keys_retire)
    return parser


def default_workers(
    *, cpu_max: Path = Path("/sys/fs/cgroup/cpu.max"), available: int | None = None
) -> int:
    """One worker per CPU we may use: the CPUs we can run on, capped by a container's CPU
    limit (cgroup v2 ``cpu.max``), which ``os.cpu_count()`` does not see."""
    cpus = available if available is not None else len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


# -- configuration ------------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get(ENV_CONFIG)
    if not path:
        raise CliError(f"no configuration: pass --config PATH or set {ENV_CONFIG}")
    return Path(path)


def load_checked(path: Path, *, port: int | None = None) -> tuple[Settings, list[str]]:
    """Load the config and its keys (and check it against serve's ``port`` when given); raise
    ``CliError`` listing every problem."""
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
            require_signing_key(keys, time.time(), signing.keys_dir)
        except KeyStoreError as e:
            problems.append(f"signing.keys_dir: {e}")
    if (
        settings is not None
        and port is not None
        and (clash := metrics_port_problem(settings, port))
    ):
        problems.append(clash)
    if problems or settings is None:
        raise CliError(f"{path} is not usable:\n" + "\n".join(f"  - {p}" for p in problems))
    _check_tracing_variables()
    return settings, warnings


def _check_tracing_variables() -> None:
    """The OTEL_* variables, checked before anything starts (README, "Traces")."""
    if found := tracing.problems(os.environ):
        raise CliError(
            "the OTEL_* variables are not usable:\n" + "\n".join(f"  - {p}" for p in found)
        )


def cmd_store_mark_reset(args: argparse.Namespace) -> int:
    path = _config_path(args)
    settings, _ = load_checked(path)
    store = open_store(settings.store.url, timeout=max(settings.store.timeout, 1.0))
    try:
        mark_reset(store)
    except StoreUnavailable as e:
        raise CliError(f"the store cannot be reached: {e}") from None
    finally:
        store.close()
    print(
        "store marked as reset: every replica refuses tokens minted before now until they "
        "expire (see its store_reset log line)"
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    settings, warnings = load_checked(path, port=args.port)
    try:
        warnings += durability_problems(settings.store.url)
    except StoreUnavailable:
        print("note: store not reachable: its persistence was not checked", file=sys.stderr)
    if args.port is None and (clash := metrics_port_problem(settings, DEFAULT_PORT)):
        # Only a warning: serve may well be given another --port.
        warnings.append(f"{clash} (serve's default --port; check with --port PORT)")
    if settings.store.url.startswith("memory:") and default_workers() > 1:
        warnings.append(_memory_store_problem(default_workers()))
    all_warnings = [*config_warnings(settings), *warnings]
    for warning in all_warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.strict and all_warnings:
        print(
            f"{path}: {len(all_warnings)} warning(s), and --strict fails on warnings",
            file=sys.stderr,
        )
        return EXIT_WARNINGS
    print(
        f"{path}: ok ({len(settings.upstreams)} upstreams, {len(settings.clients)} clients, "
        f"{len(settings.apis)} APIs)"
    )
    return 0


def metrics_port_problem(settings: Settings, port: int) -> str | None:
    """``[metrics] port`` must not be serve's ``--port``: /metrics listens on a port of its own."""
    if settings.metrics.port is None or settings.metrics.port != port:
        return None
    return (
        f"metrics.port: {port} is also the port serve listens on (--port); /metrics is served "
        "on a port of its own: give one of them another port"
    )


def cmd_config_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema_text())
    return 0


# -- serving ------------------------------------------------------------------------------------


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse, in one message naming ``what``, a port something else already listens on.

    granian binds with SO_REUSEPORT, so a second ``serve`` on a busy port would not fail: it
    would share the port and the kernel would split requests between the old and the new
    process. A plain socket *without* SO_REUSEPORT cannot bind a port another socket listens
    on, so this probe sees it. It is a check, not a lock: another process can still take the
    port between this probe and the server's own bind (a race of a few milliseconds at start);
    closing that would need handing this very socket to the server, which granian does not take.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR (not REUSEPORT): a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise CliError(
                f"cannot listen on {host}:{port} ({what}): {e.strerror or e}; "
                "is another token-exchange (or something else) running there?"
            ) from None


def cmd_dev(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from .devmode import ENV_CLIENT_SECRET, create_dev_app, dev_secrets, walkthrough

    if args.print_config:
        return _print_serve_config(args)
    for option in ("serve_port", "serve_keys_dir"):
        if getattr(args, option) is not None:
            raise CliError(f"--{option.replace('_', '-')} goes with --print-config")
    check_port_free("127.0.0.1", args.port, "--port")
    _check_tracing_variables()
    logs.configure()
    permissions_token, client_secret = dev_secrets(os.environ)
    app = create_dev_app(
        args.port,
        algorithm=args.alg,
        countries_api_url=args.countries_api,
        permissions_token=permissions_token,
        client_secret=client_secret,
    )
    banner = walkthrough(
        f"http://127.0.0.1:{args.port}",
        # A secret the user chose is not echoed: the shell they started dev from has it.
        client_secret=f"${ENV_CLIENT_SECRET}"
        if client_secret
        else app.extensions["dev_client_secret"],
        countries_api_url=args.countries_api,
    )
    print(banner, flush=True)
    # SIGTERM (`kill`) ends dev as Ctrl-C does: through the exit handlers, which export the
    # spans it still holds when tracing is on.
    signal.signal(signal.SIGTERM, _interrupted)
    # Threaded: the demo permissions API is served by this same process.
    run_simple("127.0.0.1", args.port, app, threaded=True)
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_serve_config(args: argparse.Namespace) -> int:
    """``dev --print-config``: the config on stdout (so that ``> file`` keeps it whole), and a
    warning on stderr for each shared secret this shell has not exported."""
    from .devmode import (
        DEFAULT_SERVE_KEYS_DIR,
        DEFAULT_SERVE_PORT,
        ENV_CLIENT_SECRET,
        ENV_PERMISSIONS_TOKEN,
        serve_config,
    )

    serve_port = DEFAULT_SERVE_PORT if args.serve_port is None else args.serve_port
    if not 0 < serve_port < 65536 or serve_port == args.port:
        raise CliError(f"--serve-port {serve_port}: give a free port other than --port")
    print(
        serve_config(
            args.port,
            serve_port=serve_port,
            keys_dir=args.serve_keys_dir or DEFAULT_SERVE_KEYS_DIR,
            algorithm=args.alg,
        ),
        end="",
    )
    for name in (ENV_PERMISSIONS_TOKEN, ENV_CLIENT_SECRET):
        if not os.environ.get(name):
            print(
                f"warning: {name} is not set: export it before starting dev and serve "
                "(see the comments at the top of the config)",
                file=sys.stderr,
            )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    # Validate before forking workers, so a bad config stops here with one clear message.
    settings, warnings = load_checked(path, port=args.port)
    logs.configure()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _log_durability(settings.store.url)
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    _check_store(settings, args.workers)
    check_port_free(args.host, args.port, "--port")
    if settings.metrics.port is not None:
        check_port_free(settings.metrics.host, settings.metrics.port, "[metrics] port")
    # Each worker builds its own app from this, after the fork: no threads or sockets shared.
    os.environ[ENV_CONFIG] = str(path.resolve())
    pin = affinity.should_pin(settings.server.cpu_affinity, args.workers, affinity.usable_cpus())
    with _metrics_directory(), affinity.claims_directory(pin):
        if settings.metrics.port is not None:
            _serve_metrics(settings.metrics.port, settings.metrics.host, settings.signing.keys_dir)
        _run_server(args, settings)
    return 0


def _log_durability(url: str) -> None:
    """Warn at start-up of a Redis that can lose revocations (``store.durability_problems``)."""
    try:
        problems = durability_problems(url)
    except StoreUnavailable:
        logs.event(log, "store_durability_unchecked", level=logging.WARNING, reason="unreachable")
        return
    for problem in problems:
        logs.event(log, "store_not_durable", level=logging.WARNING, problem=problem)


def _memory_store_problem(workers: int) -> str:
    return (
        f"store.url is memory:// and serve would run {workers} workers: each worker would keep "
        "its own revocations, DPoP proof and client assertion replay markers and rate-limit "
        "counters, so a revoked token would stay active in the others. Start it with "
        "--workers 1, or use a store the workers share: the default SQLite file (remove "
        "[store] url, or set sqlite:///path/to/store.db) on one machine, Redis for several"
    )


def _check_store(settings: Settings, workers: int) -> None:
    """Refuse a store the workers would not share; create the SQLite file before they fork
    (one message for an unwritable path, instead of a 503 from every worker)."""
    scheme = settings.store.url.partition(":")[0]
    if scheme == "memory" and workers > 1:
        raise CliError(_memory_store_problem(workers))
    if scheme == "sqlite":
        from ..sources.sqlite_store import path_of, prepare

        path = path_of(settings.store.url)
        try:
            prepare(path)
        except StoreUnavailable as e:
            raise CliError(
                f"cannot open the store {path}: {e}; give serve a writable directory there, "
                "or set [store] url (sqlite:///path/to/store.db, or redis://...)"
            ) from None


#: The names prometheus_client's multiprocess mode gives its files (``<type>_<pid>.db``).
_METRICS_FILE_PREFIXES = ("counter_", "gauge_", "histogram_", "summary_")


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """Where every worker writes its metrics, so that a scrape sees all of them."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        # Left over from an earlier run: prometheus_client's own files only (the directory may
        # be a volume shared with other files, the SQLite store among them).
        for stale in Path(given).glob("*.db"):
            if stale.name.startswith(_METRICS_FILE_PREFIXES):
                stale.unlink(missing_ok=True)
        yield
        return
    try:
        directory = tempfile.mkdtemp(prefix="token-exchange-metrics-")
    except OSError as e:
        raise CliError(
            f"no writable temporary directory for the workers' metrics ({e}); mount one at /tmp "
            "(docker run --tmpfs /tmp) or set PROMETHEUS_MULTIPROC_DIR"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _serve_metrics(port: int, host: str, keys_dir: Path) -> None:
    """/metrics on its own port, from this (the master) process, for every worker."""
    from prometheus_client import start_http_server

    from ..obs.metrics import Metrics, SigningKeyCollector, scrape_registry
    from ..sources.keys import DirectoryKeyStore

    registry = scrape_registry(Metrics(), [SigningKeyCollector(DirectoryKeyStore(keys_dir))])
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as e:  # taken between the check above and now
        problem = e.strerror or e
        raise CliError(f"cannot listen on {host}:{port} ([metrics] port): {problem}") from None


def _run_server(args: argparse.Namespace, settings: Settings) -> None:
    # Threads wait on I/O without holding the CPU; the bulkheads bound how many a dependency
    # can hold, and the load shedder answers past max_in_flight with the spare ones.
    threads = serving_threads(settings)
    if args.server == "granian":
        _run_granian(args.host, args.port, args.workers, threads)
    else:
        _Gunicorn(
            {
                "bind": f"{args.host}:{args.port}",
                "workers": args.workers,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": 30,
                "graceful_timeout": 25,
                "keepalive": 5,
                "accesslog": None,
                "errorlog": "-",
                "logconfig_dict": logs.server_dictconfig(),
            }
        ).run()


def _run_granian(host: str, port: int, workers: int, threads: int) -> None:
    """granian (a Rust HTTP server) running the WSGI app; settings chosen in bench/README.md."""
    from granian import Granian
    from granian.constants import Interfaces, RuntimeModes

    server = Granian(
        "token_exchange.serve.wsgi:application",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        # Threads per worker: a request waiting on a slow dependency holds only its own.
        blocking_threads=threads,
        runtime_mode=RuntimeModes.st,
        log_access=False,
        log_dictconfig=logs.server_dictconfig(),
        respawn_failed_workers=True,
        workers_kill_timeout=25,
    )
    try:
        server.serve()
    except RuntimeError as e:
        # granian reports a failed bind (taken since check_port_free looked) as a RuntimeError
        # "Address already in use (os error 98)" with a Rust backtrace: one line instead.
        found = _OS_ERROR.search(str(e).partition("\n")[0])
        if found is None or int(found.group(1)) not in _BIND_ERRORS:
            raise
        why = os.strerror(int(found.group(1)))
        raise CliError(
            f"cannot listen on {host}:{port} (--port): {why}; is another token-exchange (or "
            "something else) running there?"
        ) from None


#: How granian (Rust's std::io::Error) ends the message of an operating-system error.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn with our app factory; each worker builds its own app after the fork."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from ..serve import wsgi

        return wsgi.application()


# -- keys ---------------------------------------------------------------------------------------

RETIRE_HINT = (
    "a key id that starts with '-' goes after '--', last (keys retire --keys-dir DIR -- -KID), "
    "or in --kid (--kid -KID)"
)
# An RFC 7638 SHA-256 thumbprint: 43 base64url characters. No option of ours looks like one.
_KID_SHAPE = re.compile(r"-[A-Za-z0-9_-]{42}")


class _KeysParser(argparse.ArgumentParser):
    """The parser of a ``keys`` action; for ``retire`` (``takes_kid``), a kid that starts with
    ``-`` (about one in 64) is still a kid, and argparse's errors say how to pass one."""

    takes_kid = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.takes_kid and args is not None:
            args = _kid_arguments(list(args))
        parsed, extras = super().parse_known_args(args, namespace)
        if self.takes_kid and extras:
            # Here rather than in the top-level parser, so that the message carries the hint.
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        if self.takes_kid:
            message = f"{message}\n{RETIRE_HINT}"
        super().error(message)


def _kid_arguments(args: list[str]) -> list[str]:
    """``--kid VALUE`` as ``--kid=VALUE``, and a bare thumbprint-shaped ``-...`` as a kid."""
    result: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            result.extend(args[i:])
            break
        if arg == "--kid" and i + 1 < len(args):
            result.append(f"--kid={args[i + 1]}")
            i += 2
            continue
        result.append(f"--kid={arg}" if _KID_SHAPE.fullmatch(arg) else arg)
        i += 1
    return result


def _signing_settings(args: argparse.Namespace, *, needed: bool) -> SigningSettings | None:
    """The [signing] section of ``--config``, or of $TOKEN_EXCHANGE_CONFIG when ``needed`` (a
    value is missing that only the config can give). Other sections may need secrets this job
    does not have: [signing] alone is enough."""
    path = args.config or (os.environ.get(ENV_CONFIG) if needed else None)
    if not path:
        return None
    try:
        return load_settings(path).signing
    except ConfigError as e:
        if e.signing is None:
            raise CliError(str(e)) from None
        return e.signing


def _keys_dir(args: argparse.Namespace, signing: SigningSettings | None) -> Path:
    if args.keys_dir is not None:
        return Path(args.keys_dir)
    if signing is None:
        raise CliError(
            f"which key directory? Pass --keys-dir DIR, or --config PATH (or set {ENV_CONFIG}) "
            "to use its signing.keys_dir"
        )
    return signing.keys_dir


def cmd_keys_generate(args: argparse.Namespace) -> int:
    signing = _signing_settings(args, needed=args.keys_dir is None or args.alg is None)
    keys_dir = _keys_dir(args, signing)
    args.alg = args.alg or (signing.algorithm if signing else "ES256")
    _check_rsa_bits(args)
    try:
        key = generate(keys_dir, args.alg, now=time.time(), rsa_bits=args.rsa_bits)
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot write to {keys_dir}: {e.strerror}") from None
    print(f"created {args.alg} key {key.kid} in {keys_dir} (signs from now)")
    return 0


def _check_rsa_bits(args: argparse.Namespace) -> None:
    if args.alg in ("RS256", "PS256") and args.rsa_bits < MIN_RSA_BITS:
        raise CliError(f"--rsa-bits must be at least {MIN_RSA_BITS}")


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    missing = args.keys_dir is None or args.token_ttl is None or args.jwks_max_age is None
    signing = _signing_settings(args, needed=missing)
    keys_dir = _keys_dir(args, signing)
    if signing is None and (args.token_ttl is None or args.jwks_max_age is None):
        # Guessing would withdraw the old key while tokens it signed are still valid.
        raise CliError(
            "rotate needs the service's token lifetime and JWKS max-age: pass --config PATH, "
            "or both --token-ttl and --jwks-max-age"
        )
    try:
        current = select_signing_key(load_keys(keys_dir)[0], time.time())
    except KeyStoreError:
        current = None
    args.alg = (
        args.alg
        or (signing.algorithm if signing else None)
        or (current.alg if current else "ES256")
    )
    _check_rsa_bits(args)
    defaults = signing or SigningSettings()  # only reached with both values given
    token_ttl = args.token_ttl if args.token_ttl is not None else defaults.token_ttl
    max_age = args.jwks_max_age if args.jwks_max_age is not None else defaults.jwks_max_age
    delay = args.delay if args.delay is not None else max_age + ROTATION_MARGIN
    if token_ttl < 1 or max_age < 0:
        raise CliError("--token-ttl must be positive and --jwks-max-age not negative")
    if delay < max_age:
        print(
            f"warning: --delay {delay:g} is shorter than the JWKS max-age ({max_age}): "
            "verifiers holding a cached JWKS may refuse the new key's tokens for a while",
            file=sys.stderr,
        )
    try:
        key, replaced = rotate(
            keys_dir, args.alg, now=time.time(), delay=delay, token_ttl=token_ttl,
            jwks_max_age=max_age, rsa_bits=args.rsa_bits,
        )  # fmt: skip
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    print(f"published {key.alg} key {key.kid}; it signs from {display_time(key.activate_at)}")
    for old in replaced:
        print(
            f"key {old.kid} stops signing at {display_time(old.deactivate_at)} (draining) and "
            f"is withdrawn at {display_time(old.withdraw_at)}"
        )
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    if args.kid and args.kid_option and args.kid != args.kid_option:
        raise CliError(f"two different key ids: {args.kid} and --kid {args.kid_option}")
    kid = args.kid or args.kid_option
    if not kid:
        raise CliError(f"name the key to retire: keys retire KID ({RETIRE_HINT})")
    keys_dir = _keys_dir(args, _signing_settings(args, needed=args.keys_dir is None))
    try:
        key = retire(keys_dir, kid, now=time.time(), force=args.force)
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    print(
        f"warning: key {key.kid} is withdrawn now. Tokens it signed that are still in flight "
        "will be refused by every verifier that refetches our JWKS; their holders must "
        "exchange again.",
        file=sys.stderr,
    )
    print(f"retired {key.kid}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys_dir = _keys_dir(args, _signing_settings(args, needed=args.keys_dir is None))
    try:
        keys, warnings = load_keys(keys_dir)
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    now = time.time()
    print(f"now: {display_time(now)}")
    names = ("PUBLISH_AT", "ACTIVATE_AT", "DEACTIVATE_AT", "WITHDRAW_AT")
    print(f"{'KID':43}  {'ALG':6}  {'STATE':9}  " + "  ".join(f"{n:20}" for n in names).rstrip())
    for key in sorted(keys, key=lambda k: k.activate_at):
        times = (key.publish_at, key.activate_at, key.deactivate_at, key.withdraw_at)
        print(
            f"{key.kid:43}  {key.alg:6}  {key.state(now):9}  "
            + "  ".join(f"{display_time(t):20}" for t in times).rstrip()
        )
    print("\nstates:")
    for state, meaning in STATES.items():
        print(f"  {state:9}  {meaning}")
    print(
        "times (UTC): PUBLISH_AT enters the JWKS, ACTIVATE_AT starts signing, DEACTIVATE_AT "
        "stops signing, WITHDRAW_AT leaves the JWKS"
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
