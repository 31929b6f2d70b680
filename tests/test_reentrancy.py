"""User code that runs in the middle of a call -- __index__ of a size, a shape or a
dtype, the items of a batch, another thread while this one waits for a shared pool's
lock -- can close the pool or free the block the call works on.  The call must notice:
a clear exception, never a crash, and nothing else changed."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from helpers import LockHolder, needs_syscall_names, wait_until, waits_for_segment_lock

import mempool
from mempool import Pool, SharedPool


class Calls:
    """An integer whose __index__ first runs `fn` (the re-entrant user code)."""

    def __init__(self, value: int, fn) -> None:
        self.value, self.fn = value, fn

    def __index__(self) -> int:
        self.fn()
        return self.value


def test_realloc_size_that_closes_the_pool():
    p = Pool(1 << 20)
    b = p.alloc(64)
    with pytest.raises(mempool.PoolClosed):
        p.realloc(b, Calls(128, p.close))
    assert p.closed and not b.live


def test_realloc_size_that_frees_the_block():
    p = Pool(1 << 20)
    b = p.alloc(64)
    keep = []

    def free_and_reuse():
        b.free()
        keep.append(p.alloc(64))  # takes b's old range

    with pytest.raises(mempool.NotAllocated, match="freed"):
        p.realloc(b, Calls(4096, free_and_reuse))
    c = keep[0]
    assert c.offset == 0 and c.size == 64 and p.stats().live == 1  # c was not moved
    p.check()
    assert p.alloc(64).offset != c.offset


@pytest.mark.parametrize("make", ["empty", "zeros"])
def test_array_shape_that_closes_the_pool(make):
    p = Pool(1 << 20)
    with pytest.raises(mempool.PoolClosed):
        getattr(p, make)((Calls(4, p.close), 2))
    assert p.closed


def test_array_dtype_that_closes_the_pool():
    p = Pool(1 << 20)

    class DT:  # NumPy reads .dtype of any object given as a dtype
        @property
        def dtype(self):
            p.close()
            return np.dtype("f8")

    with pytest.raises(mempool.PoolClosed):
        p.empty(4, DT())
    assert p.closed


@pytest.mark.parametrize("call", ["alloc_many", "free_many"])
def test_batch_item_that_closes_the_pool(call):
    p = Pool(1 << 20)
    s = p._strategy
    off = s.alloc(16)
    arg = [Calls(16, p.close)] if call == "alloc_many" else [Calls(off, p.close)]
    with pytest.raises(mempool.PoolClosed):
        getattr(s, call)(arg)
    assert p.closed


def test_batch_item_that_allocates_is_seen():
    s = mempool.TLSF(1024)
    offs = s.alloc_many([Calls(16, lambda: s.alloc(100)), 16])
    assert offs.tolist() == [100, 116] and len(s) == 3
    s.check()


def test_collecting_a_block_whose_range_was_freed_underneath(monkeypatch):
    # the private strategy bypasses the pool: the block's release fails when it is
    # collected; that is reported (not raised), and nothing crashes
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))
    p = Pool(1 << 20)
    b = p.alloc(64)
    p._strategy.reset()
    del b
    assert len(seen) == 1 and isinstance(seen[0].exc_value, mempool.NotAllocated)
    assert seen[0].object is p
    p.check()
    assert p.alloc(64).offset == 0


def test_uninitialised_pools_are_closed():
    for cls in (Pool, SharedPool):
        p = cls.__new__(cls)
        assert p.closed
        with pytest.raises(mempool.PoolClosed):
            p.alloc(10)
        with pytest.raises(mempool.PoolClosed):
            p.empty(3)
        with pytest.raises(mempool.PoolClosed):
            p.stats()
    Pool.__new__(Pool).close()  # a no-op


def test_detached_strategy_closes_the_pool():
    p = Pool(1 << 20)
    p._strategy._detach()
    assert p.closed
    with pytest.raises(mempool.PoolClosed):
        p.alloc(8)


def test_set_journal_refuses_offsets_outside_the_buffer():
    p = Pool(1 << 20)
    st_len = len(p._strategy._full_snapshot())
    buf = bytearray(4096 + st_len)
    for joff, soff in ((-64, 4096), (len(buf) - 64, 4096), (9, 4096), (0, 9), (0, 1024),
                       (0, 4160), (2**64 - 64, 4096), (2**70, 4096), (0, 2**70)):
        with pytest.raises((ValueError, OverflowError)):
            p._set_journal(buf, joff, soff)
    buf[:8] = (0x314c4e524a504d).to_bytes(8, "little")
    buf[4096:] = p._strategy._full_snapshot()
    p._set_journal(buf, 0, 4096)
    with pytest.raises(RuntimeError, match="set already"):
        p._set_journal(buf, 0, 4096)
    b = p.alloc(8)
    assert bytes(buf[4096:]) == p._strategy._full_snapshot()  # the shadow follows the state
    b.free()


@needs_syscall_names
def test_shared_close_while_a_thread_waits_for_the_lock(name):
    # An alloc() queued for the lock, then close() (it gives this process's cache and
    # handles back under the lock), then another alloc(): the first is refused with
    # PoolClosed before it touches the segment, whichever of the two waiters the lock
    # goes to first (they queue again every 100 ms of their wait: mp_shared_lock_wait);
    # the second at once.
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)  # a second mapping: its lock holder blocks p's calls
    p.check()
    results: dict[str, object] = {}

    def closer():
        p.close()
        results["closed"] = True

    def allocer():
        try:
            results["alloc"] = p.alloc(4096)  # beyond the cache: waits for the lock
        except Exception as e:
            results["alloc"] = e

    with LockHolder(q) as held:
        a = threading.Thread(target=allocer)
        a.start()
        wait_until(lambda: waits_for_segment_lock(a.native_id, name), "alloc() waits for the lock")
        c = threading.Thread(target=closer)
        c.start()
        wait_until(lambda: waits_for_segment_lock(c.native_id, name), "close() waits for the lock")
        with pytest.raises(mempool.PoolClosed):
            p.alloc(4096)  # close() has begun: refused without waiting
        held.release()
    for t in (c, a):
        t.join(30)
        assert not t.is_alive()
    assert results["closed"] is True and p.closed
    assert isinstance(results["alloc"], mempool.PoolClosed), results["alloc"]
    _all_given_back(q)  # the segment lost nothing


@needs_syscall_names
def test_shared_nothing_new_while_close_waits_for_the_lock(name):
    # close() found no export alive and waits for the segment's lock (another process
    # holds it) without the GIL: what this process's other threads ask for meanwhile
    # needs no lock -- a range in the process's cache, an array NumPy makes in an
    # activation entered before, a view of a live Block -- and must be refused (or go to
    # malloc), or close() would unmap the segment under it (it did: a SIGSEGV).
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    b = p.alloc(64)
    p.empty(8)  # made and dropped: its range waits in the process's cache
    act = p.activate(numpy=True)
    act.__enter__()
    lo, hi = p.address, p.address + p.capacity
    try:
        x = np.ones(8)
        assert lo <= x.ctypes.data < hi
        del x  # (a free: the lock is free yet)
        with LockHolder(q) as held:
            c = threading.Thread(target=p.close)
            c.start()
            wait_until(lambda: waits_for_segment_lock(c.native_id, name),
                       "close() waits for the lock")
            with pytest.raises(mempool.PoolClosed):
                p.empty(8)  # the cache has one: no lock needed
            with pytest.raises(mempool.PoolClosed):
                memoryview(b)
            with pytest.raises(mempool.PoolClosed):
                p.activate(numpy=True).__enter__()
            before = act.numpy_stats()["fallbacks"]
            y = np.empty(8)  # the activation in force: NumPy's request goes to malloc
            assert not lo <= y.ctypes.data < hi
            assert act.numpy_stats()["fallbacks"] == before + 1
            assert p.exports == 0
            held.release()
        c.join(30)
        assert not c.is_alive() and p.closed
        y[:] = 5  # (malloc's memory: alive after the close)
        assert y.sum() == 40
    finally:
        act.__exit__(None, None, None)
    assert not b.live
    _all_given_back(q)  # b and the cached range went back with the close


@needs_syscall_names
def test_shared_realloc_of_a_block_freed_while_waiting(name):
    # realloc checks the block before it waits for the lock; the owner frees the block
    # while it waits; once it has the lock it must check again and refuse
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    b = p.alloc(4096)
    out: dict[str, object] = {}
    me = threading.get_native_id()
    freed = threading.Event()

    def grow():
        try:
            out["r"] = p.realloc(b, 8192)
        except Exception as e:
            out["r"] = e

    with LockHolder(q) as held:
        g = threading.Thread(target=grow)
        g.start()
        wait_until(lambda: waits_for_segment_lock(g.native_id, name), "realloc() waits for the lock")

        def release_once_free_waits():
            # b.free() drops the owner's reference at once (no lock: b is dead from
            # then on) and then queues for the lock, behind grow(), to give the range
            # back.  Let the lock go when it waits there (or has returned).
            try:
                wait_until(lambda: freed.is_set() or waits_for_segment_lock(me, name),
                           "free() waits for the lock, behind realloc()")
            except AssertionError as e:
                out["watcher"] = e
            finally:
                held.release()

        w = threading.Thread(target=release_once_free_waits)
        w.start()
        b.free()
        freed.set()
        w.join(30)
    g.join(30)
    assert "watcher" not in out, out["watcher"]
    assert not g.is_alive()
    assert isinstance(out["r"], mempool.NotAllocated), out["r"]
    assert p.stats().live == 0
    p.check()
    q.close()
    p.close()
    p.unlink()


@needs_syscall_names
@pytest.mark.parametrize("size", [64, 4096])  # a free into the process's cache / under the lock
def test_shared_named_put_of_a_block_freed_while_the_put_waits(name, size):
    # the put checked the Block before it waited for the lock; freed meanwhile, the
    # range keeps its offset and tag until reused, and the name took it: the next
    # alloc() got the named bytes (found by a helper).  Now NotAllocated.
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    b = p.alloc(size)
    memoryview(b)[:8] = b"NAMEDATA"
    owned, go = threading.Event(), threading.Event()
    real_owns = type(p)._named_owns

    def owns(off):  # (ordering only: the real check, then a pause before _named_put)
        r = real_owns(p, off)
        owned.set()
        go.wait(30)
        return r

    p._named_owns = owns
    res: dict[str, object] = {}

    def putter():
        try:
            p.named["x"] = b
            res["put"] = "ok"
        except Exception as e:
            res["put"] = e

    t = threading.Thread(target=putter)
    t.start()
    owned.wait(30)
    with LockHolder(q) as held:
        go.set()
        wait_until(lambda: waits_for_segment_lock(t.native_id, name), "the put waits for the lock")
        f = threading.Thread(target=b.free)
        f.start()
        wait_until(lambda: not f.is_alive() or waits_for_segment_lock(f.native_id, name),
                   "the free is done or waits for the lock")
        held.release()
    t.join(30)
    f.join(30)
    del p._named_owns
    assert isinstance(res["put"], mempool.NotAllocated) and not b.live
    assert "x" not in p.named
    c = p.alloc(size)  # the same range, and no name holds it
    memoryview(c)[:8] = b"CLOBBER!"
    assert "x" not in q.named
    c.free()
    p.close()  # (gives back the process's cache too)
    _all_given_back(q)


@needs_syscall_names
def test_shared_block_dropped_while_close_waits_gives_its_range_back(name):
    # the dropping thread released its reference, then waited for the lock to free the
    # range behind close(), which had given back what was live and then refused it
    # (PoolClosed, unraisable): the range stayed in the segment (found by a helper)
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    blocks = [p.alloc(4096)]  # beyond the process's cache: freed under the lock
    _drop_while_close_waits(name, p, q, blocks)
    _all_given_back(q)


def _drop_while_close_waits(name: str, p, q, blocks: list) -> None:
    """p.close() waits for the lock (q's holder has it), then another thread drops the
    last references of `blocks` (their dealloc frees) and waits behind it; then the
    lock goes free and both finish."""
    with LockHolder(q) as held:
        c = threading.Thread(target=p.close)
        c.start()
        wait_until(lambda: waits_for_segment_lock(c.native_id, name), "close() waits")
        d = threading.Thread(target=blocks.clear)
        d.start()
        wait_until(lambda: waits_for_segment_lock(d.native_id, name), "the drop waits")
        held.release()
    c.join(30)
    d.join(30)
    assert p.closed and not c.is_alive() and not d.is_alive()


def _all_given_back(q) -> None:
    """The segment holds no range (q: another mapping of it); q goes, and the segment."""
    assert q.used == 0 and len(q) == 0
    q.check()
    q.close()
    q.unlink()


@needs_syscall_names
def test_shared_fork_while_a_thread_waits_then_close_in_the_child(name):
    # the child's copy counted the parent's waiting thread, which it does not have:
    # its close() waited for it forever (found by a helper)
    import os
    import time
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    with LockHolder(q) as held:
        t = threading.Thread(target=lambda: p.alloc(4096).free())
        t.start()
        wait_until(lambda: waits_for_segment_lock(t.native_id, name), "alloc() waits")
        pid = os.fork()
        if pid == 0:  # (the child: no pytest from here)
            try:
                p.close()
                os._exit(0)
            finally:
                os._exit(1)
        held.release()
    t.join(30)
    deadline = time.monotonic() + 30
    while True:
        r, status = os.waitpid(pid, os.WNOHANG)
        if r:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child's close() did not return")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    p.close()
    _all_given_back(q)


@pytest.mark.parametrize("make", ["zeros", "empty"])
def test_close_from_the_tracking_hook_of_an_array_is_refused(make):
    # pool.track()'s hook runs Python code after the array's range is taken and before
    # the array exists; close() from another thread then found no export and let the
    # memory go under the array (a SIGSEGV; found by a helper).  Now it refuses.
    from mempool import tracking
    p = Pool("1MiB")
    p.track()
    in_hook, closed = threading.Event(), threading.Event()

    class PausingDict(dict):  # (ordering only: a thread switch in the hook's store)
        def __setitem__(self, k, v):
            super().__setitem__(k, v)
            if not in_hook.is_set():
                in_hook.set()
                closed.wait(30)

    tracking._TRACKED[p] = PausingDict()
    res: dict[str, object] = {}

    def closer():
        in_hook.wait(30)
        try:
            p.close()
            res["close"] = "closed"
        except Exception as e:
            res["close"] = e
        closed.set()

    t = threading.Thread(target=closer)
    t.start()
    a = getattr(p, make)(1000)
    t.join(30)
    assert isinstance(res["close"], BufferError), res["close"]
    a[:] = 1
    assert a.sum() == 1000 and p.address <= a.ctypes.data < p.address + p.capacity
    del a
    p.close()


@needs_syscall_names
def test_shared_borrowed_handle_dropped_while_close_waits_says_nothing(name):
    # close() gives the borrowed reference back first; the dropping thread, which waited
    # for the lock behind it, then found its Block dead and reported NotAllocated as an
    # unraisable error on stderr (found by a helper)
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    a = p.alloc(4096)
    blocks = [p.block_at(a.offset)]  # a borrowed handle
    del a  # the owner's reference goes: the borrowed one keeps the range
    seen: list[object] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        _drop_while_close_waits(name, p, q, blocks)
    finally:
        sys.unraisablehook = old_hook
    assert seen == []
    _all_given_back(q)


@needs_syscall_names
def test_shared_child_forked_while_close_waits_has_a_pool_of_its_own(name):
    # the child's copy inherited "close() has begun" from a thread it does not have: a
    # pool that read as open and refused every call (found by a helper)
    import os
    p = SharedPool.create(name, "1MiB")
    q = SharedPool.attach(name)
    with LockHolder(q) as held:
        c = threading.Thread(target=p.close)
        c.start()
        wait_until(lambda: waits_for_segment_lock(c.native_id, name), "close() waits")
        pid = os.fork()
        if pid == 0:  # (the child: no pytest from here)
            code = 1
            try:
                b = p.alloc(64)
                z = p.zeros(4)
                ok = not p.closed and b.live and z.sum() == 0
                del z
                b.free()
                p.close()
                code = 0 if ok else 2
            finally:
                os._exit(code)
        held.release()
    c.join(30)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and p.closed
    _all_given_back(q)
