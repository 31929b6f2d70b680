"""Exact behaviour of Heap: routing and rounding, placement, pages moving between
classes, fragments, TLSF ranges, realloc in place and moved, tsload's seed
scenarios (its defects must not come back), snapshot / pickle / reset.  Bad input,
for every strategy: tests/test_bad_input.py."""

import itertools
import pickle

import helpers
import numpy as np
import pytest

import mempool
from mempool import Heap

KiB = 1024


# ---- routing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, align, page_size, want, kind",
    [
        (1, 1, 4096, 16, "class"),
        (16, 1, 4096, 16, "class"),
        (17, 1, 4096, 32, "class"),
        (255, 1, 4096, 256, "class"),
        (256, 1, 4096, 256, "class"),
        (8, 64, 4096, 64, "class"),  # rounded to the alignment
        (100, 128, 4096, 128, "class"),
        (1, 256, 4096, 256, "class"),
        (8, 512, 4096, 8, "tlsf"),  # alignment above 256: TLSF
        (257, 1, 4096, 257, "tlsf"),  # 512 would waste half of it
        (456, 1, 4096, 512, "fragments"),  # waste 56 <= 456 / 8
        (455, 1, 4096, 455, "tlsf"),  # waste 57 > 455 / 8
        (512, 64, 4096, 512, "fragments"),
        (1024, 1, 4096, 1024, "fragments"),  # 4 KiB pages: runs up to 1 KiB
        (1025, 1, 4096, 1025, "tlsf"),
        (2048, 1, 4096, 2048, "tlsf"),
        (2048, 1, 8192, 2048, "fragments"),  # 8 KiB pages: up to 2 KiB
        (4096, 1, 16384, 4096, "fragments"),  # 16 KiB and up: up to 4 KiB
        (4096, 1, 65536, 4096, "fragments"),
        (4097, 1, 65536, 4097, "tlsf"),
        (10**6, 1, 4096, 10**6, "tlsf"),
    ],
)
def test_routing(size, align, page_size, want, kind):
    h = Heap(1 << 22, page_size=page_size)
    assert h.size_class(size, align) == want
    off = h.alloc(size, align)
    assert h.size_of(off) == want and h.served_by(off) == kind
    assert off % align == 0
    h.check()


@pytest.mark.parametrize("k", range(1, 17))
@pytest.mark.parametrize("align", [1, 16, 32, 64, 128, 256])
def test_class_items_are_aligned(k, align):
    h = Heap(1 << 20)
    size = 16 * k - 5
    offs = [h.alloc(size, align) for _ in range(40)]
    cls = h.size_class(size, align)
    natural = cls & -cls
    assert all(h.size_of(o) == cls for o in offs)
    assert all(o % natural == 0 and o % align == 0 for o in offs)
    h.check()


# ---- placement ---------------------------------------------------------------------------
def test_first_allocations_are_packed():
    h = Heap(1 << 20)
    assert [h.alloc(16) for _ in range(3)] == [0, 16, 32]  # item 0 is usable (tsload: bitmap on it)
    assert h.alloc(20) == 4096  # class 32 takes the next page
    assert h.alloc(512) == 8192  # a fragment page
    assert h.alloc(5000) == 12288  # the TLSF, exact
    assert h.segments() == [
        (0, 16, True), (16, 16, True), (32, 16, True), (48, 4048, False),
        (4096, 32, True), (4128, 4064, False),
        (8192, 512, True), (8704, 3584, False),
        (12288, 5000, True), (17288, (1 << 20) - 17288, False),
    ]
    s = h.stats()
    assert (s.used, s.live, s.internal_fragmentation) == (48 + 32 + 512 + 5000, 6, 12)
    assert s.high_water == 17288  # pages count up to their end
    h.check()


def test_pages_move_between_classes():
    h = Heap(1 << 20)
    items = [h.alloc(16) for _ in range(257)]  # a page holds 256 items of 16 B
    assert items[255] == 4080 and items[256] == 4096
    assert h.alloc(5000) == 8192  # the TLSF
    for o in items:
        h.free(o)
    # the first page went back to the TLSF, the second is the spare
    assert h.segments() == [(0, 8192, False), (8192, 5000, True), (13192, (1 << 20) - 13192, False)]
    assert h.alloc(32) == 4096  # class 32 takes the spare
    assert h.alloc(48) == 0  # class 48 gets the page that went back
    h.check()


def test_an_empty_heap_keeps_no_spare_but_at_offset_zero():
    h = Heap(1 << 20)
    a, b = h.alloc(16), h.alloc(32)
    assert (a, b) == (0, 4096)
    h.free(a)  # page 0 is the spare
    h.free(b)  # the heap is empty: page 4096 would be the spare, but it would cut the span
    assert h.alloc(5000) == 0  # one free range again: the TLSF starts at 0
    h.free(0)
    assert h.alloc(16) == 0 and h.alloc(5000) == 4096
    h.free(4096)
    h.free(0)  # the spare at 0 cuts nothing: it is kept
    assert h.alloc(64) == 0 and h.served_by(0) == "class"
    h.check()


