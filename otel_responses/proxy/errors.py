"""Errors the proxy itself answers, in the OpenAI shape {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.types import Send


@dataclass(eq=False)
class ProxyError(Exception):
    """Raised inside the proxy, answered to the client with its status and OpenAI-shaped body."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param,
                 "code": self.code}
        return json.dumps({"error": error}).encode()

    async def send(self, send: Send) -> None:
        body = self.body()
        await send({
            "type": "http.response.start",
            "status": self.status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"Request body exceeds the proxy's limit of {limit} bytes.",
                      "invalid_request_error", "request_too_large")


def upstream_unreachable(detail: str) -> ProxyError:
    return ProxyError(502, f"The upstream could not be reached: {detail}", "upstream_error",
                      "upstream_unreachable")


def upstream_timeout(detail: str) -> ProxyError:
    return ProxyError(504, f"The upstream did not answer in time: {detail}", "upstream_error",
                      "upstream_timeout")
