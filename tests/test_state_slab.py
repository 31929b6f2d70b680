"""Slab against a plain Python model of its placement rules: every offset predicted,
check() after every step, counters and memory map compared with the model."""

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


def item_geometry(item_size: int) -> tuple[int, int]:
    """(item alignment, stride) as documented: the largest power of two dividing
    item_size, raised to 8 when item_size >= 8; stride = item_size rounded up to it."""
    align = item_size & -item_size
    if align < 8 and item_size >= 8:
        align = 8
    return align, -(-item_size // align) * align


class SlabModel:
    """The documented placement rules of mempool.Slab, in plain Python."""

    def __init__(self, capacity: int, item_size: int, page_size: int):
        self.capacity, self.item_size, self.page_size = capacity, item_size, page_size
        self.align, self.stride = item_geometry(item_size)
        self.per = page_size // self.stride
        self.npages = capacity // page_size
        self.reset()

    def reset(self) -> None:
        self.kind = ["free"] * self.npages  # free / slab / run / tail
        self.cursor = [0] * self.npages
        self.stack: list[list[int]] = [[] for _ in range(self.npages)]  # top = last
        self.items: list[dict[int, tuple[int, int]]] = [{} for _ in range(self.npages)]
        self.partial: list[int] = []  # most recently freed into first
        self.runs: dict[int, tuple[int, int]] = {}  # first page -> (items, pages)
        self.live: dict[int, tuple[int, int]] = {}  # offset -> (items, bytes asked)

    # -- helpers -----------------------------------------------------------------
    def used_items(self, p: int) -> int:
        return sum(n for n, _ in self.items[p].values())

    def free_pages(self) -> list[int]:
        return [p for p in range(self.npages) if self.kind[p] == "free"]

    def free_items(self) -> int:
        run_pages = sum(k for _, k in self.runs.values())
        held = sum(self.used_items(p) for p in range(self.npages) if self.kind[p] == "slab")
        return (self.npages - run_pages) * self.per - held

    def offset(self, p: int, i: int) -> int:
        return p * self.page_size + i * self.stride

    def take_page(self) -> int | None:
        free = self.free_pages()
        if not free:
            return None
        p = free[0]
        self.kind[p], self.cursor[p] = "slab", 0
        return p

    def after_alloc(self, p: int, fresh: bool) -> None:
        used = self.used_items(p)
        if fresh:
            if used < self.per:
                self.partial.insert(0, p)
        elif used == self.per:
            self.partial.remove(p)

    # -- operations: return the offset, or None for OutOfSpace --------------------
    def alloc(self, size: int, align: int) -> int | None:
        if size > self.item_size or align > self.align:
            return None
        fresh = not self.partial
        p = self.take_page() if fresh else self.partial[0]
        if p is None:
            return None
        if self.stack[p]:
            event("freed item reused")
            i = self.stack[p].pop()
        else:
            i = self.cursor[p]
            self.cursor[p] += 1
        self.items[p][i] = (1, size)
        self.after_alloc(p, fresh)
        off = self.offset(p, i)
        self.live[off] = (1, size)
        return off

    def alloc_array(self, n: int) -> int | None:
        if n == 1:
            return self.alloc(self.item_size, 1)
        if n > self.per:
            k = -(-(n * self.stride) // self.page_size)
            free = set(self.free_pages())
            for p in range(self.npages - k + 1):
                if all(q in free for q in range(p, p + k)):
                    self.kind[p] = "run"
                    for q in range(p + 1, p + k):
                        self.kind[q] = "tail"
                    self.runs[p] = (n, k)
                    event("multi-page array")
                    off = p * self.page_size
                    self.live[off] = (n, n * self.item_size)
                    return off
            return None
        fresh = False
        if self.partial and self.cursor[self.partial[0]] + n <= self.per:
            p = self.partial[0]
            i = self.cursor[p]
            self.cursor[p] += n
        elif self.free_pages():
            p = self.take_page()
            i, fresh = 0, True
            self.cursor[p] = n
        else:
            found = None
            for p in range(self.npages):
                if self.kind[p] != "slab" or self.per - self.used_items(p) < n:
                    continue
                avail = [j >= self.cursor[p] or j in self.stack[p] for j in range(self.per)]
                for i in range(self.per - n + 1):
                    if all(avail[i:i + n]):
                        found = (p, i)
                        break
                if found:
                    break
            if not found:
                return None
            p, i = found
            event("array from free items of a used page")
            self.stack[p] = [j for j in self.stack[p] if not i <= j < i + n]
            self.cursor[p] = max(self.cursor[p], i + n)
            while self.stack[p] and self.stack[p][0] == self.cursor[p] - 1:
                del self.stack[p][0]  # canonical form: the bottom is uncarved again
                self.cursor[p] -= 1
        self.items[p][i] = (n, n * self.item_size)
        self.after_alloc(p, fresh)
        off = self.offset(p, i)
        self.live[off] = (n, n * self.item_size)
        return off

    def free(self, off: int) -> None:
        n, _ = self.live.pop(off)
        p = off // self.page_size
        if p in self.runs:
            _, k = self.runs.pop(p)
            for q in range(p, p + k):
                self.kind[q] = "free"
            return
        i = (off - p * self.page_size) // self.stride
        del self.items[p][i]
        if not self.items[p]:
            event("page back to the pool")
            if p in self.partial:
                self.partial.remove(p)
            self.kind[p], self.cursor[p], self.stack[p] = "free", 0, []
            return
        if not self.stack[p] and i + n == self.cursor[p]:
            self.cursor[p] = i  # uncarved: still the next items handed out
        else:
            self.stack[p].extend(range(i + n - 1, i - 1, -1))
        if p in self.partial:
            self.partial.remove(p)
        self.partial.insert(0, p)

    def segments(self) -> list[tuple[int, int, bool]]:
        out, pos = [], 0
        for off in sorted(self.live):
            size = self.live[off][0] * self.stride
            if off > pos:
                out.append((pos, off - pos, False))
            out.append((off, size, True))
            pos = off + size
        if pos < self.capacity:
            out.append((pos, self.capacity - pos, False))
        return out


GEOMETRIES = st.sampled_from([1, 3, 6, 8, 12, 20, 24, 64, 96, 100]).flatmap(
    lambda isz: st.tuples(
        st.just(isz),
        st.integers(1, 12).map(lambda k: item_geometry(isz)[1] * k),  # page = k items ...
        st.integers(0, 2),  # ... plus some alignment units of slack
        st.integers(1, 6),  # pages
        st.integers(0, 1),  # a tail after the last page
    )
)


class SlabMachine(RuleBasedStateMachine):
    ranges = Bundle("ranges")

    @initialize(geo=GEOMETRIES)
    def create(self, geo) -> None:
        isz, page, slack, pages, tail = geo
        align, _ = item_geometry(isz)
        page = -(-page // align) * align + slack * align
        cap = page * pages + tail * (page // 2)
        self.s = mempool.Slab(cap, isz, page_size=page)
        self.m = SlabModel(cap, isz, page)
        assert (self.s.item_align, self.s.item_stride) == (self.m.align, self.m.stride)
        assert self.s.items_per_page == self.m.per and self.s.pages == self.m.npages

    def _oos(self, fn, match=None):
        before, snap = self.s.stats(), self.s.snapshot()
        with pytest.raises(mempool.OutOfSpace, match=match):
            fn()
        assert self.s.stats() == before and self.s.snapshot() == snap

    @rule(target=ranges, size=st.one_of(st.integers(1, 3), st.integers(1, 110)),
          align=st.sampled_from([1, 1, 1, 2, 4, 8, 16, 64, 128]))
    def alloc(self, size, align):
        want = self.m.alloc(size, align)
        if want is None:
            why = ("item size" if size > self.m.item_size
                   else "alignment" if align > self.m.align else "no free item")
            self._oos(lambda: self.s.alloc(size, align), why)
            return None
        off = self.s.alloc(size, align)
        assert off == want and off % align == 0
        assert self.s.size_of(off) == self.m.stride
        return off

    @rule(target=ranges, n=st.one_of(st.integers(1, 20), st.integers(1, 200)))
    def alloc_array(self, n):
        want = self.m.alloc_array(n)
        if want is None:
            self._oos(lambda: self.s.alloc_array(n), "array")
            return None
        off = self.s.alloc_array(n)
        assert off == want
        assert self.s.size_of(off) == n * self.m.stride
        return off

    @rule(off=consumes(ranges), by_array=st.booleans())
    def free(self, off, by_array):
        if off is None or off not in self.m.live:
            return
        n = self.m.live[off][0]
        if by_array:
            before = self.s.stats()
            with pytest.raises(ValueError, match="items"):
                self.s.free_array(off, n + 1)
            assert self.s.stats() == before
            self.s.free_array(off, n)
        else:
            self.s.free(off)
        self.m.free(off)

    @rule(keep=st.integers(2, 4), empty_pages=st.booleans(), n=st.integers(2, 6))
    def fill_and_punch_holes(self, keep, empty_pages, n):
        """Fill every item, then free all but every keep-th (free items scattered in
        used pages), emptying every other page when asked; then ask for an array."""
        m, offs = self.m, []
        while (off := m.alloc(1, 1)) is not None:
            assert self.s.alloc(1) == off
            offs.append(off)
        self._oos(lambda: self.s.alloc(1), "no free item")
        for k, off in enumerate(offs):
            if (empty_pages and (off // m.page_size) % 2 == 0) or k % keep:
                self.s.free(off)
                m.free(off)
        self.alloc_array(n)

    @rule(data=st.data())
    def free_then_alloc_is_lifo(self, data):
        """A freed item is the next one handed out while its page stays in use."""
        m = self.m
        singles = sorted(off for off, (n, _) in m.live.items()
                         if n == 1 and len(m.items[off // m.page_size]) > 1)
        if not singles:
            return
        off = data.draw(st.sampled_from(singles))
        self.s.free(off)
        m.free(off)
        assert self.s.alloc(1) == m.alloc(1, 1) == off
        event("freed item reused (LIFO)")

    @rule(off=ranges, delta=st.integers(1, 200))
    def bad_free(self, off, delta):
        if off is None:
            return
        bad = off + delta if off in self.m.live else off
        if bad in self.m.live:
            return
        before, segs = self.s.stats(), self.s.segments()
        with pytest.raises(mempool.NotAllocated):
            self.s.free(bad)
        with pytest.raises(mempool.NotAllocated):
            self.s.free_array(bad, 1)
        assert self.s.stats() == before and self.s.segments() == segs

    @rule(off=ranges, size=st.integers(1, 110))
    def realloc(self, off, size):
        if off is None or off not in self.m.live:
            return
        n, _ = self.m.live[off]
        p = off // self.m.page_size
        if n > 1 or p in self.m.runs:
            before = self.s.stats()
            with pytest.raises(ValueError, match="array"):
                self.s.realloc(off, size)
            assert self.s.stats() == before
        elif size > self.m.item_size:
            self._oos(lambda: self.s.realloc(off, size), "item size")
        else:
            assert self.s.realloc(off, size) == off
            self.m.live[off] = (1, size)
            i = (off - p * self.m.page_size) // self.m.stride
            self.m.items[p][i] = (1, size)

    @rule()
    def reset(self):
        self.s.reset()
        self.m.reset()

    @rule()
    def snapshot_restore(self):
        data = self.s.snapshot()
        self.s = mempool.Slab.restore(data)
        assert self.s.snapshot() == data

    @rule(sizes=st.lists(st.integers(1, 40), max_size=10))
    def alloc_many_all_or_nothing(self, sizes):
        # the batch goes through alloc and free: the model replays it the same way
        # (a failed batch is undone by freeing in reverse: byte for byte, see _oos)
        before = self.s.stats()
        want = []
        for size in sizes:
            off = self.m.alloc(size, 1)
            if off is None:
                break
            want.append(off)
        if len(want) < len(sizes):
            for off in reversed(want):
                self.m.free(off)
            self._oos(lambda: self.s.alloc_many(sizes))
            return
        offs = self.s.alloc_many(sizes)
        assert offs.tolist() == want
        self.s.free_many(offs)
        for off in want:
            self.m.free(off)
        assert self.s.used == before.used and len(self.s) == before.live

    @invariant()
    def consistent(self):
        s, m = self.s, self.m
        s.check()
        st_ = s.stats()
        assert len(s) == len(m.live) == st_.live
        assert s.used == sum(n for n, _ in m.live.values()) * m.stride
        assert st_.internal_fragmentation == s.used - sum(a for _, a in m.live.values())
        assert s.available == m.capacity - s.used
        assert s.segments() == m.segments()
        assert st_.free_ranges == s.free_items == m.free_items()
        assert s.free_pages == len(m.free_pages())
        assert s.largest_free == (m.item_size if m.free_items() else 0)


TestSlab = SlabMachine.TestCase
