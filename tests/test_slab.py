"""Slab: exact behaviour (rounding, LIFO reuse, pages, arrays, tsload's defects absent),
state round trips.  Bad input, for every strategy: tests/test_bad_input.py."""

import pickle

import pytest
from helpers import assert_tiles, check_alloc_check, corrupted_restores, unchanged

import mempool
from mempool import Slab


# ---- geometry and rounding ----------------------------------------------------------
@pytest.mark.parametrize(
    "item_size, align, stride",
    [(1, 1, 1), (2, 2, 2), (6, 2, 6), (7, 1, 7), (8, 8, 8), (12, 8, 16), (20, 8, 24),
     (24, 8, 24), (48, 16, 48), (64, 64, 64), (96, 32, 96), (100, 8, 104), (4096, 4096, 4096)],
)
def test_item_alignment_and_stride(item_size, align, stride):
    s = Slab(1 << 16, item_size, page_size=4096 * 2)
    assert (s.item_size, s.item_align, s.item_stride) == (item_size, align, stride)
    assert s.items_per_page == 8192 // stride and s.pages == 8
    a, b = s.alloc(item_size), s.alloc(1)
    assert (a, b) == (0, stride)
    assert a % align == 0 and b % align == 0
    assert s.size_of(a) == s.size_of(b) == stride  # the stride is the item's size
    assert s.used == 2 * stride
    assert s.stats().internal_fragmentation == 2 * stride - item_size - 1


def test_defaults_and_properties():
    s = Slab(1 << 20)
    assert (s.item_size, s.page_size, s.items_per_page, s.pages) == (64, 65536, 1024, 16)
    assert s.free_pages == 16 and s.free_items == 16 * 1024 == s.stats().free_ranges
    assert s.strategy == "slab" and mempool.STRATEGIES["slab"] is Slab
    assert repr(s) == "<mempool.Slab capacity=1048576 used=0 live=0>"
    assert s.largest_free == 64 and s.available == 1 << 20


def test_items_fill_a_page_from_offset_zero():
    # tsload's slab bitmap overlapped item 0; here metadata is out of band: every byte
    # of the page's items is handed out, from offset 0
    s = Slab(4096, 64, page_size=1024)
    offs = [s.alloc(64) for _ in range(16)]
    assert offs == list(range(0, 1024, 64))
    assert s.alloc(64) == 1024  # the next page
    assert s.free_pages == 2


def test_page_slack_and_capacity_tail_are_never_handed_out():
    s = Slab(1000, 24, page_size=200)  # 8 items a page (192 bytes), 5 pages, no tail
    offs = [s.alloc(1) for _ in range(40)]
    assert offs == [p * 200 + i * 24 for p in range(5) for i in range(8)]
    unchanged(s, lambda: s.alloc(1), mempool.OutOfSpace, "no free item")
    segs = s.segments()
    assert (192, 8, False) in segs and s.available == 1000 - 40 * 24
    t = Slab(1050, 24, page_size=200)  # 50 bytes of tail
    assert t.pages == 5 and t.segments() == [(0, 1050, False)]


# ---- reuse --------------------------------------------------------------------------------
def test_freed_items_are_reused_last_in_first_out():
    s = Slab(1 << 16, 32, page_size=1024)
    a, b, _, d = (s.alloc(32) for _ in range(4))
    s.free(b)
    s.free(d)
    s.free(a)
    assert [s.alloc(1) for _ in range(4)] == [a, d, b, 4 * 32]


def test_the_page_freed_into_last_serves_first():
    s = Slab(1 << 16, 64, page_size=256)  # 4 items a page
    offs = [s.alloc(64) for _ in range(8)]  # pages 0 and 1 full
    s.free(offs[1])  # page 0
    s.free(offs[6])  # page 1: most recent
    assert s.alloc(64) == offs[6]
    assert s.alloc(64) == offs[1]
    assert s.alloc(64) == 512  # nothing free: the lowest page of the pool


