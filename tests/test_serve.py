"""rxt-serve against a live server on a loopback port: the official ``openai`` client for the
OpenAI-compatible endpoints, ``httpx`` for the native conversations API, and bad requests.

Every answer is compared with a plain Session playing the same turns (greedy).
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from rxt_app.serve import bind_problem, main, served_model_id
from rxt_app.storage import Storage

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.stm import load_stm
from tests.app_helpers import RealController
from tests.factories import tiny_config, write_model_folder
from tests.serve_helpers import (
    MODEL_ID,
    SAMPLING,
    LiveServer,
    absorb,
    assert_error,
    play,
    post_turn,
    reference_session,
    slow_worker,
)
from tests.tokenizer_factories import write_bpe_tokenizer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_model_folder(root / "a", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)


@pytest.fixture
def server(model_folder, tmp_path):
    with LiveServer(model_folder, tmp_path / "data") as live:
        yield live


def openai_client(server: LiveServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def stored(server: LiveServer) -> dict[str, list[tuple[str, str]]]:
    """Every stored conversation's turns, read through a Storage of its own (another writer)."""
    storage = Storage(server.app.state.settings.data_dir)
    try:
        result = {}
        for conversation in storage.conversations():
            messages = storage.messages(conversation.id)
            queries = [m.text for m in messages if m.role == "user"]
            answers = [m.text for m in messages if m.role == "assistant"]
            result[conversation.id] = list(zip(queries, answers, strict=True))
        return result
    finally:
        storage.close()


def stored_after(client: httpx.Client, conversation_id: str, turns: int) -> dict:
    """The conversation once its first ``turns`` turns are stored (answers return before their memory update)."""
    deadline = time.monotonic() + 60
    while (body := client.get(f"/api/conversations/{conversation_id}").json())["turn_count"] < turns:
        assert time.monotonic() < deadline, body
        time.sleep(0.02)
    return body


# ----- OpenAI-compatible


def test_models_and_a_chat_completion_answer_like_a_session(server, model_folder):
    client = openai_client(server)
    assert [model.id for model in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    completion = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi, I'm Ann."}])
    expected = play(reference_session(model_folder), ["Hi, I'm Ann."])
    choice = completion.choices[0]
    assert choice.message.content == expected[0]
    assert choice.finish_reason in ("stop", "length")
    tokenizer = server.worker.tokenizer
    assert completion.usage.prompt_tokens == len(tokenizer.query_ids("Hi, I'm Ann."))
    assert 1 <= completion.usage.completion_tokens <= SAMPLING.max_tokens
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_resent_history_continues_the_stored_conversation(server, model_folder):
    client = openai_client(server)
    queries = ["Hi, I'm Ann.", "What is my name?", "I like tea."]
    messages, ids = [], set()
    for query in queries:
        messages.append({"role": "user", "content": query})
        stream = client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True)
        chunks = list(stream)
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        ids.add(chunks[0].model_extra["rxt"]["conversation_id"])
        messages.append({"role": "assistant", "content": answer})
    with server.client() as http:
        stored_after(http, ids.pop(), len(queries))
    expected = play(reference_session(model_folder), queries)
    assert not ids
    assert list(stored(server).values()) == [list(zip(queries, expected, strict=True))]


def test_an_unknown_history_is_written_into_a_new_memory_then_answered(server, model_folder):
    client = openai_client(server)
    history = [("Hi, I'm Ann.", "Hello Ann!"), ("I like tea.", "Tea is nice.")]
    messages = [{"role": "system", "content": "Be kind."}]
    for query, answer in history:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": "What is my name?"})
    completion = client.chat.completions.create(model=MODEL_ID, messages=messages, stream_options=None)
    reference = reference_session(model_folder, system="Be kind.")
    for query, answer in history:
        reference = absorb(reference, query, answer)
    expected = play(reference, ["What is my name?"])[0]
    assert completion.choices[0].message.content == expected
    tokenizer = server.worker.tokenizer
    written = len(tokenizer.system_prompt_ids("Be kind.")) + sum(
        len(tokenizer.interaction_ids(q, a)) for q, a in history
    )
    assert completion.usage.prompt_tokens == written + len(tokenizer.query_ids("What is my name?"))
    conversation_id = completion.model_extra["rxt"]["conversation_id"]
    with server.client() as http:
        body = stored_after(http, conversation_id, 3)
    assert body["system"] == "Be kind."
    assert [(t["query"], t["answer"]) for t in body["turns"]] == [*history, ("What is my name?", expected)]


