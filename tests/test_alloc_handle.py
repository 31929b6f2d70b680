"""The handle form of the exact strategies (issue 15): alloc_handle / free_handle place as
alloc / free do, free without an offset lookup, and refuse every handle that names no
live range allocated by handle.  A handle is offset << 32 | node."""

from __future__ import annotations

import os
import pickle
import random

import pytest

import mempool
from mempool import BestFit, NotAllocated, OutOfSpace, TLSF

from helpers import unchanged

EXACT = [TLSF, BestFit]


@pytest.fixture(params=EXACT, ids=lambda c: c.__name__)
def cls(request):
    return request.param


def test_the_handle_form_places_as_alloc_does(cls):
    # one script of allocs, frees and aligned requests, once by offset and once by handle
    a, b = cls(1 << 20), cls(1 << 20)
    rng = random.Random(7)
    live_a, live_b = [], []
    for step in range(3000):
        if live_a and rng.random() < 0.45:
            k = rng.randrange(len(live_a))
            a.free(live_a.pop(k))
            off, h = live_b.pop(k)
            b.free_handle(h)
        else:
            size = rng.choice([1, 7, 48, 64, 100, 4096, rng.randrange(1, 20000)])
            align = rng.choice([1, 1, 1, 16, 64, 4096])
            try:
                o = a.alloc(size, align)
            except OutOfSpace:
                with pytest.raises(OutOfSpace):
                    b.alloc_handle(size, align)
                continue
            off, h = b.alloc_handle(size, align)
            assert off == o, f"step {step}"
            live_a.append(o)
            live_b.append((off, h))
        if step % 500 == 0:
            assert a.segments() == b.segments()
            assert a.stats() == b.stats()
            b.check()
    assert a.segments() == b.segments() and a.stats() == b.stats()
    for _, h in live_b:
        b.free_handle(h)
    assert b.used == 0 and b.segments() == [(0, 1 << 20, False)]
    b.check()


def test_exact_handles_and_what_free_handle_gives_back(cls):
    s = cls(4096)
    assert s.alloc_handle(100) == (0, 1)             # offset 0, node 1
    # node 2 (node 0 keeps the free tail, node 3 is the gap in front)
    assert s.alloc_handle(28, align=64) == (128, 128 << 32 | 2)
    assert s.used == 128 and s.stats().live == 2
    assert s.segments() == [(0, 100, True), (100, 28, False), (128, 28, True),
                            (156, 3940, False)]
    assert s.free_handle(1) is None
    assert s.segments() == [(0, 128, False), (128, 28, True), (156, 3940, False)]
    s.free_handle(128 << 32 | 2)
    assert s.segments() == [(0, 4096, False)] and s.used == 0 and s.stats().live == 0
    s.check()


def test_handles_past_4_gib_carry_the_whole_offset(cls):
    s = cls(1 << 40)
    first, h1 = s.alloc_handle(5 << 30)
    off, h = s.alloc_handle(100, align=1 << 32)
    assert first == 0 and off == 8 << 30 and h == off << 32 | (h & 0xFFFFFFFF)
    assert h > 1 << 64                                # an int, not a 64-bit word
    with pytest.raises(NotAllocated):
        s.free_handle(h + (1 << 32))                  # the node at another offset
    with pytest.raises(NotAllocated):
        s.free_handle(h + (1 << 40 << 32))            # 1 TiB further: the offset is exact
    with pytest.raises(NotAllocated):
        s.free_handle(1 << 200)                       # an offset beyond 2**64
    s.free_handle(h)
    s.free_handle(h1)
    assert s.used == 0
    s.check()


def test_the_offset_calls_do_not_see_a_range_allocated_by_handle(cls):
    s = cls(4096)
    off, h = s.alloc_handle(100)
    for call in (lambda: s.free(off), lambda: s.size_of(off), lambda: s.realloc(off, 200)):
        unchanged(s, call, NotAllocated, "not the start of a live range")
    with pytest.raises(NotAllocated):
        s.free_many([off])
    s.free_handle(h)
    assert s.used == 0


