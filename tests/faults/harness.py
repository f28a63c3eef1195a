"""Real parts for the fault tests: private redis-servers, `celery worker` processes, a TCP proxy.

Every process here is started by this module in a session of its own and ended by its pid or
process group (which contains only what it started), never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polaris_celery.devserver import RedisServer, free_port

from . import app as fapp
from .invariants import Checker

REPO = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil on a fresh machine)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Worker:
    """One `celery -A tests.faults.app worker` process group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, pool: str = "prefork",
                 concurrency: int = 2) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"worker-{name}.log"
        self.pool = pool
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def start(self) -> Worker:
        self.generation += 1
        node = f"{self.name}-{self.generation}@faults"
        cmd = [sys.executable, "-m", "celery", "-A", "tests.faults.app", "worker",
               "-P", self.pool, "-c", str(self.concurrency), "-n", node, "-l", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        log.write(f"\n===== start {node} =====\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready_since_start(self.log_path.read_bytes()):
                return
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited at start:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} not ready within {timeout}s:\n{self.tail()}")

    def _ready_since_start(self, text: bytes) -> bool:
        marker = f"===== start {self.name}-{self.generation}@faults =====".encode()
        return b" ready." in text[text.rfind(marker):]

    def children(self) -> list[int]:
        return children_of(self.pid) if self.alive() else []

    def kill_child(self, rng: random.Random) -> int | None:
        """SIGKILL one prefork child (the pool replaces it); returns its pid."""
        kids = self.children()
        if not kids:
            return None
        victim = rng.choice(kids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children, as a lost machine."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0


class Cluster:
    """One test's world: a durable private redis-server for the store (db 0) and the broker
    (db 1; with `separate_broker` on a server of its own), another for the builders' side
    effects (db 2); workers; producer-side executors."""

    def __init__(self, tmp: Path, *, separate_broker: bool = False) -> None:
        self.tmp = tmp
        self.servers: list[RedisServer] = []
        self.workers: list[Worker] = []
        self.store = self._server()
        # Builders' side effects go to a server of their own, which no test restarts.
        self.side = self._server()
        self.broker = self._server() if separate_broker else self.store
        self.store_url = f"redis://127.0.0.1:{self.store.port}/0"
        self.broker_url = f"redis://127.0.0.1:{self.broker.port}/1"
        self.fx_url = f"redis://127.0.0.1:{self.side.port}/2"
        self.checker = Checker(self.store_url, self.fx_url)
        self._executors: list[Any] = []

    def _server(self) -> RedisServer:
        d = self.tmp / f"redis-{len(self.servers)}"
        d.mkdir()
        server = RedisServer(appendonly=True, directory=str(d)).start()
        self.servers.append(server)
        return server

    def env(self, store_url: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLARIS_")}
        env.update({
            "POLARIS_REDIS_URL": store_url or self.store_url,
            "POLARIS_BROKER_URL": self.broker_url,
            "POLARIS_FX_URL": self.fx_url,
            "POLARIS_RECONCILE_INTERVAL": "0.5",
            "POLARIS_DISPATCH_TIMEOUT": "3",
            "POLARIS_LEASE_GRACE": "1",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def workers_up(self, n: int, *, pool: str = "prefork", concurrency: int = 2,
                   prefix: str = "w", store_url: str | None = None,
                   **extra: str) -> list[Worker]:
        """Start `n` workers at once and wait until each is ready."""
        started = [Worker(f"{prefix}{len(self.workers) + i}",
                          self.env(store_url, **extra), self.tmp, pool=pool,
                          concurrency=concurrency).start() for i in range(n)]
        self.workers += started
        for w in started:
            w.wait_ready()
        return started

    def executor(self, store_url: str | None = None, **settings: Any) -> Any:
        """A producer-side CeleryExecutor (no reconciler thread: only workers run it)."""
        merged = {"reconcile_interval": 0.5, "dispatch_timeout": 3.0, "lease_grace": 1.0}
        merged.update(settings)
        ex = fapp.make_executor(store_url or self.store_url, self.broker_url,
                                reconciler=False, **merged)
        self._executors.append(ex)
        return ex

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.tail()}" for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for ex in self._executors:
            with contextlib.suppress(Exception):
                ex.registry.store.close()
        self.checker.close()
        for s in self.servers:
            s.cleanup()


class LossyProxy:
    """A TCP proxy in front of a Redis server that can lose replies.

    `arm(predicate)`: the next request for which predicate(bytes) holds is forwarded to Redis
    (which executes it), and then the client's connection is closed before the reply comes back,
    as a network blip or a server crash right after executing would do.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._armed: list[Callable[[bytes], bool]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._socks: list[socket.socket] = []
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def arm(self, predicate: Callable[[bytes], bool]) -> None:
        with self._lock:
            self._armed.append(predicate)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, server]
            doomed = threading.Event()
            threading.Thread(target=self._up, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, doomed),
                             daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    for pred in self._armed:
                        if pred(data):
                            self._armed.remove(pred)
                            doomed.set()
                            break
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _down(self, server: socket.socket, client: socket.socket,
              doomed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if doomed.is_set():
                    self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            self._close(*self._socks)
