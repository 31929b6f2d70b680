"""A shared pool's block registry is reserved for max_entries and committed as needed
(issue 11): a new segment allocates the pages of 256 entries, and the registry doubles
them (and its index) under the lock when blocks need more, up to max_entries.  Real
processes attached before a growth, real reopen, a real kill in the middle of one."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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


def stamp(b, v: int) -> None:
    with memoryview(b) as m:
        m[:8] = v.to_bytes(8, "little")


def value(b) -> int:
    with memoryview(b) as m:
        return int.from_bytes(m[:8], "little")


def test_a_default_registry_is_reserved_not_allocated(name):
    with SharedPool.create(name, "64MiB") as p:
        s = p.shared_stats()
        assert (s.max_entries, s.committed_entries, s.max_leases) == (MiB, 256, 16384)
        # the lock area in use: control block, index, 256 entries, the lease table
        assert s.registry_bytes == CTL + index_bytes(256) + 256 * 64 + 16384 * 32 == 545024
        size = os.stat(f"/dev/shm/{name}").st_size
        # 1 Mi entries (64 MiB) and their index (8 MiB) reserved, not allocated
        assert size - allocated(name) >= MiB * 64 + 8 * MiB - 64 * 1024
        assert allocated(name) < 64 * MiB + 2 * MiB
        assert s.registry_bytes / (64 * MiB) < 0.01


def test_the_registry_doubles_as_blocks_live_and_keeps_what_it_grew(name):
    with SharedPool.create(name, "1MiB") as p:
        before = allocated(name)
        blocks = []
        for i in range(5000):
            b = p.alloc(16)
            stamp(b, i)
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
        assert [value(b) for b in blocks] == list(range(5000))
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


def _attached_before(name: str, q, back) -> None:
    """Attach before the parent grows the registry; then read the parent's blocks beyond
    the first 256 entries, allocate 3,000 of its own (growing it further), hand them
    back, and free everything the parent sent once told."""
    p = SharedPool.attach(name)
    q.put("attached")
    theirs = pickle.loads(back.get())
    ok = all(value(b) == 7_000_000 + b.offset for b in theirs)
    mine = []
    for _ in range(3000):
        b = p.alloc(24)
        stamp(b, 9_000_000 + b.offset)
        mine.append(b)
    q.put((ok, pickle.dumps(mine[-100:]), p.shared_stats().committed_entries))
    back.get()
    del theirs, mine
    p.check()
    p.close()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_attached_before_a_growth_use_the_grown_registry(name, method):
    ctx = mp.get_context(method)
    with SharedPool.create(name, "4MiB") as p:
        q, back = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=_attached_before, args=(name, q, back))
        child.start()
        try:
            assert q.get(timeout=60) == "attached"
            blocks = []
            for _ in range(3000):  # 256 -> 4096 entries while the child is attached
                b = p.alloc(32)
                stamp(b, 7_000_000 + b.offset)
                blocks.append(b)
            assert p.shared_stats().committed_entries == 4096
            back.put(pickle.dumps(blocks[-100:]))  # entries beyond the first 256
            ok, mine, committed = q.get(timeout=60)
            assert ok and committed == 8192
            theirs = pickle.loads(mine)
            assert all(value(b) == 9_000_000 + b.offset for b in theirs)
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
