"""The command line: ``python -m mempool bench | replay | show`` (layer 6).

Each subcommand has its own pair of functions, ``_add_<name>_parser(sub)`` and
``_cmd_<name>(args) -> exit status``.  Bad arguments and unreadable files give one
line on stderr and exit status 2, never a traceback.

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
from typing import Any, NoReturn

import numpy as np

from . import trace as tr
from ._units import parse_size
from .errors import MempoolError
from .strategies import STRATEGIES
from .view import format_bytes

__all__ = ["main"]


class UsageError(Exception):
    """A bad argument or an unreadable file: one line on stderr, exit status 2."""


class Progress:
    """Progress on stderr for work that runs longer than a second: a tqdm bar when tqdm
    is installed, else one self-overwriting line; nothing when ``quiet`` or when stderr
    is not a terminal (a log, a pipe, a test)."""

    DELAY = 1.0

    def __init__(self, total: int, desc: str, quiet: bool = False) -> None:
        self.active = not quiet and sys.stderr.isatty()
        self.total, self.desc, self.done = total, desc, 0
        self.t0 = time.perf_counter()
        self._bar: Any = None
        self._shown = False
        if self.active:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, delay=self.DELAY,
                                 leave=False, unit="run", dynamic_ncols=True)

    def step(self, what: str) -> None:
        """One unit of work starts: ``what``."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(what, refresh=False)
            if self.done:
                self._bar.update(1)
            self.done += 1
            return
        self.done += 1
        if time.perf_counter() - self.t0 >= self.DELAY:
            sys.stderr.write(f"\r\033[K{self.desc} [{self.done}/{self.total}] {what}")
            sys.stderr.flush()
            self._shown = True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _progress(msg: str, quiet: bool) -> None:
    """One line of progress on a terminal (nothing when quiet or not a terminal)."""
    if quiet or not sys.stderr.isatty():
        return
    sys.stderr.write("\r\033[K" + msg)
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
    max_bytes: int = tr.MAX_TRACE_BYTES,
) -> list[dict[str, object]]:
    """Run the bench; returns one row per (trace, strategy) and prints the table.  A
    strategy that cannot be made over a trace's capacity (Slab below its page size) is
    left out of that trace's rows, and the reason printed after the table."""
    if csv_path:
        from .plot import check_writable

        check_writable(csv_path)  # before the run, not after it
    rows: list[dict[str, object]] = []
    skipped: list[str] = []
    names = ["libc", *strategies]
    total = len(paths) * len(names)
    progress = Progress(total, "bench", quiet)
    try:
        for path in paths:
            _bench_trace(path, names, rows, progress, quick=quick, repeat=repeat,
                         python_sample=python_sample, capacity_factor=capacity_factor,
                         skipped=skipped, max_bytes=max_bytes)
    finally:
        progress.close()
    print(format_table(rows))
    for why in skipped:
        print(f"skipped {why}")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _row(trace: tr.Trace, name: str, r: tr.ReplayResult, ns: float, base: float | None,
         py_ns: float) -> dict[str, object]:
    """One row of the bench's table (``format_table``)."""
    nan = float("nan")
    return {
        "trace": trace.name,
        "strategy": name,
        "ops": r.ops,
        "native_ns_per_op": ns,
        "ratio_to_libc": ns / base if base else nan,
        "python_ns_per_op": py_ns,
        "high_water_over_maxlive": r.high_water_ratio if name != "libc" else nan,
        "peak_used_over_maxlive": r.peak_used / r.maxlive if name != "libc" and r.maxlive
        else nan,
        "failures": r.failures,
        "maxlive": r.maxlive,
        "capacity": r.capacity,
    }


