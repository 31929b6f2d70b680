"""Allocation traces: read the ``mempool-trace v1`` format, replay it in C, record one.

The format (``../shared/traces/README.md``)::

    # mempool-trace v1 program=<name> maxlive=<peak live bytes> ops=<count>
    a ID SIZE            allocate SIZE bytes
    a ID SIZE ALIGN      allocate SIZE bytes aligned to ALIGN
    f ID                 free ID
    r ID SIZE            resize ID to SIZE bytes (realloc; ID stays the same)

:func:`read` parses a file (plain or gzip) into NumPy arrays with a C parser and
validates it; :func:`replay` runs a whole trace through a strategy inside C, with
no Python per operation, and frees what is left live at the end; :func:`record`
writes the allocations of a block of code as a trace.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import _active, _mempool
from ._mempool import Strategy
from ._units import as_integer
from .errors import OutOfSpace
from .strategies import RANGE_STRATEGIES, strategy_type

__all__ = [
    "MAX_TRACE_BYTES", "MallocRecording", "Recording", "ReplayResult", "ReplaySeries",
    "Trace", "TraceError", "bundled", "malloc_recorder", "python_replay", "read", "record",
    "record_malloc", "replay", "replay_series", "strategy_for",
]

MAGIC = "mempool-trace v1"


class TraceError(ValueError):
    """A trace file is malformed; the message names the file and the line."""


@dataclass(frozen=True, eq=False)
class Trace:
    """A parsed trace: one entry per operation in four parallel arrays.

    Attributes
    ----------
    op : numpy.ndarray of uint8
        0 = alloc, 1 = free, 2 = realloc.
    id : numpy.ndarray of uint32
        The allocation's ID (a label: sparse IDs, the largest at least twice the number
        of operations plus 4096, are numbered anew densely, in the order of their
        values).
    size : numpy.ndarray of uint64
        Requested bytes (0 for free; an alloc may ask for 0).
    align : numpy.ndarray of uint32
        Alignment in bytes (1 when the line gives none).
    program : str
        The header's ``program=`` field ('' when absent).
    maxlive : int
        Peak of the requested bytes of live IDs, computed from the operations.
    name : str
        A short name (the file name without ``.trace[.gz]``).
    header : dict
        Every ``key=value`` of the header line.
    """

    op: np.ndarray
    id: np.ndarray
    size: np.ndarray
    align: np.ndarray
    program: str
    maxlive: int
    name: str
    header: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # IDs are labels: sparse ones (the largest far above the number of operations)
        # are numbered anew, densely and in order, so that what a replay keeps per ID
        # stays as large as the trace (a 50-byte file with ID 500,000,000 took 8 GB)
        object.__setattr__(self, "id", _dense_ids(self.id))  # (a frozen dataclass)

    def __len__(self) -> int:
        return len(self.op)

    @property
    def max_id(self) -> int:
        """The largest ID (0 for an empty trace)."""
        return int(self.id.max()) if len(self.id) else 0

    def head(self, n: int) -> Trace:
        """The first ``n`` operations (a prefix of a trace is a valid trace)."""
        n = int(n)
        if n < 0:
            raise ValueError(f"head takes a count of operations >= 0, got {n}")
        n = min(n, len(self))
        _ok, maxlive, _why = _mempool.validate_trace(
            self.op[:n], self.id[:n], self.size[:n], self.align[:n], self.max_id
        )
        return Trace(
            self.op[:n], self.id[:n], self.size[:n], self.align[:n],
            self.program, int(maxlive), self.name, dict(self.header),
        )


def _dense_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` as they are, or numbered 0, 1, ... in the order of their values when the
    largest is at least twice their count (the operations) plus 4096."""
    if len(ids) and int(ids.max()) >= 2 * len(ids) + 4096:
        return np.unique(ids, return_inverse=True)[1].astype(np.uint32).reshape(ids.shape)
    return ids


MAX_TRACE_BYTES = 1 << 30
"""What :func:`read` takes by default: a trace's text of at most 1 GiB (plain, or as it
inflates from gzip), ~50 million operations."""


