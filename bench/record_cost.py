"""What trace.record() costs a NumPy-heavy script: the same workload unrecorded and
recorded, interleaved rounds in one process, best of each; the ratio is the figure
(target <= 2x).  Run: PYTHONPATH=src python bench/record_cost.py"""

import os
import tempfile
import time

import numpy as np

from mempool import trace


def workload() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = rng.random(5000)
        b = np.sort(a) * 2.0 + 1.0
        c = np.concatenate([a, b])[::2].copy()
        d = (c @ c) + np.cumsum(c)
        del a, b, c, d
        for n in (16, 256, 4096):
            x = np.ones(n) + np.arange(n)
            del x


def main() -> None:
    d = tempfile.mkdtemp()
    plain, rec = [], []
    ops = 0
    for _ in range(7):
        t0 = time.perf_counter()
        workload()
        plain.append(time.perf_counter() - t0)
        path = os.path.join(d, "w.trace.gz")
        t0 = time.perf_counter()
        with trace.record(path) as r:
            workload()
        rec.append(time.perf_counter() - t0)
        ops = r.ops
    p, q = min(plain), min(rec)
    print(f"unrecorded {p * 1e3:.1f} ms, recorded {q * 1e3:.1f} ms (gzip file written "
          f"included), {ops} ops: ratio {q / p:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
