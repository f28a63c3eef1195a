"""The web view's routes: a Starlette app over one `CeleryExecutor`.

    GET  /                      instances by workflow and status (filters, paging), counts
    GET  /instance?wf=&id=&run= one instance: coloured graph, data, runs, timeline, errors
    GET  /events?wf=&id=&run=   its live fragment as server-sent events while a run is in flight
    GET  /delta?wf=&id=         the submit-a-delta form, from the workflow's models
    POST /delta /cancel /restart /recover   the actions (CSRF token + Origin check)
    GET  /metrics               Prometheus exposition
    GET  /api/instances?wf=...  and /api/instance?wf=&id=   the same as JSON
    GET  /login  POST /login    the token form (only when a token is set)

Instance ids go in query strings, not paths, since they may hold slashes. Everything that
touches Redis or Celery runs on a worker thread, so a slow store never blocks the event loop
(and the SSE streams of other pages).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import PolarisError, StoreUnavailable, UnknownInstance, UnknownWorkflow
from ..executors.celery import CeleryExecutor
from . import forms, prom, sse, views
from .auth import COOKIE, Gate, Guard
from .source import STATUSES, Source

HERE = Path(__file__).parent
T = TypeVar("T")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _span(secs: float | None) -> str:
    if secs is None:
        return "-"
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 120:
        return f"{secs:.1f} s"
    return f"{secs / 60:.0f} min" if secs < 7200 else f"{secs / 3600:.1f} h"


def _url(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v is not None and v != ""}
    return path + ("?" + urlencode(clean) if clean else "")


def _value(v: Any) -> str:
    return v.model_dump_json(indent=1) if isinstance(v, BaseModel) else "(not decodable)"


class WebView:
    """The app's state: the executor, what reads it, the guard and the templates."""

    def __init__(self, executor: CeleryExecutor, token: str | None = None, *,
                 page_size: int = 25, sse_interval: float = sse.INTERVAL) -> None:
        self.executor = executor
        self.source = Source(executor)
        self.guard = Guard(token)
        self.page_size = page_size
        self.sse_interval = sse_interval
        self.prom = prom.registry_for(self.source)
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.globals.update(when=_when, span=_span, url=_url, value=_value,
                                quote=lambda s: quote(str(s), safe=""), statuses=STATUSES)

    # -- helpers ----------------------------------------------------------------------------

    def page(self, name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("csrf", self.guard.csrf)
        ctx.setdefault("token_set", self.guard.token is not None)
        return HTMLResponse(self.env.get_template(name).render(**ctx), status_code=code)

    def problem(self, status: int, message: str) -> HTMLResponse:
        return self.page("problem.html", status, message=message)

    @staticmethod
    async def off(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kw)

    def workflow_of(self, request: Request, field: str = "wf") -> str:
        keys = self.executor.registry.keys()
        wf = request.query_params.get(field) or (keys[0] if keys else "")
        if wf not in keys:
            raise UnknownWorkflow(wf)
        return wf

    async def form(self, request: Request) -> tuple[dict[str, str], str | None]:
        """The posted form as strings, and why the post is refused (None: it may proceed)."""
        got = await request.form()
        data = {k: v for k, v in got.items() if isinstance(v, str)}
        return data, self.guard.post_ok(dict(request.headers), data.get("csrf"))

    # -- pages ------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        keys = self.executor.registry.keys()
        if not keys:
            return self.page("list.html", keys=[], counts={}, page=None, wf="", status="",
                             message="no workflow registered")
        wf = self.workflow_of(request)
        status = request.query_params.get("status", "")
        if status and status not in STATUSES:
            return self.problem(400, f"unknown status {status!r}: one of {', '.join(STATUSES)}")
        cursor = request.query_params.get("cursor") or None
        limit = _int(request.query_params.get("limit"), self.page_size, 1, 500)
        try:
            page = await self.off(self.source.instances, wf,
                                  status=[status] if status else None, limit=limit,
                                  cursor=cursor)
        except ValueError as exc:  # a cursor that is not one of ours
            return self.problem(400, str(exc))
        counts = await self.off(self.source.counts)
        return self.page("list.html", keys=keys, counts=counts, page=page, wf=wf,
                         status=status, limit=limit, cursor=cursor,
                         message=request.query_params.get("msg", ""))

    async def _instance_page(self, wf: str, iid: str, run: int | None) -> views.InstancePage:
        def read() -> views.InstancePage:
            view = self.source.instance(wf, iid)
            graph = self.source.graph(wf, view.workflow_version)
            return views.instance_page(graph, view, self.source.timeline(wf, iid), run)

        return await self.off(read)

    async def instance(self, request: Request) -> Response:
        wf = self.workflow_of(request)
        iid = request.query_params.get("id", "")
        run = _int(request.query_params.get("run"), None, 1, None)
        p = await self._instance_page(wf, iid, run)
        return self.page("instance.html", p=p, wf=wf, iid=iid, req_run=run,
                         message=request.query_params.get("msg", ""))

    async def events(self, request: Request) -> Response:
        wf = self.workflow_of(request)
        iid = request.query_params.get("id", "")
        run = _int(request.query_params.get("run"), None, 1, None)
        await self._instance_page(wf, iid, run)  # UnknownInstance before the stream starts

        async def marker() -> Any:
            return await self.off(self.source.changed_marker, wf, iid)

        async def render() -> tuple[str, bool]:
            p = await self._instance_page(wf, iid, run)
            html = self.env.get_template("live.html").render(p=p, wf=wf, iid=iid,
                                                             csrf=self.guard.csrf)
            return html, p.live

        return StreamingResponse(
            sse.stream(marker, render, interval=self.sse_interval), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def delta_form(self, request: Request) -> Response:
        wf = self.workflow_of(request)
        graph = self.executor.registry.graph(wf)
        return self.page("delta.html", wf=wf, forms=forms.forms_for(graph),
                         values={"instance_id": request.query_params.get("id", "")},
                         errors={})

    async def delta(self, request: Request) -> Response:
        data, refused = await self.form(request)
        if refused:
            return self.problem(403, refused)
        wf = data.get("wf", "")
        if wf not in self.executor.registry.keys():  # noqa: SIM118
            raise UnknownWorkflow(wf)
        graph = self.executor.registry.graph(wf)
        got = forms.parse(graph, data)
        iid = data.get("instance_id", "").strip()
        if not iid:
            got.errors["instance_id"] = "instance id: required"
        if got.errors:
            return self.page("delta.html", 422, wf=wf, forms=forms.forms_for(graph),
                             values=data, errors=got.errors)
        try:
            handle = await self.off(self.executor.submit_delta, wf, iid, *got.models,
                                    delta_id=data.get("delta_id") or None)
        except PolarisError as exc:
            got.errors["delta"] = str(exc)
            return self.page("delta.html", 422, wf=wf, forms=forms.forms_for(graph),
                             values=data, errors=got.errors)
        return RedirectResponse(_url("/instance", wf=wf, id=iid, run=handle.run,
                                     msg=f"submitted run {handle.run}"), status_code=303)

    async def action(self, request: Request) -> Response:
        data, refused = await self.form(request)
        if refused:
            return self.problem(403, refused)
        what = request.url.path.strip("/")
        if what == "recover":
            counts = await self.off(self.executor.reconcile)
            msg = ("reconciler pass: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            return RedirectResponse(_url("/", wf=data.get("wf"), msg=msg), status_code=303)
        wf, iid = data.get("wf", ""), data.get("id", "")
        if wf not in self.executor.registry.keys():  # noqa: SIM118
            raise UnknownWorkflow(wf)
        if what == "cancel":
            done = await self.off(self.executor.cancel, wf, iid)
            msg = "cancelled" if done else "not cancelled: the instance was not open"
        else:
            handle = await self.off(self.executor.restart, wf, iid,
                                    keep_data=bool(data.get("keep_data")))
            msg = (f"restarted: run {handle.run}" if handle is not None
                   else "restarted without its data: waiting for deltas")
        return RedirectResponse(_url("/instance", wf=wf, id=iid, msg=msg), status_code=303)

    async def metrics(self, request: Request) -> Response:
        body = await self.off(prom.exposition, self.prom)
        return Response(body, media_type=prom.CONTENT_TYPE)

    # -- JSON -------------------------------------------------------------------------------

    async def api_instances(self, request: Request) -> Response:
        wf = self.workflow_of(request)
        status = request.query_params.get("status")
        try:
            page = await self.off(
                self.source.instances, wf, status=[status] if status else None,
                limit=_int(request.query_params.get("limit"), self.page_size, 1, 500),
                cursor=request.query_params.get("cursor") or None)
        except ValueError as exc:  # an unknown status, a cursor that is not one of ours
            return PlainTextResponse(str(exc), status_code=400)
        return JSONResponse(page.to_json())

    async def api_instance(self, request: Request) -> Response:
        wf = self.workflow_of(request)
        view = await self.off(self.source.instance, wf, request.query_params.get("id", ""))
        return JSONResponse(view.to_json())

    # -- login ------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/")
        if request.method == "GET":
            return self.page("login.html", next=nxt, error="")
        got = await request.form()
        token = str(got.get("token", ""))
        nxt = str(got.get("next", "/"))
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if not self.guard.check_token(token):
            return self.page("login.html", 401, next=nxt, error="wrong token")
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp


def _int(text: str | None, default: Any, low: int, high: int | None) -> Any:
    try:
        n = int(text) if text else default
    except ValueError:
        return default
    if n is None:
        return None
    return max(low, n if high is None else min(n, high))


def create_app(executor: CeleryExecutor, token: str | None = None, **options: Any) -> Any:
    """The ASGI app of the web view over `executor` (token: None when bound to loopback)."""
    w = WebView(executor, token, **options)

    async def known_errors(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/events":
            return PlainTextResponse(str(exc), status_code=_code(exc))
        return w.problem(_code(exc), str(exc))

    app = Starlette(routes=[
        Route("/", w.index),
        Route("/instance", w.instance),
        Route("/events", w.events),
        Route("/delta", w.delta_form, methods=["GET"]),
        Route("/delta", w.delta, methods=["POST"]),
        Route("/cancel", w.action, methods=["POST"]),
        Route("/restart", w.action, methods=["POST"]),
        Route("/recover", w.action, methods=["POST"]),
        Route("/metrics", w.metrics),
        Route("/api/instances", w.api_instances),
        Route("/api/instance", w.api_instance),
        Route("/login", w.login, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], exception_handlers={PolarisError: known_errors})
    app.state.web = w
    return Gate(app, w.guard)


def _code(exc: Exception) -> int:
    if isinstance(exc, UnknownInstance | UnknownWorkflow):
        return 404
    if isinstance(exc, StoreUnavailable):
        return 503
    return 400
