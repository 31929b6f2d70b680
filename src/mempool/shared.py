"""SharedPool: one pool used by many processes; arrays passed without copies (layer 4).

A shared pool is one POSIX shared memory segment with an allocator inside it::

    header | strategy state | lock + block registry | data

Every process maps the same segment; every allocator call takes the segment's
robust process-shared mutex.  Blocks and arrays made by the pool pickle to a small
handle (pool name, segment id, offset, tag, and for arrays dtype, shape and strides)
and unpickle in any process as a zero-copy view of the same bytes, attaching the
pool on first use; so ``multiprocessing`` and ``concurrent.futures`` pass pool
arrays to workers without copying them.

Lifetime of ranges: every Block (made by ``alloc``, ``empty``, ``zeros``,
``array``, ``block_at``, or by unpickling a handle) holds one reference in the
segment's registry; the range goes back when the last reference in any process is
released (``free()``, the end of a ``with``, or collection).  A handle whose range
was freed or reused is refused (its tag no longer matches), never aliased.  When a
process dies, ``pool.reclaim(pid)`` releases the references its own allocations
held.

A handle in flight holds a reference too, a *lease*: pickling a Block or a pool
array takes one (a slot of the segment's lease table), the pickle carries its token,
and the first unpickling adopts it as the receiver's own reference; so a range
returned by a worker stays live after the worker dropped its array and exited.  A
lease never adopted (a lost message, a dead receiver) is released by its deadline,
``lease_timeout`` seconds after pickling (an option of :meth:`SharedPool.create`), by
the next locked call of any process.  A pickle unpickled again takes a fresh
reference while (offset, tag) is still live, else raises NotAllocated.
``reclaim(pid)`` leaves the leases a process took alone.

When a process dies holding the lock, the next taker recovers: it checks the state,
repairs what a half-done call left in the registry, and carries on (or marks the
pool corrupt when the strategy state itself is broken).

The creator owns unlinking: ``pool.unlink()``, or ``unlink_on_exit=True``.
Attaching processes never unlink and never involve the resource tracker.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import stat
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, SupportsIndex, cast

import numpy as np

from . import _mempool
from ._mempool import Block, SharedPoolCore, Strategy
from ._segment import (CREATED_NS_OFFSET, NAMED_ROOT_OFFSET, PLACEMENT_OFFSET, Header,
                       Placement, home, layout, placement)
from ._units import parse_size
from .errors import CorruptionError, NotAllocated
from .pool import Pool, default_align
from .sources import SharedMemory, _shm_path
from .strategies import make_fixed

__all__ = ["SharedArray", "SharedPool", "SharedStats"]

MAGIC = b"MPSHARED"

#: the shared pool each name was last opened as in this process: handles attach
#: through it
_attached: dict[str, SharedPool] = {}
#: every shared pool open in this process (two may have one name: attached twice, or a
#: name made anew): their caches go back at exit, and a handle finds its segment's
_open_pools: weakref.WeakSet[SharedPool] = weakref.WeakSet()


@dataclass(frozen=True)
class SharedStats:
    """The lock and registry counters of a shared pool (all processes together, but
    for ``lock_calls``)."""

    entries: int  #: live blocks in the registry
    max_entries: int  #: the registry's capacity (its reservation)
    allocations: int  #: blocks allocated so far (the last tag)
    lock_calls: int  #: lock acquisitions by this process
    lock_waits: int  #: acquisitions that found the lock taken
    lock_wait_ns: int  #: time spent waiting for the lock
    recoveries: int  #: takeovers after a process died holding the lock
    repaired: int  #: registry words recounted or repaired after such a death
    cached: int  #: ranges this process freed and keeps for its next allocations
    leases: int = 0  #: handles pickled and not yet unpickled (nor expired): references in flight
    max_leases: int = 0  #: the lease table's capacity (handles in flight at once)
    leases_expired: int = 0  #: leases released by their deadline so far (never unpickled)
    lease_timeout: float = 0.0  #: seconds a lease lives in flight before it is released
    rolled_back: int = 0  #: calls a dead process was in, undone from the journal
    rolled_forward: int = 0  #: ... and completed (the process died after their commit)
    committed_entries: int = 0  #: registry entries whose pages are allocated (grows by doubling)
    registry_bytes: int = 0  #: bytes of the segment the lock, registry and leases use now


# ---- arrays and handles --------------------------------------------------------------
def _block_of(a: Any) -> Block | None:
    """The pool Block an array's memory belongs to, or None."""
    base = a
    for _ in range(64):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        if base is None:
            return None
        if isinstance(base, Block):
            return base
    return None


