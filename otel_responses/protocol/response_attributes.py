"""A final Responses ``Response`` JSON → OpenInference output attributes and finish reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from openinference.semconv.trace import OpenInferenceMimeTypeValues, SpanAttributes

from otel_responses.protocol.messages import (
    Attributes,
    call_outputs,
    dumps,
    flatten_images,
    flatten_messages,
    generated_images,
    handed_to_client,
    items_of,
    mapping,
    output_messages,
    str_or_none,
)

# OpenInference has no keys for these; gen_ai.response.id is the OTel GenAI name, the two
# openai.response.* follow the OTel openai.* registry (which has only service_tier there).
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_STATUS = "openai.response.status"
INCOMPLETE_REASON = "openai.response.incomplete_reason"

_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class Usage(NamedTuple):
    """Token counts as reported; cache and reasoning counts are subsets of input and output.
    None where the upstream did not report the count."""

    input: int | None
    output: int | None
    total: int | None
    cache_read: int | None
    cache_write: int | None
    reasoning: int | None


def _count(value: Any) -> int | None:
    """A reported count: a non-negative integer (bool is an int subclass; not a count)."""
    return value if type(value) is int and value >= 0 else None


def usage(response: Mapping[str, Any]) -> Usage:
    """The response's ``usage`` object; the one reader of it (span, GenAI and metrics)."""
    u = mapping(response.get("usage"))
    inputs = mapping(u.get("input_tokens_details"))
    outputs = mapping(u.get("output_tokens_details"))
    return Usage(_count(u.get("input_tokens")), _count(u.get("output_tokens")),
                 _count(u.get("total_tokens")), _count(inputs.get("cached_tokens")),
                 _count(inputs.get("cache_write_tokens")), _count(outputs.get("reasoning_tokens")))


def finish_reason(response: Mapping[str, Any]) -> str | None:
    """The GenAI FinishReason for a response (none is native to the Responses API).

    completed → ``stop`` (``tool_call`` when it hands a call to the client, `handed_to_client`);
    incomplete → ``length`` or ``content_filter`` (other reasons verbatim); failed/cancelled →
    ``error``; else None.
    """
    status = response.get("status")
    if status == "completed":
        output = response.get("output")
        outputs = call_outputs(output)
        calls = any(handed_to_client(item, outputs) for item in items_of(output))
        return "tool_call" if calls else "stop"
    if status == "incomplete":
        reason = str_or_none(mapping(response.get("incomplete_details")).get("reason"))
        return _INCOMPLETE.get(reason, reason) if reason else None
    if status in ("failed", "cancelled"):
        return "error"
    return None


def _token_attributes(counts: Usage) -> Attributes:
    keys = (
        (SpanAttributes.LLM_TOKEN_COUNT_PROMPT, counts.input),
        (SpanAttributes.LLM_TOKEN_COUNT_COMPLETION, counts.output),
        (SpanAttributes.LLM_TOKEN_COUNT_TOTAL, counts.total),
        (SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ, counts.cache_read),
        (SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_WRITE, counts.cache_write),
        (SpanAttributes.LLM_TOKEN_COUNT_COMPLETION_DETAILS_REASONING, counts.reasoning),
    )
    return {key: value for key, value in keys if value is not None}


def response_attributes(response: Mapping[str, Any]) -> Attributes:
    """Output messages (what the model said) and images, token counts, model, id, status and
    finish reason."""
    attrs: Attributes = {
        SpanAttributes.OUTPUT_VALUE: dumps(response),
        SpanAttributes.OUTPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
    }
    model = str_or_none(response.get("model"))
    if model:
        attrs[SpanAttributes.LLM_MODEL_NAME] = model
        attrs[SpanAttributes.LLM_RESPONSE_MODEL_NAME] = model
    identifiers = (
        (RESPONSE_ID, str_or_none(response.get("id"))),
        (RESPONSE_STATUS, str_or_none(response.get("status"))),
        (INCOMPLETE_REASON, str_or_none(mapping(response.get("incomplete_details")).get("reason"))),
        (SpanAttributes.LLM_FINISH_REASON, finish_reason(response)),
    )
    attrs.update({key: value for key, value in identifiers if value})
    attrs.update(_token_attributes(usage(response)))
    output = response.get("output")
    attrs.update(flatten_messages(SpanAttributes.LLM_OUTPUT_MESSAGES, output_messages(output)))
    attrs.update(flatten_images(SpanAttributes.OUTPUT_IMAGES, generated_images(output)))
    return attrs
