"""The Guard: pure ASGI in front of the telemetry middleware. It authenticates the inbound key,
checks its model allow-list, limits and USD budgets, and charges the call's tokens and cost once
it has ended."""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_responses.caller import SCOPE_KEY as CALLER_KEY
from otel_responses.caller import Caller
from otel_responses.guard.keys import ApiKey, Keys, KeysFile, Limits
from otel_responses.guard.limits import (
    CONCURRENT,
    PERIOD_WINDOWS,
    Admission,
    Check,
    LimitStore,
    Period,
    State,
    calendar_period,
)
from otel_responses.protocol.body import SCOPE_KEY as PARSED_KEY
from otel_responses.protocol.body import ParsedBody
from otel_responses.protocol.encoding import SCOPE_KEY as DECODED_KEY
from otel_responses.protocol.encoding import DecodedBody
from otel_responses.protocol.response_attributes import usage
from otel_responses.proxy.errors import ProxyError
from otel_responses.proxy.headers import UPSTREAM_API_KEY

log = logging.getLogger("otel_responses.guard")
access_log = logging.getLogger("otel_responses.access")

MINUTE, DAY = 60.0, 86400.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CACHED_PLANS = 4096
# A limit store outage is logged at most this often (every failure is counted).
_STORE_LOG_INTERVAL = 10.0
# Each limit: its window, the cost an admission charges (tokens and USD are charged after the
# call), and its kind: which x-ratelimit-*-{kind} headers report it, or "usd" for a budget.
_LIMITS: tuple[tuple[str, float, float, str | None], ...] = (
    ("requests_per_minute", MINUTE, 1.0, "requests"),
    ("tokens_per_minute", MINUTE, 0.0, "tokens"),
    ("tokens_per_day", DAY, 0.0, "tokens"),
    ("max_concurrent", CONCURRENT, 1.0, None),
    ("usd_per_day", PERIOD_WINDOWS["day"], 0.0, "usd"),
    ("usd_per_month", PERIOD_WINDOWS["month"], 0.0, "usd"),
)
# A budget's calendar period: its counter is named for the period it is in (see limits).
_PERIODS: dict[str, Period] = {"usd_per_day": "day", "usd_per_month": "month"}


class FinishedCall(Protocol):
    """What the guard needs of a finished call (the telemetry's CallRecord is one)."""

    status: int
    request_raw: bytes
    response: dict[str, Any] | None

    @property
    def cost_usd(self) -> float | None: ...


def charged_tokens(call: FinishedCall) -> int:
    """Tokens a finished call is charged: its reported usage (total, else input + output).

    Without usage (a stream cut before its terminal event, or an upstream that does not
    report it) an answered call is charged an estimate, a token per 4 bytes of the request and
    of the output received: the upstream bills what it generated even when the client hung
    up, and charging nothing would let a client dodge its token limit by disconnecting before
    the end. ``max_output_tokens`` is not charged: it is a ceiling, often unset. A call the
    upstream refused (an error status) is charged nothing.
    """
    counts = usage(call.response or {})
    if counts.total is not None:
        return counts.total
    if counts.input is not None or counts.output is not None:
        return (counts.input or 0) + (counts.output or 0)
    if not 200 <= call.status < 300:
        return 0
    output = (call.response or {}).get("output")
    size = len(call.request_raw) + (len(json.dumps(output)) if output else 0)
    return math.ceil(size / 4)


