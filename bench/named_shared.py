"""pool.named in a SharedPool against a private Pool, one run (python bench/named_shared.py).

Fills 10,000 names (8 float64 each), then times ``a = pool.named["n1234"]; del a``
(the view made and dropped: in a shared pool a lookup reads the directory under the
segment's lock and takes a handle's reference, the drop gives it back), median of 7
rounds of 20,000.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

import mempool

N = 10_000


def fill(pool) -> float:
    t = time.perf_counter()
    for i in range(N):
        pool.named[f"n{i}"] = np.arange(8.0)
    return (time.perf_counter() - t) / N


def lookup(pool) -> float:
    named = pool.named
    res = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(20_000):
            a = named["n1234"]
            del a
        res.append((time.perf_counter() - t) / 20_000)
    return statistics.median(res)


def main() -> None:
    sp = mempool.SharedPool.create(f"bench-named-{os.getpid()}", "256MiB", unlink_on_exit=True)
    p = mempool.Pool("256MiB")
    rows = [("SharedPool", fill(sp), lookup(sp)), ("Pool (private)", fill(p), lookup(p))]
    print(f"{'pool':<16} {'fill us/name':>12} {'lookup+drop us':>15}")
    for name, f, lk in rows:
        print(f"{name:<16} {f * 1e6:>12.1f} {lk * 1e6:>15.2f}")
    sp.close()
    p.close()


if __name__ == "__main__":
    main()
