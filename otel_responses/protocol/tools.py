"""Tool calls of a Responses exchange, sans-IO: the ones the upstream ran (timed, with their
payload, for TOOL spans and metrics) and the call ids that tie a client's answer to its ask."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from openinference.semconv.trace import (
    OpenInferenceMimeTypeValues,
    OpenInferenceSpanKindValues,
    SpanAttributes,
)

from otel_responses.protocol.accumulator import SERVER_TOOL_TYPES, ItemTimes
from otel_responses.protocol.messages import (
    CLIENT_CALLS,
    Attributes,
    answered_call,
    builtin_call,
    call_id_of,
    call_name_of,
    call_outputs,
    dumps,
    flatten_images,
    generated_images,
    handed_to_client,
    item_type,
    items_of,
    mapping,
    str_or_none,
    tool_output,
)

TOOL_TYPES = SERVER_TOOL_TYPES | CLIENT_CALLS
"""Every tool call item type: those the upstream runs and those handed to the client."""
COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"
TOOL_TYPE = "openai.tool.type"
MCP_SERVER_LABEL = "openai.mcp.server_label"
_JSON = OpenInferenceMimeTypeValues.JSON.value
_TEXT = OpenInferenceMimeTypeValues.TEXT.value


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One tool call item of a response.

    ``server``: the upstream ran it (a built-in tool, `SERVER_TOOL_TYPES`, or a call the item
    or its answered output says the upstream ran: `handed_to_client`); else the client is asked
    to. ``result``: the output item answering a call the upstream ran, where the answer is an
    item of its own (a hosted shell's ``shell_call_output``). ``status``: completed, failed (the
    item failed or holds an error) or incomplete (it never finished: a cut or cancelled stream,
    an incomplete response). ``start_ns``/``end_ns`` lie within the call; ``timed`` says they
    are the item's own stream events, not the call's.
    """

    type: str
    name: str
    server: bool
    status: str
    item_id: str | None
    call_id: str | None
    output_index: int
    start_ns: int
    end_ns: int
    timed: bool
    item: Mapping[str, Any]
    result: Mapping[str, Any] | None = None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def tool_runs(response: Mapping[str, Any] | None, times: Mapping[int, ItemTimes],
              start_ns: int, end_ns: int, final: bool) -> list[ToolRun]:
    """The tool call items of ``response``'s output, server-run and client-run.

    ``times``: the stream's item times by output index (empty for a non-stream body, whose
    tool calls then span the whole call); ``final``: the response is the upstream's own final
    object, not one rebuilt from a stream that stopped early (whose unfinished items are
    incomplete). A call the upstream answered with an output item of its own ends with it.
    """
    output = items_of((response or {}).get("output"))
    outputs = call_outputs(output)
    runs = []
    for index, item in enumerate(output):
        kind = item_type(item)
        if kind not in TOOL_TYPES:
            continue
        server = not handed_to_client(item, outputs)
        answer = _answer(output, index, outputs) if server else None
        timing = times.get(index)
        last = times.get(answer) if answer is not None else timing
        start = _within(timing.start if timing else None, start_ns, end_ns, start_ns)
        end = _within(last.end if last else None, start, end_ns, end_ns)
        ended = final or (last is not None and last.end is not None)
        result = output[answer] if answer is not None else None
        status = _status(item, ended)
        if result is not None and status != FAILED:
            status = _status(result, ended)
        runs.append(ToolRun(
            type=str(kind), name=call_name_of(item), server=server, status=status,
            item_id=str_or_none(item.get("id")), call_id=call_id_of(item), output_index=index,
            start_ns=start, end_ns=end, timed=timing is not None and timing.start is not None,
            item=item, result=result))
    return runs


def _answer(output: list[Any], index: int, outputs: Mapping[str, int]) -> int | None:
    """The index of the output item answering the call at ``index``: by call id, else (a
    call without one) the item right after it when that is its kind's output."""
    item = output[index]
    call_id = str_or_none(item.get("call_id"))
    if call_id is not None:
        return outputs.get(call_id)
    kind = str(item_type(item))
    after = output[index + 1] if index + 1 < len(output) else None
    if item_type(after) in (f"{kind}_output", f"{kind.removesuffix('_call')}_output") \
            and not str_or_none(mapping(after).get("call_id")):
        return index + 1
    return None


