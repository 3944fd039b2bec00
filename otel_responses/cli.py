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
from otel_responses.config import SERVE_OPTIONS, Option, Settings, parse_bool, settings_from
from otel_responses.logs import configure_logging

log = logging.getLogger("otel_responses")

# Seconds a thread may hold the GIL while another waits for it (CPython's default is 0.005).
GIL_SWITCH_INTERVAL = 0.0005
DEMO_TOKEN_DELAY = Option("token_delay", "seconds between streamed deltas of the demo upstream",
                          float)


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
    """Each flag defaults to its env var, else to the Settings default (shown in --help)."""
    for opt in options:
        default = defaults[opt.name] if defaults and opt.name in defaults else opt.default
        shown = "unset" if default is None else default
        if "key" in opt.name and default is not None:
            shown = "***"
        help_text = f"{opt.help} [env {opt.env}; default {shown}]"
        if opt.parse is parse_bool:
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                default=_env_value(opt, env), help=help_text)
            continue
        parser.add_argument(
            opt.flag, dest=opt.name, type=opt.parse, choices=opt.choices, metavar=opt.metavar,
            default=_env_value(opt, env), help=help_text,
        )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="otel-responses",
        description="Observability-first proxy for the OpenAI Responses API.",
    )
    parser.add_argument("--version", action="version", version=f"otel-responses {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,demo-upstream}")
    serve = commands.add_parser(
        "serve", help="run the proxy (the default command)",
        description="Run the proxy. Every flag can also be set by the env var shown.")
    _add_options(serve, SERVE_OPTIONS, env)
    demo = commands.add_parser(
        "demo-upstream", help="run only the built-in deterministic demo upstream",
        description="Run the deterministic demo Responses server (model 'demo').")
    _add_options(demo, [o for o in SERVE_OPTIONS if o.name in ("host", "log_format", "log_level")]
                 + [DEMO_TOKEN_DELAY], env, {"token_delay": 0.0})
    demo.add_argument("--port", type=int, default=8081, help="port to listen on [default 8081]")
    return parser


def _uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        # The client must see the upstream's Server and Date headers, not ours.
        server_header=False, date_header=False,
        timeout_graceful_shutdown=settings.shutdown_grace, lifespan="on", **extra,
    )


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
    else:
        log.info("forwarding to upstream %s", settings.upstream)
    try:
        app = create_app(settings, demo=demo_server is not None)
        uvicorn.Server(_uvicorn_config(app, settings)).run()
    finally:
        if demo_server is not None:
            demo_server.should_exit = True


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
    try:
        settings = settings_from(args)
    except ValueError as exc:
        raise SystemExit(f"otel-responses: {exc}") from exc
    configure_logging(settings.log_level, settings.log_format)
    if command == "demo-upstream":
        demo_upstream(settings.host, args["port"], args["token_delay"] or 0.0)
    else:
        serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
