"""mempool.cupy.DevicePool: CuPy's allocator hook over one device allocation.  The GPU
tests run only where CuPy and a CUDA device are present (bench/gpu_check.sh runs them
on a lent GPU machine); the argument checks and the import without CuPy run anywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mempool
import mempool.cupy as mcp
from mempool import OutOfSpace, PoolClosed

SRC = os.path.dirname(os.path.dirname(mempool.__file__))


def _gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA device")


def test_import_without_cupy_and_a_clear_error_when_used():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import mempool, mempool.cupy as m\n"
            "try:\n    m.DevicePool('1MiB')\n"
            "except ImportError as e:\n    print('IE', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("IE mempool.cupy needs CuPy: pip install cupy-cuda12x")


@pytest.mark.parametrize("args, kw, exc, match", [
    ((0,), {}, ValueError, "capacity"),
    ((-5,), {}, ValueError, "capacity"),
    (("lots",), {}, ValueError, "capacity"),
    ((1.5,), {}, TypeError, "capacity"),
    ((1 << 20,), {"align": 3}, ValueError, "power of two"),
    ((1 << 20,), {"align": 0}, ValueError, "power of two"),
    ((1 << 20,), {"device": "0"}, TypeError, "device"),
    ((1 << 20, "nosuch"), {}, ValueError, "unknown strategy"),
])
def test_bad_arguments_are_refused_before_any_device_call(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        mcp.DevicePool(*args, **kw)


@needs_gpu
@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "buddy"])
def test_cupy_arrays_come_from_the_pool_and_go_back(strategy):
    import cupy
    pool = mcp.DevicePool("64MiB", strategy)
    base = pool._base
    old = cupy.cuda.get_allocator()
    cupy.cuda.set_allocator(pool.malloc)
    try:
        a = cupy.arange(1000, dtype=cupy.float64)
        b = a * 2 + 1
        assert base <= a.data.ptr < base + pool.capacity
        assert base <= b.data.ptr < base + pool.capacity
        assert a.data.ptr % 512 == 0 and b.data.ptr % 512 == 0
        assert float(b.sum()) == float(sum(2 * i + 1 for i in range(1000)))
        assert pool.used_bytes() >= 16000 and len(pool) >= 2
        with pytest.raises(BufferError, match="alive"):
            pool.close()
        del a, b
        assert pool.used_bytes() == 0 and len(pool) == 0
        segs = pool.segments()
        assert sum(s for _, s, used in segs if not used) == pool.capacity
    finally:
        cupy.cuda.set_allocator(old)
    pool.close()
    assert pool.closed and pool.total_bytes() == 0
    with pytest.raises(PoolClosed):
        pool.malloc(16)


@needs_gpu
def test_full_pool_raises_out_of_space_and_is_unchanged():
    import cupy
    pool = mcp.DevicePool("1MiB")
    old = cupy.cuda.get_allocator()
    cupy.cuda.set_allocator(pool.malloc)
    try:
        a = cupy.ones(100_000, dtype=cupy.float32)      # 400 KB
        before = pool.segments()
        with pytest.raises(OutOfSpace):
            cupy.ones(200_000, dtype=cupy.float32)       # 800 KB: does not fit
        assert pool.segments() == before and len(pool) == 1
        assert float(a.sum()) == 100_000.0
        del a
    finally:
        cupy.cuda.set_allocator(old)
    assert pool.used_bytes() == 0
    pool.close()
