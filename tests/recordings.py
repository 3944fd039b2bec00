"""Find the shared recorded Responses and Chat Completions traffic; skip where absent, fail
under CI=true."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
RESPONSES_DIR = SHARED / "fixtures" / "responses"
CODEX_DIR = SHARED / "fixtures" / "codex"
CHAT_DIR = SHARED / "fixtures" / "chat"


@dataclass(frozen=True)
class Recording:
    name: str
    request_method: str
    request_path: str
    request_headers: dict[str, str]
    request_body: Any
    status: int
    headers: dict[str, str]
    body: str
    source_url: str | None = None  # where it was recorded (its host names the provider)

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")

    @property
    def is_sse(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


def _require(path: Path) -> Path:
    if not path.is_dir():
        reason = f"shared fixtures not found at {path} (clone without ../shared)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " -- required under CI=true")
        pytest.skip(reason)
    return path


def _load(path: Path) -> Recording:
    raw = json.loads(path.read_text())
    req, resp = raw["request"], raw["response"]
    return Recording(
        name=path.stem,
        request_method=req.get("method", "POST"),
        request_path=req.get("path", "/v1/responses"),
        request_headers=req.get("headers") or {},
        request_body=req.get("body"),
        status=resp["status"],
        headers=resp.get("headers") or {},
        body=resp["body"],
        source_url=(raw.get("source") or {}).get("original_url"),
    )


def load_recordings(folder: Path = RESPONSES_DIR) -> list[Recording]:
    """All recordings in ``folder``, sorted by name (an empty list when ../shared is absent)."""
    return [_load(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def recordings_params(where: Callable[[Recording], bool] | None = None,
                      folder: Path = RESPONSES_DIR) -> list[Any]:
    """Parametrize over recordings (those ``where`` accepts); a single skipping/failing param
    when the folder is absent."""
    recs = [r for r in load_recordings(folder) if where is None or where(r)]
    if recs:
        return [pytest.param(r, id=r.name) for r in recs]
    return [pytest.param(None, id="no-shared-fixtures")]


def need(recording: Recording | None, folder: Path = RESPONSES_DIR) -> Recording:
    """Call at the top of a test parametrized by recordings_params()."""
    _require(folder)
    assert recording is not None
    return recording


def chat_recording(name: str) -> Recording:
    """One recorded Chat Completions exchange, by file name without ``.json``."""
    return _load(_require(CHAT_DIR) / f"{name}.json")


def codex_request() -> dict[str, Any]:
    return json.loads((_require(CODEX_DIR) / "exec_turn1_request.json").read_text())


TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def sse_payloads(body: str) -> list[dict[str, Any]]:
    """A plain reference parse of a recorded stream: every JSON ``data:`` payload in order."""
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in block.split("\n")
                         if line.startswith("data:"))
        if data and data != "[DONE]":
            out.append(json.loads(data))
    return out


def final_response(rec: Recording) -> dict[str, Any] | None:
    """The recording's final Response object, or None for an error or an unfinished stream."""
    if rec.status >= 400:
        return None
    if rec.is_sse:
        terminal = [e for e in sse_payloads(rec.body) if e.get("type") in TERMINAL]
        return terminal[-1]["response"] if terminal else None
    return json.loads(rec.body)


# Input roles each item type should produce, written down plainly from the Responses API
# rather than read from the code under test.
ITEM_TYPE_ROLES = {"function_call": "assistant", "custom_tool_call": "assistant",
                   "reasoning": "assistant", "function_call_output": "tool",
                   "custom_tool_call_output": "tool"}


def expected_input_roles(body: Mapping[str, Any]) -> list[str]:
    """The roles of a request's input messages, in order: instructions, then each item."""
    roles = ["system"] if body.get("instructions") else []
    items = body.get("input")
    if isinstance(items, str):
        return [*roles, "user"]
    for item in items or []:
        roles.append(item["role"] if item.get("type", "message") == "message"
                     else ITEM_TYPE_ROLES[item["type"]])
    return roles


@dataclass(frozen=True)
class ChatOutcome:
    """What a recorded chat completion (streamed or not) says, read plainly from choice 0:
    the reference the adapter's translation is compared with."""

    text: str
    reasoning: str
    refusal: str
    tool_calls: list[tuple[str | None, str, str]]  # (id, name, arguments) by tool-call index
    usage: dict[str, Any] | None  # the chat usage object last reported, if any
    finish_reason: str | None
    error: bool  # an in-band error chunk


def chat_outcome(rec: Recording) -> ChatOutcome:
    if not rec.is_sse:
        body = json.loads(rec.body)
        choice = body["choices"][0]
        message = choice["message"]
        return ChatOutcome(
            text=message.get("content") or "",
            reasoning=message.get("reasoning_content") or message.get("reasoning") or "",
            refusal=message.get("refusal") or "",
            tool_calls=[(c["id"], c["function"]["name"], c["function"]["arguments"])
                        for c in message.get("tool_calls") or []],
            usage=body.get("usage"), finish_reason=choice.get("finish_reason"), error=False)
    text, reasoning, refusal = [], [], []
    calls: dict[int, list[Any]] = {}
    usage, finish, error = None, None, False
    for chunk in sse_payloads(rec.body):
        if chunk.get("error"):
            error = True
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage") or usage
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
            refusal.append(delta.get("refusal") or "")
            for frag in delta.get("tool_calls") or []:
                call = calls.setdefault(frag["index"], [None, "", ""])
                call[0] = call[0] or frag.get("id")
                call[1] = call[1] or (frag.get("function") or {}).get("name") or ""
                call[2] += (frag.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
        if error:
            break
    return ChatOutcome("".join(text), "".join(reasoning), "".join(refusal),
                       [tuple(calls[i]) for i in sorted(calls)],  # type: ignore[misc]
                       usage, finish, error)
