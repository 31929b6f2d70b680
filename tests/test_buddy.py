"""Buddy: the hcsshim scenarios, classes, alignment, realloc, reset, snapshots.
Bad input, for every strategy: tests/test_bad_input.py."""

import pickle

import numpy as np
import pytest
from helpers import assert_tiles, check_alloc_free, corrupted_restores, unchanged

import mempool
from mempool import Buddy

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def hcs():
    return Buddy(4 * GiB, min_block=MiB, max_block=4 * GiB, fanout=4)


# ---- hcsshim's pool -------------------------------------------------------------
def test_hcsshim_seven_classes():
    b = hcs()
    assert b.num_classes == 7
    assert [b.class_size(k) for k in range(7)] == [MiB * 4**k for k in range(7)]
    assert b.class_of(1) == 0 and b.class_of(MiB) == 0 and b.class_of(MiB + 1) == 1
    assert b.class_of(6 * MiB) == 2  # hcsshim: 6 MiB takes a 16 MiB region
    assert b.class_of(4 * GiB) == 6
    assert b.segments() == [(0, 4 * GiB, False)]


def test_hcsshim_4096_blocks_in_order():
    b = hcs()
    assert [b.alloc(MiB) for _ in range(4096)] == [i * MiB for i in range(4096)]
    assert b.available == 0 and b.largest_free == 0 and len(b) == 4096
    with pytest.raises(mempool.OutOfSpace):
        b.alloc(1)
    b.check()


def test_hcsshim_three_blocks_merge_back():
    b = hcs()
    offs = [b.alloc(MiB) for _ in range(3)]
    assert offs == [0, MiB, 2 * MiB]
    # split all the way down: 3 free siblings at each of classes 1..5, one at class 0
    assert b.stats().free_ranges == 1 + 3 * 5
    for o in offs:
        b.free(o)
    assert b.segments() == [(0, 4 * GiB, False)]
    assert b.stats().free_ranges == 1 and b.largest_free == 4 * GiB
    with pytest.raises(mempool.NotAllocated):
        b.free(offs[0])  # second free of the same block
    b.check()


def test_hcsshim_request_over_largest_class():
    b = hcs()
    with pytest.raises(mempool.OutOfSpace, match="max_block = 4294967296") as ei:
        b.alloc(4 * GiB + 1)
    assert ei.value.size == 4 * GiB + 1
    a = b.alloc(MiB)
    with pytest.raises(mempool.OutOfSpace, match="largest block class"):
        b.realloc(a, 4 * GiB + 1)
    with pytest.raises(mempool.OutOfSpace, match="largest block class"):
        b.alloc_many([MiB, 8 * GiB])
    assert len(b) == 1
    b.check()


def test_size_of_and_internal_fragmentation():
    b = hcs()
    a = b.alloc(6 * MiB)
    assert b.size_of(a) == 16 * MiB
    c = b.alloc(1)
    st = b.stats()
    assert st.used == 17 * MiB and st.internal_fragmentation == 17 * MiB - (6 * MiB + 1)
    b.free(a)
    assert b.stats().internal_fragmentation == MiB - 1
    b.free(c)
    assert b.stats().internal_fragmentation == 0


# ---- classes and carving ---------------------------------------------------------
def test_default_max_block_is_largest_class_that_fits():
    b = Buddy(100 * KiB, min_block=4 * KiB)
    assert b.max_block == 64 * KiB and b.num_classes == 5 and b.fanout == 2
    # 100 KiB = 64 + 32 + 4 KiB: carved greedily from offset 0
    assert b.segments() == [(0, 64 * KiB, False), (64 * KiB, 32 * KiB, False),
                            (96 * KiB, 4 * KiB, False)]
    assert b.capacity == 100 * KiB and b.available == 100 * KiB


def test_tail_below_min_block_is_unusable():
    b = Buddy(10_000, min_block=4096)
    assert b.capacity == 8192 and b.available == 8192
    assert b.segments() == [(0, 8192, False)]
    assert b.stats().capacity == 8192


def test_several_top_level_blocks_never_merge_with_each_other():
    b = Buddy(3 * 4096, min_block=1024, max_block=4096, fanout=4)
    assert b.segments() == [(0, 4096, False), (4096, 4096, False), (8192, 4096, False)]
    a = [b.alloc(4096) for _ in range(3)]
    assert a == [0, 4096, 8192]
    for o in a:
        b.free(o)
    assert b.stats().free_ranges == 3 and b.largest_free == 4096
    b.check()


def test_lowest_offset_within_class_not_across_classes():
    b = Buddy(64, min_block=8)
    a, c, d = b.alloc(8), b.alloc(8), b.alloc(16)  # 0, 8, 16; free: 32 (class 2)
    assert (a, c, d) == (0, 8, 16)
    b.free(c)  # class 0 has 8 free; class 2 has 32
    assert b.alloc(8) == 8  # the smallest class that holds it, even at a higher offset
    b.free(a)
    assert b.alloc(16) == 32  # class 1 empty: split the 32 block, not the free 8 at 0
    b.check()


def test_class_helpers_and_bad_classes():
    b = Buddy(1 << 20, min_block=64, fanout=8)
    assert [b.class_size(k) for k in range(b.num_classes)] == [64, 512, 4096, 32768, 262144]
    assert b.class_of(65) == 1 and b.class_of(512) == 1 and b.class_of(262144) == 4
    for bad, exc in [(-1, ValueError), (5, ValueError), (2**70, ValueError), (1.0, TypeError),
                     ("0", TypeError)]:
        with pytest.raises(exc):
            b.class_size(bad)
    for bad, exc in [(0, ValueError), (-3, ValueError), (262145, ValueError),
                     (2**64, ValueError), (2.0, TypeError)]:
        with pytest.raises(exc):
            b.class_of(bad)
    with pytest.raises(ValueError, match="largest class"):
        b.class_of(1 << 19)


# ---- alignment ---------------------------------------------------------------------
def test_blocks_are_aligned_to_their_size():
    b = Buddy(1 << 16, min_block=16)
    for n in (1, 17, 100, 1000, 5000):
        off = b.alloc(n)
        assert off % b.size_of(off) == 0


def test_align_above_class_size_takes_an_aligned_block():
    b = Buddy(1 << 16, min_block=64)
    assert b.alloc(64) == 0
    assert b.alloc(64) == 64
    # the smallest non-empty class whose blocks are 1024-aligned, split down to 64 bytes
    off = b.alloc(64, align=1024)
    assert off == 1024 and b.size_of(off) == 64
    assert b.alloc(64, align=128) == 128  # class 1 (128 bytes) has a free block at 128
    b.check()


def test_align_does_not_scan_smaller_classes():
    b = Buddy(1024, min_block=64)
    x = b.alloc(64)
    b.alloc(64)
    b.alloc(64)  # 0, 64, 128; class 0 has 192 free
    b.free(x)  # class 0: 0 and 192 free; 0 is 128-aligned but class 0 is not searched
    assert b.alloc(64, align=128) == 256  # the lowest block of class 2 (256 bytes), split
    assert b.alloc(64) == 0
    b.check()


def test_huge_align_only_offset_zero():
    b = Buddy(1 << 16, min_block=64)
    assert b.alloc(64, align=1 << 40) == 0
    with pytest.raises(mempool.OutOfSpace):
        b.alloc(64, align=1 << 40)
    b.check()


# ---- realloc -------------------------------------------------------------------------
def test_realloc_same_class_in_place():
    b = Buddy(1 << 16, min_block=64)
    a = b.alloc(100)
    assert b.realloc(a, 128) == a and b.realloc(a, 65) == a
    assert b.stats().internal_fragmentation == 128 - 65


def test_realloc_shrink_splits_off_tail_buddies():
    b = Buddy(1024, min_block=64)
    a = b.alloc(1024)
    assert b.realloc(a, 100) == 0
    assert b.segments() == [(0, 128, True), (128, 128, False), (256, 256, False),
                            (512, 512, False)]
    b.free(a)
    assert b.segments() == [(0, 1024, False)]
    b.check()


