"""Celery workers as separate processes, for tests that need real process boundaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def worker_process(
    app_module: str,
    env: dict[str, str],
    *,
    name: str = "w1",
    pool: str = "prefork",
    concurrency: int = 2,
    extra: list[str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `celery -A app_module worker` and wait until it says it is ready; on exit end its
    whole process group (it was started in a session of its own, so only what we started)."""
    # Closed in the finally below; the worker writes to it for the test's whole duration.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix=f"polaris-{name}-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool", pool,
           "-c", str(concurrency), "-n", f"{name}@%h", "-l", "info", "--without-gossip",
           "--without-mingle", *(extra or [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n"
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