def test_empty_page_goes_back_when_the_room_is_needed():
    h = Heap(8192)
    items = [h.alloc(16) for _ in range(512)]
    with pytest.raises(mempool.OutOfSpace):
        h.alloc(16)  # tsload aborted here
    for o in items:
        h.free(o)
    assert h.largest_free == 8192  # the spare counts as free
    assert h.alloc(8192) == 0  # ... and goes back to the TLSF for this
    assert h.served_by(0) == "tlsf"
    h.check()


def test_a_request_the_spare_cannot_help_leaves_it_alone():
    h = Heap(65536)
    x, y = h.alloc(16), h.alloc(32)
    assert (x, y) == (0, 4096)
    h.free(y)  # page 4096 is the spare
    before = h.snapshot()
    with pytest.raises(mempool.OutOfSpace):
        h.alloc(2**17)  # more than the spare's page and its free neighbours could give
    assert h.snapshot() == before  # the spare stays: nothing changed
    # (it used to go back to the TLSF: these came out at 4096, 9096, 14096)
    assert [h.alloc(5000) for _ in range(3)] == [8192, 13192, 18192]
    assert h.alloc(64) == 4096 and h.served_by(4096) == "class"  # the spare, taken
    h.check()


def test_a_realloc_grows_into_the_spare_and_a_hopeless_one_leaves_it():
    h = Heap(65536)
    assert h.alloc(16) == 0                  # a class page at 0
    r = h.alloc(5000)
    b = h.alloc(32)                          # a class page right after the TLSF range
    assert r == 4096 and 9096 <= b < 9096 + 64 and h.served_by(b) == "class"
    end = b + 4096                           # the page's end
    assert h.alloc(65536 - end) == end       # the rest: only [9096, b) is free
    h.free(b)                                # page b is the spare
    before = h.snapshot()
    with pytest.raises(mempool.OutOfSpace):
        h.realloc(r, 2**17)                  # nothing could hold it: nothing changes
    assert h.snapshot() == before
    assert h.realloc(r, end - r) == r        # in place, into the free run and the spare
    assert h.stats().used == 16 + (end - r) + (65536 - end)
    h.check()


def test_capacity_below_one_page_uses_the_tlsf():
    h = Heap(100)
    a, b = h.alloc(16), h.alloc(20)
    assert (a, b) == (0, 16) and h.size_of(b) == 20 and h.served_by(b) == "tlsf"
    h = Heap(1)
    assert h.alloc(1) == 0
    with pytest.raises(mempool.OutOfSpace):
        h.alloc(1)
    h.free(0)
    h.check()


def test_full_heap_raises_and_spills_into_larger_classes():
    h = Heap(4 * 4096)
    offs = [h.alloc(16) for _ in range(3 * 256)]  # three pages of 16 B items
    big = h.alloc(256)  # class 256 takes the last page
    assert h.served_by(big) == "class"
    offs += [h.alloc(256) for _ in range(15)]
    # no page, no TLSF room: a 16 B request spills into no class with room
    with pytest.raises(mempool.OutOfSpace):
        h.alloc(16)
    h.free(offs[-1])  # one 256 B item free
    assert h.largest_free == 256
    o = h.alloc(16)  # served by the class with room
    assert h.size_of(o) == 256 and h.served_by(o) == "class"
    assert h.stats().internal_fragmentation == 240
    h.check()


# ---- fragments ---------------------------------------------------------------------------
def test_fragment_runs_are_exact_and_reuse_holes():
    h = Heap(1 << 20)
    a, b, c = (h.alloc(n * 256) for n in (2, 3, 4))  # tsload took a cell too many
    assert (a, b, c) == (0, 512, 1280)
    assert [h.size_of(o) for o in (a, b, c)] == [512, 768, 1024]
    assert all(h.served_by(o) == "fragments" for o in (a, b, c))
    assert h.segments()[:4] == [(0, 512, True), (512, 768, True), (1280, 1024, True),
                                (2304, (1 << 20) - 2304, False)]  # merged with the TLSF
    h.free(b)
    assert h.alloc(768) == 512  # the hole is reused
    assert h.alloc(1024) == 2304 and h.alloc(1024) == 4096  # a second fragment page
    h.check()


def test_fragment_realloc_in_place():
    h = Heap(1 << 20)
    a = h.alloc(1024)
    b = h.alloc(512)
    assert (a, b) == (0, 1024)
    assert h.realloc(a, 512) == a and h.size_of(a) == 512  # shrink frees the tail
    c = h.alloc(512)
    assert c == 512
    h.free(c)
    assert h.realloc(a, 1024) == a and h.size_of(a) == 1024  # grows back in place
    with pytest.raises(mempool.NotAllocated):
        h.free(a + 256)
    assert h.used == 1536
    assert h.realloc(b, 1024) == b  # the rest of the page is free
    assert h.realloc(b, 5000) != b  # beyond fragments: moves to the TLSF
    h.check()


