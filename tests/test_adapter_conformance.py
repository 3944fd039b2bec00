"""Open Responses conformance: every Response object and stream event the adapter emits for
the recorded chat traffic validates against the Open Responses specification.

Two sources of the specification: the `openresponses-types` package on PyPI (pydantic models
generated from the Open Responses OpenAPI document, pinned by its spec version and hash), and
the OpenAPI document itself (`OPEN_RESPONSES_OPENAPI`, which .ci/install-e2e takes from the
openresponses-py source archive on PyPI; it is not vendored here; tests/open_responses.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import openresponses_types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from otel_responses.protocol.chat import StreamTranslator, translate_completion, translate_request
from tests.adapter_checks import (
    chat_streams,
    check_stream,
    replay_completion,
    replay_stream,
    validate_response,
)
from tests.open_responses import NOT_IN_SPEC, Kind, openapi_validator, spec_event
from tests.recordings import CHAT_DIR, Recording, need, recordings_params


@cache
def _pydantic_events() -> dict[str, type[BaseModel]]:
    """Event type → its model in openresponses-types."""
    out = {}
    for name in dir(openresponses_types):
        model = getattr(openresponses_types, name)
        if name.endswith("StreamingEvent") and isinstance(model, type) and issubclass(
                model, BaseModel) and "type" in model.model_fields:
            for value in model.model_fields["type"].annotation:  # type: ignore[union-attr]
                out[str(value.value)] = model
    return out


def _walk(rec: Recording, raw_reasoning: bool) -> Iterator[tuple[Kind, Mapping[str, Any]]]:
    """Everything the adapter emits for a recording: ("event", e) and ("response", r)."""
    if rec.is_sse:
        events = replay_stream(rec, raw_reasoning)
        check_stream(events)
        yield from _objects(events)
    else:
        yield "response", replay_completion(rec)


def _objects(events: list[dict[str, Any]]) -> Iterator[tuple[Kind, Mapping[str, Any]]]:
    for event in events:
        if event["type"] not in NOT_IN_SPEC:
            yield "event", spec_event(event)
        if "response" in event:
            yield "response", event["response"]


_CHAT_OK = recordings_params(lambda r: r.status < 400, CHAT_DIR)


def _validate_with_types(objects: Iterator[tuple[Kind, Mapping[str, Any]]]) -> None:
    models = _pydantic_events()
    for kind, value in objects:
        if kind == "response":
            openresponses_types.ResponseResource.model_validate(value)
        else:
            models[value["type"]].model_validate(value)


@pytest.mark.parametrize("raw_reasoning", [False, True], ids=["summary", "raw-reasoning"])
@pytest.mark.parametrize("rec", _CHAT_OK)
def test_openresponses_types(rec: Recording | None, raw_reasoning: bool) -> None:
    _validate_with_types(_walk(need(rec, CHAT_DIR), raw_reasoning))


@settings(max_examples=40)
@given(chat_streams(), st.booleans(), st.booleans())
def test_any_chat_stream_conforms(chunks: list[dict[str, Any]], logprobs: bool,
                                  raw_reasoning: bool) -> None:
    """Streams no recording has: refusals, parallel calls, logprobs, cut and failed ones."""
    body = {"model": "m", "input": "x", "stream": True, "top_logprobs": 2 if logprobs else 0,
            "tools": [{"type": "function", "name": f"tool{i}"} for i in range(4)]}
    translator = StreamTranslator(translate_request(body, raw_reasoning=raw_reasoning), "resp_1",
                                  1)
    lp = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97],
                       "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]}]}
    events = translator.start()
    for c in chunks:
        for choice in c.get("choices", []):
            choice["logprobs"] = lp
        events += translator.feed(c)
    events += translator.finish()
    check_stream(events)
    _validate_with_types(_objects(events))


def test_openapi_document() -> None:
    """One test over all recordings (it needs a document no registry ships)."""
    validate = openapi_validator()
    recs = [need(p.values[0], CHAT_DIR) for p in _CHAT_OK]
    for rec, raw_reasoning in itertools.product(recs, (False, True)):
        for kind, value in _walk(rec, raw_reasoning):
            validate(kind, value)


def test_echoed_settings_conform_even_when_given_as_null() -> None:
    nulls = dict.fromkeys(("temperature", "top_p", "top_logprobs", "tool_choice",
                           "parallel_tool_calls", "metadata", "service_tier", "instructions",
                           "max_output_tokens", "user", "text", "reasoning"))
    for body in (nulls, {"temperature": 0.5, "reasoning": {"effort": "low"},
                         "text": {"format": {"type": "json_object"}, "verbosity": "low"},
                         "tools": [{"type": "function", "name": "f"}],
                         "tool_choice": {"type": "function", "name": "f"}}):
        call = translate_request({"model": "m", "input": "x", **body})
        completion = {"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"content": "{}"}}]}
        response = translate_completion(call, completion, "resp_1", 1)
        openresponses_types.ResponseResource.model_validate(response)
        validate_response(response)