def _within(at: int | None, low: int, high: int, default: int) -> int:
    return default if at is None else min(max(at, low), high)


def _status(item: Mapping[str, Any], ended: bool) -> str:
    status = item.get("status")
    if status == FAILED or item.get("error") not in (None, ""):
        return FAILED
    if status in (None, COMPLETED) and ended:
        return COMPLETED
    return INCOMPLETE  # in_progress, searching, ... or never done: the call stopped first


def asked_calls(runs: list[ToolRun]) -> list[str]:
    """The ids of the calls handed to the client, which a later request answers."""
    return [run.call_id for run in runs if not run.server and run.call_id]


def answered_calls(request: Mapping[str, Any] | None) -> list[str]:
    """The call ids a request's input answers (function outputs, MCP approvals, ...)."""
    return [call_id for item in items_of((request or {}).get("input"))
            if (call_id := answered_call(item))]


# ---- TOOL span attributes -------------------------------------------------------------------

def tool_attributes(run: ToolRun, request: Mapping[str, Any] | None,
                    response: Mapping[str, Any] | None) -> Attributes:
    """OpenInference TOOL span attributes of a server-run call: its name, id, description and
    parameter schema where the exchange tells them (MCP), its input (the query, the code, the
    MCP arguments) and its output (results, outputs, error, images)."""
    item = run.item
    attrs: Attributes = {
        SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.TOOL.value,
        SpanAttributes.TOOL_NAME: run.name,
        TOOL_TYPE: run.type,
    }
    if run.item_id:
        attrs[SpanAttributes.TOOL_ID] = run.item_id
    label = str_or_none(item.get("server_label"))
    if label:
        attrs[MCP_SERVER_LABEL] = label
        attrs.update(_mcp_description(run, label, request, response))
    found = builtin_call(item)
    if found is not None:
        call, result = found
        if call.arguments is not None:
            attrs[SpanAttributes.INPUT_VALUE] = call.arguments
            attrs[SpanAttributes.INPUT_MIME_TYPE] = _JSON
        if result is None and run.type == "web_search_call":
            result = mapping(item.get("action")).get("sources")  # with `include` only
        if run.result is not None:
            result = tool_output(run.result)
        if result is not None:
            text = result if isinstance(result, str) else dumps(result)
            attrs[SpanAttributes.OUTPUT_VALUE] = text
            attrs[SpanAttributes.OUTPUT_MIME_TYPE] = _TEXT if isinstance(result, str) else _JSON
    attrs.update(flatten_images(SpanAttributes.OUTPUT_IMAGES, generated_images([item])))
    return attrs


def genai_tool_attributes(run: ToolRun) -> Attributes:
    """The OTel GenAI ``execute_tool`` attributes of a server-run call (opt-in, as on the LLM
    span): a file search reads a datastore, every other built-in tool is an extension."""
    attrs: Attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": run.name,
        "gen_ai.tool.type": "datastore" if run.type == "file_search_call" else "extension",
    }
    if run.item_id:
        attrs["gen_ai.tool.call.id"] = run.item_id
    return attrs


def _mcp_description(run: ToolRun, label: str, request: Mapping[str, Any] | None,
                     response: Mapping[str, Any] | None) -> Attributes:
    """An MCP tool's description and input schema from a listing of its server's tools (in
    this response or the request's input); the server's own description for a listing."""
    if run.type == "mcp_list_tools":
        for tool in items_of((request or {}).get("tools")):
            if tool.get("type") == "mcp" and tool.get("server_label") == label:
                text = str_or_none(tool.get("server_description"))
                return {SpanAttributes.TOOL_DESCRIPTION: text} if text else {}
        return {}
    name = run.item.get("name")
    for tool in _listed_tools(label, request, response):
        if tool.get("name") == name:
            out: Attributes = {}
            text = str_or_none(tool.get("description"))
            if text:
                out[SpanAttributes.TOOL_DESCRIPTION] = text
            if tool.get("input_schema") is not None:
                out[SpanAttributes.TOOL_PARAMETERS] = dumps(tool["input_schema"])
            return out
    return {}


def _listed_tools(label: str, request: Mapping[str, Any] | None,
                  response: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    for items in ((response or {}).get("output"), (request or {}).get("input")):
        for item in items_of(items):
            if item_type(item) == "mcp_list_tools" and item.get("server_label") == label:
                yield from (mapping(tool) for tool in items_of(item.get("tools")))
