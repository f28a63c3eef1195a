"""A private Redis Cluster of `RedisServer` processes, for the cluster tests and benchmarks."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis

from ..errors import ConfigurationError
from .servers import RedisServer, free_port

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
