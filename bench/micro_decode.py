"""Micro-benchmark: CPU the recorder spends on a gzipped 2 KB answer beyond a plain one, in µs.

    python bench/micro_decode.py [--number N]

Feeds the same non-stream Responses body through CallRecorder as the proxy does, once plain
and once gzipped (Content-Encoding: gzip), in one chunk, through finish(); prints the best
of seven runs of each and the difference.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from otel_responses.telemetry.recorder import CallRecorder

JSON = [(b"content-type", b"application/json")]


def answer() -> bytes:
    """A typical 2 KB Responses answer: one message, usage."""
    text = "The quick brown fox jumps over the lazy dog. " * 36
    return json.dumps({
        "id": "resp_1", "object": "response", "created_at": 1_700_000_000, "status": "completed",
        "model": "gpt-4o-2024-08-06", "output": [{
            "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 12, "output_tokens": 360, "total_tokens": 372}}).encode()


def run(body: bytes, headers: list[tuple[bytes, bytes]], number: int) -> float:
    """µs per call, CPU time."""
    clock = time.process_time_ns
    start = clock()
    for _ in range(number):
        recorder = CallRecorder(0)
        recorder.response_start(200, headers)
        recorder.response_chunk(body, False)
        recorder.finish()
    return (clock() - start) / number / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per run")
    args = parser.parse_args()
    plain = answer()
    gzipped = gzip.compress(plain)
    coded = [*JSON, (b"content-encoding", b"gzip")]
    print(f"body {len(plain)} bytes, gzipped {len(gzipped)}")
    best_plain = min(run(plain, JSON, args.number) for _ in range(7))
    best_gzip = min(run(gzipped, coded, args.number) for _ in range(7))
    print(f"plain {best_plain:.1f} µs, gzip {best_gzip:.1f} µs, "
          f"difference {best_gzip - best_plain:.1f} µs")


if __name__ == "__main__":
    main()
