"""Responses request/response JSON → span attributes: the public entry points."""

from otel_responses.protocol.genai import genai_attributes
from otel_responses.protocol.messages import Attributes, AttributeValue
from otel_responses.protocol.request_attributes import request_attributes
from otel_responses.protocol.response_attributes import finish_reason, response_attributes

__all__ = [
    "AttributeValue",
    "Attributes",
    "finish_reason",
    "genai_attributes",
    "request_attributes",
    "response_attributes",
]
