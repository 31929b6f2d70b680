"""Handles in flight: a pickled Block or pool array carries a lease (a reference in
the segment's lease table) that keeps its range alive until a receiver unpickles it
and adopts it, even after the sender dropped its own and exited; a lease never
unpickled is released by its deadline.  Real processes, spawn and fork."""

import multiprocessing as mp
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import shared_workers as W
from helpers import needs_syscall_names

import mempool
from mempool import SharedPool, _mempool
from mempool._segment import Header
from mempool.shared import _block_of

N = 100  # int64: 800 bytes, above the per-process cache's 512 (given back at once)
METHODS = ["spawn", "fork"]


def is_view_of(arr, pool) -> bool:
    """arr's bytes are the pool's (no copy): its base is a Block of pool."""
    blk = _block_of(arr)
    return (blk is not None and blk.pool is pool and blk.live and
            blk.address <= _mempool.data_address(arr) < blk.address + blk.size)


def settled(pool) -> None:
    """Everything given back: no range, no lease, and the state checks."""
    assert pool.used == 0 and len(pool) == 0
    assert pool.shared_stats().leases == 0
    pool.check()


def check_results(pool, results, values) -> None:
    assert len(results) == len(values)
    offsets = set()
    for r, i in zip(results, values, strict=True):
        assert isinstance(r, mempool.SharedArray) and r.dtype == np.int64 and r.shape == (N,)
        assert (r == i).all()
        assert is_view_of(r, pool)
        offsets.add(_block_of(r).offset)
    assert len(offsets) == len(results)  # one range each


# ---- each transport x start method ---------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_map_returns_views(name, method):
    with SharedPool.create(name, "4MiB") as p:
        with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
            results = list(ex.map(W.make_array, [name] * 8, range(8)))
        check_results(p, results, range(8))
        assert p.shared_stats().leases == 0  # every lease adopted
        del results
        settled(p)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("how", ["map", "imap"])
def test_multiprocessing_pool_returns_views(name, method, how):
    with SharedPool.create(name, "4MiB") as p:
        with mp.get_context(method).Pool(2) as workers:
            fn = workers.map if how == "map" else workers.imap
            results = list(fn(W.make_array_args, [(name, i) for i in range(8)]))
            # let the workers exit: the with's terminate() could SIGTERM one between
            # sending its result and dropping its own array (then: reclaim(pid))
            workers.close()
            workers.join()
        check_results(p, results, range(8))
        del results
        settled(p)


@pytest.mark.parametrize("method", METHODS)
def test_queue_sender_exits_before_the_receiver_unpickles(name, method):
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        q = ctx.Queue()
        procs = [ctx.Process(target=W.send_by_queue, args=(name, q, i)) for i in range(3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        # every sender is gone, its array collected: only the leases hold the ranges
        assert len(p) == 3 and p.shared_stats().leases == 3
        results = sorted((q.get(timeout=30) for _ in procs), key=lambda a: int(a[0]))
        check_results(p, results, range(3))
        assert p.shared_stats().leases == 0
        del results
        settled(p)


@pytest.mark.parametrize("method", METHODS)
def test_pipe_sender_exits_before_the_receiver_unpickles(name, method):
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=W.send_by_pipe, args=(name, child, 7))
        proc.start()
        child.close()
        proc.join(60)
        assert proc.exitcode == 0
        assert len(p) == 1 and p.shared_stats().leases == 1
        a = parent.recv()
        check_results(p, [a], [7])
        del a
        settled(p)


# ---- 1,000 results through ProcessPoolExecutor.map ------------------------------------------
def test_a_thousand_arrays_from_two_workers(name):
    with SharedPool.create(name, "16MiB") as p:
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(W.make_array, [name] * 1000, range(1000), chunksize=10))
        check_results(p, results, range(1000))
        assert p.used == 1000 * N * 8 and p.shared_stats().leases == 0
        del results
        settled(p)


