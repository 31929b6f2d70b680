"""Bump: exact behaviour (bumping, the last-range rewind, dead ranges, realloc, marks),
the seed's defect absent, state round trips.  Bad input, for every strategy:
tests/test_bad_input.py."""

import pickle

import numpy as np
import pytest
from helpers import check_alloc_check, corrupted_restores, unchanged

import mempool
from mempool import Bump


def test_offsets_only_grow_with_alignment_gaps():
    s = Bump(1000)
    assert s.alloc(3) == 0
    assert s.alloc(10, align=64) == 64
    assert s.alloc(1) == 74 and s.top == 75 and s.depth == 3
    assert s.segments() == [(0, 3, True), (3, 61, False), (64, 10, True), (74, 1, True),
                            (75, 925, False)]
    st = s.stats()
    assert (st.used, st.live, st.free_ranges, st.largest_free) == (14, 3, 2, 925)
    assert st.internal_fragmentation == 0 and st.fragmentation == pytest.approx(1 - 925 / 986)
    assert s.strategy == "bump" and mempool.STRATEGIES["bump"] is Bump
    s.check()


def test_free_of_the_last_range_rewinds_over_its_alignment_gap():
    s = Bump(1000)
    s.alloc(3)
    b = s.alloc(10, align=64)
    s.free(b)
    assert s.top == 3 and s.largest_free == 997  # the gap [3, 64) is back too
    assert s.alloc(5) == 3


def test_free_of_another_range_only_marks_it_dead():
    s = Bump(1000)
    a, b, c = s.alloc(100), s.alloc(100), s.alloc(100)
    s.free(b)
    assert s.top == 300 and s.depth == 3 and len(s) == 2 and s.used == 200
    assert s.segments() == [(0, 100, True), (100, 100, False), (200, 100, True), (300, 700, False)]
    unchanged(s, lambda: s.free(b), mempool.NotAllocated)  # dead: not live any more
    unchanged(s, lambda: s.size_of(b), mempool.NotAllocated)
    assert s.alloc(50) == 300  # offsets only grow: the dead range is not reused
    s.free(300)
    assert s.top == 300
    # freeing the last live range pops it and the dead one under it
    s.free(c)
    assert s.top == 100 and s.depth == 1
    s.free(a)
    assert s.top == 0 and s.depth == 0 and s.segments() == [(0, 1000, False)]
    s.check()


def test_realloc_of_the_last_range_in_place():
    s = Bump(1000)
    s.alloc(10)
    b = s.alloc(100)
    assert s.realloc(b, 500) == b and s.top == 510
    assert s.realloc(b, 20, align=512) == b and s.top == 30  # in place: align is moot
    unchanged(s, lambda: s.realloc(b, 991), mempool.OutOfSpace)
    assert s.realloc(b, 990) == b and s.largest_free == 0


def test_realloc_of_another_range_shrinks_in_place_and_moves_to_grow():
    s = Bump(1000)
    a, b = s.alloc(100), s.alloc(100)
    assert s.realloc(a, 40) == a and s.size_of(a) == 40 and s.top == 200
    assert s.segments()[:3] == [(0, 40, True), (40, 60, False), (100, 100, True)]
    moved = s.realloc(a, 150, align=64)
    assert moved == 256 and s.size_of(moved) == 150 and s.top == 406
    unchanged(s, lambda: s.size_of(a), mempool.NotAllocated)  # the old range is dead
    unchanged(s, lambda: s.realloc(b, 700), mempool.OutOfSpace)  # a move that cannot fit
    s.free(moved)
    s.free(b)
    assert s.top == 0  # the shrunk dead range went with b


def test_marks_nested_and_rewound_in_order():
    s = Bump(10_000)
    s.alloc(10)
    m1 = s.mark()
    s.alloc(20)
    m2 = s.mark()
    s.alloc(30)
    s.alloc(40, align=256)
    assert isinstance(m1, int) and isinstance(m2, int) and m1 != m2
    s.rewind(m2)
    assert s.top == 30 and len(s) == 2
    s.rewind(m2)  # rewinding to the same mark again is fine
    s.alloc(5)
    s.rewind(m1)
    assert s.top == 10 and len(s) == 1
    unchanged(s, lambda: s.rewind(m2), ValueError, "stale")  # newer than where we are
    s.check()


def test_rewind_to_an_older_mark_after_newer_ones_and_stale_marks():
    s = Bump(10_000)
    m0 = s.mark()
    a = s.alloc(10)
    m1 = s.mark()
    s.alloc(10)
    m2 = s.mark()
    s.alloc(10)
    s.rewind(m0)  # past both newer marks at once
    assert s.top == 0 and len(s) == 0
    unchanged(s, lambda: s.rewind(m1), ValueError, "stale")
    # the same depth reached again by new ranges does not revive them
    s.alloc(10)
    s.alloc(10)
    s.alloc(10)
    assert s.depth == 3
    unchanged(s, lambda: s.rewind(m1), ValueError, "stale")
    unchanged(s, lambda: s.rewind(m2), ValueError, "stale")
    s.rewind(m0)
    assert a == 0


def test_marks_are_stale_after_reset_and_after_a_free_below_them():
    s = Bump(1000)
    m0 = s.mark()
    s.alloc(8)
    m1 = s.mark()
    s.reset()
    unchanged(s, lambda: s.rewind(m0), ValueError, "stale")
    unchanged(s, lambda: s.rewind(m1), ValueError, "stale")
    a = s.alloc(8)
    m2 = s.mark()
    s.alloc(8)
    s.rewind(m2)
    s.free(a)  # below m2: the stack went under it
    s.alloc(8)
    unchanged(s, lambda: s.rewind(m2), ValueError, "stale")


