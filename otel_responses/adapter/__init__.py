"""Adapter mode's I/O edge: the Responses API served over a Chat Completions upstream (the
translation itself is sans-IO, in `otel_responses.protocol.chat`)."""

from otel_responses.adapter.endpoint import AdaptedCall, AdaptedCallSink, Adapter, AdapterEndpoint

__all__ = ["AdaptedCall", "AdaptedCallSink", "Adapter", "AdapterEndpoint"]
