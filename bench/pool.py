"""Pool speed from Python against NumPy, interleaved in one run.

    python bench/pool.py [--rounds 15] [--number 100000]

  np.empty(4096,u1)      np.empty(4096, np.uint8)          the reference
  pool.alloc+free 4096   b = p.alloc(4096); p.free(b)      target <= 0.5x the reference
  np.empty(1024)         np.empty(1024)                    the reference for arrays
  pool.empty(1024)       p.empty(1024)                     target <= 1.0x (freed on collect)
  pool.zeros(1024)       p.zeros(1024)  vs np.zeros(1024)

Writes bench/results/pool.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import timeit
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import mempool

CASES = {
    "np.empty(4096,u1)": "np.empty(4096, np.uint8)",
    "pool.alloc+free 4096": "b = p.alloc(4096); p.free(b)",
    "np.empty(1024)": "np.empty(1024)",
    "pool.empty(1024)": "p.empty(1024)",
    "np.zeros(1024)": "np.zeros(1024)",
    "pool.zeros(1024)": "p.zeros(1024)",
}
RATIOS = {"pool.alloc+free 4096": "np.empty(4096,u1)", "pool.empty(1024)": "np.empty(1024)",
          "pool.zeros(1024)": "np.zeros(1024)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=100_000)
    ap.add_argument("--strategy", default="tlsf")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pool.csv"))
    a = ap.parse_args()
    env = {"np": np, "p": mempool.Pool("64MiB", a.strategy)}
    times: dict[str, list[float]] = {k: [] for k in CASES}
    for r in range(a.rounds):
        for name, stmt in CASES.items():
            times[name].append(timeit.Timer(stmt, globals=env).timeit(a.number) / a.number * 1e9)
        print(f"\rround {r + 1}/{a.rounds}", end="", file=sys.stderr)
    print(file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"case": k, "ns_median": round(v, 1), "ns_min": round(min(times[k]), 1),
             "reference": RATIOS.get(k, ""),
             "ratio": round(v / med[RATIOS[k]], 2) if k in RATIOS else ""} for k, v in med.items()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for row in rows:
        print(f"{row['case']:<22} {row['ns_median']:>8} ns  {row['ratio']!s:>5} x {row['reference']}")


if __name__ == "__main__":
    main()