@dataclass
class GuardEvents:
    """Where the guard reports, for metrics: a rejection (reason, key name or None), a limit
    store failure (operation: admit or settle), tokens and USD charged to a key."""

    rejected: Callable[[str, str | None], None] = lambda reason, key: None
    store_failed: Callable[[str], None] = lambda operation: None
    charged: Callable[[float, str], None] = lambda tokens, key: None
    spent: Callable[[float, str], None] = lambda usd, key: None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a key's limits (and its model's) need checked and charged: the same for every
    request until the keys file changes, so it is worked out once and cached."""

    checks: list[Check]
    kinds: list[tuple[str, str | None]]  # each check's (limit name, kind)
    slots: tuple[str, ...]  # the concurrency counters
    token_counters: tuple[tuple[str, float], ...]  # (counter, window), charged after the call
    budgets: tuple[int, ...]  # the checks that are budgets: their counters are per period


@dataclass(slots=True)
class _Ticket:
    """One admitted call: what to charge and release when it ends. The telemetry sink fills in
    ``tokens`` and ``usd`` through the context variable, since the sink knows nothing of the
    guard."""

    caller: Caller
    lease: str | None = None
    slots: tuple[str, ...] = ()
    token_counters: tuple[tuple[str, float], ...] = ()  # (counter, window)
    tokens: int | None = None
    budget_counters: tuple[tuple[str, float], ...] = ()  # of this period
    usd: float | None = None


_CURRENT: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "otel_responses_guard_ticket", default=None)


class Guard:
    """Wraps the app: every http request but the ``exempt`` paths needs a key of ``keys``.

    The inbound key is read from ``Authorization: Bearer …`` or ``api-key`` and looked up by
    its SHA-256; it never goes upstream (see `UPSTREAM_API_KEY`). The request body is read
    first only when a model check needs it (an allow-list or ``model_limits``), and handed on
    as received. Limits are checked in ``store`` all at once; an unreachable store admits
    (``fail_open``) or answers 503. The call's `Caller` is put in the scope under
    ``otel_responses.caller`` for the access log, the span and the response store.
    """

    def __init__(self, app: ASGIApp, keys: KeysFile, store: LimitStore, *,
                 exempt: frozenset[str] = frozenset(), fail_open: bool = True,
                 max_body_bytes: int = 32 * 1024 * 1024, clock: Callable[[], float] = time.time,
                 events: GuardEvents | None = None) -> None:
        self.app = app
        self.keys = keys
        self.store = store
        self.exempt = exempt
        self.fail_open = fail_open
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.events = events or GuardEvents()
        self._store_logged = -math.inf
        self._lease_prefix = uuid.uuid4().hex[:16] + ":"
        self._leases = itertools.count()
        self._plans_of: Keys | None = None
        self._plans: dict[tuple[bytes, str | None], _Plan] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        keys = self.keys.value  # the watcher swaps it: no file read here
        presented = _presented_key(scope["headers"])
        key = keys.find(presented) if presented is not None else None
        if key is None:
            await self._reject(scope, send, started, "invalid_api_key", None, invalid_api_key())
            return
        scope = {**scope, CALLER_KEY: key.caller, UPSTREAM_API_KEY: key.upstream_api_key}
        model: str | None = None
        if keys.needs_model and scope["method"] in _BODY_METHODS:
            receive, model, readable = await self._read_model(scope, receive)
            if key.models is not None and (not readable or (
                    model is not None and not key.allows(model))):
                await self._reject(scope, send, started, "model_not_allowed", key.caller,
                                   model_not_allowed(model if readable else None))
                return
        plan = self._plan(keys, key, model)
        ticket = _Ticket(key.caller)
        if plan.checks:
            now = self.clock()
            checks, edges, ticket.budget_counters = _dated(plan, now)
            admission = await self._admit(checks, bool(plan.slots), now)
            if admission is None and not self.fail_open:
                await self._reject(scope, send, started, "limit_store_unavailable", key.caller,
                                   store_unavailable())
                return
            if admission is not None and not admission.admitted:
                # A spent budget is back when its period ends, not as its window slides.
                admission = replace(admission, states=tuple(
                    State(state.used, edges[i] - now) if i in edges and state.wait > 0
                    else state for i, state in enumerate(admission.states)))
                reason, error = rate_limited(checks, plan.kinds, admission)
                await self._reject(scope, send, started, reason, key.caller, error)
                return
            if admission is not None:
                ticket.lease = admission.lease
                ticket.slots = plan.slots
            ticket.token_counters = plan.token_counters
        token = _CURRENT.set(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)
            await self._settle(ticket)

    def observe_call(self, call: FinishedCall) -> None:
        """The telemetry sink: the tokens and cost of the call that just ended, for the guard
        to charge (it runs inside the call's context, so it finds its ticket). Budgets are
        charged the priced cost only: an unpriced call, or one without usage, is charged
        nothing rather than a guessed figure."""
        ticket = _CURRENT.get()
        if ticket is None:
            return
        if ticket.token_counters:
            ticket.tokens = charged_tokens(call)
        if ticket.budget_counters and (cost := call.cost_usd):
            ticket.usd = cost

    def _plan(self, keys: Keys, key: ApiKey, model: str | None) -> _Plan:
        """`_plan_of`, kept per key and model until the keys file changes (models come from
        clients: the cache stops growing at `_CACHED_PLANS`)."""
        if keys is not self._plans_of:
            self._plans_of, self._plans = keys, {}
        found = self._plans.get((key.digest, model))
        if found is None:
            found = _plan_of(keys, key, model)
            if len(self._plans) < _CACHED_PLANS:
                self._plans[(key.digest, model)] = found
        return found

    async def _admit(self, checks: list[Check], slots: bool, now: float) -> Admission | None:
        # A lease names the concurrency slots a call holds: unique across replicas by the
        # process's random prefix, cheap by the counter.
        lease = f"{self._lease_prefix}{next(self._leases)}" if slots else ""
        try:
            return await self.store.admit(checks, now, lease)
        except Exception as exc:
            self._store_failed("admit", exc)
            return None

    async def _settle(self, ticket: _Ticket) -> None:
        charges = [(counter, window, float(amount))
                   for counters, amount in ((ticket.token_counters, ticket.tokens),
                                            (ticket.budget_counters, ticket.usd)) if amount
                   for counter, window in counters]
        slots = ticket.slots if ticket.lease is not None else ()
        if not charges and not slots:
            return
        try:
            await self.store.settle(charges, slots, ticket.lease or "", self.clock())
        except Exception as exc:
            self._store_failed("settle", exc)
            return
        if ticket.tokens:
            self.events.charged(ticket.tokens, ticket.caller.name)
        if ticket.usd:
            self.events.spent(ticket.usd, ticket.caller.name)

    def _store_failed(self, operation: str, exc: Exception) -> None:
        self.events.store_failed(operation)
        now = time.monotonic()
        if now - self._store_logged >= _STORE_LOG_INTERVAL:
            self._store_logged = now
            what = "admitting" if self.fail_open else "refusing (503)"
            log.warning("rate-limit store failed on %s (%s); %s requests while it is down "
                        "(logged at most every %.0f s, counted in "
                        "otel_responses_limit_store_errors_total)", operation,
                        type(exc).__name__, what, _STORE_LOG_INTERVAL)

    async def _read_model(self, scope: Scope,
                          receive: Receive) -> tuple[Receive, str | None, bool]:
        """Read the body to find its model; return the receive that replays it, the model
        (None if the body names none) and whether the body could be read. A body over the
        size limit is handed on unread: the proxy refuses it (413)."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= self.max_body_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return _replaying(b"".join(chunks), True, receive, message), None, True
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replay = _replaying(body, more, receive)
        if more:
            return replay, None, True
        plain = body
        decoded = scope[DECODED_KEY] = DecodedBody()  # the telemetry and the adapter reuse it
        coded = decoded.decode(scope["headers"], body, self.max_body_bytes)
        if coded is not None:
            plain = coded.body
            if not coded.whole:
                return replay, None, False
        parsed = ParsedBody()  # the telemetry and the access log reuse this parse
        scope[PARSED_KEY] = parsed
        document = parsed.object(plain) if plain.strip() else {}
        if document is None:  # not a JSON object: there is no model field to check
            return replay, None, True
        model = document.get("model")
        if model is None or isinstance(model, str):
            return replay, model, True
        return replay, None, False

    async def _reject(self, scope: Scope, send: Send, started: float, reason: str,
                      caller: Caller | None, error: ProxyError) -> None:
        self.events.rejected(reason, caller.name if caller else None)
        size = await error.send(send)
        if access_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "method": scope["method"], "path": scope["path"], "route": "guard",
                "status": error.status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "bytes_out": size, "outcome": error.outcome, "reason": reason}
            if caller is not None:
                fields.update(key=caller.name, team=caller.team)
            access_log.info("%s %s %s", scope["method"], scope["path"], error.status,
                            extra={"access": fields})


