"""What keeps rxt-serve safe by default: the bearer key, the request size limit, the Host check.

* ``--api-key``: every API request needs ``Authorization: Bearer KEY`` (compared in constant time).
* Request bodies over the limit are refused with 413 before any of them is parsed.
* Bound to a loopback address, the server answers only requests whose ``Host`` names a loopback
  address, so a web page cannot reach it through a DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from rxt_app.http_errors import APIError, error_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BEARER = HTTPBearer(auto_error=False, description="the key given to rxt-serve --api-key")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_key(api_key: str) -> Callable:
    """A dependency refusing requests without ``Authorization: Bearer <api_key>``."""

    async def require_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send the key given to rxt-serve --api-key as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    return require_key


async def _refuse(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    await error_response(error)(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413; others are read whole, then replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413,
            f"the request body is larger than the server's limit of {self.max_bytes} bytes "
            "(rxt-serve --max-request-bytes)",
            code="request_too_large",
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(scope, receive, send, too_large)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _refuse(scope, receive, send, too_large)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class LoopbackHostOnly:
    """ASGI middleware: refuse requests whose ``Host`` header is not a loopback name (DNS rebinding)."""

    def __init__(self, app: ASGIApp, extra_hosts: Iterable[str] = ()):
        self.app = app
        self.extra_hosts = {host.lower() for host in extra_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not (is_loopback(name) or name in self.extra_hosts):
            error = APIError(
                400,
                f"Host {host!r} is not this machine: rxt-serve bound to a loopback address answers "
                "only requests for localhost or 127.0.0.1",
                code="invalid_host",
            )
            await _refuse(scope, receive, send, error)
            return
        await self.app(scope, receive, send)
