"""`python -m mempool show --shared NAME` on a busy pool (issue 13's target: a 1 GiB
shared pool with 100 k live blocks shown in under a second while other processes keep
allocating).

    python bench/show.py [--capacity 1GiB] [--live 100000] [--workers 2] [--repeat 5]
                         [--out bench/results/show.txt]

Makes a TLSF shared pool of --capacity, allocates 1.5 x --live blocks of 16 B..8 KiB
and frees every third (--live live ranges, as many free ones between them), starts
--workers processes that attach and allocate / free 64..160-byte blocks in a loop, then
reports:

  show (in process)   seconds for cli.main(["show", "--shared", NAME]): attach, copy the
                      state under the lock, check and walk the copy, stats, free ranges,
                      the terminal map (min / median / max of --repeat)
  show (process)      the same as `python -m mempool show --shared NAME` in a new process
                      (interpreter and NumPy start included), also before the workers
                      start (with --workers >= the CPUs, the reader competes for a CPU)
  lock held           ms the reader held the pool's lock (SharedPoolCore._snapshot: the
                      memcpy of the state; the buffer is faulted in before the lock)
  workers             their allocator calls per second with no reader, and while show runs
                      back to back (a ratio near 1: the users are not held up)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "src"))
sys.path.insert(0, SRC)

from mempool import SharedPool  # noqa: E402
from mempool._units import parse_size  # noqa: E402
from mempool.cli import main  # noqa: E402


def worker(name: str, counter: object, stop: object, ready: object, go: object) -> None:
    p = SharedPool.attach(name)
    ready.release()  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    n = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        bs = [p.alloc(64 + 16 * (k % 7)) for k in range(100)]
        for b in bs:
            b.free()
        n += 200
        with counter.get_lock():  # type: ignore[attr-defined]
            counter.value += 200  # type: ignore[attr-defined]
    p.close()


def rate(counter: object, seconds: float) -> float:
    a = counter.value  # type: ignore[attr-defined]
    time.sleep(seconds)
    return (counter.value - a) / seconds  # type: ignore[attr-defined]


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--capacity", default="1GiB")
    ap.add_argument("--live", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cap = parse_size(a.capacity)
    name = f"mempool-bench-show-{os.getpid()}"
    total = a.live * 3 // 2
    pool = SharedPool.create(name, cap, "tlsf", max_blocks=4 * total + 1024,
                             max_entries=total + 4096, unlink_on_exit=True)
    rng = np.random.default_rng(13)
    blocks = [pool.alloc(int(s)) for s in rng.integers(16, 8193, total)]
    for b in blocks[::3]:
        b.free()
    st = pool.stats()
    lines = [f"# PYTHONPATH=src python bench/show.py --capacity {a.capacity} --live {a.live} "
             f"--workers {a.workers} --repeat {a.repeat}   ({time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPUs)",
             f"pool: TLSF {a.capacity}, {st.live:,} live ranges, {st.free_ranges:,} free ranges, "
             f"used {st.used / 2**20:.1f} MiB, state {st.metadata / 2**20:.1f} MiB"]

    env = dict(os.environ, PYTHONPATH=SRC)

    def show_process() -> float:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "mempool", "show", "--shared", name],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return time.perf_counter() - t0

    quiet = [show_process() for _ in range(a.repeat)]  # before the workers start
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    stop, go, ready = ctx.Event(), ctx.Event(), ctx.Semaphore(0)
    procs = [ctx.Process(target=worker, args=(name, counter, stop, ready, go))
             for _ in range(a.workers)]
    # the workers attach one at a time before any of them allocates: attach()'s check of
    # the registry can trip over another process's lock-free reference release (seen
    # here: "registry entry N: bad tag or state"), which the reader below never runs
    for p in procs:
        p.start()
        ready.acquire()
    go.set()
    try:
        while counter.value == 0:
            time.sleep(0.05)
        idle = rate(counter, 2.0)

        inproc, locks = [], []
        busy_start, busy_n = time.perf_counter(), counter.value
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as out:
                rc = main(["show", "--shared", name])
            inproc.append(time.perf_counter() - t0)
            assert rc == 0
            note = next(ln for ln in out.getvalue().splitlines() if "state copied in" in ln)
            locks.append(float(note.split("state copied in ")[1].split(" ms")[0]) / 1e3)
        busy = (counter.value - busy_n) / (time.perf_counter() - busy_start)

        procs_t = [show_process() for _ in range(a.repeat)]
    finally:
        stop.set()
        for p in procs:
            p.join()

    def fmt(xs: list[float], unit: str = "s", k: float = 1.0) -> str:
        return (f"min {min(xs) * k:.3f} {unit}, median {statistics.median(xs) * k:.3f} {unit}, "
                f"max {max(xs) * k:.3f} {unit}")

    lines += [
        f"show (in process, cli.main):  {fmt(inproc)}",
        f"show (python -m mempool show --shared, a new process): {fmt(procs_t)}",
        f"  the same with no worker running (the CPUs free):      {fmt(quiet)}",
        f"lock held by the reader (the state's memcpy): {fmt(locks, 'ms', 1e3)}",
        f"workers ({a.workers}): {idle:,.0f} calls/s without a reader, {busy:,.0f} calls/s "
        f"while show ran back to back ({busy / idle:.2f} x)",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    pool.close()


if __name__ == "__main__":
    main_()
