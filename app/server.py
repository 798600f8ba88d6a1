"""The rxt-serve ASGI application: FastAPI routes over one inference worker and one data dir.

:func:`create_app` takes a started :class:`~rxt_app.serving_worker.ServingWorker` (the model is
loaded before the server binds, so a bad model is a one-line error, not a failed start-up) and
opens the storage on the event loop's thread when the app starts. The OpenAPI schema is served
at ``/openapi.json`` with its pages at ``/docs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from rxt_app import conversations_api, openai_api
from rxt_app.conversation_service import MAX_LOADED_CONVERSATIONS, ConversationService, EventRelay
from rxt_app.http_errors import install_error_handlers
from rxt_app.http_guards import BodySizeLimit, LoopbackHostOnly, bearer_key
from rxt_app.http_streaming import ClientGone, client_gone
from rxt_app.serving_worker import ServingWorker
from rxt_app.storage import Storage
from rxt_app.system_prompts import SystemPrompts

from rxt_mlx.sampling import SamplingOptions

MAX_REQUEST_BYTES = 1 << 20
MAX_BATCH = 8


@dataclass(frozen=True)
class ServerSettings:
    """What the command line decides about the server.

    Args:
        data_dir: the chat's data dir (conversations, messages, snapshots).
        model_id: the model's name in the OpenAI API (``/v1/models``, the ``model`` field).
        model_created: Unix time given as the model's ``created``.
        api_key: requests need ``Authorization: Bearer <api_key>`` (None: no key).
        allow_origins: browser origins allowed by CORS (none: CORS off).
        loopback_only: answer only requests whose Host is a loopback name (a loopback bind).
        max_request_bytes: larger request bodies get 413.
        max_loaded: how many conversations' memories stay loaded between their turns.
        defaults: sampling of a request that does not say.
    """

    data_dir: Path
    model_id: str
    model_created: int = 0
    api_key: str | None = None
    allow_origins: tuple[str, ...] = ()
    loopback_only: bool = True
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_loaded: int = MAX_LOADED_CONVERSATIONS
    defaults: SamplingOptions = field(default_factory=SamplingOptions)


def start_worker(
    model_dir: str | Path, sampling: SamplingOptions | None = None, max_batch: int = MAX_BATCH
) -> tuple[ServingWorker, EventRelay]:
    """Load the model on a new inference thread; raises ModelLoadError if it cannot be loaded.

    ``max_batch``: most greedy answers decoded together (1: one at a time).
    """
    relay = EventRelay()
    worker = ServingWorker(model_dir, relay.post, (sampling or SamplingOptions()).as_kwargs(), max_batch=max_batch)
    return worker.start(), relay


def create_app(worker: ServingWorker, relay: EventRelay, settings: ServerSettings) -> FastAPI:
    """The app; it owns ``worker`` from now on and shuts it down when the server stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = Storage(settings.data_dir)
        prompts = SystemPrompts(settings.data_dir)
        app.state.service = ConversationService(worker, relay, storage, prompts, settings.max_loaded)
        try:
            yield
        finally:
            await app.state.service.close()

    app = FastAPI(
        title="rxt-serve",
        summary="A Reactive Transformer (RxT) backend for apps: OpenAI-compatible and stateful conversations.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_exception_handler(ClientGone, client_gone)
    protected = [Depends(bearer_key(settings.api_key))] if settings.api_key else []
    app.include_router(openai_api.router, dependencies=protected)
    app.include_router(conversations_api.router, dependencies=protected)

    @app.get("/health", tags=["server"], summary="Whether the server is up (no key needed)")
    async def health(request: Request) -> dict:
        return {"status": "ok", "model": request.app.state.settings.model_id}

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if settings.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allow_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if settings.loopback_only:
        app.add_middleware(LoopbackHostOnly)
    return app
