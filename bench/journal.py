"""The journal's cost: allocator calls in pools whose state outlives the process.

    python bench/journal.py [--repeat 7] [--number 20000] [--rt-number 400]
                            [--strategies tlsf,bestfit] [--dir TMPDIR] [--out CSV]

Every allocator call of a file pool (Pool.create) and of a SharedPool is a transaction
of the journal (src/mempool/_core/journal.h): the strategy operation runs on the state
and is written to the redo log (format 5; format 4 and before ran it again on the
shadow), plus the phase stores and, every ~state_size/40 operations, a copy of the state
(a checkpoint).  A private Pool has no journal: it is
the control (whatever moves it moved for reasons other than the journal).

Cases, for each strategy (TLSF, BestFit by default) and each pool kind
(private, file, shared), ns per statement:

  alloc+free 64      b = pool.alloc(64); b.free()
  alloc+free 4096    b = pool.alloc(4096); b.free()
  empty 64           pool.empty(8)      (float64, dropped at once: freed on collect)
  empty 4096         pool.empty(512)
  rt 1MiB            b = pool.alloc(1 MiB); np.frombuffer(b, np.uint8)[:] = 1; b.free()

In a SharedPool 64 B ranges go back to the per-process cache (<= 512 B) and come back
from it without the lock or the strategy: the 64 B cases there measure the cache; the
4096 B cases take the lock and run the strategy (and the journal) every time.

Only the public API is used, so the same file runs against a tree without the journal
(bench/journal_before_after.sh alternates the two).  Rounds interleave the cases (one
timeit repeat of every case per round); the median and the minimum over rounds are
reported.  --out writes one CSV row per case.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import timeit

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import mempool
from mempool import Pool, SharedPool

MIB = 1 << 20
CAPACITY = "64MiB"

STMTS = {
    "alloc+free 64": ("b = alloc(64); b.free()", "number"),
    "alloc+free 4096": ("b = alloc(4096); b.free()", "number"),
    "empty 64": ("empty(8)", "number"),
    "empty 4096": ("empty(512)", "number"),
    "rt 1MiB": ("b = alloc(MIB); frombuffer(b, u8)[:] = 1; b.free()", "rt"),
}


def make_pools(strategy: str, tmpdir: str) -> dict[str, object]:
    name = f"mpjournal-{os.getpid()}-{strategy}"
    return {
        "private": Pool(CAPACITY, strategy),
        "file": Pool.create(os.path.join(tmpdir, f"{strategy}.mp"), CAPACITY, strategy),
        "shared": SharedPool.create(name, CAPACITY, strategy),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds (timeit repeats)")
    ap.add_argument("--number", type=int, default=20000, help="pairs per timing")
    ap.add_argument("--rt-number", type=int, default=400, help="1 MiB round trips per timing")
    ap.add_argument("--strategies", default="tlsf,bestfit")
    ap.add_argument("--dir", default=None, help="where the file pools go (default: tempfile's)")
    ap.add_argument("--out", default=None, help="CSV file to write")
    args = ap.parse_args()

    tmpdir = tempfile.mkdtemp(prefix="mpjournal-", dir=args.dir)
    pools: dict[tuple[str, str], object] = {}
    timers: list[tuple[str, str, str, timeit.Timer, int]] = []
    try:
        for strategy in args.strategies.split(","):
            for kind, pool in make_pools(strategy, tmpdir).items():
                pools[strategy, kind] = pool
                g = {"alloc": pool.alloc, "empty": pool.empty, "MIB": MIB,
                     "frombuffer": np.frombuffer, "u8": np.uint8}
                for case, (stmt, which) in STMTS.items():
                    n = args.number if which == "number" else args.rt_number
                    t = timeit.Timer(stmt, globals=g)
                    t.timeit(max(1, n // 10))  # warm: pages touched, caches filled
                    timers.append((strategy, kind, case, t, n))
        samples: dict[tuple[str, str, str], list[float]] = {k[:3]: [] for k in timers}
        for _ in range(args.repeat):
            for strategy, kind, case, t, n in timers:
                samples[strategy, kind, case].append(t.timeit(n) / n * 1e9)
        for pool in pools.values():
            pool.check()  # type: ignore[attr-defined]
    finally:
        for (_strategy, kind), pool in pools.items():
            pool.close()  # type: ignore[attr-defined]
            if kind == "shared":
                pool.unlink()  # type: ignore[attr-defined]
        shutil.rmtree(tmpdir, ignore_errors=True)

    rows = []
    for (strategy, kind, case), xs in samples.items():
        rows.append({"strategy": strategy, "pool": kind, "case": case,
                     "ns_median": round(statistics.median(xs), 1), "ns_min": round(min(xs), 1),
                     "rounds": len(xs)})
    ctrl = {(r["strategy"], r["case"]): r["ns_median"] for r in rows if r["pool"] == "private"}
    print(f"mempool {getattr(mempool, '__version__', '?')} from {os.path.dirname(mempool.__file__)}; "
          f"{args.repeat} rounds; medians (min) in ns per statement; x private = over the control")
    print(f"{'strategy':8s} {'pool':8s} {'case':16s} {'median':>10s} {'min':>10s} {'x private':>9s}")
    for r in rows:
        x = r["ns_median"] / ctrl[r["strategy"], r["case"]]
        print(f"{r['strategy']:8s} {r['pool']:8s} {r['case']:16s} {r['ns_median']:10.1f} "
              f"{r['ns_min']:10.1f} {x:9.2f}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
