"""Sans-IO Responses ⇄ Chat Completions translation: the pure core of adapter mode.

Dicts in, dicts out, no I/O. The I/O edge, `otel_responses.adapter`, uses it like this:

1. ``call = translate_request(body, unsupported_tools="drop")`` (raises
   `AdapterRequestError`: answer ``err.status``, an ``invalid_request_error`` with its
   ``message``, ``param`` and ``code``). POST ``call.request``
   to ``{upstream}/chat/completions``; if the upstream rejects ``max_completion_tokens``,
   retry once with ``with_max_tokens(call.request)``. ``call.dropped_tools``,
   ``call.dropped_reasoning``, ``call.client_metadata`` and ``call.prompt_cache_key`` are for
   the span (never sent upstream).
2. Upstream 4xx/5xx: answer the same status with ``upstream_error(status, body)``.
3. Non-stream: ``translate_completion(call, completion_json, response_id, created_at)`` is the
   Response object.
4. Stream (``call.stream``): ``t = StreamTranslator(call, response_id, created_at)``; send
   ``t.start()``; for each SSE event's parsed JSON (``[DONE]`` and comments skipped; an
   ``event: error`` event's data too) send ``t.feed(chunk)``; at ``[DONE]`` or the end of the
   body send ``t.finish()``; if the upstream broke (cut, timeout, unparsable data) send
   ``t.fail(message, code)`` instead. Frame each event with ``sse_bytes(event)``.
   ``t.response`` is the final Response object for the span. A server that answers a
   streamed request with JSON: feed ``completion_chunk(completion)``, then ``t.finish()``.

Mapping choices worth knowing: developer messages become system messages; reasoning items in
the input are dropped (chat servers take no reasoning back); namespaced tools are sent as
``{namespace}__{name}`` and answered under their own name and namespace; custom tools are
functions taking one string ``input`` and are answered as ``custom_tool_call`` items (their
input is emitted whole when the call completes, as it has to be JSON-decoded); chat reasoning
deltas (``reasoning_content`` or ``reasoning``) become a reasoning item streamed as a reasoning
summary (``translate_request(..., raw_reasoning=True)``: as OpenAI's ``reasoning_text``
content instead; see `ChatCall.reasoning_part`); only choice 0 is translated.
"""

from otel_responses.protocol.chat.request import (
    AdapterRequestError,
    ChatCall,
    ToolName,
    translate_request,
    with_max_tokens,
)
from otel_responses.protocol.chat.response import new_id, translate_completion, upstream_error
from otel_responses.protocol.chat.stream import StreamTranslator, completion_chunk, sse_bytes

__all__ = [
    "AdapterRequestError",
    "ChatCall",
    "StreamTranslator",
    "ToolName",
    "completion_chunk",
    "new_id",
    "sse_bytes",
    "translate_completion",
    "translate_request",
    "upstream_error",
    "with_max_tokens",
]