# ---- a lease's lifetime --------------------------------------------------------------------
# (lease_timeout is a second in these: a stall of the test process between taking a
# lease and looking at it, a GC pass or load, measured up to ~0.16 s, must not reach it)
def test_a_lease_never_unpickled_expires_and_is_counted(name):
    with SharedPool.create(name, "1MiB", lease_timeout=1.0) as p:
        assert p.shared_stats().lease_timeout == pytest.approx(1.0)
        a = p.zeros(N)
        h = pickle.dumps(a)
        blk_h = pickle.dumps(_block_of(a))
        del a  # the leases hold the range now
        st = p.shared_stats()
        assert len(p) == 1 and st.leases == 2 and st.leases_expired == 0
        time.sleep(1.1)
        assert p.used == 0  # the read's lock noticed the deadline: both released
        st = p.shared_stats()
        assert st.leases == 0 and st.leases_expired == 2
        for lost in (h, blk_h):
            with pytest.raises(mempool.NotAllocated, match=r"stale.*lease"):
                pickle.loads(lost)
        settled(p)


def test_check_when_taking_the_lock_expires_a_lease(name):
    # the lock's taking released an expired lease's range inside check()'s transaction,
    # before check() compared the state with its shadow: a healthy pool was "corrupt"
    with SharedPool.create(name, "1MiB", lease_timeout=1.0) as p:
        b = p.alloc(100)
        lost = pickle.dumps(b)
        b.free()
        del b
        time.sleep(1.1)
        p.check()  # (its lock expires the lease and frees the range)
        assert p.used == 0 and p.shared_stats().leases_expired == 1
        with pytest.raises(mempool.NotAllocated):
            pickle.loads(lost)


def _dying_sender(name: str) -> tuple[int, bytes]:
    """A process that makes an array, pickles it and dies without freeing anything:
    (its pid, the pickle)."""
    code = f"""
        import os, pickle, sys, mempool
        p = mempool.SharedPool.attach({name!r})
        a = p.zeros({N})
        a[:] = 5
        sys.stdout.buffer.write(b"%d\\n" % os.getpid() + pickle.dumps(a))
        sys.stdout.flush()
        os._exit(0)   # its own reference is left to reclaim
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert r.returncode == 0, r.stderr
    pid, blob = r.stdout.split(b"\n", 1)
    return int(pid), blob


def test_reclaim_leaves_the_leases_of_a_dead_sender(name):
    with SharedPool.create(name, "1MiB") as p:
        pid, blob = _dying_sender(name)
        assert p.reclaim(pid) == 0  # its own reference released; the lease keeps the range
        assert len(p) == 1 and p.shared_stats().leases == 1
        a = pickle.loads(blob)  # adopted: ours now
        assert (a == 5).all() and is_view_of(a, p) and p.shared_stats().leases == 0
        del a
        settled(p)


def test_a_lost_message_of_a_dead_sender_expires(name):
    with SharedPool.create(name, "1MiB", lease_timeout=1.0) as p:
        pid, blob = _dying_sender(name)
        p.reclaim(pid)
        assert len(p) == 1 and p.shared_stats().leases == 1
        time.sleep(1.1)
        assert len(p) == 0 and p.shared_stats().leases_expired == 1
        with pytest.raises(mempool.NotAllocated, match="stale"):
            pickle.loads(blob)
        settled(p)


def test_unpickled_twice(name):
    with SharedPool.create(name, "1MiB") as p:
        a = p.zeros(N)
        h = pickle.dumps(a)
        del a
        b1 = pickle.loads(h)  # adopts the lease
        assert p.shared_stats().leases == 0 and len(p) == 1
        b2 = pickle.loads(h)  # no lease left: a fresh reference, the range being live
        assert _block_of(b1).offset == _block_of(b2).offset and len(p) == 1
        b1[0] = 9
        assert b2[0] == 9
        del b1
        assert len(p) == 1  # b2 holds it
        del b2
        assert len(p) == 0
        with pytest.raises(mempool.NotAllocated, match="stale"):
            pickle.loads(h)  # nothing kept it: refused, never aliased
        settled(p)


def test_unpickled_twice_in_two_processes(name):
    # the second receiver gets a reference as long as the first keeps the range
    with SharedPool.create(name, "1MiB") as p:
        a = p.zeros(N)
        h = pickle.dumps(a)
        del a
        keep = pickle.loads(h)
        with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
            assert ex.submit(pickle.loads, h).result() is not None  # back as a new lease
        del keep
        settled(p)


def test_a_full_lease_table_releases_expired_leases_then_refuses(name):
    with SharedPool.create(name, "1MiB", max_leases=4, lease_timeout=1.0) as p:
        a = p.zeros(N)
        held = [pickle.dumps(a) for _ in range(4)]
        with pytest.raises(mempool.OutOfSpace, match="lease table is full"):
            pickle.dumps(a)
        assert p.shared_stats().leases == 4
        time.sleep(1.1)
        h = pickle.dumps(a)  # the full table released the expired ones first
        st = p.shared_stats()
        assert st.leases == 1 and st.leases_expired == 4
        del held
        assert (pickle.loads(h) == 0).all()
        del a
        settled(p)


def test_create_refuses_bad_lease_options(name):
    for bad, exc in [({"lease_timeout": 0}, ValueError), ({"lease_timeout": -1.0}, ValueError),
                     ({"lease_timeout": float("nan")}, ValueError),
                     ({"lease_timeout": "1"}, TypeError), ({"max_leases": 0}, ValueError),
                     ({"max_leases": 2.0}, ValueError)]:
        with pytest.raises(exc, match="lease"):
            SharedPool.create(name, "1MiB", **bad)
        assert not Path(f"/dev/shm/{name}").exists()


# ---- crafted lease fields --------------------------------------------------------------------
CTL = 256 + 2048  # sizeof(mp_shared_ctl_t): ..., the journal (2048 bytes), the leases
LEASE_MAX, LEASES, LEASE_FREE, LEASE_TIMEOUT, LEASE_DUE = (2048 + x for x in (192, 196, 200, 208,
                                                                            216))


def _lease_table(data: bytes, h: Header) -> int:
    """The offset of the lease table in the segment (shared.c's layout)."""
    max_entries, = struct.unpack_from("<I", data, h.lock_off + 8)
    bits_max, = struct.unpack_from("<I", data, h.lock_off + CTL - 12)  # the index's reserve
    index = ((4 << bits_max) + 63) & ~63
    return h.lock_off + CTL + index + max_entries * 64


MATCH = {"lease_max other than the size": "registry needs", "gen 0": "generation 0"}


def test_attach_refuses_crafted_lease_fields(name):
    shm = Path(f"/dev/shm/{name}")
    with SharedPool.create(name, "1MiB", max_leases=8) as p:
        a = p.zeros(N)
        pickle.dumps(a)  # a lease in flight, slot 0
        good = shm.read_bytes()
        h = Header.unpack(good, len(good), b"MPSHARED", name)
        lt = _lease_table(good, h)
        slot0 = lt  # tag, deadline, entry, gen, pid, next
        assert struct.unpack_from("<Q", good, slot0)[0] == _block_of(a).tag
        del a

    def u32(off, v):
        return ("<I", off, v)

    def u64(off, v):
        return ("<Q", off, v)
    L = h.lock_off
    cases = {
        "lease_max 0": [u32(L + LEASE_MAX, 0)],
        "lease_max other than the size": [u32(L + LEASE_MAX, 9)],
        "more leases than slots": [u32(L + LEASES, 9)],
        "leases miscounted": [u32(L + LEASES, 2)],
        "timeout 0": [u64(L + LEASE_TIMEOUT, 0)],
        "free list beyond the table": [u32(L + LEASE_FREE, 8)],
        "free list through a used slot": [u32(L + LEASE_FREE, 0)],
        "earliest deadline above a lease's": [u64(L + LEASE_DUE, 2**63)],
        "tag of no entry": [u64(slot0, 12345)],
        "entry out of range": [u32(slot0 + 16, 1 << 20)],
        "entry not in use": [u32(slot0 + 16, 5)],
        "gen 0": [u32(slot0 + 20, 0)],
        "deadline beyond now + timeout": [u64(slot0 + 8, 2**62)],
        "a free slot made used": [u64(slot0 + 32, struct.unpack_from("<Q", good, slot0)[0])],
    }
    for label, edits in cases.items():
        data = bytearray(good)
        for fmt, off, v in edits:
            struct.pack_into(fmt, data, off, v)
        shm.write_bytes(bytes(data))
        with pytest.raises(mempool.CorruptionError, match=MATCH.get(label, "lease")):
            SharedPool.attach(name)
            pytest.fail(f"{label}: attached")
    shm.write_bytes(good)
    with SharedPool.attach(name) as q:  # the untouched bytes attach; the lease is adoptable
        assert q.shared_stats().leases == 1
        q.check()


# ---- recovery after a death under the lock -------------------------------------------------
@needs_syscall_names
def test_the_repair_after_a_dead_lock_owner_counts_leases(name):
    # a dead lock owner left a reference count that its holders do not explain; the
    # repair recounts it from the holders *and the leases*: the handle in flight
    # still unpickles, and everything goes back after it
    ctx = mp.get_context("spawn")
    shm = Path(f"/dev/shm/{name}")
    with SharedPool.create(name, "1MiB") as p:
        a = p.zeros(N)
        h = pickle.dumps(a)
        entry = 0  # the first allocation's entry
        del a  # only the lease holds the range: refs 1, no owner reference
        data = shm.read_bytes()
        hdr = Header.unpack(data, len(data), b"MPSHARED", name)
        bits_max, = struct.unpack_from("<I", data, hdr.lock_off + CTL - 12)
        state_at = hdr.lock_off + CTL + (((4 << bits_max) + 63) & ~63) + entry * 64 + 24
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=W.hold_lock, args=(name, 0, child))
        proc.start()
        msg, pid, _ = parent.recv()
        assert msg == "holding"
        state = struct.unpack_from("<Q", data, state_at)[0]
        assert state & 0x7FFFFFFF == 1
        with open(shm, "r+b") as f:  # as if the owner died in the middle of a take
            f.seek(state_at)
            f.write(struct.pack("<Q", (state & ~0x7FFFFFFF) | 7))
        os.kill(pid, signal.SIGKILL)
        proc.join(30)
        assert len(p) == 1  # recovered: the range kept by its lease
        st = p.shared_stats()
        assert st.recoveries == 1 and st.repaired == 1 and st.leases == 1
        b = pickle.loads(h)
        assert is_view_of(b, p)
        del b
        settled(p)


