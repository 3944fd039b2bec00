"""The demo upstream's ASGI app: an offline, deterministic OpenAI Responses API (model ``demo``).

Routes: ``POST /v1/responses`` (JSON or ``stream: true`` SSE), ``GET|DELETE /v1/responses/{id}``
(``GET ?stream=true&starting_after=N`` replays a streamed response's events after N),
``POST /v1/responses/{id}/cancel``, ``GET /v1/responses/{id}/input_items``,
``POST /v1/responses/input_tokens``, ``POST /v1/responses/compact``, ``GET /v1/models[/{id}]``,
``POST /v1/chat/completions`` (JSON or SSE chunks, see :mod:`otel_responses.demo.chat`) and
``GET /healthz``. Any model name is accepted and echoed. Responses are kept in a bounded
LRU unless ``store`` is false. Cancel stops a stream that is still running (status
``cancelled``) and returns any other stored response unchanged. What the model answers is
described in :mod:`otel_responses.demo.model`; ``app.state.observer`` is a
:class:`~otel_responses.demo.observe.DemoObserver`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from otel_responses.demo import chat, model
from otel_responses.demo.errors import ApiError, invalid_type, missing
from otel_responses.demo.model import Json, dumps
from otel_responses.demo.observe import DemoObserver, RecordedRequest, StreamOutcome

MODEL_NAME = "demo"


@dataclass(frozen=True)
class DemoSettings:
    token_delay: float = 0.0  # seconds between streamed deltas; non-stream replies wait as long
    store_size: int = 1000  # stored responses kept (least recently used are dropped)
    record_limit: int = 1000  # requests and streams the observer remembers
    seed: str = ""  # mixed into every id: different seeds give different ids
    clock: Callable[[], float] = time.time  # source of created_at


def create_demo_app(settings: DemoSettings | None = None) -> Starlette:
    """The demo upstream; ``app.state.observer`` shows what it received and how streams ended."""
    demo = _Demo(settings or DemoSettings())
    api = demo.api
    routes = [
        Route("/healthz", demo.healthz, methods=["GET"]),
        Route("/v1/models", api(demo.list_models), methods=["GET"]),
        Route("/v1/models/{model_id}", api(demo.get_model), methods=["GET"]),
        Route("/v1/responses", api(demo.create), methods=["POST"]),
        Route("/v1/chat/completions", api(demo.chat_completion), methods=["POST"]),
        Route("/v1/responses/input_tokens", api(demo.input_tokens), methods=["POST"]),
        Route("/v1/responses/compact", api(demo.compact), methods=["POST"]),
        Route("/v1/responses/{response_id}", api(demo.retrieve), methods=["GET"]),
        Route("/v1/responses/{response_id}", api(demo.delete), methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", api(demo.cancel), methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", api(demo.input_items), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.observer = demo.observer
    return app


def get_observer(app: Starlette) -> DemoObserver:
    """The observer of an app made by :func:`create_demo_app` (typed access to app.state)."""
    return app.state.observer


# ---- errors --------------------------------------------------------------------------------

def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None) -> Response:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}
    return _json(body, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return error_response(status, f"Invalid URL ({request.method} {request.url.path})")


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id '{response_id}' not found.")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers, media_type="application/json")


def _parse_object(body: bytes) -> Json:
    try:
        value = json.loads(body)
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request. The OpenAI API "
                            "expects a JSON payload.") from None
    if not isinstance(value, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return value


def _validate(request: Json, *, needs_input: bool = True) -> None:
    for key in ("model", "input") if needs_input else ("model",):
        if request.get(key) is None:
            raise missing(key)
    if not isinstance(request["model"], str):
        raise invalid_type("model", "a string", request["model"])
    value = request.get("input")
    if value is not None and not isinstance(value, str | list):
        raise invalid_type("input", "a string or an array", value)
    for index, item in enumerate(value if isinstance(value, list) else []):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{index}]", "an object", item)
    tools = request.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict)
                                                                  for t in tools)):
        raise invalid_type("tools", "an array of objects", tools)
    for key in ("stream", "store", "background"):
        if request.get(key) is not None and not isinstance(request[key], bool):
            raise invalid_type(key, "a boolean", request[key])


# ---- storage -------------------------------------------------------------------------------

@dataclass
class _Stored:
    response: Json  # latest state of the Response object
    input_items: list[Json]
    frames: list[bytes] | None = None  # the SSE events, when created with stream=true
    paced: range = range(0)  # frame indices preceded by token_delay
    available: int = 0  # frames a replay may send (fewer if the live stream stopped early)
    stop: asyncio.Event | None = None  # set to cancel the live stream; None once it ended
    final: Json = field(default_factory=dict)  # what ``response`` becomes when the stream ends

    def stream_ended(self, sent: int, outcome: StreamOutcome) -> None:
        self.stop = None
        if outcome == "completed":
            self.response = self.final
        else:
            self.available = sent
            self.response = {**self.response, "status": "cancelled"}


class _Store:
    """A bounded LRU of stored responses."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def put(self, response_id: str, entry: _Stored) -> None:
        self._items[response_id] = entry
        self._items.move_to_end(response_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> _Stored:
        entry = self._items.get(response_id)
        if entry is None:
            raise _not_found(response_id)
        self._items.move_to_end(response_id)
        return entry

    def pop(self, response_id: str) -> _Stored:
        entry = self._items.pop(response_id, None)
        if entry is None:
            raise _not_found(response_id)
        return entry


# ---- streaming -----------------------------------------------------------------------------

class EventStream(Response):
    """Sends pre-encoded SSE frames one per chunk, pacing deltas, until done or told to stop.

    A task watches ``receive`` for ``http.disconnect`` because uvicorn silently drops writes to
    a closed connection: without it a slow stream would run to its end for nobody.
    """

    media_type = "text/event-stream; charset=utf-8"

    def __init__(self, frames: list[bytes], start: int, paced: range, delay: float,
                 observer: DemoObserver, response_id: str, stop: asyncio.Event | None = None,
                 on_end: Callable[[int, StreamOutcome], None] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", self.media_type.encode()),
                            (b"cache-control", b"no-cache")]
        self.frames, self.start, self.paced, self.delay = frames, start, paced, delay
        self.observer, self.response_id = observer, response_id
        self.stop = stop or asyncio.Event()
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self.observer.stream_started(self.response_id)
        outcome: StreamOutcome
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone, self.stop))
        sent, outcome = self.start, "disconnected"  # until proven otherwise
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            for index in range(self.start, len(self.frames)):
                if self.delay > 0 and index in self.paced:
                    await _wait(self.stop, self.delay)
                if self.stop.is_set():
                    break
                await send({"type": "http.response.body", "body": self.frames[index],
                            "more_body": True})
                sent = index + 1
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                outcome = "completed" if sent == len(self.frames) else "cancelled"
        except OSError:
            pass  # the client went away mid-write
        finally:
            watcher.cancel()
            if gone.is_set():
                outcome = "disconnected"
            if self.on_end is not None:
                self.on_end(sent, outcome)
            self.observer.stream_ended(record, outcome, sent - self.start)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event, stop: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    stop.set()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early if ``event`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


# ---- the endpoints -------------------------------------------------------------------------

Handler = Callable[[Request, bytes], Awaitable[Response]]


class _Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.observer = DemoObserver(limit=settings.record_limit)
        self.store = _Store(settings.store_size)
        self._counter = itertools.count(1)

    def api(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap ``handler``: read and record the request, turn ApiError into OpenAI errors."""
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                            for k, v in request.headers.raw)
            self.observer.record(RecordedRequest(request.method, request.url.path,
                                                 request.url.query, headers, body))
            try:
                return await handler(request, body)
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.param, exc.code)
        return endpoint

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def list_models(self, request: Request, body: bytes) -> Response:
        return _json({"object": "list", "data": [_MODEL]})

    async def get_model(self, request: Request, body: bytes) -> Response:
        model_id = request.path_params["model_id"]
        if model_id != MODEL_NAME:
            raise ApiError(404, f"The model '{model_id}' does not exist", "model",
                           "model_not_found")
        return _json(_MODEL)

    def _previous(self, request: Json) -> Json | None:
        previous_id = request.get("previous_response_id")
        if previous_id is None:
            return None
        try:
            return self.store.get(str(previous_id)).response
        except ApiError:
            raise ApiError(404, f"Previous response with id '{previous_id}' not found.",
                           "previous_response_id", "previous_response_not_found") from None

    async def create(self, request: Request, body: bytes) -> Response:
        payload = _parse_object(body)
        _validate(payload)
        n = next(self._counter)
        ids = model.Ids.for_number(n, self.settings.seed)
        reply = model.decide(payload, self._previous(payload))
        rendered = model.render(payload, reply, ids, int(self.settings.clock()))
        entry = None
        if payload.get("store") is not False:
            entry = _Stored(rendered.final, model.listed_items(model.input_items(payload),
                                                                self.settings.seed, n))
            self.store.put(ids.response, entry)
        headers = {"x-request-id": ids.request}
        if not payload.get("stream"):
            if self.settings.token_delay > 0:
                await asyncio.sleep(self.settings.token_delay * (len(reply.pieces) - 1))
            return _json(rendered.final, headers=headers)
        frames = rendered.frames()
        paced = range(rendered.first_delta + 1, rendered.first_delta + len(reply.pieces))
        stop = asyncio.Event()
        if entry is not None:
            entry.response, entry.final = rendered.snapshot, rendered.final
            entry.frames, entry.paced, entry.available, entry.stop = (frames, paced, len(frames),
                                                                      stop)
        stream = EventStream(frames, 0, paced, self.settings.token_delay, self.observer,
                             ids.response, stop, entry.stream_ended if entry else None)
        stream.raw_headers.append((b"x-request-id", ids.request.encode()))
        return stream

    async def chat_completion(self, request: Request, body: bytes) -> Response:
        payload = _parse_object(body)
        chat.validate(payload)
        n = next(self._counter)
        answer = chat.answer(payload, self.settings.seed, n)
        rendered = chat.render(payload, answer, self.settings.seed, n,
                               int(self.settings.clock()))
        request_id = model.Ids.for_number(n, self.settings.seed).request
        if not payload.get("stream"):
            if self.settings.token_delay > 0:
                await asyncio.sleep(self.settings.token_delay * (answer.completion_tokens - 1))
            return _json(rendered.completion(), headers={"x-request-id": request_id})
        stream = EventStream(rendered.frames(), 0, rendered.paced, self.settings.token_delay,
                             self.observer, rendered.id)
        stream.raw_headers.append((b"x-request-id", request_id.encode()))
        return stream

    async def retrieve(self, request: Request, body: bytes) -> Response:
        response_id = request.path_params["response_id"]
        entry = self.store.get(response_id)
        if request.query_params.get("stream") != "true":
            return _json(entry.response)
        if entry.frames is None:
            raise ApiError(400, f"Response '{response_id}' was not created with stream=true, so "
                                "it cannot be streamed.", "stream")
        after = request.query_params.get("starting_after", "-1")
        try:
            start = int(after) + 1
        except ValueError:
            raise invalid_type("starting_after", "an integer", after) from None
        end = len(entry.frames) if entry.stop is not None else entry.available
        return EventStream(entry.frames[:end], max(start, 0), entry.paced,
                           self.settings.token_delay, self.observer, response_id)

    async def delete(self, request: Request, body: bytes) -> Response:
        response_id = request.path_params["response_id"]
        entry = self.store.pop(response_id)
        if entry.stop is not None:
            entry.stop.set()
        return _json({"id": response_id, "object": "response.deleted", "deleted": True})

    async def cancel(self, request: Request, body: bytes) -> Response:
        entry = self.store.get(request.path_params["response_id"])
        if entry.stop is not None:
            entry.stop.set()
            entry.response = {**entry.response, "status": "cancelled"}
        return _json(entry.response)

    async def input_items(self, request: Request, body: bytes) -> Response:
        entry = self.store.get(request.path_params["response_id"])
        query = request.query_params
        items = entry.input_items if query.get("order") == "asc" else entry.input_items[::-1]
        after = query.get("after")
        if after is not None:
            index = next((i for i, item in enumerate(items) if item["id"] == after), None)
            if index is None:
                raise ApiError(400, f"No input item with id '{after}'.", "after")
            items = items[index + 1:]
        try:
            limit = min(max(int(query.get("limit", "20")), 1), 100)
        except ValueError:
            raise invalid_type("limit", "an integer", query.get("limit")) from None
        page = items[:limit]
        return _json({"object": "list", "data": page,
                      "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None,
                      "has_more": len(items) > limit})

    async def input_tokens(self, request: Request, body: bytes) -> Response:
        payload = _parse_object(body)
        return _json({"object": "response.input_tokens",
                      "input_tokens": model.count_input_tokens(payload)})

    async def compact(self, request: Request, body: bytes) -> Response:
        """Keep the user messages; fold everything else into one opaque ``compaction`` item."""
        payload = _parse_object(body)
        _validate(payload, needs_input=False)
        n = next(self._counter)
        items = model.input_items(payload)
        previous = self._previous(payload)
        if previous is not None:
            earlier = self.store.get(previous["id"]).input_items + previous.get("output", [])
            items = earlier + items
        kept, folded = [], []
        for item in items:
            is_user = item.get("type", "message") == "message" and item.get("role") == "user"
            (kept if is_user else folded).append(item)
        summary = " ".join(model.item_text(i) for i in folded)
        input_tokens = model.count_input_tokens({**payload, "input": items})
        kept = model.listed_items(kept, self.settings.seed, n)
        opaque = base64.b64encode(summary.encode(errors="replace")).decode()
        compaction = {"id": model.new_id("cmp_", self.settings.seed, n, "cmp"),
                      "type": "compaction", "encrypted_content": opaque}
        return _json({"id": model.new_id("resp_", self.settings.seed, n, "resp"),
                      "object": "response.compaction",
                      "created_at": int(self.settings.clock()), "output": [*kept, compaction],
                      "usage": model.usage(input_tokens, model.count_words(summary))})


_MODEL = {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "otel-responses"}
