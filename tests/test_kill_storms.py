"""SIGKILL storms against real processes: a random allocating process is killed at a
random moment, again and again, for every strategy of a shared pool and of a file
pool.  After each kill nothing may be wedged (every call has a watchdog), refused
(no CorruptionError), or lost: once the dead are reclaimed, the live ranges of a
shared pool are exactly what the surviving processes hold, and a reopened file pool
holds every range its writer had finished allocating, with its bytes.

CI: 30 kills per strategy of a shared pool, 30 spread over the strategies of a file
pool; MEMPOOL_SLOW_TESTS=1: 1,000 each.  `pytest -s` prints the figures."""

import faulthandler
import math
import multiprocessing as mp
import os
import pickle
import random
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import shared_workers as W
from conftest import SLOW

import mempool
from mempool import Pool, SharedPool
from mempool._segment import HEADER_SIZE, JOURNAL_OFFSET

OPTIONS = {"tlsf": {}, "bestfit": {}, "buddy": {"min_block": 64}, "heap": {},
           "bitmap": {"block_size": 64}, "slab": {"item_size": 2048}, "bump": {}}
ITEM_MAX = 2048  # the largest request (the slab's item size)
LEASE_TIMEOUT = 0.2  # a killed process's pickles without a receiver expire quickly
WATCHDOG_S = 60  # a wedged call dumps the stacks and fails the run instead of hanging it

SHARED_KILLS = 1000 if SLOW else 30  # per strategy
FILE_KILLS = math.ceil((1000 if SLOW else 30) / len(OPTIONS))  # per strategy

_JOURNAL_MAGIC = (0x314c4e524a504d).to_bytes(8, "little")
_JOURNAL_FIELDS = ("magic", "phase", "seq", "nundo", "rolled_back", "rolled_forward")


def journal_at(buf: bytes, off: int) -> dict:
    j = {k: int.from_bytes(buf[off + 8 * i:off + 8 * i + 8], "little")
         for i, k in enumerate(_JOURNAL_FIELDS)}
    j["phase"] &= 0xFF  # (the redo log's count of committed entries is above it)
    return j


def shared_journal(name: str) -> dict:
    """The shared pool's journal counters (journal.h), found by its magic in the
    control block (the lock area named by the header)."""
    from mempool._segment import Header

    with open(f"/dev/shm/{name}", "rb") as f:
        buf = f.read()
    h = Header.unpack(memoryview(buf), len(buf), mempool.shared.MAGIC, name)
    area = buf[h.lock_off:h.lock_off + h.lock_size]
    at = next(i for i in range(0, len(area), 8) if area[i:i + 8] == _JOURNAL_MAGIC)
    return journal_at(area, at)


def file_journal(path) -> dict:
    with open(path, "rb") as f:
        return journal_at(f.read(HEADER_SIZE), JOURNAL_OFFSET)


#: where a watchdog's stacks go: pytest captures fd 2, and a process that exits takes
#: the captured output with it (a run died silently once); .ci/run prints the files
#: (one per test process: pytest-xdist's workers, .ci/run's shards)
WATCHDOG_DUMP = Path(tempfile.gettempdir()) / f"mempool-watchdog-{os.getpid()}.txt"
CHILD_DUMP = Path(tempfile.gettempdir()) / f"mempool-watchdog-{os.getpid()}-child.txt"


@contextmanager
def watchdog(what: str):
    """Dump every thread's stack and end the run (SIGALRM) if the body hangs: the stacks
    go to WATCHDOG_DUMP, headed by what was waited for.  A timer signal, not
    faulthandler's watchdog thread: this process forks storming children, and a child
    forked while that thread was still exiting under ASan inherited one of the
    sanitizer allocator's locks held and hung at its first malloc (seen in CI and
    here: the child in futex_wait on an address in ASan's allocator space)."""
    dump = open(WATCHDOG_DUMP, "w")  # noqa: SIM115 (open until the timer is cancelled)
    dump.write(f"watchdog armed: {what} (pid {os.getpid()}; after {WATCHDOG_S} s the stacks of "
               "every thread follow here and the run ends)\n")
    dump.flush()
    faulthandler.register(signal.SIGALRM, file=dump, all_threads=True, chain=True)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.unregister(signal.SIGALRM)
        dump.close()


