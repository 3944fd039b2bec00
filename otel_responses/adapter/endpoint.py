"""The adapter's ASGI endpoint: ``POST /v1/responses`` answered by calling the upstream's
``/chat/completions`` and translating both ways (`otel_responses.protocol.chat`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from otel_responses.outcome import Outcome
from otel_responses.protocol.body import json_bytes, json_object
from otel_responses.protocol.chat import (
    AdapterRequestError,
    ChatCall,
    StreamTranslator,
    completion_chunk,
    new_id,
    sse_bytes,
    translate_completion,
    translate_request,
    upstream_error,
    with_max_tokens,
)
from otel_responses.protocol.chat.request import UnsupportedTools
from otel_responses.protocol.chat.stream import Event
from otel_responses.protocol.encoding import DecodedBody, decoder
from otel_responses.protocol.messages import Attributes
from otel_responses.protocol.notes import call_notes
from otel_responses.protocol.sse import SSEParser, is_event_stream
from otel_responses.proxy import errors
from otel_responses.proxy.forward import (
    OVERHEAD_HEADER,
    Exchange,
    Proxy,
    UpstreamRequest,
    answer,
    describe,
    failure,
)
from otel_responses.proxy.headers import upstream_request_headers
from otel_responses.store.chains import Chains
from otel_responses.store.record import StoredResponse
from otel_responses.transport import UpstreamError, UpstreamResponse

log = logging.getLogger("otel_responses.adapter")

UPSTREAM_API = "otel_responses.upstream.api"
DROPPED_TOOLS = "otel_responses.adapter.dropped_tools"
DROPPED_REASONING = "otel_responses.adapter.dropped_reasoning_items"
MAX_TOKENS_RETRY = "otel_responses.adapter.max_tokens_retry"
# A whole upstream answer read into memory (an error body, a non-streamed completion).
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
# The client's body coding and the formats it accepts are about the bodies it exchanges with
# the proxy; the adapter writes the upstream's request itself (plain JSON) and reads its answer.
_REWRITTEN = frozenset({b"content-type", b"content-encoding", b"accept-encoding", b"accept"})
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]


@dataclass(frozen=True, slots=True)
class AdaptedCall:
    """One adapted call that produced a Response: the client's request body, the chat call
    it became, the final Response object, and (streams) every event sent, in order."""

    body: Mapping[str, Any]
    call: ChatCall
    response: Mapping[str, Any]
    events: Sequence[Mapping[str, Any]] | None


AdaptedCallSink = Callable[[AdaptedCall], None]


class _BadUpstream(Exception):
    """The upstream's answer cannot be read as a chat completion (the client gets a 502)."""


