"""Who may read and act: the token, the CSRF guard, and the loopback host check.

- Bound to a loopback address (the default), the view needs no token, but it answers only
  requests whose Host is a loopback name, so a web page elsewhere cannot read it through DNS
  rebinding.
- Bound elsewhere, a token is required to start (`polaris web --token`, or
  POLARIS_WEB_TOKEN), and every page, action, SSE stream and /metrics scrape must carry it:
  `Authorization: Bearer <token>` (scrapers, scripts) or the cookie set by the login form
  (HttpOnly, SameSite=Strict). Compared in constant time.
- Every action is a POST that must carry the page's CSRF token (an HMAC of a per-process
  secret, written into each form) and, when the browser sends one, an Origin of this very
  host: another site can make a browser post to the view but cannot read a page to learn the
  CSRF token, so its forged post is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlsplit

COOKIE = "polaris_token"
TOKEN_ENV = "POLARIS_WEB_TOKEN"
OPEN_PATHS = ("/login", "/static/")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 with or without brackets) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """The token (None: none required) and the CSRF secret of one running view."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the web token is empty")
        self.token = token
        self.secret = secrets.token_bytes(32)

    @property
    def csrf(self) -> str:
        return hmac.new(self.secret, b"polaris-web-csrf", hashlib.sha256).hexdigest()

    def token_ok(self, headers: MutableMapping[str, str]) -> bool:
        if self.token is None:
            return True
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = _cookie(headers.get("cookie", ""), COOKIE)
        return hmac.compare_digest(given.encode(), self.token.encode())

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(),
                                                              self.token.encode())

    def post_ok(self, headers: MutableMapping[str, str], csrf: str | None) -> str | None:
        """None when a POST may proceed, else why not."""
        origin = headers.get("origin")
        if origin and origin != "null":
            if urlsplit(origin).netloc != headers.get("host", ""):
                return f"cross-site request refused (Origin {origin})"
        elif origin == "null":
            return "cross-site request refused (Origin null)"
        if csrf is None or not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            return "the form's CSRF token is missing or stale: reload the page and try again"
        return None


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


class Gate:
    """ASGI middleware: the Host check on loopback, and the token everywhere else than the
    login form and the static files."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        if self.guard.token is None:
            host = urlsplit("//" + headers.get("host", "")).hostname or ""
            if not is_loopback(host):
                await _plain(send, 403, f"this view serves loopback names only, not Host "
                                        f"{headers.get('host', '')!r}; start it with --token "
                                        "to serve other hosts")
                return
        elif not path.startswith(OPEN_PATHS) and not self.guard.token_ok(headers):
            if "text/html" in headers.get("accept", "") and scope.get("method") == "GET":
                query = scope.get("query_string", b"").decode("latin-1")
                target = path + (f"?{query}" if query else "")
                await _redirect(send, f"/login?next={quote(target, safe='')}")
            else:
                await _plain(send, 401, "a token is required: Authorization: Bearer <token>")
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")),
                            (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
