"""The proxy's upstream client against aiohttp's and httpx's, side by side in one run.

    python bench/clients.py                # ~15 min: 10 repetitions, c=1 and c=10
    python bench/clients.py --report-only  # re-print the tables from bench/out/clients.json

The same proxy (tracing off: the client is the only difference) is started once per
transport by transports.py, after check_transports.py has shown that each passes bytes
through exactly. The matrix is run.py's, interleaved with the order rotating per repetition.
Figures are medians over repetitions, with the interquartile range; "vs own" is the
difference to the own client taken per repetition, so drift between repetitions cancels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import check_transports
import envs
import payloads
import servers
import transports
from run import BENCH, Suite, _machine, _package_version

Run = dict[str, Any]
# The rule: a library within both of these of the own client replaces it.
THRESHOLD_MS = 0.1


class Spread(NamedTuple):
    median: float
    low: float  # first quartile
    high: float  # third quartile

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        if len(values) < 2:
            return cls(values[0], values[0], values[0])
        q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(q2, q1, q3)

    def text(self, sign: bool = False) -> str:
        f = "+.3f" if sign else ".3f"
        return f"{self.median:{f}} ({self.low:{f}} … {self.high:{f}})"


FIGURES: dict[str, Callable[[Run], float]] = {
    "p50": lambda r: r["p50_ms"],
    "p99": lambda r: r["p99_ms"],
    "ttft": lambda r: r["ttft_p50_ms"],
    "cpu": lambda r: r["server_cpu_s"] / max(r["server_requests"], 1) * 1000,
}


def matrix_parser(doc: str | None, results: str, *, repeats: int,
                  scenarios: str) -> argparse.ArgumentParser:
    """The options of a side-by-side matrix script (this one, guard.py)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=repeats,
                   help=f"repetitions per cell [{repeats}]")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run [2.0]")
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,10")
    p.add_argument("--scenarios", default=scenarios)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", type=Path, default=BENCH / "out" / results)
    return p


def parse_matrix(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.quick, args.bsp_delay_ms = False, 500  # what Suite.matrix reads besides the above
    return args


def reported_only(args: argparse.Namespace, render: Callable[[dict[str, Any]], str]) -> bool:
    """``--report-only``: re-render the saved results; True if that was asked."""
    if args.report_only:
        save(args, json.loads(args.results.read_text()), render)
    return bool(args.report_only)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = matrix_parser(__doc__, "clients.json", repeats=10,
                           scenarios="small,large,stream,spaced")
    parser.add_argument("--transports", default="own,aiohttp,httpx")
    return parse_matrix(parser, argv)


def _by_rep(runs: list[Run], scenario: str, conc: int, config: str,
            figure: str) -> dict[int, float]:
    return {r["rep"]: FIGURES[figure](r) for r in runs
            if (r["scenario"], r["concurrency"], r["config"]) == (scenario, conc, config)
            and r["requests"]}


def paired(runs: list[Run], scenario: str, conc: int, config: str, base: str,
           figure: str) -> Spread | None:
    """``config`` − ``base`` per repetition (both ran in it, back to back)."""
    mine, theirs = (_by_rep(runs, scenario, conc, c, figure) for c in (config, base))
    return Spread.of([v - theirs[rep] for rep, v in mine.items() if rep in theirs])


def _cell(spread: Spread | None, sign: bool = False) -> str:
    return spread.text(sign) if spread else "–"


def tables(results: dict[str, Any]) -> list[str]:
    runs, meta = results["runs"], results["meta"]
    names = meta["transports"]
    lines = []
    for scenario, title in meta["scenarios"].items():
        stream = meta["streams"][scenario]
        levels = sorted({r["concurrency"] for r in runs if r["scenario"] == scenario})
        latency = "added TTFT p50 ms | added stream p50 ms" if stream \
            else "added p50 ms | added p99 ms"
        unit = "stream" if stream else "request"
        lines += [f"**{title}**", "",
                  f"| c | client | {latency} | CPU ms / {unit} | vs own: p50 ms "
                  f"| vs own: CPU ms / {unit} |", "|---|---|---|---|---|---|---|"]
        for conc in levels:
            for name in names:
                first = "ttft" if stream else "p50"
                second = "p50" if stream else "p99"
                cpu = Spread.of(list(_by_rep(runs, scenario, conc, name, "cpu").values()))
                vs = (("–", "–") if name == "own" else
                      (_cell(paired(runs, scenario, conc, name, "own", "p50"), True),
                       _cell(paired(runs, scenario, conc, name, "own", "cpu"), True)))
                lines.append(
                    f"| {conc} | {name} "
                    f"| {_cell(paired(runs, scenario, conc, name, 'direct', first), True)} "
                    f"| {_cell(paired(runs, scenario, conc, name, 'direct', second), True)} "
                    f"| {_cell(cpu)} | {vs[0]} | {vs[1]} |")
        lines.append("")
    return lines


def decision(results: dict[str, Any]) -> list[str]:
    """The issue's rule on the non-stream scenarios, per library, from the medians."""
    runs, meta = results["runs"], results["meta"]
    cells = sorted({(r["scenario"], r["concurrency"]) for r in runs
                    if not meta["streams"][r["scenario"]]})
    lines = []
    for name in (n for n in meta["transports"] if n != "own"):
        worst = {figure: max((s.median for scenario, conc in cells
                              if (s := paired(runs, scenario, conc, name, "own", figure))),
                             default=float("nan")) for figure in ("p50", "cpu")}
        within = worst["p50"] <= THRESHOLD_MS and worst["cpu"] <= THRESHOLD_MS
        lines.append(f"- {name} {meta['versions'][name]}: at worst {worst['p50']:+.3f} ms added "
                     f"p50 and {worst['cpu']:+.3f} ms CPU per request against the own client "
                     f"→ {'within' if within else 'NOT within'} {THRESHOLD_MS} ms on both")
    return lines


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    head = [f"`{meta['command']}` on {meta['date']}, {meta['machine']}; otel-responses "
            f"{meta['package']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()
                                               if k != "own") + f"; {meta['repeats']} "
            "repetitions; median (interquartile range) over repetitions.", "",
            *[f"- {n}" for n in meta["notes"]], ""]
    return "\n".join([*head, *tables(results), *decision(results)]) + "\n"


