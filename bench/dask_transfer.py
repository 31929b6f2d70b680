"""mempool.dask against plain Dask: moving arrays between the workers of one host.

    python bench/dask_transfer.py [--sizes 1MiB,64MiB,1GiB] [--rounds 5]
                                  [--array 2GiB] [--chunk 2048] [--array-rounds 2]

One LocalCluster(processes=True, n_workers=2, threads_per_worker=1) with
SharedPoolPlugin registered; "plain Dask" is the same cluster with arrays made by
NumPy (np.empty: Dask pickles, copies and sends them over TCP), "mempool" the same
arrays made by mempool.dask.empty (a handle travels).  Cases alternate in every
round; medians count, and both come from the same run.

1. Transfer: a task pinned to worker A makes an array of SIZE (float64, filled), a
   task pinned to worker B reads it (sum).  Reported: the B task's latency as the
   client sees it (submit to result: scheduling, the fetch and the sum), the fetch
   alone as Dask's own transfer log on B times it (``transfer_incoming_log``:
   request to data deserialized), and memory: the peak RSS of each worker (VmHWM,
   reset through /proc/PID/clear_refs before the case) summed over the workers, and
   the PSS summed over them once B holds its copy (PSS counts a shared page once
   over the processes that map it; RSS counts it in each).  Memory figures are
   increases over the state before A made the array.  A 1-element array gives the
   floor (scheduling and an almost empty fetch).
2. A dask.array workload: x = a chunked ARRAY float64 array (square, CHUNKxCHUNK
   chunks, random; made in the pool or by NumPy), persisted; then
   (x + x.T).sum().  Reported: the time to make x, the time of the sum, the
   seconds Dask logged in transfers, and the peak RSS summed over workers and the peak
   PSS sum (sampled every 50 ms) over the whole case.

Writes bench/results/dask_transfer.txt (the tables, and the command).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import mempool.dask as md
from mempool._units import parse_size

RESULTS = Path(__file__).parent / "results"
MiB = 1 << 20


# ---- tasks (run on the workers) ----------------------------------------------------
def make_plain(n: int) -> np.ndarray:
    a = np.empty(n)
    a.fill(1.0)
    return a


def make_pool(n: int) -> np.ndarray:
    a = md.empty(n)
    a.fill(1.0)
    return a


def read(a: np.ndarray) -> float:
    return float(a.sum())


def chunk_plain(block_info=None):
    shape = block_info[None]["chunk-shape"]
    a = np.empty(shape)
    np.random.default_rng(block_info[None]["chunk-location"]).random(out=a)
    return a


def chunk_pool(block_info=None):
    shape = block_info[None]["chunk-shape"]
    a = md.empty(shape)
    np.random.default_rng(block_info[None]["chunk-location"]).random(out=a)
    return a


def clear_log(dask_worker=None) -> None:
    dask_worker.transfer_incoming_log.clear()


def transfer_log(dask_worker=None) -> list[tuple[float, int]]:
    return [(e["duration"], e["total"]) for e in dask_worker.transfer_incoming_log]


def pool_used() -> int:
    return md.host_pool().used


# ---- memory of the worker processes, read from here ---------------------------------
def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise KeyError("Pss")


def reset_peaks(pids: list[int]) -> None:
    for p in pids:
        with open(f"/proc/{p}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS


def rss_sum(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmRSS") for p in pids) * 1024


def hwm_sum(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmHWM") for p in pids) * 1024


def pss_sum(pids: list[int]) -> int:
    return sum(_pss_kib(p) for p in pids) * 1024


class PssSampler:
    """The peak of the PSS summed over the workers, sampled in a thread."""

    def __init__(self, pids: list[int], every: float = 0.05) -> None:
        self.pids, self.every, self.peak = pids, every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, pss_sum(self.pids))
            except (OSError, KeyError):
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> PssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, pss_sum(self.pids))


# ---- the cases ----------------------------------------------------------------------
def settle(client: Client) -> None:
    """Wait until the pool is empty again and the workers collected their garbage."""
    client.run(gc.collect)
    end = time.monotonic() + 30
    while any(client.run(pool_used).values()) and time.monotonic() < end:
        time.sleep(0.02)
    time.sleep(0.05)


def transfer_case(client: Client, a: str, b: str, pids: list[int], maker, n: int
                  ) -> dict[str, float]:
    settle(client)
    client.run(clear_log, workers=[b])
    base_rss, base_pss = rss_sum(pids), pss_sum(pids)
    reset_peaks(pids)
    f = client.submit(maker, n, workers=[a], pure=False)
    wait(f)
    t0 = time.perf_counter()
    r = client.submit(read, f, workers=[b], pure=False)
    total = r.result()
    t1 = time.perf_counter()
    assert total == float(n), (total, n)
    pss_after = pss_sum(pids)
    peak = hwm_sum(pids)
    log = client.run(transfer_log, workers=[b])[b]
    assert len(log) == 1, log
    del f, r
    return {"latency": t1 - t0, "fetch": log[0][0],
            "peak_rss": peak - base_rss, "pss": pss_after - base_pss}


def run_transfers(client: Client, sizes: list[int], rounds: int) -> list[str]:
    a, b = sorted(client.scheduler_info()["workers"])
    pids = list(client.run(os.getpid).values())
    cases = [("floor", make_plain, 1)] + [
        (kind, maker, size // 8) for size in sizes
        for kind, maker in (("dask", make_plain), ("mempool", make_pool))]
    res: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rnd in range(rounds + 1):  # round 0 warms up (imports, connections, pages)
        for kind, maker, n in cases:
            m = transfer_case(client, a, b, pids, maker, n)
            if rnd:
                res.setdefault((kind, n * 8), []).append(m)
        print(f"  transfer round {rnd}/{rounds} done", file=sys.stderr)

    def med(kind: str, nbytes: int, what: str) -> float:
        return statistics.median(m[what] for m in res[(kind, nbytes)])

    lines = [
        "| size | case | B task latency (ms) | fetch, Dask's log (ms) | x faster (latency) "
        "| x faster (fetch) | peak RSS sum (MiB) | PSS sum after (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| 8 B | floor | {med('floor', 8, 'latency') * 1e3:.2f} "
        f"| {med('floor', 8, 'fetch') * 1e3:.2f} | | | | |"]
    for size in sizes:
        lat_d, fet_d = med("dask", size, "latency"), med("dask", size, "fetch")
        for kind in ("dask", "mempool"):
            lat, fet = med(kind, size, "latency"), med(kind, size, "fetch")
            lines.append(
                f"| {fmt_size(size)} | {'plain Dask' if kind == 'dask' else 'mempool.dask'} "
                f"| {lat * 1e3:.2f} | {fet * 1e3:.2f} "
                f"| {lat_d / lat:.1f} | {fet_d / fet:.1f} "
                f"| {med(kind, size, 'peak_rss') / MiB:.0f} "
                f"| {med(kind, size, 'pss') / MiB:.0f} |")
    return lines


def array_case(client: Client, pids: list[int], chunk_fn, side: int, chunk: int
               ) -> dict[str, float]:
    settle(client)
    client.run(clear_log)
    base_rss, base_pss = rss_sum(pids), pss_sum(pids)
    reset_peaks(pids)
    with PssSampler(pids) as s:
        t0 = time.perf_counter()
        x = da.map_blocks(chunk_fn, chunks=((chunk,) * (side // chunk),) * 2,
                          dtype=np.float64, meta=np.empty((0, 0)))
        x = x.persist()
        wait(x)
        t1 = time.perf_counter()
        total = (x + x.T).sum().compute()
        t2 = time.perf_counter()
    logs = client.run(transfer_log)
    peak = hwm_sum(pids)
    del x
    assert np.isfinite(total)
    return {"make": t1 - t0, "sum": t2 - t1, "total": float(total),
            "transfer_s": sum(d for log in logs.values() for d, _ in log),
            "transfers": sum(len(log) for log in logs.values()),
            "peak_rss": peak - base_rss, "peak_pss": s.peak - base_pss}


def run_array(client: Client, nbytes: int, chunk: int, rounds: int) -> list[str]:
    side = int((nbytes / 8) ** 0.5) // chunk * chunk
    pids = list(client.run(os.getpid).values())
    res: dict[str, list[dict[str, float]]] = {"dask": [], "mempool": []}
    for rnd in range(rounds):
        for kind, fn in (("dask", chunk_plain), ("mempool", chunk_pool)):
            res[kind].append(array_case(client, pids, fn, side, chunk))
        print(f"  array round {rnd + 1}/{rounds} done", file=sys.stderr)
    # the same random numbers both ways: the same sum
    assert len({round(m["total"], 3) for ms in res.values() for m in ms}) == 1

    def med(kind: str, what: str) -> float:
        return statistics.median(m[what] for m in res[kind])

    lines = [f"x: {side}x{side} float64 ({fmt_size(side * side * 8)}), chunks "
             f"{chunk}x{chunk} ({fmt_size(chunk * chunk * 8)}), "
             f"{(side // chunk) ** 2} chunks; medians of {rounds} rounds",
             "",
             "| case | make x (s) | (x + x.T).sum() (s) | transfers | in transfers (s) "
             "| peak RSS sum (MiB) | peak PSS sum (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in ("dask", "mempool"):
        lines.append(f"| {'plain Dask' if kind == 'dask' else 'mempool.dask'} "
                     f"| {med(kind, 'make'):.2f} | {med(kind, 'sum'):.2f} "
                     f"| {med(kind, 'transfers'):.0f} | {med(kind, 'transfer_s'):.2f} "
                     f"| {med(kind, 'peak_rss') / MiB:.0f} | {med(kind, 'peak_pss') / MiB:.0f} |")
    return lines


def fmt_size(n: int) -> str:
    for unit, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s:
            return f"{n / s:g} {unit}"
    return f"{n} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1MiB,64MiB,1GiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--array", default="2GiB", help="size of x in part 2 (0: skip)")
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--array-rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "dask_transfer.txt"))
    args = ap.parse_args()
    sizes = [parse_size(s, "size") for s in args.sizes.split(",")]
    array_bytes = parse_size(args.array, "array") if args.array not in ("0", "") else 0
    capacity = max(2 * max(sizes), array_bytes + array_bytes // 4) + 64 * MiB
    cmd = "python bench/dask_transfer.py " + " ".join(sys.argv[1:])
    with dask.config.set({"distributed.scheduler.work-stealing": False,
                          "distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cl, Client(cl) as client:
        client.register_plugin(md.SharedPoolPlugin(capacity))
        out = [f"# {cmd}", f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
               f"{os.cpu_count()} cores, distributed {dask.__version__}, host pool "
               f"{fmt_size(capacity)}", "",
               "## 1. one array from worker A to worker B (medians of "
               f"{args.rounds} rounds)", ""]
        out += run_transfers(client, sizes, args.rounds)
        if array_bytes:
            out += ["", "## 2. dask.array: x = random chunked array, persisted; "
                    "(x + x.T).sum()", ""]
            out += run_array(client, array_bytes, args.chunk, args.array_rounds)
    text = "\n".join(out) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
