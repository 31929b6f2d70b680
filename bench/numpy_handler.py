"""NumPy's own allocations in a pool (NEP 49 handler, issue 12), interleaved in one run.

    python bench/numpy_handler.py [--quick]

1. ``np.empty(n_bytes // 8)`` for 64 B, 1 KiB, 64 KiB, 1 MiB, 64 MiB, ns per call with
   (a) NumPy's default handler, (b) inside ``Pool("256MiB").activate(numpy=True)``
   (TLSF), (c) a numpy-allocator handler wrapping libc malloc/calloc/realloc/free
   (ctypes), (d) a numpy-allocator handler over a mempool TLSF pool (the same idea
   as (b) the way numpy-allocator offers it: ctypes callbacks into Python).  Ratios
   to (a); target (b) <= 1.0x (a).
2. Temporaries-heavy loop ``(a * b + c) / d`` on float64 arrays of 1, 4, 8 MiB,
   1,000 iterations in all per case (split over the rounds), with the default
   handler vs ``mempool.numpy_pool("1GiB", hugepages=True)`` vs
   ``mempool.numpy_pool("1GiB")`` (one pool per case for all 1,000 iterations, made
   before the clock starts): time per iteration, ratio to default, and minor page
   faults (``ru_minflt`` deltas around each run, summed over rounds).  Goal: fewer
   faults, no slowdown.

Part 1 takes one size at a time (warmed, then its four handlers back to back each
round, in a rotating order: 41 rounds of ~10 ms each); part 2 runs every case once per
round (20 rounds of 50 iterations, rotating; each case's ``with`` entered once for all
its rounds, in a contextvars context of its own, so its faults are one pool's).  Times
are medians of rounds; a ratio is the median of the rounds' own ratios, with its
quartiles: this VM's speed drifts by up to a third between seconds, which moves a
round's handlers together and the ratio of two medians apart.  The numpy-allocator column needs ``pip install '.[bench]'``.  Writes
bench/results/numpy_handler.txt (command, date, machine, tables).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import ctypes
import ctypes.util
import datetime
import os
import platform
import resource
import statistics
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import mempool

SIZES = [("64 B", 64), ("1 KiB", 1024), ("64 KiB", 64 << 10), ("1 MiB", 1 << 20),
         ("64 MiB", 64 << 20)]
LOOP_MIB = [1, 4, 8]


def libc_handler() -> tuple[object | None, str]:
    """A numpy-allocator handler over libc's malloc family, or (None, why not)."""
    try:
        import numpy_allocator
        libc = ctypes.CDLL(ctypes.util.find_library("c"))

        class libc_malloc(metaclass=numpy_allocator.type):  # type: ignore[misc]
            # numpy-allocator reads the function pointers from these addresses at every
            # call: they are inside libc's ctypes function objects, which must outlive
            # the handler (a collected CDLL left them dangling: the SIGSEGV of an
            # earlier run, in numpy-allocator's unsafe_malloc)
            _libc = libc
            _calloc_ = ctypes.addressof(libc.calloc)
            _free_ = ctypes.addressof(libc.free)
            _malloc_ = ctypes.addressof(libc.malloc)
            _realloc_ = ctypes.addressof(libc.realloc)

        with libc_malloc:
            x = np.empty(16)
        if not libc_malloc.handles(x):
            return None, "numpy-allocator: handler installed but array not served by it"
        return libc_malloc, "numpy-allocator type over libc malloc/calloc/realloc/free (ctypes)"
    except Exception as e:
        return None, f"numpy-allocator unusable: {type(e).__name__}: {e}"


