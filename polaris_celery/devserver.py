"""Private `redis-server` processes (alone or as a `RedisCluster`) and `celery worker`
processes, for `make demo`, the tests and benchmarks.

A private server listens on a free loopback port in a directory of its own, so it never touches
the machine's Redis; it is ended by the pid this module started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from .errors import ConfigurationError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on 127.0.0.1:<port>.

    `appendonly=True` makes it durable (AOF, fsync always) so a test can kill and restart it and
    find its data; `restart()` keeps the port and directory.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False,
                 directory: str | None = None, extra: list[str] | None = None,
                 tls: tuple[str, str] | None = None, config_file: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigurationError("redis-server is not installed (Debian: apt-get install "
                                     "redis-server)")
        self.exe = exe
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="polaris-redis-")
        self.extra = extra or []
        self.tls = tls  # (certificate, key): serve TLS only, on `port`
        # A config file of its own (empty, then rewritten by the server): what a Sentinel
        # (`extra=["--sentinel", ...]`) needs.
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> RedisServer:
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", cert,
                     "--tls-auth-clients", "no"]
        config: list[str] = []
        if self.config_file:
            path = Path(self.directory) / "redis.conf"
            path.touch()
            config = [str(path)]
        args = [
            self.exe, *config, *ports, "--bind", "127.0.0.1", "--dir", self.directory,
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(Path(self.directory) / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigurationError(f"redis-server exited at start; see "
                                         f"{self.directory}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
                    s = raw
                    if self.tls:
                        ctx = ssl.create_default_context(cafile=self.tls[0])
                        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"redis-server did not answer on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """End it abruptly (SIGKILL), as a crash would."""
        self.stop(signal.SIGKILL)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


@contextlib.contextmanager
def celery_worker(
    app_module: str,
    env: dict[str, str],
    *,
    name: str = "w1",
    pool: str = "prefork",
    concurrency: int = 2,
    loglevel: str = "info",
    extra: list[str] | None = None,
    cwd: str | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `celery -A app_module worker` until the block ends; wait until it says it is ready.

    It runs in a session of its own, so ending its process group ends only what this started.
    """
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        prefix=f"polaris-{name}-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool", pool,
           "-c", str(concurrency), "-n", f"{name}@%h", "-l", loglevel, "--without-gossip",
           "--without-mingle", *(extra or [])]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError(f"celery worker {name} did not start:\n"
                                         + Path(log.name).read_text()[-3000:])
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        os.unlink(log.name)


SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of `CLUSTER NODES`, as one node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica, the id of its primary
    slots: tuple[tuple[int, int], ...]  # inclusive ranges

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        port = int(f[1].split("@")[0].rsplit(":", 1)[1] or 0)
        ranges = [s.split("-") for s in f[8:] if not s.startswith("[")]
        views.append(ClusterNodeView(f[0], port, frozenset(f[2].split(",")),
                                     None if f[3] == "-" else f[3],
                                     tuple((int(r[0]), int(r[-1])) for r in ranges)))
    return views


