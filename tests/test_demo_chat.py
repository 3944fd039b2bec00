"""The demo upstream's Chat Completions endpoint over real sockets: the real openai SDK as client,
chunk shapes checked against the recorded OpenAI traffic in ../shared/fixtures/chat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from otel_responses.demo import chat
from otel_responses.demo.app import DemoSettings, create_demo_app
from tests.recordings import chat_recording, sse_payloads
from tests.servers import serve_asgi

SIGNATURE = "This is a deterministic reply from the otel-responses demo model."
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "required": ["city", "unit"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {"name": "lookup_time",
                                         "parameters": {"type": "object", "properties": {}}}}
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve_asgi(create_demo_app()) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def raw_chunks(base: str, body: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    """The stream's raw bytes, and each chunk's JSON (checked to parse as ChatCompletionChunk)."""
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.content
    assert raw.endswith(b"data: [DONE]\n\n")
    payloads = sse_payloads(raw.decode())
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)
    return raw, payloads


def words(text: str) -> int:
    """Whitespace-led words, the demo's documented token unit."""
    return len(text.split())


# ---- through the SDK -----------------------------------------------------------------------

def test_non_stream_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-demo", messages=HELLO)
    assert completion.object == "chat.completion" and completion.model == "gpt-demo"
    assert completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == f'You said: "Hello there". {SIGNATURE}'
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, words(choice.message.content))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("include_usage", [None, False, True])
def test_stream_text_and_usage_chunk(client: openai.OpenAI, base: str,
                                     include_usage: bool | None) -> None:
    options = {} if include_usage is None else {"stream_options": {"include_usage": include_usage}}
    expected = client.chat.completions.create(model="m", messages=HELLO)
    chunks = list(client.chat.completions.create(model="m", messages=HELLO, stream=True,
                                                 **options))  # type: ignore[call-overload]
    first = chunks[0].choices[0]
    assert (first.delta.role, first.delta.content) == ("assistant", "")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "stop" and set(finished[:-1]) == {None}
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage == expected.usage
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices for c in chunks)
    raw, _ = raw_chunks(base, {"model": "m", "messages": HELLO, "stream": True, **options})
    # Usage is announced as null on every chunk only when it will come at the end.
    assert (b'"usage"' in raw) is bool(include_usage)


def test_tool_call_stream_helper_matches_non_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What's the weather in Oslo? Use get_weather."}]
    plain = client.chat.completions.create(model="m", messages=messages, tools=[TIME, WEATHER])
    (call,) = plain.choices[0].message.tool_calls or []
    assert plain.choices[0].finish_reason == "tool_calls"
    assert plain.choices[0].message.content is None
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "demo", "unit": "celsius"}
    with client.chat.completions.stream(model="m", messages=messages,
                                        tools=[TIME, WEATHER]) as stream:
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert (streamed.function.name, streamed.function.arguments) == (
        call.function.name, call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_stream_in_fragments(client: openai.OpenAI, base: str) -> None:
    messages = [{"role": "user", "content": "Call lookup_time and get_weather, please."}]
    plain = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, TIME])
    calls = plain.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "lookup_time"]  # tools' order
    assert len({c.id for c in calls}) == 2
    _, payloads = raw_chunks(base, {"model": "m", "messages": messages, "stream": True,
                                    "tools": [WEATHER, TIME]})
    fragments = [f for p in payloads for c in p["choices"]
                 for f in c["delta"].get("tool_calls", [])]
    for index, call in enumerate(calls):
        mine = [f for f in fragments if f["index"] == index]
        assert mine[0]["function"] == {"name": call.function.name, "arguments": ""}
        assert all("id" not in f and "name" not in f["function"] for f in mine[1:])
        assert "".join(f["function"]["arguments"] for f in mine) == call.function.arguments
    assert [f["index"] for f in fragments] == sorted(f["index"] for f in fragments)
    assert sum(f["index"] == 0 for f in fragments) > 2  # get_weather's arguments: in pieces
    single = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, TIME],
                                            parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_tool_result_gets_a_text_answer(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]
    completion = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == (
        f"The tool get_weather returned: Sunny, 21 C {SIGNATURE}")


