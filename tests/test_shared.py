"""SharedPool across real processes: spawn and fork, pickled handles, a lock owner
killed with SIGKILL, reclaim, and refused segments."""

import dataclasses
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
from conftest import SLOW
from helpers import needs_syscall_names

import mempool
from mempool import SharedPool


def test_create_attach_unlink(name):
    p = SharedPool.create(name, "1MiB", "bestfit")
    assert Path(f"/dev/shm/{name}").exists()
    assert oct(os.stat(f"/dev/shm/{name}").st_mode & 0o777) == "0o600"
    q = SharedPool.attach(name)
    b = p.alloc(100)
    memoryview(b)[:3] = b"abc"
    assert bytes(q.block_at(b.offset))[:3] == b"abc"  # the same bytes through q
    assert q.stats().live == 1 and q.segment_id == p.segment_id
    with pytest.raises(FileExistsError):
        SharedPool.create(name, "1MiB")
    q.close()
    del b
    p.unlink()
    assert not Path(f"/dev/shm/{name}").exists()
    assert p.alloc(10).size == 10  # the mapping stays usable after unlink
    p.close()
    with pytest.raises(FileNotFoundError):
        SharedPool.attach(name)


def test_constructor_and_bad_arguments(name):
    with pytest.raises(TypeError, match="create"):
        SharedPool(name, 4096)
    for bad in ("", "a/b", ".hidden", "x" * 300, "sp ace"):
        with pytest.raises(ValueError, match="name"):
            SharedPool.create(bad, 4096)
    with pytest.raises(TypeError):
        SharedPool.create(42, 4096)
    with pytest.raises(ValueError):
        SharedPool.create(name, 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        SharedPool.create(name, 4096, "nosuch")
    with pytest.raises(ValueError, match="max_entries"):
        SharedPool.create(name, 4096, max_entries=0)
    assert not Path(f"/dev/shm/{name}").exists()  # nothing left behind by a failed create


def test_strategy_is_a_name(name):
    # the strategy object is only used under the lock, inside the pool's methods
    with SharedPool.create(name, 65536, "bestfit") as p:
        assert p.strategy == "bestfit" and isinstance(p.strategy, str)


def test_slab_items_are_not_rounded_up(name):
    # the shared cache rounds small requests up to 16 bytes; a Slab's items are fixed
    # (40 bytes, aligned to 8): its requests go to it as asked, and its own free list
    # does the reuse
    with SharedPool.create(name, "1MiB", "slab", item_size=40) as p:
        a, b = p.alloc(40), p.alloc(8)
        assert (a.offset, b.offset, a.size, b.size) == (0, 40, 40, 8)
        with pytest.raises(mempool.OutOfSpace, match="larger than the item size 40"):
            p.alloc(41)
        with pytest.raises(mempool.OutOfSpace, match="align 16 is above the item alignment 8"):
            p.alloc(40, align=16)
        a.free()
        c = p.alloc(24)
        assert c.offset == 0  # LIFO: a's item
        del c
        assert p.stats().live == 1  # c's item is back in the slab, not in a cache
        assert p.shared_stats().cached == 0
        p.check()
    with SharedPool.create(name + "-8", "64KiB", "slab", item_size=8) as p:
        keep = [p.alloc(8) for _ in range(3)]
        assert [k.offset for k in keep] == [0, 8, 16]
        del keep
        p.unlink()


def test_workers_churn_spawn(name):
    rounds = 3000 if SLOW else 400
    with SharedPool.create(name, "8MiB") as p:
        ctx = mp.get_context("spawn")
        with ctx.Pool(3) as workers:
            results = workers.starmap(W.churn, [(name, rounds, s) for s in range(3)])
        assert all(a > 0 for a, _ in results)
        p.check()
        assert p.stats().live == 0 and p.stats().used == 0  # no block lost
        assert p.shared_stats().entries == 0


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_child_that_exits_gives_its_cache_back(name, method):
    # A child's freed ranges wait in its cache for its next allocations; when it ends
    # normally (multiprocessing ends a child with os._exit() after its finalizers, and a
    # forked child starts with the parent's finalizers cleared), they go back: nothing
    # stays allocated for a process that is gone, with no reclaim()
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        pr = ctx.Process(target=W.free_and_leave, args=(name, 40))
        pr.start()
        pr.join(60)
        assert pr.exitcode == 0
        assert p.used == 0 and len(p) == 0 and p.shared_stats().entries == 0
        with ctx.Pool(2) as workers:  # pool workers too, ended by close/join
            pids = workers.starmap(W.free_and_leave, [(name, 30)] * 4)
            workers.close()
            workers.join()
        assert len(set(pids)) >= 1
        assert p.used == 0 and len(p) == 0
        p.check()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] == "Z"
    except OSError:
        return False


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reclaim_with_no_pid_takes_every_process_that_is_gone(name, method):
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        p.named["kept"] = np.arange(10.0)               # a name: no process's
        n0, u0 = len(p), p.used
        ready, stop = ctx.Event(), ctx.Event()
        alive = ctx.Process(target=W.hold_and_wait, args=(name, ready, stop))
        alive.start()
        assert ready.wait(60)
        dead = ctx.Process(target=W.hold_and_die, args=(name,))
        dead.start()
        deadline = time.monotonic() + 60
        while mempool.shared._alive(dead.pid):          # its threads end one by one
            # not dead.exitcode: that polls with waitpid and would reap the zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _zombie(dead.pid)                        # killed, not reaped yet: gone
        assert p.used == u0 + 3 * 4096 + 10 * 64 + 3000 and len(p) == n0 + 3 + 10 + 2
        assert p.reclaim() == 13                        # 3 blocks + 10 cached ranges
        assert p.used == u0 + 3000 and len(p) == n0 + 2  # the live process's are its own
        assert p.reclaim() == 0                          # nothing left of the dead
        dead.join(30)
        stop.set()
        alive.join(60)
        assert alive.exitcode == 0 and dead.exitcode == -signal.SIGKILL
        assert len(p) == n0 and p.used == u0 and list(p.named) == ["kept"]
        assert (p.named["kept"] == np.arange(10.0)).all()
        p.check()
        with pytest.raises(ValueError, match="force needs a pid"):
            p.reclaim(force=True)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="SYS_exit is 60 on x86-64")
