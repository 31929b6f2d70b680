"""Exact behaviour of the exact strategies (TLSF, BestFit): placement, alignment,
merging, realloc in place and moved, reset, snapshot, segments, pickling."""

import pickle

import numpy as np
import pytest
from helpers import assert_tiles, corrupted_restores

import mempool
from mempool import TLSF, BestFit

EXACT = [TLSF, BestFit]


@pytest.fixture(params=EXACT, ids=lambda c: c.__name__)
def cls(request):
    return request.param


def test_first_allocations_are_packed_from_zero(cls):
    s = cls(1000)
    assert [s.alloc(n) for n in (10, 20, 30)] == [0, 10, 30]
    assert s.segments() == [(0, 10, True), (10, 20, True), (30, 30, True), (60, 940, False)]
    assert s.used == 60 and s.available == 940 and len(s) == 3
    s.check()


def test_alignment_gap_stays_free(cls):
    s = cls(1000)
    assert s.alloc(3) == 0
    assert s.alloc(10, align=64) == 64
    assert s.segments() == [(0, 3, True), (3, 61, False), (64, 10, True), (74, 926, False)]
    # the gap serves a later request that fits it
    assert s.alloc(61) == 3
    s.check()


def test_huge_alignment_and_offset_zero(cls):
    s = cls(1 << 20)
    assert s.alloc(16, align=1 << 40) == 0
    with pytest.raises(mempool.OutOfSpace):
        s.alloc(16, align=1 << 40)  # only offset 0 is aligned to 2**40


def test_free_merges_both_neighbours(cls):
    s = cls(300)
    a, b, c = s.alloc(100), s.alloc(100), s.alloc(100)
    s.free(a)
    s.free(c)
    assert s.stats().free_ranges == 2 and s.largest_free == 100
    s.free(b)
    assert s.segments() == [(0, 300, False)]
    assert s.stats().free_ranges == 1 and s.largest_free == 300
    s.check()


def test_whole_capacity_and_offset_allocator_failures(cls):
    # offset-allocator fails these; an exact strategy must not
    s = cls(513)
    assert s.alloc(513) == 0
    s = cls(324)
    s.alloc(255)
    assert s.alloc(67) == 255
    assert s.available == 2


def test_alloc_largest_free_always_succeeds(cls):
    rng = np.random.default_rng(1)
    s = cls(1 << 16)
    live = []
    for _ in range(300):
        if live and rng.random() < 0.45:
            s.free(live.pop(int(rng.integers(len(live)))))
        else:
            try:
                live.append(s.alloc(int(rng.integers(1, 2000)), int(2 ** rng.integers(0, 7))))
            except mempool.OutOfSpace:
                pass
        lf = s.largest_free
        if lf:
            off = s.alloc(lf)
            assert s.size_of(off) == lf
            s.free(off)
    s.check()


def test_best_fit_picks_smallest_range_lowest_offset():
    s = BestFit(1000)
    offs = [s.alloc(n) for n in (50, 10, 30, 10, 20, 10, 40)]
    # free holes of 50 @0, 30 @60, 20 @100, and the tail
    for o in (offs[0], offs[2], offs[4]):
        s.free(o)
    assert s.alloc(20) == 100  # exact fit
    assert s.alloc(25) == 60  # smallest that holds it
    assert s.alloc(5) == 85  # 5 left of the 30 hole at 85
    s.check()


def test_best_fit_aligned_placement_in_smaller_range():
    s = BestFit(4096)
    a = s.alloc(10)  # [0, 10)
    s.alloc(118)  # [10, 128)
    s.alloc(200)  # [128, 328)
    s.free(a)  # hole [0, 10)
    # a 64-aligned 8 fits in [0,10) at 0: the smallest range where it fits
    assert s.alloc(8, align=64) == 0


def test_realloc_shrink_in_place_gives_tail_back(cls):
    s = cls(1000)
    a = s.alloc(100)
    s.alloc(100)
    assert s.realloc(a, 40) == a
    assert s.size_of(a) == 40
    assert s.segments()[:3] == [(0, 40, True), (40, 60, False), (100, 100, True)]
    s.check()


