"""The store as adapter mode uses it: a ``previous_response_id`` turned into the chain's items
before the new input, and each response that ends stored (unless ``store: false``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.types import Scope

from otel_responses.protocol.chat import AdapterRequestError, ChatCall
from otel_responses.protocol.notes import CHAIN_ROOT, call_notes
from otel_responses.proxy.errors import ProxyError
from otel_responses.store.items import conversation, input_as_items
from otel_responses.store.record import StoredResponse, StoreUnavailable
from otel_responses.store.routes import owner_of, store_unavailable
from otel_responses.store.service import ChainBroken, Responses

log = logging.getLogger("otel_responses.store")

STORE_ERROR = "otel_responses.store.error"
"""Span attribute: why this response could not be stored (the client got it all the same)."""
CHAIN_LENGTH = "otel_responses.store.chain_length"
"""Span attribute: how many stored responses the request continued."""

Translate = Callable[[Mapping[str, Any]], ChatCall]
CHAIN_KEY = "otel_responses.store.chain"  # the ASGI scope's: the ids of the chain continued


def previous_not_found(previous_id: str, missing: str) -> ProxyError:
    detail = "" if missing == previous_id else \
        f" (response '{missing}', earlier in its chain, is gone)"
    return ProxyError(400, f"Previous response with id '{previous_id}' not found{detail}.",
                      "invalid_request_error", "previous_response_not_found",
                      "previous_response_id")


class Chains:
    """Adapter mode's store hooks, around `Responses`."""

    def __init__(self, responses: Responses) -> None:
        self.responses = responses

    async def chain(self, scope: Scope, body: Mapping[str, Any]) -> Sequence[StoredResponse]:
        """The stored responses the request continues, oldest first (none without a
        ``previous_response_id``); a ProxyError (400 not found, 503 store down) otherwise."""
        previous = body.get("previous_response_id")
        if previous is None:
            return ()
        if not isinstance(previous, str):
            raise ProxyError(400, "'previous_response_id' must be a string.",
                             "invalid_request_error", "invalid_type", "previous_response_id")
        try:
            chain = await self.responses.chain(previous, owner_of(scope))
        except ChainBroken as exc:
            raise previous_not_found(previous, exc.missing) from None
        except StoreUnavailable as exc:
            log.warning("%s %s: previous_response_id %s: %s", scope["method"], scope["path"],
                        previous, exc)
            raise store_unavailable() from None
        scope[CHAIN_KEY] = tuple(record.id for record in chain)  # for the record, once made
        notes = call_notes(scope)
        notes[CHAIN_ROOT] = chain[0].id
        notes[CHAIN_LENGTH] = len(chain)
        return chain

    @staticmethod
    def translate(body: Mapping[str, Any], chain: Sequence[StoredResponse],
                  translate: Translate) -> ChatCall:
        """The chat call for ``body`` continuing ``chain``: the chain's items, then the new
        input, translated once. A request refused is translated again alone, so that an error
        in its input names the index the client sent."""
        own = {**body, "previous_response_id": None}
        new_input = body.get("input")
        items = input_as_items(new_input)
        # Input the items do not hold whole (absent, not a list, a list with non-objects) is
        # refused by translating it alone: the chain's items would hide what is wrong.
        whole = isinstance(new_input, str) or \
            (isinstance(new_input, list) and len(items) == len(new_input))
        if not chain or not whole:
            call = translate(own)
        else:
            try:
                call = translate({**own, "input": conversation(chain, items)})
            except AdapterRequestError:
                translate(own)  # raises if the fault is in the new input (items translate
                raise  # one by one, so it is there iff it fails alone); else it is the chain's
        # Whether the response is to be stored, decided here once: the Response says so.
        return dataclasses.replace(call, settings={
            **call.settings, "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store") is not False})

    async def store(self, scope: Scope, body: Mapping[str, Any], response: Mapping[str, Any],
                    events: bytes | None) -> None:
        """Store a response that ended (completed, incomplete or failed) to a request to be
        stored (see `translate`), with the SSE bytes it was streamed as; a failure is noted
        on the span, never raised."""
        record = self.responses.record(response, body, events, owner_of(scope),
                                       scope.get(CHAIN_KEY, ()))
        error = await self.responses.save(record)
        if error is not None:
            call_notes(scope)[STORE_ERROR] = error
