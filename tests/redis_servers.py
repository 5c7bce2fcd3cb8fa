"""Real Redis servers for the tests: one node, or a three-master cluster, on free ports.

Never the shared default port 6379. Each server keeps nothing on disk but its cluster state,
in a temporary directory, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from token_exchange.sources.epoch import EPOCH_KEY, MARKER_TTL, Epoch
from token_exchange.sources.store import PREFIX

from .helpers import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20_000, 55_000)  # noqa: S311 - a port, not a secret
        if all(_is_free(p) for p in (port, port + 10_000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisProcess:
    """``redis-server`` on 127.0.0.1:``port``; can be killed and started again on that port."""

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        # A cluster node also listens on port + 10000 (its cluster bus).
        self.port = cluster_port() if cluster else free_port()
        self.directory = directory
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def flush(self, *, in_service: bool = True) -> None:
        """Empty the server; ``in_service``: then give it the epoch marker of a store that has
        been in use for a day (epoch.py), so the services of a test do not start with an
        empty store, which they cannot tell from one that has just lost its data."""
        client = redis.Redis(port=self.port)
        try:
            client.flushall()
            if in_service:
                write_old_epoch(client)
        finally:
            client.close()


def write_old_epoch(client: redis.Redis | redis.RedisCluster) -> None:
    old = Epoch("in-service-for-a-day", time.time() - 86400)
    client.set(PREFIX + EPOCH_KEY, old.encode(), px=MARKER_TTL * 1000, nx=True)


class RedisClusterProcesses:
    """Three masters joined with ``redis-cli --cluster create``."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisProcess(directory, cluster=True) for _ in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        client = redis.Redis(port=self.nodes[0].port)
        deadline = time.monotonic() + 20
        try:
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise TimeoutError("cluster did not become ok")
                time.sleep(0.1)
        finally:
            client.close()
        cluster = redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)
        try:
            write_old_epoch(cluster)
        finally:
            cluster.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
