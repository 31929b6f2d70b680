"""A shared pool's block registry is reserved for max_entries and committed as needed
(issue 11): a new segment allocates the pages of 256 entries, and the registry doubles
them (and its index) under the lock when blocks need more, up to max_entries.  Real
processes attached before a growth, real reopen, a real kill in the middle of one."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import shared_workers as W
from conftest import SLOW

import mempool
from mempool import SharedPool

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
MiB = 1 << 20
CTL = 2304  # sizeof(mp_shared_ctl_t)


def index_bytes(entries: int) -> int:
    """The index a registry of `entries` committed entries uses (shared.c: bits_for)."""
    bits = 4
    while (1 << bits) < 2 * entries:
        bits += 1
    return ((4 << bits) + 63) & ~63


def allocated(name: str) -> int:
    return os.stat(f"/dev/shm/{name}").st_blocks * 512


def test_a_default_registry_is_reserved_not_allocated(name):
    with SharedPool.create(name, "64MiB") as p:
        s = p.shared_stats()
        assert (s.max_entries, s.committed_entries, s.max_leases) == (MiB, 256, 16384)
        # the lock area in use: control block, index, 256 entries, the lease table
        assert s.registry_bytes == CTL + index_bytes(256) + 256 * 64 + 16384 * 32 == 545024
        size = os.stat(f"/dev/shm/{name}").st_size
        # 1 Mi entries (64 MiB) and their index (8 MiB) reserved, not allocated
        assert size - allocated(name) >= MiB * 64 + 8 * MiB - 64 * 1024
        # (data, state, shadow, redo log, what the registry uses)
        assert allocated(name) < 64 * MiB + 2 * MiB + 256 * 1024
        assert s.registry_bytes / (64 * MiB) < 0.01


def test_the_registry_doubles_as_blocks_live_and_keeps_what_it_grew(name):
    with SharedPool.create(name, "1MiB") as p:
        before = allocated(name)
        blocks = []
        for i in range(5000):
            b = p.alloc(16)
            W.stamp(b, i)
            blocks.append(b)
            if i == 255:
                assert p.shared_stats().committed_entries == 256  # full, not grown yet
            if i == 256:
                assert p.shared_stats().committed_entries == 512
        s = p.shared_stats()
        assert (s.entries, s.committed_entries, s.max_entries) == (5000, 8192, 16384)
        assert s.registry_bytes == CTL + index_bytes(8192) + 8192 * 64 + 1024 * 32
        # the grown entries and index were allocated in the segment as they were committed
        assert allocated(name) - before >= (8192 - 256) * 64 + index_bytes(8192) - index_bytes(256)
        p.check()
        assert [W.word(b) for b in blocks] == list(range(5000))
        del b, blocks
        assert p.used == 0  # (reading it gives this process's cache back first)
        s = p.shared_stats()
        assert (s.entries, s.committed_entries) == (0, 8192)  # (it never shrinks)
        p.check()
        again = [p.alloc(48) for _ in range(3000)]  # entries freed below the top, reused
        assert p.shared_stats().committed_entries == 8192
        p.check()
        del again


def test_max_entries_is_still_a_cap(name):
    with SharedPool.create(name, "1MiB", max_entries=300) as p:
        blocks = [p.alloc(64) for _ in range(300)]
        s = p.shared_stats()
        assert (s.entries, s.committed_entries) == (300, 300)  # 256, then the rest
        used, n = p.used, len(p)
        with pytest.raises(mempool.OutOfSpace, match=r"registry is full \(max_entries\)"):
            p.alloc(64)
        assert (p.used, len(p), p.shared_stats().entries) == (used, n, 300)
        p.check()
        blocks.pop().free()
        assert p.alloc(64).size == 64  # an entry back: room again
        p.check()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_attached_before_a_growth_use_the_grown_registry(name, method):
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        q, back = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=W.attached_before, args=(name, q, back))
        child.start()
        try:
            assert q.get(timeout=60) == "attached"
            blocks = []
            for _ in range(3000):  # 256 -> 4096 entries while the child is attached
                b = p.alloc(32)
                W.stamp(b, 7_000_000 + b.offset)
                blocks.append(b)
            assert p.shared_stats().committed_entries == 4096
            back.put(pickle.dumps(blocks[-100:]))  # entries beyond the first 256
            ok, mine, committed = q.get(timeout=60)
            assert ok and committed == 8192
            theirs = pickle.loads(mine)
            assert all(W.word(b) == 9_000_000 + b.offset for b in theirs)
            assert p.shared_stats().committed_entries == 8192
            p.check()
            back.put("done")
            child.join(60)
            assert child.exitcode == 0
            del theirs, blocks, b
            p.reclaim()
            assert p.used == 0 and len(p) == 0
            p.check()
        finally:
            if child.is_alive():
                child.kill()


def test_named_arrays_grow_the_registry_and_read_back_in_another_process(name):
    with SharedPool.create(name, "4MiB") as p:
        for i in range(200):  # a name takes 2 entries, and the table one: 400 > 256
            p.named[f"a{i}"] = np.full(10, i, dtype=np.int32)
        assert p.shared_stats().committed_entries == 512
        code = textwrap.dedent(f"""
            import numpy as np
            from mempool import SharedPool
            with SharedPool.attach({name!r}) as p:
                assert len(p.named) == 200
                for i in range(200):
                    assert (p.named[f"a{{i}}"] == np.full(10, i, dtype=np.int32)).all()
                p.check()
            print("ok")
        """)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
        assert r.stdout.strip() == "ok", r.stderr
        p.check()


def test_killed_while_the_registry_grows(name):
    # The child allocates until its 257th block makes the registry grow, and dies there,
    # holding the lock, with the new pages allocated and nothing of the growth written.
    with SharedPool.create(name, "1MiB") as p:
        code = textwrap.dedent(f"""
            from mempool import SharedPool
            p = SharedPool.attach({name!r})
            keep = [p.alloc(16) for _ in range(300)]
            print("not killed")
        """)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": SRC, "MEMPOOL_GROW_FAULT": "registry"},
                           timeout=120)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr)
        p.check()  # the lock taken over, the call rolled back
        s = p.shared_stats()
        assert (s.entries, s.committed_entries, s.recoveries) == (256, 256, 1)
        assert p.reclaim() == 256 and p.used == 0
        blocks = [p.alloc(16) for _ in range(1000)]  # grows as if nothing happened
        assert p.shared_stats().committed_entries == 1024
        p.check()
        del blocks


def test_a_name_that_needs_both_the_state_and_the_registry_to_grow(name):
    # 255 blocks live of 256 committed entries and a state at its budget of 32 nodes:
    # each name then grows both; the state's growth rolls the call back, and the retry
    # grows the registry again (it used to report the registry full at max_entries 4096)
    for n in (254, 255):
        with SharedPool.create(f"{name}-{n}", "1MiB", max_blocks=32, max_entries=4096) as p:
            keep = [p.alloc(16) for _ in range(n)]
            for i in range(40):
                p.named[f"x{i}"] = np.full(4, i, dtype=np.int32)
            assert p.shared_stats().committed_entries == 512
            assert all((p.named[f"x{i}"] == i).all() for i in range(40))
            p.check()
            del keep
            p.unlink()


FULL_SHM = r"""
import os, sys
import numpy as np
import mempool
from mempool import SharedPool

