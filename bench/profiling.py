"""Sampling profiles with py-spy (attached by pid, `--subprocesses` for prefork children), and
summaries of its raw (collapsed-stack) output: time by package, by function (self) and by
polaris_celery function (inclusive). Idle samples (threads blocked in I/O) are left out by
py-spy, so shares are of CPU time spent in Python code and what it calls."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .util import BIN, ROOT, log, md_table

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy() -> str | None:
    """The py-spy executable; installed into the venv with pip if missing."""
    exe = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if exe:
        return exe
    log("py-spy is not installed; installing it into the venv with pip (for the profiles)")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "py-spy"], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"could not install py-spy: {r.stderr.strip()[-300:]}")
        return None
    return shutil.which("py-spy", path=str(BIN))


class Spy:
    """`py-spy record` attached to one process (and its children) until stop()."""

    def __init__(self, exe: str, pid: int, out: Path, *, subprocesses: bool, rate: int = 150):
        self.out = out
        # --nonblocking: sample without pausing the processes, so the profile perturbs less.
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--nonblocking", "--output", str(out)]
        if subprocesses:
            cmd.append("--subprocesses")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    if f"{ROOT}/" in file:
        file = file.split(f"{ROOT}/", 1)[1]
    return file


def _package(file: str) -> str:
    f = _short(file)
    if f.startswith("polaris_celery/"):
        return "polaris_celery"
    if f.startswith("bench/"):
        return "bench (builders, harness)"
    top = f.split("/", 1)[0]
    if top in ("celery", "kombu", "redis", "billiard", "pydantic", "pydantic_core", "vine"):
        return top
    if f.startswith(".") or top.endswith(".py") or top in ("json", "concurrent", "logging",
                                                           "threading.py", "socket.py"):
        return "stdlib"
    if top == "<frozen importlib._bootstrap>":
        return "stdlib"
    return top


#: Leaf frames that are threads blocked waiting (py-spy's idle heuristic lets a few through):
#: the reconciler thread's sleep, the worker's event loop poll, a pool process waiting for its
#: next task on its pipe, and the benchmark's own pause while py-spy attaches.
WAITING = {
    "threading.py:Condition.wait",
    "kombu/utils/eventio.py:_epoll.poll",
    "billiard/connection.py:Connection._recv",
    "bench/profiling.py:wait_attached",
}


def _wrapper(key: str) -> bool:
    """Frames that only pass a call through (closures, retry and error wrappers)."""
    return "<lambda>" in key or "<locals>" in key or key.endswith(
        (":_wrap", ":retry_unavailable"))


@dataclass
class Profile:
    samples: int
    self_by_func: Counter[str]
    incl_by_func: Counter[str]
    self_by_pkg: Counter[str]
    waiting: int = 0

    @classmethod
    def parse(cls, path: Path) -> Profile:
        self_f: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        pkg: Counter[str] = Counter()
        total = 0
        waiting = 0
        if not path.exists():
            return cls(0, self_f, incl, pkg)
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            funcs: list[tuple[str, str]] = []
            for fr in stack.split(";"):
                m = _FRAME.match(fr.strip())
                if m is None:  # "process 123:..." / "thread ..." frames
                    continue
                funcs.append((m["func"], m["file"]))
            if not funcs:
                continue
            func, file = funcs[-1]
            leaf = f"{_short(file)}:{func}"
            if leaf in WAITING:
                waiting += n
                continue
            total += n
            self_f[leaf] += n
            pkg[_package(file)] += n
            for key in {f"{_short(fl)}:{fn}" for fn, fl in funcs}:
                incl[key] += n
        return cls(total, self_f, incl, pkg, waiting)

    def polaris_inclusive(self, n: int) -> list[tuple[str, int]]:
        return [(f, c) for f, c in self.incl_by_func.most_common()
                if f.startswith("polaris_celery/") and not _wrapper(f)][:n]

    def share(self, n: int) -> str:
        return f"{100 * n / self.samples:.1f}%" if self.samples else "-"

    def markdown(self, title: str, top: int = 12) -> str:
        if not self.samples:
            return f"**{title}**: no samples."
        parts = [f"**{title}** ({self.samples} samples on CPU; {self.waiting} more were "
                 "threads blocked waiting, left out)", ""]
        parts.append("Self time by package: " + ", ".join(
            f"{p} {self.share(n)}" for p, n in self.self_by_pkg.most_common(8)) + ".")
        parts.append("")
        polaris = self.polaris_inclusive(top)
        selfs = self.self_by_func.most_common(top)
        rows = []
        for i in range(max(len(polaris), len(selfs))):
            a = polaris[i] if i < len(polaris) else ("", 0)
            b = selfs[i] if i < len(selfs) else ("", 0)
            rows.append([f"`{a[0]}`" if a[0] else "", self.share(a[1]) if a[0] else "",
                         f"`{b[0]}`" if b[0] else "", self.share(b[1]) if b[0] else ""])
        parts.append(md_table(["polaris_celery function (inclusive)", "share",
                               "any function (self)", "share"], rows))
        return "\n".join(parts)

    def top_lines(self, n: int = 6) -> list[str]:
        return [f"{f} {self.share(c)}" for f, c in self.polaris_inclusive(n)]


def wait_attached(seconds: float = 1.0) -> None:
    """py-spy needs a moment to attach before the measured work starts."""
    time.sleep(seconds)
