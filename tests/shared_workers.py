"""Worker functions for tests/test_shared.py (importable by spawned processes)."""

import os
import pickle
import random
import threading

import numpy as np

import mempool


def churn(name: str, rounds: int, seed: int) -> tuple[int, int]:
    """Allocate, write a pattern, verify, free: returns (allocations, bytes verified)."""
    pool = mempool.SharedPool.attach(name)
    rng = random.Random(seed)
    pid = os.getpid() & 0xFF
    live: list[tuple[mempool.Block, int]] = []
    allocs = verified = 0
    for _ in range(rounds):
        if live and (rng.random() < 0.5 or len(live) > 20):
            b, pat = live.pop(rng.randrange(len(live)))
            data = np.asarray(b)
            assert (data == pat).all(), "another process wrote into my block"
            verified += b.size
            del data
            b.free()
        else:
            try:
                b = pool.alloc(rng.randint(1, 4096))
            except mempool.OutOfSpace:
                continue
            pat = (pid + allocs) & 0xFF
            np.asarray(b)[:] = pat
            live.append((b, pat))
            allocs += 1
    for b, pat in live:
        assert (np.asarray(b) == pat).all()
        b.free()
    pool.close()
    return allocs, verified


def cache_churn(name: str, stop, counter) -> None:
    """Small allocations freed at once, until `stop` is set: they go through this
    process's cache of freed ranges, reused without the lock (a fresh tag each time)."""
    pool = mempool.SharedPool.attach(name)
    k = 0
    while not stop.is_set():
        bs = [pool.alloc(64 + 16 * (j % 7)) for j in range(100)]
        for b in bs:
            b.free()
        k += 100
        with counter.get_lock():
            counter.value = k
    pool.close()


def touch(arr):
    """Read and write a shared array in place; return it (a handle back)."""
    arr[0] += 1
    arr[-1] = arr[0] * 2
    return arr


def sum_f64(blk) -> float:
    """The sum of a Block's bytes read as float64 (test_context: a handle that crossed)."""
    return float(np.asarray(blk).view(np.float64).sum())


def add_one(arr):
    arr += 1
    return float(arr.sum())


def hold_lock(name: str, nblocks: int, conn) -> None:
    """Allocate some blocks, then take the lock and sleep holding it (to be killed);
    "holding" is sent once the lock is held: a thread sleeps in _hold_lock."""
    from helpers import sleeps_in_c, wait_until

    pool = mempool.SharedPool.attach(name)
    keep = [pool.alloc(1000) for _ in range(nblocks)]
    holder = threading.Thread(target=pool._hold_lock, args=(60.0,))
    holder.start()
    wait_until(lambda: sleeps_in_c(holder.native_id), "the holder sleeps with the lock")
    conn.send(("holding", os.getpid(), [b.offset for b in keep]))
    holder.join()


def hammer(name: str, seconds: float, conn) -> None:
    """alloc(64)+free as fast as possible for `seconds`; send the count."""
    import time

    pool = mempool.SharedPool.attach(name)
    alloc, free = pool.alloc, pool.free
    conn.recv()  # start together
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            b = alloc(64)
            free(b)
        n += 1000
    conn.send(n)


# ---- handles in flight (tests/test_handles_in_flight.py) ------------------------------
def _pool(name: str) -> mempool.SharedPool:
    """This process's attachment of `name` (a forked child's is the parent's)."""
    from mempool.shared import _attached

    p = _attached.get(name)
    if p is None or p.closed:
        p = mempool.SharedPool.attach(name)
    return p


def make_array(name: str, i: int, n: int = 100) -> np.ndarray:
    """A result made in the pool: n int64 equal to i (the worker drops its own)."""
    a = _pool(name).empty(n, "int64")
    a[:] = i
    return a


def make_array_args(args: tuple[str, int]) -> np.ndarray:
    return make_array(*args)


def send_by_queue(name: str, q, i: int) -> None:
    """Put a pool array on a Queue and return: the process exits, the array is
    collected, before the parent takes it off the queue."""
    q.put(make_array(name, i))


def send_by_pipe(name: str, conn, i: int) -> None:
    conn.send(make_array(name, i))
    conn.close()


