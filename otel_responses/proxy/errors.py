"""Errors the proxy itself answers, in the OpenAI shape {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.types import Send

from otel_responses.outcome import Outcome


@dataclass(eq=False)
class ProxyError(Exception):
    """Raised inside the proxy, answered to the client with its status and OpenAI-shaped body."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    outcome: Outcome = Outcome.REJECTED
    headers: tuple[tuple[bytes, bytes], ...] = ()  # e.g. retry-after on a 429

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param,
                 "code": self.code}
        return json.dumps({"error": error}).encode()

    async def send(self, send: Send) -> int:
        """Answer with this error; return the body's size (for the access log)."""
        body = self.body()
        await send({
            "type": "http.response.start",
            "status": self.status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *self.headers],
        })
        await send({"type": "http.response.body", "body": body})
        return len(body)


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"Request body exceeds the proxy's limit of {limit} bytes.",
                      "invalid_request_error", "request_too_large")


# Upstream failures: a stable code, and no internal detail (addresses, errno, TLS or parser
# text), which goes to the proxy's log instead.

def _upstream_failure(status: int, message: str, outcome: Outcome) -> ProxyError:
    return ProxyError(status, message, "upstream_error", outcome.value, outcome=outcome)


def upstream_unreachable() -> ProxyError:
    return _upstream_failure(502, "The upstream could not be reached, or closed the connection "
                             "before answering.", Outcome.UPSTREAM_UNREACHABLE)


def upstream_timeout() -> ProxyError:
    return _upstream_failure(504, "The upstream did not answer in time.",
                             Outcome.UPSTREAM_TIMEOUT)


def upstream_invalid_response() -> ProxyError:
    return _upstream_failure(502, "The upstream's response is not valid HTTP the proxy can "
                             "relay.", Outcome.UPSTREAM_INVALID_RESPONSE)


def upstream_headers_too_large() -> ProxyError:
    return _upstream_failure(502, "The upstream's response headers exceed the proxy's limits.",
                             Outcome.UPSTREAM_HEADERS_TOO_LARGE)