def _open_bytes(path: Path, max_bytes: int) -> bytes:
    # (a FIFO would wait for a writer, even to be opened, and /dev/zero never end: a
    # trace is a regular file.  Never more than max_bytes + 1 in memory, nor asked for
    # up front: a few KiB of gzip can inflate to any size)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TraceError(f"{path}: not a regular file")
        zipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not zipped:
            data = _read_at_most(f, max_bytes, st.st_size)
        else:
            try:
                with gzip.GzipFile(fileobj=f) as g:
                    data = _read_at_most(g, max_bytes, 0)
            except (OSError, EOFError, zlib.error) as e:
                raise TraceError(f"{path}: not a valid gzip file ({e})") from None
    if len(data) > max_bytes:
        raise TraceError(f"{path}: more than max_bytes={max_bytes:,} bytes of trace"
                         f"{' once inflated' if zipped else ''} (a larger max_bytes reads "
                         f"it: read(path, max_bytes=...), or --max-bytes)")
    return data


def _read_at_most(f: Any, max_bytes: int, expect: int) -> bytes:
    """Up to max_bytes + 1 bytes of f, in chunks of 1 MiB (a read of max_bytes + 1 at
    once asks for that much memory first, however small the file), but ``expect`` bytes
    (a plain file's size) at once when that is within the bound."""
    data = f.read(expect) if 0 < expect <= max_bytes else b""
    more = f.read(min(1 << 20, max_bytes + 1 - len(data)))
    if not more:
        return data
    out = bytearray(data)
    while more:
        out += more
        more = f.read(min(1 << 20, max_bytes + 1 - len(out))) if len(out) <= max_bytes else b""
    return bytes(out)


def _line_of_op(text: bytes, k: int) -> int:
    """The 1-based line of the k-th operation (error path only)."""
    seen = -1
    for lineno, line in enumerate(text.split(b"\n"), 1):
        s = line.strip()
        if s and not s.startswith(b"#"):
            seen += 1
            if seen == k:
                return lineno
    return 0


def read(path: str | os.PathLike[str], *, max_bytes: int = MAX_TRACE_BYTES) -> Trace:
    """Read a ``mempool-trace v1`` file (plain text or gzip) into a :class:`Trace`.

    ``max_bytes`` bounds the trace's text (plain, or as it inflates from gzip: a small
    file can inflate to any size); the default is :data:`MAX_TRACE_BYTES` (1 GiB).

    Raises
    ------
    TraceError
        (a ValueError) naming the file and the line of the first malformed record, of
        an operation on an ID that is not live, or an allocation of a live ID; or a
        text over ``max_bytes``, or a file that is not regular or not valid gzip.
    OSError
        When the file cannot be read.
    """
    n = as_integer(max_bytes, bool_ok=False)
    if n is None:
        raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
    max_bytes = n
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
    path = Path(path)
    return _parse(_open_bytes(path, max_bytes), path)


def _parse(text: bytes, path: Path) -> Trace:
    """:func:`read`'s work on the bytes of a trace (``path`` names it in errors)."""
    first, _, _ = text.partition(b"\n")
    try:  # (UTF-8: the recorders write the program's name as it is)
        header_line = first.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TraceError(f"{path}: line 1: not a {MAGIC} header") from None
    if header_line.split()[:3] != ["#", *MAGIC.split()]:  # (v1 exactly: not v12, v1.5)
        raise TraceError(f"{path}: line 1: not a {MAGIC} header: {header_line[:60]!r}")
    header = dict(
        kv.split("=", 1) for kv in header_line[len("# " + MAGIC):].split() if "=" in kv
    )
    cap = text.count(b"\n") + 1
    op = np.empty(cap, np.uint8)
    ids = np.empty(cap, np.uint32)
    size = np.empty(cap, np.uint64)
    align = np.empty(cap, np.uint32)
    try:
        n = _mempool.parse_trace(text, op, ids, size, align)
    except ValueError as e:
        raise TraceError(f"{path}: {e}") from None
    op, ids, size, align = op[:n].copy(), ids[:n].copy(), size[:n].copy(), align[:n].copy()
    dense = _dense_ids(ids)
    max_id = int(dense.max()) if n else 0
    ok, value, why = _mempool.validate_trace(op, dense, size, align, max_id)
    if not ok:
        kind = {0: "alloc of an ID that is live", 1: "free of an ID that is not live",
                2: "realloc of an ID that is not live"}[int(op[value])]
        if why:
            kind = f"size {int(size[value])}: live bytes would pass 2**62"
        raise TraceError(f"{path}: line {_line_of_op(text, int(value))}: {kind} (ID {ids[value]})")
    name = path.name
    for suffix in (".gz", ".trace", ".txt"):
        name = name.removesuffix(suffix)
    return Trace(op, dense, size, align, header.get("program", ""), int(value), name, header)


