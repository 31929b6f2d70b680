"""Checks the strategy tests share: a failed call changes nothing, corrupted
snapshots are refused or work, the memory map tiles the span; and the means to order
threads without sleeping (a thread is known to be inside a C call, waiting)."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

import mempool


def unchanged(s, fn, exc, match=None, *, snapshot=True, behaviour=False, what=None):
    """fn() must raise exc (its message matching `match`) and leave the strategy s as
    it was: the same stats() and segments(), with snapshot=True the same snapshot()
    bytes too, with behaviour=True the same answers to the calls that follow
    (same_behaviour() on copies taken before and after), and check() passing.
    Returns the exception; `what` names the call in a failure's message."""
    before, segs = s.stats(), s.segments()
    snap = s.snapshot() if snapshot or behaviour else None
    try:
        with pytest.raises(exc, match=match) as ei:
            fn()
        assert s.stats() == before, "stats() changed"
        assert s.segments() == segs, "segments() changed"
        if snapshot:
            assert s.snapshot() == snap, "snapshot() bytes changed"
        if behaviour:
            cls = type(s)
            same_behaviour(cls.restore(snap), cls.restore(s.snapshot()))
        s.check()
    except (AssertionError, pytest.fail.Exception) as e:
        if what is None:
            raise
        raise AssertionError(f"{what}: {e}") from e
    return ei.value


