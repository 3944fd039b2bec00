"""What keys and limits cost per request: the proxy without keys, with keys and limits in
memory, and with them in Redis, side by side in one run.

    python bench/guard.py                # ~3 min: 7 repetitions, small requests at c=1 and 10
    python bench/guard.py --report-only  # re-print the tables from bench/out/guard.json

Every proxy is untraced (the guard is the only difference) in front of the same demo upstream;
the keyed ones get a keys file with the load generator's key and every limit set (none is
reached), so each request is authenticated, checked against four limits and charged. The
Redis one talks to a local redis-server (Debian's package) started here. Figures are medians
over repetitions; "vs off" is taken per repetition, so drift between repetitions cancels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import payloads
import servers
from clients import (
    Spread,
    _by_rep,
    _cell,
    matrix_parser,
    paired,
    parse_matrix,
    reported_only,
    write_results,
)
from run import Suite

CONFIGS = ("off", "memory", "redis")
TARGETS_MS = {"memory": 0.1, "redis": 0.4}  # the issue's: added p50 at c=1
KEYS = {
    "keys": [{"name": "bench", "key": payloads.MASTER_KEY, "team": "bench",
              "limits": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                         "tokens_per_day": 10**13, "max_concurrent": 10**4}}],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_matrix(matrix_parser(__doc__, "guard.json", repeats=7, scenarios="small"), argv)


def start_redis(rundir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server without persistence on a free loopback port; its URL once it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    port = servers.free_port()
    with open(rundir / "redis-server.log", "wb") as log:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=rundir)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"redis-server did not start; see {rundir}") from None
            time.sleep(0.05)


def measure_all(args: argparse.Namespace, rundir: Path) -> tuple[list[dict[str, Any]],
                                                                 list[str]]:
    suite = Suite(args, rundir)
    keys = rundir / "keys.json"
    keys.write_text(json.dumps(KEYS))
    redis, url = start_redis(rundir)
    try:
        up = suite._add(servers.start_upstream("upstream", rundir))
        up.wait_ready(30)
        flags = {"off": (), "memory": ("--api-keys", str(keys)),
                 "redis": ("--api-keys", str(keys), "--rate-limit-store", url)}
        configs = {name: suite._add(servers.start_proxy(
            name, rundir, up, tracing=False, sink=None, bsp_delay_ms=args.bsp_delay_ms,
            flags=flags[name])) for name in CONFIGS}
        runs = suite.side_by_side(configs, up)
    finally:
        suite.stop()
        redis.kill()
        redis.wait(10)
    return runs, suite.notes


def report(results: dict[str, Any]) -> str:
    runs, meta = results["runs"], results["meta"]
    lines = [f"`{meta['command']}` on {meta['date']}, {meta['machine']}; otel-responses "
             f"{meta['package']}; {meta['repeats']} repetitions; median (interquartile range) "
             "over repetitions; every proxy untraced.", ""]
    for scenario, title in meta["scenarios"].items():
        levels = sorted({r["concurrency"] for r in runs if r["scenario"] == scenario})
        lines += [f"**{title}**", "", "| c | guard | p50 ms | p99 ms | CPU ms / request "
                  "| vs off: p50 ms | vs off: p99 ms | vs off: CPU ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for conc in levels:
            for name in CONFIGS:
                own = [Spread.of(list(_by_rep(runs, scenario, conc, name, f).values()))
                       for f in ("p50", "p99", "cpu")]
                added = [("–" if name == "off" else
                          _cell(paired(runs, scenario, conc, name, "off", f), True))
                         for f in ("p50", "p99", "cpu")]
                lines.append(f"| {conc} | {name} | " + " | ".join(_cell(s) for s in own)
                             + " | " + " | ".join(added) + " |")
        lines.append("")
    for name, target in TARGETS_MS.items():
        added = paired(runs, "small", 1, name, "off", "p50")
        if added is not None:
            verdict = "met" if added.median <= target else "NOT met"
            lines.append(f"- {name}: {added.median:+.3f} ms added p50 at c=1 (target "
                         f"≤ {target} ms): {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if reported_only(args, report):
        return
    rundir = Path(tempfile.mkdtemp(prefix="otel-guard-"))
    print(f"logs in {rundir}", flush=True)
    runs, notes = measure_all(args, rundir)
    write_results(args, argv, "guard.py", runs, notes, report)

if __name__ == "__main__":
    main()
