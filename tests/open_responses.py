"""The Open Responses OpenAPI document (`OPEN_RESPONSES_OPENAPI`, from .ci/install-e2e) as a
validator of the events and Response objects the proxy emits."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.e2e import component

# OpenAI's raw-reasoning events (`raw_reasoning=True` only), which Open Responses names
# differently with the same fields; and OpenAI events for items the specification has no type
# for (custom tool calls).
RENAMED = {"response.reasoning_text.delta": "response.reasoning.delta",
           "response.reasoning_text.done": "response.reasoning.done"}
NOT_IN_SPEC = frozenset({"response.custom_tool_call_input.delta",
                         "response.custom_tool_call_input.done"})

Kind = Literal["event", "response"]
Validator = Callable[[Kind, Mapping[str, Any]], None]


def spec_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """``event`` under its Open Responses name."""
    return {**event, "type": RENAMED.get(event["type"], event["type"])}


def openapi_validator() -> Validator:
    """validate(kind, value): a stream event (by its type) or a Response object against the
    document's schema for it; raises jsonschema's ValidationError."""
    path = component("OPEN_RESPONSES_OPENAPI", "the Open Responses OpenAPI document",
                     executable=False)
    return _validator(path)


@cache
def _validator(path: Path) -> Validator:
    doc = json.loads(path.read_text())
    # Event type → schema name, from the streaming response's oneOf.
    stream = doc["paths"]["/responses"]["post"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]["oneOf"]
    events = {}
    for ref in stream:
        name = ref["$ref"].rsplit("/", 1)[1]
        events[doc["components"]["schemas"][name]["properties"]["type"]["enum"][0]] = name
    registry = Registry().with_resource("urn:open-responses", Resource.from_contents(
        doc, default_specification=DRAFT202012))

    def validate(kind: Kind, value: Mapping[str, Any]) -> None:
        name = "ResponseResource" if kind == "response" else events[value["type"]]
        schema = {"$ref": f"urn:open-responses#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(value)

    return validate
