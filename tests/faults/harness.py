"""Real parts for the fault tests: private redis-servers and `celery worker` processes (from the
shared launchers in `polaris_celery.testing`), and a TCP proxy that loses replies.

Every process here is started in a session of its own and ended by its pid or process group
(which contains only what it started), never by name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polaris_celery.testing import RedisServer, WorkerProcess, free_port

from . import app as fapp
from .invariants import Checker

REPO = Path(__file__).resolve().parents[2]


class Worker(WorkerProcess):
    """One `celery -A tests.faults.app worker` process group, its log kept in the test's
    directory (and printed when the test fails); node names count its restarts."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, pool: str = "prefork",
                 concurrency: int = 2) -> None:
        super().__init__("tests.faults.app", env, name=name, node="{name}-{generation}@faults",
                         pool=pool, concurrency=concurrency, cwd=REPO,
                         log_path=log_dir / f"worker-{name}.log", inherit_env=False)


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
