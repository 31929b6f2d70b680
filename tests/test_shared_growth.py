"""A shared pool's state grows (issue 11), as a file pool's does: under the lock, into a
pair past the segment's last one, named by a placement slot; every attached process
follows it when it next takes the lock.  Real processes (spawn and fork), real kills
at each step of a growth (MEMPOOL_GROW_FAULT)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import shared_workers as W

import mempool
from mempool import SharedPool
from mempool._segment import Header, placement
from mempool.shared import MAGIC

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))  # (installed or not)
MiB = 1 << 20


def where(name: str):
    data = open(f"/dev/shm/{name}", "rb").read()
    h = Header.unpack(data, len(data), MAGIC, name)
    return placement(h, data, len(data), name)


def value(b) -> int:
    with memoryview(b) as m:
        return int.from_bytes(m[:8], "little")


def stamp(b) -> None:
    with memoryview(b) as m:
        m[:8] = b.offset.to_bytes(8, "little")


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_another_process_grows_the_state_and_every_process_follows(name, method):
    p = SharedPool.create(name, 1 * MiB, max_blocks=32, max_entries=8192)
    try:
        first = p._strategy.state_size
        mine = [p.alloc(16) for _ in range(20)]
        for b in mine:
            stamp(b)
        ctx = mp.get_context(method)
        q, back = ctx.Queue(), ctx.Queue()
        c = ctx.Process(target=W.grower, args=(name, 3000, q, back))
        c.start()
        try:
            live, size = q.get(timeout=60)
            assert size > first and live == 3000 + 20 + 3  # the name: data, record, table
            # this process follows the grown state at its next locked call
            assert len(p) == live and p._strategy.state_size == size
            assert all(value(b) == b.offset for b in mine)  # the data never moved
            more = [p.alloc(16) for _ in range(2000)]  # and grows it again
            assert p._strategy.state_size > size
            p.check()
            late = SharedPool.attach(name)  # attached after the growth: maps it whole
            assert len(late) == len(p) and late._strategy.state_size == p._strategy.state_size
            late.check()
            late.close()
            back.put("done")
        finally:
            c.join(60)
        assert c.exitcode == 0
        assert len(p) == 2020 + 3  # the child's blocks went with it, its name stayed
        del more
        assert len(p) == 23
        pl = where(name)
        assert pl.gen >= 7 and pl.state_size == p._strategy.state_size
        p.check()
        del mine
    finally:
        p.close()
        p.unlink()


def test_realloc_named_and_numpy_grow_a_full_shared_pool(name):
    with SharedPool.create(name, 1 * MiB, max_blocks=32, max_entries=4096,
                           unlink_on_exit=True) as p:
        blocks = [p.alloc(32) for _ in range(31)]
        assert p._strategy.state_size == 10144
        b = p.realloc(blocks[0], 16)  # its freed tail needs a node: grown first
        assert (b.offset, b.size) == (0, 16) and p._strategy.state_size > 10144
        for k in range(40):
            p.named[f"a{k}"] = np.full(10, float(k))
        assert [p.named[f"a{k}"][3] for k in range(40)] == [float(k) for k in range(40)]
        with p.activate(numpy=True):
            arrays = [np.empty(100) for _ in range(300)]
        assert all(p.address <= a.ctypes.data < p.address + p.capacity for a in arrays)
        p.check()
        del arrays, blocks, b


def test_grow_false_and_fixed_tables_refuse_as_before(name):
    with SharedPool.create(name, 1 * MiB, max_blocks=32, grow=False,
                           unlink_on_exit=True) as p:
        blocks = [p.alloc(32) for _ in range(31)]
        before = (len(p), p.used, where(name))
        with pytest.raises(mempool.OutOfSpace, match="range table is full"):
            p.alloc(32)
        assert (len(p), p.used, where(name)) == before
        p.check()
        del blocks


KILLER = """
import sys
from mempool import SharedPool
p = SharedPool.attach(sys.argv[1])
keep = []
while True:
    keep.append(p.alloc(16))
    print(keep[-1].offset, flush=True)
