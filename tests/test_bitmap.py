"""Bitmap: the BitSetAllocator scenarios and its fixed defects, next fit and first
fit, alignment, realloc, reset, snapshots.  Bad input, for every strategy:
tests/test_bad_input.py."""

import pickle

import numpy as np
import pytest
from helpers import assert_tiles, check_alloc_free, corrupted_restores, unchanged

import mempool
from mempool import Bitmap


def cursor(s):
    return int.from_bytes(s.snapshot()[64:72], "little")  # mp_head_t.cursor, in blocks


# ---- sizing (the seed allocated nothing below 64 blocks) --------------------------
@pytest.mark.parametrize("blocks", [1, 2, 63, 64, 65, 127, 128, 129])
def test_every_block_is_allocatable(blocks):
    s = Bitmap(blocks * 8, 8)
    assert [s.alloc(8) for _ in range(blocks)] == [8 * i for i in range(blocks)]
    with pytest.raises(mempool.OutOfSpace):
        s.alloc(1)
    assert s.available == 0 and s.largest_free == 0
    s.check()


def test_one_block_pool():
    s = Bitmap(1, 1)
    assert s.alloc(1) == 0 and s.size_of(0) == 1
    s.free(0)
    assert Bitmap(100, 100).alloc(100) == 0


def test_rounding_and_tail():
    s = Bitmap(1000, 64)
    assert s.capacity == 960 and s.blocks == 15 and s.block_size == 64
    a = s.alloc(100)
    assert s.size_of(a) == 128 and s.stats().internal_fragmentation == 28
    assert s.segments() == [(0, 128, True), (128, 832, False)]


def test_default_block_size_and_any_block_size():
    assert Bitmap(1 << 20).block_size == 16
    s = Bitmap(240, 24)
    assert [s.alloc(30), s.alloc(1)] == [0, 48]


# ---- runs crossing words, next fit, first fit ---------------------------------------
def test_runs_cross_words():
    s = Bitmap(200, 1, first_fit=True)
    assert s.alloc(60) == 0
    assert s.alloc(10) == 60  # blocks 60..69 straddle words 0 and 1
    assert s.alloc(130) == 70  # three words
    s.free(60)
    assert s.alloc(10) == 60
    s.check()


def test_next_fit_continues_after_last_run_and_wraps():
    s = Bitmap(100, 1)
    a, b, c = s.alloc(10), s.alloc(10), s.alloc(10)
    assert (a, b, c) == (0, 10, 20) and cursor(s) == 30
    s.free(a)
    assert s.alloc(5) == 30  # next fit does not go back to the hole at 0
    assert s.alloc(65) == 35  # up to the very end: cursor wraps to 0
    assert cursor(s) == 0
    assert s.alloc(10) == 0  # wrapped round
    s.check()


def test_wrap_from_cursor_one():
    t = Bitmap(10, 1)
    t.alloc(1)
    t.alloc(9)  # ends at the last block: the cursor wraps to 0
    assert cursor(t) == 0
    t.free(0)
    assert t.alloc(1) == 0 and cursor(t) == 1  # blocks 1..9 are used
    t.free(0)
    assert t.alloc(1) == 0  # nothing at or after 1: the run before the cursor


def test_first_fit_takes_lowest_run():
    s = Bitmap(100, 1, first_fit=True)
    a = s.alloc(10)
    s.alloc(10)
    s.free(a)
    assert s.alloc(5) == 0 and s.alloc(5) == 5 and s.alloc(5) == 20
    assert cursor(s) == 0


def test_search_skips_holes_too_small():
    s = Bitmap(64 * 3, 1, first_fit=True)
    offs = [s.alloc(1) for _ in range(192)]
    for o in offs[10:13] + offs[70:75] + offs[130:140]:
        s.free(o)
    assert s.alloc(8) == 130
    assert s.alloc(4) == 70
    s.check()


# ---- alignment from offset 0 -----------------------------------------------------------
def test_alignment_measured_from_offset_zero():
    s = Bitmap(4096, 16, first_fit=True)
    assert s.alloc(1) == 0
    assert s.alloc(16, align=256) == 256
    assert s.alloc(16, align=16) == 16  # align <= block size: free
    assert s.alloc(100, align=64) == 64  # crosses no used block: 64..176
    s.check()