def test_a_regenerated_last_turn_forks_the_conversation_before_it(server, model_folder):
    client = openai_client(server)
    first = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi, I'm Ann."}])
    answer = first.choices[0].message.content
    messages = [
        {"role": "user", "content": "Hi, I'm Ann."},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "I like tea."},
    ]
    again = [client.chat.completions.create(model=MODEL_ID, messages=messages) for _ in range(2)]
    assert again[0].choices[0].message.content == again[1].choices[0].message.content
    original, fork = (completion.model_extra["rxt"]["conversation_id"] for completion in again)
    assert original == first.model_extra["rxt"]["conversation_id"] != fork
    with server.client() as http:
        forked = stored_after(http, fork, 2)
    assert forked["forked_from"] == original and forked["forked_at_turn"] == 1
    assert forked["turn_count"] == 2


def test_stop_strings_cut_the_answer_and_its_memory(server, model_folder):
    expected = play(reference_session(model_folder), ["Hi, I'm Ann."], SamplingOptions(max_tokens=16))[0]
    assert len(expected) > 4, expected
    stop = expected[2:4]
    client = openai_client(server)
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi, I'm Ann."}], stop=[stop], max_tokens=16
    )
    cut = expected[: expected.index(stop)]
    assert completion.choices[0].message.content == cut
    assert completion.choices[0].finish_reason == "stop"
    conversation_id = completion.model_extra["rxt"]["conversation_id"]
    with server.client() as http:
        body = stored_after(http, conversation_id, 1)
        assert body["turns"][0]["answer"] == cut
        follow_up = post_turn(http, conversation_id, "What is my name?")
    reference = absorb(reference_session(model_folder), "Hi, I'm Ann.", cut)
    assert follow_up[-2][1]["text"] == play(reference, ["What is my name?"])[0]


def test_max_tokens_temperature_and_seed(server):
    client = openai_client(server)
    messages = [{"role": "user", "content": "Where is the café?"}]
    short = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=2)
    assert short.usage.completion_tokens <= 2
    if short.usage.completion_tokens == 2:
        assert short.choices[0].finish_reason == "length"
    sampled = [
        client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=1.5, top_p=0.9, seed=7)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content


def test_responses_continue_from_a_previous_response(server, model_folder):
    client = openai_client(server)
    first = client.responses.create(model=MODEL_ID, input="Hi, I'm Ann.", instructions="Be kind.")
    second = client.responses.create(model=MODEL_ID, input="What is my name?", previous_response_id=first.id)
    events = list(
        client.responses.create(model=MODEL_ID, input="I like tea.", previous_response_id=second.id, stream=True)
    )
    expected = play(
        reference_session(model_folder, system="Be kind."), ["Hi, I'm Ann.", "What is my name?", "I like tea."]
    )
    assert [first.output_text, second.output_text] == expected[:2]
    assert first.status in ("completed", "incomplete") and first.usage.output_tokens >= 1
    assert second.previous_response_id == first.id
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert streamed == events[-1].response.output_text == expected[2]
    third = events[-1].response
    assert client.responses.retrieve(third.id).output_text == expected[2]
    assert first.id.split("_")[1] == second.id.split("_")[1] == third.id.split("_")[1]


def test_a_response_after_an_earlier_turn_branches_there(server, model_folder):
    client = openai_client(server)
    first = client.responses.create(model=MODEL_ID, input="Hi, I'm Ann.")
    client.responses.create(model=MODEL_ID, input="I like tea.", previous_response_id=first.id)
    branch = client.responses.create(model=MODEL_ID, input="What is my name?", previous_response_id=first.id)
    assert branch.output_text == play(reference_session(model_folder), ["Hi, I'm Ann.", "What is my name?"])[1]
    assert branch.id.split("_")[1] != first.id.split("_")[1]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL_ID, input="Hi", previous_response_id=first.id, instructions="Other.")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL_ID, input="Hi", previous_response_id="resp_nope")


# ----- native conversations API


