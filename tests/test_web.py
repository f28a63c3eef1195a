"""`polaris web` in a real browser: headless Chromium (Debian's package, driven by Playwright)
against the view served by a real uvicorn, over a private redis-server and a real Celery
worker process running tests/apps/web_app.py, whose `Charge` builder waits until the test
pushes its gate (a Redis list), so a page can be opened while a run is in flight.

The screenshots in docs/ (web-list.png, web-instance.png) are taken by these tests: into
docs/ when POLARIS_SCREENSHOTS=1 (`POLARIS_SCREENSHOTS=1 make test` refreshes them), otherwise
into the test's temporary folder, so a plain test run leaves the checkout as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from click.testing import CliRunner

import polaris_celery as pc
from polaris_celery.cli import cli
from polaris_celery.testing import RedisServer, WorkerProcess, free_port
from polaris_celery.web import create_app

from .apps import web_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def shot(name: str, tmp: Path) -> str:
    """Where a screenshot goes: docs/ when asked for, else the test's own folder."""
    return str((DOCS if os.environ.get("POLARIS_SCREENSHOTS") == "1" else tmp) / name)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WF = "web-order"

sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Env:
    executor: pc.CeleryExecutor
    redis: redis.Redis
    base: str  # the view's URL
    worker: WorkerProcess

    def gate(self, iid: str) -> None:
        """Let `Charge` of instance `iid` finish (now, or as soon as it starts)."""
        self.redis.rpush(web_app.GATE.format(iid), "go")

    def wait(self, what: Callable[[], bool], timeout: float = 20.0, why: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {why or what}\n{self.worker.tail()}")

    def status(self, iid: str) -> str:
        return self.executor.instance(WF, iid).status

    def charge_running(self, iid: str) -> bool:
        try:
            view = self.executor.instance(WF, iid)
        except pc.UnknownInstance:
            return False
        return any(b.builder == "Charge" and b.state == "running" for b in view.in_flight)


class Served:
    """A uvicorn server on a thread, on a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port,
                                                    log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with RedisServer() as server:
        store, broker = f"{server.url.rsplit('/', 1)[0]}/0", f"{server.url.rsplit('/', 1)[0]}/1"
        executor = web_app.build(store, broker)
        worker = WorkerProcess("tests.apps.web_app", {
            "POLARIS_REDIS_URL": store, "POLARIS_BROKER_URL": broker},
            pool="threads", concurrency=6, cwd=ROOT)
        with worker, Served(create_app(executor, sse_interval=0.1)) as served:
            client = redis.Redis.from_url(store)
            yield Env(executor, client, f"http://127.0.0.1:{served.port}", worker)
            client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def iid(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def order(item: str = "tea", qty: int = 1) -> web_app.Order:
    return web_app.Order(item=item, qty=qty)


# -- the list ---------------------------------------------------------------------------------


def test_list_filters_and_pages(env: Env, page: Any) -> None:
    done = [iid("done") for _ in range(5)]
    for i in done:
        env.gate(i)
        env.executor.submit_delta(WF, i, order()).wait(timeout=30)
    stopped = iid("stopped")
    env.executor.submit_delta(WF, stopped, order())
    env.wait(lambda: env.charge_running(stopped), why="Charge to run")
    assert env.executor.cancel(WF, stopped)
    env.gate(stopped)

    page.goto(f"{env.base}/?wf={WF}&limit=3")
    rows = page.locator("#instances tbody tr[data-instance]")
    assert rows.count() == 3
    seen = set(rows.evaluate_all("rs => rs.map(r => r.dataset.instance)"))
    # newest first: the cancelled one changed last
    assert rows.first.get_attribute("data-instance") == stopped
    page.click("#next-page")
    more = page.locator("#instances tbody tr[data-instance]")
    assert more.count() >= 3
    seen |= set(more.evaluate_all("rs => rs.map(r => r.dataset.instance)"))
    assert seen >= {*done[2:], stopped}, seen  # the pages do not repeat an instance
    # the counts row links to each status; the filter form narrows the table
    counts = page.locator("#counts tr.selected")
    assert re.search(r"\b1\b", counts.locator("td").nth(6).inner_text())  # cancelled: 1
    page.select_option("#filters select[name=status]", "cancelled")
    page.click("#filters button")
    assert page.locator("#instances tbody tr[data-instance]").evaluate_all(
        "rs => rs.map(r => r.dataset.instance)") == [stopped]
    assert "status=cancelled" in page.url
    page.goto(f"{env.base}/?wf={WF}&status=completed&limit=25")
    listed = set(page.locator("#instances tbody tr[data-instance]").evaluate_all(
        "rs => rs.map(r => r.dataset.instance)"))
    assert set(done) <= listed and stopped not in listed


# -- an instance, live ------------------------------------------------------------------------


def _state(page: Any, builder: str) -> str | None:
    got = page.locator(f'#graph g.builder[data-builder="{builder}"]')
    return got.get_attribute("data-state") if got.count() else None


def test_instance_page_turns_a_builder_done_live(env: Env, page: Any, tmp_path: Path) -> None:
    i = iid("live")
    env.executor.submit_delta(WF, i, order("coffee", 2))
    env.wait(lambda: env.charge_running(i), why="Charge to run")
    page.goto(f"{env.base}/instance?wf={WF}&id={i}")
    assert page.locator("#status").inner_text() == "running"
    assert _state(page, "Reserve") == "done"
    assert _state(page, "Charge") == "running"
    assert _state(page, "Ship") == "not-run"
    assert page.locator("#live").get_attribute("data-events")
    page.evaluate("window.__notReloaded = true")
    page.wait_for_function("document.getElementById('live').dataset.updates >= 1")
    page.screenshot(path=shot("web-instance.png", tmp_path), full_page=True)

    env.gate(i)
    page.wait_for_function(
        "document.querySelector('#graph g.builder[data-builder=\"Charge\"]')"
        ".dataset.state === 'done'")
    page.wait_for_function("document.getElementById('status').innerText === 'completed'")
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    assert _state(page, "Ship") == "done"
    assert page.locator('#data tr[data-datum="Shipped"]').count() == 1
    assert page.locator('.gantt[data-run="1"] .gantt-row').count() == 3
    page.wait_for_function("document.getElementById('live').dataset.ended === '1'")


# -- actions ----------------------------------------------------------------------------------


def test_cancel_from_the_page(env: Env, page: Any) -> None:
    i = iid("cancel")
    env.executor.submit_delta(WF, i, order())
    env.wait(lambda: env.charge_running(i), why="Charge to run")
    page.goto(f"{env.base}/instance?wf={WF}&id={i}")
    page.click("#cancel")
    page.wait_for_selector("#flash")
    assert page.locator("#flash").inner_text() == "cancelled"
    assert page.locator("#status").inner_text() == "cancelled"
    assert env.status(i) == "cancelled"
    assert page.locator("#cancel").count() == 0
    env.gate(i)  # Charge finishes; what it produced is kept apart as late data
    env.wait(lambda: "Charged" in env.executor.instance(WF, i).late, why="late data")
    page.reload()
    assert "Charged" in page.locator("#late").inner_text()


def test_delta_form_validates_then_submits(env: Env, page: Any) -> None:
    i = iid("form")
    page.goto(f"{env.base}/?wf={WF}")
    page.click(f"#counts a.button[href*='wf={WF}']")
    assert page.locator("#delta-form").count() == 1
    page.fill("input[name=instance_id]", i)
    page.check("input[name='include:Order']")
    page.fill("input[name='Order.item']", "")
    page.fill("input[name='Order.qty']", "two")
    page.click("#submit-delta")
    errors = page.locator("#errors").inner_text()
    assert "Order.qty" in errors and "Order.item" in errors, errors
    assert page.locator(".field-error[data-field='Order.qty']").count() == 1
    with pytest.raises(pc.UnknownInstance):
        env.executor.instance(WF, i)  # nothing stored
    # the form keeps what was typed; fix it and send it with an Address (a JSON textarea)
    assert page.input_value("input[name=instance_id]") == i
    page.fill("input[name='Order.item']", "books")
    page.fill("input[name='Order.qty']", "3")
    page.check("input[name='Order.express']")
    page.check("input[name='include:Address']")
    page.fill("textarea[name='Address.__json__']", '{"lines": ["1 rue X"], "country": "BE"}')
    env.gate(i)
    page.click("#submit-delta")
    page.wait_for_url(re.compile(r"/instance\?"))
    assert "submitted run 1" in page.locator("#flash").inner_text()
    page.wait_for_function("document.getElementById('status').innerText === 'completed'")
    view = env.executor.instance(WF, i)
    got = view.datum("Order")
    assert got is not None and got.value == web_app.Order(item="books", qty=3, express=True)
    address = view.datum("Address")
    assert address is not None and address.value == web_app.Address(lines=["1 rue X"],
                                                                     country="BE")
    assert view.datum("Charged").value.amount == 28.5  # type: ignore[union-attr]


def test_failed_run_shows_its_error_and_restart(env: Env, page: Any) -> None:
    i = iid("fail")
    with pytest.raises(pc.BuilderFailed):
        env.executor.submit_delta(WF, i, order("pens", -1)).wait(timeout=30)
    page.goto(f"{env.base}/instance?wf={WF}&id={i}")
    assert page.locator("#status").inner_text() == "failed"
    assert _state(page, "Reserve") == "failed"
    assert "cannot reserve -1 of pens" in page.locator("#errors").inner_text()
    page.uncheck("input[name=keep_data]")
    page.click("#restart")
    assert "waiting for deltas" in page.locator("#flash").inner_text()
    assert env.executor.instance(WF, i).data == ()


# -- token, CSRF, host, metrics (HTTP level) --------------------------------------------------


def test_token_is_required_when_set(env: Env) -> None:
    with Served(create_app(env.executor, token="s3cret")) as served:
        base = f"http://127.0.0.1:{served.port}"
        with httpx.Client(base_url=base) as c:
            assert c.get("/").status_code == 401
            assert c.get("/metrics").status_code == 401
            assert c.get(f"/api/instances?wf={WF}").status_code == 401
            r = c.get("/", headers={"accept": "text/html"})
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            assert c.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
            ok = {"authorization": "Bearer s3cret"}
            assert c.get("/", headers=ok).status_code == 200
            assert c.get("/metrics", headers=ok).status_code == 200
            assert c.post("/cancel", data={"wf": WF, "id": "x"}).status_code == 401
            # with the token but without the page's CSRF token, an action is refused
            r = c.post("/cancel", data={"wf": WF, "id": "x"}, headers=ok)
            assert r.status_code == 403 and "CSRF" in r.text
            # the login form sets the cookie that pages then need
            assert c.post("/login", data={"token": "nope"}).status_code == 401
            r = c.post("/login", data={"token": "s3cret", "next": "/metrics"})
            assert r.status_code == 303 and "polaris_token" in r.headers["set-cookie"]
            assert "samesite=strict" in r.headers["set-cookie"].lower()
            assert c.get("/metrics").status_code == 200  # the client kept the cookie


def test_actions_refuse_cross_site_posts(env: Env) -> None:
    with httpx.Client(base_url=env.base) as c:
        page = c.get("/").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf is not None
        r = c.post("/recover", data={"csrf": csrf.group(1)},
                   headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and "cross-site" in r.text
        assert c.post("/recover", data={"csrf": "0" * 64}).status_code == 403
        r = c.post("/recover", data={"csrf": csrf.group(1)})
        assert r.status_code == 303 and "reconciler" in r.headers["location"]
        # bound to loopback without a token: a foreign Host (DNS rebinding) is refused
        assert c.get("/", headers={"host": "evil.example"}).status_code == 403


def test_bad_requests_get_clear_errors(env: Env) -> None:
    with httpx.Client(base_url=env.base) as c:
        r = c.get(f"/instance?wf={WF}&id=nope")
        assert r.status_code == 404 and "nope" in r.text and WF in r.text
        r = c.get("/?wf=no-such-flow")
        assert r.status_code == 404 and "no-such-flow" in r.text
        r = c.get(f"/?wf={WF}&status=bogus")
        assert r.status_code == 400 and "unknown status" in r.text and "bogus" in r.text
        r = c.get(f"/?wf={WF}&cursor=garbage!")
        assert r.status_code == 400 and "cursor" in r.text
        assert c.get(f"/events?wf={WF}&id=nope").status_code == 404
        r = c.get(f"/api/instance?wf={WF}&id=nope")
        assert r.status_code == 404
        r = c.get(f"/api/instances?wf={WF}&status=bogus")
        assert r.status_code == 400 and "bogus" in r.text
        r = c.get(f"/api/instances?wf={WF}&limit=2")
        assert r.status_code == 200 and len(r.json()["items"]) <= 2


def test_web_refuses_a_public_host_without_a_token() -> None:
    r = CliRunner(env={"POLARIS_WEB_TOKEN": None}).invoke(
        cli, ["--app", "no_such_module_needed", "web", "--host", "0.0.0.0"])
    assert r.exit_code == 1
    assert "--host 0.0.0.0 serves beyond this machine: give a token" in r.output
    r = CliRunner().invoke(cli, ["web", "--host", "0.0.0.0", "--token", " "])
    assert r.exit_code == 1 and "is empty" in r.output


def test_metrics_count_instances_by_status(env: Env) -> None:
    i = iid("metrics")
    env.gate(i)
    env.executor.submit_delta(WF, i, order()).wait(timeout=30)
    text = httpx.get(f"{env.base}/metrics").text
    m = re.search(rf'^polaris_instances{{status="completed",workflow="{WF}"}} (\d+)', text,
                  re.M)
    assert m and int(m.group(1)) >= 1, text
    assert re.search(r"^polaris_instances_in_flight \d+", text, re.M), text


def test_polaris_web_command_serves_the_view(env: Env) -> None:
    """`polaris -A tests.apps.web_app web` as users start it, in a process of its own."""
    port = free_port()
    store = env.executor.registry.store
    assert isinstance(store, pc.RedisStore)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from polaris_celery.cli import main; main()", "-A",
         "tests.apps.web_app", "web", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != "POLARIS_WEB_TOKEN"},
             "POLARIS_REDIS_URL": store.url})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/?wf={WF}")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stdout.read().decode() if proc.stdout else "")
                time.sleep(0.1)
        assert r.status_code == 200 and 'id="instances"' in r.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_screenshot_of_the_list(env: Env, page: Any, tmp_path: Path) -> None:
    """Last, so the list holds every kind of instance the tests above left; one more runs."""
    i = iid("running")
    env.executor.submit_delta(WF, i, order())
    env.wait(lambda: env.charge_running(i), why="Charge to run")
    page.goto(f"{env.base}/?wf={WF}&limit=12")
    assert page.locator(f'#instances tr[data-instance="{i}"] .badge').inner_text() == "running"
    page.screenshot(path=shot("web-list.png", tmp_path), full_page=True)
    env.gate(i)
