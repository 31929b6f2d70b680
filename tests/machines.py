"""Hypothesis state machines for the strategies, against plain Python models.

exact_machine(factory): a whole machine for an exact strategy.  Its model keeps the
live ranges {offset: size}.  After every step the machine calls check() and compares
the strategy's counters and memory map with the model.  For exact strategies (TLSF,
BestFit) the model also knows the free gaps, so it can say whether a failed request
really had nowhere to go; for BestFit it predicts the exact offset.

PredictingMachine: the rules and checks shared by the machines whose model predicts
every offset and every failure (Bitmap, Buddy: models_bb.py); each subclass adds its
create / alloc / free / realloc rules and its invariant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import mempool

ALIGNS = st.sampled_from([1, 1, 1, 2, 8, 16, 64, 256, 4096])


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class Model:
    """Live ranges of an exact strategy over [0, capacity)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.live: dict[int, int] = {}

    def gaps(self) -> list[tuple[int, int]]:
        out, pos = [], 0
        for off in sorted(self.live):
            if off > pos:
                out.append((pos, off - pos))
            pos = off + self.live[off]
        if pos < self.capacity:
            out.append((pos, self.capacity - pos))
        return out

    def fits(self, size: int, align: int) -> list[tuple[int, int]]:
        return [(s, n) for s, n in self.gaps() if n - (align_up(s, align) - s) >= size]

    def best_fit(self, size: int, align: int) -> int | None:
        cands = self.fits(size, align)
        if not cands:
            return None
        s, _ = min(cands, key=lambda g: (g[1], g[0]))
        return align_up(s, align)

    def segments(self) -> list[tuple[int, int, bool]]:
        segs = [(o, n, True) for o, n in self.live.items()] + [(s, n, False) for s, n in self.gaps()]
        return sorted(segs)

    def next_gap(self, off: int) -> int:
        end = off + self.live[off]
        for s, n in self.gaps():
            if s == end:
                return n
        return 0


class SnapshotMachine(RuleBasedStateMachine):
    """A machine over a strategy self.s (None until a rule makes it) whose state may be
    swapped at any step for restore(snapshot()): the rest of the run goes on with it."""

    s: mempool.Strategy | None = None

    @precondition(lambda self: self.s is not None)
    @rule()
    def snapshot_restore(self) -> None:
        data = self.s.snapshot()
        self.s = type(self.s).restore(data)
        assert self.s.snapshot() == data