def wait_dead(pid: int) -> int:
    """Reap a child killed with SIGKILL; its wait status."""
    with watchdog(f"waitpid {pid}"):
        _, status = os.waitpid(pid, 0)
    return status


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The storms fork this process: no other thread may run here meanwhile.  A thread
    pool that an earlier test left idle (distributed's offload executor, after
    tests/test_dask.py) made a forked child under ASan hang before its first call
    (reproduced: the child's own faulthandler never ran either); it is shut down for
    this module and made again after it."""
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    u = sys.modules.get("distributed.utils")
    ex = getattr(u, "_offload_executor", None)
    if ex is not None:
        ex.shutdown(wait=True)
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    assert not others, f"threads alive before forking storms: {others}"
    yield
    if ex is not None:
        u._offload_executor = ThreadPoolExecutor(1, thread_name_prefix="Dask-Offload")


def fork_child(body) -> tuple[int, int]:
    """Fork a child that runs body(write_fd) and never returns into pytest; returns
    (pid, read end of its pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # a child that never says it is ready (CI runs under ASan hung here) dumps
            # its stacks to CHILD_DUMP when the parent sends SIGUSR1 (kill_after_ready)
            faulthandler.register(signal.SIGUSR1, file=open(CHILD_DUMP, "w"),  # noqa: SIM115
                                  all_threads=True)
            body(w)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def kill_after_ready(pid: int, r: int, rng: random.Random) -> None:
    """Wait until the child says it is storming, let it run a random short while,
    SIGKILL it and reap it."""
    import select

    ready = b""
    if select.select([r], [], [], WATCHDOG_S / 2)[0]:
        ready = os.read(r, 1)
    os.close(r)
    if ready != b"r":  # dead, or stuck: what it was doing, then it goes
        where = ""
        if not ready:
            try:
                for f in ("status", "wchan", "stack", "syscall"):
                    where += f"--- /proc/{pid}/{f}:\n" + Path(f"/proc/{pid}/{f}").read_text()
            except OSError as e:
                where += f"({e})\n"
            import shutil
            import subprocess

            if shutil.which("gdb"):  # the C stacks (where a lock or the sanitizer waits)
                try:
                    where += subprocess.run(
                        ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"],
                        capture_output=True, text=True, timeout=60).stdout[-6000:]
                except (OSError, subprocess.SubprocessError) as e:
                    where += f"(gdb: {e})\n"
            os.kill(pid, signal.SIGUSR1)
            time.sleep(2)
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        dump = CHILD_DUMP.read_text() if CHILD_DUMP.exists() else "(no stacks)"
        raise AssertionError(f"the storming child never got ready:\n{where}{dump}")
    time.sleep(rng.choice((0.0, rng.uniform(0.0, 0.002), rng.uniform(0.001, 0.02))))
    os.kill(pid, signal.SIGKILL)
    status = wait_dead(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the storming child ended on its own (status {status:#x}): it failed")


# ---- shared pools -------------------------------------------------------------------------

def shared_storm(pool: SharedPool, seed: int, theirs: list, pickles: list, w: int) -> None:
    """The body of a forked storming process: many small calls of every kind, forever
    (until SIGKILL): alloc/free/realloc/empty, pickling its own handles, taking and
    dropping references of the survivors' blocks (block_at, unpickling their handles)."""
    rng = random.Random(seed)
    mine: list = []  # Blocks and arrays this process holds
    borrowed: list = []
    step = 0
    while True:
        step += 1
        if step == 20:
            os.write(w, b"r")
        r = rng.random()
        try:
            if r < 0.30 or not mine:
                size = rng.choice((rng.randint(1, 64), rng.randint(513, ITEM_MAX)))
                b = pool.alloc(size)
                memoryview(b)[:1] = b"x"
                mine.append(b)
            elif r < 0.50:
                x = mine.pop(rng.randrange(len(mine)))
                if isinstance(x, mempool.Block) and rng.random() < 0.5:
                    x.free()
                del x
            elif r < 0.58:
                i = rng.randrange(len(mine))
                if isinstance(mine[i], mempool.Block):
                    mine[i] = pool.realloc(mine[i], rng.randint(1, ITEM_MAX))
            elif r < 0.66:
                mine.append(pool.empty(rng.randint(1, ITEM_MAX // 8), np.float64))
            elif r < 0.74:  # a pickle round trip in this process: a lease, then its adoption
                mine.append(pickle.loads(pickle.dumps(rng.choice(mine))))
            elif r < 0.745:  # a pickle nobody unpickles: its lease waits for its deadline
                pickle.dumps(rng.choice(mine))
            elif r < 0.88:
                off = rng.choice(theirs)
                borrowed.append(pool.block_at(off))
            elif r < 0.96:
                borrowed.append(pickle.loads(rng.choice(pickles)))
            elif borrowed:
                borrowed.pop(rng.randrange(len(borrowed)))
        except mempool.OutOfSpace:
            mine[: len(mine) // 2] = []
        except BufferError:  # resizing a block with another handle alive
            pass
        if len(mine) > 60:
            mine[:30] = []
        if len(borrowed) > 20:
            borrowed[:10] = []


def survivors_hold(pool, survivors) -> None:
    """The exact comparison: the live ranges are the survivors' (the parent holds
    none and every dead process was reclaimed), `used` is their sizes as the pool
    rounds them, and the survivors' bytes are intact."""
    expected = {o for s in survivors for o in s["offsets"]}
    pool._flush_cache()
    live = [seg for seg in pool.segments() if seg[2]]
    assert {seg[0] for seg in live} == expected, (
        f"lost or leaked ranges: extra {sorted({seg[0] for seg in live} - expected)}, "
        f"missing {sorted(expected - {seg[0] for seg in live})}")
    assert len(pool) == len(expected)
    assert pool.used == sum(seg[1] for seg in live)
    for s in survivors:
        s["conn"].send("check")
        assert s["conn"].poll(WATCHDOG_S) and s["conn"].recv(), "a survivor's bytes changed"


def expire_leases(pool) -> None:
    """Let the leases of pickles nobody will unpickle pass their deadline, and have a
    locked call release them."""
    deadline = time.monotonic() + 10 * LEASE_TIMEOUT + 5
    while pool.shared_stats().leases:
        assert time.monotonic() < deadline, "leases past their deadline were not released"
        time.sleep(LEASE_TIMEOUT / 2)
        b = pool.try_alloc(1000)  # a locked call: releases the leases past their deadline
        if b is not None:
            b.free()


@pytest.mark.parametrize("strategy", sorted(OPTIONS))
def test_shared_pool_kill_storm(name, strategy):
    rng = random.Random(f"shared-{strategy}")
    ctx = mp.get_context("fork")
    pool = SharedPool.create(name, "1MiB", strategy, max_entries=4096,
                             lease_timeout=LEASE_TIMEOUT, **OPTIONS[strategy])
    survivors = []
    figures = {"kills": 0, "inside_a_call": 0, "reclaimed_ranges": 0}
    try:
        for k in range(3):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=W.storm_survivor, args=(name, 100 + k, ITEM_MAX, child))
            proc.start()
            assert parent.poll(WATCHDOG_S), "a survivor did not start"
            pid, blocks, (arr_off, _, _), pickles = parent.recv()
            survivors.append({"proc": proc, "conn": parent, "pid": pid, "pickles": pickles,
                              "offsets": [o for o, _, _ in blocks] + [arr_off]})
        theirs = [o for s in survivors for o in s["offsets"]]
        pickles = [p for s in survivors for p in s["pickles"]]
        with watchdog("setup"):
            expire_leases(pool)
            survivors_hold(pool, survivors)
        before = shared_journal(name)
        for k in range(SHARED_KILLS):
            seed = rng.randrange(1 << 30)
            recoveries = pool.shared_stats().recoveries
            pid, r = fork_child(lambda w: shared_storm(pool, seed, theirs, pickles, w))
            kill_after_ready(pid, r, rng)
            with watchdog(f"after kill {k}"):
                # the first locked call after the kill: neither hangs nor raises Corruption
                figures["reclaimed_ranges"] += pool.reclaim(pid)
                figures["inside_a_call"] += pool.shared_stats().recoveries - recoveries
                # (None while the dead's unadopted pickles keep a Bump full: their
                # leases wait for their deadline)
                b = pool.try_alloc(rng.randint(1, ITEM_MAX))
                if b is not None:
                    b.free()
                figures["kills"] += 1
                if k % 10 == 9 or k == SHARED_KILLS - 1:
                    pool.check()
                    expire_leases(pool)
                    survivors_hold(pool, survivors)
        after = shared_journal(name)
        figures["rolled_back"] = after["rolled_back"] - before["rolled_back"]
        figures["rolled_forward"] = after["rolled_forward"] - before["rolled_forward"]
        figures["transactions"] = after["seq"] - before["seq"]
        print(f"\nshared {strategy}: {figures}")
        assert figures["rolled_back"] + figures["rolled_forward"] <= figures["inside_a_call"]
        for s in survivors:
            s["conn"].send("finish")
            assert s["conn"].poll(WATCHDOG_S) and s["conn"].recv(), "a survivor's bytes changed"
            s["proc"].join(WATCHDOG_S)
            assert s["proc"].exitcode == 0
        survivors = []
        with watchdog("end"):
            pool._flush_cache()
            pool.check()
            assert pool.used == 0 and len(pool) == 0
    finally:
        for s in survivors:
            s["proc"].kill()
            s["proc"].join()
        pool.close()


# ---- file pools ----------------------------------------------------------------------------
# The writer logs each call to a side file with one os.write (the kernel keeps it through
# SIGKILL): "I op offset" before the call (its intent), then after it completed and the new
# range got its pattern "A off size pat" (alloc), "F off" (free) or "R old new size pat"
# (realloc).  A call whose intent has no completion was in flight when the writer died.

def file_storm(path, seed: int, committed: dict, log: str, w: int) -> None:
    p = Pool.open(path)
    rng = random.Random(seed)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    live = dict(committed)  # offset -> (size, pattern)
    step = 0
    while True:
        step += 1
        if step == 20:
            os.write(w, b"r")
        r = rng.random()
        if live and (r < 0.4 or len(live) > 80):
            off = rng.choice(list(live))
            os.write(fd, f"I free {off}\n".encode())
            p.free(p.block_at(off))
            del live[off]
            os.write(fd, f"F {off}\n".encode())
        elif live and r < 0.55:
            off = rng.choice(list(live))
            size, pat = rng.randint(1, ITEM_MAX), rng.randint(1, 255)
            os.write(fd, f"I realloc {off}\n".encode())
            try:
                b = p.realloc(p.block_at(off), size)
            except mempool.OutOfSpace:
                os.write(fd, f"R {off} {off} {live[off][0]} {live[off][1]}\n".encode())
                continue
            memoryview(b)[:size] = bytes([pat]) * size
            del live[off]
            live[b.offset] = (size, pat)
            os.write(fd, f"R {off} {b.offset} {size} {pat}\n".encode())
            del b  # the range's only Block: a later block_at(offset) is its only one again
        else:
            size, pat = rng.randint(1, ITEM_MAX), rng.randint(1, 255)
            os.write(fd, b"I alloc 0\n")
            try:
                b = p.alloc(size)
            except mempool.OutOfSpace:
                os.write(fd, b"N\n")
                continue
            memoryview(b)[:size] = bytes([pat]) * size
            live[b.offset] = (size, pat)
            os.write(fd, f"A {b.offset} {size} {pat}\n".encode())
            del b


def replay(log: str, committed: dict) -> tuple[dict, tuple[str, int] | None]:
    """The ranges the writer had completed, and the call in flight (op, offset) or None."""
    live = dict(committed)
    inflight = None
    with open(log) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # (a torn line cannot happen with one write, but be safe)
            w = line.split()
            if w[0] == "I":
                inflight = (w[1], int(w[2]))
                continue
            if w[0] == "A":
                live[int(w[1])] = (int(w[2]), int(w[3]))
            elif w[0] == "F":
                del live[int(w[1])]
            elif w[0] == "R":
                del live[int(w[1])]
                live[int(w[2])] = (int(w[3]), int(w[4]))
            inflight = None
    return live, inflight


@pytest.mark.parametrize("strategy", sorted(OPTIONS))
def test_file_pool_kill_storm(tmp_path, strategy):
    rng = random.Random(f"file-{strategy}")
    path, log = tmp_path / "storm.mp", str(tmp_path / "storm.log")
    extra_opts = {"max_blocks": 4096} if strategy in ("tlsf", "bestfit") else {}
    Pool.create(path, "1MiB", strategy, **OPTIONS[strategy], **extra_opts).close()
    committed: dict = {}
    figures = {"kills": 0, "inside_a_call": 0, "in_flight_done": 0, "in_flight_undone": 0}
    for k in range(FILE_KILLS):
        open(log, "w").close()
        seed = rng.randrange(1 << 30)
        pid, r = fork_child(lambda w: file_storm(path, seed, committed, log, w))
        kill_after_ready(pid, r, rng)
        inside = file_journal(path)["phase"] != 0
        with watchdog(f"reopen after kill {k}"):
            p = Pool.open(path)  # never refused
        try:
            p.check()
            assert p.recovered == inside
            assert file_journal(path)["phase"] == 0
            figures["kills"] += 1
            figures["inside_a_call"] += inside
            done, inflight = replay(log, committed)
            live = {seg[0]: seg[1] for seg in p.segments() if seg[2]}
            # every completed range is live with its bytes, but the one in flight
            sure = {o: v for o, v in done.items() if inflight is None or o != inflight[1]}
            for off, (size, pat) in sure.items():
                assert off in live, f"a range the writer had allocated is lost: {off}"
                assert bytes(memoryview(p.block_at(off))[:size]) == bytes([pat]) * size, (
                    f"the bytes of range {off} changed")
            extra = set(live) - set(done)
            assert len(extra) <= (1 if inflight and inflight[0] != "free" else 0), (
                f"ranges nobody allocated: {sorted(extra)} (in flight: {inflight}) kill {k} "
                f"{open(log).read()[-400:]!r} {sorted(done)} {sorted(live)}")
            if inflight is not None and inflight[0] == "free":
                gone = inflight[1] not in live
                figures["in_flight_done" if gone else "in_flight_undone"] += 1
            elif inflight is not None:
                figures["in_flight_done" if extra else "in_flight_undone"] += 1
            # start the next writer from a state known exactly: the sure ranges only
            for off in set(live) - set(sure):
                p.free(p.block_at(off))
            committed = sure
            p.check()
        finally:
            p.close()
    j = file_journal(path)
    figures.update(rolled_back=j["rolled_back"], rolled_forward=j["rolled_forward"],
                   transactions=j["seq"])
    print(f"\nfile {strategy}: {figures}")
    assert j["rolled_back"] + j["rolled_forward"] == figures["inside_a_call"]
