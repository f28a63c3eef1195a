"""docker-compose.yml and the Dockerfile, proven without a Docker engine.

These machines have no Docker engine, so the file is parsed and each service's command line is
run for real here: the redis service's command (on a free port), its healthcheck, the worker and
Flower commands against that server, and the producer's shell script, which must drive a cab
ride to completion through the worker. The container network is mapped to loopback: `redis:6379`
becomes the private server's address and Flower's port a free one; nothing else is changed.

The process helpers below (start a command in its own session, wait for a log line, end it by
its process group) are shared with test_flower and test_cli.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomllib

from polaris_celery.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A command started in a session of its own, its output in a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, argv: Sequence[str]) -> None:
        self.popen = popen
        self.log = log
        self.argv = list(argv)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{shlex.join(self.argv)} did not log {needle!r} "
                    f"(exit code {self.popen.poll()}):\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """End the process group this test started (its pid is the group id)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        # Prefork children may outlive a parent killed by SIGKILL: end what is left of the group.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@contextmanager
def started(argv: Sequence[str], env: Mapping[str, str], log: Path, *,
            cwd: Path = ROOT) -> Iterator[Proc]:
    with log.open("wb") as out:
        popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    proc = Proc(popen, log, argv)
    try:
        yield proc
    finally:
        proc.stop()


def base_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this one minus POLARIS_*, the venv's bin on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POLARIS_", "FLOWER_", "CELERY_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return r
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        if proc is not None and proc.popen.poll() is not None:
            break
        time.sleep(0.2)
    tail = proc.text()[-3000:] if proc is not None else ""
    pytest.fail(f"{url} did not answer 200: {last}\n{tail}")


