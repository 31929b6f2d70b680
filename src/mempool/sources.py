"""Memory sources (layer 3): raw bytes for pools, and nothing else.

A source owns a span of memory and exposes it as a writable buffer:

- :class:`AnonymousMemory` -- an anonymous private mapping, with huge pages, a NUMA
  policy, pre-faulting and locking as options;
- :class:`FileMemory` -- a file mapped shared (what persistent pools live in);
- :class:`BufferMemory` -- any writable C-contiguous buffer (bytearray, NumPy array),
  without a copy;
- :class:`External` -- no bytes at all: a capacity of offsets (a GPU buffer managed
  elsewhere).

Every option the machine refuses raises a clear ``OSError`` (or ``ValueError`` for
arguments that can never work); nothing falls back silently unless
``strict=False`` is asked for, and then :attr:`AnonymousMemory.refused` says what was
not applied.  A source cannot be closed while a pool or view still uses its memory
(``BufferError``, as ``mmap.close()`` raises).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import platform
import re
import secrets
import stat
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _mempool
from ._units import parse_size, round_up
from .errors import PoolClosed

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AnonymousMemory",
    "BufferMemory",
    "External",
    "FileMemory",
    "NumaPolicy",
    "SharedMemory",
    "Source",
    "numa_nodes",
]

PAGE = mmap.PAGESIZE
MAP_HUGETLB = 0x40000  # Linux, every architecture we build on

# mbind(2), numbered by the C library's headers; None where they do not know it
_mbind: Callable[[int, int, int, Sequence[int]], None] | None = getattr(_mempool, "mbind", None)


class Source:
    """Base of the memory sources: ``size`` bytes, exposed as ``buffer``.

    ``buffer`` is a writable buffer object over the whole span (None for
    :class:`External`); ``address`` is the address of its first byte.
    """

    size: int
    buffer: Any
    #: other processes map these bytes too (a file): a pool over them serves only
    #: the process that made it (a forked child must open the file itself)
    _shared_mapping = False

    def __init__(self) -> None:
        self._closed = False
        self._used_by: Any = None  # a weakref to the open Pool over it (Pool sets it)

    @property
    def closed(self) -> bool:
        return self._closed

    def _user(self) -> Any:
        """The open pool over this source, or None."""
        p = self._used_by() if self._used_by is not None else None
        return p if p is not None and not p.closed else None

    @property
    def address(self) -> int | None:
        """The address of byte 0 in this process (None when there are no bytes)."""
        self._check_open()
        return _mempool.address_of(self.buffer) if self.buffer is not None else None

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Release the memory.  BufferError while a pool or a view still uses it."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} size={self.size}{state}>"


class _Mapped(Source):
    """A source over an mmap object (``self._mmap``)."""

    _mmap: mmap.mmap

    def close(self) -> None:
        """Unmap.  BufferError while a pool or a view still uses the memory (the source
        then stays open)."""
        if self._closed:
            return
        self._mmap.close()
        self._closed = True

    def close_quietly(self) -> None:
        """Unmap if nothing uses the memory any more (for error paths)."""
        try:
            self.close()
        except BufferError:
            pass


# ---- NUMA ---------------------------------------------------------------------------
_MODES = {"default": 0, "preferred": 1, "bind": 2, "interleave": 3, "local": 4}


def numa_nodes() -> list[int]:
    """The NUMA nodes this machine has online (``[0]`` when it reports none)."""
    try:
        text = Path("/sys/devices/system/node/online").read_text().strip()
    except OSError:
        return [0]
    nodes: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            nodes.extend(range(int(a), int(b) + 1))
        elif part:
            nodes.append(int(part))
    return nodes or [0]


@dataclass(frozen=True)
class NumaPolicy:
    """A NUMA memory policy for :class:`AnonymousMemory`, applied with ``mbind(2)``.

    ``mode`` is one of ``"default"``, ``"bind"``, ``"preferred"``, ``"interleave"`` and
    ``"local"``; ``nodes`` the node numbers (any the system has; none for "default"
    and "local", exactly one for "preferred", at least one for "bind" and
    "interleave").  Raises ValueError for an unknown mode, a node the system does not
    have, or a node list that does not fit the mode.
    """

    mode: str
    nodes: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"NUMA mode must be one of {', '.join(_MODES)}, got {self.mode!r}")
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        for n in nodes:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"NUMA nodes must be integers, got {n!r}")
        online = numa_nodes()
        bad = [n for n in nodes if n not in online]
        if bad:
            raise ValueError(f"NUMA node(s) {bad} do not exist here; this machine has {online}")
        if self.mode in ("default", "local") and nodes:
            raise ValueError(f"NUMA mode {self.mode!r} takes no nodes, got {list(nodes)}")
        if self.mode == "preferred" and len(nodes) != 1:
            raise ValueError(f"NUMA mode 'preferred' takes exactly one node, got {list(nodes)}")
        if self.mode in ("bind", "interleave") and not nodes:
            raise ValueError(f"NUMA mode {self.mode!r} needs at least one node")

    def apply(self, address: int, length: int) -> None:
        """mbind(address, length, mode, nodemask): OSError when the kernel refuses."""
        if _mbind is None:
            raise OSError(errno.ENOSYS, f"mbind is not known on {platform.machine()}")
        try:
            _mbind(address, length, _MODES[self.mode], self.nodes)
        except OSError as e:
            raise OSError(e.errno, f"mbind({self.mode}, nodes={list(self.nodes)}) refused: "
                                   f"{e.strerror}") from None


# ---- anonymous memory ---------------------------------------------------------------
def _hugepage_size() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 20


def _reserved_hugepages() -> int:
    try:
        return int(Path("/proc/sys/vm/nr_hugepages").read_text())
    except OSError:
        return 0


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


def _prefault(mm: mmap.mmap, length: int) -> None:
    """Fault in every page of ``mm`` for writing, under the policies already set on it.

    ``madvise(MADV_POPULATE_WRITE)``; a kernel older than 5.14 answers EINVAL, and then
    one zero byte is written per page (the pages are fresh, so the content stays zero).
    Any other error (ENOMEM: the policy's nodes have no room) is raised.
    """
    try:
        mm.madvise(MADV_POPULATE_WRITE, 0, length)
        return
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    with memoryview(mm) as mv:
        mv[:length:PAGE] = bytes(len(range(0, length, PAGE)))


class AnonymousMemory(_Mapped):
    """An anonymous private mapping of at least ``size`` bytes (rounded up to pages).

    Parameters
    ----------
    size : int or str
        Bytes, or a size string such as ``"64MiB"``.
    hugepages : None, "transparent" or "explicit"
        ``"transparent"`` asks for transparent huge pages with ``madvise``;
        ``"explicit"`` maps from the reserved huge-page pool (``MAP_HUGETLB``; the
        size is rounded up to the huge page size).
    numa : NumaPolicy, optional
        Applied to the whole mapping with ``mbind``.
    populate : bool
        Pre-fault every page: ``MAP_POPULATE`` alone; with ``numa`` or transparent huge
        pages, after ``mbind``/``madvise`` (``MADV_POPULATE_WRITE``), so the pages are
        placed under the policy rather than before it.
    lock : bool
        ``mlock`` the mapping (RLIMIT_MEMLOCK applies).
    strict : bool
        When True (default) an option the machine refuses raises ``OSError``; when
        False it is skipped and named in :attr:`refused`.
    """

    def __init__(self, size: int | str, *, hugepages: str | None = None,
                 numa: NumaPolicy | None = None, populate: bool = False, lock: bool = False,
                 strict: bool = True) -> None:
        super().__init__()
        size = parse_size(size, "size")
        if hugepages not in (None, "transparent", "explicit"):
            raise ValueError(f"hugepages must be None, 'transparent' or 'explicit', got {hugepages!r}")
        if numa is not None and not isinstance(numa, NumaPolicy):
            raise TypeError(f"numa must be a NumaPolicy, not {type(numa).__name__}")
        self.refused: list[str] = []
        self.hugepages = hugepages
        self.numa = numa
        unit = _hugepage_size() if hugepages == "explicit" else PAGE
        self.size = round_up(size, unit)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        # MAP_POPULATE faults the pages in at mmap time, before mbind (flags 0: pages
        # already there are not moved) or MADV_HUGEPAGE could apply to them: with either,
        # map lazily and pre-fault once they are set
        prefault_later = populate and (numa is not None or hugepages == "transparent")
        if populate and not prefault_later:
            flags |= mmap.MAP_POPULATE
        mm = None
        if hugepages == "explicit":
            try:
                mm = mmap.mmap(-1, self.size, flags=flags | MAP_HUGETLB)
            except OSError as e:
                msg = (f"explicit huge pages: cannot map {self.size} bytes from the huge-page "
                       f"pool ({_reserved_hugepages()} pages of {unit} bytes reserved in "
                       f"/proc/sys/vm/nr_hugepages): {e.strerror}")
                if strict:
                    raise OSError(e.errno, msg) from None
                self.refused.append(msg)
                self.size = round_up(size, PAGE)
        if mm is None:
            mm = mmap.mmap(-1, self.size, flags=flags)
        self._mmap = mm
        self.buffer = mm
        addr = _mempool.address_of(mm)
        try:
            if hugepages == "transparent":
                try:
                    mm.madvise(mmap.MADV_HUGEPAGE)
                except OSError as e:
                    self._refuse(strict, e, "transparent huge pages (madvise MADV_HUGEPAGE) "
                                 "refused; see /sys/kernel/mm/transparent_hugepage/enabled")
            if numa is not None:
                try:
                    numa.apply(addr, self.size)
                except OSError as e:
                    self._refuse(strict, e, str(e.strerror or e))
            if prefault_later:
                try:
                    _prefault(mm, self.size)
                except OSError as e:
                    self._refuse(strict, e, f"pre-faulting {self.size} bytes "
                                 f"(madvise MADV_POPULATE_WRITE) refused")
            self._locked = False
            if lock:
                try:
                    _mempool.mlock(addr, self.size)
                    self._locked = True
                except OSError as e:
                    self._refuse(strict, e, f"mlock of {self.size} bytes refused "
                                 "(RLIMIT_MEMLOCK; see ulimit -l)")
        except BaseException:
            mm.close()
            raise

    def _refuse(self, strict: bool, e: OSError, msg: str) -> None:
        if strict:
            why = os.strerror(e.errno) if e.errno else str(e)
            if not msg.endswith(why):  # an mbind refusal already says why
                msg = f"{msg}: {why}"
            raise OSError(e.errno, msg) from None
        self.refused.append(msg)


# ---- files ----------------------------------------------------------------------------
class FileMemory(_Mapped):
    """A file mapped shared: writes reach the file, and a later mapping sees them.

    ``FileMemory(path, size)`` creates the file when it is missing and extends it to
    ``size`` bytes when it is shorter (allocating the blocks, so a full disk is an
    error now rather than a SIGBUS later); ``FileMemory(path)`` maps an existing file
    whole.  :meth:`flush` makes the bytes durable (msync).  With ``exclusive=True``
    the file is flock()ed until close(): a second exclusive opener, in this process
    or another, gets BlockingIOError.  The lock is this object's own: a process
    forked while it is held does not inherit it.
    """

    _shared_mapping = True

    def __init__(self, path: str | os.PathLike[str], size: int | str | None = None,
                 *, readonly: bool = False, exclusive: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self._holds()
        want = parse_size(size, "size") if size is not None else None
        if want is not None and want >= 1 << 63:  # (an OverflowError from the os calls)
            raise OSError(errno.EFBIG, f"size {want} is larger than any file", str(path))
        # (O_NONBLOCK: opening a FIFO to read waited for a writer; the mapping refuses it)
        flags = os.O_RDONLY | os.O_NONBLOCK if readonly else os.O_RDWR | (os.O_CREAT if want else 0)
        for _ in range(10):
            made = False
            if flags & os.O_CREAT:  # (a file this call makes goes again if it fails)
                try:
                    fd = os.open(self.path, flags | os.O_EXCL, 0o600)
                    made = True
                except FileExistsError:
                    fd = os.open(self.path, flags, 0o600)
            else:
                fd = os.open(self.path, flags, 0o600)
            try:
                if exclusive:
                    lock_fd = _lock(self.path, fd)
                    if lock_fd < 0:  # the path was replaced meanwhile: open the new file
                        continue
                    self._lk.fd, self._lk.pid = lock_fd, os.getpid()
                    _LOCKED.add(self)
                have = os.fstat(fd).st_size
                if want is None:
                    if have == 0:
                        raise ValueError(f"{self.path} is empty: give a size to create it")
                    want = have
                elif have < want:
                    if readonly:
                        raise ValueError(f"{self.path} holds {have} bytes, fewer than {want}")
                    _allocate(fd, want)
                self._map(fd, want, readonly)
                return
            except BaseException:
                # a file this call made goes again while still ours: locked by us, or
                # (not exclusive) still empty, sized by no one else (a lost lock race
                # leaves the winner's file alone)
                if made and (self._lk.fd >= 0 or (not exclusive and os.fstat(fd).st_size == 0)):
                    _unlink_if(self.path, fd)
                self._release_lock()
                raise
            finally:
                os.close(fd)
        raise BlockingIOError(errno.EWOULDBLOCK, f"{self.path} keeps being replaced")

    def _map(self, fd: int, size: int, readonly: bool = False) -> None:
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, access=access)
        self.size = size
        self.buffer = self._mmap

    @classmethod
    def _create(cls, path: str | os.PathLike[str], size: int,
                fill: Callable[[memoryview], None], *, exist_ok: bool) -> FileMemory:
        """A new locked file of ``size`` bytes at ``path``, ``fill(view)`` written into it.

        The lock is taken before any byte changes, and a failure leaves the path as it
        was.  Without ``exist_ok`` the file is made with O_EXCL (FileExistsError) and
        removed again on failure.  With it, the new file is built beside the old one and
        renamed over it while the old one's lock is held: BlockingIOError while the old
        file is open elsewhere, and the old bytes untouched when the new size cannot be
        allocated (a full disk, a size too large).
        """
        path = Path(path)
        if not exist_ok:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                return cls._build(path, path, fd, size, fill)
            except BaseException:
                _unlink_if(path, fd)
                raise
            finally:
                os.close(fd)
        target = Path(os.path.realpath(path))  # a link: replace the file it names
        old_fd, made = _open_target(target)
        try:
            old_lock = _lock(target, old_fd)
            if old_lock < 0:  # replaced between open and lock: another creator is at work
                raise _busy(target)
            try:  # the old file is ours now: build the new one beside it, then rename
                mode = 0o600 if made else stat.S_IMODE(os.fstat(old_fd).st_mode)
                tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.fchmod(fd, mode)
                    mem = cls._build(path, tmp, fd, size, fill)
                    try:
                        os.replace(tmp, target)
                    except BaseException:
                        mem._release_lock()
                        mem.close_quietly()
                        raise
                except BaseException:
                    _unlink_if(tmp, fd)
                    raise
                finally:
                    os.close(fd)
            except BaseException:
                if made:  # the empty file we made to hold the lock goes again
                    _unlink_if(target, old_fd)
                raise
            finally:
                _unlock(old_lock)  # the old file's lock (it is off the path now)
        finally:
            os.close(old_fd)
        return mem

    @classmethod
    def _build(cls, path: Path, where: Path, fd: int, size: int,
               fill: Callable[[memoryview], None]) -> FileMemory:
        """Lock the new file ``fd`` (at ``where``), size it, map it, fill it, flush it."""
        mem = cls.__new__(cls)
        Source.__init__(mem)
        mem.path = path
        mem._holds()
        mem._lk.fd, mem._lk.pid = _lock(where, fd), os.getpid()
        if mem._lk.fd < 0:  # removed or replaced before we locked it
            raise FileExistsError(errno.EEXIST, f"{path} was replaced while being created")
        _LOCKED.add(mem)
        try:
            _allocate(fd, size)
            mem._map(fd, size)
            view = memoryview(mem._mmap)
            try:
                fill(view)
            finally:
                view.release()
            mem._mmap.flush()
        except BaseException:
            mem._release_lock()
            if hasattr(mem, "_mmap"):
                mem.close_quietly()
            raise
        return mem

    def close(self) -> None:
        super().close()
        if self._closed:
            self._release_lock()

    def _release_lock(self) -> None:
        """Let the file go (the exclusive flock), mapped or not: a failed open must.

        Only the process that took the lock unlocks it: a forked child's copy of this
        object never does (it would unlock the parent, see _after_fork_in_child)."""
        if self._lk.fd >= 0:
            self._lk.release()
            _LOCKED.discard(self)

    def _holds(self) -> None:
        # the lock, in a box the finalizer shares: a FileMemory collected without
        # close() (its Pool dropped unclosed) lets the file go with it, where it kept it
        # locked, and a descriptor, until the process ended
        self._lk = _Lock()
        weakref.finalize(self, self._lk.release)

    @property
    def _lock_fd(self) -> int:
        return self._lk.fd

    def flush(self) -> None:
        """Write the mapped bytes back to the file (msync)."""
        self._check_open()
        self._mmap.flush()

    def __repr__(self) -> str:
        return f"<FileMemory {str(self.path)!r} size={self.size}{' closed' if self._closed else ''}>"


# The FileMemory objects holding a lock, and how a fork() leaves it with the parent.
#
# The lock is an flock on a descriptor of its own (its own open file description,
# shared with no mapping, O_CLOEXEC).  flock locks belong to the open file
# description, and fork() shares that with the child: a child's copy of the
# descriptor would keep the file locked after the parent closed its pool, for as long
# as the child lives.  Two things keep the lock the parent's alone, without the parent
# waiting for the child at fork():
# - the parent lets go with LOCK_UN before it closes (_unlock): that drops the lock
#   from the open file description, whatever copies a child still holds;
# - the child closes its copies at once (_after_fork_in_child), never with LOCK_UN
#   (that would unlock the parent's), and its FileMemory objects forget them, so the
#   child holds no lock, cannot unlock the parent's, and can take the file itself once
#   the parent let go.
# A child made by a fork that runs no Python hooks (C code) keeps its copies until it
# execs (O_CLOEXEC) or exits: harmless while the parent holds the lock, and the
# parent's close() unlocks them all the same.  Only a parent that dies without
# closing (killed) leaves the lock to such a child until it exits or execs.
_LOCKED: weakref.WeakSet[FileMemory] = weakref.WeakSet()


class _Lock:
    """A FileMemory's flock: its descriptor and the process that took it (-1, 0: none)."""

    __slots__ = ("fd", "pid")

    def __init__(self) -> None:
        self.fd, self.pid = -1, 0

    def release(self) -> None:
        """Let it go once: unlocked in the process that took it, else only closed."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        if self.pid == os.getpid():
            _unlock(fd)
        else:
            os.close(fd)


def _unlock(fd: int) -> None:
    """Unlock the flock held through ``fd`` and close it; in the process that locked
    it only.  LOCK_UN first: it unlocks every copy a forked child may still hold."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _after_fork_in_child() -> None:
    for mem in list(_LOCKED):
        if mem._lk.fd >= 0:
            try:
                os.close(mem._lk.fd)
            except OSError:
                pass
            mem._lk.fd = -1
    _LOCKED.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _busy(path: Path) -> BlockingIOError:
    return BlockingIOError(
        errno.EWOULDBLOCK,
        f"{path} is open elsewhere (a persistent pool has one writer at a time; use a "
        "SharedPool to share a pool between processes)")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lock(path: Path, fd: int) -> int:
    """flock the file ``fd`` (opened at ``path``) through a descriptor of its own.

    Returns the locked descriptor; -1 when ``path`` no longer names that file (it was
    replaced or removed meanwhile); BlockingIOError when it is locked elsewhere.
    """
    try:
        lock_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    try:
        if not _same_file(os.fstat(lock_fd), os.fstat(fd)):
            os.close(lock_fd)
            return -1
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(path) from None
        try:  # still the file at `path` now that we hold it?
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is None or not _same_file(now, os.fstat(fd)):
            _unlock(lock_fd)
            return -1
    except BaseException:
        try:
            _unlock(lock_fd)  # whether or not flock() took it
        except OSError:
            pass
        raise
    return lock_fd


def _allocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes with their blocks allocated (a full disk: an error,
    and the file back at its size: posix_fallocate keeps what it got when it fails)."""
    before = os.fstat(fd).st_size
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            if os.fstat(fd).st_size > before:
                os.ftruncate(fd, before)
            raise
        os.ftruncate(fd, size)


def _open_target(path: Path) -> tuple[int, bool]:
    """Open the file to be replaced, making it when missing: (fd, made).  Only a regular
    file is replaced (FileExistsError for anything else: a FIFO, a device)."""
    while True:
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            pass
        try:  # (non-blocking: opening a FIFO to read waits for a writer)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd, False
        os.close(fd)
        raise FileExistsError(errno.EEXIST, "exists and is not a regular file (exist_ok "
                              "replaces a regular file only)", str(path))


def _unlink_if(path: Path, fd: int) -> None:
    """Remove ``path`` if it still names the file ``fd`` (ours to remove)."""
    try:
        if _same_file(os.stat(path), os.fstat(fd)):
            os.unlink(path)
    except FileNotFoundError:
        pass


# ---- shared memory ------------------------------------------------------------------------
SHM_DIR = Path("/dev/shm")


def _shm_path(name: str) -> Path:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name or len(name) > 200 or not all(c.isalnum() or c in "._-" for c in name) \
            or name.startswith("."):
        raise ValueError(f"a shared memory name is 1-200 of [A-Za-z0-9._-], not starting with "
                         f"'.', got {name!r}")
    return SHM_DIR / name


def _allocated_spans(size: int, holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[0, size) less the whole pages of each hole (offset, length), as (start, end)s."""
    cut = sorted((-(-off // PAGE) * PAGE, (off + n) // PAGE * PAGE) for off, n in holes)
    spans, at = [], 0
    for lo, hi in cut:
        lo, hi = max(lo, at), min(hi, size)
        if hi <= lo:
            continue
        spans.append((at, lo))
        at = hi
    spans.append((at, size))
    return [(lo, hi) for lo, hi in spans if hi > lo]


class SharedMemory(_Mapped):
    """A POSIX shared memory segment (``/dev/shm/<name>``) mapped shared.

    ``SharedMemory(name, size, create=True, mode=0o600)`` makes a new segment
    (FileExistsError when the name is taken) and allocates its pages up front, so a
    full /dev/shm is an error now rather than a SIGBUS later (but for the whole pages
    of the ``unallocated`` spans, ``(offset, length)`` pairs: a reserve its user
    allocates before it touches it, as a shared pool's registry does); ``SharedMemory(name)``
    maps an existing one (FileNotFoundError, PermissionError).  Unlike
    ``multiprocessing.shared_memory``, nothing is registered with a resource tracker:
    the segment lives until :meth:`unlink`, and attaching never unlinks.
    """

    _shared_mapping = True

    def __init__(self, name: str, size: int | str | None = None, *, create: bool = False,
                 mode: int = 0o600, unallocated: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__()
        self.name = name
        self.path = _shm_path(name)
        if create:
            if size is None:
                raise ValueError("creating a shared memory segment needs a size")
            want = parse_size(size, "size")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
                os.ftruncate(fd, want)
                for lo, hi in _allocated_spans(want, unallocated):
                    os.posix_fallocate(fd, lo, hi - lo)
            except BaseException:
                os.close(fd)
                os.unlink(self.path)
                raise
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            want = os.fstat(fd).st_size
            if want == 0:
                os.close(fd)
                raise ValueError(f"shared memory segment {name!r} is empty")
        try:
            self._mmap = mmap.mmap(fd, want, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            if create:
                os.unlink(self.path)
            raise
        self._fd = fd  # the segment itself, whatever its name names later (a state grows)
        # (collected without close(), as a SharedPool replaced in shared._attached is:
        # the fd goes with it, else it kept an unlinked segment's memory for good)
        self._fd_closer = weakref.finalize(self, os.close, fd)
        self.size = want
        self.buffer = self._mmap

    def close(self) -> None:
        super().close()
        if self._closed and self._fd >= 0:
            self._fd_closer()  # (closes it once)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the name; the memory stays mapped until every process closes it."""
        os.unlink(self.path)

    def __repr__(self) -> str:
        return f"<SharedMemory {self.name!r} size={self.size}{' closed' if self._closed else ''}>"


# ---- someone else's buffer ------------------------------------------------------------
def _maps_shared(address: int, size: int) -> bool:
    """Whether any of [address, address + size) is a shared mapping of this process
    (/proc/self/maps: an 's' in the permissions); False where that cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return False
    end = address + size
    for line in lines:
        span, perms = line.split(None, 2)[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo < end and address < hi and perms.endswith("s"):
            return True
    return False


class BufferMemory(Source):
    """Any writable C-contiguous buffer (bytearray, NumPy array, mmap) without a copy.

    The object is kept alive while the source is open.  Raises TypeError for an
    object without the buffer protocol, ValueError for a read-only, non-contiguous
    or empty one.
    """

    def __init__(self, obj: Any) -> None:
        super().__init__()
        try:
            view = memoryview(obj)
        except TypeError:
            raise TypeError(f"BufferMemory needs a buffer, not {type(obj).__name__}") from None
        if view.readonly:
            view.release()
            raise ValueError("BufferMemory needs a writable buffer")
        if not view.c_contiguous:
            view.release()
            raise ValueError("BufferMemory needs a C-contiguous buffer")
        if view.nbytes == 0:
            view.release()
            raise ValueError("BufferMemory needs a buffer of at least one byte")
        if "O" in re.sub(r":[^:]*:", "", view.format or ""):  # (a struct's object fields
            # are 'O' too; its field names, between colons, are not formats)
            fmt = view.format
            view.release()
            raise ValueError(f"BufferMemory needs plain bytes, not a buffer of Python object "
                             f"references (format {fmt!r}): a pool would write over them")
        self.obj = obj
        self.buffer = view.cast("B") if view.ndim != 1 or view.format != "B" else view
        self._view = view
        self.size = view.nbytes
        # memory other processes map too (an mmap, np.memmap, a SharedMemory's buf): a
        # pool over it serves only this process, as over a file (a forked child's copy
        # of the pool's state would hand out the parent's live ranges again)
        self._shared_mapping = _maps_shared(_mempool.address_of(self.buffer), self.size)

    def close(self) -> None:
        if self._closed:
            return
        if self.buffer is not self._view:
            self.buffer.release()
        self._view.release()
        self._closed = True


class External(Source):
    """No bytes: ``capacity`` offsets of memory that lives elsewhere (a GPU buffer).

    A pool over it hands out Blocks with an offset and a size but no buffer
    (``memoryview(block)`` raises TypeError) and no address.
    """

    def __init__(self, capacity: int | str) -> None:
        super().__init__()
        self.size = parse_size(capacity, "capacity")
        self.buffer = None

    def close(self) -> None:
        """BufferError while an open pool uses it (no buffer export keeps it open)."""
        if (p := self._user()) is not None:
            raise BufferError(f"cannot close the source: {p!r} uses it")
        super().close()