"""


@pytest.mark.parametrize("step", ["mapped", "grown", "slot-half", "flipped", "retired"])
def test_killed_at_each_step_of_a_growth(name, step):
    p = SharedPool.create(name, 1 * MiB, max_blocks=32, max_entries=4096)
    try:
        keep = [p.alloc(16) for _ in range(10)]
        for b in keep:
            stamp(b)
        c = subprocess.Popen([sys.executable, "-c", KILLER, name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=SRC, MEMPOOL_GROW_FAULT=step))
        out, err = c.communicate(timeout=60)
        assert c.returncode == -signal.SIGKILL, err
        done = [int(x) for x in out.split()]
        assert len(done) == 21  # 31 blocks in 32 nodes: the 32nd needed a growth
        pl = where(name)
        assert pl.gen == (1 if step in ("flipped", "retired") else 0)
        # this process goes on: it follows whatever the slots name (the lock's owner
        # died only if it held it: growth runs under it), and reclaim gives the dead
        # process's blocks back
        p.check()
        assert len(p) == 31
        assert p.reclaim(c.pid) == 21
        assert len(p) == 10 and all(value(b) == b.offset for b in keep)
        more = [p.alloc(16) for _ in range(200)]
        p.check()
        assert where(name).gen > pl.gen
        q = SharedPool.attach(name)
        assert len(q) == len(p)
        q.check()
        q.close()
        del more, keep
    finally:
        p.close()
        p.unlink()


def test_a_damaged_winning_slot_refuses_attach(name):
    with SharedPool.create(name, 1 * MiB, max_blocks=32, unlink_on_exit=True) as p:
        blocks = [p.alloc(16) for _ in range(100)]
        pl = where(name)
        assert pl.gen >= 2
        with open(f"/dev/shm/{name}", "r+b") as f:
            f.seek(512 + 64 * pl.slot + 20)
            byte = f.read(1)
            f.seek(512 + 64 * pl.slot + 20)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(mempool.CorruptionError):
            SharedPool.attach(name)
        del blocks


def test_fork_child_grows_and_parent_follows(name):
    with SharedPool.create(name, 1 * MiB, max_blocks=32, max_entries=4096,
                           unlink_on_exit=True) as p:
        mine = [p.alloc(16) for _ in range(10)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: grow through the mappings and fd it inherited
            try:
                blocks = [p.alloc(16) for _ in range(500)]
                p.check()
                os.write(w, str(len(blocks)).encode())
            finally:
                os._exit(0)
        os.close(w)
        got = os.read(r, 100)
        os.waitpid(pid, 0)
        os.close(r)
        assert got == b"500"
        assert where(name).gen >= 4
        p.check()  # follows: the child's blocks were reclaimed when it exited, or are live
        more = [p.alloc(16) for _ in range(600)]
        p.check()
        del mine, more


def test_subprocess_sees_the_grown_state_of_a_pool_it_attached_before(name):
    code = textwrap.dedent("""
        import sys
        from mempool import SharedPool
        p = SharedPool.attach(sys.argv[1])
        print("attached", p._strategy.state_size, flush=True)
        sys.stdin.readline()
        p.check()
        print(len(p), p._strategy.state_size, flush=True)
        p.close()
    """)
    with SharedPool.create(name, 1 * MiB, max_blocks=32, max_entries=4096,
                           unlink_on_exit=True) as p:
        c = subprocess.Popen([sys.executable, "-c", code, name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=SRC))
        assert c.stdout.readline().split() == ["attached", "10144"]
        blocks = [p.alloc(16) for _ in range(1000)]
        out, _ = c.communicate("go\n", timeout=60)
        assert out.split() == [str(len(p)), str(p._strategy.state_size)]
        del blocks


def test_attach_binds_its_directory_to_the_state_the_lock_found(name):
    # another process grows the state between attach's read of the placement and the
    # directory's bind: the bind checks the directory against the grown state
    p = SharedPool.create(name, 16 * MiB, max_blocks=16, max_entries=60000,
                          unlink_on_exit=True)
    p.named["x"] = np.arange(5.0)
    held = []

    class Late(SharedPool):
        def _named_bind(self, *args):
            held.extend(p.alloc(16) for _ in range(200))  # grown right here
            return super()._named_bind(*args)

    q = Late.attach(name)
    assert q.named["x"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    q.named["y"] = np.ones(3)
    q.check()
    assert q._strategy.state_size == p._strategy.state_size
    q.close()
    del held
    p.close()


def test_snapshot_of_a_pool_attached_before_growth(name):
    from mempool.view import view_shared

    with SharedPool.create(name, 1 * MiB, max_blocks=16, max_entries=8192,
                           unlink_on_exit=True) as p:
        q = SharedPool.attach(name)
        blocks = [p.alloc(16) for _ in range(200)]
        assert len(q._snapshot()[0]) == len(p._snapshot()[0])  # q follows under the lock
        v = view_shared(name)
        assert v.stats.live == 200
        q.close()
        del blocks


ATTACHER = """
import sys
from mempool import SharedPool
n = int(sys.argv[1])
for name in sys.argv[2:]:
    p = SharedPool.attach(name)
    keep = [p.alloc(16) for _ in range(n)]
    print(len(p), flush=True)
"""
# allocations per pool: 20,000 grow its state 11 times from 16 blocks; 2,000 (7 times) in
# a debug build, whose check() after every call makes each O(state) (206 s under ASan)
RACING = 2_000 if mempool._mempool.DEBUG_BUILD else 20_000


def test_attach_racing_growth_never_sees_a_moved_state_as_corrupt(name):
    names = [f"{name}-{k}" for k in range(4)]
    pools = [SharedPool.create(n, 16 * MiB, max_blocks=16, max_entries=30000,
                               unlink_on_exit=True) for n in names]
    try:
        c = subprocess.Popen([sys.executable, "-c", ATTACHER, str(RACING), *names],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC))
        seen = 0
        while c.poll() is None:
            for n in names:
                q = SharedPool.attach(n)  # never CorruptionError while the state moves
                seen = max(seen, len(q))
                q.close()
        assert c.wait() == 0 and c.stdout.read().split() == [str(RACING)] * 4
        assert seen > 0
    finally:
        for p in pools:
            p.close()
