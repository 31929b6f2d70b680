"""Bitmap against its model: every offset predicted (next fit and first fit),
check() after every step."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, invariant, precondition, rule
from machines import PredictingMachine
from models_bb import BitmapModel

import mempool

ALIGNS = st.sampled_from([1, 1, 1, 2, 8, 16, 64, 256, 1024, 1 << 20])


class BitmapMachine(PredictingMachine):
    runs = Bundle("runs")

    @precondition(lambda self: self.s is None)
    @rule(block_size=st.sampled_from([1, 3, 8, 16, 24, 64, 4096]),
          blocks=st.one_of(st.integers(1, 70), st.integers(1, 600)),
          extra=st.integers(0, 5), first_fit=st.booleans())
    def create(self, block_size, blocks, extra, first_fit) -> None:
        capacity = blocks * block_size + min(extra, block_size - 1)
        self.s = mempool.Bitmap(capacity, block_size, first_fit=first_fit)
        self.m = BitmapModel(capacity, block_size, first_fit)
        assert self.s.blocks == blocks and self.s.first_fit == first_fit

    def _size(self, data_blocks, rest):
        return max(1, data_blocks * self.m.B - rest)

    @precondition(lambda self: self.s is not None)
    @rule(target=runs, nblocks=st.one_of(st.integers(1, 8), st.integers(1, 700)),
          rest=st.integers(0, 4095), align=ALIGNS)
    def alloc(self, nblocks, rest, align):
        got = self._alloc(self._size(nblocks, rest % self.m.B), align)
        if got is None:
            return None
        assert got % align == 0
        assert self.s.size_of(got) == self.m.runs[got // self.m.B][0] * self.m.B
        return got

    @precondition(lambda self: self.s is not None)
    @rule(off=consumes(runs))
    def free(self, off) -> None:
        if off is None or off // self.m.B not in self.m.runs or off % self.m.B:
            return
        self.s.free(off)
        self.m.free_(off)

    @precondition(lambda self: self.s is not None)
    @rule(off=runs, delta=st.sampled_from([0, 1, 16]))
    def bad_free(self, off, delta) -> None:
        if off is None:
            return
        bad = off + delta
        if bad % self.m.B == 0 and bad // self.m.B in self.m.runs:
            return
        self._unchanged(lambda: self.s.free(bad), mempool.NotAllocated)
        self._unchanged(lambda: self.s.realloc(bad, 1), mempool.NotAllocated)

    @precondition(lambda self: self.s is not None)
    @rule(target=runs, off=consumes(runs),
          nblocks=st.one_of(st.integers(1, 8), st.integers(1, 700)),
          rest=st.integers(0, 4095), align=ALIGNS)
    def realloc(self, off, nblocks, rest, align):
        if off is None or off % self.m.B or off // self.m.B not in self.m.runs:
            return None
        return self._realloc(off, self._size(nblocks, rest % self.m.B), align)

    @precondition(lambda self: self.s is not None)
    @rule(sizes=st.lists(st.integers(1, 300), max_size=6), align=ALIGNS)
    def alloc_many_free_many(self, sizes, align) -> None:
        self._alloc_many_free_many(sizes, align)

    def _cursor(self) -> int:
        return int.from_bytes(self.s.snapshot()[64:72], "little")  # mp_head_t.cursor

    @invariant()
    def consistent(self) -> None:
        if self.s is None:
            return
        self._consistent(len(self.m.runs), self.m.used_bytes)
        assert self._cursor() == self.m.cursor


TestBitmap = BitmapMachine.TestCase
