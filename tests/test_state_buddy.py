"""Buddy against its model: every offset predicted, check() after every step."""

from __future__ import annotations

import copy

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)
from models_bb import BuddyModel

import mempool

ALIGNS = st.sampled_from([1, 1, 1, 2, 16, 64, 256, 1024, 4096, 1 << 20])


@st.composite
def buddy_params(draw):
    min_block = draw(st.sampled_from([1, 2, 8, 64]))
    fanout = draw(st.sampled_from([2, 2, 4, 8, 128]))
    top = draw(st.integers(0, 14 if fanout == 2 else 4 if fanout < 128 else 1))
    capacity = draw(st.integers(min_block, min(min_block * fanout ** top * 3 + 5, 1 << 16)))
    max_block = None
    if draw(st.booleans()):
        sizes = [min_block * fanout**k for k in range(20) if min_block * fanout**k <= capacity]
        max_block = draw(st.sampled_from(sizes))
    return capacity, min_block, max_block, fanout


class BuddyMachine(RuleBasedStateMachine):
    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.s = None
        self.m = None

    @precondition(lambda self: self.s is None)
    @rule(p=buddy_params())
    def create(self, p) -> None:
        capacity, min_block, max_block, fanout = p
        self.s = mempool.Buddy(capacity, min_block=min_block, max_block=max_block, fanout=fanout)
        self.m = BuddyModel(capacity, min_block, max_block, fanout)
        assert self.s.num_classes == self.m.K and self.s.max_block == self.m.sizes[-1]

    def _unchanged(self, fn, exc):
        before, snap = self.s.stats(), self.s.snapshot()
        try:
            fn()
        except exc:
            pass
        else:
            raise AssertionError("no exception")
        assert self.s.stats() == before and self.s.snapshot() == snap

    @precondition(lambda self: self.s is not None)
    @rule(target=blocks, size=st.one_of(st.integers(1, 64), st.integers(1, 1 << 17)), align=ALIGNS)
    def alloc(self, size, align):
        want = self.m.alloc(size, align)
        if want is None:
            self._unchanged(lambda: self.s.alloc(size, align), mempool.OutOfSpace)
            return None
        got = self.s.alloc(size, align)
        assert got == want, (got, want)
        assert self.s.size_of(got) == self.m.sizes[self.m.live[got][0]]
        return got

    @precondition(lambda self: self.s is not None)
    @rule(off=consumes(blocks))
    def free(self, off) -> None:
        if off is None or off not in self.m.live:
            return
        self.s.free(off)
        self.m.free_(off)

    @precondition(lambda self: self.s is not None)
    @rule(off=blocks, delta=st.sampled_from([0, 1]))
    def bad_free(self, off, delta) -> None:
        if off is None:
            return
        bad = off + delta
        if bad in self.m.live:
            return
        self._unchanged(lambda: self.s.free(bad), mempool.NotAllocated)
        self._unchanged(lambda: self.s.size_of(bad), mempool.NotAllocated)

    @precondition(lambda self: self.s is not None)
    @rule(target=blocks, off=consumes(blocks), size=st.integers(1, 1 << 15), align=ALIGNS)
    def realloc(self, off, size, align):
        if off is None or off not in self.m.live:
            return None
        want = self.m.realloc(off, size, align)
        if want is None:
            self._unchanged(lambda: self.s.realloc(off, size, align), mempool.OutOfSpace)
            return off
        got = self.s.realloc(off, size, align)
        assert got == want, (got, want)
        return got

    @precondition(lambda self: self.s is not None)
    @rule()
    def reset(self) -> None:
        self.s.reset()
        self.m.reset()

    @precondition(lambda self: self.s is not None)
    @rule()
    def snapshot_restore(self) -> None:
        data = self.s.snapshot()
        self.s = mempool.Buddy.restore(data)
        assert self.s.snapshot() == data

    @precondition(lambda self: self.s is not None)
    @rule(sizes=st.lists(st.integers(1, 300), max_size=6), align=ALIGNS)
    def alloc_many_free_many(self, sizes, align) -> None:
        trial = copy.deepcopy(self.m)
        want = [trial.alloc(n, align) for n in sizes]
        if None in want:
            before, segs = self.s.stats(), self.s.segments()
            try:
                self.s.alloc_many(sizes, align)
            except mempool.OutOfSpace:
                pass
            else:
                raise AssertionError("alloc_many succeeded where the model fails")
            # undone (frees in reverse): the same state, though the pending split chain may
            # come back written into the bitmaps (a different snapshot of the same state)
            assert self.s.stats() == before and self.s.segments() == segs
            return
        offs = self.s.alloc_many(sizes, align)
        assert offs.tolist() == want
        self.m = trial
        self.s.free_many(offs)
        for o in want:
            self.m.free_(o)

    @invariant()
    def consistent(self) -> None:
        if self.s is None:
            return
        s, m = self.s, self.m
        s.check()
        st_ = s.stats()
        assert len(s) == len(m.live) == st_.live
        assert s.capacity == m.capacity
        assert st_.used == m.used and st_.available == m.capacity - m.used
        assert st_.internal_fragmentation == m.used - m.requested
        assert s.segments() == m.segments()
        assert st_.largest_free == m.largest_free()
        assert st_.free_ranges == m.free_ranges()
        assert st_.peak_used == m.peak_used and st_.high_water == m.high_water


TestBuddy = BuddyMachine.TestCase