def test_rewind_also_pops_dead_ranges_under_the_mark():
    s = Bump(1000)
    a, b = s.alloc(10), s.alloc(10)
    m = s.mark()
    s.alloc(10)
    s.free(b)  # dead, under the mark
    s.rewind(m)
    assert s.top == 10 and s.depth == 1 and len(s) == 1
    s.free(a)
    assert s.top == 0


def test_a_failed_allocation_keeps_the_last_range_and_the_marks():
    # context-allocator's defect: a failed allocation clobbered "last"
    s = Bump(100)
    s.alloc(10)
    m = s.mark()
    b = s.alloc(50)
    unchanged(s, lambda: s.alloc(60), mempool.OutOfSpace, "cannot allocate 60 bytes")
    unchanged(s, lambda: s.alloc(1, align=128), mempool.OutOfSpace)
    unchanged(s, lambda: s.realloc(b, 91), mempool.OutOfSpace)
    s.free(b)  # still the last range: rewinds
    assert s.top == 10
    c = s.alloc(40)
    s.rewind(m)  # the mark survived too
    assert s.top == 10 and c == 10
    assert s.alloc(90) == 10  # and the allocator goes on


def test_range_table_full():
    s = Bump(1000, max_blocks=2, grow=False)
    a = s.alloc(1)
    s.alloc(1)
    unchanged(s, lambda: s.alloc(1), mempool.OutOfSpace, "max_blocks")
    s.free(a)  # dead, still on the stack
    unchanged(s, lambda: s.alloc(1), mempool.OutOfSpace, "max_blocks")
    s.free(1)
    assert s.depth == 0 and s.alloc(1) == 0
    assert Bump(1 << 24).max_blocks == (1 << 24) // 8192 and Bump(1 << 40).max_blocks == 1 << 20
    assert Bump(1000).max_blocks == 32 and Bump(200_000).max_blocks == 32
    assert Bump(20).max_blocks == 20


def test_largest_free_always_succeeds():
    rng = np.random.default_rng(2)
    s = Bump(1 << 14)
    live = []
    for _ in range(300):
        r = rng.random()
        if live and r < 0.3:
            s.free(live.pop())
        elif live and r < 0.45:
            s.free(live.pop(int(rng.integers(len(live)))))
        else:
            try:
                live.append(s.alloc(int(rng.integers(1, 300)), int(2 ** rng.integers(0, 7))))
            except mempool.OutOfSpace:
                pass
        if s.largest_free:
            m = s.mark()
            off = s.alloc(s.largest_free)
            assert off + s.size_of(off) == s.capacity
            s.rewind(m)
    s.check()


def test_reset_snapshot_pickle():
    s = Bump(5000)
    a = s.alloc(100)
    s.alloc(7, 16)
    m = s.mark()
    s.alloc(300)
    s.free(a)
    data = s.snapshot()
    r = Bump.restore(data)
    assert r.segments() == s.segments() and r.stats() == s.stats() and r.top == s.top
    r.rewind(m)  # marks are part of the state: valid in the copy
    assert r.top == 119  # 7 bytes at 112
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is Bump and t.snapshot() == s.snapshot()
    s.reset()
    st = s.stats()
    assert (st.used, st.live, st.free_ranges, st.largest_free) == (0, 0, 1, 5000)
    assert st.peak_used == 407 and st.high_water == 419 and s.top == 0
    s.check()


def test_corrupted_snapshots_are_refused_or_work():
    # other kinds, garbage, truncated and crafted bytes: tests/test_bad_input.py
    s = Bump(1 << 12, max_blocks=16)
    for n in (10, 20, 30, 40):
        s.alloc(n, 8)
    s.free(16)
    assert corrupted_restores(Bump, s.snapshot(), 9, check_alloc_check) > 250


def test_alloc_many_is_all_or_nothing_byte_for_byte():
    s = Bump(100)
    s.alloc(10)
    m = s.mark()
    unchanged(s, lambda: s.alloc_many([20, 20, 20, 40], align=8), mempool.OutOfSpace)
    offs = s.alloc_many([20, 20], align=8)
    assert offs.tolist() == [16, 40]
    s.rewind(m)  # the mark survived the failed batch
    s.free_many([0])
    assert s.top == 0


def test_large_capacity_is_ordinary():
    s = Bump(2**64 - 1)
    assert s.alloc(2**63) == 0
    assert s.alloc(10, align=2**62) == 2**63
    unchanged(s, lambda: s.alloc(2**63, align=2**63), mempool.OutOfSpace)
    s.check()


def test_repr_and_properties():
    s = Bump(1000, max_blocks=8)
    s.alloc(10)
    assert repr(s) == "<mempool.Bump capacity=1000 used=10 live=1>"
    assert (s.capacity, s.top, s.depth, s.max_blocks) == (1000, 10, 1, 8)


def test_rewind_takes_any_integer_type():
    b = Bump(4096)
    b.alloc(100)
    m = b.mark()
    b.alloc(50)
    assert b.rewind(np.int64(m)) is None and b.top == 100


def test_capacity_of_one_byte():
    s = Bump(1)
    assert s.alloc(1) == 0
    unchanged(s, lambda: s.alloc(1), mempool.OutOfSpace)
    s.free(0)
    assert s.top == 0
    s.check()