def test_realloc_grow_in_place_consumes_gap_exactly(cls):
    # orderly-allocator 0.2.1 panicked here
    s = cls(1000)
    a, b, _c = s.alloc(100), s.alloc(50), s.alloc(100)
    s.free(b)
    assert s.realloc(a, 150) == a
    assert s.segments()[:2] == [(0, 150, True), (150, 100, True)]
    s.check()


def test_realloc_moves_when_neighbour_is_taken(cls):
    s = cls(1000)
    a, _b = s.alloc(100), s.alloc(100)
    new = s.realloc(a, 300)
    assert new == 200 and s.size_of(new) == 300
    assert s.segments()[0] == (0, 100, False)
    s.check()


def test_realloc_moves_down_into_free_predecessor(cls):
    s = cls(300)
    a, b, _c = s.alloc(100), s.alloc(100), s.alloc(100)
    s.free(a)
    # nothing else is free: only predecessor + itself can hold 180 bytes
    assert s.realloc(b, 180) == 0
    assert s.segments() == [(0, 180, True), (180, 20, False), (200, 100, True)]
    s.check()


def test_failed_realloc_changes_nothing(cls):
    s = cls(300)
    a, _b = s.alloc(100), s.alloc(100)
    s.alloc(100)
    before, snap = s.stats(), s.snapshot()
    with pytest.raises(mempool.OutOfSpace):
        s.realloc(a, 250)
    assert s.stats() == before and s.snapshot() == snap


def test_reset_frees_everything_and_keeps_peaks(cls):
    s = cls(1000)
    for n in (100, 200, 300):
        s.alloc(n)
    s.reset()
    st = s.stats()
    assert (st.used, st.live, st.free_ranges, st.largest_free) == (0, 0, 1, 1000)
    assert st.peak_used == 600 and st.high_water == 600
    assert s.alloc(1000) == 0
    s.check()


def test_snapshot_restore_round_trip(cls):
    s = cls(5000, max_blocks=32)
    offs = [s.alloc(n, 16) for n in (100, 7, 300, 42)]
    s.free(offs[1])
    data = s.snapshot()
    # the used part: nodes never handed out are left out (32 nodes, 4 used)
    assert isinstance(data, bytes) and len(data) < s.state_size
    r = cls.restore(data)
    assert r.segments() == s.segments() and r.stats() == s.stats()
    # independent copies
    r.free(offs[0])
    assert s.size_of(offs[0]) == 100
    r.check()
    s.check()


def test_restore_refuses_other_kind_and_garbage(cls):
    other = BestFit if cls is TLSF else TLSF
    data = other(1000).snapshot()
    with pytest.raises(mempool.CorruptionError, match="state"):
        cls.restore(data)
    with pytest.raises(mempool.CorruptionError):
        cls.restore(b"\x00" * 200)
    with pytest.raises(mempool.CorruptionError):
        cls.restore(cls(1000).snapshot()[:-8])
    with pytest.raises(TypeError):
        cls.restore("not bytes")


def test_restore_refuses_corrupted_state(cls):
    s = cls(1 << 14, max_blocks=64)
    for n in (100, 200, 300, 400):
        s.alloc(n)
    s.free(200 - 100)  # the 200-byte range at offset 100

    def works(r):
        r.check()  # accepted: must be fully consistent
        r.alloc(1)

    assert corrupted_restores(cls, s.snapshot(), 7, works) > 0


def test_pickle_round_trip(cls):
    s = cls(4096)
    a = s.alloc(100, 64)
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is cls and t.segments() == s.segments()
    t.free(a)
    t.check()


def test_segments_cover_the_span(cls):
    s = cls(10_000)
    rng = np.random.default_rng(3)
    offs = [s.alloc(int(rng.integers(1, 300)), int(2 ** rng.integers(0, 8))) for _ in range(30)]
    for o in offs[::3]:
        s.free(o)
    assert_tiles(s.segments(), 10_000)


