"""The demo model over the Chat Completions API: a ``POST /v1/chat/completions`` request is read
as the Responses request it stands for, answered by :func:`otel_responses.demo.model.decide`, and
rendered as a ``chat.completion`` or as the ``chat.completion.chunk`` stream OpenAI sends.

Beyond the shared rules, for Chat Completions only:

- Parallel tool calls: when the shared rules call a tool, ``tool_choice`` forces none, and the
  last user text names several function tools (``parallel_tool_calls`` not false), one call per
  named tool, in the order of ``tools``.
- Reasoning: with ``reasoning_effort`` set (and not ``"none"``), a short deterministic reasoning
  text is streamed first as ``reasoning_content`` deltas (``message.reasoning_content`` when not
  streamed) and counted in ``completion_tokens_details.reasoning_tokens``.
- ``max_completion_tokens`` (else ``max_tokens``) bounds every delta, reasoning first; cut short,
  the finish reason is ``length``.
- Usage: ``prompt_tokens`` counts the words of every message; ``completion_tokens`` the deltas.
  Streamed, it is sent only in a final ``choices: []`` chunk when
  ``stream_options.include_usage`` is true (and then every chunk carries ``"usage": null``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from otel_responses.demo import model
from otel_responses.demo.errors import ApiError, invalid_type, missing
from otel_responses.demo.model import Json, dumps, new_id

FinishReason = Literal["stop", "length", "tool_calls"]
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DONE = b"data: [DONE]\n\n"


# ---- validating and reading the request ----------------------------------------------------

def _positive_int(request: Json, key: str) -> None:
    value = request.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_type(key, "an integer", value)
    if value < 1:
        raise ApiError(400, f"Invalid '{key}': integer below minimum value. Expected a value >= "
                            f"1, but got {value} instead.", key, "integer_below_min_value")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum "
                            "length 1, but got an empty array instead.", "messages",
                       "empty_array")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_type(where, "an object", message)
        if message.get("role") is None:
            raise missing(f"{where}.role")
        if message["role"] not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            raise ApiError(400, f"Invalid value: '{message['role']}'. Supported values are: "
                                f"{supported}.", f"{where}.role", "invalid_value")
        if message["role"] == "tool" and message.get("tool_call_id") is None:
            raise missing(f"{where}.tool_call_id")


def _validate_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise invalid_type("tools", "an array", tools)
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid_type(f"tools[{index}]", "an object", tool)
        function = tool.get("function")
        if tool.get("type") == "function" and not (isinstance(function, dict)
                                                   and isinstance(function.get("name"), str)):
            raise missing(f"tools[{index}].function.name")


def validate(request: Json) -> None:
    """Raise the ApiError OpenAI answers for a malformed chat completion request."""
    for key in ("model", "messages"):
        if request.get(key) is None:
            raise missing(key)
    if not isinstance(request["model"], str):
        raise invalid_type("model", "a string", request["model"])
    _validate_messages(request["messages"])
    if request.get("tools") is not None:
        _validate_tools(request["tools"])
    for key in ("stream", "parallel_tool_calls"):
        if request.get(key) is not None and not isinstance(request[key], bool):
            raise invalid_type(key, "a boolean", request[key])
    if request.get("stream_options") is not None and not request.get("stream"):
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is "
                            "enabled.", "stream_options", "invalid_value")
    for key in ("max_completion_tokens", "max_tokens", "n"):
        _positive_int(request, key)
    if request.get("n", 1) != 1:
        raise ApiError(400, "The demo model answers with one choice: 'n' must be 1.", "n",
                       "unsupported_value")
    if request.get("tool_choice") not in (None, "none", "auto") and not request.get("tools"):
        raise ApiError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                            "'tools' are specified.", "tool_choice", "invalid_value")


def _message_items(message: Json) -> list[Json]:
    """One chat message as Responses input items."""
    role = message["role"]
    if role == "tool":
        return [{"type": "function_call_output", "call_id": message["tool_call_id"],
                 "output": message.get("content")}]
    items = []
    if message.get("content") is not None:
        items.append({"type": "message", "role": role, "content": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            items.append({"type": "function_call", "call_id": call.get("id"),
                          "name": function.get("name"), "arguments": function.get("arguments")})
    return items


def _tool_choice(value: Any) -> Any:
    """``{"type": "function", "function": {"name": N}}`` → ``{"type": "function", "name": N}``."""
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        return {"type": "function", "name": value["function"].get("name")}
    return value


def _text_format(response_format: Any) -> Json | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        return {"type": "json_schema", "schema": spec.get("schema") if isinstance(spec, dict)
                else None}
    return {"type": response_format.get("type")}


def responses_view(request: Json) -> Json:
    """The Responses request the demo model's rules read (a validated chat request)."""
    tools = [{"type": "function", "name": t["function"]["name"],
              "parameters": t["function"].get("parameters")}
             for t in request.get("tools") or [] if t.get("type") == "function"]
    view: Json = {"model": request["model"],
                  "input": [i for m in request["messages"] for i in _message_items(m)],
                  "tools": tools, "tool_choice": _tool_choice(request.get("tool_choice")),
                  "parallel_tool_calls": request.get("parallel_tool_calls")}
    text_format = _text_format(request.get("response_format"))
    if text_format is not None:
        view["text"] = {"format": text_format}
    return view


# ---- deciding the answer -------------------------------------------------------------------

