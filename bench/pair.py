"""Per-call cost of an alloc+free pair from Python, interleaved in one run.

    python bench/pair.py [--rounds 15] [--number 200000]

Candidates (each timed as one statement pair, rounds interleaved so that drift
hits all alike; the median over rounds counts):

  floor          d.get(k); d.get(k)            two builtin method calls
  <strategy>     o = a.alloc(64); a.free(o)    every mempool strategy
  <s> handle     o, h = a.alloc_handle(64); a.free_handle(h)   TLSF, BestFit by handle
  tlsfallocator  x = t.allocate(64); t.free(x) PyPI's pybind11 OffsetAllocator
  mp.heap        b = h.malloc(64); h.free(b)   multiprocessing.heap.Heap

Writes bench/results/pair.csv and prints the table with ratios to the floor.
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

import mempool

CAPACITY = 1 << 24


def candidates() -> dict[str, tuple[str, dict]]:
    out: dict[str, tuple[str, dict]] = {
        "floor": ("d.get(k); d.get(k)", {"d": {1: 2}, "k": 1}),
    }
    for name, cls in mempool.STRATEGIES.items():
        out[name] = ("o = a.alloc(64); a.free(o)", {"a": cls(CAPACITY)})
        if hasattr(cls, "alloc_handle"):
            out[f"{name} handle"] = ("o, h = a.alloc_handle(64); a.free_handle(h)",
                                     {"a": cls(CAPACITY)})
    try:
        import TLSFAllocator  # pip install tlsfallocator (the 'bench' extra)

        out["tlsfallocator"] = (
            "x = t.allocate(64); t.free(x)",
            {"t": TLSFAllocator.OffsetAllocator(CAPACITY, 128 * 1024)},
        )
    except ImportError:
        print("tlsfallocator not installed (pip install '.[bench]'): skipped", file=sys.stderr)
    from multiprocessing.heap import Heap

    out["mp.heap"] = ("b = h.malloc(64); h.free(b)", {"h": Heap()})
    return out


def run(rounds: int, number: int) -> list[dict[str, object]]:
    cands = candidates()
    times: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(rounds):
        for name, (stmt, env) in cands.items():
            n = number if name != "mp.heap" else max(number // 20, 1000)
            t = timeit.Timer(stmt, globals=env).timeit(n)
            times[name].append(t / n * 1e9)
        print(f"\rround {r + 1}/{rounds}", end="", file=sys.stderr)
    print(file=sys.stderr)
    floor = statistics.median(times["floor"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"candidate": name, "ns_per_pair_median": round(med, 1),
                     "ns_per_pair_min": round(min(ts), 1), "ratio_to_floor": round(med / floor, 2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=200_000)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "pair.csv"))
    a = p.parse_args()
    rows = run(a.rounds, a.number)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'candidate':<14} {'median ns':>10} {'min ns':>8} {'x floor':>8}")
    for r in rows:
        print(f"{r['candidate']:<14} {r['ns_per_pair_median']:>10} {r['ns_per_pair_min']:>8} "
              f"{r['ratio_to_floor']:>8}")


if __name__ == "__main__":
    main()