def _bench_trace(path: str | os.PathLike[str], names: list[str], rows: list[dict[str, object]],
                 progress: Progress, *, quick: bool, repeat: int, python_sample: int,
                 capacity_factor: float, skipped: list[str], max_bytes: int) -> None:
    trace = tr.read(path, max_bytes=max_bytes)
    if quick:
        trace = trace.head(50_000)
        python_sample = min(python_sample, 10_000)
    sample = trace.head(python_sample)
    base = None
    for name in names:
        progress.step(f"{trace.name}: {name}")
        try:
            r, ns = _replay_cell(trace, name, 1 if quick else repeat, capacity_factor)
        except (ValueError, TypeError, MempoolError) as e:
            if name == "libc":
                raise
            skipped.append(f"{name} on {trace.name}: {e}")
            continue
        if name == "libc":
            base = ns
            py_ns = float("nan")
        else:
            py_ns, _ = tr.python_replay(
                sample, name, capacity=max(int(capacity_factor * trace.maxlive), 4096),
                **BENCH_OPTIONS.get(name, {}))
        rows.append(_row(trace, name, r, ns, base, py_ns))


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
name = {"-m": args[1:2], "-c": ["python -c"]}.get(args[0], [os.path.basename(args[0])])[0]
with trace.record(out, program=name):
    if args[0] == "-m":
        sys.argv = args[1:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c":  # (in a __main__ of its own, as python -c runs it)
        import types
        sys.argv = ["-c", *args[2:]]
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        main.__builtins__ = __builtins__
        exec(compile(args[1], "<string>", "exec"), main.__dict__)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
"""


def _add_record_parser(sub: Any) -> None:
    r = sub.add_parser("record", help="record a program's allocations as a trace",
                       description="python -m mempool record -o OUT[.gz] -- python script.py "
                       "ARGS (or -- python -m module ARGS, -- python -c CODE ARGS): NumPy's "
                       "allocations and the pool operations of the whole program, as "
                       "trace.record() writes them.  "
                       "With --malloc, any program's C heap calls (malloc, calloc, realloc, "
                       "free, the aligned ones), through a preload recorder: "
                       "record --malloc -o OUT -- CMD ARGS")
    r.add_argument("-o", "--output", required=True, help="the trace file (.gz: compressed)")
    r.add_argument("--malloc", action="store_true",
                   help="record CMD's C heap calls (any dynamically linked program; "
                   "run CPython with PYTHONMALLOC=malloc to see its small objects)")
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
    if args.malloc:
        if not cmd:
            return fail("no command to record: record --malloc -o OUT -- CMD ARGS")
        try:
            r = tr.record_malloc(cmd, args.output)
        except OSError as e:  # the command (Popen names it), else the output
            if e.filename is None:
                return fail(str(e))
            verb = "run" if e.filename == cmd[0] else "write"
            return fail(f"cannot {verb} {e.filename}: {e.strerror or e}")
        except (RuntimeError, tr.TraceError) as e:
            return fail(str(e))
        others = f"; {r.other_processes} process(es) it started not recorded" \
            if r.other_processes else ""
        print(f"mempool record: {r.ops:,} ops, maxlive {r.maxlive:,} bytes -> {r.path}{others}",
              file=sys.stderr)
        return r.returncode if r.returncode >= 0 else 128 - r.returncode
    if len(cmd) < 2:
        return fail("no command to record: record -o OUT -- python script.py ARGS")
    if not os.path.basename(cmd[0]).startswith("python"):
        return fail(f"{cmd[0]} is not a Python interpreter (record --malloc records any program's "
                    "C heap calls)")
    if cmd[1] in ("-m", "-c") and len(cmd) < 3:
        return fail(f"{cmd[1]} needs {'a module name' if cmd[1] == '-m' else 'the code'}")
    if cmd[1].startswith("-") and cmd[1] not in ("-m", "-c"):
        return fail(f"the interpreter's option {cmd[1]} is not supported here: record -o OUT -- "
                    "python script.py ARGS, python -m module ARGS or python -c CODE ARGS")
    if cmd[1] not in ("-m", "-c") and not os.path.isfile(cmd[1]):
        return fail(f"cannot open {cmd[1]}: no such file")
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


class _Parser(argparse.ArgumentParser):
    """argparse, with bad arguments reported in one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _size_arg(text: str) -> int:
    """A size on the command line: '64MiB', '1.5GiB', '4096'."""
    try:
        return parse_size(text, "size")
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _plot_path(text: str) -> str:
    """--plot FILE: checked before any work starts (suffix, folder, permission)."""
    from .plot import check_path

    try:
        check_path(text)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _csv_path(text: str) -> str:
    """--csv FILE: checked before the bench runs (folder, permission)."""
    from .plot import check_writable

    try:
        check_writable(text)
    except OSError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_plot_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--plot", metavar="FILE", type=_plot_path,
                   help=f"also draw {what} into FILE (.png or .svg; needs matplotlib: "
                   "pip install 'mempool[plot]')")


