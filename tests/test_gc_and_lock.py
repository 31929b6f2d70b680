"""A garbage-collector pass can run wherever Python objects are made, and it may
collect Blocks, whose release changes the strategy state and (shared pools) takes the
segment's lock.  So no Python object is made under the lock, and no walk of the state
is interleaved with object creation; the bytes of a shared realloc move before the
lock goes.  These tests force GC passes at those points."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SLOW

import mempool
from mempool import Pool, SharedPool


class Holder:
    """Cyclic garbage: only a GC pass frees it (and the blocks it holds)."""


def cyclic_garbage_holding(blocks) -> None:
    h = Holder()
    h.self = h
    h.blocks = blocks


@pytest.fixture
def gc_often():
    old = gc.get_threshold()
    yield lambda k: gc.set_threshold(k)
    gc.set_threshold(*old)


def test_shared_stats_with_gc_collecting_blocks_does_not_deadlock(name):
    # before: stats() built its result under the lock; the GC pass it started freed a
    # 4 KiB block (not cached: its release takes the lock) and waited for ourselves
    # forever.  Run in a child so that a regression fails on a timeout, not a hang.
    code = textwrap.dedent(f"""
        import gc
        from mempool import SharedPool
        class Holder: pass
        pool = SharedPool.create({name!r}, 1 << 20, unlink_on_exit=True)
        for k in (3, 5, 7) * 10:
            gc.collect()
            h = Holder(); h.self = h; h.block = pool.alloc(4096)
            del h
            gc.set_threshold(k)
            s = pool.stats(); segs = pool.segments(); n = len(pool)
            gc.set_threshold(700)
        gc.collect()
        assert pool.stats().live == 0 and len(pool) == 0
        pool.check()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "buddy", "heap", "bitmap"])
def test_segments_are_consistent_when_gc_frees_blocks_during_the_call(strategy, gc_often):
    pool = Pool(1 << 22, strategy) if strategy != "bitmap" else Pool(1 << 22, strategy, block_size=16)
    for _ in range(10):
        gc.collect()
        keep = [pool.alloc(64 + 32 * (i % 7)) for i in range(200)]
        cyclic_garbage_holding([pool.alloc(64 + 48 * (i % 5)) for i in range(400)])
        for b in keep[::2]:
            b.free()
        gc_often(300)
        segs = pool.segments()
        gc_often(700)
        pos = 0
        for off, size, _ in segs:  # the map tiles the span, as it was at some instant
            assert off == pos
            pos = off + size
        assert pos == pool.capacity
        pool.check()
        del keep
    gc.collect()
    assert len(pool) == 0


def test_shared_registry_full_gives_the_cache_back(name):
    with SharedPool.create(name, "1MiB", max_entries=4) as p:
        for _ in range(2):
            blocks = [p.alloc(64) for _ in range(4)]
            del blocks  # their ranges go to this process's cache, keeping their entries
            assert p.shared_stats().cached == 4 and p.shared_stats().entries == 4
            b = p.alloc(4096)  # the registry is full of cached ranges: they go back
            assert b.offset == 0 and b.size == 4096
            assert p.shared_stats().entries == 1
            del b
        full = [p.alloc(4096) for _ in range(4)]
        with pytest.raises(mempool.OutOfSpace, match="registry is full"):
            p.alloc(8)  # live entries, nothing cached: a real refusal
        assert p.stats().live == 4
        del full
        p.check()


def _realloc_racer(name: str, size: int, racing, stop) -> None:
    pool = SharedPool.attach(name)
    while not stop.is_set():
        racing.set()  # attached, and in the loop from now on
        try:
            b = pool.alloc(size)
        except mempool.OutOfSpace:
            continue
        np.frombuffer(b, np.uint8)[:] = 0x55  # a view: gone at the end of the line
        b.free()
    pool.close()


def test_shared_realloc_keeps_its_bytes_while_another_process_allocates(name):
    # before: the bytes moved after the lock was released, when another process could
    # already have taken (and written) the old range (seen in ~1 of 150 rounds)
    import multiprocessing as mp

    size = 8 << 20
    pool = SharedPool.create(name, 64 << 20, "bestfit")
    ctx = mp.get_context("fork")
    racing, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_realloc_racer, args=(name, size, racing, stop))
    proc.start()
    assert racing.wait(60), "the racer never started"
    bad = moved = 0
    try:
        # (150 in a debug build, whose check() after every call walks BestFit's 2^21-slot
        # offset table: 600 took 140 s under ASan + MP_DEBUG)
        for _ in range(3000 if SLOW else 150 if mempool._mempool.DEBUG_BUILD else 600):
            a = pool.alloc(size)
            guard = pool.alloc(4096)  # the growth cannot be in place
            np.frombuffer(a, np.uint8)[:] = 0xAA
            o0 = a.offset
            a = pool.realloc(a, 2 * size)
            moved += a.offset != o0
            bad += int(np.count_nonzero(np.frombuffer(a, np.uint8)[:size] != 0xAA)) > 0
            a.free()
            guard.free()
    finally:
        stop.set()
        proc.join(30)
    assert moved > 0 and bad == 0
    pool.check()
    pool.close()
    pool.unlink()


FINALIZER_IN_A_PUT = """
import gc, sys, numpy as np, mempool
for T in range(40):
    p = mempool.Pool(1 << 20)
    p.named["a"] = np.zeros(4)
    class Closer:
        def __del__(self):
            try:
                p.close()
            except BufferError:
                pass
    val = np.arange(1000.0)
    gc.collect()
    c = Closer(); c.me = c; del c  # a garbage cycle with a finalizer
    gc.set_threshold(T)
    try:
        p.named["b"] = val
    except mempool.PoolClosed:
        pass
    gc.set_threshold(700)
    gc.collect()
    if not p.closed:
        p.check()
print("ok")
"""


def test_a_collection_cannot_run_inside_the_making_of_a_block():
    # Blocks are tracked by the collector; on 3.11 making one could run a collection on
    # the spot, and a finalizer there closed the pool in the middle of a named put,
    # which went on with the freed state (SIGSEGV; ASan: heap-use-after-free)
    r = subprocess.run([sys.executable, "-c", FINALIZER_IN_A_PUT], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


A_COLLECTION_CLOSES_A_SHARED_GET = """
import gc, os
import numpy as np
from mempool import SharedPool
state = {"k": -1, "pool": None}
def cb(phase, info):
    if phase != "start" or state["k"] < 0: return
    state["k"] -= 1
    if state["k"] == 0:
        try: state["pool"].close()
        except BufferError: pass
gc.callbacks.append(cb)
for k in range(1, 40):
    name = f"mptest-gcget-{os.getpid()}_{k}"
    p = SharedPool.create(name, 1 << 20, unlink_on_exit=True)
    try:
        p.named["x"] = np.arange(100000.0)
        state["pool"] = p; gc.set_threshold(1, 1, 1); state["k"] = k
        try:
            a = p.named["x"]
        except Exception:
            a = None
        finally:
            state["k"] = -1; gc.set_threshold(700, 10, 10)
        if a is not None:
            assert not p.closed and a.sum() == 4999950000.0
        del a
    finally:
        gc.collect()
        if not p.closed:
            p.close()
print("ok")
"""


def test_a_collection_inside_the_making_of_a_shared_array_cannot_close_its_pool():
    # a SharedArray is an instance of a Python subclass: making one may run a
    # collection on 3.11, and a gc callback there closed the pool before the array's
    # export was counted; the array came back over unmapped memory (SIGSEGV on reading)
    r = subprocess.run([sys.executable, "-c", A_COLLECTION_CLOSES_A_SHARED_GET],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
