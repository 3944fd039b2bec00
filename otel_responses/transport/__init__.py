"""The upstream transport: an HTTP/1.1 client of the proxy's own (see `pool`), the upstream
URL, and the environment's forward proxy. `otel_responses.proxy` forwards through it."""

from otel_responses.transport.connection import Headers
from otel_responses.transport.errors import (
    UpstreamError,
    UpstreamHeadTooLarge,
    UpstreamInvalid,
    UpstreamTimeout,
)
from otel_responses.transport.forward_proxy import ForwardProxy
from otel_responses.transport.pool import UpstreamPool, UpstreamResponse
from otel_responses.transport.target import UpstreamTarget

__all__ = [
    "ForwardProxy",
    "Headers",
    "UpstreamError",
    "UpstreamHeadTooLarge",
    "UpstreamInvalid",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTarget",
    "UpstreamTimeout",
]
