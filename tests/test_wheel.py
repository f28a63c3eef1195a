"""The package as a user installs it: build the wheel, install it alone, run the cab ride.

`make test` installs the package with its test extras, which pull in `packaging`; a plain
`pip install polaris-celery` did not, so kombu's Redis transport crashed every worker at start
and no test could see it. Here the sdist and wheel are built with `python -m build` from a copy
of the sources, the wheel is installed into a fresh venv with no extra, and a Celery worker
started from that venv (against a private redis-server) runs the cab ride to its end, driven by
a producer from the same venv. The Lua scripts, py.typed and the license must be in the wheel.

Dependencies come from PyPI once, into a wheelhouse kept in the test venv (`sys.prefix`), so
later runs install offline in seconds; `make clean` drops it with the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from polaris_celery.testing import RedisServer

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
#: What the build needs, and all the Dockerfile copies before its `pip install`.
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "polaris_celery"]

PRODUCER = '''\
"""Plays the cab ride as its producers would, from the clean venv."""
import json
import sys

import polaris_celery as pc
from worker import executor
from worker.cab_ride import (ArrivedAtDestination, CabbieArrived, PaymentMade, RideEnded,
                             RideRequested, cabbie_for)

ride = sys.argv[1]
deltas = [RideRequested(user_id="u1", source="Gare", dest="Orly"),
          CabbieArrived(cabbie_id=cabbie_for("u1")), ArrivedAtDestination(distance_km=10),
          PaymentMade(user_id="u1", amount=100)]
results = [executor.submit_delta("cab-ride", ride, d).wait(timeout=60) for d in deltas]
ended = results[-1].get(RideEnded)
print(json.dumps({"library": pc.__file__, "completed": [r.completed for r in results],
                  "ended": ended.model_dump() if ended else None}))
'''


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def build(tmp: Path) -> tuple[Path, Path]:
    """sdist and wheel built from a copy of the sources (the build writes egg-info beside them)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)])
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    return sdist, wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv holding the wheel and its plain dependencies, nothing else."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    offline = [*PIP, "--python", str(python), "install", "-q", "--no-compile", "--no-index",
               "--find-links", str(WHEELHOUSE), str(wheel)]
    if subprocess.run(offline, capture_output=True).returncode != 0:
        run([*PIP, "wheel", "-q", "--wheel-dir", str(WHEELHOUSE), str(wheel)])  # from PyPI, once
        for own in WHEELHOUSE.glob("polaris_celery-*"):  # only dependencies are kept
            own.unlink()
        run(offline)
    return python


@contextmanager
def worker(venv: Path, app_dir: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    """`celery -A worker worker` from the venv, in a session of its own; yields its pid."""
    cmd = [str(venv / "bin" / "celery"), "-A", "worker", "worker", "--pool", "prefork",
           "-c", "2", "-n", "wheel@%h", "-l", "info", "--without-gossip", "--without-mingle"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the worker from the wheel did not start:\n" + log.read_text()[-4000:])
            time.sleep(0.1)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_the_wheel_alone_runs_the_cab_ride_on_a_worker(tmp_path: Path) -> None:
    sdist, wheel = build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("polaris_celery/stores/cas.lua", "polaris_celery/stores/begin.lua",
                 "polaris_celery/py.typed"):
        assert must in names, f"{must} is missing from the wheel: {names}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("polaris_celery/stores/cas.lua") for n in tar.getnames())
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: celery[redis]" in metadata, metadata
    assert "Provides-Extra: flower" in metadata and "License-Expression: Apache-2.0" in metadata

    python = install(wheel, tmp_path / "venv")
    for extra in ("pytest", "flower", "fastapi"):  # no test extra came along
        probe = subprocess.run([str(python), "-c", f"import {extra}"], capture_output=True)
        assert probe.returncode != 0, f"{extra} is importable in the clean venv"

    app_dir = tmp_path / "app"
    shutil.copytree(ROOT / "worker", app_dir / "worker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (app_dir / "ride.py").write_text(PRODUCER)
    with RedisServer() as redis:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "POLARIS_"))}
        base = f"redis://127.0.0.1:{redis.port}"
        env.update(POLARIS_REDIS_URL=f"{base}/0",
                   POLARIS_BROKER_URL=f"{base}/1",
                   POLARIS_CAB_RIDE_WORK="0", PYTHONDONTWRITEBYTECODE="1")
        with worker(tmp_path / "venv", app_dir, env, tmp_path / "worker.log"):
            done = run([str(python), "ride.py", "ride-wheel-1"], cwd=app_dir, env=env,
                       timeout=300)
        log = (tmp_path / "worker.log").read_text()
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["library"]).is_relative_to(tmp_path / "venv"), out  # not the source tree
    assert out["completed"] == [False, False, False, True], out
    assert out["ended"] == {"ride_id": "ride-wheel-1", "receipt": "rcpt-ride-wheel-1-100.00",
                            "fare": 15.5}, out
    assert "polaris.cab-ride.MatchCabbie" in log and "Traceback" not in log, log[-4000:]
