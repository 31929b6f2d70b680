"""Bitmap against its model: every offset predicted (next fit and first fit),
check() after every step."""

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
from models_bb import BitmapModel

import mempool

ALIGNS = st.sampled_from([1, 1, 1, 2, 8, 16, 64, 256, 1024, 1 << 20])


class BitmapMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.s = None
        self.m = None

    @precondition(lambda self: self.s is None)
    @rule(block_size=st.sampled_from([1, 3, 8, 16, 24, 64, 4096]),
          blocks=st.one_of(st.integers(1, 70), st.integers(1, 600)),
          extra=st.integers(0, 5), first_fit=st.booleans())
    def create(self, block_size, blocks, extra, first_fit) -> None:
        capacity = blocks * block_size + min(extra, block_size - 1)
        self.s = mempool.Bitmap(capacity, block_size, first_fit=first_fit)
        self.m = BitmapModel(capacity, block_size, first_fit)
        assert self.s.blocks == blocks and self.s.first_fit == first_fit

    def _unchanged(self, fn, exc):
        before, snap = self.s.stats(), self.s.snapshot()
        try:
            fn()
        except exc:
            pass
        else:
            raise AssertionError("no exception")
        assert self.s.stats() == before and self.s.snapshot() == snap

    def _size(self, data_blocks, rest):
        return max(1, data_blocks * self.m.B - rest)

    @precondition(lambda self: self.s is not None)
    @rule(target=runs, nblocks=st.one_of(st.integers(1, 8), st.integers(1, 700)),
          rest=st.integers(0, 4095), align=ALIGNS)
    def alloc(self, nblocks, rest, align):
        size = self._size(nblocks, rest % self.m.B)
        want = self.m.alloc(size, align)
        if want is None:
            self._unchanged(lambda: self.s.alloc(size, align), mempool.OutOfSpace)
            return None
        got = self.s.alloc(size, align)
        assert got == want, (got, want)
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
        size = self._size(nblocks, rest % self.m.B)
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
        self.s = mempool.Bitmap.restore(data)
        assert self.s.snapshot() == data

    @precondition(lambda self: self.s is not None)
    @rule(sizes=st.lists(st.integers(1, 300), max_size=6), align=ALIGNS)
    def alloc_many_free_many(self, sizes, align) -> None:
        trial = copy.deepcopy(self.m)
        want = [trial.alloc(n, align) for n in sizes]
        if None in want:
            before, snap = self.s.stats(), self.s.snapshot()
            try:
                self.s.alloc_many(sizes, align)
            except mempool.OutOfSpace:
                pass
            else:
                raise AssertionError("alloc_many succeeded where the model fails")
            assert self.s.stats() == before and self.s.snapshot() == snap  # undone exactly
            return
        offs = self.s.alloc_many(sizes, align)
        assert offs.tolist() == want
        self.m = trial
        self.s.free_many(offs)
        for o in want:
            self.m.free_(o)

    def _cursor(self) -> int:
        return int.from_bytes(self.s.snapshot()[64:72], "little")  # mp_head_t.cursor

    @invariant()
    def consistent(self) -> None:
        if self.s is None:
            return
        s, m = self.s, self.m
        s.check()
        st_ = s.stats()
        assert len(s) == len(m.runs) == st_.live
        assert s.capacity == m.capacity
        assert st_.used == m.used_bytes and st_.available == m.capacity - m.used_bytes
        assert st_.internal_fragmentation == m.used_bytes - m.requested
        assert s.segments() == m.segments()
        assert st_.largest_free == m.largest_free()
        assert st_.free_ranges == m.free_ranges()
        assert st_.high_water == m.high_water
        assert st_.peak_used == m.peak_used
        assert self._cursor() == m.cursor


TestBitmap = BitmapMachine.TestCase
