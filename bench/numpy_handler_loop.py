"""The NEP 49 handlers alone, without NumPy around them: a malloc+free pair in a C loop.

    python bench/numpy_handler_loop.py

Compiles a ten-line C loop (the system's ``cc``, into a temporary directory) that calls
a handler's ``malloc`` then ``free`` n times, and times it with the GIL held (loaded
with ``ctypes.PyDLL``: the pool's handler takes its hot path, as under NumPy) for
NumPy's default handler and for a ``Pool("256MiB")``'s, 64 B and 1 KiB, median of 7
rounds of 2,000,000 pairs, interleaved.  What is left of ``np.empty``'s difference
(bench/numpy_handler.py) is the handlers' own work: this separates it from NumPy's.
Writes bench/results/numpy_handler_loop.txt.
"""

from __future__ import annotations

import ctypes
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import mempool
from mempool import _mempool

LOOP_C = r"""
#include <stddef.h>
#include <time.h>
typedef struct {
    void *ctx;
    void *(*malloc)(void *, size_t);
    void *(*calloc)(void *, size_t, size_t);
    void *(*realloc)(void *, void *, size_t);
    void (*free)(void *, void *, size_t);
} alloc_t;
/* PyDataMem_Handler: char name[127]; uint8_t version; then the allocator */
double pairs(char *handler, long n, size_t size)
{
    alloc_t *a = (alloc_t *)(handler + 128);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) a->free(a->ctx, a->malloc(a->ctx, size), size);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / n;
}
"""


def main() -> None:
    out = Path(__file__).parent / "results" / "numpy_handler_loop.txt"
    with tempfile.TemporaryDirectory() as d:
        src, so = Path(d) / "loop.c", Path(d) / "loop.so"
        src.write_text(LOOP_C)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
        lib = ctypes.PyDLL(str(so))  # the GIL stays held during the call
        lib.pairs.restype = ctypes.c_double
        lib.pairs.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_size_t]
        pointer = ctypes.pythonapi.PyCapsule_GetPointer
        pointer.restype = ctypes.c_void_p
        pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        pool = mempool.Pool("256MiB")
        act = pool.activate(numpy=True)
        with act:
            np.empty(1)  # the handler exists now
        ours = act._handler
        default = _mempool.set_numpy_handler(ours)  # NumPy's, as set_handler returns it
        _mempool.set_numpy_handler(default)
        handlers = {"default": pointer(default, b"mem_handler"),
                    "pool": pointer(ours, b"mem_handler")}
        lines = ["command: python bench/numpy_handler_loop.py",
                 "date:    " + datetime.datetime.now(datetime.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M:%S UTC"),
                 f"machine: {platform.machine()}, Python {platform.python_version()}, "
                 f"NumPy {np.__version__}", "",
                 "ns per malloc+free pair, median of 7 rounds of 2,000,000",
                 f"   {'size':>6} {'default':>8} {'pool':>8} {'pool/default':>13}"]
        for size in (64, 1024):
            t: dict[str, list[float]] = {k: [] for k in handlers}
            for _ in range(7):
                for k, h in handlers.items():
                    t[k].append(lib.pairs(h, 2_000_000, size))
            m = {k: statistics.median(v) for k, v in t.items()}
            lines.append(f"   {size:>6} {m['default']:>8.2f} {m['pool']:>8.2f} "
                         f"{m['pool'] / m['default']:>12.2f}x")
        st = act.numpy_stats()
        assert st["live"] == 0 and pool.used == 0, st
        pool.close()
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    out.write_text(text)


if __name__ == "__main__":
    main()
