"""The example asyncio HTTP producer, served by uvicorn, driven by a real HTTP client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from polaris_celery.testing import free_port

from .workers import REPO, worker_process


def test_http_producer_plays_a_ride(redis_server):
    broker = f"redis://127.0.0.1:{redis_server.port}/5"
    env = {"POLARIS_REDIS_URL": redis_server.url, "POLARIS_BROKER_URL": broker}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.http_producer:app", "--port", str(port),
         "--host", "127.0.0.1", "--log-level", "warning"],
        cwd=REPO, env={**os.environ, **env}, start_new_session=True)
    ride = f"ride-{uuid.uuid4().hex[:6]}"
    try:
        with worker_process("worker", env, name="http-w", concurrency=4):
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{base}/docs", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=30) as client:
                body = {"user_id": "u1", "source": "A", "dest": "B"}
                r1 = client.post(f"/rides/{ride}", json=body, headers={"Idempotency-Key": "k1"})
                assert r1.status_code == 200, r1.text
                assert r1.json()["status"] == "paused"
                cabbie = r1.json()["produced"]["CabbieMatched"]["cabbie_id"]
                # A retried request with the same key applies once: same run.
                again = client.post(f"/rides/{ride}", json=body, headers={"Idempotency-Key": "k1"})
                assert again.json()["run"] == r1.json()["run"]
                r2 = client.post(f"/rides/{ride}/events",
                                 json={"CabbieArrived": {"cabbie_id": cabbie},
                                       "ArrivedAtDestination": {"distance_km": 10}})
                fare = r2.json()["produced"]["FareComputed"]["amount"]
                r3 = client.post(f"/rides/{ride}/events",
                                 json={"PaymentMade": {"user_id": "u1", "amount": fare}})
                assert r3.json()["completed"] is True
                assert r3.json()["produced"]["RideEnded"]["fare"] == fare
                assert client.get(f"/rides/{ride}").json()["RideEnded"]["ride_id"] == ride
                bad = client.post(f"/rides/{ride}/events", json={"RideEnded": {}})
                assert bad.status_code == 422 and "not an input" in bad.text

                # Many rides at once through one event-loop process.
                def start(i: int) -> int:
                    return client.post(f"/rides/{ride}-{i}", json=body).status_code

                with ThreadPoolExecutor(10) as pool:
                    assert list(pool.map(start, range(20))) == [200] * 20
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
