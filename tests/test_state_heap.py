"""Heap against a plain Python model: check() after every step.

The model knows the Heap's routing rules (which size goes to which slab class,
fragment run or the TLSF, see heap.c) and keeps the live ranges with their
size_of, requested size and the allocator that holds them.  It cannot predict the
TLSF's placement, so it checks what must hold of any placement: aligned, inside
the span, disjoint, size_of as the route rounds it (or the documented fallbacks),
counters and the memory map equal to the model's, realloc in place exactly when
the rules say so, no OutOfSpace for a size <= largest_free, and a failed call
that changed nothing visible.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

import mempool

FRAG = 256
ALIGNS = st.sampled_from([1, 1, 1, 2, 16, 32, 64, 128, 256, 512, 4096])
PAGE_SIZES = st.sampled_from([4096, 4096, 8192, 16384, 65536])


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def frag_max(page_size: int) -> int:
    """Longest fragment run served, in fragments."""
    return min(16, page_size // 1024)


def route(size: int, align: int, page_size: int) -> tuple[str, int]:
    """(allocator, rounded size) of a request, as heap.c routes it."""
    if align <= 256 and size <= 256:
        return "class", align_up(size, max(align, 16))
    if align <= 256:
        n = -(-size // FRAG)
        if n <= frag_max(page_size) and (n * FRAG - size) * 8 <= size:
            return "fragments", n * FRAG
    return "tlsf", size


def natural_align(n: int) -> int:
    return n & -n


class HeapMachine(RuleBasedStateMachine):
    ranges = Bundle("ranges")
    max_blocks: int | None = None
    grow: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.h: mempool.Heap | None = None
        self.live: dict[int, tuple[int, int, str]] = {}  # off -> (size_of, requested, served_by)

    # ---- helpers ------------------------------------------------------------------
    def observed(self):
        return self.h.stats(), self.h.segments()

    def check_new_range(self, off: int, size: int, align: int) -> tuple[int, int, str]:
        h, ps = self.h, self.h.page_size
        sz, kind = h.size_of(off), h.served_by(off)
        assert off % align == 0, (off, align)
        assert 0 <= off and off + sz <= h.capacity
        for o, (n, _, _) in self.live.items():
            assert off + sz <= o or o + n <= off, f"[{off}, +{sz}) overlaps [{o}, +{n})"
        want_kind, want = route(size, align, ps)
        assert h.size_class(size, align) == want
        if kind == "tlsf":
            assert sz == size
        else:
            # its own route, or the spill to a larger class / fragment run (< 256 B wasted)
            assert sz >= size and sz - size < 256
            if kind == "class":
                assert sz % 16 == 0 and sz <= 256 and off % natural_align(sz) == 0
            else:
                assert sz % FRAG == 0 and sz <= frag_max(ps) * FRAG and off % FRAG == 0
            if kind == want_kind:
                assert sz >= want
        return sz, size, kind

    # ---- rules ----------------------------------------------------------------------
    @precondition(lambda self: self.h is None)
    @rule(capacity=st.one_of(st.integers(1, 1 << 17), st.integers(1, 20000)), page_size=PAGE_SIZES)
    def create(self, capacity: int, page_size: int) -> None:
        self.h = mempool.Heap(capacity, page_size=page_size, max_blocks=self.max_blocks,
                               grow=self.grow)
        assert self.h.page_size == page_size and self.h.capacity == capacity

    @precondition(lambda self: self.h is not None)
    @rule(target=ranges,
          size=st.one_of(st.integers(1, 300), st.integers(1, 5000), st.integers(1, 1 << 17)),
          align=ALIGNS)
    def alloc(self, size: int, align: int):
        h = self.h
        before = self.observed()
        try:
            off = h.alloc(size, align)
        except mempool.OutOfSpace as e:
            assert self.observed() == before, "a failed alloc changed the heap"
            assert e.size == size and e.available == before[0].available
            if align == 1 and "max_blocks" not in str(e):
                assert size > before[0].largest_free, "refused a size <= largest_free"
            return None
        self.live[off] = self.check_new_range(off, size, align)
        return off

    @precondition(lambda self: self.h is not None)
    @rule(off=consumes(ranges))
    def free(self, off):
        if off is None or off not in self.live:
            return
        self.h.free(off)
        del self.live[off]

    @precondition(lambda self: self.h is not None)
    @rule(off=ranges, delta=st.sampled_from([1, 8, 16, 100, 256, 4096]))
    def bad_free(self, off, delta: int):
        if off is None:
            return
        bad = off if off not in self.live else off + delta
        if bad in self.live:
            return
        before = self.observed()
        for call in (self.h.free, self.h.size_of, lambda o: self.h.realloc(o, 8)):
            try:
                call(bad)
            except mempool.NotAllocated:
                pass
            else:
                raise AssertionError(f"offset {bad} is not live but was accepted")
            assert self.observed() == before

    @precondition(lambda self: self.h is not None)
    @rule(target=ranges, off=consumes(ranges),
          size=st.one_of(st.integers(1, 300), st.integers(1, 5000)), align=st.sampled_from([1, 1, 64]))
    def realloc(self, off, size: int, align: int):
        h = self.h
        if off is None or off not in self.live:
            return None
        old_sz, _, kind = self.live[off]
        want_kind, want = route(size, align, h.page_size)
        before = self.observed()
        try:
            new = h.realloc(off, size, align)
        except mempool.OutOfSpace:
            assert self.observed() == before, "a failed realloc changed the heap"
            return off
        del self.live[off]
        self.live[new] = self.check_new_range(new, size, 1)
        new_sz, _, _new_kind = self.live[new]
        if kind == "class":
            if want_kind == "class" and want == old_sz:
                assert new == off and new_sz == old_sz, "same class: must stay in place"
            else:
                assert new != off, "another class or allocator: must move"
        elif kind == "fragments" and want_kind == "fragments" and want <= old_sz:
            assert new == off and new_sz == want, "a fragment run shrinks in place"
        elif kind == "tlsf" and want_kind == "tlsf" and size <= old_sz:
            assert new == off and new_sz == size, "a TLSF range shrinks in place"
        if new != off:
            assert new % align == 0
        return new

    @precondition(lambda self: self.h is not None)
    @rule()
    def reset(self) -> None:
        hw = self.h.high_water
        self.h.reset()
        self.live.clear()
        assert self.h.segments() == [(0, self.h.capacity, False)]
        assert self.h.high_water == hw

    @precondition(lambda self: self.h is not None)
    @rule()
    def snapshot_restore(self) -> None:
        data = self.h.snapshot()
        self.h = mempool.Heap.restore(data)
        assert self.h.snapshot() == data

    @precondition(lambda self: self.h is not None)
    @rule()
    def largest_free_is_served(self) -> None:
        """alloc(largest_free) succeeds (on a copy), and so does every smaller size."""
        lf = self.h.largest_free
        if not lf:
            return
        for size in {lf, max(1, lf // 2), min(lf, 200), min(lf, 700), 1}:
            copy = mempool.Heap.restore(self.h.snapshot())
            try:
                off = copy.alloc(size)
            except mempool.OutOfSpace as e:
                assert "max_blocks" in str(e), f"alloc({size}) failed, largest_free {lf}"
                continue
            assert copy.size_of(off) >= size
            copy.check()

    @precondition(lambda self: self.h is not None)
    @rule(sizes=st.lists(st.integers(1, 2000), max_size=8))
    def alloc_many_free_many(self, sizes) -> None:
        before = self.observed()
        try:
            offs = self.h.alloc_many(sizes)
        except mempool.OutOfSpace:
            assert self.observed() == before
            return
        assert len(offs) == len(sizes)
        self.h.free_many(offs)
        stats, _ = self.observed()
        assert stats.used == before[0].used and stats.live == before[0].live

    # ---- after every step --------------------------------------------------------------
    @invariant()
    def consistent(self) -> None:
        h = self.h
        if h is None:
            return
        h.check()
        s = h.stats()
        assert len(h) == s.live == len(self.live)
        assert s.used == h.used == sum(n for n, _, _ in self.live.values())
        assert s.internal_fragmentation == sum(n - r for n, r, _ in self.live.values())
        assert s.available == h.capacity - s.used
        assert s.peak_used >= s.used and s.high_water <= h.capacity
        segs = h.segments()
        assert [(o, n) for o, n, a in segs if a] == sorted((o, v[0]) for o, v in self.live.items())
        pos, prev_free = 0, False
        for o, n, a in segs:
            assert o == pos and n > 0
            assert not (prev_free and not a), "adjacent free segments are not merged"
            pos, prev_free = o + n, not a
        assert pos == h.capacity
        assert s.free_ranges == sum(1 for _, _, a in segs if not a)
        for o, (_, _, kind) in self.live.items():
            assert h.served_by(o) == kind


TestHeap = HeapMachine.TestCase


class FewNodes(HeapMachine):
    """A TLSF node budget small enough to run out (MP_ENONODES paths): fixed."""

    max_blocks = 6
    grow = False


class FewNodesGrowing(HeapMachine):
    """The same small budget, growing whenever it runs out."""

    max_blocks = 6


TestHeapFewNodes = FewNodes.TestCase
TestHeapFewNodesGrowing = FewNodesGrowing.TestCase
