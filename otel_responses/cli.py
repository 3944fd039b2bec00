"""Command line: ``otel-responses serve`` (the default) and ``otel-responses demo-upstream``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import uvicorn

from otel_responses import __version__
from otel_responses.app import create_app
from otel_responses.config import (
    SERVE_OPTIONS,
    Option,
    SettingError,
    Settings,
    parse_bool,
    settings_from,
)
from otel_responses.logs import configure_logging
from otel_responses.server import Server, uvicorn_config
from otel_responses.store.sqlite import create_private_file
from otel_responses.telemetry.export import describe_span_export

log = logging.getLogger("otel_responses")

# Seconds a thread may hold the GIL while another waits for it (CPython's default is 0.005).
GIL_SWITCH_INTERVAL = 0.0005
DEMO_TOKEN_DELAY = Option("token_delay", "seconds between streamed deltas of the demo upstream",
                          float)
DEMO_OPTIONS = ("host", "log_format", "log_level")


def _env_value(option: Option, env: Mapping[str, str]) -> Any:
    raw = env.get(option.env)
    if raw is None or raw == "":
        return None
    try:
        value = option.parse(raw)
    except ValueError as exc:
        raise SystemExit(f"otel-responses: invalid {option.env}={raw!r}: {exc}") from exc
    if option.choices and value not in option.choices:
        raise SystemExit(f"otel-responses: {option.env} must be one of {', '.join(option.choices)}")
    return value


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option],
                 env: Mapping[str, str], defaults: Mapping[str, Any] | None = None) -> None:
    """A flag per option; its default (shown in --help) is its env var, else the Settings one.

    The flags themselves default to None: :func:`_option_values` fills in the environment
    afterwards, so it knows which of the two the user typed.
    """
    for opt in options:
        default = defaults[opt.name] if defaults and opt.name in defaults else opt.default
        shown = env.get(opt.env) or ("unset" if default is None else default)
        if opt.secret and shown not in ("unset", default):  # a URL may hold a password
            shown = "***"
        help_text = f"{opt.help} [env {opt.env}; default {shown}]"
        if opt.parse is parse_bool:
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                help=help_text)
            continue
        parser.add_argument(opt.flag, dest=opt.name, type=opt.parse, choices=opt.choices,
                            metavar=opt.metavar, help=help_text)


class _HelpWithServe(argparse.Action):
    """``otel-responses --help``: the commands, then the flags of ``serve``, the default one."""

    def __init__(self, option_strings: Sequence[str], dest: str,
                 serve: argparse.ArgumentParser | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help (the commands and the serve flags) and exit")
        self.serve = serve

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.print_help()
        if self.serve is not None:
            print("\nWith no command, or flags only, the command is serve:\n")
            self.serve.print_help()
        parser.exit()


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    # allow_abbrev=False everywhere: a prefix of a flag (--upstream-ap for --upstream-api)
    # must be an error, not a silently different setting.
    parser = argparse.ArgumentParser(
        prog="otel-responses", allow_abbrev=False, add_help=False,
        description="Observability-first proxy for the OpenAI Responses API.")
    commands = parser.add_subparsers(dest="command", title="commands",
                                     metavar="{serve,demo-upstream}")
    serve = commands.add_parser(
        "serve", help="run the proxy (the default command)", allow_abbrev=False,
        description="Run the proxy. Every flag can also be set by the env var shown.")
    _add_options(serve, SERVE_OPTIONS, env)
    demo = commands.add_parser(
        "demo-upstream", help="run only the built-in deterministic demo upstream",
        allow_abbrev=False,
        description="Run the deterministic demo upstream (model 'demo'): a Responses "
                    "server that also serves Chat Completions.")
    _add_options(demo, [o for o in SERVE_OPTIONS if o.name in DEMO_OPTIONS] + [DEMO_TOKEN_DELAY],
                 env, {"token_delay": 0.0})
    demo.add_argument("--port", type=int, default=8081, help="port to listen on [default 8081]")
    parser.add_argument("-h", "--help", action=_HelpWithServe, serve=serve)
    parser.add_argument("--version", action="version", version=f"otel-responses {__version__}")
    return parser


def _option_values(args: Mapping[str, Any], options: Sequence[Option],
                   env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each option's value (its flag, else its env var) and, for those set, the name the user
    typed to set it."""
    values = dict(args)
    typed: dict[str, str] = {}
    for opt in options:
        if values.get(opt.name) is not None:
            typed[opt.name] = opt.flag
        elif (from_env := _env_value(opt, env)) is not None:
            values[opt.name], typed[opt.name] = from_env, opt.env
    return values, typed


