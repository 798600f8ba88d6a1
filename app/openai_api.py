"""The OpenAI-compatible endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/responses``.

Chat completions are stateless on the wire: the client resends the whole history, the server
continues the stored conversation holding the longest prefix of it and writes only the turns it
lacks into the memory (:meth:`ConversationService.turns_after_history`). Responses are the
stateful form: ``previous_response_id`` names a stored turn (``resp_<conversation>_<turn>``), and
only the new input is sent. Every request's turn is stored like a turn typed in rxt-chat.

``temperature``, ``top_p``, ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``),
``stop`` and ``seed`` are honoured; unset ones take the server's defaults (rxt-serve's sampling
flags; greedy unless told otherwise). Only text content is accepted; tools, ``n`` > 1 and
logprobs are refused with a 400.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from rxt_app.conversation_service import Answer, ConversationService, TextDelta, TurnLost, TurnStream
from rxt_app.history import History, stored_turns
from rxt_app.http_errors import bad_request, not_found
from rxt_app.http_streaming import event_stream, sse, turn_result
from rxt_app.request_options import generate_plan

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

TEXT_PART_TYPES = ("text", "input_text", "output_text")
SYSTEM_ROLES = ("system", "developer")
RESPONSE_ID = re.compile(r"resp_([0-9a-f]{32})_([0-9]+)")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``; fields not listed are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, le=2)
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: str
    content: str | list[ContentPart]


class ResponseRequest(BaseModel):
    """``POST /v1/responses``; fields not listed are accepted and ignored (everything is stored)."""

    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = Field(None, le=2)
    top_p: float | None = None
    seed: int | None = None
    tools: list[Any] | None = None


def service_of(request: Request) -> ConversationService:
    return request.app.state.service


def _check_model(request: Request, model: str) -> str:
    served = request.app.state.settings.model_id
    if model != served:
        message = f"model {model!r} is not served here; this server serves {served!r}"
        raise not_found(message, "model", "model_not_found")
    return served


def _refuse_tools(tools: list | None) -> None:
    if tools:
        raise bad_request("tools are not supported by rxt-serve", "tools")


def message_text(content: str | list[ContentPart] | None, param: str) -> str:
    """The text of a message's content: a string, or text parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for index, part in enumerate(content):
        if part.type not in TEXT_PART_TYPES or part.text is None:
            raise bad_request(
                f"{param}[{index}] is a {part.type!r} part; rxt-serve reads text only", f"{param}[{index}].type"
            )
        texts.append(part.text)
    return "".join(texts)


def messages_history(messages: list, param: str, system_parts: tuple[str, ...] = ()) -> History:
    """System prompt, complete turns and the new query of a message list.

    System (and developer) messages must come first and become the system prompt; consecutive user
    messages are joined into one query; every assistant message closes a turn; the last message
    must be the user's query.
    """
    system = list(system_parts)
    turns: list[tuple[str, str]] = []
    queries: list[str] = []
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        text = message_text(message.content, f"{where}.content")
        if message.role in SYSTEM_ROLES:
            if turns or queries:
                raise bad_request(
                    f"{where} is a {message.role} message after the conversation began; RxT writes the system "
                    "prompt into a new memory, so it must come before the first user message",
                    f"{where}.role",
                )
            system.append(text)
        elif message.role == "user":
            queries.append(text)
        elif message.role == "assistant":
            if not queries:
                raise bad_request(f"{where} is an assistant message without a user message before it", f"{where}.role")
            turns.append(("\n\n".join(queries), text))
            queries = []
        else:
            raise bad_request(
                f"{where} has role {message.role!r}; rxt-serve takes system, developer, user and assistant messages",
                f"{where}.role",
            )
    if not queries:
        raise bad_request("the last message must be the user's (the query to answer)", f"{param}[{len(messages) - 1}]")
    return History("\n\n".join(system) if system else None, tuple(turns), "\n\n".join(queries))


def _usage(answer: Answer, written_tokens: int) -> tuple[int, int]:
    """Input tokens the model read for this request (the query, plus whatever was written into its
    memory: system prompt and resent turns), and the answer's tokens."""
    return answer.prompt_tokens + written_tokens, answer.tokens


def _wire_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


# ----- models


def _model_object(request: Request) -> dict:
    settings = request.app.state.settings
    return {"id": settings.model_id, "object": "model", "created": settings.model_created, "owned_by": "rxt-mlx"}


@router.get("/models", summary="The served model")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_object(request)]}