class SharedArray(np.ndarray):
    """An ndarray in a shared pool's memory: it pickles to a handle, not to its bytes.

    Views of it (slices, reshapes) are SharedArrays too and pickle as views of the
    same block; results that own memory elsewhere (``a + 1``) are plain ndarrays.
    """

    # ndarray's own __reduce_ex__ would come first
    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        return self.__reduce__()

    def __reduce__(self) -> str | tuple[Any, ...]:
        blk = _block_of(self)
        if blk is None or not blk.live or not isinstance(blk.pool, SharedPool):
            plain: str | tuple[Any, ...] = np.asarray(self).view(np.ndarray).copy().__reduce__()
            return plain
        pool = blk.pool
        byte_off = _mempool.data_address(self) - blk.address
        dt = self.dtype
        # a plain dtype travels as its type string: pickling a dtype object costs ~10 us
        dtype = dt.str if dt.fields is None and dt.subdtype is None else dt
        lease = pool._lease(blk)  # last: nothing after it can fail and strand the lease
        args = (pool.name, pool.segment_id, blk.offset, blk.tag, byte_off, dtype, self.shape,
                self.strides, lease)
        # a read-only view arrives read-only (the same memory: writable, it would let
        # the receiver write what the sender had marked read-only)
        return (_rebuild_array, args if self.flags.writeable else (*args, True))

    def __array_wrap__(self, arr: np.ndarray, context: tuple[Any, ...] | None = None,
                       return_scalar: bool = False) -> Any:
        arr = arr.view(SharedArray if _block_of(arr) is not None else np.ndarray)
        return arr[()] if return_scalar else arr


def _pool_for(name: str, segment_id: int) -> SharedPool:
    """The open pool of the handle's segment: this process's, or the one attached now
    under the name.  A segment no longer under the name and not open here is stale."""
    pool = _attached.get(name)
    if pool is not None and not pool.closed and pool.segment_id == segment_id:
        return pool
    for p in list(_open_pools):
        if not p.closed and p._name == name and p.segment_id == segment_id:
            return p
    # not open here: the segment under the name now, if it is the handle's (made anew
    # since this process attached the name); its header says which, read without
    # attaching (an attach checks the whole pool under its lock)
    now = _segment_id_at(_shm_path(name))  # (a bad name: ValueError, as attach gives)
    if now is None:
        raise NotAllocated(f"stale handle: shared pool {name!r} was unlinked")
    if now != segment_id:
        raise NotAllocated(f"stale handle: shared pool {name!r} was created anew since")
    pool = SharedPool.attach(name)
    if pool.segment_id != segment_id:  # (made anew once more meanwhile)
        raise NotAllocated(f"stale handle: shared pool {name!r} was created anew since")
    return pool