def measure_all(args: argparse.Namespace, rundir: Path) -> tuple[list[Run], list[str]]:
    suite = Suite(args, rundir)
    names = args.transports.split(",")
    try:
        up = suite._add(servers.start_upstream("upstream", rundir))
        up.wait_ready(30)
        configs = {"direct": up}
        for name in names:
            configs[name] = suite._add(servers.start_proxy(
                name, rundir, up, tracing=False, sink=None, bsp_delay_ms=args.bsp_delay_ms,
                transport=name))
        runs = suite.side_by_side(configs, up)
    finally:
        suite.stop()
    return runs, suite.notes


def run_dir(args: argparse.Namespace, render: Callable[[dict[str, Any]], str],
            prefix: str) -> Path | None:
    """A fresh directory for a run's logs; None with ``--report-only``, after re-rendering
    the report from the saved results."""
    if reported_only(args, render):
        return None
    rundir = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"logs in {rundir}", flush=True)
    return rundir


def save(args: argparse.Namespace, results: dict[str, Any],
         render: Callable[[dict[str, Any]], str]) -> None:
    """Write the results (``args.results``) and their Markdown report beside; print it."""
    out = args.results.with_suffix(".md")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    out.write_text(render(results))
    print(out.read_text())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    rundir = run_dir(args, report, "otel-clients-")
    if rundir is None:
        return
    if not envs.install_clients(rundir / "install.log"):
        raise SystemExit(f"could not install {', '.join(envs.CLIENTS_PACKAGES)}; see {rundir}")
    names = args.transports.split(",")
    if not check_transports.check([n for n in names if n != "own"], rundir):
        raise SystemExit("a transport does not pass bytes through as the own client does")
    load_before = os.getloadavg()
    runs, notes = measure_all(args, rundir)
    load_after = os.getloadavg()
    notes.append("Load average (1/5/15 min) before the matrix "
                 f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
                 f"{'/'.join(f'{x:.2f}' for x in load_after)}; suite wall time "
                 f"{(time.monotonic() - started) / 60:.1f} min.")
    write_results(args, argv, "clients.py", runs, notes, report,
                  versions=transports.versions(), transports=names)


def write_results(args: argparse.Namespace, argv: list[str] | None, script: str,
                  runs: list[Run], notes: list[str], render: Callable[[dict[str, Any]], str],
                  **meta: Any) -> None:
    """Save ``runs`` with what the run was (the command, machine, package, scenarios and
    ``meta``) to ``args.results``, and its report, rendered by ``render``, beside it as .md."""
    known = payloads.scenarios()
    wanted = [s for s in args.scenarios.split(",") if s in known]
    results = {
        "meta": {
            "command": (f"python bench/{script} " + " ".join(
                sys.argv[1:] if argv is None else argv)).strip(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(), "package": _package_version(), "repeats": args.repeats,
            "scenarios": {s: known[s].title for s in wanted},
            "streams": {s: known[s].stream for s in wanted}, "notes": notes, **meta,
        },
        "runs": runs,
    }
    save(args, results, render)

if __name__ == "__main__":
    main()