class RedisCluster:
    """A private Redis Cluster: `primaries` x (1 + `replicas`) `RedisServer` processes on free
    ports, formed with `redis-cli --cluster create`; ended by pid like every server here.

    Roles are asked of the cluster at call time (`primaries()`, `replicas()`, `node_for_key()`),
    since a failover changes them. `node_timeout_ms` is short so that a failover takes seconds.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000,
                 appendonly: bool = False) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ConfigurationError("redis-cli is not installed (Debian: apt-get install "
                                     "redis-tools, which redis-server depends on)")
        self.cli = cli
        self.replicas_per_primary = replicas
        count = primaries * (1 + replicas)
        ports: set[int] = set()
        while len(ports) < 2 * count:  # a client port and a cluster-bus port for each node
            ports.add(free_port())
        pairs = list(zip(sorted(ports)[:count], sorted(ports)[count:], strict=True))
        self.nodes = [RedisServer(port, appendonly=appendonly, extra=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus),
            "--repl-diskless-sync-delay", "0"]) for port, bus in pairs]
        self.formed_in: float | None = None  # seconds from start() to a healthy cluster

    # -- processes ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisCluster:
        began = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            cmd = [self.cli, "--cluster", "create",
                   *(f"127.0.0.1:{n.port}" for n in self.nodes),
                   "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
            if done.returncode != 0:
                raise ConfigurationError(f"redis-cli --cluster create failed:\n{done.stdout}"
                                         f"{done.stderr}")
            self.wait_healthy(timeout - (time.monotonic() - began))
        except BaseException:
            self.cleanup()
            raise
        self.formed_in = time.monotonic() - began
        return self

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start() if not self.live() else self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    # -- asking the cluster ---------------------------------------------------------------

    def ask(self, node: RedisServer, *args: str | int) -> Any:
        """One command to one node (no redirections followed)."""
        with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2,
                         socket_connect_timeout=2, decode_responses=True) as client:
            return client.execute_command(*args)

    def view(self, node: RedisServer | None = None) -> list[ClusterNodeView]:
        """`CLUSTER NODES` as `node` (by default the first live node) sees it."""
        live = self.live()
        if node is None and not live:
            raise ConfigurationError("no node of the cluster is running")
        return _parse_cluster_nodes(self.ask(node or live[0], "CLUSTER", "NODES"))

    def _server(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def primaries(self) -> list[RedisServer]:
        """The working primaries that serve slots, in slot order."""
        views = sorted((v for v in self.view() if v.is_primary and v.slots and not v.failed),
                       key=lambda v: v.slots[0])
        return [self._server(v.port) for v in views]

    def replicas(self) -> list[RedisServer]:
        return [self._server(v.port) for v in self.view()
                if not v.is_primary and not v.failed]

    @property
    def url(self) -> str:
        """`redis+cluster://` naming the current primaries."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.primaries())

    def slot_of(self, key: str) -> int:
        live = self.live()
        if not live:
            raise ConfigurationError("no node of the cluster is running")
        return int(self.ask(live[0], "CLUSTER", "KEYSLOT", key))

    def node_for_key(self, key: str) -> RedisServer:
        """The server that serves `key`'s slot now (as the first live node sees it)."""
        slot = self.slot_of(key)
        for v in self.view():
            if v.is_primary and not v.failed and any(a <= slot <= b for a, b in v.slots):
                return self._server(v.port)
        raise ConfigurationError(f"no working primary serves slot {slot}")

    def _healthy(self) -> bool:
        live = {n.port for n in self.live()}
        pictures = set()
        for port in live:
            node = self._server(port)
            info = dict(line.split(":", 1) for line in
                        self.ask(node, "CLUSTER", "INFO").splitlines() if ":" in line)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            views = [v for v in self.view(node) if not v.failed]
            ports = {v.node_id: v.port for v in views}
            me = next(v for v in views if "myself" in v.flags)
            if not me.is_primary and self.ask(node, "INFO", "replication").get(
                    "master_link_status") != "up":
                return False
            picture = frozenset((v.port, v.is_primary, ports.get(v.master_id or ""), v.slots)
                                for v in views)
            served = [(v.port, v.slots) for v in views if v.is_primary]
            if ({v.port for v in views} != live or any(p not in live for p, _ in served)
                    or sum(b - a + 1 for _, ss in served for a, b in ss) != SLOTS):
                return False
            pictures.add(picture)
        return len(pictures) == 1  # every live node sees the same roles and slots

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, all slots are served by live primaries
        as every node agrees, and every live replica is linked to its primary."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, StopIteration):
                if self._healthy():
                    return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"redis cluster not healthy after {timeout:.0f}s; "
                                         f"logs under {self.nodes[0].directory}")
            time.sleep(0.05)

    def kill_primary_of(self, key: str, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the primary serving `key`; return once a replica serves it and the cluster is
        healthy again. Returns the killed server (restart it with `.start()`: it rejoins)."""
        victim = self.node_for_key(key)
        victim.kill()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, ConfigurationError):
                if self.node_for_key(key) is not victim:
                    break
            if time.monotonic() > deadline:
                raise ConfigurationError(f"no replica took over from port {victim.port} "
                                         f"within {timeout:.0f}s")
            time.sleep(0.05)
        self.wait_healthy(max(deadline - time.monotonic(), 1.0))
        return victim