def test_empty_page_goes_back_to_the_pool_lowest_first():
    s = Slab(4096, 64, page_size=1024)
    a = [s.alloc(64) for _ in range(17)]  # page 0 full, page 1 has one
    assert s.free_pages == 2
    for off in a[:16]:
        s.free(off)
    assert s.free_pages == 3  # page 0 is back
    assert s.alloc(64) == 1024 + 64  # page 1 still has free items: it serves first
    s.free(a[16])
    s.free(1024 + 64)
    assert s.free_pages == 4 and s.segments() == [(0, 4096, False)]
    assert s.alloc(64) == 0  # the lowest pool page
    s.check()


def test_full_slab_raises_out_of_space_not_abort():
    s = Slab(2048, 512, page_size=1024)
    offs = [s.alloc(512) for _ in range(4)]
    assert offs == [0, 512, 1024, 1536]
    with pytest.raises(mempool.OutOfSpace, match="no free item") as ei:
        s.alloc(100)
    assert ei.value.size == 100 and ei.value.available == 0 and ei.value.largest_free == 0
    s.free(offs[2])
    assert s.alloc(1) == offs[2]


def test_size_and_align_limits():
    s = Slab(1 << 16, 48, page_size=4096)  # align 16
    unchanged(s, lambda: s.alloc(49), mempool.OutOfSpace, "larger than the item size 48")
    unchanged(s, lambda: s.alloc(8, 32), mempool.OutOfSpace,
              "align 32 is above the item alignment 16")
    assert s.alloc(48, 16) == 0 and s.alloc(1, 1) == 48
    with pytest.raises(mempool.OutOfSpace) as ei:
        s.alloc(1000)
    assert ei.value.size == 1000 and ei.value.largest_free == 48


# ---- arrays ----------------------------------------------------------------------------
def test_array_inside_a_page_and_free_of_its_start():
    s = Slab(1 << 16, 16, page_size=256)  # 16 items a page
    a = s.alloc(16)
    arr = s.alloc_array(5)
    assert arr == 16 and s.size_of(arr) == 80 and len(s) == 2
    assert s.segments()[:2] == [(0, 16, True), (16, 80, True)]
    assert s.stats().internal_fragmentation == 0
    unchanged(s, lambda: s.free(arr + 16), mempool.NotAllocated)  # an inner item
    unchanged(s, lambda: s.free_array(arr, 4), ValueError, "has 5 items")
    s.free(arr)  # a plain free frees the whole array
    assert len(s) == 1 and s.used == 16
    # its items are reused one by one, the array's first item first
    assert [s.alloc(1) for _ in range(5)] == [16, 32, 48, 64, 80]
    s.free(a)


def test_array_takes_a_fresh_page_when_the_tail_is_short():
    s = Slab(4096, 16, page_size=256)
    s.alloc_array(10)
    assert s.alloc_array(10) == 256  # 6 uncarved items in page 0 are too few
    assert s.alloc_array(6) == 256 + 160  # the first partial page is page 1 now
    assert s.alloc(16) == 160  # page 0 still has uncarved items


def test_array_from_scattered_free_items_when_no_page_is_free():
    s = Slab(512, 16, page_size=256)  # 2 pages of 16 items
    offs = [s.alloc(16) for _ in range(32)]
    for k in (3, 4, 5, 20, 21, 22, 23):
        s.free(offs[k])
    assert s.alloc_array(4) == offs[20]  # the lowest run of 4: page 1
    assert s.alloc_array(3) == offs[3]
    unchanged(s, lambda: s.alloc_array(2), mempool.OutOfSpace, "no page has 2 free items in a row")


def test_no_lost_cells_with_arrays_across_32_item_words():
    # tsload's multi-cell arrays took a cell too many and freed the wrong one
    s = Slab(1 << 14, 8, page_size=1024)  # 128 items a page
    a = s.alloc_array(33)
    b = s.alloc_array(95)  # exactly fills page 0
    assert (a, b) == (0, 33 * 8)
    assert s.alloc(8) == 1024
    before = s.free_items
    s.free(a)
    assert s.free_items == before + 33  # all 33 came back, no more
    assert [s.alloc(8) for _ in range(33)] == list(range(0, 33 * 8, 8))
    assert s.alloc(8) == 1024 + 8  # page 0 is full again
    for off in [b, 1024, 1024 + 8, *range(0, 33 * 8, 8)]:
        s.free(off)
    assert s.free_items == 16 * 128 and s.segments() == [(0, 1 << 14, False)]
    c, d = s.alloc_array(64), s.alloc_array(64)
    assert (c, d) == (0, 512) and s.alloc(1) == 1024
    s.check()