def test_conversations_api_create_turn_rename_rewind_fork_export_delete(server, model_folder):
    with server.client() as http:
        created = http.post("/api/conversations", json={"system": "Be kind."})
        assert created.status_code == 201
        conversation_id = created.json()["id"]
        events = post_turn(http, conversation_id, "Hi, I'm Ann.")
        names = [name for name, _ in events]
        assert names[0] == "start" and names[-2:] == ["answer", "memory"]
        assert set(names[1:-2]) <= {"token"}
        answer = events[-2][1]["text"]
        assert "".join(data["text"] for name, data in events if name == "token") == answer
        memory = events[-1][1]
        assert memory["turn"] == 1 and memory["conversation"]["turn_count"] == 1
        assert len(memory["memory_change"]) == tiny_config().decoder.num_layers
        second = http.post(
            f"/api/conversations/{conversation_id}/turns", json={"query": "What is my name?", "stream": False}
        )
        assert second.status_code == 201 and second.json()["turn"] == 2
        expected = play(reference_session(model_folder, system="Be kind."), ["Hi, I'm Ann.", "What is my name?"])
        assert [answer, second.json()["answer"]] == expected

        assert http.patch(f"/api/conversations/{conversation_id}", json={"title": "Ann"}).json()["title"] == "Ann"
        listed = http.get("/api/conversations").json()["data"]
        assert [(c["id"], c["title"], c["turn_count"]) for c in listed] == [(conversation_id, "Ann", 2)]

        fork = http.post(f"/api/conversations/{conversation_id}/fork", json={"turn": 1, "title": "Ann again"})
        assert fork.status_code == 201 and fork.json()["turn_count"] == 1 and fork.json()["system"] == "Be kind."
        fork_answer = post_turn(http, fork.json()["id"], "What is my name?")[-2][1]["text"]
        assert fork_answer == expected[1]

        rewound = http.post(f"/api/conversations/{conversation_id}/rewind", json={})
        assert rewound.json()["turn_count"] == 1
        assert http.post(f"/api/conversations/{conversation_id}/rewind", json={"turn": 0}).json()["turn_count"] == 0
        again = post_turn(http, conversation_id, "Hi, I'm Ann.")[-2][1]["text"]
        assert again == expected[0]  # turn 0 is the system-prompted memory again

        markdown = http.get(f"/api/conversations/{conversation_id}/export")
        assert markdown.headers["content-type"].startswith("text/markdown") and "# Ann" in markdown.text
        exported = http.get(f"/api/conversations/{conversation_id}/export", params={"format": "json"}).json()
        assert exported["turns"][0]["answer"] == expected[0]

        assert http.delete(f"/api/conversations/{conversation_id}").status_code == 204
        assert_error(http.get(f"/api/conversations/{conversation_id}"), 404, code="conversation_not_found")
        assert [c["id"] for c in http.get("/api/conversations").json()["data"]] == [fork.json()["id"]]


def test_the_chat_and_the_server_share_conversations(server, model_folder):
    data_dir = server.app.state.settings.data_dir
    with RealController(model_folder, data_dir, SAMPLING.as_kwargs()) as chat:
        made_in_chat = chat.open_latest()
        chat_answer = chat.answer(made_in_chat, "Hi, I'm Ann.")
        with server.client() as http:
            api_answer = post_turn(http, made_in_chat, "What is my name?")[-2][1]["text"]
            made_in_api = http.post("/api/conversations", json={"title": "from the API"}).json()["id"]
            post_turn(http, made_in_api, "I like tea.")
        assert [chat_answer, api_answer] == play(reference_session(model_folder), ["Hi, I'm Ann.", "What is my name?"])
        titles = {c.id: c.title for c in chat.storage.conversations()}
        assert titles[made_in_api] == "from the API"
        chat.controller.open(made_in_api)
        chat.ready(made_in_api)
        answer = chat.answer(made_in_api, "What do I like?")
        reference = reference_session(model_folder)
        assert answer == play(reference, ["I like tea.", "What do I like?"])[1]