@pytest.mark.parametrize("dtype, match", [
    ("O", "Python objects"), ([("a", "<f8"), ("b", "O")], "Python objects"),
    ("not a dtype", "names no dtype"), (3.5, "names no dtype"),
])
def test_a_crafted_array_handle_naming_no_plain_dtype_is_refused(name, dtype, match):
    # an object dtype over the pool's bytes would read floats as pointers (a crash on
    # the first element); the handle is refused before any reference is taken
    sp = SharedPool.create(name, "1MiB")
    a = sp.zeros(4)
    fn, args = a.__reduce__()
    crafted = args[:5] + (dtype,) + args[6:]
    with pytest.raises(mempool.CorruptionError, match=match):
        fn(*crafted)
    blk = _block_of(a)
    assert sp.shared_stats().entries == 1 and blk.live
    real = fn(*args)  # the real handle adopts the lease __reduce__ took
    assert (real == 0).all() and _block_of(real).offset == blk.offset
    del a, blk, real
    assert sp.used == 0
    sp.check()
    sp.close()
    sp.unlink()


@pytest.mark.parametrize("field", [2, 3])  # the offset, the tag
@pytest.mark.parametrize("delta", [2**64, 2**65 + 7])
def test_a_crafted_handle_beyond_64_bits_does_not_wrap(name, field, delta):
    # offset 2**64 + o must not name offset o (nor tag 2**64 + t tag t): NotAllocated
    sp = SharedPool.create(name, "1MiB")
    b = sp.alloc(64)
    fn, args = b.__reduce__()
    crafted = list(args)
    crafted[field] += delta
    with pytest.raises(mempool.NotAllocated):
        fn(*crafted)
    crafted[field] = -1
    with pytest.raises(ValueError, match=">= 0"):
        fn(*crafted)
    c = fn(*args)  # the real handle still works, once
    assert c.offset == b.offset and c.live
    del c
    b.free()
    assert sp.used == 0
    sp.close()
    sp.unlink()
