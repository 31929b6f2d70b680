"""One loop of b = pool.alloc(size); b.free() for profiling.

    python bench/journal_loop.py file|shared|private tlsf 4096 20000
"""
import os
import sys
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from mempool import Pool, SharedPool

kind, strat, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = tempfile.mkdtemp()
if kind == "private":
    p = Pool("64MiB", strat)
elif kind == "file":
    p = Pool.create(os.path.join(d, "x.mp"), "64MiB", strat)
else:
    p = SharedPool.create(f"jloop-{os.getpid()}", "64MiB", strat)
alloc = p.alloc
for _ in range(n):
    b = alloc(size)
    b.free()
p.close()
if kind == "shared":
    p.unlink()