def _presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
        elif name == b"api-key" and value.strip():
            return value.strip().decode("latin-1")
    return None


def _plan_of(keys: Keys, key: ApiKey, model: str | None) -> _Plan:
    """The checks of ``key``'s limits and of its model's, each one's (reason, kind), and what
    of them is charged or released after the call."""
    scopes: list[tuple[str, Limits]] = [(key.caller.name, keys.limits_of(key))]
    if model is not None and (found := keys.model_limit(model)) is not None:
        scopes.append((f"{key.caller.name}\x00model:{found[0]}", found[1]))
    checks: list[Check] = []
    kinds: list[tuple[str, str | None]] = []
    for prefix, limits in scopes:
        for name, window, cost, kind in _LIMITS:
            limit = getattr(limits, name)
            if limit is not None:
                checks.append(Check(f"{prefix}\x00{name}", limit, window, cost))
                kinds.append((name, kind))
    return _Plan(checks, kinds,
                 slots=tuple(c.counter for c in checks if c.window == CONCURRENT),
                 token_counters=tuple((c.counter, c.window) for c, (_, kind)
                                      in zip(checks, kinds, strict=True) if kind == "tokens"),
                 budgets=tuple(i for i, (_, kind) in enumerate(kinds) if kind == "usd"))


def _dated(plan: _Plan, now: float) -> tuple[list[Check], dict[int, float],
                                              tuple[tuple[str, float], ...]]:
    """The plan's checks with each budget's counter named for the period ``now`` is in (the
    cached checks are the same in every period), when each budget's period ends (by index),
    and the budgets' (counter, window) to charge when the call ends."""
    if not plan.budgets:
        return plan.checks, {}, ()
    dated = list(plan.checks)
    edges: dict[int, float] = {}
    for i in plan.budgets:
        label, edges[i] = calendar_period(_PERIODS[plan.kinds[i][0]], now)
        dated[i] = replace(dated[i], counter=f"{dated[i].counter}\x00{label}")
    return dated, edges, tuple((dated[i].counter, dated[i].window) for i in plan.budgets)


