"""How a call ended: the one vocabulary of the access log, the span and the metrics."""

from __future__ import annotations

from enum import StrEnum

from otel_responses.guard.keys import LIMIT_NAMES


class Outcome(StrEnum):
    """Every outcome the proxy reports; the values are the words the log and labels show."""

    # The exchange was relayed whole, and nothing more specific is known (any route).
    OK = "ok"
    # A Responses call ended with this status or terminal event (a stream, or a JSON body).
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    QUEUED = "queued"  # background mode: the answer comes later, through GET /v1/responses/{id}
    ERROR_EVENT = "error_event"  # an `error` event and no terminal event after it
    # The upstream answered with an HTTP error status.
    CLIENT_ERROR = "client_error"  # 4xx
    UPSTREAM_ERROR = "upstream_error"  # 5xx
    # The proxy answered itself.
    REJECTED = "rejected"  # the request was refused before reaching the upstream (4xx)
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # 502
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504
    UPSTREAM_INVALID_RESPONSE = "upstream_invalid_response"  # 502
    UPSTREAM_HEADERS_TOO_LARGE = "upstream_headers_too_large"  # 502
    STORE_UNAVAILABLE = "store_unavailable"  # 503: adapter mode's response store failed a read
    # The response did not end as HTTP says it should.
    UPSTREAM_CUT = "upstream_cut"  # the upstream stopped mid-body: the client's body is cut too
    CLIENT_DISCONNECT = "client_disconnect"
    APP_ERROR = "app_error"  # the wrapped application raised before answering

    @classmethod
    def of_status(cls, status: int) -> Outcome:
        """The outcome an HTTP error status from the upstream stands for."""
        return cls.UPSTREAM_ERROR if status >= 500 else cls.CLIENT_ERROR


SUCCESSES = frozenset({Outcome.OK, Outcome.COMPLETED, Outcome.INCOMPLETE, Outcome.QUEUED})
"""Outcomes that are not errors on a span (an incomplete answer is the model's, not a fault)."""

HTTP_ERRORS = frozenset({Outcome.CLIENT_ERROR, Outcome.UPSTREAM_ERROR})

FAULT_KINDS: dict[Outcome, str] = {
    Outcome.UPSTREAM_UNREACHABLE: "connect", Outcome.UPSTREAM_TIMEOUT: "timeout",
    Outcome.UPSTREAM_CUT: "reset", Outcome.UPSTREAM_INVALID_RESPONSE: "invalid",
    Outcome.UPSTREAM_HEADERS_TOO_LARGE: "header_limit", Outcome.UPSTREAM_ERROR: "5xx"}
"""Outcomes that are the upstream's fault, by the ``kind`` label of the faults counter."""

UNREACHED = frozenset({Outcome.UPSTREAM_UNREACHABLE, Outcome.UPSTREAM_TIMEOUT})
"""The upstream could not be reached or gave no answer in time."""

STREAM_ENDINGS = (Outcome.COMPLETED, Outcome.INCOMPLETE, Outcome.FAILED, Outcome.CANCELLED,
                  Outcome.ERROR_EVENT, Outcome.UPSTREAM_CUT, Outcome.CLIENT_DISCONNECT)
"""How a Responses stream can end, as the stream-endings counter labels it."""

REJECTIONS = ("invalid_api_key", "model_not_allowed", *LIMIT_NAMES, "limit_store_unavailable")
"""Why the guard refused a request, as the rejections counter labels it (each limit's reason
is its name in the keys file, so a new limit is a reason too)."""
