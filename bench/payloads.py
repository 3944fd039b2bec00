"""Request bodies for the benchmark scenarios: deterministic, built once, sent as raw bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODEL = "demo"
# LiteLLM refuses requests without its master key; the demo upstream and otel-responses ignore
# or forward it, so every configuration receives byte-identical requests.
MASTER_KEY = "sk-bench-master-7f3a"

_WORDS = ["observability", "proxy", "latency", "stream", "token", "span", "export",
          "upstream", "client", "request", "response", "header", "payload", "budget",
          "percentile", "throughput", "trace", "metric"]


def _prose(seed: int, n_words: int) -> str:
    return " ".join(_WORDS[(seed * 7 + i * 3) % len(_WORDS)] for i in range(n_words))


def small() -> dict[str, Any]:
    return {"model": MODEL, "input": "Hello there, how are you today?"}


def _tool(i: int) -> dict[str, Any]:
    props = {f"arg_{j}": {"type": "string", "description": _prose(i + j, 12)} for j in range(6)}
    return {"type": "function", "name": f"tool_{i:02d}", "description": _prose(i, 40),
            "parameters": {"type": "object", "properties": props, "required": ["arg_0"]}}


def large(target_bytes: int = 100_000) -> dict[str, Any]:
    """A long agent conversation with many tools, padded to ~``target_bytes`` of JSON.

    It ends with a ``function_call_output``, so the demo model answers with a text message
    (the common turn shape of a coding agent); every turn repeats the whole history.
    """
    tools = [_tool(i) for i in range(40)]
    items: list[dict[str, Any]] = [{"role": "developer", "content": _prose(0, 600)}]
    turn = 0
    while True:
        turn += 1
        items.append({"role": "user", "content": _prose(turn, 120)})
        items.append({"type": "function_call", "call_id": f"call_{turn:04d}",
                      "name": f"tool_{turn % 40:02d}", "arguments": json.dumps(
                          {"arg_0": _prose(turn, 8)})})
        items.append({"type": "function_call_output", "call_id": f"call_{turn:04d}",
                      "output": _prose(turn + 1, 90)})
        body = {"model": MODEL, "input": items, "tools": tools}
        if len(json.dumps(body, separators=(",", ":"))) >= target_bytes:
            return body
        items.append({"role": "assistant", "content": [
            {"type": "output_text", "text": _prose(turn + 2, 60)}]})


def stream(fields: int = 50) -> dict[str, Any]:
    """A stream whose reply is JSON with ``fields`` string properties: 4 * fields + 1 deltas.

    The demo splits JSON output into alternating word / non-word runs, so a JSON reply always
    has an odd number of deltas; 50 fields give 201, the nearest to 200.
    """
    names = [f"field_{i}" for i in range(fields)]
    schema = {"type": "object", "properties": {n: {"type": "string"} for n in names},
              "required": names}
    return {"model": MODEL, "input": "Fill in the form.", "stream": True,
            "text": {"format": {"type": "json_schema", "name": "form", "schema": schema}}}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    body: bytes
    stream: bool
    pause_s: float = 0.0  # each connection waits this long after a reply before the next
    levels: tuple[int, ...] | None = None  # concurrency levels it runs at; None: every one

    def runs_at(self, levels: list[int]) -> list[int]:
        """The requested concurrency levels this scenario is measured at."""
        return [c for c in levels if self.levels is None or c in self.levels]

    def spec(self) -> dict[str, Any]:
        """What the report needs to know besides the title (kept in results.json)."""
        return {"stream": self.stream, "pause_ms": self.pause_s * 1000,
                "levels": list(self.levels) if self.levels is not None else None}


def scenarios() -> dict[str, Scenario]:
    def enc(value: dict[str, Any]) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    big = enc(large())
    streamed = enc(stream())
    return {
        "small": Scenario("small", "non-stream, small request", enc(small()), False),
        "large": Scenario("large", f"non-stream, {len(big) // 1000} KB request", big, False),
        "stream": Scenario("stream", "stream, 201 deltas", streamed, True),
        # The same stream with the machine idle between requests: at c=1 in a closed loop the
        # load generator, the upstream and the proxy contend for 2 cores. Spacing removes that
        # but runs every hop cold instead; ttft_trace.py measures the proxy's own share.
        "spaced": Scenario("spaced", "stream, 201 deltas, one at a time, 5 ms apart",
                           streamed, True, pause_s=0.005, levels=(1,)),
    }


def http_request(host: str, port: int, body: bytes, path: str = "/v1/responses") -> bytes:
    """The exact bytes of one keep-alive POST."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body
