"""Pool: a strategy over real bytes, handed to Python code as Blocks and arrays (layer 4).

The hot methods (``alloc``, ``free``, ``realloc``, ``empty``, ``zeros``, ``block_at``)
are C (``PoolCore``); this module composes the source and the strategy, and adds
what is not on a hot path: ``array``, statistics, closing, and persistent files.

Safety: a Block or array keeps its pool and source alive; freeing a block, or
closing a pool, while a view or array of its memory is alive raises BufferError;
after ``close()`` every use raises PoolClosed.  No Python code can reach freed or
unmapped memory through mempool.
"""

from __future__ import annotations

import errno
import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from . import _active, _mempool
from ._mempool import PoolCore, Strategy
from ._segment import (JOURNAL_OFFSET, NAMED_ROOT_OFFSET, Header, Placement, home, layout, log_of,
                       named_root, placement)
from ._units import parse_size
from .errors import CorruptionError, PoolClosed
from .named import NamedArrays
from .sources import AnonymousMemory, FileMemory, Source
from .stats import Stats
from .strategies import make, make_fixed, strategy_type
from .tracking import LiveBlock, check_limit
from .tracking import live as _live
from .tracking import track as _track
from .tracking import tracking as _tracking

__all__ = ["Pool"]

FILE_MAGIC = b"MEMPOOL\0"


def default_align(strat: Strategy) -> int:
    """alloc()'s default alignment: 16, or less where the strategy aligns every range
    less (a Slab of 40-byte items: 8), so that ``alloc(size)`` works without ``align``."""
    return min(16, getattr(strat, "item_align", 16))


class Activation:
    """What ``pool.activate(numpy=...)`` returns: a context manager that makes the pool
    the current one (``mempool.current()``) in this thread or asyncio task, and with
    ``numpy=True`` routes NumPy's own data allocations there into the pool.

    Leaving restores what was current before (nesting works; another thread or task
    never sees it).  An array NumPy made inside keeps the pool alive and goes back into
    it when it dies, wherever and whenever that is; ``close()`` refuses with
    BufferError while one is alive.  ``numpy_stats()`` counts the handler's work:
    ``allocs``, ``frees``, ``live``, and the requests the pool could not serve
    (``fallbacks``/``fallback_bytes``: served by the C library's malloc when
    ``fallback=True``; ``failures``: refused, NumPy raises MemoryError).
    """

    def __init__(self, pool: Any, numpy: bool, fallback: bool) -> None:
        if not isinstance(numpy, bool) or not isinstance(fallback, bool):
            raise TypeError("numpy and fallback must be True or False")
        self.pool = pool
        self.numpy = numpy
        self.fallback = fallback
        self._handler: Any = None

    def __enter__(self) -> Any:
        if self.numpy and self._handler is None:
            self._handler = _mempool.numpy_handler(self.pool, self.fallback)
        handler = self._handler
        if _mempool._rec_active():  # inside trace.record(): this pool is recorded too
            for p in getattr(self.pool, "regions", None) or [self.pool]:
                _mempool._rec_watch(p)
            if self.numpy:
                handler = _mempool._rec_wrap(handler)
        prev = _mempool.set_numpy_handler(handler) if self.numpy else _active.NONE
        _active.enter(self, prev, self.pool)
        return self.pool

    def __exit__(self, *exc: object) -> None:
        _active.leave(self)  # (in any order: see _active)

    def numpy_stats(self) -> dict[str, int]:
        """The NumPy handler's counters (zeros before the first ``with``)."""
        if self._handler is None:
            return dict.fromkeys(("allocs", "frees", "live", "fallbacks", "fallback_bytes",
                                  "failures"), 0)
        return _mempool.handler_stats(self._handler)