def test_alignment_with_odd_block_size():
    s = Bitmap(24 * 100, 24, first_fit=True)
    assert s.alloc(1) == 0
    off = s.alloc(1, align=16)  # offsets are multiples of 24: every 2nd block is 16-aligned
    assert off == 48
    assert s.alloc(1, align=64) == 192  # lcm(24, 64) = 192
    s.check()


def test_alignment_across_words_for_long_runs():
    s = Bitmap(1000, 1, first_fit=True)
    s.alloc(1)
    assert s.alloc(100, align=128) == 128
    assert s.alloc(300, align=256) == 256
    with pytest.raises(mempool.OutOfSpace):
        s.alloc(500, align=512)  # 512 + 500 > 1000 and 0 is taken


# ---- realloc ---------------------------------------------------------------------------
def test_realloc_in_place_and_shrink():
    s = Bitmap(1024, 16, first_fit=True)
    a = s.alloc(32)
    assert s.realloc(a, 100) == a  # the following blocks are free
    assert s.size_of(a) == 112
    assert s.realloc(a, 20) == a  # the tail goes back
    assert s.segments() == [(0, 32, True), (32, 992, False)]
    assert s.realloc(a, 17) == a and s.stats().internal_fragmentation == 15


def test_realloc_moves_and_may_overlap():
    s = Bitmap(100, 1, first_fit=True)
    a, b, c, _ = s.alloc(10), s.alloc(10), s.alloc(10), s.alloc(10)
    s.free(a)
    assert s.realloc(b, 15) == 0  # freed first, then the lowest run: overlaps itself
    assert s.segments()[:3] == [(0, 15, True), (15, 5, False), (20, 10, True)]
    assert s.realloc(c, 50) == 40  # moved up past d: the old run is given back
    assert s.segments() == [(0, 15, True), (15, 15, False), (30, 10, True), (40, 50, True),
                            (90, 10, False)]
    s.check()


def test_failed_grow_keeps_the_original():
    # the seed had already freed it
    s = Bitmap(30, 1)
    s.alloc(10)
    b = s.alloc(10)
    s.alloc(10)
    unchanged(s, lambda: s.realloc(b, 25), mempool.OutOfSpace)
    assert s.size_of(b) == 10


# ---- reset, snapshot, pickle, corruption ------------------------------------------------
def test_reset_snapshot_pickle():
    s = Bitmap(5000, 8)
    offs = [s.alloc(n) for n in (100, 7, 300, 42)]
    s.free(offs[1])
    r = Bitmap.restore(s.snapshot())
    assert r.segments() == s.segments() and r.stats() == s.stats()
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is Bitmap and t.segments() == s.segments() and t.first_fit is False
    s.reset()
    st = s.stats()
    assert (st.used, st.live, st.free_ranges, cursor(s)) == (0, 0, 1, 0)
    assert st.peak_used == 104 + 8 + 304 + 48 and st.high_water > 0
    assert s.alloc(4992) == 0


def test_corrupted_snapshots_are_refused_or_work():
    # other kinds, truncated and crafted bytes: tests/test_bad_input.py
    s = Bitmap(1000, 8)
    for n in (8, 100, 33, 200, 9):
        s.alloc(n)
    s.free(8)
    assert corrupted_restores(Bitmap, s.snapshot(), 9, check_alloc_free) > 100


def test_segments_cover_the_span():
    s = Bitmap(10_000, 16)
    rng = np.random.default_rng(3)
    offs = [s.alloc(int(rng.integers(1, 300)), int(2 ** rng.integers(0, 8))) for _ in range(30)]
    for o in offs[::3]:
        s.free(o)
    assert s.capacity == 10_000
    assert_tiles(s.segments(), 10_000, min_size=16)


def test_in_registry():
    assert mempool.STRATEGIES["bitmap"] is Bitmap and Bitmap(64).strategy == "bitmap"