def _add_max_bytes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bytes", type=_size_arg, default=tr.MAX_TRACE_BYTES,
                   help="the largest trace text read, plain or as a gzip file inflates "
                   "(default 1GiB)")


def _need_matplotlib(args: argparse.Namespace) -> None:
    if getattr(args, "plot", None):
        from .plot import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as e:
            raise UsageError(str(e)) from None


def _read_trace(path: str, max_bytes: int) -> tr.Trace:
    try:
        return tr.read(path, max_bytes=max_bytes)
    except tr.TraceError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


# ---- bench --------------------------------------------------------------------------------
def _add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="replay traces through every strategy and print a table",
                       description="Replay traces (default: the bundled ones) through every "
                       "strategy and the C library in C, and print ns/op, span over live "
                       "bytes and failures.")
    b.add_argument("traces", nargs="*", help="trace files (default: the bundled ones)")
    b.add_argument("--quick", action="store_true", help="a 50,000-op prefix of each trace")
    b.add_argument("--strategy", "-s", action="append", choices=sorted(STRATEGIES),
                   help="only these strategies (repeatable; default: all)")
    b.add_argument("--repeat", type=_positive_int, default=3,
                   help="timed runs per cell; the best counts")
    b.add_argument("--python-sample", type=_positive_int, default=200_000,
                   help="ops of each trace timed from a Python loop")
    b.add_argument("--capacity-factor", type=float, default=2.0,
                   help="span = factor x maxlive of the trace (default 2)")
    b.add_argument("--csv", type=_csv_path, help="also write the rows to this CSV file")
    _add_max_bytes_arg(b)
    _add_plot_arg(b, "the strategies side by side")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def _cmd_bench(args: argparse.Namespace) -> int:
    _need_matplotlib(args)
    paths = args.traces or tr.bundled()
    for path in args.traces:
        if not os.path.isfile(path):
            raise UsageError(f"cannot read {path}: "
                             f"{'not a regular file' if os.path.exists(path) else 'no such file'}")
    if not 0 < args.capacity_factor < float("inf"):
        raise UsageError(f"--capacity-factor must be > 0 and finite, got {args.capacity_factor}")
    try:
        rows = bench(
            paths, args.strategy or list(STRATEGIES), quick=args.quick, repeat=args.repeat,
            python_sample=args.python_sample, capacity_factor=args.capacity_factor,
            csv_path=args.csv, quiet=args.quiet, max_bytes=args.max_bytes,
        )
    except tr.TraceError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
    if args.plot:
        from .plot import bench_chart

        bench_chart(rows, args.plot)
        print(f"picture: {args.plot}")
    return 0


# ---- replay -------------------------------------------------------------------------------
def _add_replay_parser(sub: Any) -> None:
    r = sub.add_parser(
        "replay", help="one trace through chosen strategies: the table and the peak / "
        "fragmentation story",
        description="Replay one trace in C through the chosen strategies (default: all) and "
        "the C library; print the bench's table for it and, per strategy, the peak and "
        "fragmentation figures sampled along the replay.")
    r.add_argument("trace", help="a mempool-trace v1 file (plain or gzip)")
    r.add_argument("--strategy", "-s", action="append", choices=list(STRATEGIES),
                   help="only these strategies (repeatable; default: all)")
    r.add_argument("--capacity", type=_size_arg,
                   help="the span, e.g. 64MiB (default: 2 x the trace's peak live bytes)")
    r.add_argument("--samples", type=_positive_int, default=1000,
                   help="figures sampled along each replay (default 1000)")
    _add_max_bytes_arg(r)
    _add_plot_arg(r, "used / high water / largest free / fragmentation over the ops")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def replay_report(trace: tr.Trace, strategies: Sequence[str], *, capacity: int | None = None,
                  samples: int = 1000, quiet: bool = False, skipped: list[str] | None = None
                  ) -> tuple[list[dict[str, object]], list[tr.ReplaySeries]]:
    """``replay``'s work: the table's rows (libc first) and each strategy's series.

    A strategy that cannot be made over the capacity (Slab below its page size) is a
    UsageError, or, when ``skipped`` is a list, left out with the reason appended."""
    cap = capacity if capacity is not None else max(2 * trace.maxlive, 4096)
    rows: list[dict[str, object]] = []
    series: list[tr.ReplaySeries] = []
    progress = Progress(len(strategies) + 1, f"replay {trace.name}", quiet)
    try:
        progress.step("libc")
        base = tr.replay(trace, "libc")
        rows.append(_row(trace, "libc", base, base.ns_per_op, base.ns_per_op, float("nan")))
        for name in strategies:
            progress.step(name)
            try:
                s = tr.replay_series(trace, name, capacity=cap, samples=samples,
                                     **BENCH_OPTIONS.get(name, {}))
            except (ValueError, TypeError, MempoolError) as e:
                if skipped is None:
                    raise UsageError(f"{name} over {cap} bytes: {e}") from None
                skipped.append(f"{name}: {e}")
                continue
            series.append(s)
            rows.append(_row(trace, name, s.result, s.result.ns_per_op, base.ns_per_op,
                             float("nan")))
    finally:
        progress.close()
    return rows, series


