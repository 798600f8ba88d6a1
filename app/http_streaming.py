"""Server-sent events, and noticing a client that went away while its answer is generated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from rxt_app.conversation_service import Answer, MemorySaved, TurnLost, TurnStream


def sse(data: dict | str, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (or as it is, for ``[DONE]``), with an ``event:`` name."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response of ``events``; a client that disconnects cancels the iterator
    (its ``finally`` runs)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def until_disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body must have been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered with nothing, see :func:`client_gone`)."""


async def turn_result(result: asyncio.Future, stream: TurnStream, request: Request) -> Answer | MemorySaved:
    """``result`` of ``stream`` (its ``answered`` or ``settled``), unless the client disconnects
    first: then the answer is stopped (kept and memorised) and ClientGone raised. A lost turn
    raises its APIError."""
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not result.done():
        stream.stop()
        raise ClientGone()
    if isinstance(result.result(), TurnLost):
        raise result.result().error()
    return result.result()


def client_gone(request: Request, error: ClientGone) -> Response:
    """Nobody reads it: the connection is closed (499, nginx's "client closed request", in the log)."""
    return Response(status_code=499)
