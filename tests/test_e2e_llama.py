"""llama.cpp's OpenAI-compatible server with a real model (SmolLM2-135M), called directly with the
openai SDK: what a real Chat Completions upstream other than OpenAI sends, checked for form only
(the model's wording is not asserted). The adapter mode relies on what these tests pin down."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.e2e import Llama
from tests.recordings import sse_payloads

HELLO = [{"role": "user", "content": "Say hello to the world."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def client(llama: Llama) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=llama.base + "/v1", api_key="sk-none", max_retries=0,
                       timeout=60) as c:
        yield c


def test_models_lists_the_alias(client: openai.OpenAI, llama: Llama) -> None:
    assert [m.id for m in client.models.list()] == [llama.model]


def test_non_stream_completion_is_well_formed(client: openai.OpenAI, llama: Llama) -> None:
    completion = client.chat.completions.create(model=llama.model, messages=HELLO, max_tokens=24,
                                                temperature=0)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == llama.model
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and 0 < usage.completion_tokens <= 24 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # No token details: an adapter must not expect prompt/completion_tokens_details.
    assert usage.prompt_tokens_details is None and usage.completion_tokens_details is None


def test_max_tokens_cuts_with_length(client: openai.OpenAI, llama: Llama) -> None:
    completion = client.chat.completions.create(model=llama.model, messages=HELLO, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage and completion.usage.completion_tokens == 3


def test_stream_is_well_formed_and_carries_no_usage(client: openai.OpenAI, llama: Llama) -> None:
    chunks = list(client.chat.completions.create(
        model=llama.model, messages=HELLO, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and len(c.choices) == 1 for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    # include_usage is ignored: no usage chunk, no usage field (an adapter must cope with none).
    assert all(c.usage is None for c in chunks)


def test_raw_stream_framing(llama: Llama) -> None:
    response = httpx.post(llama.base + "/v1/chat/completions", timeout=60, json={
        "model": llama.model, "messages": HELLO, "max_tokens": 8, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.text
    assert body.endswith("data: [DONE]\n\n")
    payloads = sse_payloads(body)
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)
    assert payloads[-1]["choices"][0]["delta"] == {}
    assert sum(bool(p["choices"][0]["delta"].get("content")) for p in payloads) == 8


def test_forced_tool_call(client: openai.OpenAI, llama: Llama) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    completion = client.chat.completions.create(model=llama.model, messages=messages,
                                                tools=[WEATHER], tool_choice=FORCED,
                                                max_tokens=40)
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)  # grammar-constrained JSON


def test_streamed_tool_call_repeats_id_and_name(llama: Llama) -> None:
    """Unlike OpenAI, every fragment repeats the call's id and name (and a legacy
    ``function_call``): an adapter must key fragments by index, not concatenate names."""
    response = httpx.post(llama.base + "/v1/chat/completions", timeout=60, json={
        "model": llama.model, "stream": True, "max_tokens": 40, "tools": [WEATHER],
        "tool_choice": FORCED,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    payloads = sse_payloads(response.text)
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)
    fragments = [f for p in payloads for f in p["choices"][0]["delta"].get("tool_calls") or []]
    assert len(fragments) > 1
    assert {(f["index"], f["id"], f["function"]["name"]) for f in fragments} == {
        (0, fragments[0]["id"], "get_weather")}
    assert isinstance(json.loads("".join(f["function"]["arguments"] for f in fragments)), dict)
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"