def storm_survivor(name: str, seed: int, item_max: int, conn) -> None:
    """A long-lived process of tests/test_kill_storms.py: allocates a known set of
    blocks and one array, fills them with a pattern, sends (pid, [(offset, size,
    pattern)], [pickled handles]); then answers "check" (the patterns are intact) and
    "finish" (checks, frees everything, exits)."""
    import pickle

    pool = mempool.SharedPool.attach(name)
    rng = random.Random(seed)
    held = []
    for k in range(rng.randint(3, 6)):
        b = pool.alloc(rng.randint(1, item_max))
        pat = (seed * 7 + k) % 251 + 1
        memoryview(b)[:] = bytes([pat]) * b.size
        held.append((b, b.offset, b.size, pat))
    arr = pool.empty(max(1, rng.randint(1, item_max) // 8), np.float64)
    arr[:] = float(seed)
    arr_off = arr.ctypes.data - pool.address
    pickles = [pickle.dumps(b) for b, *_ in held] + [pickle.dumps(arr)]
    conn.send((os.getpid(), [(o, s, p) for _, o, s, p in held], (arr_off, arr.nbytes, float(seed)),
               pickles))

    def intact() -> bool:
        return (all(bytes(b) == bytes([p]) * s for b, _, s, p in held)
                and bool((arr == float(seed)).all()))

    while True:
        msg = conn.recv()
        ok = intact()
        if msg == "finish":
            for b, *_ in held:
                b.free()
            del arr
            pool.close()
            conn.send(ok)
            return
        conn.send(ok)


def grower(name, n, q, back):
    """tests/test_shared_growth.py: attach, allocate n blocks (the state grows), name an
    array, report (len, state size), hold everything until told."""
    p = mempool.SharedPool.attach(name)
    blocks = [p.alloc(16) for _ in range(n)]
    for b in blocks:
        with memoryview(b) as m:
            m[:8] = b.offset.to_bytes(8, "little")
    p.named[f"from {os.getpid()}"] = np.arange(5.0)
    q.put((len(p), p._strategy.state_size))
    back.get()
    p.check()
    p.close()


def free_and_leave(name: str, n: int) -> int:
    """Allocate n small blocks and an array, free them all and return without closing
    the pool: what the process freed sits in its cache when it exits."""
    pool = mempool.SharedPool.attach(name)
    bs = [pool.alloc(64 + 16 * (k % 5)) for k in range(n)]
    for b in bs:
        b.free()
    a = pool.empty(100)
    del a
    return os.getpid()


def hold_and_die(name: str) -> None:
    """Keep three blocks, leave ten small ranges in the cache, then die by SIGKILL:
    nothing is given back."""
    import signal
    pool = mempool.SharedPool.attach(name)
    keep = [pool.alloc(4096) for _ in range(3)]
    for b in [pool.alloc(64) for _ in range(10)]:
        b.free()
    assert len(keep) == 3
    os.kill(os.getpid(), signal.SIGKILL)


def hold_and_wait(name: str, ready, stop) -> None:
    """Keep two blocks until `stop` is set, then leave normally."""
    pool = mempool.SharedPool.attach(name)
    keep = [pool.alloc(1000), pool.alloc(2000)]
    ready.set()
    stop.wait(60)
    del keep
    pool.close()


def leader_exits(name: str, ready) -> None:
    """Keep a block, start a thread that keeps running, then end the main thread alone
    (SYS_exit on x86-64): the process lives on, its /proc state reads as a zombie."""
    import ctypes
    import time
    pool = mempool.SharedPool.attach(name)
    keep = pool.alloc(4096)
    t = threading.Thread(target=time.sleep, args=(120,))
    t.start()
    ready.set()
    assert keep.size == 4096
    ctypes.CDLL(None).syscall(60, 0)


def replace_name(name: str, key: str, seconds: float) -> int:
    """Replace pool.named[key] with the same 16 values for `seconds`: the name exists at
    every instant; returns the replacements made."""
    import time
    pool = mempool.SharedPool.attach(name)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        try:
            pool.named[key] = np.arange(16)
            n += 1
        except BufferError:  # a view of the old value is alive in the reader
            pass
    pool.close()
    return n


def array_sum(arr: np.ndarray) -> float:
    """A worker's use of a pool array it was sent (it attaches the pool)."""
    return float(arr.sum())


def word(b) -> int:
    """The first 8 bytes of a block, as an int (stamp writes it)."""
    with memoryview(b) as m:
        return int.from_bytes(m[:8], "little")


def stamp(b, v: int) -> None:
    with memoryview(b) as m:
        m[:8] = v.to_bytes(8, "little")


def attached_before(name: str, q, back) -> None:
    """tests/test_shared_registry.py: attach before the parent grows the registry; then
    read the parent's blocks beyond the first 256 entries, allocate 3,000 of its own
    (growing it further), hand the last 100 back, and drop everything once told."""
    p = mempool.SharedPool.attach(name)
    q.put("attached")
    theirs = pickle.loads(back.get())
    ok = all(word(b) == 7_000_000 + b.offset for b in theirs)
    mine = []
    for _ in range(3000):
        b = p.alloc(24)
        stamp(b, 9_000_000 + b.offset)
        mine.append(b)
    q.put((ok, pickle.dumps(mine[-100:]), p.shared_stats().committed_entries))
    back.get()
    del theirs, mine
    p.check()
    p.close()
