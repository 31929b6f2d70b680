"""mempool on Dask: one shared pool per host, arrays between a host's workers without
copies (layer 5; needs ``distributed``: ``pip install 'mempool[dask]'``).

``client.register_plugin(SharedPoolPlugin("8GiB"))`` gives every worker of the cluster
a :class:`~mempool.SharedPool` shared with the other workers of its host: the first
worker of a host creates the segment, the others attach to it.  Inside a task,
:func:`empty`, :func:`zeros` and :func:`array` make NumPy arrays in that pool and
:func:`host_pool` is the pool itself.

How an array moves (the receiving side never has to be told which case it is in):

* **as a handle** when Dask sends a pool array to a worker that has the *same*
  segment attached: only the handle (pool name, segment id, offset, tag, dtype, shape,
  strides: about 150 bytes) travels, and the receiver gets a zero-copy view of the same
  bytes.  Every worker with the plugin advertises its segment in the comm handshake
  (``handshake_overrides``: the worker is the side that connects when it fetches
  data), and the serializer registered for :class:`~mempool.shared.SharedArray` with
  ``distributed.protocol`` compares the recipient's segment with the array's;
* **as bytes**, exactly as Dask sends any NumPy array, to anyone else: a worker of
  another host, a worker without the plugin, the client, the scheduler, and spilling
  to disk (no recipient at all).  The receiver gets a plain ndarray.

Lifetime follows Dask's: the worker's data holds the array, the array holds one
reference of its range; when the scheduler releases the key every worker drops its
array and the range is freed with the last reference.  A worker that dies (killed,
crashed) is reclaimed by the other workers of its host: every worker writes its pid to
a small members file beside the segment (``/dev/shm/<name>.members``) and checks, every
``reclaim_interval`` seconds, that the members still run and still map the segment;
the references of one that does not are released (:meth:`SharedPool.reclaim`).  The
last worker of a host to leave unlinks the segment and the members file; a host whose
workers all died (no teardown ran) is cleaned by the next worker that starts the
plugin on that host: a members file whose members are all gone is a leaked pool.
Every change to a members file, and every create, attach and unlink, happens under an
``flock`` of ``/dev/shm`` itself, so the workers of a host agree on who is last.

Settings come from the plugin's arguments, else from Dask's config (``mempool.dask.*``
keys, e.g. in ``~/.config/dask/distributed.yaml`` or ``DASK_MEMPOOL__DASK__CAPACITY``):
``capacity``, ``name``, ``strategy``, ``reclaim-interval``, ``lease-timeout``.
The config is read on each worker when the plugin starts there, so each host may set
its own capacity.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.config
import numpy as np
import numpy.typing as npt
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.numpy import deserialize_numpy_ndarray, serialize_numpy_ndarray
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from ._units import parse_size
from .errors import OutOfSpace
from .shared import SharedArray, SharedPool, _alive, _block_of
from .sources import SHM_DIR, _shm_path

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["SharedPoolPlugin", "array", "empty", "host_pool", "zeros"]

logger = logging.getLogger(__name__)

#: the key in the comm handshake under which a worker advertises its host pool
HANDSHAKE_KEY = "mempool-dask"
#: the first line of a members file (anything else there is not ours)
MEMBERS_MAGIC = "mempool-dask-members 1"
#: default segment names start with this (an explicit ``name`` is used as given)
DEFAULT_PREFIX = "mempool-dask-"


# ---- the host -----------------------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - every Linux has it
        return os.uname().nodename


@contextlib.contextmanager
def _host_lock(shm_dir: Path = SHM_DIR) -> Iterator[None]:
    """An exclusive ``flock`` of the shared memory directory: the workers of one host
    take it around create/attach, members-file changes, reclaim and unlink."""
    fd = os.open(shm_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _members_path(name: str) -> Path:
    return SHM_DIR / f"{name}.members"


def _read_members(path: Path) -> tuple[bool, list[int]] | None:
    """(owned, pids) of a members file, None when it is missing or not ours."""
    try:
        lines = path.read_text().split("\n")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].startswith(MEMBERS_MAGIC):
        return None
    owned = lines[0].endswith(" owned")
    pids = [int(s) for s in lines[1:] if s.strip().isdigit()]
    return owned, pids


def _write_members(path: Path, owned: bool, pids: list[int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(MEMBERS_MAGIC + (" owned" if owned else " foreign") + "\n"
                   + "".join(f"{p}\n" for p in pids))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _maps_segment(pid: int, dev: int, ino: int) -> bool:
    """Whether process ``pid`` runs and has the segment (device, inode) mapped."""
    if not _alive(pid):
        return False
    want_dev = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    want_ino = str(ino)
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) >= 5 and parts[4] == want_ino and parts[3] == want_dev:
                    return True
    except OSError:
        return False  # gone meanwhile, or not ours to read (then not ours to share)
    return False


def _segment_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _live_members(name: str, pids: list[int], exclude: int = 0) -> list[int]:
    """The pids among ``pids`` (but ``exclude``) that run and map segment ``name``."""
    ident = _segment_id(SHM_DIR / name)
    if ident is None:
        return []
    return [p for p in pids if p != exclude and _maps_segment(p, *ident)]


def cleanup_leaked(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the pools of this host whose workers are all gone (a cluster killed
    without teardown): every ``<name>.members`` file in ``shm_dir`` none of whose
    members runs and maps ``<name>``.  The segment itself is unlinked only when the
    plugin created it.  Returns the names cleaned.  Call it under no lock: it takes
    the host lock itself."""
    with _host_lock(shm_dir):
        return _cleanup_leaked_locked(shm_dir)


