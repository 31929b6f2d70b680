"""SharedPool against the ways Python programs pass arrays to worker processes today.

    python bench/shared.py [--rounds 7] [--number 200] [--seconds 2]

1. Round trip of a 1 MiB float64 array to a worker process and back, over a
   multiprocessing Pipe to a worker started once (spawn); the worker reads and writes
   both ends of the array (arr[0] += 1; arr[-1] = 2 * arr[0]) and sends it back:
     pipe floor      a 100-byte message each way: the transport alone, measured in
                     the same rounds, so the table also shows each case beyond it
     sharedpool      the array is made in a SharedPool; only a handle crosses
     shared_memory   one multiprocessing.shared_memory.SharedMemory per array (create,
                     attach in the worker, close, unlink), the name crosses
     pickle          the array itself crosses, both ways
   Rounds interleave the three; medians count.  The same with
   concurrent.futures.ProcessPoolExecutor for sharedpool and pickle.
2. Throughput of `b = pool.alloc(64); pool.free(b)` on one SharedPool from 1 process
   and from 2 processes at once (this machine has 2 cores), alternated for several
   rounds (the median of the per-round ratios counts: the host's speed drifts), with
   the lock's share of the time (the waits it counted) and the single-process cost of
   the pair against a private Pool's.

Writes bench/results/shared_roundtrip.csv and bench/results/shared_throughput.csv.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import statistics
import sys
import time
import timeit
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import mempool

N = 1 << 17  # float64: 1 MiB
RESULTS = Path(__file__).parent / "results"


def touch(arr):
    arr[0] += 1
    arr[-1] = arr[0] * 2
    return arr


def worker(conn) -> None:
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            return
        if kind == "ping":
            conn.send(payload)
            continue
        if kind == "shm":
            s = SharedMemory(name=payload)  # spawn children share the parent's tracker
            a = np.ndarray(N, np.float64, buffer=s.buf)
            touch(a)
            del a
            s.close()
            conn.send(payload)
        else:  # an array, by handle or by value: no reference kept past the reply
            result = touch(payload)
            del payload
            conn.send(result)
            del result


def trip_sharedpool(conn, pool):
    a = pool.empty(N)
    a[0] = 1.0
    conn.send(("arr", a))
    back = conn.recv()
    assert back[-1] == 4.0 and a[-1] == 4.0
    del a, back


def trip_shared_memory(conn, _pool):
    shm = SharedMemory(create=True, size=N * 8)
    a = np.ndarray(N, np.float64, buffer=shm.buf)
    a[0] = 1.0
    conn.send(("shm", shm.name))
    conn.recv()
    assert a[-1] == 4.0
    del a
    shm.close()
    shm.unlink()


def trip_floor(conn, _pool):
    conn.send(("ping", b"x" * 100))  # the transport alone: a small message each way
    conn.recv()


def trip_pickle(conn, _pool):
    a = np.empty(N)
    a[0] = 1.0
    conn.send(("arr", a))
    back = conn.recv()
    assert back[-1] == 4.0


def roundtrips(rounds: int, number: int) -> list[dict[str, object]]:
    ctx = mp.get_context("spawn")
    name = f"mempool-bench-{os.getpid()}"
    pool = mempool.SharedPool.create(name, "64MiB", unlink_on_exit=True)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=worker, args=(child,))
    proc.start()
    cases = {"pipe floor": trip_floor, "sharedpool": trip_sharedpool,
             "shared_memory": trip_shared_memory, "pickle": trip_pickle}
    for fn in cases.values():  # warm up: attach, first faults
        for _ in range(20):
            fn(parent, pool)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter_ns()
            for _ in range(number):
                fn(parent, pool)
            times[k].append((time.perf_counter_ns() - t0) / number / 1000)
        print(f"\rround trips: round {r + 1}/{rounds}", end="", file=sys.stderr)
    parent.send(("stop", None))
    proc.join()
    # the same through ProcessPoolExecutor (its own queues and threads dominate)
    ex_times: dict[str, list[float]] = {"executor sharedpool": [], "executor pickle": []}
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(touch, pool.zeros(N)).result()
        for _ in range(rounds):
            for k in ex_times:
                t0 = time.perf_counter_ns()
                for _ in range(number // 4 or 1):
                    a = pool.zeros(N) if k.endswith("sharedpool") else np.zeros(N)
                    back = ex.submit(touch, a).result()
                    assert back[-1] == 2.0
                    del a, back
                ex_times[k].append((time.perf_counter_ns() - t0) / (number // 4 or 1) / 1000)
    print(file=sys.stderr)
    pool.close()
    pool.unlink()
    med = {k: statistics.median(v) for k, v in {**times, **ex_times}.items()}
    base, floor = med["sharedpool"], med["pipe floor"]
    rows = []
    for k, v in med.items():
        ref = med["executor sharedpool"] if k.startswith("executor") else base
        over = v - floor if not k.startswith("executor") and k != "pipe floor" else float("nan")
        rows.append({"case": k, "us_per_roundtrip": round(v, 1), "x_sharedpool": round(v / ref, 1),
                     "us_beyond_floor": round(over, 1),
                     "x_sharedpool_beyond_floor": round(over / (base - floor), 1)
                     if over == over else float("nan")})
    return rows


def hammer(name: str, seconds: float, conn) -> None:
    pool = mempool.SharedPool.attach(name)
    alloc, free = pool.alloc, pool.free
    conn.send("ready")
    conn.recv()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            free(alloc(64))
        n += 1000
    conn.send(n)
    pool.close()


def _hammer_run(ctx, name: str, nproc: int, seconds: float, pool) -> tuple[float, float]:
    """(ops/s of nproc processes together, lock-wait share of their time)."""
    pipes, procs = [], []
    for _ in range(nproc):
        a, b = ctx.Pipe()
        p = ctx.Process(target=hammer, args=(name, seconds, b))
        p.start()
        pipes.append(a)
        procs.append(p)
    for a in pipes:
        a.recv()
    before = pool.shared_stats()
    for a in pipes:
        a.send("go")
    counts = [a.recv() for a in pipes]
    for p in procs:
        p.join()
    after = pool.shared_stats()
    return (sum(counts) / seconds,
            (after.lock_wait_ns - before.lock_wait_ns) / (seconds * 1e9 * nproc))


def throughput(seconds: float, rounds: int = 5) -> list[dict[str, object]]:
    """1 and 2 processes alternately, `rounds` times; the host's speed drifts, so the
    figure is the median of the per-round ratios."""
    ctx = mp.get_context("spawn")
    name = f"mempool-bench-tp-{os.getpid()}"
    pool = mempool.SharedPool.create(name, "64MiB", unlink_on_exit=True)
    one, two, ratios, waits = [], [], [], []
    for r in range(rounds):
        o, _ = _hammer_run(ctx, name, 1, seconds, pool)
        t, w = _hammer_run(ctx, name, 2, seconds, pool)
        one.append(o)
        two.append(t)
        ratios.append(t / o)
        waits.append(w)
        print(f"\rthroughput: round {r + 1}/{rounds}", end="", file=sys.stderr)
    print(file=sys.stderr)
    # the single-process cost of lock + registry: SharedPool pair vs a private Pool pair
    private = mempool.Pool("64MiB")
    n = 200_000
    t_shared = min(timeit.repeat("free(alloc(64))", globals={"alloc": pool.alloc,
                                                              "free": pool.free},
                                 number=n, repeat=5)) / n * 1e9
    t_private = min(timeit.repeat("free(alloc(64))", globals={"alloc": private.alloc,
                                                               "free": private.free},
                                  number=n, repeat=5)) / n * 1e9
    pool.close()
    pool.unlink()
    med = statistics.median
    return [
        {"processes": 1, "ops_per_s_median": round(med(one)), "x_one_process_median": 1.0,
         "x_one_process_min": 1.0, "x_one_process_max": 1.0, "lock_wait_share": 0.0,
         "pair_ns_shared": round(t_shared, 1), "pair_ns_private": round(t_private, 1)},
        {"processes": 2, "ops_per_s_median": round(med(two)),
         "x_one_process_median": round(med(ratios), 2), "x_one_process_min": round(min(ratios), 2),
         "x_one_process_max": round(max(ratios), 2), "lock_wait_share": round(med(waits), 4),
         "pair_ns_shared": round(t_shared, 1), "pair_ns_private": round(t_private, 1)},
    ]


def write(rows: list[dict[str, object]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--throughput-rounds", type=int, default=7)
    a = ap.parse_args()
    write(roundtrips(a.rounds, a.number), RESULTS / "shared_roundtrip.csv")
    write(throughput(a.seconds, a.throughput_rounds), RESULTS / "shared_throughput.csv")


if __name__ == "__main__":
    main()