def test_multi_page_array_takes_whole_contiguous_pages():
    s = Slab(1 << 20, 64)  # 16 pages of 1024 items
    x = s.alloc(64)  # page 0
    arr = s.alloc_array(1500)  # 1500 * 64 bytes: 2 pages
    assert arr == 65536 and s.size_of(arr) == 1500 * 64
    assert s.free_pages == 13 and len(s) == 2
    assert s.free_items == 13 * 1024 + 1023
    unchanged(s, lambda: s.free(arr + 65536), mempool.NotAllocated)  # its second page
    unchanged(s, lambda: s.free(arr + 64), mempool.NotAllocated)
    unchanged(s, lambda: s.free_array(arr, 1499), ValueError, "1500 items")
    assert s.alloc_array(1025) == 3 * 65536
    s.free_array(arr, 1500)
    assert s.free_pages == 13
    assert s.alloc_array(2048) == 65536  # the freed pages are the lowest run
    s.free(x)
    s.check()


def test_multi_page_array_uses_the_page_slack():
    s = Slab(40, 3, page_size=10)  # 4 pages of 3 items (9 bytes + 1 of slack)
    assert s.items_per_page == 3 and s.pages == 4
    assert s.alloc_array(13) == 0 and s.size_of(0) == 39
    unchanged(s, lambda: s.alloc_array(1), mempool.OutOfSpace)
    s.free(0)
    unchanged(s, lambda: s.alloc_array(14), mempool.OutOfSpace, "more items than the 13")


def test_multi_page_array_needs_a_contiguous_run():
    s = Slab(4 * 1024, 64, page_size=1024)
    a, b = s.alloc_array(16), s.alloc_array(16)  # pages 0 and 1
    c = s.alloc_array(16)  # page 2
    s.free(b)
    unchanged(s, lambda: s.alloc_array(17), mempool.OutOfSpace, "no run of enough free pages")
    s.free(c)
    assert s.alloc_array(17) == 1024
    s.free(a)


def test_alloc_array_of_one_is_a_single_item():
    s = Slab(4096, 32, page_size=1024)
    a = s.alloc_array(1)
    assert s.size_of(a) == 32 and s.stats().internal_fragmentation == 0
    assert s.realloc(a, 10) == a
    s.free_array(a, 1)
    assert s.alloc(5) == a


# ---- realloc, reset, state ----------------------------------------------------------------
def test_realloc_in_place_only():
    s = Slab(4096, 40, page_size=1024)  # align 8, stride 40
    a = s.alloc(10)
    assert s.realloc(a, 40) == a and s.stats().internal_fragmentation == 0
    assert s.realloc(a, 1, align=4096) == a  # in place: align only matters for a move
    unchanged(s, lambda: s.realloc(a, 41), mempool.OutOfSpace, "item size 40")
    arr = s.alloc_array(3)
    unchanged(s, lambda: s.realloc(arr, 40), ValueError, "array")


def test_reset_frees_everything_and_keeps_peaks():
    s = Slab(8192, 64, page_size=1024)
    s.alloc_array(20)
    s.alloc(1)
    s.reset()
    st = s.stats()
    assert (st.used, st.live, st.free_ranges) == (0, 0, 128) and s.free_pages == 8
    assert st.peak_used == 21 * 64  # 16 items a page: the array spans pages 0 and 1
    assert st.high_water == 2048 + 64 and s.alloc(1) == 0
    s.check()


