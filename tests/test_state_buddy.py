"""Buddy against its model: every offset predicted, check() after every step."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, invariant, precondition, rule
from machines import PredictingMachine
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


class BuddyMachine(PredictingMachine):
    blocks = Bundle("blocks")
    # a failed alloc_many is undone (frees in reverse): the same state, though the pending
    # split chain may come back written into the bitmaps (a different snapshot of the same
    # state)
    batch_undo_exact = False

    @precondition(lambda self: self.s is None)
    @rule(p=buddy_params())
    def create(self, p) -> None:
        capacity, min_block, max_block, fanout = p
        self.s = mempool.Buddy(capacity, min_block=min_block, max_block=max_block, fanout=fanout)
        self.m = BuddyModel(capacity, min_block, max_block, fanout)
        assert self.s.num_classes == self.m.K and self.s.max_block == self.m.sizes[-1]

    @precondition(lambda self: self.s is not None)
    @rule(target=blocks, size=st.one_of(st.integers(1, 64), st.integers(1, 1 << 17)), align=ALIGNS)
    def alloc(self, size, align):
        got = self._alloc(size, align)
        if got is None:
            return None
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
        return self._realloc(off, size, align)

    @precondition(lambda self: self.s is not None)
    @rule(sizes=st.lists(st.integers(1, 300), max_size=6), align=ALIGNS)
    def alloc_many_free_many(self, sizes, align) -> None:
        self._alloc_many_free_many(sizes, align)

    @invariant()
    def consistent(self) -> None:
        if self.s is None:
            return
        self._consistent(len(self.m.live), self.m.used)


TestBuddy = BuddyMachine.TestCase