class Adapter:
    """Serves the Responses API over a Chat Completions upstream, through the proxy's upstream
    client, body limits, disconnect watching, access log and exchange observers.

    ``sinks`` get every call that ended with a Response (after its last byte was sent); a sink
    that raises is logged and never affects the request. Events are kept only for sinks.
    """

    def __init__(self, proxy: Proxy, *, unsupported_tools: UnsupportedTools = "drop",
                 sinks: Sequence[AdaptedCallSink] = (), chains: Chains | None = None) -> None:
        self.proxy = proxy
        self.unsupported_tools = unsupported_tools
        self.sinks = tuple(sinks)
        # The response store (None: none; previous_response_id is then refused).
        self.chains = chains

    def endpoint(self, route: str) -> AdapterEndpoint:
        return AdapterEndpoint(self, route)

    async def serve(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        raw = await self.proxy.read_request(scope, receive, send, ex)
        if raw is None:
            return
        try:
            body = self._body(scope, raw, ex)
            chain = await self.chains.chain(scope, body) if self.chains is not None else ()
            call = self._translate(body, chain)
        except errors.ProxyError as err:
            await answer(err, send, ex)
            return
        notes = call_notes(scope)
        notes[UPSTREAM_API] = "chat"
        if call.dropped_tools:
            notes[DROPPED_TOOLS] = list(call.dropped_tools)
        if call.dropped_reasoning:
            notes[DROPPED_REASONING] = call.dropped_reasoning
        ex.stream = call.stream
        request = UpstreamRequest("POST", self._chat_target(scope),
                                  self._headers(scope), json_bytes(call.request))
        ex.overhead = time.perf_counter() - ex.started
        await self.proxy.watched(receive, ex, self._exchange(scope, body, call, request, send,
                                                             ex, notes))

    def _body(self, scope: Scope, raw: bytes, ex: Exchange) -> Mapping[str, Any]:
        """The client's Responses body, or a ProxyError."""
        raw = _decoded(scope, raw, self.proxy.settings.max_body_bytes)
        ex.body = raw  # decoded: the access log and the recorder parse the same bytes once
        body = ex.parsed.object(raw)
        if body is None:
            raise errors.ProxyError(400, "We could not parse the JSON body of your request. "
                                    "(The body must be a JSON object.)",
                                    "invalid_request_error", "invalid_json")
        return body

    def _translate(self, body: Mapping[str, Any],
                   chain: Sequence[StoredResponse]) -> ChatCall:
        """The chat call the body becomes (after the stored ``chain`` it continues), or a
        ProxyError."""
        def translate(request: Mapping[str, Any]) -> ChatCall:
            return translate_request(request, unsupported_tools=self.unsupported_tools)
        try:
            if self.chains is None:
                return translate(body)
            return self.chains.translate(body, chain, translate)
        except AdapterRequestError as exc:
            raise errors.ProxyError(exc.status, exc.message, "invalid_request_error", exc.code,
                                    exc.param) from None

    def _chat_target(self, scope: Scope) -> str:
        """The upstream's chat path, in the place of the client's ``…/responses`` path (so an
        upstream base of ``http://vllm:8000/v1`` gives ``/v1/chat/completions``)."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = raw_path.rstrip("/").removesuffix("/responses") + "/chat/completions"
        return self.proxy.target.path(path, scope["query_string"].decode("latin-1"))

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in upstream_request_headers(
            scope["headers"], self.proxy.settings.upstream_api_key, scope) if k not in _REWRITTEN]
        headers += [(b"content-type", b"application/json"), (b"accept-encoding", b"identity")]
        return headers

    async def _exchange(self, scope: Scope, body: Mapping[str, Any], call: ChatCall,
                        request: UpstreamRequest, send: Send, ex: Exchange,
                        notes: Attributes) -> None:
        response = await self.proxy.open(request, send, ex)
        if response is None:
            return
        try:
            if response.status >= 400:
                error = await _read_all(response)
                if _rejects_max_completion_tokens(response.status, error, request):
                    # Older servers know only `max_tokens`: asked again, once, with that.
                    notes[MAX_TOKENS_RETRY] = True
                    response.close()
                    retry = request._replace(body=json_bytes(with_max_tokens(call.request)))
                    await self._exchange(scope, body, call, retry, send, ex, notes)
                    return
                await self._respond(send, ex, response.status, _JSON_HEADERS,
                                    json_bytes(upstream_error(response.status, error)))
                ex.outcome = Outcome.of_status(response.status)
                return
            if call.stream:
                translator = StreamTranslator(call, new_id("resp_"), int(time.time()))
                if is_event_stream(response.headers):
                    batches = _translated(response, translator, ex)
                else:  # a server that answers JSON whatever was asked: streamed in one go
                    completion = json_object(await _read_all(response))
                    if completion is None:
                        raise _BadUpstream("an answer that is neither a stream nor JSON")
                    batches = _at_once(translator, completion)
                await self._stream(scope, body, call, translator, batches, send, ex)
            else:
                await self._complete(scope, body, call, response, send, ex)
        except _BadUpstream as exc:
            ex.outcome = Outcome.UPSTREAM_INVALID_RESPONSE
            log.warning("%s %s: the upstream's answer is not a chat completion: %s",
                        ex.method, ex.path, exc)
            await answer(errors.upstream_invalid_response(), send, ex)
        except UpstreamError as exc:  # while reading a whole body: nothing was sent yet
            log.warning("%s %s: the upstream failed while answering: %s", ex.method, ex.path,
                        describe(exc))
            await answer(failure(exc), send, ex)
        finally:
            response.close()

    async def _complete(self, scope: Scope, body: Mapping[str, Any], call: ChatCall,
                        response: UpstreamResponse, send: Send, ex: Exchange) -> None:
        if is_event_stream(response.headers):  # a server that streams whatever was asked
            translator = StreamTranslator(call, new_id("resp_"), int(time.time()))
            async for _ in _translated(response, translator, ex):
                pass
            result = translator.response
        else:
            completion = json_object(await _read_all(response))
            if completion is None:
                raise _BadUpstream("a non-streamed answer that is not a JSON object")
            result = translate_completion(call, completion, new_id("resp_"), int(time.time()),
                                          int(time.time()))
        await self._store(scope, body, call, result, None)
        await self._respond(send, ex, 200, _JSON_HEADERS, json_bytes(result))
        self._ended(body, call, result, None)

    async def _stream(self, scope: Scope, body: Mapping[str, Any], call: ChatCall,
                      translator: StreamTranslator, batches: AsyncIterator[list[Event]],
                      send: Send, ex: Exchange) -> None:
        """Each batch of events is sent as soon as it is translated (a chat delta in, a
        Responses delta out)."""
        kept: list[Event] | None = [] if self.sinks else None
        # The bytes sent, for the store to replay (kept only if they are to be stored).
        sent: list[bytes] | None = [] if call.settings["store"] else None
        await self._start(send, ex, 200, _SSE_HEADERS)
        await self._events(send, ex, translator.start(), kept, sent)
        async for events in batches:
            if translator.done and sent is not None:  # this batch holds the terminal event
                data = _framed(events)
                await self._store(scope, body, call, translator.response,
                                  b"".join([*sent, data]))
                sent = None
                await self._events(send, ex, events, kept, None, data)
            else:
                await self._events(send, ex, events, kept, sent)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ex.responded = True
        self._ended(body, call, translator.response, kept)

    async def _start(self, send: Send, ex: Exchange, status: int,
                     headers: list[tuple[bytes, bytes]]) -> None:
        ex.status = status
        if self.proxy.settings.overhead_header:
            # Opt-in, for benchmarks: the request-side overhead, as pass-through reports it.
            headers = [*headers, (OVERHEAD_HEADER, f"{ex.overhead * 1000:.3f}".encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _events(self, send: Send, ex: Exchange, events: list[Event],
                      kept: list[Event] | None, sent: list[bytes] | None,
                      data: bytes | None = None) -> None:
        """Send ``events`` (``data``: already framed); keep them for the sinks and their
        bytes for the store, when asked to."""
        if not events:
            return
        handed = time.perf_counter()
        if data is None:
            data = _framed(events)
        ex.bytes_out += len(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})
        ex.overhead += time.perf_counter() - handed
        if kept is not None:
            kept += events
        if sent is not None:
            sent.append(data)

    async def _respond(self, send: Send, ex: Exchange, status: int,
                       headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        await self._start(send, ex, status,
                          [*headers, (b"content-length", str(len(data)).encode())])
        ex.bytes_out += len(data)
        await send({"type": "http.response.body", "body": data})
        ex.responded = True

    async def _store(self, scope: Scope, body: Mapping[str, Any], call: ChatCall,
                     response: Mapping[str, Any], events: bytes | None) -> None:
        """Store a response that ended, if it is to be stored (the ``store`` its Response
        echoes: never without a store, nor for ``store: false``), before the client has its
        end: a client that sends its next request (``previous_response_id``) at once always
        finds it."""
        if self.chains is not None and call.settings["store"]:
            await self.chains.store(scope, body, response, events)

    def _ended(self, body: Mapping[str, Any], call: ChatCall, response: Mapping[str, Any],
               events: Sequence[Mapping[str, Any]] | None) -> None:
        """The one place a call that produced a Response ends (after its last byte)."""
        if not self.sinks:
            return
        done = AdaptedCall(body, call, response, events)
        for sink in self.sinks:
            try:
                sink(done)
            except Exception:
                log.exception("adapted-call sink failed (the request is unaffected)")


@dataclass(frozen=True, slots=True)
class AdapterEndpoint:
    """A pure ASGI endpoint: one named route served by the adapter."""

    adapter: Adapter
    route: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.adapter.proxy.run(scope, receive, send, self.route, self.adapter.serve)


def _framed(events: list[Event]) -> bytes:
    return b"".join(map(sse_bytes, events))


def _decoded(scope: Scope, raw: bytes, limit: int) -> bytes:
    """The request body without its Content-Encoding (SDKs may send zstd or gzip), as the
    guard decoded it if it did (the recorder reuses this)."""
    coded = DecodedBody.shared(scope).decode(scope["headers"], raw, limit)
    if coded is None:
        return raw
    if coded.truncated:
        raise errors.body_too_large(limit)
    if coded.unreadable:
        raise errors.ProxyError(415 if "unsupported" in coded.unreadable else 400,
                                f"The request body cannot be decoded: {coded.unreadable}.",
                                "invalid_request_error", "invalid_content_encoding")
    return coded.body


async def _at_once(translator: StreamTranslator,
                   completion: Mapping[str, Any]) -> AsyncIterator[list[Event]]:
    yield translator.feed(completion_chunk(completion)) + translator.finish(int(time.time()))


async def _translated(response: UpstreamResponse, translator: StreamTranslator,
                      ex: Exchange) -> AsyncIterator[list[Event]]:
    """The events each chunk of the upstream's chat stream makes, ending with the terminal
    event. A broken upstream (cut, undecodable, not JSON) ends it with `error` and
    `response.failed`; what it sends after is not read."""
    coding = decoder(response.headers, MAX_UPSTREAM_BODY)
    parser = SSEParser()
    ended = False  # `data: [DONE]` seen: what follows is ignored
    try:
        async for chunk in response.body():
            if coding is not None:
                chunk = coding.feed(chunk)
                if coding.unreadable:
                    ex.outcome = Outcome.UPSTREAM_INVALID_RESPONSE
                    yield translator.fail(f"The upstream's stream cannot be decoded "
                                          f"({coding.unreadable}).", "upstream_invalid_response")
                    return
            out: list[Event] = []
            for event in parser.feed(chunk):
                if ended:
                    break
                if event.data == "[DONE]":
                    ended = True
                    out += translator.finish(int(time.time()))
                    continue
                data = None if event.oversize else json_object(event.data)
                if data is None:
                    ex.outcome = Outcome.UPSTREAM_INVALID_RESPONSE
                    out += translator.fail("The upstream sent a stream event that is not a "
                                           "JSON object.", "upstream_invalid_response")
                    break
                out += translator.feed(data)
            yield out
            if translator.done and not ended:
                return  # failed (an in-band error, or unreadable): the rest is not read
    except UpstreamError as exc:
        ex.outcome = Outcome.UPSTREAM_CUT
        log.warning("upstream ended %s %s early: %s; the stream ends with response.failed",
                    ex.method, ex.path, describe(exc))
        yield translator.fail("The upstream's stream was cut before it ended.", "upstream_cut")
        return
    yield translator.finish(int(time.time()))


async def _read_all(response: UpstreamResponse) -> bytes:
    """A whole upstream body, content-decoded; `_BadUpstream` past `MAX_UPSTREAM_BODY`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.body():
        size += len(chunk)
        if size > MAX_UPSTREAM_BODY:
            raise _BadUpstream(f"a body over {MAX_UPSTREAM_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    coding = decoder(response.headers, MAX_UPSTREAM_BODY)
    if coding is None:
        return raw
    out = coding.feed(raw)
    if coding.unreadable or coding.truncated:
        raise _BadUpstream(coding.unreadable or "a body that decodes past the limit")
    return out


def _rejects_max_completion_tokens(status: int, error: bytes, request: UpstreamRequest) -> bool:
    """A 400 naming `max_completion_tokens`, for a request that sent it."""
    return (status == 400 and b"max_completion_tokens" in error
            and b'"max_completion_tokens"' in (request.body or b""))
