"""The command line: ``python -m mempool bench [TRACE...]`` (layer 6).

``bench`` replays each trace through every strategy and the libc baseline in C,
times a prefix of it from a Python loop, and prints one table:

    trace x strategy -> native ns/op, ratio to libc, Python ns/op,
                        high_water / maxlive, peak used / maxlive, failures

high_water / maxlive is the span the strategy needed over the peak of live
requested bytes (external plus internal fragmentation); peak used / maxlive is the
rounding alone (internal fragmentation: 1.0 for the exact strategies).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import trace as tr
from .strategies import STRATEGIES

__all__ = ["main"]


def _progress(msg: str, quiet: bool) -> None:
    if quiet:
        return
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + msg)
    else:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


#: Constructor options the bench gives a strategy for malloc-like traces (the
#: defaults suit other uses: Buddy's 4 KiB blocks are pages, not objects).
BENCH_OPTIONS: dict[str, dict[str, int]] = {"buddy": {"min_block": 16}}


def _replay_cell(trace: tr.Trace, name: str, repeat: int, capacity_factor: float
                 ) -> tuple[tr.ReplayResult, float]:
    """(first run, best ns/op of `repeat` more runs on the same warm object).

    The first run gives the space figures (high_water is cumulative in a strategy,
    so later runs cannot add to it); the warm runs give the time without the page
    faults of a fresh state block.
    """
    cap = max(int(capacity_factor * trace.maxlive), 4096)
    if name == "libc":
        runs = [tr.replay(trace, "libc") for _ in range(repeat + 1)]
    else:
        obj = tr.strategy_for(trace, name, capacity=cap, **BENCH_OPTIONS.get(name, {}))
        runs = [tr.replay(trace, obj) for _ in range(repeat + 1)]
    return runs[0], min(r.ns_per_op for r in runs[1:])


def bench(
    paths: Sequence[str | os.PathLike[str]],
    strategies: Sequence[str],
    *,
    quick: bool = False,
    repeat: int = 3,
    python_sample: int = 200_000,
    capacity_factor: float = 2.0,
    csv_path: str | None = None,
    quiet: bool = False,
) -> list[dict[str, object]]:
    """Run the bench; returns one row per (trace, strategy) and prints the table."""
    rows: list[dict[str, object]] = []
    names = ["libc", *strategies]
    total = len(paths) * len(names)
    done = 0
    t_start = time.perf_counter()
    for path in paths:
        _progress(f"reading {Path(path).name}", quiet)
        trace = tr.read(path)
        if quick:
            trace = trace.head(50_000)
            python_sample = min(python_sample, 10_000)
        sample = trace.head(python_sample)
        base = None
        for name in names:
            done += 1
            _progress(f"[{done}/{total}] {trace.name}: {name}", quiet)
            r, ns = _replay_cell(trace, name, 1 if quick else repeat, capacity_factor)
            if name == "libc":
                base = ns
                py_ns = float("nan")
            else:
                py_ns, _ = tr.python_replay(
                    sample, name, capacity=max(int(capacity_factor * trace.maxlive), 4096),
                    **BENCH_OPTIONS.get(name, {}))
            nan = float("nan")
            rows.append({
                "trace": trace.name,
                "strategy": name,
                "ops": r.ops,
                "native_ns_per_op": ns,
                "ratio_to_libc": ns / base if base else nan,
                "python_ns_per_op": py_ns,
                "high_water_over_maxlive": r.high_water_ratio if name != "libc" else nan,
                "peak_used_over_maxlive": r.peak_used / r.maxlive if name != "libc" else nan,
                "failures": r.failures,
                "maxlive": r.maxlive,
                "capacity": r.capacity,
            })
    _progress(f"done in {time.perf_counter() - t_start:.1f} s\n", quiet)
    print(format_table(rows))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _fmt(v: object, spec: str) -> str:
    if isinstance(v, float) and v != v:  # NaN
        return "-"
    return format(v, spec)


def format_table(rows: list[dict[str, object]]) -> str:
    head = ["trace", "strategy", "native ns/op", "x libc", "python ns/op", "hw/maxlive",
            "used/maxlive", "failures"]
    body = [
        [
            str(r["trace"]),
            str(r["strategy"]),
            _fmt(r["native_ns_per_op"], ".1f"),
            _fmt(r["ratio_to_libc"], ".2f"),
            _fmt(r["python_ns_per_op"], ".0f"),
            _fmt(r["high_water_over_maxlive"], ".4f"),
            _fmt(r["peak_used_over_maxlive"], ".4f"),
            str(r["failures"]),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if k < 2 else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths, strict=False)))

    out = [line(head), line(["-" * w for w in widths])]
    prev = None
    for cells in body:
        if prev is not None and cells[0] != prev:
            out.append("")
        out.append(line(cells))
        prev = cells[0]
    return "\n".join(out)


_BOOT = """\
import os, runpy, sys
from mempool import trace
out, args = os.environ.pop("MEMPOOL_RECORD_OUT"), sys.argv[1:]
with trace.record(out, program=os.path.basename(args[1] if args[0] == "-m" else args[0])):
    if args[0] == "-m":
        sys.argv = args[1:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
"""


def _add_record_parser(sub: Any) -> None:
    r = sub.add_parser("record", help="record a Python program's allocations as a trace",
                       description="python -m mempool record -o OUT[.gz] -- python script.py "
                       "ARGS (or -- python -m module ARGS): NumPy's allocations and the pool "
                       "operations of the whole program, as trace.record() writes them")
    r.add_argument("-o", "--output", required=True, help="the trace file (.gz: compressed)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- python script.py args")


def _cmd_record(args: argparse.Namespace, argv: Sequence[str]) -> int:
    def fail(msg: str) -> int:
        print(f"mempool record: {msg}", file=sys.stderr)
        return 2

    if "--" not in argv:
        return fail("put the command after --: record -o OUT -- python script.py ARGS")
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if len(cmd) < 2:
        return fail("no command to record: record -o OUT -- python script.py ARGS")
    if not os.path.basename(cmd[0]).startswith("python"):
        return fail(f"{cmd[0]} is not a Python interpreter (the --malloc recorder is not built yet)")
    if cmd[1] == "-m" and len(cmd) < 3:
        return fail("-m needs a module name")
    try:
        with open(args.output, "wb"):
            pass
    except OSError as e:
        return fail(f"cannot write {args.output}: {e.strerror}")
    src = os.path.dirname(os.path.dirname(os.path.abspath(tr.__file__)))
    env = dict(os.environ, MEMPOOL_RECORD_OUT=os.path.abspath(args.output))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    import subprocess
    try:
        return subprocess.run([cmd[0], "-c", _BOOT, *cmd[1:]], env=env).returncode
    except OSError as e:
        return fail(f"cannot run {cmd[0]}: {e.strerror}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mempool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="replay traces through every strategy and print a table")
    b.add_argument("traces", nargs="*", help="trace files (default: the bundled ones)")
    b.add_argument("--quick", action="store_true", help="a 50,000-op prefix of each trace")
    b.add_argument("--strategy", "-s", action="append", choices=sorted(STRATEGIES),
                   help="only these strategies (repeatable; default: all)")
    b.add_argument("--repeat", type=int, default=3, help="timed runs per cell; the best counts")
    b.add_argument("--python-sample", type=int, default=200_000,
                   help="ops of each trace timed from a Python loop")
    b.add_argument("--capacity-factor", type=float, default=2.0,
                   help="span = factor x maxlive of the trace (default 2)")
    b.add_argument("--csv", help="also write the rows to this CSV file")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    _add_record_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "record":
        return _cmd_record(args, argv)
    if args.command == "bench":
        paths = args.traces or tr.bundled()
        try:
            bench(
                paths, args.strategy or list(STRATEGIES), quick=args.quick, repeat=args.repeat,
                python_sample=args.python_sample, capacity_factor=args.capacity_factor,
                csv_path=args.csv, quiet=args.quiet,
            )
        except (OSError, ValueError) as e:
            print(f"mempool bench: {e}", file=sys.stderr)
            return 2
    return 0
