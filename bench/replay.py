"""`python -m mempool replay` against the native replay (issue 13's target: a 2 M-op trace
through all strategies in under 10 x the native replay time).

    python bench/replay.py [TRACE] [--repeat 3] [--out bench/results/replay.txt]

TRACE defaults to the bundled python3-compileall trace (1.88 M ops).  Reports, best of
--repeat:

  native      seconds of mempool.trace.replay() of the already-read trace through the C
              library and every strategy (what the bench times; one run each, the
              options and capacity the command uses)
  read        seconds of mempool.trace.read(TRACE)
  series      seconds of trace.replay_series() through every strategy (1000 samples)
  command     seconds of cli.main(["replay", TRACE, "-q"]): read, replay with samples,
              both tables; and the same with --plot out.png (matplotlib's drawing)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from mempool import trace as tr  # noqa: E402
from mempool.cli import BENCH_OPTIONS, main  # noqa: E402
from mempool.strategies import STRATEGIES  # noqa: E402


def best(fn: object, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", nargs="?",
                    default=str(next(p for p in tr.bundled() if "python3" in p.name)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    t = tr.read(a.trace)
    cap = max(2 * t.maxlive, 4096)

    def native() -> None:
        tr.replay(t, "libc")
        for name in STRATEGIES:
            tr.replay(t, name, capacity=cap, **BENCH_OPTIONS.get(name, {}))

    def series() -> None:
        for name in STRATEGIES:
            tr.replay_series(t, name, capacity=cap, **BENCH_OPTIONS.get(name, {}))

    def command(*extra: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["replay", a.trace, "-q", *extra]) == 0

    n = best(native, a.repeat)
    r = best(lambda: tr.read(a.trace), a.repeat)
    s = best(series, a.repeat)
    c = best(command, a.repeat)
    with tempfile.TemporaryDirectory() as d:
        cp = best(lambda: command("--plot", os.path.join(d, "r.png")), a.repeat)
    lines = [
        f"# PYTHONPATH=src python bench/replay.py --repeat {a.repeat}   "
        f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)",
        f"trace {t.name}: {len(t):,} ops; libc + {len(STRATEGIES)} strategies",
        f"native replay (libc + every strategy, trace already read): {n:.3f} s",
        f"read the trace:                                          {r:.3f} s",
        f"replay_series of every strategy (1000 samples each):     {s:.3f} s",
        f"python -m mempool replay (cli.main, -q):                 {c:.3f} s = {c / n:.2f} x native",
        f"python -m mempool replay --plot r.png:                   {cp:.3f} s = {cp / n:.2f} x native",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main_()
