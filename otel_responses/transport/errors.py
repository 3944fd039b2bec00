"""What the upstream client raises: the proxy maps each to its OpenAI-shaped answer."""

from __future__ import annotations


class UpstreamError(Exception):
    """Connection refused or reset, invalid HTTP, or closed before a complete response."""

    retried = False  # set on the error of a request that was sent a second time


class UpstreamTimeout(UpstreamError):
    """Connecting, or waiting for the next bytes of the response, took too long."""


class UpstreamInvalid(UpstreamError):
    """The response is not HTTP/1.1 the proxy understands fully; its connection is closed."""


class UpstreamHeadTooLarge(UpstreamInvalid):
    """The response head is over MAX_HEAD_BYTES (1xx heads included) or MAX_HEADERS."""


class NotSent(UpstreamError):
    """The connection failed before a byte of the request was written: safe to send again."""
