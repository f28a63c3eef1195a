"""The store over TLS, as an ACL user limited to the library's keys, and over a unix socket,
each driven end to end through a real worker process."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

import polaris_celery as pc
from polaris_celery.testing import RedisServer

from .apps import probe_app
from .workers import worker_process


def _fan_out(store_url: str, broker_url: str) -> pc.RunResult:
    producer = probe_app.build(store_url, broker_url)
    env = {"POLARIS_REDIS_URL": store_url, "POLARIS_BROKER_URL": broker_url}
    with worker_process("tests.apps.probe_app", env, name="conn", concurrency=2):
        return producer.submit_delta("fan-out", f"c-{uuid.uuid4().hex[:6]}",
                                     probe_app.Go()).wait(30)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return str(cert), str(key)


def test_store_over_tls(certificate, redis_server):
    with RedisServer(tls=certificate) as tls_server:
        assert tls_server.url.startswith("rediss://")
        store = pc.RedisStore(tls_server.url)
        assert store.ping()
        broker = f"redis://127.0.0.1:{redis_server.port}/6"
        r = _fan_out(tls_server.url, broker)
        assert r.completed and len(r.get(probe_app.AllRan).pids) == 4
        # Without the CA the server's certificate is refused: a clear store error.
        with pytest.raises(pc.StoreUnavailable):
            pc.RedisStore(tls_server.url.split("?")[0]).ping()


def test_store_as_an_acl_user_limited_to_its_keys(redis_server):
    acl = ["--user", "polaris", "on", ">s3cret", "~pc:*", "+@all"]
    with RedisServer(extra=acl) as server:
        url = f"redis://polaris:s3cret@127.0.0.1:{server.port}/0"
        broker = f"redis://127.0.0.1:{redis_server.port}/7"
        r = _fan_out(url, broker)  # every key the library touches is under pc:
        assert r.completed
        with pytest.raises(pc.StoreUnavailable):
            pc.RedisStore(f"redis://polaris:wrong@127.0.0.1:{server.port}/0").ping()
        assert "s3cret" not in repr(pc.RedisStore(url))


def test_store_over_a_unix_socket(tmp_path, redis_server):
    sock = tmp_path / "redis.sock"
    with RedisServer(extra=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
        url = f"unix://{sock}?db=0"
        reg = pc.Registry(pc.RedisStore(url))
        from .scenarios import DBF, A, B, D, F

        reg.register("dbf", DBF)
        assert pc.Executor(reg).sequential("dbf", "u1", A(v=1), B(v=1), D()).get(F) == F(v=21)
        r = _fan_out(url, f"redis://127.0.0.1:{redis_server.port}/8")
        assert r.completed
