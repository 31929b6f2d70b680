"""pool.named: reopen and lookup with many names (issue 11's targets).

    python bench/named.py [--names 100000] [--capacity 1GiB] [--repeat 7] [--dir TMPDIR]

Makes a TLSF file pool of --capacity holding --names named arrays (float64, 4 to 35
elements each, copied in), closes it, then reports:

  create+fill     seconds to make the file and name every array (information)
  reopen          Pool.open(path) + len(pool.named) + one lookup, in a fresh process
                  each round (median and min over --repeat rounds; the target: <= 100 ms)
  lookup          ns per pool.named["n12345"] (a warm cache; median of --repeat timeit
                  rounds; the target: <= 2 us); also a cold lookup (first in the process)
  np.ndarray      ns per np.frombuffer-style view of the same bytes (the control)

max_blocks is passed explicitly (3 per name: record, data, table) so that the state is
sized for the names, whatever the default is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
sys.path.insert(0, SRC)

from mempool import Pool  # noqa: E402
from mempool._units import parse_size  # noqa: E402

REOPEN = """
import sys, time
t0 = time.perf_counter()
from mempool import Pool
t1 = time.perf_counter()
p = Pool.open(sys.argv[1])
n = len(p.named)
a = p.named["n77"]
t2 = time.perf_counter()
assert a[0] == 77 and n == int(sys.argv[2])
t3 = time.perf_counter()
b = p.named["n78"]
t4 = time.perf_counter()
print(t2 - t1, t4 - t3)
del a, b
p.close()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--capacity", default="1GiB")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    cap = parse_size(a.capacity, "capacity")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "named.pool")
        t0 = time.perf_counter()
        with Pool.create(path, cap, max_blocks=3 * a.names + 64) as p:
            for i in range(a.names):
                p.named[f"n{i}"] = np.full(4 + i % 32, float(i))
            used = p.used
        fill = time.perf_counter() - t0
        size = os.path.getsize(path)
        print(f"file pool {cap} bytes ({size / 2**20:.0f} MiB file), {a.names} names, "
              f"{used / 2**20:.1f} MiB used; create+fill {fill:.2f} s "
              f"({fill / a.names * 1e6:.1f} us per name)")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
        opens, colds = [], []
        for _ in range(a.repeat):
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(REOPEN), path,
                                  str(a.names)], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            opens.append(float(out[0]))
            colds.append(float(out[1]))
        print(f"reopen (open + len + first lookup), fresh process: median "
              f"{statistics.median(opens) * 1e3:.1f} ms, min {min(opens) * 1e3:.1f} ms")
        print(f"cold lookup (a name not yet looked up in the process): median "
              f"{statistics.median(colds) * 1e6:.1f} us")
        with Pool.open(path) as p:
            named = p.named
            named["n12345"]  # warm
            n = 200_000
            runs = timeit.repeat(lambda: named["n12345"], number=n, repeat=a.repeat)
            per = [r / n * 1e9 for r in runs]
            buf = np.zeros(32)
            ctl = timeit.repeat(lambda: np.frombuffer(buf, np.float64), number=n,
                                repeat=a.repeat)
            cper = [r / n * 1e9 for r in ctl]
            print(f"lookup pool.named['n12345'] (warm): median {statistics.median(per):.0f} ns, "
                  f"min {min(per):.0f} ns")
            print(f"control np.frombuffer(buf, float64): median {statistics.median(cper):.0f} ns "
                  f"(lookup / control {statistics.median(per) / statistics.median(cper):.2f}x)")


if __name__ == "__main__":
    main()
