"""The real Codex CLI (npm ``@openai/codex``) through the proxy, in a loopback-only namespace.

Each test runs ``codex exec --json`` against a proxy process in front of the demo upstream, all
inside one ``unshare -n`` namespace (see :mod:`tests.e2e`), and checks Codex's own output, what
the upstream received and answered, and the spans the proxy exported over OTLP, against each
other.

Codex always sends ``tool_choice: "auto"`` with its tools, and the demo model answers any request
holding a top-level ``function`` tool with a ``function_call``. The plain turn therefore turns off
Codex's function tools by configuration, which leaves the ``namespace`` and ``web_search`` tools
(not ``function`` tools, so the demo answers with text); the tool turn keeps all of them and
names ``exec_command`` in the prompt, so the demo asks Codex to run ``demo``, a script on Codex's
PATH that prints a random marker only the real tool run can produce.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.e2e import SIGNATURE, CodexRun, Exchange, run_codex
from tests.otlp import ExportedSpan
from tests.recordings import CODEX_DIR, codex_request
from tests.spans import indexed, message_text, tool_calls

# Codex settings that leave only non-function tools: a plain text turn from the demo model.
NO_FUNCTION_TOOLS = ("--disable", "shell_tool", "--disable", "unified_exec", "--disable",
                     "view_image", "--disable", "goals",
                     "-c", "tools.experimental_request_user_input={enabled=false}")


def _request_roles(request: Mapping[str, Any]) -> list[str]:
    """The message roles the input implies, derived from the request body alone."""
    roles = []
    for item in request["input"]:
        kind = item.get("type", "message")
        roles.append({"message": item.get("role"), "function_call": "assistant",
                      "function_call_output": "tool"}[kind])
    return roles


def _item_text(item: Mapping[str, Any]) -> str:
    return "".join(part["text"] for part in item["content"])


def _output_text(response: Mapping[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def _check_common(run: CodexRun, effort: str) -> None:
    """What every Codex turn must show: isolation, usage, tokens, session, prompt, tools."""
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.interfaces == ["lo"], "Codex must run in a loopback-only network namespace"
    assert len(run.spans) == len(run.exchanges) >= 1
    # Codex reports the turn's usage: the sum of what the upstream reported, response by response.
    assert run.usage["input_tokens"] == sum(x.usage["input_tokens"] for x in run.exchanges)
    assert run.usage["output_tokens"] == sum(x.usage["output_tokens"] for x in run.exchanges)
    assert run.usage["cached_input_tokens"] == 0

    spans = sorted(run.spans, key=lambda s: _response_order(run.exchanges, s))
    for exchange, span in zip(run.exchanges, spans, strict=True):
        request, attrs = exchange.request, span.attributes
        assert request["stream"] is True and request["store"] is False
        assert span.name == "chat demo" and attrs["openinference.span.kind"] == "LLM"
        assert attrs["llm.model_name"] == "demo"
        assert attrs["gen_ai.response.id"] == exchange.response["id"]
        assert attrs["llm.token_count.prompt"] == exchange.usage["input_tokens"]
        assert attrs["llm.token_count.completion"] == exchange.usage["output_tokens"]
        assert attrs["llm.token_count.total"] == exchange.usage["total_tokens"]
        # Codex's `session-id` header (its thread id) groups the turn's spans into one session.
        assert exchange.headers["session-id"] == run.thread_id
        assert attrs["session.id"] == run.thread_id
        # The span's context is what the upstream was told to continue.
        assert exchange.headers["traceparent"].startswith(f"00-{span.trace_id}-{span.span_id}-")
        # Reasoning settings and Codex's other parameters, as sent.
        params = json.loads(attrs["llm.invocation_parameters"])
        assert params["reasoning"] == {"effort": effort, "summary": "auto"} == request["reasoning"]
        assert params["include"] == ["reasoning.encrypted_content"]
        assert params["prompt_cache_key"] == run.thread_id
        assert params["tool_choice"] == "auto" and params["parallel_tool_calls"] is True
        # The ~17 KB system prompt arrives as the first input item, a `developer` message.
        first = request["input"][0]
        assert first["role"] == "developer" and len(_item_text(first)) > 10_000
        messages = indexed(attrs, "llm.input_messages")
        assert [m["message.role"] for m in messages] == _request_roles(request)
        assert message_text(messages[0]) == _item_text(first)
        assert "Codex CLI" in message_text(messages[0])
        # Every tool Codex offered, verbatim, in order.
        tools = [json.loads(t["tool.json_schema"]) for t in indexed(attrs, "llm.tools")]
        assert tools == request["tools"]
        kinds = [t["type"] for t in tools]
        assert "namespace" in kinds and "web_search" in kinds
        namespace = next(t for t in tools if t["type"] == "namespace")
        assert namespace["tools"] and all(t["type"] == "function" for t in namespace["tools"])


def _response_order(exchanges: list[Exchange], span: ExportedSpan) -> int:
    ids = [x.response["id"] for x in exchanges]
    return ids.index(span.attributes["gen_ai.response.id"])


def test_plain_turn(tmp_path: Path) -> None:
    prompt = "Say hello to the otel-responses proxy"
    run = run_codex(tmp_path, prompt, *NO_FUNCTION_TOOLS, "-c", 'model_reasoning_effort="low"')
    _check_common(run, effort="low")
    (exchange,) = run.exchanges
    assert {t["type"] for t in exchange.request["tools"]} == {"namespace", "web_search"}
    assert exchange.request["input"][-1]["content"] == [{"type": "input_text", "text": prompt}]
    # What the demo model says to a plain prompt, and Codex shows it as the final message.
    expected = f'You said: "{prompt}". {SIGNATURE}'
    assert run.final_text == expected == _output_text(exchange.response)
    assert not run.items("command_execution")
    (span,) = run.spans
    assert span.attributes["llm.finish_reason"] == "stop"
    (output,) = indexed(span.attributes, "llm.output_messages")
    assert output["message.role"] == "assistant" and message_text(output) == expected


def test_tool_turn_runs_a_command_and_sends_its_output_back(tmp_path: Path) -> None:
    marker = f"e2e-marker-{uuid.uuid4().hex}"
    run = run_codex(tmp_path, "Use exec_command to run the demo command", "-c",
                    'model_reasoning_effort="high"', marker=marker)
    _check_common(run, effort="high")
    first, second = run.exchanges
    assert len(first.request["tools"]) >= 9
    assert {"exec_command", "multi_agent_v1"} <= {t.get("name") for t in first.request["tools"]}
    if CODEX_DIR.is_dir():  # the pinned Codex still sends what the captured fixture shows
        captured = codex_request()
        assert set(first.request) == set(captured)
        assert first.request["tools"] == captured["tools"]

    # The upstream asked for exec_command; Codex really ran it (only the run knows the marker).
    (call,) = first.response["output"]
    assert (call["type"], call["name"], json.loads(call["arguments"])) == (
        "function_call", "exec_command", {"cmd": "demo"})
    (command,) = run.items("command_execution")
    assert command["command"].endswith(" demo") and command["exit_code"] == 0
    assert command["aggregated_output"].strip() == marker

    # The follow-up replays the history with the call and its output, linked by call_id.
    *_, sent_call, sent_output = second.request["input"]
    assert sent_call["type"] == "function_call" and sent_call["call_id"] == call["call_id"]
    assert sent_output["type"] == "function_call_output"
    assert sent_output["call_id"] == call["call_id"] and marker in sent_output["output"]
    assert run.final_text == _output_text(second.response)
    assert run.final_text.startswith("The tool exec_command returned: ")
    assert marker in run.final_text and run.final_text.endswith(SIGNATURE)

    by_response = {s.attributes["gen_ai.response.id"]: s for s in run.spans}
    call_span = by_response[first.response["id"]].attributes
    assert call_span["llm.finish_reason"] == "tool_call"
    (out,) = indexed(call_span, "llm.output_messages")
    assert tool_calls(out) == [("exec_command", call["arguments"])]
    assert out["message.tool_calls.0.tool_call.id"] == call["call_id"]

    follow_up = by_response[second.response["id"]].attributes
    *_, assistant, tool = indexed(follow_up, "llm.input_messages")
    assert assistant["message.role"] == "assistant"
    assert tool_calls(assistant) == [("exec_command", call["arguments"])]
    assert assistant["message.tool_calls.0.tool_call.id"] == call["call_id"]
    assert tool["message.role"] == "tool" and tool["message.tool_call_id"] == call["call_id"]
    assert tool["message.content"] == sent_output["output"]
    (answer,) = indexed(follow_up, "llm.output_messages")
    assert message_text(answer) == run.final_text