def _cleanup_leaked_locked(shm_dir: Path) -> list[str]:
    cleaned = []
    for mf in shm_dir.glob("*.members"):
        name = mf.name[: -len(".members")]
        got = _read_members(mf)
        if got is None:
            continue
        owned, pids = got
        if _live_members(name, pids):
            continue
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shm_dir / name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mf)
        cleaned.append(name)
    return cleaned


# ---- this process's host pool ---------------------------------------------------------
@dataclass
class _HostState:
    pool: SharedPool
    token: str  #: what the handshake advertises: boot id, name, segment id
    users: int  #: workers of this process that use it (several with processes=False)


_state: _HostState | None = None
_state_lock = threading.Lock()


def _token(pool: SharedPool) -> str:
    return f"{_boot_id()}/{pool.name}/{pool.segment_id}"


def host_pool() -> SharedPool:
    """The shared pool of this worker's host.

    RuntimeError outside a worker that runs :class:`SharedPoolPlugin` (the client,
    the scheduler, a worker without the plugin).
    """
    st = _state
    if st is None or st.pool.closed:
        raise RuntimeError("no host pool in this process: register "
                           "mempool.dask.SharedPoolPlugin with the cluster, and call "
                           "host_pool() inside a task")
    return st.pool


def empty(shape: int | tuple[int, ...], dtype: npt.DTypeLike = "float64") -> SharedArray:
    """An uninitialized array in the host pool (as ``numpy.empty``); the range is freed
    when the last array over it, in any worker, is collected.  OutOfSpace when the
    pool has no room; RuntimeError outside a worker with the plugin."""
    arr: SharedArray = host_pool().empty(shape, dtype)  # type: ignore[assignment]
    return arr


def zeros(shape: int | tuple[int, ...], dtype: npt.DTypeLike = "float64") -> SharedArray:
    """A zero-filled array in the host pool (as ``numpy.zeros``); see :func:`empty`."""
    arr: SharedArray = host_pool().zeros(shape, dtype)  # type: ignore[assignment]
    return arr


def array(obj: Any, dtype: npt.DTypeLike | None = None) -> SharedArray:
    """A copy of ``obj`` in the host pool (as ``numpy.array``); see :func:`empty`."""
    arr: SharedArray = host_pool().array(obj, dtype)  # type: ignore[assignment]
    return arr


# ---- serialization --------------------------------------------------------------------
def _serialize_shared(x: SharedArray, context: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], list[Any]]:
    """A handle when the recipient advertises the array's own segment, else the bytes
    exactly as Dask's NumPy serializer sends them."""
    recipient = (context or {}).get("recipient") or {}
    want = recipient.get(HANDSHAKE_KEY) if isinstance(recipient, dict) else None
    if want is not None:
        blk = _block_of(x)
        if blk is not None and blk.live and isinstance(blk.pool, SharedPool) \
                and want == _token(blk.pool):
            # SharedArray.__reduce__: a handle that holds a lease until unpickled; with
            # the lease table full (more arrays in flight than max_leases), the bytes
            # (an exception here left Dask's transfer hanging)
            try:
                return {"mempool-handle": True}, [pickle.dumps(x, protocol=5)]
            except OutOfSpace:
                pass
    header, frames = serialize_numpy_ndarray(x.view(np.ndarray), context=context)
    return header, frames