p = SharedPool.create("mpfull", "1MiB", max_entries=2048, max_blocks=20000)
st = os.statvfs("/dev/shm")
with open("/dev/shm/filler", "wb") as f:  # leave 100 KiB: room for a few growths only
    f.write(b"x" * (st.f_bavail * st.f_frsize - 100 * 1024))
blocks = []
try:
    while True:
        blocks.append(p.alloc(16))
except mempool.OutOfSpace as e:
    assert "registry cannot grow: No space left on device" in str(e), e
s = p.shared_stats()
assert s.entries == len(blocks) == s.committed_entries < 2048, s
used = p.used
try:
    p.named["n"] = np.zeros(2, dtype=np.int8)
    raise AssertionError("named put with a full /dev/shm")
except mempool.OutOfSpace as e:
    assert "registry cannot grow: No space left on device" in str(e), e
assert p.used == used and len(p.named) == 0
p.check()
os.unlink("/dev/shm/filler")  # room again: the registry grows on to max_entries
try:
    while True:
        blocks.append(p.alloc(16))
except mempool.OutOfSpace as e:
    assert "registry is full (max_entries)" in str(e), e  # (not the stale reason)
assert p.shared_stats().entries == 2048
p.check()
print("ok")
"""


def _can_mount_a_private_shm() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1M tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_a_private_shm(),
                    reason="needs root and unshare -m (a private tmpfs on /dev/shm)")
def test_a_full_dev_shm_is_out_of_space_never_sigbus(tmp_path):
    script = tmp_path / "full.py"
    script.write_text(FULL_SHM)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs -o size=8M tmpfs /dev/shm && "
                        f"{sys.executable} {script}"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC},
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


def test_an_expired_lease_of_an_unindexed_entry_does_not_hang_attach(name):
    # A crafted segment: the index names no entry, and a lease past its deadline holds a
    # live entry's last reference.  Attach's first lock expires the lease before check()
    # and drops the entry, whose removal from the index used to probe for ever.
    import mmap
    import struct

    from mempool._segment import Header
    from mempool.shared import MAGIC

    SharedPool.create(name, "1MiB").close()
    code = textwrap.dedent(f"""
        import os, pickle
        from mempool import SharedPool
        p = SharedPool.attach({name!r})
        b = p.alloc(64)
        blob = pickle.dumps(b)  # a lease: refs 2
        b.free()                # the lease holds the last reference
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": SRC})
    with open(f"/dev/shm/{name}", "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        c = Header.unpack(memoryview(mm), len(mm), MAGIC, name).lock_off
        bits, max_entries, entries = struct.unpack_from("<III", mm, c + 4)
        leases, = struct.unpack_from("<I", mm, c + CTL - 60)
        bits_max, = struct.unpack_from("<I", mm, c + CTL - 12)
        assert (entries, leases) == (1, 1)
        mm[c + CTL:c + CTL + (4 << bits)] = b"\xff" * (4 << bits)  # every index slot empty
        lease = c + CTL + (((4 << bits_max) + 63) & ~63) + max_entries * 64
        struct.pack_into("<Q", mm, lease + 8, 1)  # its deadline: long past
        struct.pack_into("<Q", mm, c + CTL - 40, 1)  # ctl.lease_due
        mm.flush()
        mm.close()
    attach = textwrap.dedent(f"""
        import mempool
        from mempool import SharedPool
        try:
            with SharedPool.attach({name!r}) as p:
                p.check()
                print("attached", len(p), p.shared_stats().leases)
        except mempool.CorruptionError as e:
            print("CorruptionError")
    """)
    r = subprocess.run([sys.executable, "-c", attach], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    # the lease released its range (the entry dropped, the range freed): a clean pool
    assert r.stdout.strip() in ("attached 0 0", "CorruptionError"), (r.stdout, r.stderr)


def _grow_until_killed(name: str, w: int) -> None:
    p = SharedPool.attach(name)
    os.write(w, b"r")
    keep = []
    for k in range(4000):  # 256 -> 512 -> ... -> 4096 committed entries, then the cap
        try:
            keep.append(p.alloc(16 + 16 * (k % 3)))
        except mempool.OutOfSpace:
            break
    os.write(w, b"d")
    while True:
        time.sleep(1)


@pytest.mark.parametrize("seed", range(40 if SLOW else 6))
def test_processes_killed_while_they_grow_the_registry(name, seed):
    # Real SIGKILLs at random moments of a process growing a fresh registry from 256 to
    # 4096 entries: the next locked call recovers, reclaim gives back what the dead held,
    # and the registry goes on growing from where the dead left it.
    rng = random.Random(seed)
    for k in range(8):
        with SharedPool.create(f"{name}-{seed}-{k}", "1MiB", max_entries=4096) as p:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # (the child never returns to pytest)
                try:
                    os.close(r)
                    _grow_until_killed(f"{name}-{seed}-{k}", w)
                finally:
                    os._exit(1)
            os.close(w)
            assert os.read(r, 1) == b"r"
            time.sleep(rng.uniform(0.0, 0.002))  # (the 4,000 allocations take ~2 ms)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            p.check()  # (the lock taken over and the call rolled back, if it was in one)
            s = p.shared_stats()
            assert s.entries <= s.committed_entries <= 4096
            p.reclaim(pid)
            assert p.used == 0 and len(p) == 0 and p.shared_stats().entries == 0
            p.check()
            mine = [p.alloc(16) for _ in range(3000)]
            assert p.shared_stats().committed_entries == 4096 and len(p) == 3000
            p.check()
            del mine
            p.unlink()