def _segment_id_at(path: Any) -> int | None:
    """The segment id (its header's created_ns) of the segment at ``path`` now, or None
    when there is none to read (no file, not a regular one: a FIFO is not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, CREATED_NS_OFFSET + 8, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) < CREATED_NS_OFFSET + 8:
        return None
    return int.from_bytes(head[CREATED_NS_OFFSET:CREATED_NS_OFFSET + 8], "little")


def _rebuild_block(name: str, segment_id: int, offset: int, tag: int, lease: int = 0) -> Block:
    # lease 0: a handle pickled before leases existed (or by hand): a fresh reference
    return _pool_for(name, segment_id)._handle(offset, tag, lease)


def _rebuild_array(name: str, segment_id: int, offset: int, tag: int, byte_off: int,
                   dtype: np.dtype | str, shape: tuple[int, ...], strides: tuple[int, ...],
                   lease: int = 0, readonly: bool = False) -> SharedArray:
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise CorruptionError(f"an array handle names no dtype: {dtype!r:.80}") from None
    if dt.hasobject:  # (a pickle of ours never names one: pool arrays hold no objects)
        raise CorruptionError("an array handle names a dtype with Python objects")
    blk = _rebuild_block(name, segment_id, offset, tag, lease)
    # the array owns the Block, one export of the pool: close() refuses while it lives
    # (NumPy's buffer= would keep the Block, not a view of it); a crafted extent is a
    # CorruptionError
    arr: SharedArray = blk.pool._array_over(blk, dt, tuple(shape), tuple(strides), byte_off,
                                            SharedArray)
    if readonly:
        arr.flags.writeable = False
    return arr


def _block_reduce(block: Block, lease: int
                  ) -> tuple[Callable[..., Block], tuple[str, int, int, int, int]]:
    # the C calls it for blocks of shared pools only, with the lease it took
    pool = cast("SharedPool", block.pool)
    return (_rebuild_block, (pool.name, pool.segment_id, block.offset, block.tag, lease))


# ---- the pool -------------------------------------------------------------------------
def _default_entries(capacity: int) -> int:
    """The registry's reservation: a block per 64 bytes of capacity, in [1024, 2**28]
    (reserved, not allocated: the segment's pages for it are allocated as the registry
    grows; a process maps the reserve with the segment: 72 bytes of address space an
    entry)."""
    return min(max(capacity // 64, 1024), 1 << 28)


def _default_leases(capacity: int) -> int:
    return min(max(capacity // 4096, 1024), 1 << 18)


#: seconds a pickled handle's lease lives in flight (SharedPool.create's default)
DEFAULT_LEASE_TIMEOUT = 600.0


class SharedPool(SharedPoolCore, Pool):
    """A pool in a named shared memory segment, used by every process that attaches.

    Make one with :meth:`create` or :meth:`attach` (not the constructor).  It has the
    Pool interface (``alloc``, ``free``, ``realloc``, ``empty``, ``zeros``, ``array``,
    ``block_at``, ``stats``, ``check``, ``close``) plus :meth:`unlink`,
    :meth:`reclaim` and :meth:`shared_stats`.  Any attached process may allocate and
    free any block; every allocator call takes the segment's lock.

    The C half is :class:`~mempool._mempool.SharedPoolCore`, a PoolCore whose calls go
    through the segment's lock and registry; it comes before Pool in the bases, so its
    methods take precedence over Pool's.
    """

    _name: str
    _segment_id: int
    _creator: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use SharedPool.create(name, capacity) or SharedPool.attach(name)")

    # pool.named: Pool.named's property, over the segment's directory (bound in _build;
    # _core/named.h, _native/pool_shared_named.c): every attached process's names

    def check(self) -> None:
        """Verify the strategy state, the registry against it and the directory of
        named arrays, under the lock; raises CorruptionError."""
        SharedPoolCore.check(self)
        self._named_check()

    def _named_array(self, blk: Block, dtype: np.dtype[Any], shape: tuple[int, ...],
                     strides: tuple[int, ...], offset: int) -> SharedArray:
        """pool.named's view of a named range: an array over ``blk`` (a handle of the
        range, which the array owns: an export, so close() refuses while it lives) that
        pickles as a handle too; CorruptionError when the record reaches outside it."""
        arr: SharedArray = self._array_over(blk, dtype, shape, strides, offset, SharedArray)
        return arr

    # ---- construction -----------------------------------------------------------------
    # made by name, not at a path: on purpose not a substitute for Pool.create
    @classmethod
    def create(cls, name: str, capacity: int | str, strategy: str | type[Strategy] = "tlsf",  # type: ignore[override]
               *, mode: int = 0o600, max_entries: int | None = None,
               max_leases: int | None = None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
               unlink_on_exit: bool = False, **options: Any) -> SharedPool:
        """A new shared pool named ``name`` (``/dev/shm/<name>``).

        Parameters
        ----------
        capacity : int or str
            Bytes of data.
        strategy : str
            Any strategy name; ``**options`` go to it.
        mode : int
            Permissions of the segment (default 0o600: this user only).
        max_entries : int, optional
            The most blocks live at once: the block registry's reservation, default
            ``capacity // 64`` clamped to [1024, 2**28].  Only address space and a
            sparse stretch of the segment until used: the registry starts with 256
            entries' pages allocated and doubles them as blocks need (64 bytes an
            entry, 8 of index).
        max_leases : int, optional
            The most handles in flight at once (pickled, not yet unpickled): the
            lease table's size (allocated up front, 32 bytes a lease); default
            ``capacity // 4096`` clamped to [1024, 2**18], at most ``max_entries``.  Pickling beyond it, with no
            lease past its deadline, raises OutOfSpace.
        lease_timeout : float
            Seconds a pickled handle keeps its range alive until it is unpickled
            (default 600): a lease not adopted by then (a lost message, a dead
            receiver) is released by the next locked call of any process.  Raise it
            for longer queues; lower it where handles are pickled and never
            unpickled (hashing, logging).
        unlink_on_exit : bool
            Unlink the name when this process exits.

        Raises FileExistsError when the name is taken.
        """
        capacity = parse_size(capacity, "capacity")
        if max_entries is None:
            max_entries = _default_entries(capacity)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        if max_leases is None:
            max_leases = min(max_entries, _default_leases(capacity))
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be an integer >= 1, got {max_leases!r}")
        if isinstance(lease_timeout, bool) or not isinstance(lease_timeout, (int, float)):
            raise TypeError(f"lease_timeout must be a number of seconds, not "
                            f"{type(lease_timeout).__name__}")
        if not 0 < lease_timeout <= (1 << 62) / 1e9:  # NaN fails too
            raise ValueError(f"lease_timeout must be > 0 seconds (and below 146 years), got "
                             f"{lease_timeout!r}")
        lease_ns = max(1, round(lease_timeout * 1e9))
        template = make_fixed(strategy, capacity, **options)
        state = template._full_snapshot()
        ctl_size = _mempool.shared_ctl_size(max_entries, max_leases)
        # (the strategy's capacity: Buddy and Bitmap round the one asked for down)
        h = layout(MAGIC, int.from_bytes(state[4:6], "little"), template.strategy,
                   template.capacity, len(state), lock_size=ctl_size, created_ns=time.time_ns())
        del template
        holes = [(h.lock_off + off, n)
                 for off, n in _mempool.shared_ctl_reserved(max_entries, max_leases)]
        mem = SharedMemory(name, h.total_size, create=True, mode=mode, unallocated=holes)
        try:
            mm = memoryview(mem.buffer)
            mm[h.state_off:h.state_off + h.state_size] = state
            mm[h.shadow_off:h.shadow_off + h.state_size] = state  # the journal's copy
            mm.release()
            pool = cls._build(mem, h, name, create_entries=max_entries,
                              leases=(max_leases, lease_ns))
            mm = memoryview(mem.buffer)
            mm[:4096] = h.pack()  # last: until now, attach finds no valid header
            mm.release()
            pool._named_bind(mem.buffer, NAMED_ROOT_OFFSET)  # the empty root pack() wrote
        except BaseException:
            mem.close_quietly()
            mem.unlink()
            raise
        pool._creator = True
        if unlink_on_exit:  # (this process's exit: not a forked child's, which runs it too)
            atexit.register(_unlink_at_exit, mem.path, os.getpid(), pool._segment_id)
        return pool

    @classmethod
    def attach(cls, name: str) -> SharedPool:
        """Map the shared pool ``name`` created by another (or this) process.

        Validates everything it reads (magic, version, sizes within the segment, the
        strategy state's and the registry's check()): an empty, random, truncated or
        foreign segment raises CorruptionError, never crashes.  A lock held by a process
        that does not have the pool open, or by a thread that does not exist, raises
        CorruptionError after about 2 s instead of waiting forever (see the README's
        "A lock nobody can release").  FileNotFoundError when there is no such segment,
        PermissionError when its mode forbids this user, ValueError for a bad name.
        """
        return cls._attach(name)

    @classmethod
    def _attach(cls, name: str, verify: bool = True) -> SharedPool:
        """attach(); with ``verify=False`` the state's and the registry's deep check()
        under the lock is left out: for a reader that only copies the state under the
        lock (``_snapshot``) and checks the copy offline (``mempool.view``), so that
        the pool's users never wait for a check of the whole state."""
        _shm_path(name)  # TypeError / ValueError for a bad name, before anything is read
        try:
            mem = SharedMemory(name)
        except ValueError as e:  # the name is good: the segment is not (empty)
            raise CorruptionError(f"shared pool {name!r}: {e}") from None
        try:
            what = f"shared pool {name!r}"
            for attempt in range(50):
                # read without the lock: a growth by another process may move the state
                # meanwhile (its old pair retired, the new one past this mapping); then
                # the slots' generations or the segment's size differ afterwards
                marks = (_slot_gens(mem.buffer), os.fstat(mem._fd).st_size)
                try:
                    view = memoryview(mem.buffer)
                    try:
                        h = Header.unpack(view, mem.size, MAGIC, what)
                        pl = placement(h, view, mem.size, what)
                        h.check_kind(view, what, pl.state_off)
                    finally:
                        view.release()
                    return cls._build(mem, h, name, create_entries=0, verify=verify, pl=pl)
                except CorruptionError:
                    now = (_slot_gens(mem.buffer), os.fstat(mem._fd).st_size)
                    if now == marks and marks[1] == mem.size:
                        raise  # nothing moved: the segment is what is wrong
                mem.close_quietly()
                mem = SharedMemory(name)
            raise CorruptionError(f"{what}: its state keeps moving")
        except BaseException:
            mem.close_quietly()
            raise

    @classmethod
    def _build(cls, mem: SharedMemory, h: Header, name: str, create_entries: int,
               leases: tuple[int, int] = (0, 0), verify: bool = True,
               pl: Placement | None = None) -> SharedPool:
        what = f"shared pool {name!r}"
        if pl is None:  # a new segment: the header's own pair
            pl = home(h)
        pool = cls.__new__(cls)
        data = memoryview(mem.buffer)[h.data_off:h.data_off + h.capacity]
        strat = None
        core = False
        try:
            strat = _mempool.attach(mem.buffer, pl.state_off, pl.state_size, False)
            if strat.strategy != h.strategy or strat.capacity != h.capacity:
                raise CorruptionError("header and state disagree")
            grows = h.version >= 4  # (a format-3 segment's state stays where it is)
            SharedPoolCore.__init__(pool, strat, data, mem, mem.buffer, h.lock_off, h.lock_size,
                                    create_entries, _block_reduce, SharedArray,
                                    align=default_align(strat), max_leases=leases[0],
                                    lease_timeout_ns=leases[1], shadow_offset=pl.shadow_off,
                                    fd=mem._fd if grows else -1,
                                    placement=pl.for_core(h), log_offset=h.log_off,
                                    log_entries=h.log_entries)
            core = True
            if verify:
                pool.check()
            pool._named = None
            if not create_entries:  # (create binds once the header page is written)
                pool._named_bind(mem.buffer, NAMED_ROOT_OFFSET)  # validated: CorruptionError
        except BaseException as e:
            # Let go of every export of the mapping, so that the caller's close unmaps it
            # now: the pool's view and the strategy once PoolCore holds them, else the
            # strategy itself (attach() exported mem.buffer to it) and our slice.
            try:
                if core:
                    pool._close_core()
                elif strat is not None:
                    strat._detach()
                data.release()
            except Exception:
                pass  # the error to report is e
            if isinstance(e, CorruptionError):
                raise CorruptionError(f"{what}: {e}") from None
            raise
        del data  # PoolCore holds the view now; it goes when the pool closes
        pool._owns_source = True
        pool.path = mem.path
        pool.recovered = False
        pool._name = name
        pool._segment_id = h.created_ns
        pool._creator = False
        _attached[name] = pool
        _open_pools.add(pool)
        return pool

    # ---- identity ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The segment's name (``/dev/shm/<name>``)."""
        return self._name

    @property
    def segment_id(self) -> int:
        """Unique per created segment: a handle to a re-created name is refused."""
        return self._segment_id

    def __reduce__(self) -> tuple[Callable[..., SharedPool], tuple[str, int]]:
        return (_pool_for, (self._name, self._segment_id))

    # ---- figures ----------------------------------------------------------------------
    # stats(), segments(), check(), used, available, largest_free and len() are
    # SharedPoolCore's: each reads what it reports under the lock, in C.

    def shared_stats(self) -> SharedStats:
        """The lock and registry counters (see :class:`SharedStats`)."""
        d = self._shared_stats()
        return SharedStats(entries=d["entries"], max_entries=d["max_entries"],
                           allocations=d["serial"], lock_calls=d["lock_calls"],
                           lock_waits=d["lock_waits"], lock_wait_ns=d["lock_wait_ns"],
                           recoveries=d["recoveries"], repaired=d["repaired"],
                           cached=d["cached"], leases=d["leases"], max_leases=d["max_leases"],
                           leases_expired=d["leases_expired"],
                           lease_timeout=d["lease_timeout_ns"] / 1e9,
                           rolled_back=d["rolled_back"], rolled_forward=d["rolled_forward"],
                           committed_entries=d["committed"],
                           registry_bytes=d["registry_bytes"])

    # ---- lifetime ----------------------------------------------------------------------
    def reclaim(self, pid: int | None = None, *, force: bool = False) -> int:
        """Release the references process ``pid`` held: its allocations, its cache, and
        the references it borrowed from other processes' blocks (unpickled handles,
        ``block_at``); a range with no other handle is freed.  Returns the number of
        ranges freed.

        With no ``pid``: every process the registry names (owners, borrowers) that is
        gone, no such process or a zombie, this one aside; the question and the reclaim
        happen under one hold of the lock.  For workers a ``multiprocessing.Pool``'s
        ``terminate()`` killed (a ``with Pool()`` block on leaving), whose pids the
        caller never saw.

        The leases of handles ``pid`` pickled are not released: a sender commonly
        exits before its receiver unpickles (a Queue, a worker's result); a handle
        never unpickled is released by its lease's deadline instead.

        Raises ValueError when ``pid`` is still alive (unless ``force``).
        """
        if pid is None:
            if force:
                raise ValueError("force needs a pid: reclaim() takes only processes that are gone")
            freed, _, _ = self._reclaim_dead()
            return freed
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive integer, got {pid!r}")
        if not force and _alive(pid):
            raise ValueError(f"process {pid} is alive: its blocks are still its own")
        freed, _ = self._reclaim(pid)
        return freed

    def unlink(self) -> None:
        """Remove the segment's name; processes that have it mapped keep using it."""
        _unlink_quietly(self.path, missing_ok=False)

    def close(self) -> None:
        super().close()
        _open_pools.discard(self)
        if _attached.get(getattr(self, "_name", "")) is self:
            del _attached[self._name]

    def __repr__(self) -> str:
        if self.closed:
            return "<SharedPool closed>"
        st = self.stats()
        return (f"<SharedPool {self._name!r} capacity={st.capacity} used={st.used} "
                f"live={st.live}>")


