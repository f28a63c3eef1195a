"""Private `redis-server` processes, for `make demo`, the tests (the plugin's `polaris_redis`)
and benchmarks.

A private server listens on a free loopback port in a directory of its own, so it never touches
the machine's Redis; it is ended by the pid this module started, never by name.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ..errors import ConfigurationError


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
