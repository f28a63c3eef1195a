"""Celery workers as separate processes, for tests that need real process boundaries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

from polaris_celery.testing import celery_worker

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def worker_process(app_module: str, env: dict[str, str], **kw: Any) -> Iterator[Popen[bytes]]:
    """`celery -A app_module worker` run from the repository, ready when the block starts."""
    with celery_worker(app_module, env, cwd=str(REPO), **kw) as proc:
        yield proc
