"""What the strategies' state (metadata) costs with the default parameters.

    python bench/metadata.py [--no-storm] [--no-files]

Prints state_size / capacity per strategy for 64 KiB .. 1 TiB (Strategy objects: no
memory for the managed bytes is needed), the file sizes of default 64 MiB and 1 GiB
file pools (apparent size and blocks allocated), and a storm of 1 M live 16-byte
blocks in a private 64 MiB TLSF (the state grows from its default; time and final
state size).  Results: bench/results/metadata.txt.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import mempool
from mempool import Pool

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
CAPS = [("64 KiB", 64 * KiB), ("1 MiB", MiB), ("64 MiB", 64 * MiB), ("1 GiB", GiB),
        ("1 TiB", TiB)]


def table() -> None:
    print(f"{'strategy':<9}" + "".join(f"{name:>16}" for name, _ in CAPS))
    for name, cls in mempool.STRATEGIES.items():
        row = []
        for _, cap in CAPS:
            try:
                n = cls(cap).state_size
                row.append(f"{n:>9} {100 * n / cap:5.2f}%")
            except (MemoryError, ValueError) as e:
                row.append(f"{type(e).__name__:>16}")
        print(f"{name:<9}" + "".join(f"{c:>16}" for c in row))


def files() -> None:
    with tempfile.TemporaryDirectory() as d:
        for name, cap in (("64 MiB", 64 * MiB), ("1 GiB", GiB)):
            path = os.path.join(d, "p.pool")
            with Pool.create(path, cap) as p:
                state = p.stats().metadata
                p.alloc(1000)
            st = os.stat(path)
            print(f"file pool {name}: file {st.st_size} B = {st.st_size / cap:.4f} x capacity "
                  f"(state {state} B, twice: state + shadow), allocated "
                  f"{st.st_blocks * 512} B")
            os.unlink(path)


def storm() -> None:
    s = mempool.TLSF(64 * MiB)
    first = s.state_size
    t = time.perf_counter()
    offs = s.alloc_many(np.full(1 << 20, 16))
    dt = time.perf_counter() - t
    print(f"storm: 1 M live 16-byte blocks in a default TLSF(64 MiB): {dt:.3f} s "
          f"(alloc_many), state {first} -> {s.state_size} B, live {len(s)}")
    t = time.perf_counter()
    for _ in range(1 << 20):
        pass
    loop = time.perf_counter() - t
    s.free_many(offs)
    s2 = mempool.TLSF(64 * MiB)
    t = time.perf_counter()
    for _ in range(1 << 20):
        s2.alloc(16)
    dt2 = time.perf_counter() - t - loop
    print(f"storm: the same with 1 M alloc() calls from Python: {dt2:.3f} s, "
          f"state -> {s2.state_size} B")
    s.check()
    s2.check()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-storm", action="store_true")
    ap.add_argument("--no-files", action="store_true")
    a = ap.parse_args()
    table()
    if not a.no_files:
        files()
    if not a.no_storm:
        storm()


if __name__ == "__main__":
    main()
