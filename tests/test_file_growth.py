"""A file pool's state grows (issue 11): when more blocks are live than its node budget
was sized for, the state moves to a larger pair at the file's end, named by a
placement slot in the header (_segment.py), every offset kept; a process killed at any
step of a growth leaves a file that opens with one whole state, nothing lost."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import mempool
from mempool import Pool
from mempool._segment import PLACEMENT_OFFSET, Header, placement
from mempool.pool import FILE_MAGIC

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))  # (installed or not)
KiB, MiB = 1 << 10, 1 << 20


def where(path) -> tuple[Header, object]:
    data = open(path, "rb").read()
    h = Header.unpack(data, len(data), FILE_MAGIC, str(path))
    return h, placement(h, data, len(data), str(path))


def fill(b, k: int) -> None:
    with memoryview(b) as m:
        m[:8] = k.to_bytes(8, "little")


def value(b) -> int:
    with memoryview(b) as m:
        return int.from_bytes(m[:8], "little")


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "bump", "heap"])
def test_a_file_pool_state_grows_and_every_block_stays(tmp_path, strategy):
    path = tmp_path / "g.pool"
    p = Pool.create(path, 1 * MiB, strategy, max_blocks=32)
    first = p._strategy.state_size
    blocks = [p.alloc(300) for _ in range(2000)]  # (past the Heap's small classes)
    for k, b in enumerate(blocks):
        fill(b, k)
    offs = [b.offset for b in blocks]
    assert len(set(offs)) == 2000 and len(p) == 2000
    grown = p._strategy.state_size
    assert grown > first and p.stats().metadata == grown
    p.check()
    p.named["w"] = np.arange(12.0).reshape(3, 4)
    live = len(p)  # the blocks, the array's range and its record
    del blocks
    p.close()
    h, pl = where(path)
    assert pl.gen >= 5 and pl.state_size == grown and pl.state_off >= h.shadow_off
    # another process finds every block, its bytes, and the name; and grows further
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, json, mempool
        offs = json.loads(sys.argv[2])
        p = mempool.Pool.open(sys.argv[1])
        p.check()
        assert not p.recovered and len(p) == int(sys.argv[3])
        for k, o in enumerate(offs):
            with memoryview(p.block_at(o)) as m:
                assert int.from_bytes(m[:8], "little") == k
        assert p.named["w"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
        more = [p.alloc(16) for _ in range(3000)]
        p.check()
        print(len(p))
        """), str(path), str(offs), str(live)], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == live + 3000
    with Pool.open(path) as p:  # (blocks of a file pool are not freed when collected)
        assert len(p) == live + 3000
        assert p._strategy.state_size >= grown  # (the Heap serves 16 B from class pages)
        p.check()


def test_growth_keeps_offsets_exactly_as_a_roomy_pool_gives_them(tmp_path):
    with Pool.create(tmp_path / "a.pool", 1 * MiB, max_blocks=32) as a, \
            Pool.create(tmp_path / "b.pool", 1 * MiB, max_blocks=8192) as b:
        rng = random.Random(3)
        la, lb = [], []
        for _ in range(3000):
            if la and rng.random() < 0.3:
                k = rng.randrange(len(la))
                la.pop(k).free()
                lb.pop(k).free()
            else:
                n = rng.randrange(1, 300)
                la.append(a.alloc(n))
                lb.append(b.alloc(n))
            assert la[-1].offset == lb[-1].offset if la else True
        assert a.segments() == b.segments()
        assert a._strategy.state_size > 10144
        a.check()


def test_default_budget_file_pool_grows_past_it(tmp_path):
    path = tmp_path / "d.pool"
    with Pool.create(path, 1 * MiB) as p:  # a budget of 1024 blocks
        size0 = os.path.getsize(path)
        blocks = [p.alloc(16) for _ in range(5000)]
        assert len(p) == 5000
        p.check()
        for b in blocks[::2]:
            b.free()
        p.check()
    # the file's disk blocks grew by the grown pair only (the state for 8192 nodes, twice):
    # the retired grown pairs' blocks were given back (the header's own pair stays)
    with Pool.open(path) as p:
        state = p._strategy.state_size
    assert os.stat(path).st_blocks * 512 <= size0 + 2 * state + 8 * KiB
    with Pool.open(path) as p:
        assert len(p) == 2500
        p.check()


