"""Do aiohttp and httpx, swapped into the proxy, pass bytes through exactly as the own client does?

    python bench/check_transports.py        # exit 1 and a diff if any transport differs

For each transport: a fresh demo upstream (fixed clock, so ids and timestamps repeat; gzip for
clients that ask for it) and a proxy launched by transports.py; the same requests on one
keep-alive connection. What the client gets (status, headers in order except ``date``, the
body de-chunked but not decompressed) and what the upstream gets (target, headers, body) must
equal the own client's.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import envs
import payloads
import servers
from servers import Server

# Headers the proxy's own server writes per response: they differ between any two requests.
_VOLATILE = {"date", "x-otel-responses-overhead-ms"}
SEEN_PATH = "/_seen"


def requests() -> list[tuple[str, dict[str, str], bytes]]:
    """(name, extra headers, body): every scenario's body, plain and asking for gzip."""
    out = []
    for name, scenario in payloads.scenarios().items():
        if scenario.pause_s:
            continue  # the stream's body again
        out.append((name, {}, scenario.body))
        out.append((f"{name} gzip", {"Accept-Encoding": "gzip"}, scenario.body))
    return out


def upstream_app() -> Any:
    """The demo upstream with a fixed clock, gzip on request, and a record of what it got."""
    from otel_responses.demo.app import DemoSettings, create_demo_app
    from starlette.middleware.gzip import GZipMiddleware

    inner = GZipMiddleware(create_demo_app(DemoSettings(clock=lambda: 1_700_000_000.0)),
                           minimum_size=0)
    seen: list[list[Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == SEEN_PATH:
            body = json.dumps(seen).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await inner(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # Host names this upstream's port, which differs per transport: checked, then masked.
        me = f"127.0.0.1:{scope['server'][1]}".encode()
        headers = [[n.decode("latin-1"), "(this upstream)" if n == b"host" and v == me
                    else v.decode("latin-1")] for n, v in scope["headers"]]
        seen.append([scope["method"], scope["raw_path"].decode("latin-1"), headers,
                     hashlib.sha256(body).hexdigest()])
        replayed = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Any:
            return replayed.pop() if replayed else await receive()

        await inner(scope, replay, send)

    return app


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning")


def exchange(port: int) -> list[Any]:
    """Every request on one keep-alive connection: what the client got, per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    got = []
    try:
        for name, extra, body in requests():
            conn.request("POST", "/v1/responses", body=body, headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {payloads.MASTER_KEY}", **extra})
            try:
                response = conn.getresponse()
                headers = [[k, v] for k, v in response.getheaders()
                           if k.lower() not in _VOLATILE]
                got.append([name, response.status, headers, response.read()])
            except (http.client.HTTPException, OSError) as exc:
                got.append([name, "failed", repr(exc)])  # the connection is unusable now
                break
    finally:
        conn.close()
    return got


def run_transport(transport: str, logdir: Path) -> tuple[list[Any], list[Any]]:
    """(what the client got, what the upstream got) through a proxy using ``transport``."""
    port = servers.free_port()
    upstream = servers.spawn(f"check-upstream-{transport}", port,
                             [sys.executable, __file__, "--serve-upstream", str(port)], logdir, {})
    proxy: Server | None = None
    try:
        upstream.wait_ready(30)
        proxy = servers.start_proxy(f"check-{transport}", logdir, upstream, tracing=False,
                                    sink=None, bsp_delay_ms=0, transport=transport)
        proxy.wait_ready(30)
        client = exchange(proxy.port)
        _, seen = servers.get(upstream.port, SEEN_PATH)
        return client, json.loads(seen)
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()


def _first_difference(ours: list[Any], theirs: list[Any]) -> str:
    for a, b in zip(ours, theirs, strict=False):
        if a != b:
            return f"own: {a!r:.600}\n   it: {b!r:.600}"
    return f"{len(ours)} vs {len(theirs)} items"


def check(transports: list[str], logdir: Path) -> bool:
    """True when every transport's bytes equal the own client's; prints what it compared."""
    own_client, own_upstream = run_transport("own", logdir)
    gzipped = [name for name, _, headers, _ in own_client
               if any(k.lower() == "content-encoding" for k, _ in headers)]
    print(f"own: {len(own_client)} responses, {sum(len(r[3]) for r in own_client):,} body "
          f"bytes, gzip-encoded as sent: {', '.join(gzipped) or 'none'}")
    same = True
    for transport in transports:
        client, upstream = run_transport(transport, logdir)
        for what, ours, theirs in (("client", own_client, client),
                                   ("upstream", own_upstream, upstream)):
            if ours == theirs:
                print(f"{transport}: what the {what} got is identical to the own client's")
            else:
                same = False
                print(f"{transport}: what the {what} got DIFFERS:\n"
                      f"{_first_difference(ours, theirs)}")
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default="aiohttp,httpx")
    p.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    logdir = Path(tempfile.mkdtemp(prefix="otel-check-"))
    if not envs.install_clients(logdir / "install.log"):
        raise SystemExit(f"could not install {', '.join(envs.CLIENTS_PACKAGES)}; see {logdir}")
    if not check(args.transports.split(","), logdir):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
