"""The Responses routes adapter mode cannot serve over a chat server: answered with a clear
OpenAI-shaped error instead of being forwarded (a chat server would answer a puzzling 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from otel_responses.proxy.errors import ProxyError
from otel_responses.proxy.forward import Exchange, Proxy, answer

ErrorFor = Callable[[Scope], ProxyError]


@dataclass(frozen=True, slots=True)
class Unsupported:
    """One route run by the proxy as an exchange (access log, metrics) that reads the request
    and answers ``error_for`` it."""

    proxy: Proxy
    route: str
    error_for: ErrorFor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.run(scope, receive, send, self.route, self._serve)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        if await self.proxy.read_request(scope, receive, send, ex) is not None:
            await answer(self.error_for(scope), send, ex)


def _chat_cannot(what: str) -> ErrorFor:
    error = ProxyError(400, f"{what} is not available here: the upstream speaks Chat "
                       "Completions (--upstream-api chat), which has no such operation.",
                       "invalid_request_error", "unsupported_in_adapter_mode")
    return lambda scope: error


def _not_stored(scope: Scope) -> ProxyError:
    return ProxyError(404, f"Response with id '{scope['path_params']['response_id']}' not "
                      "found: responses are not stored (--store none).",
                      "invalid_request_error", "not_found", "response_id")


def unsupported_routes(proxy: Proxy, *, stored: bool) -> list[Route]:
    """Adapter mode's answers for the Responses routes a chat server has no operation for
    (and, when nothing is stored, for the retrieval routes)."""
    routes = [
        ("/v1/responses/input_tokens", "POST", "responses.input_tokens",
         _chat_cannot("Counting input tokens")),
        ("/v1/responses/compact", "POST", "responses.compact",
         _chat_cannot("Compacting a conversation")),
        ("/v1/responses/{response_id}/cancel", "POST", "responses.cancel",
         _chat_cannot("Cancelling a background response")),
    ]
    if not stored:
        routes += [("/v1/responses/{response_id}", method, name, _not_stored)
                   for method, name in (("GET", "responses.retrieve"),
                                        ("DELETE", "responses.delete"))]
        routes.append(("/v1/responses/{response_id}/input_items", "GET",
                       "responses.input_items", _not_stored))
    return [Route(path, Unsupported(proxy, name, error_for), methods=[method])
            for path, method, name, error_for in routes]