def test_grow_false_and_fixed_tables_refuse_as_before(tmp_path):
    with Pool.create(tmp_path / "f.pool", 1 * MiB, max_blocks=32, grow=False) as p:
        blocks = [p.alloc(16) for _ in range(31)]  # (one node is the free rest)
        before = (len(p), p.used, p.segments())
        size = os.path.getsize(tmp_path / "f.pool")
        with pytest.raises(mempool.OutOfSpace, match="range table is full"):
            p.alloc(16)
        assert (len(p), p.used, p.segments()) == before
        assert os.path.getsize(tmp_path / "f.pool") == size
        assert p.try_alloc(16) is None
        p.check()
        del blocks
    with Pool.create(tmp_path / "s.pool", 64 * KiB, "slab", item_size=64) as p:
        blocks = [p.alloc(64) for _ in range(1024)]
        with pytest.raises(mempool.OutOfSpace):
            p.alloc(64)
        p.check()


def test_realloc_named_and_numpy_grow_a_full_file_pool(tmp_path):
    with Pool.create(tmp_path / "r.pool", 1 * MiB, max_blocks=32) as p:
        blocks = [p.alloc(32) for _ in range(31)]
        assert p._strategy.state_size == 10144
        b = p.realloc(blocks[0], 16)  # the freed tail needs a node: grown first
        assert (b.offset, b.size) == (0, 16) and p._strategy.state_size > 10144
        p.check()
    with Pool.create(tmp_path / "n.pool", 1 * MiB, max_blocks=32) as p:
        blocks = [p.alloc(32) for _ in range(31)]
        for k in range(20):
            p.named[f"a{k}"] = np.full(10, float(k))
        assert [p.named[f"a{k}"][3] for k in range(20)] == [float(k) for k in range(20)]
        p.check()
        del blocks
    with Pool.create(tmp_path / "h.pool", 1 * MiB, max_blocks=32) as p:
        with p.activate(numpy=True):
            arrays = [np.empty(100) for _ in range(200)]
        assert all(p.address <= a.ctypes.data < p.address + p.capacity for a in arrays)
        assert len(p) == 200 and p._strategy.state_size > 10144
        del arrays
        assert len(p) == 0
        p.check()


def test_a_failed_growth_leaves_the_pool_on_its_state(tmp_path):
    # the file may not grow past its size (RLIMIT_FSIZE, as a full disk would refuse):
    # the allocation raises OSError(EFBIG), and the pool carries on as it was
    path = tmp_path / "e.pool"
    with Pool.create(path, 1 * MiB, max_blocks=32) as p:
        [p.alloc(16) for _ in range(31)]
    size = os.path.getsize(path)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import errno, os, resource, signal, sys
        import mempool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
        p = mempool.Pool.open(sys.argv[1])
        before = (len(p), p.used, p.segments())
        try:
            p.alloc(16)
        except OSError as e:
            assert e.errno == errno.EFBIG and "cannot grow the state" in str(e), e
        else:
            raise AssertionError("grew past RLIMIT_FSIZE")
        assert (len(p), p.used, p.segments()) == before
        p.check()
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        b = p.alloc(16)  # grows now
        p.check()
        print(len(p))
        """), str(path), str(size)], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["32"]
    with Pool.open(path) as p:
        assert len(p) == 32 and where(path)[1].gen == 1
        p.check()


def test_a_format_3_file_opens_and_does_not_grow(tmp_path):
    path = tmp_path / "v3.pool"
    with Pool.create(path, 1 * MiB, max_blocks=32) as p:
        p.alloc(96)
    data = bytearray(path.read_bytes())
    h = Header.unpack(bytes(data), len(data), FILE_MAGIC, "v3")
    data[:4096] = dataclasses.replace(h, version=3, log_entries=0).pack()  # what the last version wrote
    data[4096:4096 + h.state_size] = path.read_bytes()[4096:4096 + h.state_size]
    path.write_bytes(bytes(data))
    with Pool.open(path) as p:
        assert len(p) == 1
        blocks = [p.alloc(16) for _ in range(30)]
        with pytest.raises(mempool.OutOfSpace, match="range table is full"):
            p.alloc(16)
        p.check()
        del blocks


KILLER = """
import sys
import mempool
p = mempool.Pool.open(sys.argv[1])
while True:
    b = p.alloc(16)
    with memoryview(b) as m:
        m[:8] = b.offset.to_bytes(8, "little")
    print(b.offset, flush=True)