def _give_back_caches() -> None:
    """At exit (normal, or a multiprocessing child's): every open shared pool gives its
    cache back, so ranges a process freed do not outlive it."""
    for pool in list(_open_pools):
        if not pool.closed:
            try:
                pool._flush_cache()
            except Exception:  # exiting: nothing to report to
                pass


def _flush_at_exit(_: object = None) -> None:
    # multiprocessing children end with os._exit(), after running its finalizers; a
    # forked child starts with the registry of finalizers cleared (Process._bootstrap),
    # so the finalizer is registered again in each (register_after_fork)
    multiprocessing.util.Finalize(None, _give_back_caches, exitpriority=100)


atexit.register(_give_back_caches)
_flush_at_exit()
multiprocessing.util.register_after_fork(_flush_at_exit, _flush_at_exit)


def _alive(pid: int) -> bool:
    """Not gone (sys.c's rule, the one reclaim() with no pid follows): a zombie counts as
    dead unless another of its threads runs (a main thread that ended before them)."""
    return not _mempool.pid_gone(pid)


def _slot_gens(buf: Any) -> bytes:
    """The raw generation words of the two placement slots (no validation): they change
    whenever a growth writes a slot."""
    return bytes(buf[PLACEMENT_OFFSET + 8:PLACEMENT_OFFSET + 16]) + bytes(
        buf[PLACEMENT_OFFSET + 72:PLACEMENT_OFFSET + 80])


def _unlink_at_exit(path: Any, pid: int, segment_id: int) -> None:
    # the creator's exit, and the name still this pool's: not one made anew by another
    # process after an unlink()
    if os.getpid() == pid and _segment_id_at(path) == segment_id:
        _unlink_quietly(path)


def _unlink_quietly(path: Any, missing_ok: bool = True) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise

