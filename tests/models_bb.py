"""Plain Python models of Buddy and Bitmap: the exact behaviour, offsets included.

Each model answers every call the strategy answers (None for OutOfSpace) and knows
what segments(), stats() and the counters must show.  They are slow and obvious on
purpose: sets of free block indices per class, a bytearray of used blocks.
"""

from __future__ import annotations

import copy


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class BuddyModel:
    def __init__(self, capacity: int, min_block: int = 4096, max_block: int | None = None,
                 fanout: int = 2):
        self.min, self.f = min_block, fanout
        if max_block is None:
            max_block = min_block
            while max_block * fanout <= capacity:
                max_block *= fanout
        self.sizes = []
        s = min_block
        while s <= max_block:
            self.sizes.append(s)
            s *= fanout
        self.K = len(self.sizes)
        self.capacity = capacity // min_block * min_block
        self.peak_used = self.high_water = 0
        self.reset()

    def reset(self) -> None:
        self.free: list[set[int]] = [set() for _ in range(self.K)]
        self.live: dict[int, tuple[int, int]] = {}  # offset -> (class, requested)
        p = 0
        for k in reversed(range(self.K)):
            n = (self.capacity - p) // self.sizes[k]
            self.free[k].update(range(p // self.sizes[k], p // self.sizes[k] + n))
            p += n * self.sizes[k]

    # -- queries
    @property
    def used(self) -> int:
        return sum(self.sizes[k] for k, _ in self.live.values())

    @property
    def requested(self) -> int:
        return sum(r for _, r in self.live.values())

    def class_of(self, size: int) -> int | None:
        for k, s in enumerate(self.sizes):
            if s >= size:
                return k
        return None

    def segments(self) -> list[tuple[int, int, bool]]:
        segs = [(o, self.sizes[k], True) for o, (k, _) in self.live.items()]
        for k, idx in enumerate(self.free):
            segs += [(i * self.sizes[k], self.sizes[k], False) for i in idx]
        return sorted(segs)

    def largest_free(self) -> int:
        return max((self.sizes[k] for k in range(self.K) if self.free[k]), default=0)

    def free_ranges(self) -> int:
        return sum(len(s) for s in self.free)

    # -- operations
    def _note(self, off: int, k: int) -> None:
        self.peak_used = max(self.peak_used, self.used)
        self.high_water = max(self.high_water, off + self.sizes[k])

    def _find(self, k0: int, align: int) -> tuple[int, int] | None:
        if align <= self.sizes[-1]:  # the smallest non-empty class whose blocks are aligned
            for k in range(k0, self.K):
                if self.sizes[k] >= align and self.free[k]:
                    return k, min(self.free[k])
            return None
        for k in range(k0, self.K):  # beyond max_block: offsets that are multiples of align
            c = [i for i in self.free[k] if i * self.sizes[k] % align == 0]
            if c:
                return k, min(c)
        return None

    def alloc(self, size: int, align: int = 1) -> int | None:
        k0 = self.class_of(size)
        if k0 is None:
            return None
        r = self._find(k0, align)
        if r is None:
            return None
        k, i = r
        self.free[k].remove(i)
        while k > k0:
            k -= 1
            i *= self.f
            self.free[k].update(range(i + 1, i + self.f))
        off = i * self.sizes[k0]
        self.live[off] = (k0, size)
        self._note(off, k0)
        return off

    def _release(self, k: int, i: int) -> None:
        while k < self.K - 1:
            g = i - i % self.f
            sib = set(range(g, g + self.f)) - {i}
            if not sib <= self.free[k]:
                break
            self.free[k] -= sib
            i //= self.f
            k += 1
        self.free[k].add(i)

    def free_(self, off: int) -> bool:
        if off not in self.live:
            return False
        k, _ = self.live.pop(off)
        self._release(k, off // self.sizes[k])
        return True

    def realloc(self, off: int, size: int, align: int = 1) -> int | None:
        k, _ = self.live[off]
        kn = self.class_of(size)
        if kn is None:
            return None
        if kn == k:
            self.live[off] = (k, size)
            return off
        if kn < k:
            i = off // self.sizes[k]
            for c in range(k, kn, -1):
                i *= self.f
                self.free[c - 1].update(range(i + 1, i + self.f))
            self.live[off] = (kn, size)
            return off
        if off % self.sizes[kn] == 0 and all(
            set(range(off // self.sizes[c] + 1, off // self.sizes[c] + self.f)) <= self.free[c]
            for c in range(k, kn)
        ):
            for c in range(k, kn):
                self.free[c] -= set(range(off // self.sizes[c] + 1, off // self.sizes[c] + self.f))
            self.live[off] = (kn, size)
            self._note(off, kn)
            return off
        if self._find(kn, align) is not None:
            new = self.alloc(size, align)
            self.free_(off)
            return new
        saved = copy.deepcopy((self.free, self.live, self.peak_used, self.high_water))
        self.free_(off)
        new = self.alloc(size, align)
        if new is None:
            self.free, self.live, self.peak_used, self.high_water = saved
        return new


class BitmapModel:
    def __init__(self, capacity: int, block_size: int = 16, first_fit: bool = False):
        self.B, self.first_fit = block_size, first_fit
        self.N = capacity // block_size
        self.capacity = self.N * block_size
        self.tz = (block_size & -block_size).bit_length() - 1
        self.peak_used = self.high_water = 0
        self.reset()

    def reset(self) -> None:
        self.used = bytearray(self.N)  # 1 = handed out
        self.runs: dict[int, tuple[int, int]] = {}  # start block -> (blocks, requested)
        self.cursor = 0

    @property
    def used_bytes(self) -> int:
        return sum(n for n, _ in self.runs.values()) * self.B

    @property
    def requested(self) -> int:
        return sum(r for _, r in self.runs.values())

    def blocks_for(self, size: int) -> int:
        return -(-size // self.B)

    def step(self, align: int) -> int:
        a = align.bit_length() - 1
        return 1 if a <= self.tz else 1 << (a - self.tz)

    def _search(self, frm: int, lim: int, n: int, step: int) -> int | None:
        if n > self.N:
            return None
        lim = min(lim, self.N - n + 1)
        zeros = bytes(n)
        i = align_up(frm, step)
        while i < lim:
            j = self.used.find(zeros, i)
            if j < 0 or j >= lim:
                return None
            if j % step == 0:
                return j
            i = align_up(j, step)
        return None

    def _place(self, n: int, step: int) -> int | None:
        if self.first_fit:
            return self._search(0, self.N, n, step)
        i = self._search(self.cursor, self.N, n, step)
        if i is None and self.cursor:
            i = self._search(0, self.cursor, n, step)
        return i

    def _take(self, i: int, n: int, size: int) -> int:
        self.used[i:i + n] = b"\x01" * n
        self.runs[i] = (n, size)
        if not self.first_fit:
            self.cursor = 0 if i + n == self.N else i + n
        self.peak_used = max(self.peak_used, self.used_bytes)
        self.high_water = max(self.high_water, (i + n) * self.B)
        return i * self.B

    def alloc(self, size: int, align: int = 1) -> int | None:
        n = self.blocks_for(size)
        i = self._place(n, self.step(align))
        return None if i is None else self._take(i, n, size)

    def free_(self, off: int) -> bool:
        if off % self.B or off // self.B not in self.runs:
            return False
        i = off // self.B
        n, _ = self.runs.pop(i)
        self.used[i:i + n] = bytes(n)
        return True

    def realloc(self, off: int, size: int, align: int = 1) -> int | None:
        i = off // self.B
        n0, _ = self.runs[i]
        n1 = self.blocks_for(size)
        if n1 <= n0:
            self.used[i + n1:i + n0] = bytes(n0 - n1)
            self.runs[i] = (n1, size)
            return off
        if i + n1 <= self.N and not any(self.used[i + n0:i + n1]):
            self.used[i + n0:i + n1] = b"\x01" * (n1 - n0)
            self.runs[i] = (n1, size)
            self.peak_used = max(self.peak_used, self.used_bytes)
            self.high_water = max(self.high_water, (i + n1) * self.B)
            return off
        if n1 > self.N:
            return None
        self.used[i:i + n0] = bytes(n0)
        saved = self.runs.pop(i)
        j = self._place(n1, self.step(align))
        if j is None:
            self.used[i:i + n0] = b"\x01" * n0
            self.runs[i] = saved
            return None
        return self._take(j, n1, size)

    def segments(self) -> list[tuple[int, int, bool]]:
        out, p, B = [], 0, self.B
        while p < self.N:
            if p in self.runs:
                n = self.runs[p][0]
                out.append((p * B, n * B, True))
                p += n
            else:
                q = p
                while q < self.N and not self.used[q]:
                    q += 1
                assert q > p, "a used block outside every run"
                out.append((p * B, (q - p) * B, False))
                p = q
        return out

    def largest_free(self) -> int:
        return max((n for _, n, a in self.segments() if not a), default=0)

    def free_ranges(self) -> int:
        return sum(1 for *_, a in self.segments() if not a)