def _settings(values: Mapping[str, Any], typed: Mapping[str, str]) -> Settings:
    try:
        return settings_from(values)
    except SettingError as exc:
        # Named as the user set it, never echoing the value (it may be the API key).
        option = next((o for o in SERVE_OPTIONS if o.name == exc.name), None)
        name = typed.get(exc.name) or (option.flag if option else exc.name)
        raise SystemExit(f"otel-responses: {name} {exc.problem}") from None


def _start_demo_upstream(token_delay: float) -> tuple[str, uvicorn.Server]:
    """Serve the demo upstream on a free loopback port in a daemon thread."""
    from otel_responses.demo.app import DemoSettings, create_demo_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    # Said before anything else logs, so a newcomer sees first what they are talking to.
    log.info("no --upstream given: serving the built-in demo upstream (model 'demo') at %s", url)
    config = uvicorn.Config(create_demo_app(DemoSettings(token_delay=token_delay)),
                            log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # Off the main thread uvicorn leaves signal handling to the proxy's server.
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                     name="demo-upstream").start()
    return url, server


def serve(settings: Settings) -> None:
    # The span exporter's thread encodes batches in Python; by default it may keep the GIL
    # 5 ms from the event loop each time the loop wakes for I/O (that was our p99).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    demo_server = None
    if settings.upstream is None:
        url, demo_server = _start_demo_upstream(token_delay=0.02)
        settings = settings.replace(upstream=url)
    try:
        _check_store(settings)
        try:
            app = create_app(settings, demo=demo_server is not None)
        except ValueError as exc:  # an OTEL_* variable the exporter cannot use, a keys file
            raise SystemExit(f"otel-responses: {exc}") from None
        log.info("%s", startup_summary(settings, demo=demo_server is not None))
        Server(uvicorn_config(app, settings)).run()
    finally:
        if demo_server is not None:
            demo_server.should_exit = True


def _check_store(settings: Settings) -> None:
    """Adapter mode's SQLite store file, created now: one it cannot be stops the start with
    one line saying why, not a traceback from the app's startup."""
    spec = settings.store_spec
    if settings.upstream_api != "chat" or spec.path is None:
        return
    try:
        create_private_file(spec.path)
    except OSError as exc:
        raise SystemExit(f"otel-responses: cannot create the response store "
                         f"{spec.path}: {exc.strerror or exc}") from None


def startup_summary(settings: Settings, *, demo: bool) -> str:
    """One line: what the proxy forwards to, where its spans go, where its metrics are."""
    metrics = _url(settings.metrics_host or settings.host, settings.metrics_port or settings.port)
    api = " (Chat Completions, adapted)" if settings.upstream_api == "chat" else ""
    # The store's URL is not named: it may hold a password.
    keys = (f"; keys: {settings.api_keys}, limits in "
            f"{'memory' if settings.rate_limit_store == 'memory' else 'redis'}"
            if settings.api_keys else "")
    if settings.upstream_api == "chat":  # the store's line part: never a Redis password
        api += f"; responses stored: {settings.store_spec.described}"
    return (f"otel-responses {__version__} on {_url(settings.host, settings.port)}: upstream "
            f"{settings.upstream}{api}; spans: {describe_span_export(os.environ, demo=demo)}; "
            f"metrics: {metrics}/metrics{keys}")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def demo_upstream(host: str, port: int, token_delay: float) -> None:
    from otel_responses.demo.app import DemoSettings, create_demo_app

    app = create_demo_app(DemoSettings(token_delay=token_delay))
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                  lifespan="on")).run()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `otel-responses` and `otel-responses --upstream URL` mean `serve`.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    options = ([o for o in SERVE_OPTIONS if o.name in DEMO_OPTIONS] + [DEMO_TOKEN_DELAY]
               if command == "demo-upstream" else SERVE_OPTIONS)
    values, typed = _option_values(args, options, os.environ)
    settings = _settings(values, typed)
    configure_logging(settings.log_level, settings.log_format)
    if command == "demo-upstream":
        demo_upstream(settings.host, values["port"], values["token_delay"] or 0.0)
    else:
        serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
