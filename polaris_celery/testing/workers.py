"""`celery worker` processes started and ended by pid: the one launcher that `make demo`, the
fault tests and the benchmarks share.

Each worker runs in a session of its own, so ending its process group ends only what this module
started (the worker and its pool children), never anything found by name. Its output goes to a
log file, which says when it is ready and what happened to it (the fault tests count lines).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import ConfigurationError


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


class WorkerProcess:
    """One `celery -A app_module worker` process group, which can be started again (each start
    is a new generation, with a marker line in the log).

    env: the worker's environment, over this process's own (`inherit_env=False`: exactly env).
    node: the node name; `{name}` and `{generation}` are filled in.
    log_path: where its output goes (default: a temporary file, removed by `stop()`).
    """

    def __init__(self, app_module: str, env: Mapping[str, str] | None = None, *,
                 name: str = "w1", node: str = "{name}@%h", pool: str = "prefork",
                 concurrency: int = 2, loglevel: str = "INFO",
                 queues: Sequence[str] = (), extra: Sequence[str] = (),
                 cwd: str | Path | None = None, log_path: str | Path | None = None,
                 inherit_env: bool = True) -> None:
        self.app_module = app_module
        self.env = {**(os.environ if inherit_env else {}), **(env or {})}
        self.name = name
        self.node_template = node
        self.pool = pool
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.queues = list(queues)
        self.extra = list(extra)
        self.cwd = str(cwd) if cwd is not None else None
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"polaris-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    @property
    def node(self) -> str:
        return self.node_template.format(name=self.name, generation=self.generation)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "celery", "-A", self.app_module, "worker", "--pool",
               self.pool, "-c", str(self.concurrency), "-n", self.node, "-l", self.loglevel,
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        return cmd + self.extra

    def start(self) -> WorkerProcess:
        self.generation += 1
        with open(self.log_path, "ab") as log:
            log.write(self._marker())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def _marker(self) -> bytes:
        return f"\n===== start {self.name} generation {self.generation} =====\n".encode()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ConfigurationError(f"worker {self.name} was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0, app: Any = None) -> WorkerProcess:
        """Until the worker says it is ready in its log (at log level INFO or lower), or, with
        a Celery `app`, until it answers a ping through the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ConfigurationError(f"celery worker {self.name} exited at start:\n"
                                         f"{self.tail()}")
            if app is not None:
                replies = app.control.ping(destination=[self.node], timeout=0.5) or []
                if any(self.node in r for r in replies):
                    return self
            else:
                text = self.log_path.read_bytes()
                if b" ready." in text[text.rfind(self._marker()):]:
                    return self
                time.sleep(0.1)
        raise ConfigurationError(f"celery worker {self.name} not ready within {timeout}s:\n"
                                 f"{self.tail()}")

    def children(self) -> list[int]:
        return children_of(self.pid) if self.alive() else []

    def kill_child(self, rng: random.Random) -> int | None:
        """SIGKILL one pool child (the pool replaces it); returns its pid."""
        kids = self.children()
        if not kids:
            return None
        victim = rng.choice(kids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def kill(self) -> None:
        """SIGKILL the whole worker, main process and pool children, as a lost machine."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a warm shutdown), then SIGKILL of its group if it lingers; removes a log of
        its own. Returns the worker's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Pool children of a killed worker may outlive it: end the group this started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.returncode
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return code

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def count(self, needle: str) -> int:
        """How often `needle` occurs in its log (all generations)."""
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def __enter__(self) -> WorkerProcess:
        if self.proc is None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def celery_worker(app_module: str, env: Mapping[str, str], *, name: str = "w1",
                  pool: str = "prefork", concurrency: int = 2, loglevel: str = "info",
                  extra: Sequence[str] = (), cwd: str | None = None,
                  ready_timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run `celery -A app_module worker` until the block ends, ready when the block starts."""
    worker = WorkerProcess(app_module, env, name=name, pool=pool, concurrency=concurrency,
                           loglevel=loglevel, extra=extra, cwd=cwd).start()
    try:
        worker.wait_ready(ready_timeout)
        assert worker.proc is not None
        yield worker.proc
    finally:
        worker.stop()
