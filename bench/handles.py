"""The cost of a pool handle's round trip through pickle, in one process.

    python bench/handles.py [--rounds 7] [--number 20000]

Per pair of ``pickle.loads(pickle.dumps(x))`` (ns, median of the rounds), for a Block
and a 1,000-float64 SharedArray of a SharedPool: each pickle takes a lease (the
segment's lock, a slot of the lease table) and each unpickling adopts it (the lock
again) and makes the Block (and the array); the unpickled handle is dropped at once
(its borrowed reference given back: the lock a third time).  Beside them, for scale:
the pickle pair of a plain 1,000-float64 ndarray (8 KB copied each way).

Writes bench/results/handles.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import statistics
import timeit
from pathlib import Path

import numpy as np

from mempool import SharedPool

RESULTS = Path(__file__).parent / "results"


def measure(pool: SharedPool, rounds: int, number: int) -> dict[str, list[float]]:
    """ns per pickle + unpickle pair, per case and round (the pool's objects die on return)."""
    arr = pool.zeros(1000)
    blk = pool.alloc(1000)
    plain = np.zeros(1000)
    dumps, loads = pickle.dumps, pickle.loads
    cases = {
        "Block": lambda: loads(dumps(blk)),
        "SharedArray": lambda: loads(dumps(arr)),
        "ndarray (by value, for scale)": lambda: loads(dumps(plain)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved: the host's speed drifts
        for k, fn in cases.items():
            times[k].append(timeit.timeit(fn, number=number) / number * 1e9)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    name = f"bench-handles-{os.getpid()}"
    pool = SharedPool.create(name, "16MiB", unlink_on_exit=True)
    try:
        times = measure(pool, args.rounds, args.number)
        st = pool.shared_stats()
        assert st.leases == 0 and st.leases_expired == 0 and pool.used == 0, st
        rows = [(k, statistics.median(v), min(v), max(v)) for k, v in times.items()]
        print(f"{'pickle + unpickle pair':32} {'median ns':>10} {'min':>8} {'max':>8}")
        for k, med, lo, hi in rows:
            print(f"{k:32} {med:10.0f} {lo:8.0f} {hi:8.0f}")
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / "handles.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "median_ns", "min_ns", "max_ns", "rounds", "number"])
            for k, med, lo, hi in rows:
                w.writerow([k, f"{med:.0f}", f"{lo:.0f}", f"{hi:.0f}", args.rounds, args.number])
    finally:
        pool.close()


if __name__ == "__main__":
    main()
