"""The retrieval endpoints of adapter mode, pure ASGI: ``GET`` (JSON, or the events replayed
as SSE) and ``DELETE /v1/responses/{id}``, and ``GET /v1/responses/{id}/input_items``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from otel_responses.caller import caller_of
from otel_responses.outcome import Outcome
from otel_responses.protocol.body import json_bytes
from otel_responses.protocol.sse import is_event_stream
from otel_responses.proxy.errors import ProxyError
from otel_responses.proxy.forward import Exchange, Proxy, answer
from otel_responses.store.items import ListingError, events_after, input_items_page
from otel_responses.store.record import StoredResponse, StoreUnavailable
from otel_responses.store.service import Responses

log = logging.getLogger("otel_responses.store")

def owner_of(scope: Scope) -> str | None:
    """The name of the inbound key the guard authenticated (unique in the keys file); a
    response is visible to that key only. None when no keys are required."""
    caller = caller_of(scope)
    return caller.name if caller is not None else None


def store_unavailable() -> ProxyError:
    return ProxyError(503, "The response store is unavailable; try again later.",
                      "server_error", "store_unavailable", outcome=Outcome.STORE_UNAVAILABLE)


def not_found(response_id: str) -> ProxyError:
    return ProxyError(404, f"Response with id '{response_id}' not found.",
                      "invalid_request_error", "not_found", "response_id")


def _invalid(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", "invalid_value", param)


async def _send(send: Send, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


Handler = Callable[[Responses, str, Scope, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StoreEndpoint:
    """One retrieval route, run by the proxy as one exchange (access log, request metrics):
    reads the id and the query, answers store faults with a 503."""

    responses: Responses
    handler: Handler
    proxy: Proxy
    route: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.run(scope, receive, send, self.route, self._serve)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                ex.stream = is_event_stream(message["headers"])
            else:
                ex.bytes_out += len(message.get("body", b""))
            await send(message)
        try:
            await self.handler(self.responses, scope["path_params"]["response_id"], scope,
                               counted)
        except StoreUnavailable as exc:
            log.warning("%s %s: %s", scope["method"], scope["path"], exc)
            await answer(store_unavailable(), send, ex)
        except ProxyError as err:
            await answer(err, send, ex)
        else:
            ex.responded = True


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope["query_string"].decode("latin-1")))


async def _found(responses: Responses, response_id: str, scope: Scope, *,
                 events: bool = False) -> StoredResponse:
    record = await responses.get(response_id, owner_of(scope), events=events)
    if record is None:
        raise not_found(response_id)
    return record


async def retrieve(responses: Responses, response_id: str, scope: Scope, send: Send) -> None:
    """The stored Response; with ``stream=true`` its events after ``starting_after``."""
    query = _query(scope)
    stream = query.get("stream") == "true"
    record = await _found(responses, response_id, scope, events=stream)
    if not stream:
        await _send(send, b"application/json", json_bytes(record.response))
        return
    if record.events is None:
        raise _invalid("stream", f"Response '{response_id}' was not created with stream=true, "
                                 "so it cannot be streamed.")
    raw = query.get("starting_after", "-1")
    try:
        after = int(raw)
    except ValueError:
        raise _invalid("starting_after", f"Invalid starting_after '{raw}': expected an "
                                         "integer.") from None
    await _send(send, b"text/event-stream; charset=utf-8", events_after(record.events, after))


async def delete(responses: Responses, response_id: str, scope: Scope, send: Send) -> None:
    if not await responses.delete(response_id, owner_of(scope)):
        raise not_found(response_id)
    await _send(send, b"application/json",
                json_bytes({"id": response_id, "object": "response", "deleted": True}))


async def input_items(responses: Responses, response_id: str, scope: Scope,
                      send: Send) -> None:
    record = await _found(responses, response_id, scope)
    try:
        page = input_items_page(record.input_items, _query(scope))
    except ListingError as exc:
        raise _invalid(exc.param, exc.message) from None
    await _send(send, b"application/json", json_bytes(page))


def store_routes(responses: Responses, proxy: Proxy) -> list[Route]:
    """The retrieval routes, served from ``responses`` (adapter mode) as exchanges of
    ``proxy``, under the route names pass-through mode gives them."""
    return [
        Route(path, StoreEndpoint(responses, handler, proxy, name), methods=[method])
        for path, method, handler, name in (
            ("/v1/responses/{response_id}", "GET", retrieve, "responses.retrieve"),
            ("/v1/responses/{response_id}", "DELETE", delete, "responses.delete"),
            ("/v1/responses/{response_id}/input_items", "GET", input_items,
             "responses.input_items"))]
