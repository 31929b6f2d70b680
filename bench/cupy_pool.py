"""CuPy's allocator hook: mempool.cupy.DevicePool against CuPy's own MemoryPool.

Needs CuPy and a CUDA device (run it through bench/gpu_check.sh on a GPU machine).

1. alloc+free through ``cupy.cuda.set_allocator``: ``cupy.empty(n, uint8)`` then drop
   it, ns per pair, median of 7 interleaved rounds, for 512 B .. 64 MiB;
2. fragmentation on a mixed-size workload (random sizes 1 KiB .. 16 MiB, log-uniform,
   a window of live arrays, seed 1): peak bytes taken from the device over peak live
   bytes (CuPy: ``total_bytes()``; the pool: its high-water mark).
"""

from __future__ import annotations

import random
import statistics
import time

import cupy

import mempool.cupy as mcp

SIZES = [512, 64 << 10, 1 << 20, 64 << 20]
N = 20_000


def pair_ns(alloc, n: int) -> float:
    cupy.cuda.set_allocator(alloc)
    e = cupy.empty
    u8 = cupy.uint8
    e(n, u8)  # warm
    t = time.perf_counter_ns()
    for _ in range(N):
        e(n, u8)
    return (time.perf_counter_ns() - t) / N


def workload(alloc, seed: int = 1) -> int:
    """Peak live bytes of the mixed workload (the pools report what they took)."""
    cupy.cuda.set_allocator(alloc)
    rng = random.Random(seed)
    live: list[cupy.ndarray] = []
    cur = peak = 0
    for _ in range(5000):
        if live and (len(live) > 64 or rng.random() < 0.45):
            a = live.pop(rng.randrange(len(live)))
            cur -= a.nbytes
            del a
        else:
            n = int(2 ** rng.uniform(10, 24))
            live.append(cupy.empty(n, cupy.uint8))
            cur += n
            peak = max(peak, cur)
    live.clear()
    return peak


def main() -> None:
    dev = cupy.cuda.Device()
    print(f"device {dev.id}: {cupy.cuda.runtime.getDeviceProperties(dev.id)['name'].decode()}, "
          f"CuPy {cupy.__version__}")
    default = cupy.get_default_memory_pool()
    pool = mcp.DevicePool("2GiB")
    print("\n1. cupy.empty(n) + drop, ns per pair (median of 7 interleaved rounds)")
    print(f"{'size':>10} {'cupy pool':>10} {'mempool':>10} {'ratio':>7}")
    for n in SIZES:
        a, b = [], []
        for _ in range(7):
            a.append(pair_ns(default.malloc, n))
            b.append(pair_ns(pool.malloc, n))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{n:>10} {ma:>10.0f} {mb:>10.0f} {mb / ma:>6.2f}x")
    cupy.cuda.set_allocator(default.malloc)
    default.free_all_blocks()
    print("\n2. mixed sizes 1 KiB..16 MiB, 5000 ops: peak taken / peak live")
    peak = workload(default.malloc)
    print(f"  cupy MemoryPool: total_bytes peak {default.total_bytes() / peak:.3f}x "
          f"(after the run; it keeps what it took)")
    for name in ("tlsf", "bestfit", "buddy"):
        p = mcp.DevicePool("2GiB", name)
        peak = workload(p.malloc)
        print(f"  DevicePool {name:>8}: high water {p.stats().high_water / peak:.3f}x")
        cupy.cuda.set_allocator(default.malloc)
        p.close()


if __name__ == "__main__":
    main()