def pool_callback_handler(pool: mempool.Pool) -> tuple[object | None, str]:
    """The same idea as (b) through numpy-allocator: its handler over a mempool TLSF
    pool, by ctypes callbacks into Python (what numpy-allocator offers a user who
    wants a pool: C function pointers with libc's signatures, no context argument)."""
    try:
        import numpy_allocator
        live: dict[int, mempool.Block] = {}

        def _malloc(size: int) -> int | None:
            try:
                b = pool.alloc(size or 1)
            except MemoryError:
                return None
            live[b.address] = b
            return b.address

        def _calloc(n: int, size: int) -> int | None:
            ptr = _malloc(n * size)
            if ptr:
                ctypes.memset(ptr, 0, n * size)
            return ptr

        def _free(ptr: int | None) -> None:
            if ptr:
                pool.free(live.pop(ptr))

        def _realloc(ptr: int | None, size: int) -> int | None:
            if not ptr:
                return _malloc(size)
            new = _malloc(size)
            if new:
                ctypes.memmove(new, ptr, min(live[ptr].size, size))
                _free(ptr)
            return new

        cbs = {"malloc": ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(_malloc),
               "calloc": ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t,
                                          ctypes.c_size_t)(_calloc),
               "free": ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_free),
               "realloc": ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_size_t)(_realloc)}

        class pool_malloc(metaclass=numpy_allocator.type):  # type: ignore[misc]
            _cbs = cbs  # (the callbacks must outlive the handler: see libc_handler)
            _calloc_ = ctypes.addressof(cbs["calloc"])
            _free_ = ctypes.addressof(cbs["free"])
            _malloc_ = ctypes.addressof(cbs["malloc"])
            _realloc_ = ctypes.addressof(cbs["realloc"])

        with pool_malloc:
            x = np.empty(16)
        if not (pool.address <= x.ctypes.data < pool.address + pool.capacity):
            return None, "numpy-allocator over a pool: array not served by it"
        return pool_malloc, ("numpy-allocator type over a mempool Pool (TLSF), ctypes "
                             "callbacks into Python")
    except Exception as e:
        return None, f"numpy-allocator unusable: {type(e).__name__}: {e}"


def round_ratios(xs: list[float], base: list[float]) -> str:
    """The median of the rounds' own ratios x / base, with its quartiles."""
    rs = [x / d for x, d in zip(xs, base)]
    q = statistics.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
    return f"{statistics.median(rs):.3f}x [{q[0]:.2f}, {q[2]:.2f}]"