def test_free_handle_refuses_what_names_no_range_allocated_by_handle(cls):
    s = cls(1 << 16)
    off, h = s.alloc_handle(100)
    by_offset = s.alloc(200)                         # node 3 (node 2: the free tail)
    msg = "names no live range allocated by handle"
    bad = [
        h + (8 << 32), h + (1 << 32),  # the right node at another offset (any: exact)
        by_offset << 32 | 3,           # a range allocated by offset, its own node
        300 << 32 | 2,                 # the free tail's node
        h + 1000,                      # a node never handed out
        (1 << 64) - 1, 1 << 63, 1 << 64, 1 << 95,
    ]
    for x in bad:
        unchanged(s, lambda: s.free_handle(x), NotAllocated, msg, what=hex(x))
    for x in (-1, -h, -(1 << 80)):                   # no handle is negative
        unchanged(s, lambda: s.free_handle(x), NotAllocated, msg, what=repr(x))
    for x in (1.0, "1", None, [h]):
        with pytest.raises(TypeError, match="handle must be an integer"):
            s.free_handle(x)
    import numpy as np
    s2 = cls(1 << 16)
    o2, h2 = s2.alloc_handle(8)
    s2.free_handle(np.uint64(h2))                    # any int-like (__index__) will do
    with pytest.raises(TypeError):
        s.free_handle()
    with pytest.raises(TypeError):
        s.free_handle(h, h)
    s.free_handle(h)
    # freed: refused, the state as it was
    unchanged(s, lambda: s.free_handle(h), NotAllocated, msg)
    s.free(by_offset)
    s.check()


def test_a_stale_handle_frees_only_its_node_at_its_offset(cls):
    s = cls(1 << 20)
    a = s.alloc(3)
    o1, h1 = s.alloc_handle(1)                       # offset 3
    s.free_handle(h1)
    s.free(a)
    s.alloc(5)
    o2, h2 = s.alloc_handle(1)                       # offset 5, the same node
    assert (o1, o2) == (3, 5) and h1 & 0xFFFFFFFF == h2 & 0xFFFFFFFF
    unchanged(s, lambda: s.free_handle(h1), NotAllocated)
    s.free_handle(h2)


def test_bad_requests_raise_as_alloc_does_and_change_nothing(cls):
    s = cls(4096, max_blocks=4, grow=False)
    for size, exc in ((0, ValueError), (-1, ValueError), (4097, OutOfSpace),
                      (1 << 64, OutOfSpace), ("8", TypeError), (1.5, TypeError)):
        unchanged(s, lambda: s.alloc_handle(size), exc, what=repr(size))
    for align in (0, 3, -8, 1 << 64):
        unchanged(s, lambda: s.alloc_handle(8, align), (ValueError, OverflowError),
                  what=repr(align))
    unchanged(s, lambda: s.alloc_handle(8, align=2.0), TypeError)
    unchanged(s, lambda: s.alloc_handle(8, alignment=16), TypeError)
    s.alloc_handle(4000)
    unchanged(s, lambda: s.alloc_handle(100), OutOfSpace, "no free range fits")
    t = cls(1 << 20, max_blocks=4, grow=False)   # the node budget is the bound
    for _ in range(3):
        t.alloc_handle(16)
    unchanged(t, lambda: t.alloc_handle(16), OutOfSpace, "max_blocks")


def test_handles_outlive_growth_snapshot_pickle_and_reset_ends_them(cls):
    s = cls(1 << 20, max_blocks=8)
    first = s.state_size
    pairs = [s.alloc_handle(100 + k) for k in range(200)]  # the state grows meanwhile
    assert s.state_size > first
    s.check()
    for off, h in pairs[::2]:
        s.free_handle(h)
    r = cls.restore(s.snapshot())
    q = pickle.loads(pickle.dumps(s))
    for t in (s, r, q):
        t.check()
        for off, h in pairs[1::2]:
            t.free_handle(h)
        assert t.used == 0 and t.segments() == [(0, 1 << 20, False)]
    s2 = cls(1 << 20)
    off, h = s2.alloc_handle(64)
    s2.reset()
    with pytest.raises(NotAllocated):
        s2.free_handle(h)
    s2.check()


def test_a_pools_strategy_has_no_handle_form(tmp_path):
    # a pool holds its ranges by offset (its blocks, a file's journal, a segment's registry)
    with mempool.Pool(1 << 20) as p:
        s = p._strategy
        with pytest.raises(TypeError, match="serves a Pool"):
            s.alloc_handle(64)
        with pytest.raises(TypeError, match="serves a Pool"):
            s.free_handle(1)
        p.check()
    with mempool.Pool.create(tmp_path / "f.pool", 1 << 20) as p:
        with pytest.raises(TypeError, match="serves a Pool"):
            p._strategy.alloc_handle(64)
    name = f"mptest-{os.getpid()}-handles"
    with mempool.SharedPool.create(name, 1 << 20) as p:
        try:
            with pytest.raises(TypeError, match="serves a Pool"):
                p._strategy.alloc_handle(64)
        finally:
            p.unlink()
    with mempool.RegionPool(region_size="1MiB") as r:
        blk = r.alloc(64)
        assert r._regions                            # each region is a Pool
        for region in r._regions:
            with pytest.raises(TypeError, match="serves a Pool"):
                region._strategy.alloc_handle(64)
        blk.free()


def _with_a_handle_range(raw: bytearray, h) -> None:
    """Put a range allocated by handle into the state (and its shadow) of a pool's bytes:
    no pool makes one, so attach must refuse it."""
    offs = [h.state_off] + ([h.shadow_off] if getattr(h, "shadow_off", 0) else [])
    s = TLSF.restore(bytes(raw[h.state_off:h.state_off + h.state_size]))
    s.alloc_handle(64)
    st = s._full_snapshot()
    assert len(st) == h.state_size
    for at in offs:
        raw[at:at + h.state_size] = st
    # equal copies, so an empty redo log: the journal's phase word IDLE | 0 entries (a
    # shared pool's journal is in its control block, a file pool's in the header page)
    from mempool._segment import JOURNAL_OFFSET
    ph = (h.lock_off + 192 if h.lock_size else JOURNAL_OFFSET) + 8
    raw[ph:ph + 8] = bytes(8)


def test_a_file_pool_state_holding_a_handle_range_is_refused(tmp_path):
    from mempool._segment import Header
    path = tmp_path / "f.pool"
    with mempool.Pool.create(path, 1 << 20, "tlsf") as p:
        p.alloc(64)
    raw = bytearray(path.read_bytes())
    h = Header.unpack(memoryview(raw), len(raw), raw[:8], str(path))
    _with_a_handle_range(raw, h)
    path.write_bytes(raw)
    with pytest.raises(mempool.CorruptionError, match="allocated by handle"):
        mempool.Pool.open(path)


def test_a_shared_pool_state_holding_a_handle_range_is_refused(name):
    from pathlib import Path

    from mempool._segment import Header
    shm = Path(f"/dev/shm/{name}")
    with mempool.SharedPool.create(name, "1MiB", "tlsf") as p:
        keep = p.alloc(1000)
        raw = bytearray(shm.read_bytes())
        del keep
    h = Header.unpack(memoryview(raw), len(raw), b"MPSHARED", name)
    _with_a_handle_range(raw, h)
    shm.write_bytes(raw)
    with pytest.raises(mempool.CorruptionError, match="allocated by handle"):
        mempool.SharedPool.attach(name)


def test_a_subclass_of_two_strategies_is_refused():
    for a, b in ((mempool.Buddy, TLSF), (TLSF, mempool.Buddy), (mempool.Heap, TLSF),
                 (mempool.Slab, BestFit)):
        with pytest.raises(TypeError, match="two strategies"):
            type("X", (a, b), {})

    class Mine(TLSF):                                  # one strategy: fine
        pass

    class Deeper(Mine):
        pass
    assert Deeper(1 << 16).alloc_handle(8) == (0, 1)


def test_a_strategys_own_methods_refuse_another_strategys_state():
    # past the class check (a base whose __init_subclass__ does not chain up, or
    # __bases__ changed afterwards) the methods still never read a state of another kind
    class Quiet:
        def __init_subclass__(cls, **kw):
            pass

    mixes = [type("X", (Quiet, TLSF, mempool.Slab), {}),
             type("Y", (Quiet, TLSF, mempool.Buddy), {}),
             type("Z", (Quiet, TLSF, mempool.Bump), {}),
             type("W", (Quiet, TLSF, mempool.Heap), {})]

    class A(TLSF):
        pass
    A.__bases__ = (mempool.Slab,)
    calls = [lambda o: o.alloc_array(4), lambda o: o.free_array(0, 1), lambda o: o.item_size,
             lambda o: o.class_of(4096), lambda o: o.class_size(0), lambda o: o.num_classes,
             lambda o: o.mark(), lambda o: o.rewind(0), lambda o: o.depth,
             lambda o: o.size_class(64), lambda o: o.served_by(0)]
    for cls in mixes + [A]:
        o = cls(1 << 20)
        assert o.strategy == "tlsf"
        for call in calls:
            try:
                call(o)
            except AttributeError:
                continue                             # not a method of this mix
            except TypeError as e:
                assert "reads a" in str(e) and "holds a tlsf one" in str(e)
            else:
                raise AssertionError(f"{cls.__name__}: a call read a tlsf state")
        o.check()


def test_replay_and_pools_refuse_what_does_not_fit_them(tmp_path):
    # replay runs in the handle form: never on a pool's strategy (its lock, its journal)
    with mempool.Pool(1 << 20) as p:
        from mempool._mempool import replay
        import numpy as np
        z8, z32 = np.zeros(1, np.uint8), np.zeros(1, np.uint32)
        with pytest.raises(TypeError, match="serves a Pool"):
            replay(p._strategy, z8, z32, np.zeros(1, np.uint64), z32, 0)
        p.check()
    # a strategy holding a range allocated by handle cannot serve a pool
    from mempool._mempool import PoolCore
    s = TLSF(1 << 16)
    s.alloc_handle(64)
    with pytest.raises(ValueError, match="allocated by handle"):
        PoolCore(s, bytearray(1 << 16), None)
    t = TLSF(1 << 16)
    PoolCore(t, bytearray(1 << 16), None)          # an empty one does


def test_a_heap_whose_tlsf_holds_a_handle_range_is_refused():
    # the Heap's pages are ranges of its TLSF, held by offset: a crafted sub-state that
    # marks a page's node as allocated by handle (out of the offset table) is refused
    import struct
    h = mempool.Heap(1 << 20)
    h.alloc(100000)
    x = h.alloc(16)                                   # a class item: its page is at x
    full = bytearray(h._full_snapshot())
    node_at = full.find(struct.pack("<QQ", x, h.page_size))   # the page's TLSF node
    slot = next(full.find(struct.pack("<II", x >> 3, i)) for i in range(256)
                if full.find(struct.pack("<II", x >> 3, i)) > 0)
    assert node_at > 0 and slot > 0
    struct.pack_into("<I", full, node_at + 36, 5)     # flags: RN_INUSE | RN_HANDLE
    struct.pack_into("<II", full, slot, 0, 0xFFFFFFFF)  # not in the offset table
    with pytest.raises(mempool.CorruptionError, match="allocated by handle"):
        mempool.Heap.restore(bytes(full))
def test_only_the_exact_strategies_have_it():
    for name, c in mempool.STRATEGIES.items():
        assert hasattr(c, "alloc_handle") == (c in EXACT), name
        assert hasattr(c, "free_handle") == (c in EXACT), name


def test_recorded_as_alloc_and_free(cls, tmp_path):
    path = tmp_path / "h.trace"
    with mempool.trace.record(path):
        s = cls(1 << 16)
        off, h = s.alloc_handle(100, 64)
        o2 = s.alloc(50)
        s.free_handle(h)
        s.free(o2)
    tr = mempool.trace.read(path)
    assert tr.op.tolist() == [0, 0, 1, 1]              # alloc, alloc, free, free
    assert tr.size.tolist()[:2] == [100, 50] and tr.align.tolist()[:2] == [64, 1]
    ids = tr.id.tolist()
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]