def _deserialize_shared(header: dict[str, Any], frames: list[Any]) -> np.ndarray:
    if header.get("mempool-handle"):
        arr: np.ndarray = pickle.loads(frames[0])
        return arr
    plain: np.ndarray = deserialize_numpy_ndarray(header, frames)
    return plain


# distributed's Dispatch.register is untyped
dask_serialize.register(SharedArray)(_serialize_shared)  # type: ignore[no-untyped-call]
dask_deserialize.register(SharedArray)(_deserialize_shared)  # type: ignore[no-untyped-call]


# ---- the plugin -------------------------------------------------------------------------
def _config(key: str, value: Any, default: Any = None) -> Any:
    if value is not None:
        return value
    return dask.config.get(f"mempool.dask.{key}", default=default)


class SharedPoolPlugin(WorkerPlugin):
    """One :class:`~mempool.SharedPool` per host for every worker of a Dask cluster.

    ``client.register_plugin(SharedPoolPlugin("8GiB"))``.

    Parameters
    ----------
    capacity : int or str, optional
        Bytes of the host pool (``"8GiB"``); default the ``mempool.dask.capacity``
        config key.  The first worker of a host creates the pool with it; the others
        attach to it as it is.
    name : str, optional
        The segment's name (``/dev/shm/<name>``); default ``mempool.dask.name``, else
        ``mempool-dask-`` and a hash of the scheduler's address, so two clusters on
        one host have two pools.
    strategy : str
        The allocator (``"tlsf"``; config ``mempool.dask.strategy``).
    reclaim_interval : float
        Seconds between two checks for dead workers of the host (default 1.0; config
        ``mempool.dask.reclaim-interval``).
    lease_timeout : float
        Seconds a handle in flight keeps its range alive (SharedPool.create's, default
        600; config ``mempool.dask.lease-timeout``).
    **options
        Passed to :meth:`SharedPool.create` (``max_entries``, ``max_leases``, the
        strategy's own options).

    ValueError or TypeError now for a bad capacity, name or interval; the workers'
    errors (a full /dev/shm: OSError) are raised by ``register_plugin``.
    """

    name = "mempool.dask.SharedPoolPlugin"  # the plugin's key: registering again replaces it
    idempotent = False

    def __init__(self, capacity: int | str | None = None, *, name: str | None = None,
                 strategy: str | None = None, reclaim_interval: float | None = None,
                 lease_timeout: float | None = None, **options: Any) -> None:
        if capacity is not None:
            parse_size(capacity, "capacity")  # refuse a bad one here, not on every worker
        if name is not None:
            _shm_path(name)
        if reclaim_interval is not None:
            _check_interval(reclaim_interval)
        self.capacity = capacity
        self.pool_name = name
        self.strategy = strategy
        self.reclaim_interval = reclaim_interval
        self.lease_timeout = lease_timeout
        self.options = options
        self._pc: Any = None

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_pc"] = None
        return d

    # ---- lifecycle --------------------------------------------------------------------
    def _settings(self, worker: Worker) -> tuple[str, int, str, float, dict[str, Any]]:
        capacity = _config("capacity", self.capacity)
        if capacity is None:
            raise ValueError("SharedPoolPlugin needs a capacity (an argument, or the "
                             "mempool.dask.capacity config key)")
        name = _config("name", self.pool_name)
        if name is None:
            addr = str(worker.scheduler.address)
            name = DEFAULT_PREFIX + hashlib.sha1(addr.encode()).hexdigest()[:16]
        _shm_path(name)
        strategy = _config("strategy", self.strategy, "tlsf")
        interval = _check_interval(_config("reclaim-interval", self.reclaim_interval, 1.0))
        options = dict(self.options)
        lease = _config("lease-timeout", self.lease_timeout)
        if lease is not None:
            options["lease_timeout"] = float(lease)
        return name, parse_size(capacity, "capacity"), strategy, interval, options

    def setup(self, worker: Worker) -> None:
        """Create or attach the host pool, join the members, advertise the pool in the
        handshake of this worker's connections, start the reclaim check."""
        global _state
        name, capacity, strategy, interval, options = self._settings(worker)
        with _state_lock:
            if _state is not None and not _state.pool.closed and _state.pool.name == name:
                _state.users += 1
            else:
                with _host_lock():
                    _cleanup_leaked_locked(SHM_DIR)
                    pool = self._open(name, capacity, strategy, options)
                _state = _HostState(pool, _token(pool), 1)
            token = _state.token
        # the worker connects to the workers it fetches from: its handshake tells them
        # which segment it has, so they send handles only to a worker that can use them
        for args in _connection_args(worker):
            args.setdefault("handshake_overrides", {})[HANDSHAKE_KEY] = token
        worker.rpc.collect()  # idle connections made before keep their old handshake
        from tornado.ioloop import PeriodicCallback

        self._pc = PeriodicCallback(self._reclaim_dead, interval * 1000)
        self._pc.start()

    @staticmethod
    def _open(name: str, capacity: int, strategy: str, options: dict[str, Any]) -> SharedPool:
        mpath = _members_path(name)
        got = _read_members(mpath)
        try:
            pool = SharedPool.attach(name)
            owned = got[0] if got is not None else False  # made by someone else: not ours
        except FileNotFoundError:
            pool = SharedPool.create(name, capacity, strategy, **options)
            owned, got = True, None
        pids = got[1] if got is not None else []
        if os.getpid() not in pids:  # a plugin re-added in this process: once only
            pids.append(os.getpid())
        _write_members(mpath, owned, pids)
        return pool

    def _reclaim_dead(self) -> None:
        st = _state
        if st is None or st.pool.closed:
            return
        try:
            reclaim_dead(st.pool)
        except Exception:  # a periodic check: log, never kill the worker
            logger.exception("mempool.dask: reclaiming dead workers' blocks failed")

    def teardown(self, worker: Worker) -> None:
        """Stop the check; the last worker of the host unlinks the segment."""
        global _state
        if self._pc is not None:
            self._pc.stop()
            self._pc = None
        for args in _connection_args(worker):
            args.get("handshake_overrides", {}).pop(HANDSHAKE_KEY, None)
        worker.rpc.collect()
        with _state_lock:
            st = _state
            if st is None:
                return
            st.users -= 1
            if st.users > 0:
                return
            _state = None
            _leave(st.pool)