def test_alloc_many_free_many(cls):
    s = cls(1000)
    offs = s.alloc_many(np.array([10, 20, 30], dtype=np.int64))
    assert offs.dtype == np.int64 and offs.tolist() == [0, 10, 30]
    assert s.alloc_many([5], align=64).tolist() == [64]
    s.free_many(offs)
    assert len(s) == 1
    s.free_many([64])
    assert s.segments() == [(0, 1000, False)]


@pytest.mark.parametrize("dt", [">i8", ">u8", ">i4", ">u2", "<i2", "=u4"])
def test_the_batch_forms_take_integer_arrays_of_either_byte_order(cls, dt):
    # "any integer array": a big-endian one was a TypeError
    s = cls(1000)
    offs = s.alloc_many(np.array([10, 20, 30], dtype=dt))
    assert offs.tolist() == [0, 10, 30]
    s.free_many(offs.astype(">i8" if dt[1] == "i" else ">u8"))
    assert s.segments() == [(0, 1000, False)]
    with pytest.raises(ValueError, match=r"sizes\[1\] must be >= 1, got 0"):
        s.alloc_many(np.array([5, 0], dtype=dt))


def test_alloc_many_is_all_or_nothing(cls):
    s = cls(100)
    s.alloc(10)
    before, segs = s.stats(), s.segments()
    with pytest.raises(mempool.OutOfSpace):
        s.alloc_many([40, 40, 40])
    assert s.stats() == before and s.segments() == segs
    s.check()


def test_free_many_is_all_or_nothing(cls):
    s = cls(100)
    a, b = s.alloc(10), s.alloc(10)
    before = s.stats()
    with pytest.raises(mempool.NotAllocated):
        s.free_many([a, 55])
    with pytest.raises(mempool.NotAllocated, match="twice"):
        s.free_many([a, b, a])
    with pytest.raises(ValueError):
        s.free_many([a, -1])
    assert s.stats() == before
    s.free_many([])


def test_node_exhaustion_raises_and_never_corrupts(cls):
    s = cls(1000, max_blocks=3, grow=False)
    s.alloc(10)
    s.alloc(10)  # ranges: a, b, free tail = all 3 nodes
    before = s.snapshot()
    with pytest.raises(mempool.OutOfSpace, match="max_blocks"):
        s.alloc(10)
    assert s.snapshot() == before
    s.check()
    full = cls(30, max_blocks=3, grow=False)
    a, b, _c = full.alloc(10), full.alloc(10), full.alloc(10)
    before = full.snapshot()
    with pytest.raises(mempool.OutOfSpace, match="max_blocks"):
        full.realloc(a, 5)  # the freed tail would need a 4th node
    assert full.snapshot() == before
    full.free(b)
    assert full.realloc(a, 5) == a  # now the tail merges into the free neighbour
    full.check()


def test_large_capacity_is_ordinary():
    s = TLSF(30 * 10**9)  # a 30 GB GPU buffer
    a = s.alloc(20 * 10**9)
    b = s.alloc(9 * 10**9, align=1 << 20)
    assert a == 0 and b % (1 << 20) == 0 and b >= 20 * 10**9
    assert s.available == 30 * 10**9 - 29 * 10**9
    s.check()


def test_stats_fields(cls):
    s = cls(1000)
    a = s.alloc(100)
    s.alloc(100)
    s.free(a)
    st = s.stats()
    assert isinstance(st, mempool.Stats)
    assert st.capacity == 1000 and st.used == 100 and st.available == 900
    assert st.largest_free == 800 and st.live == 1 and st.free_ranges == 2
    assert st.peak_used == 200 and st.high_water == 200
    assert st.fragmentation == pytest.approx(1 - 800 / 900)
    assert st.internal_fragmentation == 0
    with pytest.raises(AttributeError):
        st.used = 5  # frozen


def test_repr_and_properties(cls):
    s = cls(1000)
    s.alloc(10)
    assert repr(s) == f"<mempool.{cls.__name__} capacity=1000 used=10 live=1>"
    assert s.capacity == 1000 and s.peak_used == 10 and s.high_water == 10
    assert s.strategy == cls.__name__.lower()