@router.get("/models/{model_id:path}", summary="One model")
async def get_model(model_id: str, request: Request) -> dict:
    _check_model(request, model_id)
    return _model_object(request)


# ----- chat completions


@router.post("/chat/completions", summary="Answer the last user message (the history is resent)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    service = service_of(request)
    model = _check_model(request, body.model)
    _refuse_tools(body.tools)
    if body.n not in (None, 1):
        raise bad_request("n must be 1: rxt-serve answers with one choice", "n")
    if body.logprobs:
        raise bad_request("logprobs are not supported by rxt-serve", "logprobs")
    history = messages_history(body.messages, "messages")
    max_tokens = body.max_completion_tokens or body.max_tokens
    names = {"max_tokens": "max_completion_tokens" if body.max_completion_tokens else "max_tokens"}
    plan = generate_plan(
        request.app.state.settings.defaults,
        body.stop,
        names,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
    )
    service.check_history(history)
    async with service.turns_after_history(history) as turns:
        stream = await turns.generate(history.query, plan)
        written = turns.written_tokens
    service.expect_history(history, stream)
    completion = _Completion(stream, model, written, int(time.time()))
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(completion.chunks(include_usage))
    answer = await turn_result(stream.answered, stream, request)
    return JSONResponse(completion.whole(answer))


class _Completion:
    """One chat completion's wire objects."""

    def __init__(self, stream: TurnStream, model: str, written_tokens: int, created: int):
        self.stream = stream
        self.model = model
        self.written_tokens = written_tokens
        self.created = created
        self.id = f"chatcmpl-{stream.conversation_id}-{stream.turn}"
        self.rxt = {"conversation_id": stream.conversation_id, "turn": stream.turn}

    def _usage(self, answer: Answer) -> dict:
        prompt, completion = _usage(answer, self.written_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, answer: Answer) -> dict:
        message = {"role": "assistant", "content": answer.text}
        choice = {"index": 0, "message": message, "finish_reason": _wire_reason(answer), "logprobs": None}
        return {**self._head("chat.completion"), "choices": [choice], "usage": self._usage(answer), "rxt": self.rxt}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse({**self._head("chat.completion.chunk"), "choices": [choice], "rxt": self.rxt})

    async def chunks(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The SSE stream: a role chunk, content chunks, the finish chunk, [usage,] ``[DONE]``.

        A client that disconnects before the end stops the answer (kept and memorised)."""
        answered = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for event in self.stream:
                if isinstance(event, TextDelta):
                    yield self._chunk({"content": event.text})
                elif isinstance(event, Answer):
                    answered = True
                    yield self._chunk({}, _wire_reason(event))
                    if include_usage:
                        yield sse({**self._head("chat.completion.chunk"), "choices": [], "usage": self._usage(event)})
                    yield sse("[DONE]")
                    return
                elif isinstance(event, TurnLost):
                    answered = True
                    yield sse(event.error().body())
                    return
        finally:
            if not answered:
                self.stream.stop()


# ----- responses


def response_id(conversation_id: str, turn: int) -> str:
    return f"resp_{conversation_id}_{turn}"


def parse_response_id(value: str, param: str) -> tuple[str, int]:
    match = RESPONSE_ID.fullmatch(value)
    if match is None:
        message = f"no response {value!r} (ids look like resp_<conversation>_<turn>)"
        raise not_found(message, param, "response_not_found")
    return match.group(1), int(match.group(2))


@router.post("/responses", summary="Answer new input, after a previous response or from scratch")
async def create_response(body: ResponseRequest, request: Request) -> Response:
    service = service_of(request)
    model = _check_model(request, body.model)
    _refuse_tools(body.tools)
    messages = [InputMessage(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    instructions = (body.instructions,) if body.instructions is not None else ()
    history = messages_history(messages, "input", instructions)
    plan = generate_plan(
        request.app.state.settings.defaults,
        names={"max_tokens": "max_output_tokens"},
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
    )
    service.check_history(history, "input")
    if body.previous_response_id is None:
        holding = service.turns_after_history(history, "input")
    else:
        conversation_id, turn = parse_response_id(body.previous_response_id, "previous_response_id")
        service.conversation(conversation_id)
        stored = service.system_prompts.get(conversation_id)
        if history.system is not None and history.system != stored:
            raise bad_request(
                "instructions (or system messages) differ from the conversation's system prompt; RxT wrote that "
                "prompt into its memory when it began, so continue without instructions or start a new one",
                "instructions",
            )
        holding = service.turns_after(conversation_id, turn, history.turns)
    async with holding as turns:
        stream = await turns.generate(history.query, plan)
        written = turns.written_tokens
    reply = _Response(stream, model, written, body)
    if body.stream:
        return event_stream(reply.events())
    answer = await turn_result(stream.answered, stream, request)
    return JSONResponse(reply.whole(answer))


@router.get("/responses/{response}", summary="A stored response")
async def get_response(response: str, request: Request) -> dict:
    service = service_of(request)
    conversation_id, turn = parse_response_id(response, "response_id")
    conversation = service.conversation(conversation_id)
    messages = [m for m in service.storage.messages(conversation_id) if m.turn == turn]
    answer_message = next((m for m in messages if m.role == "assistant"), None)
    if answer_message is None or turn > conversation.turn_count:
        raise not_found(f"no response {response!r}: the conversation has no turn {turn}", "response_id")
    query = stored_turns(messages)[0][0]
    stats = answer_message.stats
    answer = Answer(
        answer_message.text,
        stats.tokens if stats else 0,
        "stop",
        len(service.tokenizer.query_ids(query)),
        stats.ttft_seconds if stats else 0.0,
        stats.tokens_per_second if stats else 0.0,
        bool(stats and stats.stopped),
    )
    previous = response_id(conversation_id, turn - 1) if turn > 1 else None
    return _response_object(
        response_id(conversation_id, turn),
        _created(answer_message.created_at),
        request.app.state.settings.model_id,
        answer,
        0,
        previous,
    )


def _created(timestamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(timestamp).timestamp())


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None) -> dict:
    """The output message; ``text`` None: still in progress, no content yet."""
    status, content = ("in_progress", []) if text is None else ("completed", [_text_part(text)])
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _response_object(
    rid: str, created: int, model: str, answer: Answer | None, written_tokens: int, previous: str | None, **extra
) -> dict:
    """A Response object; ``answer`` None: in progress, nothing output yet."""
    status, output, usage, incomplete = "in_progress", [], None, None
    if answer is not None:
        status = "incomplete" if answer.finish_reason == "length" else "completed"
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        output = [_message_item(f"msg_{rid[5:]}", answer.text)]
        prompt, completion = _usage(answer, written_tokens)
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "previous_response_id": previous,
        "incomplete_details": incomplete,
        "error": None,
        "store": True,
        "text": {"format": {"type": "text"}},
        "usage": usage,
        **extra,
    }


class _Response:
    """One response's wire objects and stream events."""

    def __init__(self, stream: TurnStream, model: str, written_tokens: int, body: ResponseRequest):
        self.stream = stream
        self.model = model
        self.written_tokens = written_tokens
        self.id = response_id(stream.conversation_id, stream.turn)
        self.item_id = f"msg_{stream.conversation_id}_{stream.turn}"
        self.created = int(time.time())
        self.extra = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
        }
        self.previous = body.previous_response_id
        self.sequence = 0

    def whole(self, answer: Answer | None) -> dict:
        return _response_object(
            self.id, self.created, self.model, answer, self.written_tokens, self.previous, **self.extra
        )

    def _event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(data, kind)

    async def events(self) -> AsyncIterator[bytes]:
        """The Responses stream: created, in_progress, item and part added, text deltas, text/part/item
        done, then completed (incomplete at the token limit). A client that leaves stops the answer."""
        place = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        answered = False
        try:
            yield self._event("response.created", response=self.whole(None))
            yield self._event("response.in_progress", response=self.whole(None))
            yield self._event("response.output_item.added", output_index=0, item=_message_item(self.item_id, None))
            yield self._event("response.content_part.added", **place, part=_text_part(""))
            async for event in self.stream:
                if isinstance(event, TextDelta):
                    yield self._event("response.output_text.delta", **place, delta=event.text, logprobs=[])
                elif isinstance(event, Answer):
                    answered = True
                    yield self._event("response.output_text.done", **place, text=event.text, logprobs=[])
                    yield self._event("response.content_part.done", **place, part=_text_part(event.text))
                    item = _message_item(self.item_id, event.text)
                    yield self._event("response.output_item.done", output_index=0, item=item)
                    whole = self.whole(event)
                    yield self._event(f"response.{whole['status']}", response=whole)
                    return
                elif isinstance(event, TurnLost):
                    answered = True
                    failed = {**self.whole(None), "status": "failed", "error": event.error().body()["error"]}
                    yield self._event("response.failed", response=failed)
                    return
        finally:
            if not answered:
                self.stream.stop()