def test_reasoning_content_comes_first_and_is_counted(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="m", messages=HELLO, stream=True, reasoning_effort="low",
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    kinds = ["reasoning" if (d.model_extra or {}).get("reasoning_content") else
             "content" if d.content else "other" for d in deltas]
    first_content = kinds.index("content")
    assert set(kinds[1:first_content]) == {"reasoning"} and "reasoning" not in kinds[first_content:]
    usage = chunks[-1].usage
    assert usage and usage.completion_tokens_details
    assert usage.completion_tokens_details.reasoning_tokens == kinds.count("reasoning")
    assert usage.completion_tokens == kinds.count("reasoning") + kinds.count("content")
    plain = client.chat.completions.create(model="m", messages=HELLO, reasoning_effort="low")
    reasoning = (plain.choices[0].message.model_extra or {})["reasoning_content"]
    assert reasoning == "".join((d.model_extra or {}).get("reasoning_content") or ""
                                for d in deltas)
    without = client.chat.completions.create(model="m", messages=HELLO)
    assert "reasoning_content" not in (without.choices[0].message.model_extra or {})


@pytest.mark.parametrize("key", ["max_completion_tokens", "max_tokens"])
def test_token_limit_finishes_with_length(client: openai.OpenAI, key: str) -> None:
    limited = client.chat.completions.create(model="m", messages=HELLO, **{key: 3})
    assert limited.choices[0].finish_reason == "length"
    assert limited.choices[0].message.content == "You said: \"Hello"
    assert limited.usage and limited.usage.completion_tokens == 3
    # Reasoning is spent first: a small budget leaves an empty answer, as gpt-5 models do.
    thinking = client.chat.completions.create(model="m", messages=HELLO, reasoning_effort="high",
                                              **{key: 3})
    assert thinking.choices[0].message.content == ""
    assert thinking.usage and thinking.usage.completion_tokens_details
    assert thinking.usage.completion_tokens_details.reasoning_tokens == 3
    chunks = list(client.chat.completions.create(model="m", messages=HELLO, stream=True,
                                                 **{key: 3}))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "required": ["answer", "score"],
              "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}}}
    completion = client.chat.completions.create(
        model="m", messages=HELLO,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "demo",
                                                                      "score": 1}


BAD_REQUESTS = [
    ({"messages": HELLO}, "model", "missing_required_parameter"),
    ({"model": "m"}, "messages", "missing_required_parameter"),
    ({"model": "m", "messages": []}, "messages", "empty_array"),
    ({"model": "m", "messages": "hi"}, "messages", "invalid_type"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "invalid_value"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id",
     "missing_required_parameter"),
    ({"model": "m", "messages": HELLO, "tools": [{"type": "function", "function": {}}]},
     "tools[0].function.name", "missing_required_parameter"),
    ({"model": "m", "messages": HELLO, "stream_options": {"include_usage": True}},
     "stream_options", "invalid_value"),
    ({"model": "m", "messages": HELLO, "max_completion_tokens": 0}, "max_completion_tokens",
     "integer_below_min_value"),
    ({"model": "m", "messages": HELLO, "tool_choice": "required"}, "tool_choice",
     "invalid_value"),
    ({"model": "m", "messages": HELLO, "n": 2}, "n", "unsupported_value"),
    ({"model": 5, "messages": HELLO}, "model", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(client: openai.OpenAI, body: dict[str, Any], param: str,
                                        code: str) -> None:
    # The SDK's own request method: its typed create() refuses some of these bodies itself.
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert caught.value.status_code == 400
    assert (caught.value.param, caught.value.code) == (param, code)
    assert caught.value.type == "invalid_request_error" and caught.value.message


def test_unparseable_body(base: str) -> None:
    response = httpx.post(base + "/v1/chat/completions", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_token_delay_paces_chunks() -> None:
    delay = 0.05
    with serve_asgi(create_demo_app(DemoSettings(token_delay=delay))) as url:
        started = time.monotonic()
        _, payloads = raw_chunks(url, {"model": "m", "messages": HELLO, "stream": True})
        elapsed = time.monotonic() - started
        deltas = sum(1 for p in payloads if p["choices"][0]["delta"].get("content"))
        assert elapsed >= delay * (deltas - 1) * 0.9
        started = time.monotonic()
        httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": HELLO},
                   timeout=10).raise_for_status()
        assert time.monotonic() - started >= delay * (deltas - 1) * 0.9


# ---- the shape OpenAI sends ----------------------------------------------------------------

def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and value types, list items' shapes deduplicated."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "obfuscation"}  # random padding
    if isinstance(value, list):
        return sorted({json.dumps(shape(v), sort_keys=True) for v in value})
    return type(value).__name__


def chunk_kind(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    delta = choice["delta"]
    if choice["finish_reason"]:
        return "finish"
    if "role" in delta:
        return "role"
    if "tool_calls" in delta:
        return "tool-first" if "id" in delta["tool_calls"][0] else "tool-arguments"
    return "content"


def until_last_user(body: dict[str, Any]) -> dict[str, Any]:
    """The recorded request without the turns after its last user message (the demo answers a
    tool result with text, where the recording answered it with more calls)."""
    messages = body["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return {**body, "messages": messages[:last + 1]}


# Recorded at api.openai.com; each request, replayed to the demo, gets the same kind of answer.
# (pydantic-ai__stream_single_tool_call is left out: gpt-4o-mini put its first tool call fragment
# into the role chunk, where gpt-4o, and the demo, send a role chunk of its own.)
STREAMS = ["pydantic-ai__stream_text_include_usage", "dd-trace-py__stream_text_no_usage",
           "dd-trace-py__stream_finish_length", "pydantic-ai__stream_parallel_tool_calls"]
NON_STREAMS = ["dd-trace-py__nonstream_text", "dd-trace-py__nonstream_finish_length",
               "pydantic-ai__nonstream_parallel_tool_calls"]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_chunks_have_openais_shape(base: str, name: str) -> None:
    recording = chat_recording(name)
    recorded = sse_payloads(recording.body)
    _, mine = raw_chunks(base, until_last_user(recording.request_body))
    recorded_shapes = {chunk_kind(c): shape(c) for c in recorded}
    my_shapes = {chunk_kind(c): shape(c) for c in mine}
    assert my_shapes == recorded_shapes
    kinds = [chunk_kind(c) for c in mine]
    assert kinds[0] == "role" and kinds[-2:] == [chunk_kind(c) for c in recorded][-2:]
    assert recording.body.endswith("data: [DONE]\n\n")
    finish = [c["choices"][0]["finish_reason"] for c in mine if chunk_kind(c) == "finish"]
    assert finish == [c["choices"][0]["finish_reason"] for c in recorded
                      if chunk_kind(c) == "finish"]


@pytest.mark.parametrize("name", NON_STREAMS)
def test_completion_has_openais_shape(base: str, name: str) -> None:
    recording = chat_recording(name)
    response = httpx.post(base + "/v1/chat/completions",
                          json=until_last_user(recording.request_body), timeout=10)
    assert response.status_code == recording.status
    mine, recorded = response.json(), json.loads(recording.body)
    assert shape(mine) == shape(recorded)
    assert mine["choices"][0]["finish_reason"] == recorded["choices"][0]["finish_reason"]
    ChatCompletion.model_validate(mine)


@pytest.mark.parametrize("name", ["pydantic-ai__error_400_unsupported_value",
                                  "pydantic-ai__error_404_model_not_found"])
def test_error_body_has_openais_shape(base: str, name: str) -> None:
    recorded = json.loads(chat_recording(name).body)
    response = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": []})
    assert shape(response.json()) == shape({"error": {**recorded["error"], "param": "p"}})


# ---- any request ---------------------------------------------------------------------------

@given(text=st.text(max_size=60), limit=st.none() | st.integers(1, 30),
       reasoning=st.booleans(), tools=st.sampled_from([[], [WEATHER], [WEATHER, TIME]]))
def test_stream_and_completion_agree(text: str, limit: int | None, reasoning: bool,
                                     tools: list[Any]) -> None:
    request: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}],
                               "tools": tools, "stream": True,
                               "stream_options": {"include_usage": True}}
    if limit is not None:
        request["max_completion_tokens"] = limit
    if reasoning:
        request["reasoning_effort"] = "medium"
    chat.validate(request)
    rendered = chat.render(request, chat.answer(request, "", 1), "", 1, 0)
    frames = rendered.frames()
    assert all(f.startswith(b"data: ") and f.endswith(b"\n\n") for f in frames)
    chunks = [ChatCompletionChunk.model_validate_json(f[6:]) for f in frames[:-1]]
    completion = ChatCompletion.model_validate(rendered.completion())
    message, usage = completion.choices[0].message, completion.usage
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == (message.content or "")
    arguments = ["".join(t.function.arguments or "" for d in deltas for t in d.tool_calls or []
                         if t.index == i) for i in range(len(message.tool_calls or []))]
    assert arguments == [t.function.arguments for t in message.tool_calls or []]
    assert usage is not None and chunks[-1].usage == usage
    pieces = sum(1 for d in deltas if d.content or (d.model_extra or {}).get("reasoning_content")
                 or any(t.function and t.function.arguments for t in d.tool_calls or []))
    assert usage.completion_tokens == pieces
    unlimited = chat.answer({**request, "max_completion_tokens": None}, "", 1).completion_tokens
    cut = limit is not None and limit < unlimited
    assert pieces == (limit if cut else unlimited)
    assert (completion.choices[0].finish_reason == "length") is cut
