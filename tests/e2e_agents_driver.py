"""Run one openai-agents agent with a function tool against BASE_URL; print what it saw as JSON.

Run by the openai-agents virtualenv's Python (not the project's):
``python tests/e2e_agents_driver.py BASE_URL run|stream [MODEL]``. Imports nothing from the
project. With a MODEL other than ``demo`` (a real model), the first turn forces the tool call:
tiny models (and llama.cpp's server) call tools only when told to; the SDK then lets the model
choose again, and it answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

INSTRUCTIONS = "You answer questions about the weather."
PROMPT = "Call get_weather for Paris, please."
TOOL_CALLS: list[dict[str, Any]] = []


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    TOOL_CALLS.append({"city": city})
    return f"It is sunny in {city} (tool call {len(TOOL_CALLS)})."


def _usage(usage: Any) -> dict[str, int]:
    return {"requests": usage.requests, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "total_tokens": usage.total_tokens}


async def main(base_url: str, mode: str, model: str) -> dict[str, Any]:
    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="sk-e2e", max_retries=0),
                              use_for_tracing=False)
    settings = ModelSettings() if model == "demo" else ModelSettings(tool_choice="get_weather")
    agent = Agent(name="weather", instructions=INSTRUCTIONS, tools=[get_weather], model=model,
                  model_settings=settings)
    events: list[str] = []
    if mode == "stream":
        streamed = Runner.run_streamed(agent, PROMPT)
        async for event in streamed.stream_events():
            events.append(event.data.type if event.type == "raw_response_event" else event.type)
        result: Any = streamed
    else:
        result = await Runner.run(agent, PROMPT)
    return {
        "final_output": result.final_output,
        "usage": _usage(result.context_wrapper.usage),
        "responses": [{"id": r.response_id, "usage": _usage(r.usage)}
                      for r in result.raw_responses],
        "items": [{"type": item.type, "raw": _raw(item)} for item in result.new_items],
        "tool_calls": TOOL_CALLS,
        "events": events,
        "instructions": INSTRUCTIONS,
        "prompt": PROMPT,
    }


def _raw(item: Any) -> Any:
    raw = item.raw_item
    return raw.model_dump(mode="json") if hasattr(raw, "model_dump") else raw


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:3], (sys.argv[3:] or ["demo"])[0]))))