def test_realloc_grows_in_place_into_free_buddies():
    b = Buddy(1024, min_block=64)
    a = b.alloc(64)
    assert b.realloc(a, 512) == 0
    assert b.segments() == [(0, 512, True), (512, 512, False)]
    b.check()


def test_realloc_moves_when_buddy_taken():
    b = Buddy(1024, min_block=64)
    a = b.alloc(64)
    b.alloc(64)
    new = b.realloc(a, 200)
    assert new == 256 and b.size_of(new) == 256
    assert (0, 64, False) in b.segments()
    b.check()


def test_realloc_moves_into_the_block_its_own_free_would_make():
    # span 256 = [a 64][b 64][free 128]; a 256 request fits only once b is gone
    b = Buddy(256, min_block=64)
    x, y = b.alloc(64), b.alloc(64)
    b.free(x)  # [free 64][y 64][free 128]
    assert b.realloc(y, 256) == 0  # overlaps the old block: the caller uses memmove
    assert b.segments() == [(0, 256, True)]
    b.check()


def test_failed_realloc_changes_nothing():
    b = Buddy(256, min_block=64)
    x, y = b.alloc(64), b.alloc(64)
    unchanged(b, lambda: b.realloc(y, 256), mempool.OutOfSpace)
    c = Buddy(512, min_block=64)
    c.alloc(256)
    x, y = c.alloc(64), c.alloc(64)  # [256 used][x][y][free 128]
    c.free(x)
    unchanged(c, lambda: c.realloc(y, 256, align=512), mempool.OutOfSpace)
    assert c.realloc(y, 256) == 256


# ---- reset, snapshot, pickle ------------------------------------------------------
def test_reset_keeps_peaks():
    b = Buddy(1 << 16, min_block=64)
    for n in (100, 200, 3000):
        b.alloc(n)
    b.reset()
    st = b.stats()
    assert (st.used, st.live, st.free_ranges, st.largest_free) == (0, 0, 1, 1 << 16)
    assert st.peak_used == 128 + 256 + 4096 and st.high_water > 0
    b.check()


def test_snapshot_and_pickle_round_trip():
    b = Buddy(1 << 16, min_block=64, fanout=4)
    offs = [b.alloc(n) for n in (100, 7, 3000, 42)]
    b.free(offs[1])
    r = Buddy.restore(b.snapshot())
    assert r.segments() == b.segments() and r.stats() == b.stats()
    assert (r.min_block, r.max_block, r.fanout) == (64, 1 << 16, 4)
    r.free(offs[0])
    assert b.size_of(offs[0]) == 256
    t = pickle.loads(pickle.dumps(b))
    assert type(t) is Buddy and t.segments() == b.segments()
    t.check()


def test_corrupted_snapshots_are_refused_or_work():
    # other kinds, truncated and crafted bytes: tests/test_bad_input.py
    b = Buddy(8192, min_block=64, fanout=4)
    for n in (64, 300, 1000, 64, 2000):
        b.alloc(n)
    b.free(64)
    assert corrupted_restores(Buddy, b.snapshot(), 5, check_alloc_free) > 100


def test_segments_cover_the_span_and_alloc_many():
    b = Buddy(10_000, min_block=16)
    rng = np.random.default_rng(3)
    offs = [b.alloc(int(rng.integers(1, 300))) for _ in range(20)]
    for o in offs[::3]:
        b.free(o)
    assert b.capacity == 10_000
    assert_tiles(b.segments(), 10_000, min_size=16)
    many = b.alloc_many([16, 16, 16])
    b.free_many(many)
    b.check()


def test_in_registry_and_repr():
    assert mempool.STRATEGIES["buddy"] is Buddy
    b = Buddy(1 << 20)
    assert b.strategy == "buddy" and repr(b) == "<mempool.Buddy capacity=1048576 used=0 live=0>"


def test_constructor_by_keyword():
    b = Buddy(capacity=4096, min_block=1, max_block=None)
    assert b.num_classes == 13 and b.alloc(1) == 0


def test_min_block_one_and_one_block_pool():
    b = Buddy(1, min_block=1)
    assert b.alloc(1) == 0
    with pytest.raises(mempool.OutOfSpace):
        b.alloc(1)
    b.free(0)
    b.check()