def loop(x: np.ndarray, y: np.ndarray, z: np.ndarray, w: np.ndarray, n: int) -> float:
    """n iterations of the temporaries-heavy expression: seconds."""
    t0 = time.perf_counter()
    for _ in range(n):
        (x * y + z) / w
    return time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    thp = "?"
    with contextlib.suppress(OSError):
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    return (f"{platform.node()} {platform.machine()} {cpu}, {os.cpu_count()} CPUs, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, THP enabled: {thp}")


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds/iterations (~10 s)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "numpy_handler.txt"))
    a = ap.parse_args()
    rounds1, target_s = (9, 0.005) if a.quick else (41, 0.01)
    rounds2, iters = (3, 30) if a.quick else (20, 1000)
    per_round = max(1, iters // rounds2)

    out: list[str] = []

    def say(s: str = "") -> None:
        print(s)
        out.append(s)

    say("command: python " + " ".join([sys.argv[0], *sys.argv[1:]]))
    say("date:    " + datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    say("machine: " + machine())

    # ---- 1. np.empty -------------------------------------------------------------
    pool = mempool.Pool("256MiB")
    act = pool.activate(numpy=True)
    other, why = libc_handler()
    cb_pool = mempool.Pool("256MiB")
    cb, why_cb = pool_callback_handler(cb_pool)
    variants: dict[str, object] = {"default": contextlib.nullcontext(), "pool": act}
    if other is not None:
        variants["numpy-allocator"] = other
    if cb is not None:
        variants["np-alloc pool"] = cb
    say()
    say(f"1. np.empty(n_bytes // 8): ns per call, median of {rounds1} rounds; ratios: median")
    say("   of the rounds' own ratios (each round times the handlers back to back, in a")
    say("   rotating order), [first quartile, third quartile] after it")
    say(f"   (c) {why}")
    say(f"   (d) {why_cb}")
    env = {"np": np}
    number: dict[str, int] = {}
    for label, nb in SIZES:  # calibrate on the default handler
        t = timeit.Timer(f"np.empty({nb // 8})", globals=env)
        n, _ = t.autorange()
        number[label] = max(10, int(n * target_s / 0.2))
    # one size at a time, its variants interleaved round by round: a size's figures
    # are not disturbed by the sizes around it (NumPy's default took ~6 % longer at
    # 64 B right after the 64 MiB cases than on its own; the pool's did not).  Many
    # short rounds, each a ratio of its own: a VM whose speed drifts by a third from
    # one second to the next (the AMD one) moves the round's handlers together
    times = {(s, v): [] for s, _ in SIZES for v in variants}
    names = list(variants)
    for label, nb in SIZES:
        t = timeit.Timer(f"np.empty({nb // 8})", globals=env)
        for v, cm in variants.items():  # warm: every cache and bin of this size
            with cm:  # type: ignore[attr-defined]
                t.timeit(number[label] // 10 + 1)
        for r in range(rounds1):
            for i in range(len(names)):
                v = names[(r + i) % len(names)]
                with variants[v]:  # type: ignore[attr-defined]
                    times[(label, v)].append(t.timeit(number[label]) / number[label] * 1e9)
        print(f"\rpart 1 {label}  ", end="", file=sys.stderr)
    print(file=sys.stderr)

    def ratio(label: str, v: str) -> str:
        return round_ratios(times[(label, v)], times[(label, "default")])

    hdr = (f"   {'size':>7} {'(a) default':>12} {'(b) pool':>10} {'(c) np-alloc':>13} "
           f"{'(d) np-alloc pool':>18}  {'b/a':<20} {'c/a':<20} {'d/a':<20}")
    say(hdr)
    for label, _ in SIZES:
        m = {v: statistics.median(times[(label, v)]) for v in variants}
        c, d = m.get("numpy-allocator"), m.get("np-alloc pool")
        say(f"   {label:>7} {m['default']:>12.1f} {m['pool']:>10.1f} "
            f"{(f'{c:.1f}' if c else 'n/a'):>13} {(f'{d:.1f}' if d else 'n/a'):>18}  "
            f"{ratio(label, 'pool'):<20} "
            f"{(ratio(label, 'numpy-allocator') if c else 'n/a'):<20} "
            f"{(ratio(label, 'np-alloc pool') if d else 'n/a'):<20}")
    st = act.numpy_stats()
    say(f"   pool handler stats: {st}")
    del act
    pool.close()
    cb_pool.close()

    # ---- 2. temporaries loop -----------------------------------------------------
    # each case's `with` is entered once, for all its rounds, in a context of its own
    # (contextvars: NumPy's handler and the current pool are per context), so the
    # 1,000 iterations run in one pool as under one `with numpy_pool(...)` in a script
    makers = {"default": lambda: contextlib.nullcontext(),
              "numpy_pool hugepages": lambda: mempool.numpy_pool("1GiB", hugepages=True),
              "numpy_pool": lambda: mempool.numpy_pool("1GiB")}
    cases = {c: contextvars.Context() for c in makers}
    stacks = {c: contextlib.ExitStack() for c in makers}
    for c, mk in makers.items():
        cases[c].run(stacks[c].enter_context, mk())
    say()
    say(f"2. (a * b + c) / d, float64: {rounds2} rounds x {per_round} iterations = "
        f"{rounds2 * per_round} per case; us/iter median of rounds, ratio: median of the")
    say("   rounds' own ratios [quartiles] (cases in a rotating order), minor faults summed")
    rng = np.random.default_rng(0)
    data = {mib: [rng.random(mib * 2**20 // 8) + 1.0 for _ in range(4)] for mib in LOOP_MIB}
    t2 = {(m, c): [] for m in LOOP_MIB for c in cases}
    f2 = {(m, c): 0 for m in LOOP_MIB for c in cases}
    cnames = list(cases)
    try:
        for r in range(rounds2):
            for mib in LOOP_MIB:
                x, y, z, w = data[mib]
                for i in range(len(cnames)):
                    cname = cnames[(r + i) % len(cnames)]
                    f0 = minflt()
                    dt = cases[cname].run(loop, x, y, z, w, per_round)
                    f2[(mib, cname)] += minflt() - f0
                    t2[(mib, cname)].append(dt / per_round * 1e6)
            print(f"\rpart 2 round {r + 1}/{rounds2}  ", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        for c in makers:  # (each left in its own context, where it was entered)
            cases[c].run(stacks[c].close)
    say(f"   {'size':>5} {'case':<21} {'us/iter':>9}  {'ratio':<20} {'minor faults':>13}")
    for mib in LOOP_MIB:
        for cname in cases:
            med = statistics.median(t2[(mib, cname)])
            rat = round_ratios(t2[(mib, cname)], t2[(mib, "default")])
            say(f"   {mib:>3}Mi {cname:<21} {med:>9.1f}  {rat:<20} {f2[(mib, cname)]:>13}")

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