def test_a_client_that_disconnects_stops_its_answer_which_is_kept(model_folder, tmp_path):
    expected = play(reference_session(model_folder), ["What is my name?"], SamplingOptions(max_tokens=56))[0]
    with LiveServer(model_folder, tmp_path / "data", worker=slow_worker(model_folder, 0.05)) as server:
        with server.client() as http:
            conversation_id = http.post("/api/conversations", json={}).json()["id"]
            body = {"query": "What is my name?", "max_tokens": 56}
            with http.stream("POST", f"/api/conversations/{conversation_id}/turns", json=body) as response:
                lines = response.iter_lines()
                while not next(lines).startswith("event: token"):
                    pass
            stored_turn = stored_after(http, conversation_id, 1)["turns"][0]
            assert stored_turn["stats"]["stopped"] is True
            assert expected.startswith(stored_turn["answer"]) and len(stored_turn["answer"]) < len(expected)
            completion = openai_client(server).chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
            assert completion.choices[0].message.content is not None
            unstreamed = {"model": MODEL_ID, "messages": [{"role": "user", "content": "What is my name?"}]}
            with pytest.raises(httpx.ReadTimeout):  # a client that gives up waiting for a whole answer
                http.post("/v1/chat/completions", json={**unstreamed, "max_tokens": 56}, timeout=0.5)
            gone = [c for c in http.get("/api/conversations").json()["data"] if c["id"] != conversation_id]
            given_up = [c for c in gone if c["title"] == "What is my name?"][0]["id"]
            stored_turn = stored_after(http, given_up, 1)["turns"][0]
            assert stored_turn["stats"]["stopped"] is True and len(stored_turn["answer"]) < len(expected)
    storage = Storage(tmp_path / "data")
    snapshot = storage.snapshot_path(conversation_id, 1)
    storage.close()
    load_stm(snapshot, model_fingerprint=server.worker.fingerprint)


# ----- safety and bad requests


def chat(*roles_and_texts: str, **fields) -> dict:
    """A chat completion body for the served model: ``chat("user", "x", "assistant", "y", n=2)``."""
    pairs = zip(roles_and_texts[::2], roles_and_texts[1::2], strict=True)
    return {"model": MODEL_ID, "messages": [{"role": role, "content": text} for role, text in pairs], **fields}


IMAGE = [{"type": "image_url", "image_url": {"url": "x"}}]
NO_CONVERSATION = "/api/conversations/" + "0" * 32
BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", b"{bad", {}, 400, None, None),
    ("POST", "/v1/chat/completions", b"{}", {"content-type": "text/plain"}, 415, None, "unsupported_media_type"),
    ("POST", "/v1/chat/completions", {"messages": chat("user", "x")["messages"]}, {}, 400, "model", None),
    ("POST", "/v1/chat/completions", {**chat("user", "x"), "model": "gpt-4o"}, {}, 404, "model", "model_not_found"),
    ("POST", "/v1/chat/completions", chat(), {}, 400, "messages", None),
    ("POST", "/v1/chat/completions", chat("user", "x", temperature=-1), {}, 400, "temperature", None),
    ("POST", "/v1/chat/completions", chat("user", "x", max_tokens=0), {}, 400, "max_tokens", None),
    ("POST", "/v1/chat/completions", chat("user", "x", n=2), {}, 400, "n", None),
    ("POST", "/v1/chat/completions", chat("user", "x", stop=list("abcde")), {}, 400, "stop", None),
    ("POST", "/v1/chat/completions", chat("user", "x", tools=[{"type": "function"}]), {}, 400, "tools", None),
    ("POST", "/v1/chat/completions", chat("assistant", "x"), {}, 400, "messages[0].role", None),
    ("POST", "/v1/chat/completions", chat("user", "x", "system", "y", "user", "z"), {}, 400, "messages[1].role", None),
    ("POST", "/v1/chat/completions", chat("tool", "x"), {}, 400, "messages[0].role", None),
    ("POST", "/v1/chat/completions", chat("user", IMAGE), {}, 400, "messages[0].content[0].type", None),
    ("POST", "/v1/chat/completions", chat("user", "  "), {}, 400, "messages", None),
    ("POST", "/v1/chat/completions", chat("user", "word " * 100), {}, 400, "messages", "context_length_exceeded"),
    (
        "POST",
        "/v1/responses",
        {"model": MODEL_ID, "input": "x", "previous_response_id": "resp_" + "0" * 32 + "_1"},
        {},
        404,
        None,
        "conversation_not_found",
    ),
    (
        "POST",
        "/v1/responses",
        {"model": MODEL_ID, "input": [{"role": "user", "content": "x", "type": "function_call_output"}]},
        {},
        400,
        "input[0].type",
        None,
    ),
    ("GET", "/v1/responses/resp_x", None, {}, 404, "response_id", "response_not_found"),
    ("POST", "/api/conversations", {"title": ""}, {}, 400, "title", None),
    ("POST", "/api/conversations", {"system": "word " * 100}, {}, 400, "system", "context_length_exceeded"),
    ("GET", NO_CONVERSATION, None, {}, 404, None, "conversation_not_found"),
    ("POST", NO_CONVERSATION + "/turns", {"query": "x"}, {}, 404, None, "conversation_not_found"),
    ("POST", NO_CONVERSATION + "/fork", {"turn": 0}, {}, 404, None, "conversation_not_found"),
    ("GET", "/api/conversations/x/export?format=pdf", None, {}, 400, "format", None),
    ("GET", "/nowhere", None, {}, 404, None, None),
    ("DELETE", "/v1/models", None, {}, 405, None, None),
    ("GET", "/v1/models", None, {"host": "rebound.example.com"}, 400, None, "invalid_host"),
]


