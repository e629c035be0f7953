"""Who may see the gallery: a random token, then a cookie; and the headers every answer carries.

The server prints one URL with `?token=...`. The first request that brings it gets the token as a
cookie (HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it; Path=/) and a
redirect to the same address without the token, so it leaves the address bar and the history. Every
request without a valid cookie or token answers 403, pages, API and static files alike.

Actions (POST) also need the CSRF token, a second random value that only pages of this server carry
in their forms; with SameSite=Strict this is defence in depth, and it also refuses a POST from a page
of another origin when the browser sends an Origin header.

The Content-Security-Policy lets a page load only this server's own scripts, styles and images, run no
inline script or style, connect only back here, and be framed by nobody.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

COOKIE = "imgtool_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Secrets:
    """The access token (in the printed URL, then the cookie) and the CSRF token (in forms)."""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def token_ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def csrf_ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


def cookie_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token cookie's value from raw request headers (the last one wins, as in browsers' order)."""
    found = None
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, sep, val = part.strip().partition("=")
            if sep and key == COOKIE:
                found = val
    return found


def set_cookie(token: str) -> bytes:
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode()


def without_token(path: str, query: str) -> str:
    """The address to redirect to: the same path and query, less the token."""
    rest = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return path + (f"?{urlencode(rest)}" if rest else "")


class TokenGate:
    """ASGI middleware: 403 without the token, cookie + redirect when it comes in the URL, and the
    security headers on every answer."""

    def __init__(self, app: Asgi, keys: Secrets) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        given = dict(parse_qsl(query)).get("token")
        if self.keys.token_ok(given):
            location = without_token(scope.get("root_path", "") + scope["path"], query)
            await _answer(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", set_cookie(given or ""))])
            return
        if not self.keys.token_ok(cookie_of(scope.get("headers", []))):
            await _answer(send, 403, b"403: this page needs the link imgtool serve printed (with its token)\n",
                          [(b"content-type", b"text/plain; charset=utf-8")])
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), *HEADERS]})
    await send({"type": "http.response.body", "body": body})