def bundled() -> list[Path]:
    """The traces shipped with the package (recorded from real programs)."""
    folder = resources.files("mempool") / "traces"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".trace.gz"))


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` measured.

    ``ns_per_op`` is wall time of the C loop (final frees included) over ``ops``;
    ``high_water_ratio`` is ``high_water / maxlive`` (the span the strategy needed
    over the peak of live requested bytes; libc reports 0).
    """

    strategy: str
    trace: str
    ops: int
    ns_per_op: float
    failures: int
    peak_used: int
    high_water: int
    maxlive: int
    capacity: int

    @property
    def high_water_ratio(self) -> float:
        return self.high_water / self.maxlive if self.maxlive and self.high_water else 0.0


def strategy_for(trace: Trace, strategy: Any = "tlsf", *, capacity: int | None = None,
                 **options: Any) -> Strategy | None:
    """The strategy object that :func:`replay` would run ``trace`` through.

    ``strategy`` is what replay() takes: a name of :data:`mempool.STRATEGIES` or a
    strategy type (a new object over ``capacity`` bytes, default ``2 * trace.maxlive``
    and at least 4096, made with ``**options``), a strategy instance (returned as it
    is), or ``"libc"`` / None (returns None: the C library).  The range strategies
    (TLSF, BestFit) get a node table no larger than the trace needs, Bump and Heap
    ``capacity // 64`` blocks (in [1024, 2**20]; the replay loop runs in C and does not
    grow a state), unless ``max_blocks`` is given.  Make one to replay the same trace several times on one
    warm object, as the bench does.  ValueError / TypeError for an unknown strategy.
    """
    if strategy is None or strategy == "libc":
        return None
    if isinstance(strategy, Strategy):
        return strategy
    cap = int(capacity) if capacity is not None else max(2 * trace.maxlive, 4096)
    cls = strategy_type(strategy)
    if "max_blocks" not in options and any(issubclass(cls, t) for t in RANGE_STRATEGIES):
        # every live id is a range, and free ranges are at most one more (plus the one a
        # moving realloc holds for a moment): a node table no larger than the trace needs
        options = dict(options, max_blocks=min(cap, 2 * (trace.max_id + 1) + 64))
    elif "max_blocks" not in options and cls.__name__ in ("Bump", "Heap"):
        # the C replay loop does not grow a state (only the binding's calls do): the
        # budget these had before states grew, capacity // 64 in [1024, 2**20]
        options = dict(options, max_blocks=min(max(cap // 64, 1024), 1 << 20, cap))
    return cls(cap, **options)


def replay(
    trace: Trace | str | os.PathLike[str],
    strategy: Any = "tlsf",
    *,
    capacity: int | None = None,
    **options: Any,
) -> ReplayResult:
    """Replay a whole trace in C through ``strategy`` and return what it measured.

    Parameters
    ----------
    trace : Trace or path
    strategy : str, strategy type, strategy instance, or "libc"
        A name of :data:`mempool.STRATEGIES`, or ``"libc"`` for the C library's
        malloc/free/realloc/posix_memalign in the same C loop (the baseline).
    capacity : int, optional
        Bytes of the span; default ``2 * trace.maxlive`` (at least 4096).
    **options
        Passed to the strategy's constructor (``max_blocks=...``).

    Size-0 allocations are served as size 1.  A failed alloc or realloc is counted
    in ``failures``; later operations on that ID are skipped.
    """
    if not isinstance(trace, Trace):
        trace = read(trace)
    obj = strategy_for(trace, strategy, capacity=capacity, **options)
    r = _mempool.replay(obj, trace.op, trace.id, trace.size, trace.align, trace.max_id)
    n = max(r["ops"], 1)
    return ReplayResult(
        strategy=obj.strategy if obj is not None else "libc", trace=trace.name,
        ops=r["ops"], ns_per_op=r["elapsed_ns"] / n,
        failures=r["failures"], peak_used=r["peak_used"], high_water=r["high_water"],
        maxlive=r["maxlive"], capacity=obj.capacity if obj is not None else 0,
    )


def python_replay(trace: Trace, strategy: Any, *, capacity: int | None = None,
                  **options: Any) -> tuple[float, int]:
    """Replay ``trace`` op by op from a Python loop: (ns per op, failures).

    This is what a Python program pays per call (the loop's own cost included);
    use a prefix (``trace.head(n)``) to keep it short.
    """
    obj = strategy_for(trace, strategy, capacity=capacity, **options)
    if obj is None:
        return 0.0, 0
    ops, ids = trace.op.tolist(), trace.id.tolist()
    sizes = [s or 1 for s in trace.size.tolist()]
    aligns = trace.align.tolist()
    ptr: list[int | None] = [None] * (trace.max_id + 1)
    failures = 0
    alloc, free, realloc = obj.alloc, obj.free, obj.realloc
    t0 = time.perf_counter_ns()
    for o, i, s, a in zip(ops, ids, sizes, aligns, strict=False):
        try:
            if o == 0:
                ptr[i] = alloc(s, a)
            elif o == 1:
                p = ptr[i]
                if p is not None:
                    free(p)
                    ptr[i] = None
            else:
                p = ptr[i]
                if p is not None:
                    ptr[i] = realloc(p, s)
        except OutOfSpace:
            failures += 1
            if o == 0:
                ptr[i] = None
    for p in ptr:
        if p is not None:
            free(p)
    elapsed = time.perf_counter_ns() - t0
    return elapsed / max(len(ops), 1), failures


@dataclass(frozen=True, eq=False)
class ReplaySeries:
    """What :func:`replay_series` measured: the :class:`ReplayResult` and the strategy's
    figures sampled along the replay, one entry per sample, in parallel arrays.

    Attributes
    ----------
    result : ReplayResult
        As :func:`replay` gives it (its ``ns_per_op`` leaves the sampling out).
    ops : numpy.ndarray of uint64
        Operations done when each sample was taken (the last is ``len(trace)``).
    used, requested, high_water, largest_free, available, live : numpy.ndarray of uint64
        The strategy's figures at that moment, in bytes (``live``: ranges):
        ``used`` with rounding, ``requested`` the bytes the live ranges asked for,
        ``high_water`` the highest end offset so far, ``largest_free`` the largest
        request it could serve, ``available`` the bytes not handed out.
    """

    result: ReplayResult
    ops: np.ndarray
    used: np.ndarray
    requested: np.ndarray
    high_water: np.ndarray
    largest_free: np.ndarray
    available: np.ndarray
    live: np.ndarray

    @property
    def fragmentation(self) -> np.ndarray:
        """``1 - largest_free / available`` at each sample (0 where nothing is free)."""
        avail = self.available.astype(np.float64)
        out = np.zeros(len(avail))
        np.divide(self.largest_free.astype(np.float64), avail, out=out, where=avail > 0)
        return np.where(avail > 0, 1.0 - out, 0.0)

    @property
    def peak_index(self) -> int:
        """The sample where ``used`` was highest (the first such)."""
        return int(np.argmax(self.used)) if len(self.used) else 0


def replay_series(
    trace: Trace | str | os.PathLike[str],
    strategy: Any = "tlsf",
    *,
    capacity: int | None = None,
    samples: int = 1000,
    **options: Any,
) -> ReplaySeries:
    """Replay a whole trace in C, as :func:`replay`, taking ``samples`` rows of the
    strategy's figures along the way (every ``len(trace) // samples`` operations, at
    least every one, and after the last operation), also in C.

    ``strategy`` is what :func:`replay` takes except ``"libc"`` (the C library keeps no
    figures: ValueError).  ``samples`` >= 1 (ValueError).  Each sample costs a
    ``largest_free`` and an ``available`` call of the strategy, which the class-based
    strategies answer by a scan: keep ``samples`` in the thousands.
    """
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"samples must be an int, not {type(samples).__name__}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not isinstance(trace, Trace):
        trace = read(trace)
    obj = strategy_for(trace, strategy, capacity=capacity, **options)
    if obj is None:
        raise ValueError("replay_series() needs a strategy: libc keeps no figures to sample")
    every = max(len(trace) // samples, 1)
    cols = len(_mempool.SAMPLE_COLUMNS)
    rows = np.zeros((len(trace) // every + 1, cols), np.uint64)
    r = _mempool.replay(obj, trace.op, trace.id, trace.size, trace.align, trace.max_id,
                        every, rows)
    rows = rows[:r["samples"]]
    n = max(r["ops"], 1)
    result = ReplayResult(
        strategy=obj.strategy, trace=trace.name, ops=r["ops"], ns_per_op=r["elapsed_ns"] / n,
        failures=r["failures"], peak_used=r["peak_used"], high_water=r["high_water"],
        maxlive=r["maxlive"], capacity=obj.capacity,
    )
    col = {name: rows[:, k].copy() for k, name in enumerate(_mempool.SAMPLE_COLUMNS)}
    return ReplaySeries(result=result, **col)


class Recording:
    """What :func:`record` returns: a context manager that writes the allocations made
    inside it to ``path`` as a ``mempool-trace v1`` file (gzip when the name ends in
    ``.gz``) when it exits, normally or by an exception.

    After the ``with``: ``ops`` (operations written), ``maxlive`` (peak of the live
    requested bytes), ``path``.

    What is recorded:

    * NumPy's data allocations in this thread or asyncio task (the NEP 49 handler that
      was current is wrapped: NumPy's default, or a pool's from ``activate(numpy=True)``);
      ``malloc`` / ``calloc`` / ``realloc(NULL, n)`` as ``a``, ``free`` as ``f``,
      ``realloc`` as ``r``;
    * every alloc / free / realloc / reset of the pools and strategies made inside it
      (Pool, SharedPool, RegionPool's regions, TLSF(...), ...), and of the pools
      activated inside it, from any thread, with their alignment (``a ID SIZE ALIGN``)
      when it is above 1.  A pool's NumPy handler's work is recorded once, as NumPy's.

    One recording at a time per process: entering a second one (nested, or in another
    thread) raises RuntimeError.  Arrays made inside that die after it are not in the
    trace (their IDs are live at the end, as the format allows).  Not recorded: a
    SharedPool's small frees into its per-process cache until the range is reused
    (then the trace frees and reallocates it), Bump's ``rewind`` and Slab's arrays.
    """

    def __init__(self, path: str | os.PathLike[str], program: str | None = None) -> None:
        self.path = Path(os.fspath(path))
        if program is None:
            program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        self.program = "_".join(str(program).split()) or "python"
        self.ops = 0
        self.maxlive = 0
        self._body: str | None = None

    def __enter__(self) -> Recording:
        if self._body is not None:
            raise RuntimeError("this recording is under way already")
        if _mempool._rec_active():
            raise RuntimeError("a recording is already under way in this process: "
                               "trace.record() does not nest")
        # the output must be writable before anything runs (OSError names it)
        with open(self.path, "wb"):
            pass
        fd, body = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".body",
                                    dir=self.path.parent)
        os.close(fd)
        try:
            _mempool._rec_start(body)
        except BaseException:
            os.unlink(body)
            raise
        self._body = body
        try:
            _active.enter(self, _mempool._rec_numpy_begin(), _active.NONE, _mempool._rec_wrap)
        except BaseException:
            self._finish()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            _active.leave(self)  # (in any order with activations: see _active)
        finally:
            self._finish()

    def _finish(self) -> None:
        body, self._body = self._body, None
        assert body is not None
        try:
            r = _mempool._rec_stop()
            if r["errno"]:
                raise OSError(r["errno"], f"writing the trace: {os.strerror(r['errno'])}",
                              str(self.path))
            self.ops, self.maxlive = int(r["ops"]), int(r["maxlive"])
            header = (f"# {MAGIC} program={self.program} maxlive={self.maxlive} "
                      f"ops={self.ops}\n").encode()
            opener: Any = gzip.open if self.path.name.endswith(".gz") else open
            with open(body, "rb") as src, opener(self.path, "wb") as out:
                out.write(header)
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            # no cut trace left behind (a full disk while recording or copying): the file
            # is this recording's own, made empty by __enter__
            _discard(self.path)
            raise
        finally:
            os.unlink(body)


def _discard(path: Path) -> None:
    """A trace that could not be written whole goes: the file is removed, or emptied
    when the path is a symbolic link (the user's link stays); a failure to do either
    leaves the error that brought us here to be the one raised."""
    try:
        if path.is_symlink():
            with open(path, "wb"):
                pass
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def record(path: str | os.PathLike[str], *, program: str | None = None) -> Recording:
    """Record the allocations of a ``with`` block into the trace file ``path``.

    ``with mempool.trace.record("run.trace.gz"): ...`` writes NumPy's data allocations
    and the operations of the pools made or activated in the block (see
    :class:`Recording`), in the format :func:`read` reads; a ``.gz`` name is
    compressed.  ``program`` is the header's ``program=`` (default: the script's
    name).  OSError when ``path`` cannot be written (at entry); RuntimeError when a
    recording already runs in this process.
    """
    return Recording(path, program)


@dataclass(frozen=True)
class MallocRecording:
    """What :func:`record_malloc` returns: the command's exit status (negative: the
    signal that ended it), the trace written and its header's figures."""

    returncode: int
    path: Path
    ops: int
    maxlive: int
    other_processes: int  #: processes the command started, not recorded


def malloc_recorder() -> Path:
    """The preload library of :func:`record_malloc` (built with the package)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    here = Path(__file__).resolve().parent
    for suffix in EXTENSION_SUFFIXES:
        lib = here / f"_malloc_record{suffix}"
        if lib.is_file():
            return lib
    raise FileNotFoundError(f"the malloc recorder is not built in {here} (_malloc_record*.so)")


def record_malloc(cmd: list[str], path: str | os.PathLike[str], *,
                  program: str | None = None) -> MallocRecording:
    """Run ``cmd`` with the preload recorder and write its C heap calls (``malloc``,
    ``calloc``, ``realloc``, ``free``, ``posix_memalign``, ``aligned_alloc``,
    ``memalign``, ``valloc``, ``pvalloc``) as a trace at ``path`` (``.gz``:
    compressed).  Glibc on Linux only; a statically linked or setuid program does not
    load the recorder (RuntimeError, the command's status in the message).

    Only the command's own process is recorded (after any ``exec``: what a launcher
    script becomes); the processes it starts are not.  The trace is validated as
    :func:`read` validates it before it is written.  OSError when ``path`` cannot be
    written or the command cannot be run.  CPython serves small objects from its own
    arenas: run it with ``PYTHONMALLOC=malloc`` to see them.
    """
    out = Path(os.fspath(path))
    lib = malloc_recorder()
    with open(out, "wb"):
        pass  # writable before anything runs
    try:
        return _record_malloc(cmd, out, lib, program)
    except BaseException:
        out.unlink(missing_ok=True)  # no trace, not an empty or partial one
        raise


def _record_malloc(cmd: list[str], out: Path, lib: Path, program: str | None
                   ) -> MallocRecording:
    import subprocess

    with tempfile.TemporaryDirectory(prefix=".mempool-malloc-", dir=out.parent) as tmp:
        prefix = os.path.join(tmp, "body")
        env = dict(os.environ, MEMPOOL_MALLOC_OUT=prefix)
        env["LD_PRELOAD"] = " ".join(p for p in (str(lib), os.environ.get("LD_PRELOAD", "")) if p)
        proc = subprocess.Popen(cmd, env=env)
        rc = proc.wait()
        bodies = os.listdir(tmp)
        mine = f"body.{proc.pid}"
        failed = [b for b in bodies if b.startswith(mine + ".failed-")]
        if failed:  # the recorder could not write (a full disk): no cut trace
            err = int(failed[0].rsplit("-", 1)[1])
            raise OSError(err, f"the recording stopped: {os.strerror(err)} (the program "
                               f"exited with status {rc})", str(out))
        if mine not in bodies:
            raise RuntimeError(f"{cmd[0]} did not load the malloc recorder (statically linked, "
                               f"setuid, or not a glibc program; it exited with status {rc})")
        name = "_".join((program or os.path.basename(cmd[0])).split()) or "program"
        body = Path(tmp, mine).read_bytes()
    # a header without figures: parsing validates the body and counts them
    t = _parse(f"# {MAGIC} program={name}\n".encode() + body, out)
    header = f"# {MAGIC} program={name} maxlive={t.maxlive} ops={len(t)}\n".encode()
    # (gzip level 3: a quarter of level 9's time on these texts, ~10 % larger)
    try:
        with gzip.open(out, "wb", compresslevel=3) if out.name.endswith(".gz") \
                else open(out, "wb") as dst:
            dst.write(header)
            dst.write(body)
    except BaseException:
        _discard(out)  # no cut trace (a full disk)
        raise
    return MallocRecording(rc, out, len(t), t.maxlive, len(bodies) - 1)