def wait_flower_sees_a_worker(port: int, timeout: float = 30.0) -> str:
    """Flower only shows tasks whose events it received: wait until a worker's events arrive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"http://127.0.0.1:{port}/api/workers", params={"status": "true"},
                      timeout=5)
        assert r.status_code == 200, f"Flower's API refused: HTTP {r.status_code} {r.text}"
        alive = [str(name) for name, up in r.json().items() if up]
        if alive:
            return alive[0]
        time.sleep(0.2)
    pytest.fail("Flower received no worker event")


# -- a YAML reader for the subset docker-compose.yml uses -----------------------------------


class MiniYaml:
    """Block maps and lists, plain and quoted scalars, JSON-style flow lists, `|` blocks and
    comments: enough for docker-compose.yml without a YAML dependency (PyYAML, when present,
    is used to check this reader)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    @staticmethod
    def _indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    def _skip(self) -> str | None:
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s and not s.startswith("#"):
                return self.lines[self.i]
            self.i += 1
        return None

    def parse(self) -> Any:
        line = self._skip()
        return None if line is None else self._block(self._indent(line))

    def _block(self, indent: int) -> Any:
        line = self._skip()
        assert line is not None
        if line.strip().startswith("- ") or line.strip() == "-":
            return self._seq(indent)
        return self._map(indent)

    def _map(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self._skip()) is not None and self._indent(line) >= indent:
            if self._indent(line) != indent:
                raise ValueError(f"line {self.i + 1}: unexpected indentation")
            m = re.fullmatch(r"([A-Za-z0-9_.-]+):(?:\s+(.*))?", line.strip())
            if m is None:
                raise ValueError(f"line {self.i + 1}: not a `key: value` line: {line!r}")
            self.i += 1
            out[m.group(1)] = self._value(m.group(2) or "", indent)
        return out

    def _seq(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while (line := self._skip()) is not None and self._indent(line) == indent \
                and line.strip().startswith("-"):
            self.i += 1
            out.append(self._value(line.strip()[1:].strip(), indent))
        return out

    def _value(self, rest: str, indent: int) -> Any:
        if rest in ("|", "|-"):
            return self._literal(indent, keep_newline=rest == "|")
        if rest:
            return self._scalar(rest)
        line = self._skip()
        if line is None or self._indent(line) <= indent:
            return None
        return self._block(self._indent(line))

    def _literal(self, indent: int, keep_newline: bool) -> str:
        body: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and self._indent(line) <= indent:
                break
            body.append(line)
            self.i += 1
        while body and not body[-1].strip():
            body.pop()
        cut = min(self._indent(b) for b in body if b.strip())
        text = "\n".join(b[cut:] for b in body)
        return text + "\n" if keep_newline else text

    @staticmethod
    def _scalar(s: str) -> Any:
        if s[0] in "[{\"":
            return json.loads(s)
        if s[0] == "'":
            return s[1:-1].replace("''", "'")
        s = re.sub(r"\s+#.*$", "", s)
        if s in ("true", "false"):
            return s == "true"
        if s in ("null", "~"):
            return None
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        return s


def load_compose() -> dict[str, Any]:
    text = COMPOSE.read_text()
    doc: dict[str, Any] = MiniYaml(text).parse()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return doc
    assert yaml.safe_load(text) == doc, "MiniYaml reads docker-compose.yml differently"
    return doc


def command_of(service: Mapping[str, Any]) -> list[str]:
    """The service's command as argv, with compose's `$$` escapes resolved. A lone `$` would be
    compose interpolation, which these tests do not emulate: refuse it."""
    cmd = service["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    for a in argv:
        assert not re.search(r"(?<!\$)\$(?!\$)", a.replace("$$", "")), \
            f"compose would interpolate {a!r}; escape $ as $$"
    return [a.replace("$$", "$") for a in argv]


def local_env(service: Mapping[str, Any], redis_port: int, **extra: str) -> dict[str, str]:
    """The service's environment with the `redis` service's address mapped to loopback."""
    env = base_env()
    for k, v in (service.get("environment") or {}).items():
        env[k] = str(v).replace("redis://redis:6379", f"redis://127.0.0.1:{redis_port}")
    env.update(extra)
    return env


# -- the tests ------------------------------------------------------------------------------


def test_compose_declares_the_services_and_a_scalable_worker() -> None:
    doc = load_compose()
    services = doc["services"]
    assert set(services) >= {"redis", "worker", "flower", "producer"}
    worker = services["worker"]
    # --scale worker=N needs no fixed container name and no published host port.
    assert "container_name" not in worker and "ports" not in worker
    assert command_of(worker)[:4] == ["celery", "-A", "worker", "worker"]
    assert "-E" in command_of(worker), "Flower shows tasks only from workers sending events"
    flower = services["flower"]
    assert command_of(flower)[:4] == ["celery", "-A", "worker", "flower"]
    assert flower["environment"]["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert str(flower["environment"]["FLOWER_PORT"]) == "5555"
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    for name in ("worker", "flower", "producer"):
        env = services[name]["environment"]
        assert env["POLARIS_REDIS_URL"].startswith("redis://redis:6379/"), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["build"] == "." and services[name]["image"] == worker["image"]
    assert "redis-data" in doc["volumes"]


def test_dockerfile_copies_what_exists_and_starts_the_worker() -> None:
    text = DOCKERFILE.read_text()
    instructions = [ln.strip() for ln in text.splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")]
    copies = [ln.split()[1:-1] for ln in instructions if ln.startswith("COPY ")]
    assert copies, "the Dockerfile copies nothing"
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    extras = re.findall(r'pip install "\.\[([a-z,]+)\]"', text)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras and all(e in declared for e in extras[0].split(","))
    cmd = [ln for ln in instructions if ln.startswith("CMD ")][-1]
    assert json.loads(cmd[4:]) == command_of(load_compose()["services"]["worker"])
    assert any(ln.startswith("USER ") and ln.split()[1] != "root" for ln in instructions)


@pytest.mark.slow
def test_every_service_command_runs_here(tmp_path: Path) -> None:
    services = load_compose()["services"]
    port = free_port()
    redis_argv = command_of(services["redis"])
    assert redis_argv[0] == "redis-server"
    # The compose command, then what a container gets from its network and volume.
    redis_argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                   "--save", "", "--daemonize", "no"]
    with started(redis_argv, base_env(), tmp_path / "redis.log") as redis:
        redis.wait_for("Ready to accept connections", timeout=15)
        health = services["redis"]["healthcheck"]["test"]
        assert health[0] == "CMD"
        probe = subprocess.run([health[1], "-p", str(port), *health[2:]], capture_output=True,
                               text=True, timeout=10, check=False)
        assert probe.stdout.strip() == "PONG", probe

        flower_port = free_port()
        flower_env = local_env(services["flower"], port, FLOWER_PORT=str(flower_port),
                               FLOWER_ADDRESS="127.0.0.1")
        with started(command_of(services["flower"]), flower_env, tmp_path / "flower.log") as fl, \
                started(command_of(services["worker"]), local_env(services["worker"], port),
                        tmp_path / "worker.log") as worker:
            worker.wait_for(" ready.")
            wait_http(f"http://127.0.0.1:{flower_port}/healthcheck", proc=fl)
            wait_flower_sees_a_worker(flower_port)
            producer = subprocess.run(
                command_of(services["producer"]), cwd=ROOT, capture_output=True, text=True,
                env=local_env(services["producer"], port, RIDES="1", PAUSE="0"), timeout=120,
                check=False)
            assert producer.returncode == 0, producer.stdout + producer.stderr
            out = producer.stdout
            assert out.count("paused") >= 3 and "completed (target produced)" in out, out
            assert re.search(r"RideEnded \(target\)\s+│\s+\d+ │ EndRide", out), out
            # Flower's API answers (unauthenticated, as compose configures it) and knows the
            # builder tasks.
            types = httpx.get(f"http://127.0.0.1:{flower_port}/api/task/types", timeout=5)
            assert types.status_code == 200, types.text
            assert "polaris.cab-ride.MatchCabbie" in types.json()["task-types"]
