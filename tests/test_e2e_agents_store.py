"""The real openai-agents SDK chaining its turns with ``previous_response_id`` through adapter
mode (the demo's chat upstream behind it): the SDK sends only what is new, the stored chain
gives the chat server the whole conversation, a function call included."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.demo.app import create_demo_app, get_observer
from tests.e2e import AGENTS_PYTHON, REPO, SIGNATURE, Tap, component, run_bounded
from tests.servers import serve_asgi

DRIVER = REPO / "tests" / "e2e_agents_chain_driver.py"


def test_an_agent_chains_a_function_call_round_trip_through_the_store() -> None:
    python = component(AGENTS_PYTHON, "openai-agents virtualenv (pip openai-agents)")
    demo = create_demo_app()
    with serve_asgi(demo) as upstream:
        proxy = Tap(create_app(Settings(upstream=upstream + "/v1", upstream_api="chat",
                                        store="memory"), tracer_provider=TracerProvider()))
        with serve_asgi(proxy) as base:
            proc = run_bounded([str(python), str(DRIVER), base + "/v1"], 90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The demo model calls the tool whenever it may: each run is a call, then an answer.
    asked, answered, thanked, answered_again = (x.request for x in proxy.exchanges)

    # The SDK sent only the new items, naming the response they continue.
    call = proxy.exchanges[0].response["output"][0]
    assert (call["type"], call["name"]) == ("function_call", "get_weather")
    assert asked.get("previous_response_id") is None
    assert [r.get("previous_response_id") for r in (answered, thanked, answered_again)] == \
        result["responses"][:3]
    assert [i["type"] for i in answered["input"]] == ["function_call_output"]

    # The chat server got the whole conversation each time, rebuilt from the store.
    chats = [r.json()["messages"] for r in get_observer(demo).requests
             if r.path == "/v1/chat/completions"]
    turn = ["system", "user", "assistant", "tool"]
    assert [[m["role"] for m in messages] for messages in chats] == [
        turn[:2], turn, [*turn, "assistant", "user"], [*turn, "assistant", "user", "assistant",
                                                        "tool"]]
    assert chats[1][2]["tool_calls"][0]["id"] == chats[1][3]["tool_call_id"] == call["call_id"]
    assert result["tool_calls"] == ["demo", "demo"]
    assert result["outputs"][0] == \
        f"The tool get_weather returned: It is sunny in demo. {SIGNATURE}"