"""


@pytest.mark.parametrize("step", ["mapped", "grown", "slot-half", "flipped", "retired"])
def test_killed_at_each_step_of_a_growth(tmp_path, step):
    path = tmp_path / "k.pool"
    with Pool.create(path, 1 * MiB, max_blocks=32) as p:
        keep = [p.alloc(16) for _ in range(20)]
        for b in keep:
            fill(b, b.offset)
        del keep
    r = subprocess.run([sys.executable, "-c", KILLER, str(path)], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=SRC, MEMPOOL_GROW_FAULT=step))
    assert r.returncode == -signal.SIGKILL, r.stderr
    done = [int(x) for x in r.stdout.split()]
    assert len(done) == 11  # 31 blocks: the 32nd needed a growth, and died in it
    h, pl = where(path)
    assert pl.gen == (1 if step in ("flipped", "retired") else 0)
    with Pool.open(path) as p:
        p.check()
        assert len(p) == 31 and not p.recovered
        for o in done:
            assert value(p.block_at(o)) == o
        # and it grows now, over whatever the dead growth left at the file's end
        more = [p.alloc(16) for _ in range(100)]
        assert len(p) == 131 and where(path)[1].gen == 3  # 64, 128, then 256 nodes
        p.check()
        del more
    with Pool.open(path) as p:
        assert len(p) == 131
        p.check()


def test_a_damaged_winning_slot_is_refused_not_rolled_back(tmp_path):
    path = tmp_path / "d.pool"
    with Pool.create(path, 1 * MiB, max_blocks=32) as p:
        blocks = [p.alloc(16) for _ in range(100)]
        del blocks
    h, pl = where(path)
    assert pl.gen >= 2
    data = bytearray(path.read_bytes())
    at = PLACEMENT_OFFSET + 64 * pl.slot + 20
    data[at] ^= 0xFF  # the winner fails its checksum: the older slot would win...
    path.write_bytes(bytes(data))
    with pytest.raises(mempool.CorruptionError):  # ...but its state is retired
        Pool.open(path)


@pytest.mark.skipif(not os.environ.get("MEMPOOL_SLOW_TESTS"), reason="MEMPOOL_SLOW_TESTS=1")
def test_file_pool_storm_of_a_million_live_16_byte_blocks(tmp_path):
    path = tmp_path / "m.pool"
    with Pool.create(path, 64 * MiB) as p:
        blocks = [p.alloc(16) for _ in range(1 << 20)]
        assert len(p) == 1 << 20 and p.stats().metadata > 60 * MiB
        p.check()
        del blocks
    with Pool.open(path) as p:
        assert len(p) == 1 << 20
        p.check()


def test_threads_growing_one_file_pool_stay_serialised(tmp_path):
    # a growth runs in C with the GIL held: no other thread's call comes in between
    path = tmp_path / "t.pool"
    p = Pool.create(path, 16 * MiB, max_blocks=16)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []
    got: list[list] = [[] for _ in range(4)]

    def work(k):
        try:
            for _ in range(3000):
                got[k].append(p.alloc(16))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    offs = [b.offset for blocks in got for b in blocks]
    assert len(set(offs)) == 12000 and len(p) == 12000
    p.check()
    del got
    p.close()
    with Pool.open(path) as p:
        assert len(p) == 12000
        p.check()


def test_a_signal_handler_raising_during_growth_leaves_a_sound_file(tmp_path):
    # an exception from a signal handler lands between calls, never inside a growth
    class Tick(Exception):
        pass

    armed = [False]

    def handler(*_):
        if armed[0]:  # once per arming: never inside the except clause below
            armed[0] = False
            raise Tick

    path = tmp_path / "s.pool"
    p = Pool.create(path, 16 * MiB, max_blocks=16)
    keep = []
    ticks = 0
    prev = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    try:
        while len(p) < 20000:  # (a block whose call a Tick ended after it returned counts)
            try:
                armed[0] = True
                b = p.alloc(16)
                armed[0] = False
                keep.append(b)
            except Tick:
                ticks += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev)
    assert ticks > 0
    assert len(p) == 20000
    p.check()
    n = len(p)
    del keep
    p.close()
    with Pool.open(path) as p:
        assert len(p) == n
        p.check()
