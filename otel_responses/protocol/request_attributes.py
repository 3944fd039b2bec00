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

# The request fields that are settings, never content, and so go to llm.invocation_parameters
# (True: the value as sent; a dict: only its own listed fields). Everything else (input,
# instructions, tools, prompt variables, a JSON schema's text, metadata, fields added to the API
# later) may carry what the user wrote, and masking could not know to hide it there.
_Spec = dict[str, "bool | _Spec"]
_PARAMETERS: _Spec = {
    **dict.fromkeys(("model", "temperature", "top_p", "top_logprobs", "max_output_tokens",
                     "max_tool_calls", "tool_choice", "parallel_tool_calls", "store",
                     "truncation", "service_tier", "stream", "background", "include",
                     "previous_response_id", "prompt_cache_key", "prompt_cache_retention"),
                    True),
    "conversation": {"id": True},
    "reasoning": {"effort": True, "summary": True, "generate_summary": True},
    "text": {"verbosity": True, "format": {"type": True, "name": True, "strict": True}},
    "stream_options": {"include_obfuscation": True},
    "prompt": {"id": True, "version": True},
}
_SCALARS = (str, int, float, bool, type(None))


def _settings(value: Mapping[str, Any], spec: _Spec) -> dict[str, Any]:
    """The fields of ``value`` that ``spec`` lists (a settings object has no deep nesting)."""
    out: dict[str, Any] = {}
    for key, rule in spec.items():
        if key not in value:
            continue
        field = value[key]
        if rule is True:
            out[key] = field
        elif isinstance(field, Mapping):
            out[key] = _settings(field, rule)
        elif isinstance(field, _SCALARS):  # e.g. ``conversation`` as a plain id
            out[key] = field
    return out


def _prompt_attributes(prompt: Any) -> Attributes:
    """A stored prompt: its id and version, and the variables filled into it (input text)."""
    if not isinstance(prompt, Mapping):
        return {}
    attrs: Attributes = {}
    prompt_id = str_or_none(prompt.get("id"))
    if prompt_id:
        attrs[SpanAttributes.PROMPT_ID] = prompt_id
        attrs[SpanAttributes.PROMPT_VENDOR] = "openai"
    version = prompt.get("version")
    if isinstance(version, str | int) and not isinstance(version, bool):
        attrs[SpanAttributes.LLM_PROMPT_TEMPLATE_VERSION] = str(version)
    variables = prompt.get("variables")
    if isinstance(variables, Mapping) and variables:
        attrs[SpanAttributes.LLM_PROMPT_TEMPLATE_VARIABLES] = dumps(variables)
    return attrs


def _tool_attributes(tools: Any) -> Attributes:
    if not isinstance(tools, list):
        return {}
    return {f"{SpanAttributes.LLM_TOOLS}.{i}.{ToolAttributes.TOOL_JSON_SCHEMA}": dumps(tool)
            for i, tool in enumerate(tools)}


def request_attributes(body: Mapping[str, Any], raw: str | None = None) -> Attributes:
    """Span kind, system, model, parameters, tools, prompt template and input messages (dense
    from 0).

    ``raw`` is the request as sent (or as masked) for ``input.value``; without it the body is
    re-serialised.
    """
    attrs: Attributes = {
        SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.LLM.value,
        SpanAttributes.LLM_SYSTEM: OpenInferenceLLMSystemValues.OPENAI.value,
        SpanAttributes.INPUT_VALUE: raw if raw is not None else dumps(body),
        SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
        SpanAttributes.LLM_INVOCATION_PARAMETERS: dumps(_settings(body, _PARAMETERS)),
    }
    model = str_or_none(body.get("model"))
    if model:
        attrs[SpanAttributes.LLM_REQUEST_MODEL_NAME] = model
        attrs[SpanAttributes.LLM_MODEL_NAME] = model
    attrs.update(_tool_attributes(body.get("tools")))
    attrs.update(_prompt_attributes(body.get("prompt")))
    items = body.get("input")
    messages = instruction_messages(body.get("instructions")) + items_messages(items)
    attrs.update(flatten_messages(SpanAttributes.LLM_INPUT_MESSAGES, messages))
    attrs.update(flatten_images(SpanAttributes.INPUT_IMAGES, generated_images(items)))
    return attrs