def exact_machine(factory: Callable[[int], mempool.Strategy], capacity_max: int = 1 << 16,
                  predicts_offsets: bool = False) -> type[RuleBasedStateMachine]:
    """A state machine class for an exact strategy made by factory(capacity)."""

    class ExactMachine(SnapshotMachine):
        ranges = Bundle("ranges")
        handles = Bundle("handles")

        def __init__(self) -> None:
            super().__init__()
            self.s: mempool.Strategy | None = None
            self.m: Model | None = None
            self.by_handle: dict[int, int] = {}  # offset -> handle (alloc_handle's ranges)

        def refused(self, call, what: str) -> None:
            """call() raises NotAllocated and leaves the strategy as it was."""
            before = self.s.stats()
            try:
                call()
            except mempool.NotAllocated:
                pass
            else:
                raise AssertionError(f"{what} succeeded")
            assert self.s.stats() == before

        @precondition(lambda self: self.s is None)
        @rule(capacity=st.integers(1, capacity_max))
        def create(self, capacity: int) -> None:
            self.s = factory(capacity)
            self.m = Model(capacity)

        def _take(self, size: int, align: int, by_handle: bool):
            """alloc(size, align), or alloc_handle: (offset, handle or None), or None when
            it refused (and rightly: no free range holds it, nothing changed)."""
            s, m = self.s, self.m
            before = s.stats()
            try:
                off, h = s.alloc_handle(size, align) if by_handle else (s.alloc(size, align), None)
            except mempool.OutOfSpace as e:
                assert not m.fits(size, align), "refused a request that a free range could hold"
                if not by_handle:
                    assert e.size == size and e.available == before.available
                assert s.stats() == before
                return None
            assert off % align == 0
            assert 0 <= off and off + size <= m.capacity
            if predicts_offsets:
                assert off == m.best_fit(size, align)
            assert any(g <= off and off + size <= g + n for g, n in m.gaps())
            m.live[off] = size
            return off, h

        @precondition(lambda self: self.s is not None)
        @rule(target=ranges, size=st.one_of(st.integers(1, 64), st.integers(1, capacity_max)),
              align=ALIGNS)
        def alloc(self, size: int, align: int):
            got = self._take(size, align, by_handle=False)
            if got is None:
                return mempool_nothing()
            assert self.s.size_of(got[0]) == size
            return got[0]

        @precondition(lambda self: self.s is not None and hasattr(self.s, "alloc_handle"))
        @rule(target=handles, size=st.one_of(st.integers(1, 64), st.integers(1, capacity_max)),
              align=ALIGNS)
        def alloc_by_handle(self, size: int, align: int):
            # the handle form places as alloc does; the offset calls do not see its range
            got = self._take(size, align, by_handle=True)
            if got is None:
                return mempool_nothing()
            off, h = got
            assert h >> 32 == off
            self.by_handle[off] = h
            return h

        @precondition(lambda self: self.s is not None)
        @rule(h=consumes(handles))
        def free_by_handle(self, h):
            if h is None:
                return
            off = h >> 32
            if self.by_handle.get(off) != h:  # freed (or reset) since: refused, unchanged
                self.refused(lambda: self.s.free_handle(h),
                             f"free_handle({h:#x}) of a freed range")
                return
            self.s.free_handle(h)
            del self.m.live[off], self.by_handle[off]

        @precondition(lambda self: self.s is not None)
        @rule(off=consumes(ranges))
        def free(self, off):
            if off is None or off not in self.m.live:
                return
            if off in self.by_handle:  # (its range went back and was handed out by handle)
                self.refused(lambda: self.s.free(off),
                             f"free({off}) of a range allocated by handle")
                return
            self.s.free(off)
            del self.m.live[off]

        @precondition(lambda self: self.s is not None)
        @rule(off=ranges)
        def double_or_interior_free(self, off):
            if off is None:
                return
            bad = off if off not in self.m.live else off + 1 if self.m.live[off] > 1 else None
            if bad is None or bad in self.m.live:
                return
            self.refused(lambda: self.s.free(bad), f"free({bad}) of a range that is not live")

        @precondition(lambda self: self.s is not None)
        @rule(target=ranges, off=consumes(ranges), size=st.integers(1, 1 << 12), align=ALIGNS)
        def realloc(self, off, size: int, align: int):
            s, m = self.s, self.m
            if off is None or off not in m.live or off in self.by_handle:
                return mempool_nothing()
            old = m.live[off]
            in_place = size <= old or m.next_gap(off) >= size - old
            before = s.stats()
            try:
                new = s.realloc(off, size, align)
            except mempool.OutOfSpace:
                assert not in_place and size > old
                assert not m.fits(size, align), "a free range could have held the move"
                prev_gap = next((n for g, n in m.gaps() if g + n == off), 0)
                start, end = off - prev_gap, off + old + m.next_gap(off)
                assert end - align_up(start, align) < size, "moving down would have fit"
                assert s.stats() == before
                return off
            if in_place:
                assert new == off, "realloc moved although it could stay"
            else:
                assert new % align == 0
            del m.live[off]
            assert not any(o < new + size and new < o + n for o, n in m.live.items())
            assert new + size <= m.capacity
            m.live[new] = size
            return new

        @precondition(lambda self: self.s is not None)
        @rule()
        def reset(self) -> None:
            self.s.reset()
            self.m.live.clear()
            self.by_handle.clear()

        @precondition(lambda self: self.s is not None)
        @rule(sizes=st.lists(st.integers(1, 256), max_size=8))
        def alloc_many_free_many(self, sizes) -> None:
            before = self.s.stats()
            try:
                offs = self.s.alloc_many(sizes)
            except mempool.OutOfSpace:
                assert self.s.stats() == before
                return
            assert len(offs) == len(sizes)
            self.s.free_many(offs)
            assert self.s.used == before.used and len(self.s) == before.live

        @invariant()
        def consistent(self) -> None:
            if self.s is None:
                return
            s, m = self.s, self.m
            s.check()
            assert len(s) == len(m.live)
            assert s.used == sum(m.live.values())
            assert s.available == m.capacity - s.used
            assert s.segments() == m.segments()
            gaps = m.gaps()
            assert s.largest_free == max((n for _, n in gaps), default=0)
            assert s.stats().free_ranges == len(gaps)
            for off in list(self.by_handle)[:4]:  # the offset calls do not see them
                self.refused(lambda: s.size_of(off), f"size_of({off}) of a range allocated by handle")

    return ExactMachine