def test_snapshot_restore_and_pickle():
    s = Slab(1 << 16, 24, page_size=1024)
    offs = [s.alloc(20) for _ in range(50)] + [s.alloc_array(7), s.alloc_array(100)]
    for o in offs[::3]:
        s.free(o)
    data = s.snapshot()
    assert len(data) == s.state_size
    r = Slab.restore(data)
    assert r.segments() == s.segments() and r.stats() == s.stats()
    assert r.alloc(1) == s.alloc(1)  # the same LIFO order
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is Slab and t.snapshot() == s.snapshot()
    t.free(offs[1])
    t.check()
    assert s.size_of(offs[1]) == 24


def test_corrupted_snapshots_are_refused_or_work():
    # other kinds, garbage, truncated and crafted bytes: tests/test_bad_input.py
    s = Slab(1 << 13, 16, page_size=512)
    for _ in range(40):
        s.alloc(16)
    s.alloc_array(5)
    s.free(32)
    assert corrupted_restores(Slab, s.snapshot(), 5, check_alloc_check) > 350


def test_segments_cover_the_span_and_stats():
    s = Slab(10_000, 20, page_size=960)  # 40 items of 24 bytes a page, 10 pages, 400 tail
    offs = [s.alloc(20) for _ in range(50)] + [s.alloc_array(30)]
    for o in offs[::4]:
        s.free(o)
    assert_tiles(s.segments(), 10_000)
    st = s.stats()
    assert st.used == s.used == (50 - 13 + 30) * 24
    assert st.internal_fragmentation == (37 + 30) * 4
    assert st.largest_free == 20 and st.available == 10_000 - st.used


def test_alloc_many_free_many():
    s = Slab(1 << 14, 32, page_size=1024)
    offs = s.alloc_many([1, 32, 16])
    assert offs.tolist() == [0, 32, 64]
    unchanged(s, lambda: s.alloc_many([8, 8, 33]), mempool.OutOfSpace)
    s.free_many(offs)
    assert len(s) == 0 and s.segments() == [(0, 1 << 14, False)]


def test_large_capacity_is_ordinary():
    s = Slab(1 << 32, 4096, page_size=1 << 21)  # 4 GiB of 4 KiB items, state ~8 MiB
    assert s.pages == 2048 and s.alloc(4096) == 0
    big = s.alloc_array(3 * 512)  # 3 pages
    assert big == 1 << 21 and s.size_of(big) == 3 << 21
    s.check()


def test_smallest_slab():
    s = Slab(1, 1, page_size=1)
    assert s.alloc(1) == 0
    unchanged(s, lambda: s.alloc(1), mempool.OutOfSpace, "no free item")
    unchanged(s, lambda: s.alloc_array(2), mempool.OutOfSpace)
    s.free(0)
    assert s.segments() == [(0, 1, False)]
    s.check()


def test_a_refused_array_reports_its_size_as_an_int_whatever_the_count_was():
    # the message and OutOfSpace.size came from the caller's own `count * stride`: a
    # NumPy scalar overflowed to 0 (a RuntimeWarning under -W error, outside the error
    # tree), an object with __index__ and __mul__ put its own answer there
    import warnings

    import numpy as np

    class N:
        def __index__(self):
            return 10**6

        def __mul__(self, other):
            return "not a number"

    s = Slab(1 << 16, 40, page_size=1024)
    before = s.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for count, size in ((np.int64(2**62), 2**62 * 40), (N(), 10**6 * 40)):
            with pytest.raises(mempool.OutOfSpace, match=f"an array of {size // 40} items, "
                               f"{size} bytes: more items than the 1638") as e:
                s.alloc_array(count)
            assert type(e.value.size) is int and e.value.size == size
    assert s.snapshot() == before


@pytest.mark.parametrize("cls", [mempool.TLSF, mempool.Buddy, mempool.Bump, mempool.Heap])
def test_out_of_space_size_is_an_int_for_an_index_object(cls):
    class Big:
        def __index__(self):
            return 2**70

        def __str__(self):
            return "Big()"

    with pytest.raises(mempool.OutOfSpace, match=f"cannot allocate {2**70} bytes") as e:
        cls(1 << 16).alloc(Big())
    assert type(e.value.size) is int and e.value.size == 2**70