def _replaying(body: bytes, more: bool, receive: Receive,
               then: Message | None = None) -> Receive:
    """A receive that gives ``body`` back first (and ``then``, a message read after it)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
    if then is not None:
        pending.append(then)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()
    return replay


# -- the guard's answers, OpenAI-shaped ----------------------------------------------------

def invalid_api_key() -> ProxyError:
    # As OpenAI words it, without echoing any part of the key.
    return ProxyError(401, "Incorrect API key provided, or none: send a key of this proxy as "
                      "'Authorization: Bearer KEY' or 'api-key: KEY'.",
                      "invalid_request_error", "invalid_api_key")


def model_not_allowed(model: str | None) -> ProxyError:
    message = (f"This API key may not use the model '{model}'." if model is not None
               else "The request's model could not be read, and this API key is limited to "
                    "some models.")
    return ProxyError(403, message, "invalid_request_error", "model_not_allowed", "model")


def store_unavailable() -> ProxyError:
    return ProxyError(503, "The rate-limit store is unavailable; try again shortly.",
                      "server_error", "rate_limit_store_unavailable")


def rate_limited(checks: list[Check], kinds: list[tuple[str, str | None]],
                 admission: Admission) -> tuple[str, ProxyError]:
    """The 429 for a refused admission: the reason (the first budget that refused, else the
    first limit), and the error with ``retry-after`` (the longest wait) and OpenAI's
    ``x-ratelimit-*`` headers for the tightest requests and tokens limits."""
    refused = [(c, k, s) for c, k, s in zip(checks, kinds, admission.states, strict=True)
               if s.wait > 0]
    reason = refused[0][1][0]
    wait = max(s.wait for _, _, s in refused)
    headers: list[tuple[bytes, bytes]] = [
        (b"retry-after", str(max(1, math.ceil(wait))).encode()),
        (b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode())]
    # A spent budget answers first: retrying soon cannot help, unlike a rate limit.
    budgets = [(check, name) for check, (name, kind), _ in refused if kind == "usd"]
    if budgets:
        check, name = budgets[0]
        return name, budget_spent(name, check.limit, wait, tuple(headers))
    for kind in ("requests", "tokens"):
        of_kind = [(c, s) for c, (_, k), s in zip(checks, kinds, admission.states, strict=True)
                   if k == kind]
        if of_kind:
            check, state = min(of_kind, key=lambda cs: (-cs[1].wait, cs[0].limit - cs[1].used))
            headers += [
                (f"x-ratelimit-limit-{kind}".encode(), _number(check.limit)),
                (f"x-ratelimit-remaining-{kind}".encode(),
                 _number(max(0.0, check.limit - state.used))),
                (f"x-ratelimit-reset-{kind}".encode(), _duration(state.wait).encode())]
    limit_name = reason.replace("_", " ")
    # OpenAI's 429s are typed by what ran out: "requests" or "tokens".
    error = ProxyError(429, f"Rate limit reached for this API key ({limit_name}); retry after "
                       f"{_duration(wait)}.", "tokens" if reason.startswith("tokens") else
                       "requests", "rate_limit_exceeded", headers=tuple(headers))
    return reason, error


def budget_spent(name: str, limit: float, wait: float,
                 headers: tuple[tuple[bytes, bytes], ...]) -> ProxyError:
    """OpenAI's answer when an account's quota is spent, for a key's budget: the key is not
    named (its owner knows it), the budget and when it comes back are."""
    period = _PERIODS[name]
    message = (f"You exceeded this API key's {'daily' if period == 'day' else 'monthly'} "
               f"budget of USD {_number(limit).decode()}; it resets at the start of the next "
               f"UTC {period}, in {_duration(wait)}.")
    return ProxyError(429, message, "insufficient_quota", "insufficient_quota",
                      headers=headers)


def _number(value: float) -> bytes:
    return str(int(value) if value == int(value) else round(value, 6)).encode()


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``6s``, ``1m30s``, ``2h0m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"

