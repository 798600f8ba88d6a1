"""The native conversations API (``/api/conversations``): the chat's conversations over HTTP.

The same storage as rxt-chat, so a conversation made here shows in the chat and the other way
round. A turn is posted with only its query (the memory holds the rest) and streams as
server-sent events: ``start``, ``token``..., ``answer`` (the answer is complete), then ``memory``
(the memory update is done and the turn is stored), or ``error``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from rxt_app.controller import NEW_TITLE
from rxt_app.conversation_service import Answer, ConversationService, MemorySaved, TextDelta, TurnLost, TurnStream
from rxt_app.export import conversation_markdown
from rxt_app.http_streaming import event_stream, sse, turn_result
from rxt_app.request_options import generate_plan
from rxt_app.storage import Conversation, Message, TurnStats

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(NEW_TITLE, min_length=1, description="named after the first query when left out")
    system: str | None = Field(None, description="system prompt written into the new memory before turn 1")


class Rename(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1)


class NewTurn(BaseModel):
    """A query and how to answer it (unset sampling fields: the server's defaults)."""

    model_config = ConfigDict(extra="forbid")
    query: str
    stream: bool = Field(True, description="server-sent events; false: one JSON answer once the turn is stored")
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class Rewind(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn: int | None = Field(None, description="the turn to go back to (default: undo the last turn)")


class Fork(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn: int = Field(description="the new conversation holds turns 1..turn and that turn's memory")
    title: str | None = Field(None, min_length=1)


def service_of(request: Request) -> ConversationService:
    return request.app.state.service


def conversation_json(service: ConversationService, conversation: Conversation) -> dict:
    return {
        "id": conversation.id,
        "object": "conversation",
        "title": conversation.title,
        "turn_count": conversation.turn_count,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
        "forked_from": conversation.forked_from,
        "forked_at_turn": conversation.forked_at_turn,
        "model_fingerprint": conversation.model_fingerprint,
        "read_only": service.controller.read_only_reason(conversation) is not None,
        "system": service.system_prompts.get(conversation.id),
    }


def stats_json(stats: TurnStats | None) -> dict | None:
    if stats is None:
        return None
    return {
        "tokens": stats.tokens,
        "prompt_seconds": stats.prompt_seconds,
        "ttft_seconds": stats.ttft_seconds,
        "tokens_per_second": stats.tokens_per_second,
        "memory_update_seconds": stats.memory_update_seconds,
        "stopped": stats.stopped,
        "memory_change": list(stats.memory_change),
    }


def turns_json(messages: list[Message]) -> list[dict]:
    turns: dict[int, dict] = {}
    for message in messages:
        turn = turns.setdefault(message.turn, {"turn": message.turn, "created_at": message.created_at})
        if message.role == "user":
            turn["query"] = message.text
        else:
            turn["answer"] = message.text
            turn["stats"] = stats_json(message.stats)
    return [turns[number] for number in sorted(turns)]


@router.post("", status_code=201, summary="Create a conversation")
async def create_conversation(body: NewConversation, request: Request) -> dict:
    service = service_of(request)
    if body.system is not None:
        service.check_memory_text(service.tokenizer.system_prompt_ids(body.system), "the system prompt", "system")
    return conversation_json(service, service.create(body.title, body.system))


@router.get("", summary="List conversations, most recently updated first")
async def list_conversations(request: Request) -> dict:
    service = service_of(request)
    return {"object": "list", "data": [conversation_json(service, c) for c in service.storage.conversations()]}


@router.get("/{conversation_id}", summary="A conversation and its turns")
async def get_conversation(conversation_id: str, request: Request) -> dict:
    service = service_of(request)
    conversation = service.conversation(conversation_id)
    turns = turns_json(service.storage.messages(conversation_id))
    return {**conversation_json(service, conversation), "turns": turns}


@router.patch("/{conversation_id}", summary="Rename a conversation")
async def rename_conversation(conversation_id: str, body: Rename, request: Request) -> dict:
    service = service_of(request)
    return conversation_json(service, service.rename(conversation_id, body.title))


@router.delete("/{conversation_id}", status_code=204, summary="Delete a conversation, its turns and memory")
async def delete_conversation(conversation_id: str, request: Request) -> Response:
    await service_of(request).delete(conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/rewind", summary="Undo turns: transcript and memory go back to a turn")
async def rewind_conversation(conversation_id: str, body: Rewind, request: Request) -> dict:
    service = service_of(request)
    return conversation_json(service, await service.rewind(conversation_id, body.turn))


@router.post("/{conversation_id}/fork", status_code=201, summary="A new conversation from a turn, with its memory")
async def fork_conversation(conversation_id: str, body: Fork, request: Request) -> dict:
    service = service_of(request)
    fork = service.fork(conversation_id, body.turn)
    if body.title is not None:
        fork = service.rename(fork.id, body.title)
    return conversation_json(service, fork)


@router.get("/{conversation_id}/export", summary="The transcript as Markdown or JSON")
async def export_conversation(
    conversation_id: str, request: Request, format: Literal["markdown", "json"] = "markdown"
) -> Response:
    service = service_of(request)
    conversation = service.conversation(conversation_id)
    messages = service.storage.messages(conversation_id)
    if format == "json":
        return JSONResponse({**conversation_json(service, conversation), "turns": turns_json(messages)})
    return PlainTextResponse(conversation_markdown(conversation, messages), media_type="text/markdown")


@router.post("/{conversation_id}/turns", summary="Send a query: streams the answer, then the memory update")
async def post_turn(conversation_id: str, body: NewTurn, request: Request) -> Response:
    service = service_of(request)
    service.check_query(body.query, "query")
    fields = body.model_dump(exclude={"query", "stream", "stop"})
    plan = generate_plan(request.app.state.settings.defaults, body.stop, **fields)
    async with service.turns(conversation_id) as turns:
        stream = await turns.generate(body.query, plan)
    if body.stream:
        return event_stream(turn_events(service, stream))
    result = await turn_result(stream.settled, stream, request)
    messages = service.storage.messages(conversation_id)
    turn = next(t for t in turns_json(messages) if t["turn"] == stream.turn)
    return JSONResponse({**turn, "conversation": conversation_json(service, result.conversation)}, status_code=201)


def answer_json(answer: Answer) -> dict:
    return {
        "text": answer.text,
        "tokens": answer.tokens,
        "finish_reason": answer.finish_reason,
        "ttft_seconds": answer.ttft_seconds,
        "tokens_per_second": answer.tokens_per_second,
        "stopped": answer.stopped,
    }


async def turn_events(service: ConversationService, stream: TurnStream):
    """``start``, ``token``..., ``answer``, ``memory`` (or ``error``); a client that leaves stops the answer."""
    ended = False
    try:
        yield sse({"conversation_id": stream.conversation_id, "turn": stream.turn}, "start")
        async for event in stream:
            if isinstance(event, TextDelta):
                yield sse({"text": event.text}, "token")
            elif isinstance(event, Answer):
                ended = True
                yield sse(answer_json(event), "answer")
            elif isinstance(event, MemorySaved):
                data = {"turn": event.turn, **(stats_json(event.stats) or {})}
                yield sse({**data, "conversation": conversation_json(service, event.conversation)}, "memory")
            elif isinstance(event, TurnLost):
                ended = True
                yield sse(event.error().body(), "error")
    finally:
        if not ended:
            stream.stop()
