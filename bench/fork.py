"""What os.fork() costs the parent with a persistent pool open, against none open.

    python bench/fork.py [--forks 200] [--slow-child 0.5]

A persistent pool holds an flock on its file; mempool's at-fork hook closes the
child's copy of that descriptor.  The parent must not pay for that: this times
os.fork() in the parent (the child exits at once) without and with a file pool open.
``--slow-child S`` first registers another library's after_in_child hook that sleeps
S seconds and runs before mempool's, which is where a parent that waits for its
child would show it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def fork_times(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        times.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--forks", type=int, default=200)
    ap.add_argument("--slow-child", type=float, default=0.0, metavar="S")
    args = ap.parse_args()
    n = args.forks
    if args.slow_child:  # registered before mempool is imported: it runs first
        os.register_at_fork(after_in_child=lambda: time.sleep(args.slow_child))
        n = min(n, 5)
    import mempool

    base = fork_times(n)
    with tempfile.TemporaryDirectory() as d:
        pool = mempool.Pool.create(os.path.join(d, "fork.mp"), "1MiB")
        with_pool = fork_times(n)
        pool.close()
    for what, ts in (("no pool open", base), ("file pool open", with_pool)):
        print(f"{what:15}  median {statistics.median(ts) * 1e6:9.0f} us   "
              f"max {max(ts) * 1e6:9.0f} us   ({n} forks)")


if __name__ == "__main__":
    main()