# ---- realloc -------------------------------------------------------------------------------
def test_realloc_in_class_in_place_and_across_classes_moves():
    h = Heap(1 << 20)
    o = h.alloc(20)
    assert h.realloc(o, 30) == o and h.size_of(o) == 32
    assert h.stats().internal_fragmentation == 2
    assert h.realloc(o, 17) == o
    assert h.stats().internal_fragmentation == 15
    p = h.realloc(o, 40)  # class 48: moved
    assert p != o and h.size_of(p) == 48 and len(h) == 1
    q = h.realloc(p, 8)  # shrinking to another class moves too
    assert q != p and h.size_of(q) == 16 and len(h) == 1
    with pytest.raises(mempool.NotAllocated):
        h.free(p)
    h.check()


def test_realloc_tlsf_ranges():
    h = Heap(1 << 20)
    t = h.alloc(10000)
    assert h.served_by(t) == "tlsf"
    assert h.realloc(t, 6000) == t and h.size_of(t) == 6000  # shrink in place
    assert h.realloc(t, 9000) == t  # grow in place into the freed tail
    s = h.realloc(t, 100)  # to a class: moves into a page
    assert s != t and h.served_by(s) == "class" and h.size_of(s) == 112
    assert h.used == 112 and len(h) == 1
    h.check()


def test_realloc_never_leaks():
    # tsload's mp_realloc never shrank and leaked a block on every call
    h = Heap(1 << 20)
    rng = np.random.default_rng(7)
    o = h.alloc(100)
    for _ in range(2000):
        size = int(rng.choice([rng.integers(1, 300), rng.integers(1, 3000), rng.integers(1, 20000)]))
        o = h.realloc(o, size)
        assert len(h) == 1 and h.used == h.size_of(o) >= size
    h.free(o)
    assert h.used == 0 and h.segments() == [(0, 1 << 20, False)]
    h.check()


# ---- largest_free -------------------------------------------------------------------------
def test_every_size_up_to_largest_free_succeeds():
    rng = np.random.default_rng(3)
    for cap, ps in [(1 << 16, 4096), (50000, 16384), (3 * 4096 + 100, 4096)]:
        h = Heap(cap, page_size=ps)
        live = []
        for _ in range(400):
            if live and rng.random() < 0.45:
                h.free(live.pop(int(rng.integers(len(live)))))
            else:
                try:
                    live.append(h.alloc(int(rng.choice([rng.integers(1, 300), rng.integers(1, 6000)]))))
                except mempool.OutOfSpace as e:
                    assert e.size > e.largest_free
            lf = h.largest_free
            for size in {lf, lf // 2, min(lf, 100), min(lf, 600)} - {0}:
                c = Heap.restore(h.snapshot())
                c.alloc(size)
                c.check()
        h.check()


# ---- snapshot, pickle, reset, map -------------------------------------------------------------
def test_snapshot_pickle_reset():
    h = Heap(1 << 18, page_size=8192)
    offs = [h.alloc(n) for n in (10, 300, 600, 2048, 40000, 100)]
    data = h.snapshot()
    assert len(data) <= h.state_size  # the TLSF's nodes never handed out are left out
    r = Heap.restore(data)
    assert r.snapshot() == data and r.segments() == h.segments() and r.page_size == 8192
    p = pickle.loads(pickle.dumps(h))
    assert type(p) is Heap and p.stats() == h.stats()
    p.free(offs[2])
    assert h.size_of(offs[2]) == 2048 - 2048 + h.size_of(offs[2])  # the original is untouched
    hw = h.high_water
    h.reset()
    assert h.segments() == [(0, 1 << 18, False)] and len(h) == 0 and h.high_water == hw
    assert h.alloc(10) == 0
    h.check()


def test_segments_cover_the_span():
    h = Heap(100000)
    rng = np.random.default_rng(5)
    offs = [h.alloc(int(rng.integers(1, 3000))) for _ in range(30)]
    for o in offs[::3]:
        h.free(o)
    segs = h.segments()
    assert segs[0][0] == 0 and sum(n for _, n, _ in segs) == 100000
    assert all(a + n == b for (a, n, _), (b, _, _) in itertools.pairwise(segs))
    assert not any(not x[2] and not y[2] for x, y in itertools.pairwise(segs))


def test_corrupted_snapshots_are_refused():
    h = Heap(1 << 16)
    for n in (10, 20, 600, 5000):
        h.alloc(n)
    data = bytearray(h.snapshot())
    for pos in (0, 8, 16, 24, 120, 124, 160):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(mempool.CorruptionError):
            Heap.restore(bytes(bad))
    # other kinds, truncated and crafted bytes, for every strategy: tests/test_bad_input.py

    def works(r):
        r.alloc(16)
        r.check()

    helpers.corrupted_restores(Heap, bytes(data), 11, works, tries=300)  # never a crash


def test_constructor_by_keyword():
    h = Heap(capacity=100, page_size=8192, max_blocks=None)
    assert h.page_size == 8192 and h.strategy == "heap"
    assert mempool.STRATEGIES["heap"] is Heap
