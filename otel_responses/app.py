"""The app factory: the only place that composes routes, the proxy, telemetry and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_responses.adapter import AdaptedCallSink, Adapter, AdapterEndpoint
from otel_responses.adapter.unsupported import unsupported_routes
from otel_responses.config import Settings
from otel_responses.guard.keys import KeysFile
from otel_responses.guard.limits import LimitStore, MemoryStore
from otel_responses.guard.middleware import Guard, GuardEvents
from otel_responses.guard.redis_store import RedisStore
from otel_responses.proxy.forward import Endpoint, Proxy
from otel_responses.proxy.paths import PathGuard
from otel_responses.store.chains import Chains
from otel_responses.store.routes import store_routes
from otel_responses.store.service import Responses
from otel_responses.telemetry.cost import Pricer
from otel_responses.telemetry.export import (
    build_tracer_provider,
    shutdown_provider,
    span_pipelines,
)
from otel_responses.telemetry.metrics import ProxyMetrics
from otel_responses.telemetry.middleware import ResponsesTelemetryMiddleware
from otel_responses.telemetry.options import genai_provider_name
from otel_responses.telemetry.prices_file import PricesFile
from otel_responses.transport.target import UpstreamTarget

log = logging.getLogger("otel_responses")

_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(settings: Settings, *, tracer_provider: TracerProvider | None = None,
               demo: bool = False, clock: Callable[[], float] = time.time,
               adapted_call_sinks: Sequence[AdaptedCallSink] = ()) -> ASGIApp:
    """Build the proxy app for ``settings`` (``settings.upstream`` must be set).

    Spans go to ``tracer_provider``; without one, a provider is built from the standard
    ``OTEL_*`` variables and flushed at shutdown. ``OTEL_SDK_DISABLED=true`` turns tracing off
    (metrics stay on). Metrics are served at ``/metrics``, or on ``settings.metrics_port``;
    they include the span export pipelines of a provider made by ``build_tracer_provider``.
    With ``settings.upstream_api == "chat"``, ``POST /v1/responses`` is served by the adapter
    (its ``adapted_call_sinks`` get every call that ended with a Response).
    With ``settings.cost``, calls are priced (``settings.prices`` first, re-read on change);
    an unusable price file raises `PricesError` (a ValueError).
    With ``settings.api_keys`` a guard checks keys and limits in front of everything
    (``clock``, in seconds, times the limits' windows). A keys file that cannot be used
    raises ValueError.
    """
    if settings.upstream is None:
        raise ValueError("create_app needs an upstream URL")
    target = UpstreamTarget.parse(settings.upstream)
    options = settings.telemetry.replace(upstream_host=target.host, upstream_port=target.port)
    metrics = ProxyMetrics(provider=genai_provider_name(options.llm_provider),
                           models=settings.metrics_models, max_models=settings.metrics_max_models,
                           key_label=settings.metrics_key_label)
    keys = KeysFile(settings.api_keys) if settings.api_keys is not None else None
    limits: LimitStore | None = None
    if keys is not None:
        limits = MemoryStore() if settings.rate_limit_store == "memory" \
            else RedisStore(settings.rate_limit_store)
    proxy = Proxy(settings, observers=(metrics.observe_exchange,))
    # Response store (adapter mode): previous_response_id, GET, DELETE and input_items.
    responses = Responses(ttl=settings.store_ttl, on_error=metrics.store_error) \
        if settings.upstream_api == "chat" and settings.store_spec.kind != "none" else None
    if settings.upstream_api != "chat" and settings.store not in (None, "none"):
        # Not refused: a chart or compose file may set one store for every mode.
        log.warning("--store is ignored: a Responses upstream keeps its own responses "
                    "(the store serves adapter mode, --upstream-api chat)")
    create: Endpoint | AdapterEndpoint = proxy.endpoint("responses.create")
    if settings.upstream_api == "chat":
        adapter = Adapter(proxy, unsupported_tools=settings.unsupported_tools,
                          sinks=adapted_call_sinks,
                          chains=Chains(responses) if responses is not None else None)
        create = adapter.endpoint("responses.create")
    pricer = Pricer(options.llm_provider) if settings.cost else None
    prices = PricesFile(settings.prices, pricer) \
        if pricer is not None and settings.prices is not None else None
    owned = build_tracer_provider(demo=demo) if options.tracing and tracer_provider is None \
        else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if responses is not None:  # first: a store that cannot be opened stops the start
            await responses.open(settings.store_spec, settings.store_max_mb)
        await proxy.start()
        stop_metrics = (metrics.serve(settings.metrics_host or settings.host,
                                      settings.metrics_port, settings.client_header_timeout)
                        if settings.metrics_port is not None else None)
        # The keys and price files are looked at off the event loop, not by the requests.
        reloads = [asyncio.create_task(watched.watch()) for watched in (keys, prices)
                   if watched is not None]
        try:
            yield
        finally:
            for reload in reloads:
                reload.cancel()
            await asyncio.gather(*reloads, return_exceptions=True)
            if stop_metrics is not None:
                await asyncio.to_thread(stop_metrics)
            await proxy.aclose()
            if limits is not None:
                await limits.aclose()
            if responses is not None:
                await responses.aclose()
            if owned is not None:
                # Flushes spans still queued for export, off the event loop.
                await asyncio.to_thread(shutdown_provider, owned)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        # Ready means this process can forward (its upstream client is up), not that the
        # upstream answers: otel_responses_upstream_up says that.
        ready = proxy.ready
        return JSONResponse({"status": "ready" if ready else "starting"},
                            status_code=200 if ready else 503)

    # Named routes give logs and metrics a bounded route label; all of them but an adapted
    # create forward verbatim.
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *([Route("/metrics", metrics.endpoint, methods=["GET"])]
          if settings.metrics_port is None else []),
        Route("/v1/responses", create, methods=["POST"]),
        # Adapter mode answers what a chat server cannot (the first matching route wins),
        # and serves stored responses itself.
        *(unsupported_routes(proxy, stored=responses is not None)
          if settings.upstream_api == "chat" else []),
        *(store_routes(responses, proxy) if responses is not None else []),
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
    provider = tracer_provider or owned
    telemetry = ResponsesTelemetryMiddleware(
        # Inside the telemetry: a refused path is neither forwarded nor a span.
        metrics.track_streams(PathGuard(_ExactRoutes(Starlette(routes=routes, lifespan=lifespan),
                                                     routes))),
        tracer_provider=provider, tracing=provider is not None, options=options,
        sinks=(metrics.observe_call,), pricer=pricer)
    metrics.watch(in_flight=lambda: proxy.in_flight,
                  telemetry_errors=lambda: telemetry.telemetry_errors,
                  span_pipelines=span_pipelines(provider))
    if keys is None or limits is None:
        return telemetry
    # In front of the telemetry: a refused key is neither forwarded nor a span.
    guard = Guard(telemetry, keys, limits, fail_open=settings.rate_limit_fail == "open",
                  exempt=frozenset({"/healthz", "/readyz"} | (
                      {"/metrics"} if settings.metrics_port is None else set())),
                  max_body_bytes=settings.max_body_bytes, clock=clock,
                  events=GuardEvents(rejected=metrics.observe_rejection,
                                     store_failed=metrics.observe_store_error,
                                     charged=metrics.observe_charge,
                                     spent=metrics.observe_spend))
    # The guard learns a call's tokens and cost from what the telemetry recorded, through a sink.
    telemetry.sinks += (guard.observe_call,)
    return guard


class _ExactRoutes:
    """Sends requests for the proxy's parameterless routes straight to their endpoint.

    Starlette's stack (error and exception middleware, a Request object, the router) holds
    ~3 KB of coroutine frames and objects for as long as a request runs: for held streams that
    is a tenth of the proxy's memory per stream. Of it only the error middleware can change an
    answer (a 500 the telemetry sees, if the endpoint fails before responding): it is kept.
    The exception middleware only maps HTTPException, which these pure ASGI endpoints never
    raise. Anything else (other methods, paths with parameters, a root_path, lifespan) goes
    through Starlette as before.
    """

    __slots__ = ("_exact", "app")

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self._exact: dict[tuple[str, str], ASGIApp] = {}
        taken: set[tuple[str, str]] = set()
        for route in routes:
            if route.param_convertors:
                continue
            fast = isinstance(route.endpoint, Endpoint | AdapterEndpoint)
            endpoint = ServerErrorMiddleware(route.endpoint)  # as Starlette, debug off
            for method in route.methods or ():
                # The first route that matches wins, as in Starlette's router: a later one
                # never takes a path an earlier route (fast or not) answers.
                if (method, route.path) not in taken:
                    taken.add((method, route.path))
                    if fast:
                        self._exact[(method, route.path)] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (self._exact.get((scope["method"], scope["path"]))
                    if scope["type"] == "http" and not scope.get("root_path") else None)
        if endpoint is None:
            await self.app(scope, receive, send)
        else:
            await endpoint(scope, receive, send)