def format_story(trace: tr.Trace, series: Sequence[tr.ReplaySeries]) -> str:
    """The peak / fragmentation figures of each strategy's replay, as a table."""
    head = ["strategy", "capacity", "peak used", "high water", "hw/maxlive", "largest free",
            "free", "frag", "max frag", "at op", "failures"]
    body = []
    for s in series:
        r = s.result
        k = s.peak_index
        frag = s.fragmentation
        # the worst fragmentation while the pool held at least half its peak (an almost
        # empty pool is "fragmented" by a single small range)
        busy = s.used >= max(int(s.used.max()) // 2, 1) if len(s.used) else s.used.astype(bool)
        j = int(np.argmax(np.where(busy, frag, -1.0))) if len(frag) else 0
        body.append([
            r.strategy, format_bytes(r.capacity), format_bytes(r.peak_used),
            format_bytes(r.high_water), f"{r.high_water_ratio:.4f}",
            format_bytes(int(s.largest_free[k])) if len(s.ops) else "-",
            format_bytes(int(s.available[k])) if len(s.ops) else "-",
            f"{frag[k]:.3f}" if len(s.ops) else "-",
            f"{frag[j]:.3f}" if len(s.ops) else "-",
            f"{int(s.ops[j]):,}" if len(s.ops) else "-",
            f"{r.failures:,}",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(cells, widths, strict=False)))
             for cells in [head, ["-" * w for w in widths], *body]]
    first = series[0] if series else None
    intro = (f"{trace.name}: {len(trace):,} ops, peak live requested bytes (maxlive) "
             f"{format_bytes(trace.maxlive)}")
    if first is not None and len(first.ops):
        intro += f"; figures sampled every {int(first.ops[0]):,} ops"
    note = ("largest free, free, frag: at the sample where used was highest (frag = 1 - "
            "largest free / free);\nmax frag, at op: the worst fragmentation while used was at "
            "least half its peak, and when")
    return "\n".join([intro, *lines, note])


