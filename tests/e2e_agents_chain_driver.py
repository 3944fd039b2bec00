"""Run one openai-agents agent with a function tool against BASE_URL, chaining its turns with
``previous_response_id`` (``auto_previous_response_id``), then continue the conversation in a
second run from its last response; print what it saw as JSON.

Run by the openai-agents virtualenv's Python: ``python tests/e2e_agents_chain_driver.py
BASE_URL``. Imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import agents
from openai import AsyncOpenAI

TOOL_CALLS: list[str] = []


@agents.function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    TOOL_CALLS.append(city)
    return f"It is sunny in {city}."


async def main(base_url: str) -> dict[str, Any]:
    agents.set_tracing_disabled(True)
    agents.set_default_openai_api("responses")
    agents.set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="sk-e2e",
                                                 max_retries=0), use_for_tracing=False)
    agent = agents.Agent(name="weather", instructions="You answer questions about the weather.",
                  tools=[get_weather], model="demo")
    first = await agents.Runner.run(agent, "Call get_weather for Paris, please.",
                             auto_previous_response_id=True)
    later = await agents.Runner.run(agent, "Thanks, that is all.",
                             previous_response_id=first.last_response_id)
    return {"outputs": [first.final_output, later.final_output], "tool_calls": TOOL_CALLS,
            "responses": [r.response_id for r in first.raw_responses + later.raw_responses]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