def test_reclaim_leaves_a_process_whose_main_thread_ended(name):
    # its /proc state reads Z while another thread runs: alive (its task list says so)
    ctx = mp.get_context("fork")
    with SharedPool.create(name, "1MiB") as p:
        ready = ctx.Event()
        pr = ctx.Process(target=W.leader_exits, args=(name, ready))
        pr.start()
        try:
            assert ready.wait(60)
            deadline = time.monotonic() + 60
            while not _zombie(pr.pid):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert len(os.listdir(f"/proc/{pr.pid}/task")) == 2
            assert p.reclaim() == 0 and p.used == 4096
            with pytest.raises(ValueError, match="alive"):
                p.reclaim(pr.pid)
        finally:
            os.kill(pr.pid, signal.SIGKILL)
            pr.join(30)
        assert p.reclaim() == 1 and p.used == 0
        p.check()


def test_reclaim_refuses_where_the_registrys_pids_are_not_its_own(name):
    import mmap
    from mempool._segment import Header
    with SharedPool.create(name, "1MiB") as p:
        b = p.alloc(4096)
        with open(f"/dev/shm/{name}", "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
            h = Header.unpack(m, len(m), b"MPSHARED", name)
            at = h.lock_off + 2240 + 40  # mp_shared_ctl_t.pidns, after the lease counters
            assert struct.unpack_from("<Q", m, at)[0] == os.stat("/proc/self/ns/pid").st_ino
            struct.pack_into("<Q", m, at, 0)  # as an older segment has it
            with pytest.raises(ValueError, match="older segment"):
                p.reclaim()
            struct.pack_into("<Q", m, at, os.stat("/proc/self/ns/pid").st_ino + 1)
            with pytest.raises(ValueError, match="not in the pid namespace"):
                p.reclaim()
            m.close()
        assert p.used == 4096 and b.size == 4096  # nothing changed
        with pytest.raises(ValueError, match="alive"):
            p.reclaim(os.getpid())
        del b
        # a process in a pid namespace of its own (where unshare can make one)
        code = ("import mempool, sys; p = mempool.SharedPool.attach(sys.argv[1])\n"
                "try:\n    p.reclaim()\nexcept ValueError as e:\n    print(e)\n")
        try:
            r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                                "-c", code, name], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                                   os.path.abspath(mempool.__file__)))})
        except FileNotFoundError:
            pytest.skip("no unshare")
        if r.returncode != 0 and "Operation not permitted" in r.stderr:
            pytest.skip("unshare --pid is not permitted here")
        assert r.returncode == 0, r.stderr
        assert "not in the pid namespace" in r.stdout