class Pool(PoolCore):
    """A pool of memory: a strategy handing out ranges of a source's bytes.

    Parameters
    ----------
    capacity : int or str
        Bytes the pool manages (``"64MiB"`` works too).
    strategy : str or strategy type
        ``"tlsf"`` (default), ``"bestfit"``, or any name of ``mempool.STRATEGIES``.
    source : Source, optional
        Where the bytes come from; default a new :class:`AnonymousMemory` of
        ``capacity`` bytes, which the pool closes with itself.  A source passed in
        stays the caller's to close.
    **options
        Passed to the strategy (``max_blocks=...``, ``min_block=...``).

    Blocks made by :meth:`alloc` give their range back when they are collected or
    freed; arrays made by :meth:`empty`, :meth:`zeros` and :meth:`array` when they
    are collected.  (Persistent pools, :meth:`create` / :meth:`open`, keep blocks
    until they are freed explicitly: that is what persistence means.  Their arrays
    are still freed when collected, and the first time that happens in a pool
    :class:`~mempool.errors.UnnamedArrayWarning` says so: name an array to keep it.)
    :meth:`block_at` makes another Block of a live range: every Block of a range holds
    a reference, and the range goes back when the last of them is released.
    """

    def __init__(self, capacity: int | str, strategy: str | type[Strategy] = "tlsf", *,
                 source: Source | None = None, **options: Any) -> None:
        capacity = parse_size(capacity, "capacity")
        strategy_type(strategy)  # ValueError for an unknown name before mapping anything
        owns = source is None
        if source is None:
            source = AnonymousMemory(capacity)
        elif not isinstance(source, Source):
            raise TypeError(f"source must be a mempool source, not {type(source).__name__}")
        elif source.closed:
            raise PoolClosed("the source is closed")
        elif source.size < capacity:
            raise ValueError(f"the source holds {source.size} bytes, fewer than capacity {capacity}")
        elif (other := source._user()) is not None:  # (two would hand out the same bytes)
            raise ValueError(f"the source already serves {other!r}: one pool per source")
        try:
            strat = make(strategy, capacity, **options)
            super().__init__(strat, source.buffer, source, align=default_align(strat))
        except BaseException:
            if owns:
                source.close()
            raise
        source._used_by = weakref.ref(self)
        self._owns_source = owns
        self.path: Path | None = None
        self.recovered = False
        self._named: NamedArrays | None = None
        if source.buffer is not None:  # a private pool's directory root: this process's
            self._named_root = bytearray(named_root())
            self._named_bind(self._named_root, 0)

    @property
    def named(self) -> NamedArrays:
        """The pool's named arrays: a mutable mapping from names (str, 1 to 255 bytes of
        UTF-8) to arrays, bytes and Blocks that the pool itself owns (see
        :class:`mempool.named.NamedArrays`).  In a file pool they outlive the process
        and ``close()``; a pool over External memory has none (TypeError)."""
        self._check_open()
        if self._named is None:
            if self.address is None:
                raise TypeError("a pool over External memory cannot hold named arrays")
            self._named = NamedArrays(self)
        return self._named

    # ---- not hot: composed in Python ------------------------------------------------
    def activate(self, numpy: bool = False, *, fallback: bool = True) -> Activation:
        """A context manager that makes this pool ``mempool.current()`` in this thread
        or asyncio task; with ``numpy=True`` NumPy's own data allocations there come
        from the pool (a NEP 49 handler in C).  ``fallback``: what a request the pool
        cannot serve gets, the C library's malloc (True, counted) or MemoryError.
        See :class:`Activation`."""
        self._check_open()
        return Activation(self, numpy, fallback)

    def array(self, obj: Any, dtype: Any = None) -> np.ndarray:
        """A copy of ``obj`` as a C-contiguous array in pool memory (as ``np.array``)."""
        src = np.asarray(obj, dtype=dtype)
        out = self.empty(src.shape, src.dtype)
        np.copyto(out, src)
        return out

    # ---- limits and leak tracking (mempool.tracking) ---------------------------------
    def set_limit(self, size: int | str | None) -> None:
        """Let the pool hand out at most ``size`` bytes (``used``, rounding included);
        None removes the limit.  An allocation that would pass it raises OutOfSpace
        whose message names the limit, and changes nothing.  A limit below what is in
        use now is allowed: frees work, allocations fail until ``used`` is below it.
        A SharedPool's limit is this process's: it bounds the whole pool's ``used``
        (every process's blocks) when this process allocates; other processes do not
        see it.  ValueError below 0 or above the capacity; TypeError for a non-int."""
        self._check_open()
        _mempool._set_limit(self, check_limit(size, self.capacity))

    @property
    def limit(self) -> int | None:
        """The byte limit set by :meth:`set_limit`, or None."""
        self._check_open()
        lim: int | None = _mempool._get_limit(self)
        return lim

    def track(self, enabled: bool = True) -> None:
        """Record the time and the Python stack of every Block this pool makes from now
        (``alloc``, ``try_alloc``, ``empty``, ``zeros``, ``array``, ``realloc``), for
        :meth:`live`.  Off by default; ``track(False)`` forgets what was recorded.  (Not
        NumPy's own allocations under ``activate(numpy=True)``: they make no Block.)"""
        self._check_open()
        _track(self, enabled)

    def live(self) -> list[LiveBlock]:
        """The live blocks made while tracking, oldest first: who holds the memory.
        Each :class:`~mempool.tracking.LiveBlock` has ``size``, ``offset``, ``age``
        (seconds) and ``where``, the stack that allocated it ((file, line, function),
        outermost first).  ValueError when the pool does not track."""
        self._check_open()
        return _live(self)

    @property
    def tracking(self) -> bool:
        """True while :meth:`track` is on."""
        return _tracking(self)

    def stats(self) -> Stats:
        """The strategy's counters (see :class:`mempool.Stats`)."""
        self._check_open()
        return self._strategy.stats()

    def check(self) -> None:
        """Verify every invariant of the strategy state; raises CorruptionError."""
        self._check_open()
        self._strategy.check()
        self._named_check()

    @property
    def used(self) -> int:
        self._check_open()
        return self._strategy.used

    @property
    def available(self) -> int:
        self._check_open()
        return self._strategy.available

    @property
    def largest_free(self) -> int:
        self._check_open()
        return self._strategy.largest_free

    def __len__(self) -> int:
        self._check_open()
        return len(self._strategy)

    def segments(self) -> list[tuple[int, int, bool]]:
        """The memory map: (offset, size, allocated) in address order."""
        self._check_open()
        return self._strategy.segments()

    def _check_open(self) -> None:
        # PoolClosed when closed, or in a forked child of a file pool's owner (one C check)
        self._check_usable()

    def flush(self) -> None:
        """Make state and data durable (msync) for pools over files; a no-op otherwise."""
        self._check_open()
        self._sync_state()  # a grown state mapped on its own: before the header names it
        flush = getattr(self.source, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Release the memory.  BufferError while a view or array of it is alive (the
        pool then stays open).  Blocks of a closed pool raise PoolClosed."""
        if getattr(self.source, "_lock_fd", -1) >= 0 and self._owns_source:
            self._checkpoint()  # a file pool's redo log emptied while the file is ours
        if self._close_core() and self._owns_source:
            self.source.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} closed>"
        st = self._strategy
        where = f" file={str(self.path)!r}" if self.path else ""
        return (f"<{type(self).__name__} {st.strategy} capacity={st.capacity} used={st.used} "
                f"live={len(st)}{where}>")

    # ---- persistent pools -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], capacity: int | str,
               strategy: str | type[Strategy] = "tlsf", *, exist_ok: bool = False,
               **options: Any) -> Pool:
        """A new persistent pool in the file ``path``.

        The file holds a header (magic, format version, sizes, checksum), the
        strategy's state block and the data, so :meth:`open` finds the allocations
        again.  Raises FileExistsError when the file exists (unless ``exist_ok``, which
        replaces any regular file not open elsewhere: BlockingIOError while it is; a FIFO or
        a device is a FileExistsError).  The capacity is the strategy's (Buddy and
        Bitmap round it down, as in a private pool).  The file
        is locked before any byte is written, and a failed create leaves the path as
        it was: a file it made is removed again, and with ``exist_ok`` the new file is
        built beside the old one and renamed over it only once complete, so a size
        that cannot be allocated leaves the old file untouched (both need room
        meanwhile).
        """
        capacity = parse_size(capacity, "capacity")
        template = make_fixed(strategy, capacity, **options)
        state = template._full_snapshot()
        # (the strategy's capacity: Buddy and Bitmap round the one asked for down)
        h = layout(FILE_MAGIC, _kind_of(state), template.strategy, template.capacity,
                   len(state), created_ns=time.time_ns())
        path = Path(path)

        def fill(view: memoryview) -> None:
            view[h.state_off:h.state_off + h.state_size] = state
            view[h.shadow_off:h.shadow_off + h.state_size] = state
            view[:4096] = h.pack()

        try:
            mem = FileMemory._create(path, h.total_size, fill, exist_ok=exist_ok)
        except FileExistsError:
            if exist_ok:  # (not a regular file: nothing a pool could replace)
                raise
            raise FileExistsError(errno.EEXIST, f"{path} exists; Pool.open() it, or pass "
                                  "exist_ok=True") from None
        return cls._over_file(mem, h, str(path))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Pool:
        """Reopen a persistent pool with its allocations intact.

        Validates everything it reads: a damaged, truncated or foreign file raises
        CorruptionError (never a crash, never a silently wrong heap).  The file is
        locked (flock) while the pool is open: a second opener, in this process or
        another, gets BlockingIOError (use a SharedPool to share a pool).  A file whose
        last writer was killed during an allocator call is recovered first: the call is
        rolled back (or forward, when it had committed) from the file's journal, and
        ``pool.recovered`` is True.
        """
        path = Path(path)
        size = path.stat().st_size
        if size < 4096:
            raise CorruptionError(f"{path}: {size} bytes, too short for a mempool file"
                                  + (" (an empty file: a create killed before it wrote "
                                     "leaves one, and one under way shows one for a moment; "
                                     "create(..., exist_ok=True) replaces it)"
                                     if size == 0 else ""))
        try:
            mem = FileMemory(path, exclusive=True)
        except ValueError:  # (emptied meanwhile: another create's placeholder)
            raise CorruptionError(f"{path}: 0 bytes, too short for a mempool file") from None
        try:
            view = memoryview(mem.buffer)
            try:
                h = Header.unpack(view, mem.size, FILE_MAGIC, str(path))
                pl = placement(h, view, mem.size, str(path))
                h.check_kind(view, str(path), pl.state_off)
            finally:
                view.release()
        except BaseException:
            mem.close()
            raise
        return cls._over_file(mem, h, str(path), pl)

    @classmethod
    def _over_file(cls, mem: FileMemory, h: Header, what: str,
                   pl: Placement | None = None) -> Pool:
        pool = cls.__new__(cls)
        if pl is None:  # a new file: the header's own pair
            pl = home(h)
        mm = memoryview(mem.buffer)
        data = mm[h.data_off:h.data_off + h.capacity]
        strat = None
        try:
            # a call the last writer was killed in: rolled back or forward first
            recovered = _mempool.journal_recover(mem.buffer, JOURNAL_OFFSET, pl.state_off,
                                                 pl.shadow_off, pl.state_size, NAMED_ROOT_OFFSET,
                                                 h.data_off + h.capacity, *log_of(h))
            strat = _mempool.attach(mem.buffer, pl.state_off, pl.state_size)
            if strat.strategy != h.strategy:
                raise CorruptionError(f"{what}: header says {h.strategy}, state is {strat.strategy}")
            if strat.capacity != h.capacity:
                raise CorruptionError(f"{what}: header and state disagree on the capacity")
            PoolCore.__init__(pool, strat, data, mem, auto_free=False,  # last: no pool on failure
                              align=default_align(strat))
        except BaseException as e:
            # Nothing may survive a failed open: every holder of the mapping lets go (the
            # strategy holds an export of mem.buffer until detached, and mem.close() refuses
            # while it does), then the mapping and, whatever happened, the flock go, so the
            # caller sees this error and a later open finds the file free.
            try:
                if strat is not None:
                    strat._detach()
                data.release()
                mm.release()
                mem.close()
            except BufferError:
                pass  # still held somewhere: gc unmaps it; the error to report is e
            finally:
                mem._release_lock()
            if isinstance(e, CorruptionError) and not str(e).startswith(what):
                raise CorruptionError(f"{what}: {e}") from None
            raise
        del data  # PoolCore holds the view now; it goes when the pool closes
        mm.release()
        pool.recovered = recovered != 0  # killed in a call: rolled back or forward
        if h.version >= 4:  # the state grows into pairs past the file's end (place.c)
            fd = os.open(f"/proc/self/fd/{mem._lock_fd}", os.O_RDWR | os.O_CLOEXEC)
            try:
                pool._set_journal(mem.buffer, JOURNAL_OFFSET, pl.shadow_off, fd,
                                  pl.for_core(h), *log_of(h))
            finally:
                os.close(fd)
        else:  # format 3: it stays where it is
            pool._set_journal(mem.buffer, JOURNAL_OFFSET, pl.shadow_off)
        pool._owns_source = True
        pool.path = Path(what)
        pool._named = None
        try:
            pool._named_bind(mem.buffer, NAMED_ROOT_OFFSET)  # validated: CorruptionError
        except BaseException as e:
            pool.close()
            if isinstance(e, CorruptionError):
                raise CorruptionError(f"{what}: {e}") from None
            raise
        return pool


def _kind_of(state: bytes) -> int:
    return int.from_bytes(state[4:6], "little")  # mp_head_t.kind
