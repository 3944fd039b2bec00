"""The app factory: the only place that composes routes, the proxy and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_responses.config import Settings
from otel_responses.proxy.forward import Proxy

_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(settings: Settings) -> Starlette:
    """Build the proxy app for ``settings`` (``settings.upstream`` must be set)."""
    proxy = Proxy(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await proxy.start()
        try:
            yield
        finally:
            await proxy.aclose()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        ready = proxy.ready
        return JSONResponse({"status": "ready" if ready else "starting"},
                            status_code=200 if ready else 503)

    # Named routes give logs and metrics a bounded route label; all of them forward verbatim.
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/responses", proxy.endpoint("responses.create"), methods=["POST"]),
        Route("/v1/responses/input_tokens", proxy.endpoint("responses.input_tokens"),
              methods=["POST"]),
        Route("/v1/responses/compact", proxy.endpoint("responses.compact"), methods=["POST"]),
        Route("/v1/responses/{response_id}", proxy.endpoint("responses.retrieve"),
              methods=["GET"]),
        Route("/v1/responses/{response_id}", proxy.endpoint("responses.delete"),
              methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", proxy.endpoint("responses.cancel"),
              methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", proxy.endpoint("responses.input_items"),
              methods=["GET"]),
        Route("/{path:path}", proxy.endpoint("passthrough"), methods=_ANY_METHOD),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.proxy = proxy
    return app