@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    pieces: tuple[str, ...]  # the arguments' deltas

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Answer:
    """What the demo model answers a chat request, split into the deltas a stream sends."""

    reasoning: tuple[str, ...]
    content: tuple[str, ...]  # empty when the answer is tool calls
    calls: tuple[ToolCall, ...]
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.reasoning) + len(self.content) + sum(len(c.pieces) for c in self.calls)


def _asks_reasoning(request: Json) -> bool:
    return request.get("reasoning_effort") not in (None, "none")


def _calls(view: Json, first: model.Reply) -> list[model.Reply]:
    """The tool calls to make: ``first``, or one per tool the user named (parallel calls)."""
    if isinstance(view["tool_choice"], dict) or view.get("parallel_tool_calls") is False:
        return [first]
    named = model.named_tools(model.function_tools(view),
                              model.last_user_text(model.input_items(view)))
    if len(named) < 2:
        return [first]
    return [model.decide({**view, "tool_choice": {"type": "function", "name": t["name"]}})
            for t in named]


def _take(pieces: tuple[str, ...], budget: list[int]) -> tuple[str, ...]:
    """The first pieces that fit the remaining ``budget`` (a one-item list, spent in place)."""
    kept = pieces[:budget[0]]
    budget[0] -= len(kept)  # never below 0: pieces[:0] keeps nothing
    return kept


def answer(request: Json, seed: str, n: int) -> Answer:
    """Apply the shared rules and this module's to a validated chat request."""
    view = responses_view(request)
    reply = model.decide(view)
    calls = _calls(view, reply) if reply.kind == "function_call" else []
    if _asks_reasoning(request):
        subject = (f"the request offers tools, so I call {', '.join(c.name for c in calls)}"
                   if calls else "I answer by quoting the last user message")
        reasoning = model.split_words(f"Thinking it over: {subject}.")
    else:
        reasoning = ()
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    total = len(reasoning) + sum(len(r.pieces) for r in calls or [reply])
    cut = isinstance(limit, int) and limit < total
    budget = [limit if cut else total]
    reasoning = _take(reasoning, budget)
    content = () if calls else _take(reply.pieces, budget)
    tool_calls = [ToolCall(new_id("call_", seed, n, f"call{i}", 24), r.name,
                           _take(r.pieces, budget)) for i, r in enumerate(calls)]
    # A call the budget left no argument at all is not sent.
    tool_calls = [c for c in tool_calls if c.pieces]
    finish: FinishReason = "length" if cut else "tool_calls" if calls else "stop"
    return Answer(reasoning, content, tuple(tool_calls), finish)


# ---- rendering -----------------------------------------------------------------------------

def usage(prompt_tokens: int, answer: Answer) -> Json:
    completion = answer.completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": len(answer.reasoning),
                                          "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


@dataclass(frozen=True)
class Rendered:
    """One chat completion, as a JSON body (``completion``) or as SSE (``frames``)."""

    request: Json
    answer: Answer
    id: str
    created: int
    fingerprint: str

    def _head(self, kind: str) -> Json:
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.request["model"]}

    def usage(self) -> Json:
        return usage(model.count_input_tokens(responses_view(self.request)), self.answer)

    def completion(self) -> Json:
        answer = self.answer
        message: Json = {"role": "assistant",
                         "content": None if answer.calls else "".join(answer.content),
                         "refusal": None, "annotations": []}
        if answer.reasoning:
            message["reasoning_content"] = "".join(answer.reasoning)
        if answer.calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in answer.calls]
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": answer.finish_reason}],
                "usage": self.usage(), "service_tier": "default",
                "system_fingerprint": self.fingerprint}

    @property
    def paced(self) -> range:
        """Frame indices preceded by the token delay: every delta after the first."""
        return range(2, len(self._deltas()) + 1)

    def _deltas(self) -> list[Json]:
        answer = self.answer
        deltas: list[Json] = [{"reasoning_content": p} for p in answer.reasoning]
        deltas += [{"content": p} for p in answer.content]
        for index, call in enumerate(answer.calls):
            deltas.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                           "function": {"name": call.name, "arguments": ""}}]})
            deltas += [{"tool_calls": [{"index": index, "function": {"arguments": p}}]}
                       for p in call.pieces]
        return deltas

    def frames(self) -> list[bytes]:
        """Every SSE frame of the stream, ``data: [DONE]`` last."""
        options = self.request.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = {**self._head("chat.completion.chunk"), "service_tier": "default",
                "system_fingerprint": self.fingerprint}
        # Every chunk differs only in its choice: splice it into pre-encoded JSON.
        prefix = f"data: {dumps(head)[:-1]},\"choices\":[{{\"index\":0,\"delta\":"
        suffix = ("}]" + (',"usage":null' if with_usage else "") + "}\n\n")
        pending = ',"logprobs":null,"finish_reason":null'

        def chunk(delta: Json, finish: str = pending) -> bytes:
            return f"{prefix}{dumps(delta)}{finish}{suffix}".encode()

        first: Json = ({"role": "assistant", "content": None} if self.answer.calls
                       else {"role": "assistant", "content": "", "refusal": None})
        frames = [chunk(first), *map(chunk, self._deltas()),
                  chunk({}, f',"logprobs":null,"finish_reason":"{self.answer.finish_reason}"')]
        if with_usage:
            frames.append(f"data: {dumps({**head, 'choices': [], 'usage': self.usage()})}\n\n"
                          .encode())
        frames.append(DONE)
        return frames


def render(request: Json, answer: Answer, seed: str, n: int, created: int) -> Rendered:
    return Rendered(request, answer, new_id("chatcmpl-", seed, n, "chatcmpl", 29), created,
                    new_id("fp_", seed, 0, "fingerprint", 10))
