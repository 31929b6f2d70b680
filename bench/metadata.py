"""What the strategies' state (metadata) costs with the default parameters.

    python bench/metadata.py [--no-storm] [--no-files]

Prints state_size / capacity per strategy for 64 KiB .. 1 TiB (Strategy objects: no
memory for the managed bytes is needed), the file sizes of default 64 MiB and 1 GiB
file pools (apparent size and blocks allocated), a storm of 1 M live 16-byte
blocks in a private 64 MiB TLSF (the state grows from its default; time and final
state size), and the same storm of p.alloc(16) in a 64 MiB file pool and a shared
pool, whose states grow by moving to larger pairs (_native/place.c), against the same
pools sized for it up front (max_blocks=2**21), alternated.  Results:
bench/results/metadata.txt.
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
CAPS = [("64 KiB", 64 * KiB), ("256 KiB", 256 * KiB), ("1 MiB", MiB), ("64 MiB", 64 * MiB), ("1 GiB", GiB),
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
                  f"(state {state} B, three times: state, shadow, redo log), allocated "
                  f"{st.st_blocks * 512} B")
            os.unlink(path)
    for name, cap in (("64 MiB", 64 * MiB), ("1 GiB", GiB)):
        with mempool.SharedPool.create(f"mp-meta-{os.getpid()}", cap) as p:
            ss = p.shared_stats()
            st = os.stat(f"/dev/shm/mp-meta-{os.getpid()}")
            p.unlink()
        print(f"shared pool {name}: segment {st.st_size} B long, allocated {st.st_blocks * 512} B "
              f"= {st.st_blocks * 512 / cap:.4f} x capacity; lock area in use {ss.registry_bytes} B "
              f"({ss.committed_entries} of {ss.max_entries} registry entries committed, "
              f"{ss.max_leases} lease slots)")


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


def pool_storm() -> None:
    def one(kind: str, grow: bool) -> tuple[float, int, float]:
        opts = {} if grow else {"max_blocks": 1 << 21}
        d = tempfile.mkdtemp()
        if kind == "file":
            p = Pool.create(os.path.join(d, "s.pool"), 64 * MiB, **opts)
        else:
            # (the registry is reserved for 2 Mi entries and grows from its 256 either
            # way: only the state is sized up front)
            p = mempool.SharedPool.create(f"mp-storm-{os.getpid()}", 64 * MiB,
                                          max_entries=1 << 21, **opts)
        t = time.perf_counter()
        blocks = [p.alloc(16) for _ in range(1 << 20)]
        dt = time.perf_counter() - t
        size = p._strategy.state_size
        if kind == "shared":
            assert p.shared_stats().committed_entries == 1 << 20
        t = time.perf_counter()
        if kind == "file":
            p.close()
            with Pool.open(os.path.join(d, "s.pool")) as q:
                assert len(q) == 1 << 20
            reopen = time.perf_counter() - t
        else:
            del blocks
            p.close()
            p.unlink()
            reopen = 0.0
        return dt, size, reopen

    for kind in ("file", "shared"):
        runs: dict[bool, list[tuple[float, int, float]]] = {True: [], False: []}
        for _ in range(3):
            for grow in (True, False):
                runs[grow].append(one(kind, grow))
        g, f = sorted(runs[True]), sorted(runs[False])
        print(f"storm: 1 M p.alloc(16) in a 64 MiB {kind} pool, median of 3: grown from the "
              f"default budget {g[1][0]:.2f} s (state -> {g[1][1]} B), sized up front "
              f"{f[1][0]:.2f} s" + (f"; reopen {g[1][2]:.3f} s" if kind == "file" else ""))


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
        pool_storm()


if __name__ == "__main__":
    main()