def same_behaviour(a, b, steps: int = 300, seed: int = 0) -> None:
    """Strategies a and b (equal stats, maybe not equal bytes) answer one script of
    allocs and frees alike: the same offsets and the same OutOfSpace, step by step.
    The script draws sizes spread over 1 .. capacity/8 (most of them small) and frees
    a random live range 40% of the time."""
    rng = np.random.default_rng(seed)
    top = max(2, min(a.capacity // 8, 1 << 16))
    live: list[int] = []
    for step in range(steps):
        if live and rng.random() < 0.4:
            off = live.pop(int(rng.integers(len(live))))
            a.free(off)
            b.free(off)
            continue
        size = int(2 ** rng.uniform(0, np.log2(top)))
        got = []
        for s in (a, b):
            try:
                got.append(s.alloc(size))
            except mempool.OutOfSpace:
                got.append(None)
        assert got[0] == got[1], f"step {step}: alloc({size}) gave {got[0]} before, {got[1]} after"
        if got[0] is not None:
            live.append(got[0])
    assert a.stats() == b.stats() and a.segments() == b.segments()


def corrupted_restores(cls, good: bytes, seed: int, use: Callable[[mempool.Strategy], object],
                       tries: int = 400) -> int:
    """Restore `tries` copies of the snapshot `good`, each with one to three random bytes
    overwritten (numpy default_rng(seed)).  Each must raise CorruptionError or give a
    strategy that use(strategy) exercises (it asserts what "works" means).  Returns how
    many were refused."""
    rng = np.random.default_rng(seed)
    refused = 0
    for _ in range(tries):
        bad = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] = int(rng.integers(256))
        try:
            r = cls.restore(bytes(bad))
        except mempool.CorruptionError:
            refused += 1
            continue
        use(r)
    return refused


def check_alloc_free(r) -> None:
    """A restored strategy works: check() passes; alloc(1), unless it is full, and
    freeing that range succeed."""
    r.check()
    try:
        r.free(r.alloc(1))
    except mempool.OutOfSpace:
        pass


def check_alloc_check(r) -> None:
    """A restored strategy works: check() passes, alloc(1) succeeds, check() passes."""
    r.check()
    r.alloc(1)
    r.check()


def assert_tiles(segments, end: int, min_size: int = 1) -> None:
    """segments() covers [0, end) in address order, no gap or overlap, every
    segment at least min_size bytes with a bool `allocated`."""
    pos = 0
    for off, size, allocated in segments:
        assert off == pos and size >= min_size and isinstance(allocated, bool)
        pos = off + size
    assert pos == end


# ---- ordering threads without sleeps ------------------------------------------------------
# A test that needs "thread T is inside the C call now, waiting for the segment's lock"
# asks the kernel: /proc/self/task/<tid>/syscall names the system call a blocked thread
# is in and its arguments.  A futex wait on an address inside the segment's mapping is
# the robust mutex of the shared pool (nothing else in the segment is waited on); a
# nanosleep is _hold_lock's sleep, which it only starts once it holds the lock.

_SYSCALLS = {  # the numbers of the calls we look for, per architecture
    "x86_64": {202: "futex", 35: "nanosleep", 230: "clock_nanosleep"},
    "aarch64": {98: "futex", 101: "nanosleep", 115: "clock_nanosleep"},
}
SYSCALL_NAMES = _SYSCALLS.get(platform.machine())
needs_syscall_names = pytest.mark.skipif(
    SYSCALL_NAMES is None or not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/syscall"),
    reason="orders threads by /proc/self/task/<tid>/syscall (Linux, x86_64 or aarch64)")


def syscall_of(tid: int) -> tuple[str, list[int]] | None:
    """The system call that thread `tid` of this process is blocked in, as (name or
    number, arguments); None while it runs or once it has ended."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not fields or not fields[0].lstrip("-").isdigit() or int(fields[0]) < 0:
        return None  # "running"
    nr = int(fields[0])
    return (SYSCALL_NAMES or {}).get(nr, str(nr)), [int(x, 16) for x in fields[1:7]]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll predicate() until it is true; AssertionError naming `what` after `timeout`
    seconds.  (The poll interval orders nothing: the predicate is the synchronisation.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.0002)


def _segment_ranges(name: str) -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(f"/dev/shm/{name}"):
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def waits_for_segment_lock(tid: int, name: str) -> bool:
    """Thread `tid` is blocked on the lock of the shared segment `name` (a futex wait
    on an address inside one of this process's mappings of /dev/shm/<name>)."""
    sc = syscall_of(tid)
    if sc is None or sc[0] != "futex":
        return False
    return any(lo <= sc[1][0] < hi for lo, hi in _segment_ranges(name))


def sleeps_in_c(tid: int) -> bool:
    """Thread `tid` is in a nanosleep (for _hold_lock: with the lock held)."""
    sc = syscall_of(tid)
    return sc is not None and sc[0] in ("nanosleep", "clock_nanosleep")


class LockHolder:
    """Hold a shared pool's segment lock from a thread until release(): the pool's
    _hold_lock(seconds) sleeps with the lock held; release() wakes it early with a
    signal (its nanosleep returns EINTR, it unlocks and returns).  `seconds` is only a
    safety net: nothing waits for it to run out.  Use from the main thread (it installs
    a SIGUSR1 handler for the signal not to kill the process); release() may be called
    from any thread."""

    def __init__(self, pool, seconds: float = 60.0) -> None:
        self._old = signal.signal(signal.SIGUSR1, lambda *_: None)
        self.thread = threading.Thread(target=pool._hold_lock, args=(seconds,), daemon=True)
        self.thread.start()
        wait_until(lambda: sleeps_in_c(self.thread.native_id), "the holder sleeps with the lock")

    def release(self) -> None:
        if self.thread.is_alive():
            signal.pthread_kill(self.thread.ident, signal.SIGUSR1)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the lock holder did not wake"

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        finally:
            signal.signal(signal.SIGUSR1, self._old)


def on_a_small_fs(tmp_path, size: int | str, then: str, *,
                  ext4: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the shell command ``then`` ({mnt} in it: the mount point) in a private mount
    namespace over a fresh file system of ``size`` bytes (a disk that fills): a tmpfs
    (``size`` as mount takes it: "64k"), or with ``ext4`` an ext4 in a loop-mounted
    image (tmpfs gives back what a failed posix_fallocate took; ext4 keeps it).  This
    mempool is on PYTHONPATH; the output comes back as text."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if ext4:
        img = tmp_path / "fs.img"
        with open(img, "wb") as f:
            f.truncate(int(size))
        mount = f"mkfs.ext4 -q -F {img} && mount -o loop {img} {mnt}"
    else:
        mount = f"mount -t tmpfs -o size={size} tmpfs {mnt}"
    src = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"{mount} && " + then.format(mnt=mnt)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src}, timeout=300)


def _can_mount(ext4: bool) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or (ext4 and not shutil.which("mkfs.ext4")):
        return False
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        return on_a_small_fs(Path(d), 4 << 20 if ext4 else "64k", "true", ext4=ext4).returncode == 0


def can_mount_a_tmpfs() -> bool:
    """Root with unshare -m: a test can mount a small private tmpfs (on_a_small_fs)."""
    return _can_mount(ext4=False)


def can_mount_an_ext4() -> bool:
    """... and mkfs.ext4 and loop devices: a small ext4 (on_a_small_fs(ext4=True))."""
    return _can_mount(ext4=True)
