"""One typed Settings object, and the table of options that feeds it from CLI flags and env vars."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from otel_responses.protocol.chat.request import UnsupportedTools
from otel_responses.store.url import StoreSpec, default_data_dir
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.transport.target import UpstreamTarget

ENV_PREFIX = "OTEL_RESPONSES_"
# The options that set Settings.telemetry (TelemetryOptions) rather than Settings itself.
TELEMETRY_FIELDS = frozenset({"provider", "session_header", "user_header", "genai_semconv",
                              "trace_root", "max_attribute_length"})
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
FAIL_MODES = ("open", "closed")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
UPSTREAM_APIS = ("responses", "chat")
UNSUPPORTED_TOOLS = ("drop", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the CLI, the app, the server and telemetry need; built by the CLI or by hand
    for embedding. What spans record is in ``telemetry`` (the middleware's own options)."""

    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_api: Literal["responses", "chat"] = "responses"  # chat: /v1/responses adapted
    unsupported_tools: UnsupportedTools = "drop"  # adapter: built-in tools dropped, or a 400
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace: float = 30.0
    client_header_timeout: float = 10.0
    log_format: str = "text"
    log_level: str = "info"
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)
    overhead_header: bool = False
    metrics_port: int | None = None
    metrics_host: str | None = None  # None: the host
    metrics_models: tuple[str, ...] | None = None
    metrics_max_models: int = 50
    cost: bool = True  # price each call (llm.cost.* on spans, the cost metrics)
    prices: str | None = None  # the operator's price file (YAML or JSON), re-read on change
    api_keys: str | None = None  # the keys file; None: no auth, no limits
    rate_limit_store: str = field(default="memory", repr=False)  # a URL may hold a password
    rate_limit_fail: str = "open"
    metrics_key_label: bool = False
    # Response store (adapter mode): None is a SQLite file in data_dir.
    store: str | None = field(default=None, repr=False)  # a Redis URL may hold a password
    data_dir: str = field(default_factory=default_data_dir)
    store_ttl: float = 30 * 24 * 3600.0
    store_max_mb: float | None = None  # None: per backend (DEFAULT_MAX_MB)
    # The parsed ``store``, made once by __post_init__ (which checks it).
    store_spec: StoreSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, choices in (("log_format", LOG_FORMATS), ("log_level", LOG_LEVELS),
                              ("upstream_api", UPSTREAM_APIS),
                              ("unsupported_tools", UNSUPPORTED_TOOLS)):
            if getattr(self, name) not in choices:
                raise SettingError(name, f"must be one of {', '.join(choices)}")
        for name in ("connect_timeout", "read_timeout", "shutdown_grace", "client_header_timeout",
                     "max_body_bytes", "max_attribute_length", "metrics_max_models"):
            if not 0 < _value(self, name) < math.inf:  # NaN fails this too
                raise SettingError(name, "must be a finite number > 0")
        for name, lowest in (("port", 0), ("metrics_port", 1)):  # port 0: any free one
            value = getattr(self, name)
            if value is not None and not lowest <= value <= 65535:
                raise SettingError(name, f"must be {lowest} to 65535")
        if self.upstream is not None:
            try:
                UpstreamTarget.parse(self.upstream)
            except ValueError as exc:
                raise SettingError("upstream", str(exc)) from None
        if self.upstream_api_key is not None and not is_header_value(self.upstream_api_key):
            # Sent upstream as a header: a line break would end it and start one of its own.
            raise SettingError("upstream_api_key", "must be printable ASCII, without CR, LF, "
                               "NUL or other control characters (it is sent as a header)")
        if self.rate_limit_store != "memory" and not self.rate_limit_store.startswith(
                REDIS_SCHEMES):
            raise SettingError("rate_limit_store", "must be memory or a redis://, rediss:// "
                               "or unix:// URL")
        if self.rate_limit_fail not in FAIL_MODES:
            raise SettingError("rate_limit_fail", f"must be one of {', '.join(FAIL_MODES)}")
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise SettingError("metrics_port", "must differ from the port")
        if self.metrics_host is not None and self.metrics_port is None:
            raise SettingError("metrics_host", "needs a metrics port: without one, metrics are "
                               "served at /metrics on the main port")
        self._check_store()

    def _check_store(self) -> None:
        try:
            spec = StoreSpec.parse(self.store, self.data_dir)
        except ValueError as exc:
            # The message never quotes the URL: it may carry a password.
            raise SettingError("store", str(exc)) from None
        object.__setattr__(self, "store_spec", spec)  # frozen: set once, here
        for name in ("store_ttl", "store_max_mb"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise SettingError(name, "must be a finite number > 0")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _value(settings: Settings, name: str) -> Any:
    """A setting by its option name, whether it lives on Settings or on its telemetry."""
    if name in TELEMETRY_FIELDS:
        return getattr(settings.telemetry, name)
    return getattr(settings, name)


class SettingError(ValueError):
    """A setting's value is unusable; ``name`` is its Settings field (the CLI names the flag or
    environment variable it came from)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def is_header_value(value: str) -> bool:
    """True when ``value`` can go into an HTTP header as it is: printable ASCII, spaces and
    tabs (RFC 9110 field-value, less obs-text), nothing that would end the header line."""
    return all(" " <= ch <= "~" or ch == "\t" for ch in value)


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {raw!r}")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float:
    """Seconds, or a number with a unit: ``90``, ``15m``, ``12h``, ``30d``."""
    value = raw.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:])
    try:
        return float(value[:-1] if unit else value) * (unit or 1)
    except ValueError:
        raise ValueError(f"expected seconds or a duration such as 12h or 30d, not {raw!r}") \
            from None


def parse_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list; blanks around and between the commas are dropped."""
    return tuple(item for item in (part.strip() for part in raw.split(",")) if item)


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the CLI and the environment spell it."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    env_name: str | None = None  # when it is not OTEL_RESPONSES_ + the name
    secret: bool = False  # --help shows *** for its current value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.env_name or ENV_PREFIX + self.name.upper()

    @property
    def default(self) -> Any:
        owner = TelemetryOptions if self.name in TELEMETRY_FIELDS else Settings
        found = next(f for f in dataclasses.fields(owner) if f.name == self.name)
        return found.default if found.default_factory is dataclasses.MISSING \
            else found.default_factory()


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("host", "interface to listen on"),
    Option("port", "port to listen on", int),
    Option("upstream", "base URL of the upstream, e.g. https://api.openai.com/v1 or, with "
           "--upstream-api chat, http://localhost:8000/v1 (unset: start the built-in demo "
           "upstream, which serves both APIs)", metavar="URL"),
    Option("upstream_api_key", "API key sent to the upstream, replacing the client's "
           "Authorization/api-key (unset: forward the client's)", metavar="KEY", secret=True),
    Option("upstream_api", "the API the upstream speaks: responses (forwarded byte for byte) or "
           "chat (POST /v1/responses is served by the adapter over the upstream's "
           "/chat/completions; every other path is forwarded)", choices=UPSTREAM_APIS),
    Option("unsupported_tools", "with --upstream-api chat, built-in tools a chat server cannot "
           "run (web_search, file_search...): drop them (recorded on the span) or refuse the "
           "request with a 400", choices=UNSUPPORTED_TOOLS),
    Option("connect_timeout", "seconds to connect to the upstream (exceeded: 504)", float),
    Option("read_timeout", "seconds to wait for each upstream read (exceeded: 504)", float),
    Option("max_body_bytes", "largest request body accepted (larger: 413)", int),
    Option("shutdown_grace", "seconds to drain in-flight streams on SIGTERM", float),
    Option("client_header_timeout", "seconds a client connection has to send a whole request "
           "head (exceeded: the connection is closed)", float),
    Option("log_format", "log line format", choices=LOG_FORMATS),
    Option("log_level", "log level", choices=LOG_LEVELS),
    Option("provider", "llm.provider on spans (unset: inferred from the upstream host)"),
    Option("session_header", "request headers whose value becomes session.id, "
           "comma-separated, first present wins"),
    Option("user_header", "request header whose value becomes user.id"),
    Option("genai_semconv", "also record OTel GenAI semconv attributes (default: on when "
           "OTEL_SEMCONV_STABILITY_OPT_IN has gen_ai_latest_experimental)", parse_bool),
    Option("trace_root", "ignore inbound traceparent: every call starts its own trace",
           parse_bool),
    Option("max_attribute_length", "longest span attribute value kept, in characters "
           "(longer: truncated)", int),
    Option("overhead_header", "add x-otel-responses-overhead-ms to responses (for benchmarks; "
           "the only header the proxy ever adds)", parse_bool),
    Option("metrics_port", "serve Prometheus metrics on this port instead of at /metrics on "
           "the main port", int, metavar="PORT"),
    Option("metrics_host", "interface the metrics port listens on, e.g. 0.0.0.0 for scraping "
           "while the proxy stays on 127.0.0.1 (unset: the proxy's)"),
    Option("metrics_models", "comma-separated model names kept as metric labels; any other "
           "model is labelled 'other' (unset: the first --metrics-max-models seen)", parse_list,
           metavar="MODELS"),
    Option("metrics_max_models", "distinct model label values kept when --metrics-models is "
           "unset; later ones are labelled 'other'", int, metavar="N"),
    Option("cost", "price every call in USD (llm.cost.* span attributes, "
           "otel_responses_cost_usd_total)", parse_bool),
    Option("prices", "YAML or JSON file of your own prices, USD per million tokens: "
           '{"models": [{"match": GLOB, "input": N, "cached_input": N, "output": N}]}; '
           "first match wins, over the genai-prices table; re-read when it changes",
           metavar="FILE", env_name=ENV_PREFIX + "PRICES_FILE"),
    Option("api_keys", "keys file (YAML or JSON): clients must send one of its keys; re-read "
           "when it changes (unset: no keys needed, no limits)", metavar="FILE",
           env_name=ENV_PREFIX + "API_KEYS_FILE"),
    Option("rate_limit_store", "where limit counters live: memory (this process) or a "
           "redis:// URL shared by replicas", metavar="STORE", secret=True),
    Option("rate_limit_fail", "when the rate-limit store is unreachable: open (admit) or "
           "closed (503)", choices=FAIL_MODES),
    Option("metrics_key_label", "label the guard's metrics with the key's name", parse_bool),
    # Response store (adapter mode).
    Option("store", "where adapter mode keeps responses for previous_response_id and GET: "
           "memory, none, sqlite:///file.db (in --data-dir), sqlite:////abs/file.db, "
           "redis://[:password@]host:port/db or rediss://… (unset: sqlite in --data-dir)",
           metavar="URL", secret=True),
    Option("data_dir", "directory for the proxy's state (the default SQLite store)",
           metavar="DIR"),
    Option("store_ttl", "how long stored responses are kept: seconds, or 12h, 30d…",
           parse_duration, metavar="DURATION"),
    Option("store_max_mb", "size bound of a memory or SQLite store, oldest evicted first "
           "(unset: 256 for memory, 1024 for SQLite; Redis: its own maxmemory)", float,
           metavar="MB"),
)


def settings_from(values: Mapping[str, Any]) -> Settings:
    """Build Settings from option values, ignoring None (unset) and unknown keys; telemetry
    options go to ``Settings.telemetry``, the others keep their environment defaults."""
    known = {f.name for f in dataclasses.fields(Settings) if f.init} - {"telemetry"}
    given = {k: v for k, v in values.items() if v is not None}
    telemetry = TelemetryOptions(**{k: v for k, v in given.items() if k in TELEMETRY_FIELDS})
    return Settings(telemetry=telemetry, **{k: v for k, v in given.items() if k in known})