def test_reclaim_of_a_dead_borrower_skips_a_crafted_pinned_slot(name):
    # five forked borrowers of one block: the fourth and fifth hold pinned lease slots;
    # one slot's entry index is then written far out of range and its process killed:
    # reclaim() leaves that slot (check() names it) instead of reading past the registry
    import mmap
    from mempool._segment import Header
    with SharedPool.create(name, "1MiB") as p:
        b = p.alloc(256)
        kids = []
        try:
            for _ in range(5):
                h = pickle.dumps(b)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover (the child)
                    try:
                        v = pickle.loads(h)
                        os.write(w, b"x")
                        time.sleep(60)
                        del v
                    finally:
                        os._exit(0)
                os.close(w)
                assert os.read(r, 1) == b"x"
                os.close(r)
                kids.append(pid)
            with open(f"/dev/shm/{name}", "r+b") as f:
                m = mmap.mmap(f.fileno(), 0)
                lo = Header.unpack(m, len(m), b"MPSHARED", name).lock_off
                max_entries, = struct.unpack_from("<I", m, lo + 8)
                lease_max, = struct.unpack_from("<I", m, lo + 2240)
                bits_max, = struct.unpack_from("<I", m, lo + 2292)  # the index's reserve
                # mp_shared_ctl_t (2,304 bytes), the index, the entries, then the leases
                table = lo + 2304 + ((4 << bits_max) + 63) // 64 * 64 + 64 * max_entries
                pinned = [at for at in range(table, table + 32 * lease_max, 32)
                          if struct.unpack_from("<QQ", m, at) == (b.tag, 2**64 - 1)]
                assert len(pinned) == 2  # the fourth and fifth borrowers
                victim = struct.unpack_from("<I", m, pinned[0] + 24)[0]
                assert victim in kids
                struct.pack_into("<I", m, pinned[0] + 16, 0x7FFFFF00)  # its entry: out of range
                m.close()
            os.kill(victim, signal.SIGKILL)
            os.waitpid(victim, 0)
            kids.remove(victim)
            assert p.reclaim() == 0 and len(p) == 1
            with pytest.raises(mempool.CorruptionError, match="lease"):
                p.check()
        finally:
            for pid in kids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        del b


def test_reclaim_after_a_with_block_terminated_the_workers(name):
    # `with Pool() as w:` terminate()s its workers on leaving: what they cached may
    # stay under their pids; reclaim() with no pid gives it back
    ctx = mp.get_context("fork")
    with SharedPool.create(name, "4MiB") as p:
        with ctx.Pool(2) as workers:
            pids = workers.starmap(W.free_and_leave, [(name, 30)] * 4)
        assert pids
        deadline = time.monotonic() + 60
        while any(mempool.shared._alive(pid) for pid in set(pids)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        p.reclaim()
        assert p.used == 0 and len(p) == 0
        p.check()


def test_workers_churn_fork(name):
    with SharedPool.create(name, "4MiB") as p:
        keep = p.alloc(64)
        memoryview(keep)[:4] = b"KEEP"
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=W.churn, args=(name, 300, s)) for s in range(2)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join(60)
            assert pr.exitcode == 0
        # a forked child inherits `keep`; when its copy is collected nothing is freed
        child = ctx.Process(target=lambda: None)
        child.start()
        child.join(30)
        assert bytes(keep)[:4] == b"KEEP" and p.stats().live == 1
        del keep
        p.check()
        assert p.stats().live == 0


def test_block_handle_round_trip_and_refcounts(name):
    with SharedPool.create(name, "1MiB") as p:
        b = p.alloc(100)
        memoryview(b)[:5] = b"hello"
        h = pickle.dumps(b)
        assert len(h) < 120
        c = pickle.loads(h)
        assert c is not b and c.offset == b.offset and c.tag == b.tag and bytes(c)[:5] == b"hello"
        b.free()  # c still holds a reference: the range stays
        assert p.stats().live == 1 and bytes(c)[:5] == b"hello"
        del c
        assert p.stats().live == 0


def test_stale_handles_are_refused(name):
    with SharedPool.create(name, "1MiB", "bestfit") as p:
        b = p.alloc(100)
        h = pickle.dumps(b)
        pickle.loads(h).free()  # its lease adopted and given back: h holds nothing now
        off = b.offset
        b.free()
        with pytest.raises(mempool.NotAllocated, match="stale"):
            pickle.loads(h)  # freed
        again = p.alloc(100)
        assert again.offset == off  # the same range, reused
        with pytest.raises(mempool.NotAllocated, match="stale"):
            pickle.loads(h)  # reused: another tag
        del again
    os.unlink(f"/dev/shm/{name}")
    with SharedPool.create(name, "1MiB") as p2:
        p2.alloc(100)
        with pytest.raises(mempool.NotAllocated, match="created anew"):
            pickle.loads(h)


def test_arrays_pass_to_spawned_workers_without_copies(name):
    with SharedPool.create(name, "4MiB") as p:
        a = p.zeros(1000)
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
            back = ex.submit(W.touch, a).result()
            assert a[0] == 1 and a[-1] == 2  # the worker wrote our memory
            assert back.ctypes.data == a.ctypes.data  # and its result is our array
            assert ex.submit(W.add_one, a[10:20]).result() == 10.0
            assert a[10:20].tolist() == [1.0] * 10 and a[9] == 0
        assert isinstance(a, mempool.SharedArray)
        del a, back
        assert p.stats().live == 0


def test_multiprocessing_pool_map_with_views(name):
    with SharedPool.create(name, "4MiB") as p:
        a = p.zeros((4, 100))
        with mp.get_context("spawn").Pool(2) as workers:
            sums = workers.map(W.add_one, [a[k] for k in range(4)])
        assert sums == [100.0] * 4 and a.sum() == 400
        del a