def _request(http: httpx.Client, method: str, path: str, body, headers: dict) -> httpx.Response:
    if isinstance(body, bytes):
        return http.request(method, path, content=body, headers={"content-type": "application/json", **headers})
    return http.request(method, path, json=body, headers=headers)


def test_bad_requests_are_4xx_in_openai_error_shape(server):
    with server.client() as http:
        for method, path, body, headers, status, param, code in BAD_REQUESTS:
            assert_error(_request(http, method, path, body, headers), status, param, code)
        conversation_id = http.post("/api/conversations", json={}).json()["id"]
        assert_error(http.post(f"/api/conversations/{conversation_id}/rewind", json={}), 409, code="nothing_to_rewind")
        assert_error(http.post(f"/api/conversations/{conversation_id}/fork", json={"turn": 3}), 400, "turn")
        bad_turn = {"query": "x", "top_k": -1}
        assert_error(http.post(f"/api/conversations/{conversation_id}/turns", json=bad_turn), 400, "top_k")
        assert http.get("/health").json()["status"] == "ok"


def test_request_size_limit_and_api_key_and_cors(model_folder, tmp_path):
    settings = {"api_key": "s3cret", "max_request_bytes": 4096, "allow_origins": ("http://localhost:5173",)}
    with LiveServer(model_folder, tmp_path / "data", **settings) as server:
        with server.client() as http:
            assert_error(http.get("/v1/models"), 401, code="invalid_api_key")
            assert_error(http.get("/v1/models", headers={"authorization": "Bearer nope"}), 401)
            assert http.get("/health").status_code == 200
            key = {"authorization": "Bearer s3cret"}
            assert http.get("/v1/models", headers=key).status_code == 200
            big = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 5000}]}
            assert_error(http.post("/v1/chat/completions", json=big, headers=key), 413, code="request_too_large")
            chunked = http.post(
                "/v1/chat/completions", content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]), headers=key
            )
            assert_error(chunked, 413)
            preflight = {"origin": "http://localhost:5173", "access-control-request-method": "POST"}
            allowed = http.options("/v1/chat/completions", headers=preflight)
            assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
            other = http.options("/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
        client = openai_client(server, api_key="s3cret")
        assert client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}]).choices
        with pytest.raises(openai.AuthenticationError):
            openai_client(server, api_key="wrong").models.list()


def test_cors_is_off_by_default(server):
    with server.client() as http:
        preflight = {"origin": "http://localhost:5173", "access-control-request-method": "POST"}
        response = http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in http.get("/v1/models", headers={"origin": "http://a.b"}).headers


def test_the_openapi_schema_is_served(server):
    with server.client() as http:
        schema = http.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/v1/models", "/v1/chat/completions", "/v1/responses", "/api/conversations"} <= paths
    assert "/api/conversations/{conversation_id}/turns" in paths


def test_binding_another_address_needs_an_api_key(capsys):
    assert bind_problem("127.0.0.1", None) is None and bind_problem("localhost", None) is None
    assert bind_problem("::1", None) is None and bind_problem("0.0.0.0", "key") is None
    assert main(["--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_the_served_model_id():
    from pathlib import Path

    assert served_model_id(None, Path("/x/demo")) == "rxt-demo"
    assert served_model_id("/models/my-rxt", Path("/models/my-rxt")) == "my-rxt"
    assert served_model_id("ReactiveAI/RxT-Beta", Path("/cache/x")) == "ReactiveAI/RxT-Beta"


def test_memories_unloaded_between_turns_load_again_from_their_snapshots(model_folder, tmp_path):
    queries = ["Hi, I'm Ann.", "What is my name?", "I like tea."]
    with LiveServer(model_folder, tmp_path / "data", max_loaded=1) as server, server.client() as http:
        conversations = [http.post("/api/conversations", json={}).json()["id"] for _ in range(3)]
        answers = {conversation_id: [] for conversation_id in conversations}
        for query in queries:
            for conversation_id in conversations:
                answers[conversation_id].append(post_turn(http, conversation_id, query)[-2][1]["text"])
    expected = play(reference_session(model_folder), queries)
    assert all(answer == expected for answer in answers.values())