def _connection_args(worker: Worker) -> list[dict[str, Any]]:
    """The connect() arguments of the worker's connections (its own and its rpc pool's:
    the same dict unless Dask copied it)."""
    dicts: list[dict[str, Any]] = [worker.connection_args, worker.rpc.connection_args]
    return list({id(d): d for d in dicts}.values())


def _check_interval(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
        raise ValueError(f"reclaim_interval must be a number of seconds > 0, got {v!r}")
    return float(v)


def reclaim_dead(pool: SharedPool) -> list[int]:
    """Release what the host's dead workers held in ``pool`` (their pids leave the
    members file); returns those pids.  The plugin calls it every
    ``reclaim_interval`` seconds."""
    mpath = _members_path(pool.name)
    with _host_lock():
        got = _read_members(mpath)
        if got is None:
            return []
        owned, pids = got
        me = os.getpid()
        live = set(_live_members(pool.name, pids, exclude=me))
        dead = [p for p in pids if p != me and p not in live]
        for pid in dead:
            # not running, or a pid reused by a process that does not map the pool
            pool.reclaim(pid, force=True)
        if dead:
            _write_members(mpath, owned, [p for p in pids if p not in dead])
    return dead


def _leave(pool: SharedPool) -> None:
    """This process is done with ``pool``: close it (kept open while arrays of it are
    alive) and, when no other member runs, unlink the segment and the members file.

    The close comes first, outside the host lock: a process that has unmapped the
    segment no longer counts as a member that runs it, so of two workers leaving at
    once the second to take the lock unlinks (deciding before closing, each saw the
    other still mapped and neither unlinked: the segment was left to the next
    cluster's cleanup)."""
    name = pool.name
    try:
        pool._flush_cache()
        pool.close()
    except BufferError:
        pass  # arrays of it still alive in this process: it is unmapped at exit
    mpath = _members_path(name)
    with _host_lock():
        got = _read_members(mpath)
        last = got is None or not _live_members(name, got[1], exclude=os.getpid())
        if last and got is not None:
            if got[0]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(SHM_DIR / name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mpath)
        # not last: our pid stays a member, so the others reclaim what we still hold
        # once this process is gone