def test_plain_results_pickle_by_value(name):
    with SharedPool.create(name, 65536) as p:
        a = p.zeros(10)
        b = a + 1  # memory of its own: a plain ndarray
        assert type(b) is np.ndarray
        assert pickle.loads(pickle.dumps(b)).tolist() == [1.0] * 10
        with pytest.raises(TypeError, match="private Pool"):
            pickle.dumps(mempool.Pool(4096).alloc(10))
        del a


def test_a_pool_pickles_to_its_name(name):
    with SharedPool.create(name, 65536, "bestfit") as p:
        h = pickle.dumps(p)
        assert pickle.loads(h) is p  # this process's open attachment
        code = f"""
            import pickle, sys
            q = pickle.loads({h!r})
            print(q.name, q.capacity, q.strategy, q.segment_id)
        """
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [name, "65536", "bestfit", str(p.segment_id)]
        p.unlink()
    with SharedPool.create(name, 65536):  # the name made anew: the old pickle is stale
        with pytest.raises(mempool.NotAllocated, match="stale"):
            pickle.loads(h)


def test_realloc_with_other_handles_refused(name):
    with SharedPool.create(name, 65536) as p:
        b = p.alloc(100)
        c = pickle.loads(pickle.dumps(b))
        with pytest.raises(BufferError, match="other handle"):
            p.realloc(b, 200)
        del c
        assert p.realloc(b, 200).size == 200
        p.check()


@needs_syscall_names
def test_lock_owner_killed_does_not_wedge_and_blocks_are_reclaimed(name):
    rounds = 20 if SLOW else 5
    ctx = mp.get_context("spawn")
    with SharedPool.create(name, "2MiB") as p:
        for k in range(rounds):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=W.hold_lock, args=(name, 3, child))
            proc.start()
            msg, pid, _offsets = parent.recv()
            assert msg == "holding"  # it is asleep inside the lock now
            os.kill(pid, signal.SIGKILL)
            proc.join(30)
            b = p.alloc(10)  # would hang forever on a dead owner without robustness
            st = p.shared_stats()
            assert st.recoveries == k + 1
            assert st.rolled_back == k + 1 and st.rolled_forward == 0  # died inside a call
            assert p.stats().live == 4
            with pytest.raises(ValueError, match="alive"):
                p.reclaim(os.getpid())
            assert p.reclaim(pid) == 3
            assert p.stats().live == 1
            b.free()
            p.check()


def test_reclaim_keeps_ranges_other_processes_hold(name):
    with SharedPool.create(name, 65536) as p:
        code = f"""
            import os, pickle, sys, mempool
            p = mempool.SharedPool.attach({name!r})
            b = p.alloc(100)
            sys.stdout.buffer.write(pickle.dumps((os.getpid(), b)))
            sys.stdout.flush()
            os._exit(0)   # dies without freeing
        """
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
        assert r.returncode == 0, r.stderr
        pid, mine = pickle.loads(r.stdout)  # a handle of ours: two references now
        assert p.stats().live == 1
        assert p.reclaim(pid) == 0  # the dead owner's reference is released, ours stays
        assert p.stats().live == 1 and mine.live
        del mine
        assert p.stats().live == 0
        p.check()


