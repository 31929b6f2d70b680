"""Bump against a plain Python model: every offset, pop and mark's validity predicted,
check() after every step, counters and memory map compared with the model.

The model says when a mark is valid in its own terms -- the entries under it are
still the bottom of the stack and no reset happened -- independently of how the
strategy encodes marks."""

from __future__ import annotations

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import mempool


class Entry:
    __slots__ = ("dead", "id", "off", "size")

    def __init__(self, id_: int, off: int, size: int):
        self.id, self.off, self.size, self.dead = id_, off, size, False


class BumpModel:
    def __init__(self, capacity: int, max_blocks: int):
        self.capacity, self.max_blocks = capacity, max_blocks
        self.stack: list[Entry] = []
        self.next_id = 0
        self.resets = 0

    @property
    def top(self) -> int:
        return self.stack[-1].off + self.stack[-1].size if self.stack else 0

    def live(self) -> dict[int, int]:
        return {e.off: e.size for e in self.stack if not e.dead}

    def find(self, off: int) -> int | None:
        for i, e in enumerate(self.stack):
            if e.off == off and not e.dead:
                return i
        return None

    def place(self, size: int, align: int) -> int | str:
        """The offset alloc returns, or the reason it fails."""
        at = -(-self.top // align) * align
        if at + size > self.capacity:
            return "no free range fits"
        if len(self.stack) >= self.max_blocks:
            return "max_blocks"
        return at

    def push(self, at: int, size: int) -> None:
        self.stack.append(Entry(self.next_id, at, size))
        self.next_id += 1

    def pop_to(self, d: int) -> None:
        while len(self.stack) > d or (self.stack and self.stack[-1].dead):
            self.stack.pop()

    def free(self, off: int) -> None:
        i = self.find(off)
        if i == len(self.stack) - 1:
            if i and self.stack[i - 1].dead:
                event("free of the top pops dead ranges below")
            self.pop_to(i)
        else:
            self.stack[i].dead = True

    def mark(self) -> tuple[tuple[int, ...], int]:
        return tuple(e.id for e in self.stack), self.resets

    def valid(self, mark: tuple[tuple[int, ...], int]) -> bool:
        ids, resets = mark
        return resets == self.resets and tuple(e.id for e in self.stack[: len(ids)]) == ids

    def segments(self) -> list[tuple[int, int, bool]]:
        out, pos = [], 0
        for e in self.stack:
            if e.dead:
                continue
            if e.off > pos:
                out.append((pos, e.off - pos, False))
            out.append((e.off, e.size, True))
            pos = e.off + e.size
        if pos < self.capacity:
            out.append((pos, self.capacity - pos, False))
        return out


ALIGNS = st.sampled_from([1, 1, 2, 8, 16, 64, 256])


class BumpMachine(RuleBasedStateMachine):
    ranges = Bundle("ranges")
    marks = Bundle("marks")

    @initialize(
        capacity=st.one_of(st.integers(1, 64), st.integers(512, 4096), st.integers(512, 4096)),
        max_blocks=st.one_of(st.none(), st.integers(1, 12)),
    )
    def create(self, capacity, max_blocks):
        if max_blocks is None:
            self.s = mempool.Bump(capacity, grow=False)
            max_blocks = min(max(capacity // 8192, 32), 1 << 20, capacity)
        else:
            self.s = mempool.Bump(capacity, max_blocks=max_blocks, grow=False)
        assert self.s.max_blocks == max_blocks
        self.m = BumpModel(capacity, max_blocks)

    def _unchanged(self, fn, exc, match=None):
        before, snap = self.s.stats(), self.s.snapshot()
        with pytest.raises(exc, match=match):
            fn()
        assert self.s.stats() == before and self.s.snapshot() == snap

    @rule(target=ranges, size=st.one_of(st.integers(1, 32), st.integers(1, 4096)), align=ALIGNS)
    def alloc(self, size, align):
        want = self.m.place(size, align)
        if isinstance(want, str):
            # the seed's defect: a failed allocation must leave the last range and marks
            self._unchanged(lambda: self.s.alloc(size, align), mempool.OutOfSpace, want)
            return None
        assert self.s.alloc(size, align) == want
        self.m.push(want, size)
        return want

    @rule(off=consumes(ranges))
    def free(self, off):
        if off is None or self.m.find(off) is None:
            return
        self.s.free(off)
        self.m.free(off)

    @rule(below=st.integers(0, 2))
    def free_near_top(self, below):
        """The bump pattern: free the top, or a live range just under it (which then
        waits, dead, for the top to go)."""
        live = [i for i, e in enumerate(self.m.stack) if not e.dead]
        if len(live) <= below:
            return
        off = self.m.stack[live[-1 - below]].off
        self.s.free(off)
        self.m.free(off)

    @rule()
    def free_under_then_top(self):
        """Free the live range under the top, then the top: both go, with any dead
        ranges under them, and the top falls to the end of what is left."""
        live = [i for i, e in enumerate(self.m.stack) if not e.dead]
        if len(live) < 2:
            return
        under, top = self.m.stack[live[-2]].off, self.m.stack[live[-1]].off
        for off in (under, top):
            self.s.free(off)
            self.m.free(off)
        assert self.s.depth == len(self.m.stack) <= live[-2]

    @rule(grow=st.integers(1, 64), align=ALIGNS)
    def grow_below_top(self, grow, align):
        """realloc of a range that is not the most recent: it moves when it grows."""
        live = [i for i, e in enumerate(self.m.stack) if not e.dead]
        if len(live) < 2:
            return
        e = self.m.stack[live[-2]]
        want = self.m.place(e.size + grow, align)
        if isinstance(want, str):
            self._unchanged(lambda: self.s.realloc(e.off, e.size + grow, align),
                            mempool.OutOfSpace, want)
            return
        event("realloc moved")
        assert self.s.realloc(e.off, e.size + grow, align) == want
        self.m.push(want, e.size + grow)
        e.dead = True

    @rule(off=ranges, delta=st.integers(0, 100))
    def bad_free(self, off, delta):
        if off is None:
            return
        bad = off + delta if self.m.find(off) is not None else off
        if self.m.find(bad) is not None:
            return
        self._unchanged(lambda: self.s.free(bad), mempool.NotAllocated)

    @rule(target=ranges, off=consumes(ranges), size=st.integers(1, 600), align=ALIGNS)
    def realloc(self, off, size, align):
        m = self.m
        i = None if off is None else m.find(off)
        if i is None:
            return None
        e = m.stack[i]
        if i == len(m.stack) - 1:  # the most recent range: in place or nothing
            if off + size > m.capacity:
                self._unchanged(lambda: self.s.realloc(off, size, align), mempool.OutOfSpace)
                return off
            assert self.s.realloc(off, size, align) == off
            e.size = size
            return off
        if size <= e.size:  # another range shrinks in place
            assert self.s.realloc(off, size, align) == off
            e.size = size
            return off
        want = m.place(size, align)  # ... and moves when it grows
        if isinstance(want, str):
            self._unchanged(lambda: self.s.realloc(off, size, align), mempool.OutOfSpace, want)
            return off
        assert self.s.realloc(off, size, align) == want
        event("realloc moved")
        m.push(want, size)
        e.dead = True
        return want

    @rule(target=marks)
    def mark(self):
        return self.s.mark(), self.m.mark()

    @rule(mark=marks)
    def rewind(self, mark):
        token, model_mark = mark
        if self.m.valid(model_mark):
            event("rewind to a valid mark")
            self.s.rewind(token)
            self.m.pop_to(len(model_mark[0]))
        else:
            event("rewind to a stale mark refused")
            self._unchanged(lambda: self.s.rewind(token), ValueError, "stale")

    @rule()
    def reset(self):
        self.s.reset()
        self.m.stack.clear()
        self.m.resets += 1

    @rule()
    def snapshot_restore(self):
        data = self.s.snapshot()
        self.s = mempool.Bump.restore(data)
        assert self.s.snapshot() == data

    @rule(sizes=st.lists(st.integers(1, 300), max_size=8), align=ALIGNS)
    def alloc_many_all_or_nothing(self, sizes, align):
        snap = self.s.snapshot()
        try:
            offs = self.s.alloc_many(sizes, align=align)
        except mempool.OutOfSpace:
            # undone by freeing in reverse and restoring the head: byte for byte
            assert self.s.snapshot() == snap
            return
        for size, off in zip(sizes, offs.tolist(), strict=True):
            assert off == self.m.place(size, align)
            self.m.push(off, size)

    @invariant()
    def consistent(self):
        s, m = self.s, self.m
        s.check()
        live = m.live()
        st_ = s.stats()
        assert len(s) == len(live) == st_.live
        assert s.used == sum(live.values()) and st_.internal_fragmentation == 0
        assert s.available == m.capacity - s.used
        assert s.segments() == m.segments()
        assert s.top == m.top and s.depth == len(m.stack)
        assert s.largest_free == m.capacity - m.top
        assert st_.free_ranges == sum(1 for *_, a in m.segments() if not a)
        for off, size in live.items():
            assert s.size_of(off) == size


TestBump = BumpMachine.TestCase