def mempool_nothing():
    """What a rule returns into the bundle when it made nothing."""
    return None


class PredictingMachine(SnapshotMachine):
    """Shared part of a machine over a strategy self.s and a model self.m whose
    alloc(size, align) / realloc(off, size, align) return the offset the strategy must
    give, or None where it must raise OutOfSpace; free_(off) and reset() follow it."""

    # a failed alloc_many leaves the snapshot byte for byte as it was; False: the same
    # stats() and memory map (set where the undo may write the same state differently)
    batch_undo_exact = True

    def __init__(self) -> None:
        super().__init__()
        self.s = None
        self.m = None

    def _unchanged(self, fn, exc):
        before, snap = self.s.stats(), self.s.snapshot()
        try:
            fn()
        except exc:
            pass
        else:
            raise AssertionError("no exception")
        assert self.s.stats() == before and self.s.snapshot() == snap

    def _alloc(self, size, align):
        """alloc as the model predicts: the offset, or None (OutOfSpace, nothing changed)."""
        want = self.m.alloc(size, align)
        if want is None:
            self._unchanged(lambda: self.s.alloc(size, align), mempool.OutOfSpace)
            return None
        got = self.s.alloc(size, align)
        assert got == want, (got, want)
        return got

    def _realloc(self, off, size, align):
        """realloc as the model predicts: the new offset, or off (OutOfSpace, nothing changed)."""
        want = self.m.realloc(off, size, align)
        if want is None:
            self._unchanged(lambda: self.s.realloc(off, size, align), mempool.OutOfSpace)
            return off
        got = self.s.realloc(off, size, align)
        assert got == want, (got, want)
        return got

    def _alloc_many_free_many(self, sizes, align) -> None:
        """alloc_many all or nothing as the model predicts, then free_many of the batch."""
        trial = copy.deepcopy(self.m)
        want = [trial.alloc(n, align) for n in sizes]
        if None in want:
            before, segs, snap = self.s.stats(), self.s.segments(), self.s.snapshot()
            try:
                self.s.alloc_many(sizes, align)
            except mempool.OutOfSpace:
                pass
            else:
                raise AssertionError("alloc_many succeeded where the model fails")
            assert self.s.stats() == before
            if self.batch_undo_exact:
                assert self.s.snapshot() == snap  # undone exactly
            else:
                assert self.s.segments() == segs
            return
        offs = self.s.alloc_many(sizes, align)
        assert offs.tolist() == want
        self.m = trial
        self.s.free_many(offs)
        for o in want:
            self.m.free_(o)

    def _consistent(self, live: int, used: int) -> None:
        """check(), and the counters and memory map equal to the model's (live ranges
        and bytes used as the model counts them)."""
        s, m = self.s, self.m
        s.check()
        st_ = s.stats()
        assert len(s) == live == st_.live
        assert s.capacity == m.capacity
        assert st_.used == used and st_.available == m.capacity - used
        assert st_.internal_fragmentation == used - m.requested
        assert s.segments() == m.segments()
        assert st_.largest_free == m.largest_free()
        assert st_.free_ranges == m.free_ranges()
        assert st_.peak_used == m.peak_used and st_.high_water == m.high_water

    @precondition(lambda self: self.s is not None)
    @rule()
    def reset(self) -> None:
        self.s.reset()
        self.m.reset()

