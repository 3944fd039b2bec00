"""A Responses request body → OpenInference LLM input attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openinference.semconv.trace import (
    OpenInferenceLLMSystemValues,
    OpenInferenceMimeTypeValues,
    OpenInferenceSpanKindValues,
    SpanAttributes,
    ToolAttributes,
)

from otel_responses.protocol.messages import (
    Attributes,
    dumps,
    flatten_images,
    flatten_messages,
    generated_images,
    instruction_messages,
    items_messages,
    str_or_none,
)

_NOT_PARAMETERS = frozenset({"input", "instructions", "tools"})


def _tool_attributes(tools: Any) -> Attributes:
    if not isinstance(tools, list):
        return {}
    return {f"{SpanAttributes.LLM_TOOLS}.{i}.{ToolAttributes.TOOL_JSON_SCHEMA}": dumps(tool)
            for i, tool in enumerate(tools)}


def request_attributes(body: Mapping[str, Any], raw: str | None = None) -> Attributes:
    """Span kind, system, model, parameters, tools and input messages (dense from 0).

    ``raw`` is the request as sent (or as masked) for ``input.value``; without it the body is
    re-serialised.
    """
    attrs: Attributes = {
        SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.LLM.value,
        SpanAttributes.LLM_SYSTEM: OpenInferenceLLMSystemValues.OPENAI.value,
        SpanAttributes.INPUT_VALUE: raw if raw is not None else dumps(body),
        SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
        SpanAttributes.LLM_INVOCATION_PARAMETERS: dumps(
            {k: v for k, v in body.items() if k not in _NOT_PARAMETERS}),
    }
    model = str_or_none(body.get("model"))
    if model:
        attrs[SpanAttributes.LLM_REQUEST_MODEL_NAME] = model
        attrs[SpanAttributes.LLM_MODEL_NAME] = model
    attrs.update(_tool_attributes(body.get("tools")))
    items = body.get("input")
    messages = instruction_messages(body.get("instructions")) + items_messages(items)
    attrs.update(flatten_messages(SpanAttributes.LLM_INPUT_MESSAGES, messages))
    attrs.update(flatten_images(SpanAttributes.INPUT_IMAGES, generated_images(items)))
    return attrs