def _cmd_replay(args: argparse.Namespace) -> int:
    _need_matplotlib(args)
    trace = _read_trace(args.trace, args.max_bytes)
    if len(trace) == 0:
        raise UsageError(f"{args.trace}: the trace has no operations")
    strategies = list(dict.fromkeys(args.strategy or STRATEGIES))
    t0 = time.perf_counter()
    skipped: list[str] | None = None if args.strategy else []
    rows, series = replay_report(trace, strategies, capacity=args.capacity,
                                 samples=args.samples, quiet=args.quiet, skipped=skipped)
    print(format_table(rows))
    for why in skipped or []:
        print(f"skipped {why}")
    print()
    print(format_story(trace, series))
    if args.plot:
        from .plot import replay_chart

        replay_chart(series, args.plot)
        print(f"picture: {args.plot}")
    if not args.quiet:
        print(f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0


# ---- show ---------------------------------------------------------------------------------
def _add_show_parser(sub: Any) -> None:
    s = sub.add_parser(
        "show", help="a persistent file pool or a live shared pool: stats, largest free "
        "ranges, memory map",
        description="Show a persistent pool file (read-only: the file is never changed) or, "
        "with --shared NAME, a live shared pool (its state is copied under its lock and "
        "read offline, so its users are not held up): stats, the largest free ranges and "
        "a memory map of the span.")
    s.add_argument("path", nargs="?", help="a persistent pool file (Pool.create)")
    s.add_argument("--shared", metavar="NAME", help="a shared pool's name (SharedPool.create)")
    s.add_argument("--rows", type=_positive_int, default=32,
                   help="lines of the memory map (default 32)")
    s.add_argument("--width", type=_positive_int, default=64,
                   help="characters per line of the memory map (default 64)")
    s.add_argument("--top", type=int, default=10, help="largest free ranges listed (default 10)")
    s.add_argument("--ascii", action="store_true", help="the map in ASCII characters")
    _add_plot_arg(s, "the memory map")


def format_view(v: Any, *, rows: int = 32, width: int = 64, top: int = 10,
                ascii: bool = False) -> str:
    """``show``'s report of a :class:`mempool.view.PoolView`."""
    st = v.stats
    cap = st.capacity

    def b(n: int) -> str:
        return f"{n:,} B ({format_bytes(n)})" if n >= 1024 else f"{n:,} B"

    out = [
        f"{v.source}: {v.strategy}, capacity {b(cap)}",
        f"  used            {b(st.used)}  {100 * st.used / cap:.2f} % of the capacity",
        f"  available       {b(st.available)}",
        f"  largest free    {b(st.largest_free)}",
        f"  fragmentation   {st.fragmentation:.4f}  (1 - largest free / available)",
        f"  live ranges     {st.live:,}",
        f"  free ranges     {st.free_ranges:,}",
        f"  peak used       {b(st.peak_used)}",
        f"  high water      {b(st.high_water)}",
        f"  rounding        {b(st.internal_fragmentation)}  (handed out beyond the requests)",
        f"  metadata        {b(st.metadata)}  (the strategy's state block)",
    ]
    out += [f"  note: {n}" for n in v.notes]
    free = v.largest_free(top)
    if top > 0:
        out.append(f"largest free ranges ({len(free)} of {int((~v.allocated).sum()):,}):")
        out += [f"  offset {o:>15,}  size {s:>15,} B  ({format_bytes(s)})" for o, s in free]
    out.append(f"memory map ({v.legend(rows, width, ascii=ascii)}):")
    out += v.text_map(rows, width, ascii=ascii)
    return "\n".join(out)


def _cmd_show(args: argparse.Namespace) -> int:
    from .errors import CorruptionError
    from .view import view_file, view_shared

    if (args.path is None) == (args.shared is None):
        raise UsageError("give a pool file PATH or --shared NAME (one of them)")
    if args.top < 0:
        raise UsageError(f"--top must be >= 0, got {args.top}")
    _need_matplotlib(args)
    what = args.path if args.shared is None else f"shared pool {args.shared!r}"
    try:
        v = view_file(args.path) if args.shared is None else view_shared(args.shared)
    except FileNotFoundError:
        raise UsageError(f"{what}: no such {'file' if args.shared is None else 'shared pool'}"
                         ) from None
    except IsADirectoryError:
        raise UsageError(f"{what}: is a folder, not a pool file") from None
    except PermissionError:
        raise UsageError(f"{what}: permission denied") from None
    except CorruptionError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(str(what)) else f"{what}: {msg}") from None
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"{what}: {e}") from None
    print(format_view(v, rows=args.rows, width=args.width, top=args.top, ascii=args.ascii))
    if args.plot:
        from .plot import memory_map

        memory_map(v, args.plot)
        print(f"picture: {args.plot}")
    return 0


COMMANDS = {"bench": _cmd_bench, "replay": _cmd_replay, "show": _cmd_show}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mempool``: returns the exit status (2 for bad arguments or files)."""
    parser = _Parser(prog="python -m mempool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_bench_parser(sub)
    _add_replay_parser(sub)
    _add_show_parser(sub)
    _add_record_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "record":
        return _cmd_record(args, argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"mempool {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mempool {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): quiet, as other tools are
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