def test_a_fourth_borrower_killed_is_reclaimed_like_the_first(name, tmp_path):
    # an entry names three borrowing processes; a fourth's reference is a pinned slot of
    # the lease table under its pid (it was counted under no pid: killed, its range
    # stayed live until the segment went)
    go = tmp_path / "go"
    with SharedPool.create(name, 65536) as p:
        b = p.alloc(100)
        code = f"""
            import os, pickle, sys, time, mempool
            p = mempool.SharedPool.attach({name!r})
            h = pickle.loads(sys.stdin.buffer.read())   # borrows a reference
            assert h.live and h.offset == {b.offset}
            print(os.getpid(), flush=True)
            if sys.argv[1:] == ["release"]:            # gives it back alive, once told
                end = time.monotonic() + 60
                while not os.path.exists({str(go)!r}) and time.monotonic() < end:
                    time.sleep(0.01)
                del h
                print("released", flush=True)
            time.sleep(120)
        """
        kids, pids = [], []
        try:
            for j in range(6):  # one at a time: the first three are the holders
                k = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)]
                                     + (["release"] if j in (3, 5) else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                k.stdin.write(pickle.dumps(b))
                k.stdin.close()
                pids.append(int(k.stdout.readline()))
                kids.append(k)
            # the first pinned slot (the chain's last) and the last (its first) go back
            go.touch()
            assert kids[3].stdout.readline() == b"released\n"
            assert kids[5].stdout.readline() == b"released\n"
            p.check()  # refs == owner + holders + pinned slots, and the chain holds the rest
            assert p.shared_stats().leases == 0  # the pinned slots are not in flight
            for k in kids:
                k.kill()
                k.wait()
            assert p.stats().live == 1
            for pid in reversed(pids):  # the pinned ones first, then the holders
                assert p.reclaim(pid) == 0  # one reference each; ours keeps the range
            assert b.live and p.stats().live == 1
            p.check()
            del b
            assert p.stats().live == 0 and p.used == 0
            p.check()
        finally:
            for k in kids:
                k.kill()
                k.wait()


def test_pinned_borrowers_leave_room_for_handles_in_flight(name):
    # pinned slots never expire: at most half the lease table may be pinned (an attack
    # filled a table of two with two pins, and pickling any handle raised OutOfSpace)
    with SharedPool.create(name, 65536, max_leases=2) as p:
        b = p.alloc(100)
        code = f"""
            import pickle, sys, time, mempool
            p = mempool.SharedPool.attach({name!r})
            h = pickle.loads(sys.stdin.buffer.read())
            print("ok", flush=True)
            time.sleep(120)
        """
        kids = []
        try:
            for _ in range(5):  # three holders, one pinned slot, one under no pid
                k = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                k.stdin.write(pickle.dumps(b))
                k.stdin.close()
                assert k.stdout.readline() == b"ok\n"
                kids.append(k)
            c = p.alloc(10)
            data = pickle.dumps(c)          # a slot is left for it
            assert p.shared_stats().leases == 1
            d = pickle.loads(data)          # adopted: the slot is free again
            assert d.offset == c.offset and p.shared_stats().leases == 0
            p.check()
        finally:
            for k in kids:
                k.kill()
                k.wait()


def test_attach_checks_while_other_processes_allocate(name):
    # attach's check() holds the lock but owners reuse their cached ranges without it,
    # stamping a tag reserved after check() read the tag counter: before, that was
    # "registry entry N: bad tag or state" in a few attaches of a second
    # (a debug build checks the whole registry after each of the n allocations: fewer)
    n = 2_000 if mempool._mempool.DEBUG_BUILD else 150_000 if SLOW else 40_000
    pool = SharedPool.create(name, 256 << 20, "tlsf", max_blocks=4 * n + 1024,
                             max_entries=n + 4096)
    rng = np.random.default_rng(13)
    blocks = [pool.alloc(int(s)) for s in rng.integers(16, 4097, n)]
    ctx = mp.get_context("fork")
    stop, counter = ctx.Event(), ctx.Value("q", 0)
    procs = [ctx.Process(target=W.cache_churn, args=(name, stop, counter)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 60
        while counter.value < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        attaches, end = 0, time.monotonic() + (20 if SLOW else 3)
        while time.monotonic() < end or attaches < 5:
            q = SharedPool.attach(name)  # check() inside
            q.check()
            q.close()
            attaches += 1
    finally:
        stop.set()
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0, 0] and counter.value >= 1000
    del blocks
    pool.check()
    assert pool.used == 0
    pool.close()


def test_attach_refuses_random_truncated_and_foreign_segments(name):
    shm = Path(f"/dev/shm/{name}")
    shm.write_bytes(os.urandom(1 << 16))
    with pytest.raises(mempool.CorruptionError, match="not a mempool segment"):
        SharedPool.attach(name)
    shm.write_bytes(b"")
    with pytest.raises(mempool.CorruptionError, match="empty"):  # malformed, as any other
        SharedPool.attach(name)
    shm.write_bytes(b"\x00" * 100)
    with pytest.raises(mempool.CorruptionError, match="too short"):
        SharedPool.attach(name)
    shm.unlink()
    with SharedPool.create(name, "1MiB") as p:
        p.alloc(1000)
        good = shm.read_bytes()
    for _label, blob in {
        "truncated": good[: len(good) // 2],
        "header": good[:30] + b"\xff" + good[31:],
        "state": good[:4096] + b"\x00" * 64 + good[4160:],
        "foreign": b"MEMPOOL\0" + good[8:],
    }.items():
        shm.write_bytes(blob)
        with pytest.raises(mempool.CorruptionError):
            SharedPool.attach(name)


def test_attach_refuses_damaged_registry(name):
    shm = Path(f"/dev/shm/{name}")
    with SharedPool.create(name, "1MiB") as p:
        keep = p.alloc(1000)
        from mempool._segment import Header

        h = Header.unpack(shm.read_bytes(), shm.stat().st_size, b"MPSHARED", name)
        del keep
    data = bytearray(shm.read_bytes())
    data[h.lock_off] ^= 0xFF  # the lock area's magic
    shm.write_bytes(bytes(data))
    with pytest.raises(mempool.CorruptionError, match="lock area"):
        SharedPool.attach(name)


def _mappings(path) -> int:
    with open("/proc/self/maps") as f:
        return sum(line.rstrip("\n").endswith(" " + str(path)) for line in f)


def test_attach_refusal_leaves_nothing_mapped(name):
    # a valid header naming another strategy than the state's (refused before the pool
    # exists), then a damaged registry (refused after): the segment is unmapped at once
    import dataclasses

    from mempool._segment import Header

    shm = Path(f"/dev/shm/{name}")
    with SharedPool.create(name, "1MiB", "tlsf") as p:
        p.alloc(1000)
    good = shm.read_bytes()
    h = Header.unpack(good, len(good), b"MPSHARED", name)
    shm.write_bytes(dataclasses.replace(h, strategy="bestfit").pack() + good[4096:])
    assert _mappings(shm) == 0
    for _ in range(2):
        with pytest.raises(mempool.CorruptionError, match="header and state disagree") as ei:
            SharedPool.attach(name)
        assert _mappings(shm) == 0, ei  # while the error (its frames) is alive: not by gc
    data = bytearray(good)
    data[h.lock_off] ^= 0xFF
    shm.write_bytes(bytes(data))
    with pytest.raises(mempool.CorruptionError, match="lock area") as ei:
        SharedPool.attach(name)
    assert _mappings(shm) == 0, ei
    shm.write_bytes(good)
    with SharedPool.attach(name) as q:
        q.check()
    assert _mappings(shm) == 0


def test_permissions_follow_mode(name):
    SharedPool.create(name, 65536, mode=0o600).close()

    def body():
        os.setgid(65534)
        os.setuid(65534)
        try:
            SharedPool.attach(name)
        except PermissionError:
            os._exit(0)
        os._exit(1)

    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            body()
        finally:
            os._exit(2)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_attaching_process_never_unlinks_or_warns(name):
    SharedPool.create(name, 65536).close()
    code = f"""
        import mempool
        p = mempool.SharedPool.attach({name!r})
        b = p.alloc(10)
        del b
        p.close()
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stderr == ""
    assert Path(f"/dev/shm/{name}").exists()


def test_unlink_on_exit(name):
    code = f"""
        import mempool
        p = mempool.SharedPool.create({name!r}, 65536, unlink_on_exit=True)
        a = p.zeros(10)   # still alive at exit: unlinking must not need a close
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert not Path(f"/dev/shm/{name}").exists()


def test_use_after_close(name):
    p = SharedPool.create(name, 65536)
    b = p.alloc(10)
    keep = p.alloc(20)
    memoryview(keep)[:2] = b"ok"
    h = pickle.dumps(keep)
    q = SharedPool.attach(name)  # another attachment holds a handle of `keep`
    kept = q._handle(keep.offset, keep.tag)
    p.close()  # p's handles give their references back: b's range is freed, keep's stays
    for fn in (lambda: p.alloc(1), lambda: p.stats(), lambda: p.check(), lambda: len(p),
               lambda: p.reclaim(1, force=True), lambda: b.free(), lambda: bytes(b)):
        with pytest.raises(mempool.PoolClosed):
            fn()
    assert q.stats().live == 1 and bytes(kept)[:2] == b"ok"
    c = pickle.loads(h)  # attaches through q, the open attachment
    assert bytes(c)[:2] == b"ok" and c.pool is q
    del c, kept
    assert q.stats().live == 0
    q.close()
    with pytest.raises(mempool.NotAllocated, match="stale"):
        pickle.loads(h)  # attaches anew on first use; the range is gone


def test_the_shared_pool_is_a_type_of_its_own(name):
    # the shared half lives in SharedPoolCore, a subtype of PoolCore: a private pool
    # carries none of its methods, and a shared pool is both
    private = mempool.Pool(65536)
    for attr in ("_check_shared", "_locked", "_reclaim", "_flush_cache", "_hold_lock",
                 "_shared_stats", "_handle", "_set_shared"):
        assert not hasattr(private, attr), attr
    private.close()
    with SharedPool.create(name, 65536) as p:
        assert isinstance(p, mempool._mempool.SharedPoolCore)
        assert isinstance(p, mempool.Pool) and isinstance(p, mempool._mempool.PoolCore)
    core = mempool._mempool.SharedPoolCore.__new__(mempool._mempool.SharedPoolCore)
    with pytest.raises(mempool.PoolClosed, match="not initialised"):
        core.alloc(1)  # before __init__: no state to reach
    with pytest.raises(TypeError):
        core.__init__()


FIGURE_OPTIONS = {"tlsf": {}, "bestfit": {}, "buddy": {"min_block": 256}, "heap": {},
                  "bitmap": {"block_size": 64}, "slab": {"item_size": 4096}, "bump": {}}


def figures(p):
    # metadata aside: a shared pool's state has the larger budget of a state that
    # cannot grow (strategies.make_fixed), a private pool's the small default
    return (dataclasses.replace(p.stats(), metadata=0), p.segments(), p.used, p.available,
            p.largest_free, len(p))


@pytest.mark.parametrize("strategy", sorted(FIGURE_OPTIONS))
def test_figures_equal_a_private_pools(name, strategy):
    # a shared pool reads each figure under its lock into C (not a copy of the whole
    # state): what it reports is what a private pool over the same calls reports,
    # ranges this process freed into its cache included (they are given back first)
    opts = FIGURE_OPTIONS[strategy]
    cap = 1 << 20
    sizes = [16, 48, 4096, 512, 16000, 32, 2048, 64, 96, 4096]  # multiples of 16: the
    if strategy == "slab":  # shared cache's rounding does not show
        sizes = [min(s, 4096) for s in sizes]
    private = mempool.Pool(cap, strategy, **opts)
    with SharedPool.create(name, cap, strategy, **opts) as shared:
        pools = (private, shared)
        blocks = {p: [p.alloc(s) for s in sizes] for p in pools}
        assert figures(shared) == figures(private)
        for p in pools:
            for k in (9, 7, 5, 3, 1):  # from the top: Bump reclaims the last range only
                blocks[p].pop(k).free()
        cached = shared.shared_stats().cached
        assert cached == (0 if strategy == "slab" else 4)  # 64, 32, 512, 48 wait there
        assert figures(shared) == figures(private)
        assert shared.shared_stats().cached == 0  # given back by the read
        for p in pools:
            while blocks[p]:
                blocks[p].pop().free()
        assert figures(shared) == figures(private)
        shared.check()
    private.close()


def test_a_figure_read_does_not_copy_the_state(name):
    # a 1 GiB pool's strategy state is tens of MiB; a figure read allocates a few
    # hundred bytes (before: a copy of the whole state, per read)
    import tracemalloc

    with SharedPool.create(name, "1GiB") as p:
        state = p._strategy.state_size
        assert state > 4 << 20 and p.stats().metadata == state
        blocks = [p.alloc(n) for n in (100, 5000, 1 << 20)]
        tracemalloc.start()
        try:
            got = (p.used, p.available, p.largest_free, len(p), p.stats(), p.segments())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 << 10 < state
        assert got[0] == got[4].used == p._strategy.used
        assert got[3] == 3 == sum(allocated for _, _, allocated in got[5])
        del blocks
        assert len(p) == 0


def test_try_alloc_of_a_shared_pool(name):
    # the take hook says "nothing fits" without an exception, the registry full
    # included; anything else raises as alloc does
    with SharedPool.create(name, 65536, max_entries=2) as p:
        a = p.try_alloc(100)
        assert (a.offset, a.size) == (0, 100) and a.tag
        assert p.try_alloc(1 << 17) is None and p.try_alloc(2**64) is None
        b = p.try_alloc(4096, 4096)
        assert b.offset == 4096
        before = (p.stats(), p.segments(), p.shared_stats().entries)
        assert p.try_alloc(16) is None  # two entries live: the registry is full
        with pytest.raises(mempool.OutOfSpace, match="registry is full"):
            p.alloc(16)
        assert (p.stats(), p.segments(), p.shared_stats().entries) == before
        with pytest.raises(ValueError, match="align"):
            p.try_alloc(16, 3)
        memoryview(a)[:2] = b"hi"
        c = pickle.loads(pickle.dumps(a))  # a handle, as alloc's blocks pickle to
        assert c.offset == 0 and bytes(c)[:2] == b"hi"
        del a, b, c
        assert len(p) == 0
        p.check()


def _segment_words(name):
    """(mmap of /dev/shm/name, header) for crafting what a killed call leaves."""
    import mmap

    from mempool._segment import Header
    f = open(f"/dev/shm/{name}", "r+b")
    m = mmap.mmap(f.fileno(), 0)
    f.close()
    return m, Header.unpack(memoryview(m), len(m), b"MPSHARED", name)


JOURNAL_IN_CTL = 192  # the journal's offset in the control block (shared.c)


@pytest.mark.parametrize("strategy", mempool.STRATEGIES)
@pytest.mark.parametrize("phase", [1, 2])
def test_a_call_left_half_done_is_rolled_back_or_forward(name, strategy, phase):
    # what a process killed inside a call leaves: the journal ACTIVE and the state
    # half-written (rolled back from the shadow), or COMMITTED and the shadow
    # half-written (rolled forward from the state)
    opts = {"item_size": 64} if strategy == "slab" else {}
    with SharedPool.create(name, "1MiB", strategy, **opts) as p:
        blocks = [p.alloc(48) for _ in range(20)]
        for k, b in enumerate(blocks):
            memoryview(b)[:1] = bytes([k])
        del blocks[::3]
        p._flush_cache()
        segs, used = p.segments(), p.used
        m, h = _segment_words(name)
        ph = h.lock_off + JOURNAL_IN_CTL + 8
        word = int.from_bytes(m[ph:ph + 8], "little")  # IDLE, the redo log's count above
        assert word & 0xFF == 0 and word >> 8 > 0
        garbage = bytes(range(256)) * (h.state_size // 256 + 1)
        if phase == 1:  # the state half-written by the dead call
            m[h.state_off + 64:h.state_off + h.state_size] = garbage[:h.state_size - 64]
        else:  # the shadow half-written by the dead call's commit
            m[h.shadow_off + 64:h.shadow_off + h.state_size] = garbage[:h.state_size - 64]
        m[ph:ph + 8] = (word | phase).to_bytes(8, "little")  # (the log's entries kept)
        p.check()  # the next lock taker recovers first
        st = p.shared_stats()
        assert (st.rolled_back, st.rolled_forward) == ((1, 0) if phase == 1 else (0, 1))
        assert int.from_bytes(m[ph:ph + 8], "little") == 0
        assert m[h.state_off:h.state_off + h.state_size] == m[h.shadow_off:h.shadow_off + h.state_size]
        m.close()
        assert p.segments() == segs and p.used == used
        assert [bytes(b)[0] for b in blocks] == [k for k in range(20) if k % 3]
        b = p.alloc(48)  # and carries on
        b.free()
        p.check()


def test_unlink_on_exit_is_the_creators_exit_not_a_forked_childs(name):
    # a child made by a plain fork() runs the parent's atexit handlers when it exits
    # normally: it must not remove the name under its parent
    code = textwrap.dedent(f"""
        import os, sys
        from mempool import SharedPool
        sp = SharedPool.create({name!r}, 1 << 20, unlink_on_exit=True)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)                               # atexit runs in the child
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0
        assert os.path.exists("/dev/shm/" + {name!r})
        SharedPool.attach({name!r}).close()
        sp.close()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert not os.path.exists(f"/dev/shm/{name}")    # the creator's exit removed it


def test_unlink_on_exit_leaves_a_segment_made_anew_under_the_name(name):
    # the creator unlinked its pool and another process made a new one with the name:
    # the creator's exit must not remove that one
    code = textwrap.dedent(f"""
        from mempool import SharedPool
        sp = SharedPool.create({name!r}, 1 << 20, unlink_on_exit=True)
        sp.close()
        sp.unlink()
        SharedPool.create({name!r}, 1 << 20).close()   # (another creator, in effect)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    q = SharedPool.attach(name)                       # still there
    q.close()
    q.unlink()


def test_a_worker_takes_handles_of_a_pool_made_anew_under_its_name(name):
    # the worker attached the first pool (to read a handle of it); the name is then
    # unlinked and made anew: handles of the new segment are not stale (they were
    # refused, and under an executor the unpickling error broke the pool of workers)
    from concurrent.futures import ProcessPoolExecutor
    from shared_workers import array_sum
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        p1 = SharedPool.create(name, 1 << 20)
        a = p1.zeros(4)
        a[:] = 1
        assert ex.submit(array_sum, a).result(timeout=60) == 4.0
        del a
        p1.unlink()
        p1.close()
        p2 = SharedPool.create(name, 1 << 20)
        try:
            b = p2.zeros(4)
            b[:] = 2
            assert ex.submit(array_sum, b).result(timeout=60) == 8.0
            stale = pickle.dumps(b)
            del b
        finally:
            p2.unlink()
            p2.close()
    # a handle of a segment no longer under any name: stale (not FileNotFoundError)
    with pytest.raises(mempool.NotAllocated, match="stale handle.*unlinked"):
        pickle.loads(stale)


def test_a_shared_pool_collected_without_close_lets_its_fd_go(name):
    # attach() again replaces the name's pool in this process's registry, and the old
    # one is collected: it kept one fd on the segment for good (and an unlinked
    # segment's memory with it)
    import gc
    path = f"/dev/shm/{name}"

    def fds() -> int:
        n = 0
        for f in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{f}") == path
            except OSError:
                pass
        return n

    pool = SharedPool.create(name, 1 << 20)
    base = fds()
    for _ in range(20):
        q = SharedPool.attach(name)
        del q
    gc.collect()
    mempool.shared._attached.pop(name, None)
    gc.collect()
    assert fds() == base
    pool.unlink()
    pool.close()
    assert fds() == 0


def _handle_of_an_unlinked_pool(name: str) -> bytes:
    """A pickled array of a shared pool made under ``name``, then closed and unlinked."""
    p = SharedPool.create(name, 1 << 20)
    a = p.zeros(3)
    stale = pickle.dumps(a)
    del a
    p.close()
    p.unlink()
    return stale


def test_a_stale_handle_is_refused_without_attaching_the_name_again(name):
    # the segment under the name is another: told from its header, with no attach (an
    # attach checks the whole pool under its lock, and took the name's place here)
    stale = _handle_of_an_unlinked_pool(name)
    p2 = SharedPool.create(name, 1 << 20)
    try:
        for _ in range(3):
            with pytest.raises(mempool.NotAllocated, match="stale handle.*created anew"):
                pickle.loads(stale)
        # (an attach would have taken the name's place in this process)
        assert mempool.shared._attached[name] is p2 and pickle.loads(pickle.dumps(p2)) is p2
    finally:
        p2.close()
        p2.unlink()


def test_a_handle_whose_name_is_a_fifo_now_is_stale_not_a_hang(name):
    # the name's segment is read without blocking: a FIFO under it (anyone may make one
    # in /dev/shm) is no segment, not an open waiting for a writer
    stale = _handle_of_an_unlinked_pool(name)
    os.mkfifo(f"/dev/shm/{name}")
    try:
        with pytest.raises(mempool.NotAllocated, match="stale handle.*unlinked"):
            pickle.loads(stale)
    finally:
        os.unlink(f"/dev/shm/{name}")
