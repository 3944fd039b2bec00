"""Huge non-stream JSON answers through the traced proxy: its peak RSS, and how late /healthz
answers while they pass. ``--python`` picks the interpreter whose otel-responses is measured,
so a baseline venv can be run beside the current one."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from servers import Server, free_port, get, spawn, start_sink

BENCH = Path(__file__).resolve().parent


def body_of(size: int) -> bytes:
    """A Response object of ``size`` bytes: one huge output text, then the usage."""
    def build(n: int) -> bytes:
        return json.dumps({"id": "resp_big", "object": "response", "status": "completed",
                           "model": "bench", "output": [{
                               "type": "message", "id": "msg_big", "role": "assistant",
                               "content": [{"type": "output_text", "text": "y" * n}]}],
                           "usage": {"input_tokens": 1, "output_tokens": 1,
                                     "total_tokens": 2}}).encode()
    return build(size - len(build(0)))


def serve_upstream(port: int, size: int) -> None:
    """Answers every request with the same huge body (Content-Length framed, keep-alive)."""
    body = body_of(size)
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(head)
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


async def fetch(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b'{"model": "bench", "input": "hi"}'
    writer.write(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: " + str(len(request)).encode()
                 + b"\r\n\r\n" + request)
    received = 0
    while chunk := await reader.read(1 << 20):
        received += len(chunk)
    writer.close()
    return received


def peak_rss_kb(server: Server) -> int:
    with open(f"/proc/{server.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--size-mb", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--untraced", action="store_true", help="OTEL_SDK_DISABLED=true")
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mb << 20
    if args.upstream_port:
        serve_upstream(args.upstream_port, size)
        return
    logdir = Path(tempfile.mkdtemp(prefix="large-bodies-"))
    port = free_port()
    upstream = spawn("upstream", port, [sys.executable, __file__, "--size-mb",
                                        str(args.size_mb), "--upstream-port", str(port)],
                     logdir, {}, health="/")
    sink = start_sink(logdir)
    proxy_port = free_port()
    proxy = spawn("proxy", proxy_port, [args.python, "-m", "otel_responses", "serve", "--port",
                                        str(proxy_port), "--upstream",
                                        f"http://127.0.0.1:{port}/v1"], logdir,
                  {"OTEL_SDK_DISABLED": "true"} if args.untraced else {
                      "OTEL_TRACES_EXPORTER": "otlp",
                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                          f"http://127.0.0.1:{sink.port}/v1/traces"})
    try:
        time.sleep(1.0)  # the upstream answers no GET: give it a moment instead
        sink.wait_ready(30)
        proxy.wait_ready(30)
        idle_kb = peak_rss_kb(proxy)
        lags: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.wait(0.01):
                started = time.monotonic()
                status, _ = get(proxy_port, "/healthz", timeout=10)
                assert status == 200
                lags.append(time.monotonic() - started)

        prober = threading.Thread(target=probe)
        prober.start()

        async def burst() -> list[int]:
            return await asyncio.gather(*(fetch(proxy_port) for _ in range(args.concurrency)))
        started = time.monotonic()
        received = asyncio.run(burst())
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # the spans are built after the last byte: keep probing through them
        done.set()
        prober.join()
        assert all(r > size for r in received), received
        lags.sort()
        print(f"{args.concurrency} x {args.size_mb} MB through {args.python}"
              f"{' (untraced)' if args.untraced else ''}: "
              f"{elapsed:.1f} s; proxy RSS idle {idle_kb / 1024:.0f} MB, peak "
              f"{peak_rss_kb(proxy) / 1024:.0f} MB; /healthz p50 "
              f"{lags[len(lags) // 2] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms "
              f"({len(lags)} probes)")
    finally:
        for server in (proxy, sink, upstream):
            server.stop()


if __name__ == "__main__":
    main()
