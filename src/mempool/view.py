"""Looking at a pool without touching it (layer 5): what ``python -m mempool show``
prints and ``mempool.plot.memory_map`` draws.

A :class:`PoolView` is a pool's figures and its memory map (every range, in address
order) taken at one moment, to be analysed offline:

- :func:`view_file` reads a persistent pool file read-only: the file is opened
  ``O_RDONLY`` and mapped private (copy on write), so nothing ever reaches the file;
  a call its last writer was killed in is rolled back or forward in that private copy
  only, as ``Pool.open`` would do it for real.
- :func:`view_shared` reads a live shared pool without disturbing its users: it
  attaches without the deep check, copies the strategy's state under the segment's
  lock (a memcpy, nothing else: ``SharedPoolCore._snapshot``), lets the lock go, and
  checks and walks the copy offline.
- :func:`view_pool` takes any open pool or strategy object of this process.

:meth:`PoolView.text_map` draws the span in the terminal, one line per slice, a
block character per cell by how much of it is allocated.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _mempool
from ._segment import HEADER_SIZE, JOURNAL_OFFSET, NAMED_ROOT_OFFSET, Header, log_of, placement
from .errors import CorruptionError
from .stats import Stats
from .strategies import STRATEGIES

__all__ = ["PoolView", "format_bytes", "view_file", "view_pool", "view_shared"]

#: the characters of the terminal map, from free to full (fraction of the cell's
#: bytes allocated: 0, below 1/3, below 2/3, below 1, 1)
BLOCKS = "·░▒▓█"
ASCII_BLOCKS = ".:-=#"


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: '0 B', '512 B', '1.5 KiB', '64.0 MiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, eq=False)
class PoolView:
    """A pool's figures and memory map at one moment.

    Attributes
    ----------
    source : str
        What was read ("file pool '/path'", "shared pool 'name'", "pool").
    strategy : str
        The strategy's name.
    stats : Stats
        Its counters (bytes).
    offsets, sizes : numpy.ndarray of int64
        Every range in address order, covering ``[0, capacity)`` without gaps (bytes
        no range covers are listed as free).
    allocated : numpy.ndarray of bool
        Whether each range is handed out.
    notes : list of str
        What else the reader found (a recovered call, a busy writer, the registry).
    """

    source: str
    strategy: str
    stats: Stats
    offsets: np.ndarray
    sizes: np.ndarray
    allocated: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.stats.capacity

    @classmethod
    def from_segments(cls, segments: Any, stats: Stats, *, source: str = "pool",
                      strategy: str = "", notes: list[str] | None = None) -> PoolView:
        """A view from ``segments()``'s (offset, size, allocated) tuples and ``stats``."""
        if stats.capacity >= 1 << 63:
            raise ValueError(f"a view covers spans below 2**63 bytes, not {stats.capacity}")
        seg = np.asarray(list(segments), dtype=np.int64).reshape(-1, 3)
        off, size, alloc = _cover(seg[:, 0], seg[:, 1], seg[:, 2].astype(bool), stats.capacity)
        return cls(source, strategy, stats, off, size, alloc, list(notes or []))

    def largest_free(self, n: int = 10) -> list[tuple[int, int]]:
        """The ``n`` largest free ranges as (offset, size), largest first (lowest offset
        first among equals).  Adjacent free ranges are listed as the strategy keeps
        them (a class-based strategy's free blocks are not merged here)."""
        free = np.flatnonzero(~self.allocated)
        order = np.lexsort((self.offsets[free], -self.sizes[free]))[:max(int(n), 0)]
        return [(int(self.offsets[free[k]]), int(self.sizes[free[k]])) for k in order]

    def edges(self, cells: int) -> np.ndarray:
        """Where each of ``cells`` equal slices of the span starts, and the span's end:
        ``k * capacity // cells`` (in Python's integers: the product passes int64 for a
        span above 2**52 bytes)."""
        cap = self.capacity
        if cap <= ((1 << 63) - 1) // max(cells, 1):  # (the products fit int64)
            return (np.arange(cells + 1, dtype=np.int64) * cap) // cells
        return np.array([k * cap // cells for k in range(cells + 1)], dtype=np.int64)

    def cell_fractions(self, cells: int) -> np.ndarray:
        """The fraction of allocated bytes in each of ``cells`` equal slices of the span
        (slice ``k`` covers ``[k * capacity // cells, (k + 1) * capacity // cells)``)."""
        edges = self.edges(cells)
        used = np.diff(self.allocated_below(edges)).astype(np.float64)
        width = np.diff(edges).astype(np.float64)
        return np.divide(used, width, out=np.zeros(cells), where=width > 0)

    def allocated_below(self, x: np.ndarray) -> np.ndarray:
        """Bytes allocated in ``[0, x)`` for each ``x`` (exact, int64)."""
        x = np.asarray(x, dtype=np.int64)
        if len(self.offsets) == 0:
            return np.zeros(len(x), np.int64)
        alloc_sizes = np.where(self.allocated, self.sizes, 0)
        before = np.concatenate(([0], np.cumsum(alloc_sizes)))
        i = np.clip(np.searchsorted(self.offsets, x, side="right") - 1, 0, len(self.offsets) - 1)
        inside = np.clip(x - self.offsets[i], 0, self.sizes[i])
        return np.asarray(before[i] + np.where(self.allocated[i], inside, 0), dtype=np.int64)

    def _cells(self, rows: int, width: int) -> int:
        """The cells of a text map of rows x width (a cell holds one byte at least)."""
        if rows < 1 or width < 1:
            raise ValueError(f"rows and width must be >= 1, got {rows} and {width}")
        return min(rows * width, self.capacity)

    def text_map(self, rows: int = 32, width: int = 64, *, ascii: bool = False) -> list[str]:
        """The memory map for a terminal: one line per slice of the span, ``width``
        cells each, a cell's character by the fraction of its bytes allocated
        (``·`` free, ``░`` below 1/3, ``▒`` below 2/3, ``▓`` below 1, ``█`` full;
        with ``ascii``: ``.:-=#``), the slice's start offset on the left.  Fewer lines
        when the span has fewer bytes than cells.  ValueError for rows or width < 1.
        """
        chars = ASCII_BLOCKS if ascii else BLOCKS
        cells = self._cells(rows, width)
        width = min(width, cells)
        rows = -(-cells // width)
        f = self.cell_fractions(cells)
        level = np.where(f <= 0, 0, np.where(f >= 1, 4, 1 + np.minimum((f * 3).astype(int), 2)))
        glyph = np.array(list(chars))[level]
        edges = self.edges(cells)
        starts = [format_bytes(int(edges[k * width])) for k in range(rows)]
        label = max(len(x) for x in starts)
        bar = "|" if ascii else "│"
        return [f"{starts[k]:>{label}} {bar}{''.join(glyph[k * width:(k + 1) * width])}{bar}"
                for k in range(rows)]

    def legend(self, rows: int = 32, width: int = 64, *, ascii: bool = False) -> str:
        """The line that explains :meth:`text_map` (cell size and characters); the same
        ValueError for rows or width < 1."""
        cells = self._cells(rows, width)
        c = ASCII_BLOCKS if ascii else BLOCKS
        return (f"each character {format_bytes(self.capacity / cells)} of the span: "
                f"{c[4]} allocated  {c[3]} >= 2/3  {c[2]} >= 1/3  {c[1]} < 1/3  {c[0]} free")


def _cover(off: np.ndarray, size: np.ndarray, alloc: np.ndarray, capacity: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ranges sorted, with the bytes no range covers added as free ranges, so that
    they tile [0, capacity) exactly."""
    order = np.argsort(off, kind="stable")
    off, size, alloc = off[order], size[order], alloc[order]
    prev_end = np.concatenate(([0], off + size))
    nxt = np.concatenate((off, [capacity]))
    gap = nxt > prev_end
    if not gap.any():
        return off, size, alloc
    all_off = np.concatenate((off, prev_end[gap]))
    all_size = np.concatenate((size, (nxt - prev_end)[gap]))
    all_alloc = np.concatenate((alloc, np.zeros(int(gap.sum()), bool)))
    o = np.argsort(all_off, kind="stable")
    return all_off[o], all_size[o], all_alloc[o]


def view_pool(pool: Any, *, source: str = "pool") -> PoolView:
    """A view of an open pool or strategy object of this process (anything with
    ``stats()``, ``segments()`` and ``strategy``; a RegionPool's are its ``regions``);
    TypeError for anything else."""
    if not all(hasattr(pool, a) for a in ("segments", "stats", "strategy")):
        hint = "; view each of its regions (.regions)" if hasattr(pool, "regions") else ""
        raise TypeError(f"view_pool takes a pool or a strategy, not a "
                        f"{type(pool).__name__}{hint}")
    return PoolView.from_segments(pool.segments(), pool.stats(), source=source,
                                  strategy=str(pool.strategy))


def _view_strategy(strat: Any, source: str, notes: list[str]) -> PoolView:
    return PoolView.from_segments(strat.segments(), strat.stats(), source=source,
                                  strategy=str(strat.strategy), notes=notes)


def view_file(path: str | os.PathLike[str]) -> PoolView:
    """Read the persistent pool file ``path`` without changing it.

    The file is opened read-only and mapped private; a call its last writer was
    killed in is recovered in that private copy only (a note says so).  While another
    process has the pool open (its writer's flock), the state is read as it is at that
    moment (a note says so); a state caught in the middle of a call is read again, up
    to 20 times over about 0.2 s.

    Raises FileNotFoundError / PermissionError / IsADirectoryError as open() does, and
    CorruptionError naming the file for anything that is not a valid pool file.
    """
    path = Path(path)
    what = str(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO would block the open)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a pool file", what)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptionError(f"{what}: not a regular file")
        size = st.st_size
        if size < HEADER_SIZE:
            raise CorruptionError(f"{what}: {size} bytes, too short for a mempool file")
        notes: list[str] = []
        try:  # a reader's shared lock: no writer opens the file while we read it
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
            notes.append("the pool is open in another process: read as it was at this moment")
        for attempt in range(20):
            try:  # (the size again: a writer's state may have grown the file)
                return _read_file(fd, os.fstat(fd).st_size if attempt else size, what, notes,
                                  busy)
            except CorruptionError:
                if not busy or attempt == 19:
                    raise
                time.sleep(0.01)  # caught inside a writer's call: read it again
        raise AssertionError("unreachable")
    finally:
        os.close(fd)  # lets the shared lock go too


def _read_file(fd: int, size: int, what: str, notes: list[str], busy: bool = False
               ) -> PoolView:
    from .pool import FILE_MAGIC

    mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)  # private: writes never reach the file
    strat = None
    try:
        view = memoryview(mm)
        try:
            h = Header.unpack(view, size, FILE_MAGIC, what)
            pl = placement(h, view, size, what)  # (a grown state: where its slot says)
            h.check_kind(view, what, pl.state_off)
        finally:
            view.release()
        if busy:  # a writer has it open: one copy of its state, between two of its calls
            return _view_copy(mm, h, pl, what, notes)
        # the journal: recovered in the private copy (copy on write), never in the file
        recovered = _mempool.journal_recover(mm, JOURNAL_OFFSET, pl.state_off, pl.shadow_off,
                                             pl.state_size, NAMED_ROOT_OFFSET,
                                             h.data_off + h.capacity, *log_of(h))
        try:
            strat = _mempool.attach(mm, pl.state_off, pl.state_size)
        except CorruptionError as e:
            raise CorruptionError(f"{what}: {e}") from None
        if strat.strategy != h.strategy or strat.capacity != h.capacity:
            raise CorruptionError(f"{what}: the header and the state disagree")
        extra = list(notes)
        if recovered:
            extra.append("its last writer was killed in a call: shown "
                         + ("rolled back" if recovered == 1 else "rolled forward")
                         + " (the file itself is left as it is; Pool.open recovers it)")
        return _view_strategy(strat, f"file pool {what!r}", extra)
    finally:
        if strat is not None:
            strat._detach()
        mm.close()


def _view_copy(mm: mmap.mmap, h: Header, pl: Any, what: str, notes: list[str]) -> PoolView:
    """The state of a file a writer has open, copied at one moment: the pages of a
    private mapping the reader has not written still follow the writer's, so a view
    read from the mapping itself could count one moment and walk another (its stats
    and its map disagreed).  The journal says IDLE and the same count of committed calls
    before and after the copy, else CorruptionError (the caller reads again)."""
    def journal() -> bytes:  # magic, phase (and the redo log's count above it), calls committed
        return bytes(mm[JOURNAL_OFFSET:JOURNAL_OFFSET + 24])

    before = journal()
    state = bytes(mm[pl.state_off:pl.state_off + pl.state_size])
    if journal() != before or before[8] != 0:  # (the phase: the word's low byte)
        raise CorruptionError(f"{what}: caught inside a call of its writer")
    try:
        strat = STRATEGIES[h.strategy].restore(state)  # checks the copy: CorruptionError
    except (CorruptionError, ValueError) as e:
        raise CorruptionError(f"{what}: {e}") from None
    if strat.capacity != h.capacity:
        raise CorruptionError(f"{what}: the header and the state disagree")
    return _view_strategy(strat, f"file pool {what!r}", list(notes))


def view_shared(name: str) -> PoolView:
    """Read the live shared pool ``name`` without disturbing its users.

    Its strategy state is copied under the segment's lock (nothing else is done while
    the lock is held), then checked and walked in this process.  A range that a
    process freed and keeps in its own cache (for its next allocation of that size)
    is shown allocated, as the strategy has it.

    Raises FileNotFoundError for an unknown name, PermissionError, ValueError for a
    bad name, CorruptionError for a segment or a state copy that is not valid.
    """
    from . import shared

    pool = shared._attached.get(name)
    mine = pool is None or pool.closed
    before = shared._attached.get(name)
    if mine:
        pool = shared.SharedPool._attach(name, verify=False)
    assert pool is not None
    try:
        snap, lock_ns = pool._snapshot()
        kind = pool.strategy
        ss = pool.shared_stats()
    finally:
        if mine:
            pool.close()
            if before is not None:
                shared._attached[name] = before
    try:
        strat = STRATEGIES[kind].restore(snap)  # checks the copy: CorruptionError
    except (CorruptionError, ValueError) as e:
        raise CorruptionError(f"shared pool {name!r}: {e}") from None
    notes = [
        f"state copied in {lock_ns / 1e6:.2f} ms under the pool's lock ({format_bytes(len(snap))}"
        "; checked and read here after it was let go)",
        f"registry: {ss.entries} of {ss.max_entries} entries, {ss.leases} leases in flight, "
        f"{ss.allocations} allocations so far, lock waits {ss.lock_waits}",
    ]
    return _view_strategy(strat, f"shared pool {name!r}", notes)
