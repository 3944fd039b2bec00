"""Stored responses for the store tests, made by the adapter's own translator from scripted chat
streams (so they are the records adapter mode really keeps)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from otel_responses.protocol.chat import StreamTranslator, sse_bytes, translate_request
from otel_responses.store.record import StoredResponse
from otel_responses.store.service import Responses
from tests.adapter_checks import chunk

_ids = itertools.count()


def streamed(body: Mapping[str, Any], text: str = "",
             calls: Sequence[tuple[str, str, str]] = ()) -> tuple[dict[str, Any], list[Any]]:
    """(final Response, events) of ``body`` answered by a chat stream of ``text`` in three
    pieces and then ``calls`` (call id, name, arguments)."""
    call = translate_request({**{k: v for k, v in body.items() if k != "previous_response_id"},
                              "stream": True})
    translator = StreamTranslator(call, f"resp_{next(_ids):06d}", int(time.time()))
    events = translator.start()
    third = -(-len(text) // 3)
    pieces = [text[i:i + third] for i in range(0, len(text), third)] if text else []
    for piece in pieces:
        events += translator.feed(chunk({"content": piece}))
    for i, (call_id, name, arguments) in enumerate(calls):
        events += translator.feed(chunk({"tool_calls": [
            {"index": i, "id": call_id, "function": {"name": name, "arguments": arguments}}]}))
    events += translator.feed(chunk({}, "tool_calls" if calls else "stop"))
    events += translator.finish(int(time.time()))
    return dict(translator.response), events


def record(body: Mapping[str, Any], text: str = "", calls: Sequence[tuple[str, str, str]] = (),
           *, ttl: float = 3600, owner: str | None = None,
           chain: Sequence[str] = ()) -> StoredResponse:
    """A stored streamed response to ``body`` continuing ``chain`` (see `streamed`)."""
    response, events = streamed(body, text, calls)
    return Responses(ttl=ttl).record(response, body, b"".join(map(sse_bytes, events)), owner,
                                     chain)
