"""Persistent pools: state in the file, reopened by a second process, validated
on open, and consistent (or refused) after a writer is killed mid-call."""

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
from conftest import SLOW

import mempool
from mempool import Pool
from mempool._segment import JOURNAL_OFFSET

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))

PHASE_OFFSET = JOURNAL_OFFSET + 8  # journal.h: magic, phase (0 idle, 1 active, 2 committed)


def phase(path) -> int:
    """The journal's phase: non-zero when the last writer was killed inside a call (the
    phase word's low byte; the redo log's count of committed entries is above it)."""
    with open(path, "rb") as f:
        f.seek(PHASE_OFFSET)
        return f.read(1)[0]


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)


def test_create_write_reopen_in_another_process(tmp_path):
    path = tmp_path / "heap.mp"
    with Pool.create(path, "1MiB", "bestfit") as p:
        offs = []
        for k in range(10):
            b = p.alloc(100 + k)
            memoryview(b)[:] = bytes([k]) * b.size
            offs.append(b.offset)
        p.free(p.block_at(offs[3]))
        p.flush()
        segs = p.segments()
    r = run_child("""
        import sys, mempool
        p = mempool.Pool.open(sys.argv[1])
        p.check()
        print(len(p), p.strategy, p.recovered)
        offs = [int(x) for x in sys.argv[2].split(',')]
        for k, off in enumerate(offs):
            if k == 3:
                try:
                    p.block_at(off)
                except mempool.NotAllocated:
                    continue
                raise SystemExit('freed block came back')
            b = p.block_at(off)
            assert bytes(b) == bytes([k]) * (100 + k), k
            del b
        p.alloc(5000)   # the second process allocates too
        p.close()
        """, str(path), ",".join(map(str, offs)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["9", "bestfit", "False"]
    with Pool.open(path) as q:
        assert len(q) == 10 and q.segments() != segs
        q.check()


def test_blocks_of_persistent_pools_survive_collection(tmp_path):
    path = tmp_path / "keep.mp"
    p = Pool.create(path, 65536)
    off = p.alloc(64).offset  # the Block is collected at once: the range stays
    assert len(p) == 1
    p.close()
    with Pool.open(path) as q:
        assert q.block_at(off).size == 64


def test_create_refuses_existing_file(tmp_path):
    path = tmp_path / "x.mp"
    Pool.create(path, 65536).close()
    with pytest.raises(FileExistsError):
        Pool.create(path, 65536)
    with Pool.create(path, 4096 * 4, exist_ok=True) as p:
        assert p.capacity == 16384 and len(p) == 0


def damaged(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_open_refuses_damaged_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.mp"
    with Pool.create(good, 65536) as p:
        p.alloc(100)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "short": data[:100],
        "random": os.urandom(len(data)),
        "foreign": b"\x89PNG\r\n\x1a\n" + os.urandom(8000),
        "truncated": data[: len(data) // 2],
        "header-flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "state-magic": data[:4096] + b"XXXX" + data[4100:],
        "state-garbage": data[:4096] + os.urandom(2000) + data[6096:],
    }
    for name, blob in cases.items():
        path = damaged(tmp_path, name, blob)
        with pytest.raises(mempool.CorruptionError, match=str(path.name)):
            Pool.open(path)
    with pytest.raises(FileNotFoundError):
        Pool.open(tmp_path / "missing.mp")


def _held(path) -> tuple[int, int]:
    """(fds open on path, mappings of path) in this process."""
    path = os.path.realpath(path)
    fds = sum(os.path.realpath(f"/proc/self/fd/{fd}") == path for fd in os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = sum(line.rstrip("\n").endswith(" " + path) for line in f)
    return fds, maps


def test_open_refuses_header_naming_another_strategy_and_lets_go(tmp_path):
    # a valid (checksummed) header over a state of another strategy: refused, and the
    # failed open keeps nothing (no fd, no mapping, no flock: the next open is refused
    # for the same reason, not as "open elsewhere")
    import dataclasses

    from mempool._segment import Header
    from mempool.pool import FILE_MAGIC

    path = tmp_path / "mismatch.mp"
    with Pool.create(path, "1MiB", "tlsf") as p:
        p.alloc(100)
    h = Header.unpack(path.read_bytes()[:4096], path.stat().st_size, FILE_MAGIC, str(path))
    with open(path, "r+b") as f:
        f.write(dataclasses.replace(h, strategy="bestfit").pack())
    assert _held(path) == (0, 0)
    for _ in range(2):
        with pytest.raises(mempool.CorruptionError, match="header says bestfit, state is tlsf") as ei:
            Pool.open(path)
        assert _held(path) == (0, 0), ei  # while the error (its frames) is alive: not by gc
    with open(path, "r+b") as f:  # the header put back: the file opens, the block intact
        f.write(h.pack())
    with Pool.open(path) as q:
        assert len(q) == 1
        q.check()


def test_random_state_damage_never_crashes(tmp_path):
    good = tmp_path / "good.mp"
    with Pool.create(good, 65536, max_blocks=64) as p:
        offs = [p.alloc(n).offset for n in (100, 200, 300, 400)]
        p.free(p.block_at(offs[1]))
        state_size = p._strategy.state_size
    data = bytearray(good.read_bytes())
    rng = random.Random(5)
    refused = 0
    for k in range(200):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            bad[4096 + rng.randrange(state_size)] = rng.randrange(256)
        path = damaged(tmp_path, f"d{k}.mp", bytes(bad))
        try:
            q = Pool.open(path)
        except mempool.CorruptionError:
            refused += 1
            continue
        q.check()  # accepted: consistent, and usable
        q.alloc(10)
        q.close()
    assert refused > 0


CRASH_CHILD = """
    import random, sys, mempool
    p = mempool.Pool.open(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    live = [b.offset for b in ()]
    print('ready', flush=True)
    while True:
        if live and rng.random() < 0.45:
            p.free(p.block_at(live.pop(rng.randrange(len(live)))))
        else:
            try:
                b = p.alloc(rng.randint(1, 4000))
                live.append(b.offset)
            except mempool.OutOfSpace:
                p.free(p.block_at(live.pop(0)))
"""


def test_killed_writer_leaves_a_file_that_reopens(tmp_path):
    path = tmp_path / "crash.mp"
    Pool.create(path, "1MiB", max_blocks=4096).close()
    rng = random.Random(11)
    rounds = 200 if SLOW else 25
    outcomes = {"consistent": 0, "recovered": 0}
    for k in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASH_CHILD), str(path),
                                  str(k)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.001, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        inside = phase(path) != 0  # killed inside an allocator call
        p = Pool.open(path)  # never refused: the journal rolls the call back or forward
        p.check()
        assert p.recovered == inside  # recovered exactly when killed inside a call
        assert phase(path) == 0
        outcomes["recovered" if p.recovered else "consistent"] += 1
        # usable after the crash
        b = p.alloc(100)
        b.free()
        p.close()
    print(outcomes)
    assert outcomes["consistent"] + outcomes["recovered"] > 0, outcomes


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "busy.mp"
    p = Pool.create(path, 65536)
    with pytest.raises(BlockingIOError, match="one writer"):
        Pool.open(path)  # the same process, another open: refused
    with pytest.raises(BlockingIOError):
        Pool.create(path, 65536, exist_ok=True)  # and not truncated under the writer
    r = run_child("""
        import sys, mempool
        try:
            mempool.Pool.open(sys.argv[1])
        except BlockingIOError as e:
            print("refused")
        """, str(path))
    assert r.stdout.strip() == "refused", r.stderr
    p.alloc(10)
    p.close()
    with Pool.open(path) as q:  # free again once closed
        assert len(q) == 1


def test_create_over_a_file_open_elsewhere_changes_nothing(tmp_path):
    path = tmp_path / "held.mp"
    with Pool.create(path, 65536) as p:
        p.alloc(100)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, mempool
        p = mempool.Pool.open(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        p.check()
        print(len(p), flush=True)
        p.close()
        """), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(BlockingIOError, match="open elsewhere"):
            Pool.create(path, 65536 * 2, exist_ok=True)
        assert path.read_bytes() == before
    finally:
        out, _ = child.communicate("\n", timeout=60)
    assert child.returncode == 0 and out.strip() == "1"
    assert sorted(os.listdir(tmp_path)) == ["held.mp"]  # no temporary left behind


RACE_OPENER = """
    import sys, time, mempool
    path, deadline, opened = sys.argv[1], time.time() + float(sys.argv[2]), 0
    while time.time() < deadline:
        try:
            p = mempool.Pool.open(path)
        except BlockingIOError:
            continue
        for _ in range(5):
            b = p.alloc(60000)
            memoryview(b)[:] = b"x" * b.size
            assert bytes(memoryview(b)[-3:]) == b"xxx"
            b.free()
        p.check()
        p.close()
        opened += 1
    print(opened)
"""


def test_create_races_an_opener_without_truncating_under_it(tmp_path):
    # The old create truncated the file between a lock probe and taking the lock: the
    # opener read a 0-byte file (CorruptionError) or died of SIGBUS writing its blocks.
    path = tmp_path / "race.mp"
    Pool.create(path, 65536 * 2).close()
    seconds = 10 if SLOW else 2
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACE_OPENER), str(path),
                              str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    created = busy = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            Pool.create(path, 65536 * 2, exist_ok=True).close()
            created += 1
        except BlockingIOError:
            busy += 1
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err  # no SIGBUS, no CorruptionError
    assert created > 0 and int(out) > 0, (created, busy, out)
    with Pool.open(path) as p:
        p.check()


RACE_CREATOR = """
    import os, sys, time, mempool
    path, deadline, made, errors = sys.argv[1], time.time() + float(sys.argv[2]), 0, set()
    while time.time() < deadline:
        try:
            p = mempool.Pool.create(path, 65536 * 2)
        except FileExistsError:
            continue
        b = p.alloc(60000)
        memoryview(b)[:] = b"y" * b.size
        assert bytes(memoryview(b)[-3:]) == b"yyy"
        b.free()
        p.check()
        p.close()
        made += 1
        os.unlink(path)
    print(made)
"""


def test_two_creators_without_exist_ok_never_share_a_file(tmp_path):
    # Both saw no file, then both truncated and mapped it: one of them was left with
    # a file the other had emptied, or failed with BlockingIOError.
    path = tmp_path / "two.mp"
    seconds = 10 if SLOW else 2
    kids = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACE_CREATOR), str(path),
                              str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    for kid in kids:
        out, err = kid.communicate(timeout=120)
        assert kid.returncode == 0, err
        assert int(out) > 0
    Pool.create(path, 65536).close()
    with pytest.raises(FileExistsError, match="exist_ok"):
        Pool.create(path, 65536)
    with Pool.open(path) as p:
        assert p.capacity == 65536


def test_a_failed_create_leaves_the_path_as_it_was(tmp_path):
    new = tmp_path / "new.mp"
    with pytest.raises(OSError):
        Pool.create(new, 1 << 50)  # more than the file system takes
    assert not new.exists()
    Pool.create(new, 65536).close()  # nothing in the way afterwards

    good = tmp_path / "good.mp"
    with Pool.create(good, 65536) as p:
        off = p.alloc(100).offset
    before = good.read_bytes()
    with pytest.raises(OSError):
        Pool.create(good, 1 << 50, exist_ok=True)
    assert good.read_bytes() == before
    with Pool.open(good) as p:
        assert p.block_at(off).size == 100
    assert sorted(os.listdir(tmp_path)) == ["good.mp", "new.mp"]  # no temporary left


def test_create_exist_ok_replaces_empty_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.mp"
    empty.touch()
    with Pool.create(empty, 65536, exist_ok=True) as p:
        p.alloc(10)
    foreign = tmp_path / "foreign.mp"
    foreign.write_bytes(b"not a pool\n" * 1000)
    foreign.chmod(0o640)
    with Pool.create(foreign, 65536, exist_ok=True) as p:
        p.alloc(10)
    assert foreign.stat().st_mode & 0o777 == 0o640  # the replaced file's mode is kept
    for path in (empty, foreign):
        with Pool.open(path) as p:
            assert len(p) == 1 and p.capacity == 65536
    assert sorted(os.listdir(tmp_path)) == ["empty.mp", "foreign.mp"]


def test_create_exist_ok_refuses_what_is_not_a_regular_file_at_once(tmp_path):
    # opening a FIFO to read waits for a writer: create(exist_ok=True) hung there
    fifo = tmp_path / "fifo.mp"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="not a regular file"):
        Pool.create(fifo, 65536, exist_ok=True)
    link = tmp_path / "link.mp"
    link.symlink_to(fifo)  # (the target is what would be replaced)
    with pytest.raises(FileExistsError, match="not a regular file"):
        Pool.create(link, 65536, exist_ok=True)
    assert sorted(os.listdir(tmp_path)) == ["fifo.mp", "link.mp"] and fifo.is_fifo()


@pytest.mark.parametrize("strategy, capacity, options", [
    ("buddy", 4097, {}), ("buddy", (1 << 20) + 5, {"min_block": 64}),
    ("bitmap", 17, {}), ("bitmap", 65537, {"block_size": 64}), ("slab", 200_000, {}),
    ("tlsf", 4097, {}),
])
def test_create_takes_the_strategys_capacity_as_a_private_pool_does(tmp_path, strategy,
                                                                    capacity, options):
    # Buddy and Bitmap round the capacity down: the header took the one asked for, the
    # create failed on its own file (CorruptionError) and left it there -- with
    # exist_ok, over the good pool it replaced
    want = Pool(capacity, strategy, **options).capacity
    good = tmp_path / "good.mp"
    with Pool.create(good, "1MiB") as p:
        b = p.alloc(100)
        memoryview(b)[:5] = b"hello"
        keep = b.offset
    with Pool.create(tmp_path / "new.mp", capacity, strategy, **options) as p:
        assert p.capacity == want
        b = p.alloc(1)
    with Pool.open(tmp_path / "new.mp") as p:
        assert p.capacity == want and len(p) == 1
        p.check()
    with Pool.create(good, capacity, strategy, exist_ok=True) as p:
        assert p.capacity == want
    with Pool.open(good) as p:
        assert p.capacity == want and len(p) == 0
    sp = mempool.SharedPool.create(f"cap-{os.getpid()}-{strategy}-{capacity}", capacity,
                                   strategy, **options)
    assert sp.capacity == want
    sp.close()
    sp.unlink()
    del keep


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "fork.mp"
    p = Pool.create(path, 65536)
    p.alloc(10)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never touches the pool; alive until the parent closes its end of the pipe
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        p.close()
        with Pool.open(path) as q:  # at once, the child still alive
            assert len(q) == 1
        with pytest.raises(BlockingIOError):  # and the reopened pool is locked again
            with Pool.open(path), Pool.open(path):
                pass
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child was alive all along
    finally:
        os.close(w)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("ph", [1, 2])
def test_reopen_after_a_kill_inside_a_call_is_recovered(tmp_path, ph):
    path = tmp_path / "gen.mp"
    with Pool.create(path, 65536) as p:
        offs = [p.alloc(100 * k).offset for k in range(1, 4)]
    assert phase(path) == 0
    with open(path, "r+b") as f:  # what a writer killed inside alloc() leaves
        f.seek(PHASE_OFFSET)
        f.write(ph.to_bytes(8, "little"))
    with Pool.open(path) as q:
        assert q.recovered
        assert phase(path) == 0
        assert [q.block_at(o).size for o in offs] == [100, 200, 300]
        q.check()
    with Pool.open(path) as q:
        assert not q.recovered


def test_a_forked_child_cannot_change_the_parents_persistent_pool(tmp_path):
    # the file's state is shared with the child: a child allocating or freeing in it
    # would race the parent with no lock between them (seen: endless loops in C)
    path = tmp_path / "fork.mp"
    with Pool.create(path, 65536) as p:
        b = p.alloc(64)
        pid = os.fork()
        if pid == 0:
            code = 0
            # (nor read or write through its Blocks, nor ask what it holds: the parent
            # may free and reuse a range, and a child's write landed in its new block)
            for fn in (lambda: p.alloc(8), lambda: p.free(b), lambda: b.free(),
                       lambda: p.realloc(b, 128), lambda: p.empty(4),
                       lambda: memoryview(b), lambda: bytes(b), lambda: b.address,
                       lambda: len(p), lambda: p.stats(), lambda: p.used, lambda: p.flush(),
                       lambda: p.named):
                try:
                    fn()
                    code += 1
                except mempool.PoolClosed:
                    pass
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert p.stats().live == 1 and p.block_at(b.offset).size == 64
        memoryview(b)[:4] = b"mine"  # the parent's own, as before
        assert bytes(b)[:4] == b"mine"
        p.check()
        p.free(b)


@pytest.mark.parametrize("strategy", mempool.STRATEGIES)
@pytest.mark.parametrize("ph", [1, 2])
def test_a_half_written_state_or_shadow_is_recovered(tmp_path, strategy, ph):
    # phase 1: the dead call had written part of the state (rolled back from the
    # shadow); phase 2: it had committed and written part of the shadow (rolled forward)
    from mempool._segment import Header
    path = tmp_path / "half.mp"
    opts = {"item_size": 64} if strategy == "slab" else {}
    with Pool.create(path, "1MiB", strategy, **opts) as p:
        offs = [p.alloc(40).offset for _ in range(12)]
        p.free(p.block_at(offs[5]))
        del offs[5]
        segs = p.segments()
        sizes = [p.block_at(o).size for o in offs]
    raw = bytearray(path.read_bytes())
    h = Header.unpack(memoryview(raw), len(raw), raw[:8], str(path))
    at = h.state_off if ph == 1 else h.shadow_off
    raw[at + 64:at + h.state_size] = (b"\xa5" * h.state_size)[:h.state_size - 64]
    raw[PHASE_OFFSET:PHASE_OFFSET + 8] = ph.to_bytes(8, "little")
    path.write_bytes(raw)
    with Pool.open(path) as q:
        assert q.recovered
        assert phase(path) == 0
        q.check()
        assert q.segments() == segs
        assert [q.block_at(o).size for o in offs] == sizes


# ---- unnamed arrays of a persistent pool: freed when collected, said once ----------------
def test_a_collected_unnamed_array_warns_once_per_persistent_pool(tmp_path):
    p = Pool.create(tmp_path / "h.mp", "1MiB")
    try:
        a = p.zeros((100, 3))
        off = a.__array_interface__["data"][0] - p.address
        with pytest.warns(mempool.errors.UnnamedArrayWarning,
                          match=rf"its 2400 bytes at offset {off} were freed") as rec:
            del a
        assert len(rec) == 1 and p.used == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per pool: the second one is silent
            b = p.empty(10)
            del b
            kept = p.alloc(64)  # a Block of a persistent pool is not freed when collected
            kept_off = kept.offset
            del kept
        assert p.used == 64 and p.segments()[0] == (kept_off, 64, True)
        p.check()
    finally:
        p.close()
    with Pool.create(tmp_path / "g.mp", "1MiB") as q:  # the next pool says it again
        with pytest.warns(mempool.errors.UnnamedArrayWarning):
            q.empty(3)


def test_arrays_of_private_and_shared_pools_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pool("1MiB") as p:
            p.zeros(10)
            assert p.used == 0
        sp = mempool.SharedPool.create(f"unnamed-{os.getpid()}", "1MiB", unlink_on_exit=True)
        try:
            sp.zeros(10)
            assert sp.used == 0
        finally:
            sp.close()
            sp.unlink()


def test_the_warning_turned_error_still_frees_and_is_reported_as_unraisable(tmp_path):
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_type)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Pool.create(tmp_path / "h.mp", "1MiB") as p:
                a = p.zeros(100)
                del a  # the dealloc cannot raise: the error goes to sys.unraisablehook
                assert p.used == 0
                p.check()
    finally:
        sys.unraisablehook = old
    assert seen == [mempool.errors.UnnamedArrayWarning]


@pytest.mark.parametrize("kind", ["file", "shared"])
@pytest.mark.parametrize("strategy", mempool.STRATEGIES)
def test_the_strategy_of_a_journaled_pool_refuses_its_own_changes(tmp_path, name, kind, strategy):
    # a change made through the strategy object bypasses the journal (the next recovery
    # would undo it, the shadow no longer matches) and, in a shared pool, the lock: only
    # the pool's own calls may change the state; reading it stays allowed
    opts = {"item_size": 64} if strategy == "slab" else {}
    if kind == "file":
        p = Pool.create(tmp_path / "j.mp", "1MiB", strategy, **opts)
    else:
        p = mempool.SharedPool.create(name, "1MiB", strategy, **opts)
    try:
        b = p.alloc(64)
        s = p._strategy
        before = s.snapshot()
        calls = [("alloc()", lambda: s.alloc(64)), ("free()", lambda: s.free(b.offset)),
                 ("realloc()", lambda: s.realloc(b.offset, 128)),
                 ("alloc_many()", lambda: s.alloc_many([64, 64])),
                 ("free_many()", lambda: s.free_many([b.offset])), ("reset()", s.reset)]
        if strategy == "slab":
            calls += [("alloc_array()", lambda: s.alloc_array(2)),
                      ("free_array()", lambda: s.free_array(b.offset, 1))]
        if strategy == "bump":
            mark = s.mark()                     # (reading: allowed)
            calls.append(("rewind()", lambda: s.rewind(mark)))
        for what, fn in calls:
            with pytest.raises(TypeError, match=rf"^{re.escape(what)}: this strategy serves a "
                               "file or shared pool"):
                fn()
        assert s.snapshot() == before
        assert s.size_of(b.offset) >= 64 and s.used == p.used and s.stats().live == 1
        s.check()
        b.free()
        assert p.used == 0
        p.check()
    finally:
        p.close()
        if kind == "shared":
            p.unlink()


def test_a_file_pool_dropped_unclosed_lets_the_file_go(tmp_path):
    # its lock and descriptor went only with close(): another open or create of the
    # file was refused (BlockingIOError) until this process ended
    import gc
    import weakref
    path = tmp_path / "drop.mp"
    Pool.create(path, "1MiB").close()

    def fds_on_it() -> int:  # (only the file's: other fds come and go with other threads)
        n = 0
        for f in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{f}") == str(path)
            except OSError:
                pass
        return n

    def peek():
        p = Pool.open(path)
        p.alloc(8)
        assert fds_on_it() > 0
        return weakref.ref(p)
    r = peek()
    gc.collect()
    assert r() is None and fds_on_it() == 0
    with Pool.open(path) as q:  # not BlockingIOError
        assert len(q) == 1
    Pool.create(path, "1MiB", exist_ok=True).close()


def test_a_pool_that_keeps_its_own_block_is_collected(tmp_path):
    # pool -> __dict__ -> Block -> pool: the collector could not see the Block's
    # reference, so the cycle lived forever: the mapping stayed, and the file's lock
    # refused every later open in this process (BlockingIOError)
    import gc
    import weakref

    class Store(Pool):
        pass

    path = tmp_path / "store.mp"
    refs = []
    # (a SharedPool is not here: the process keeps it by its name, for the handles that
    # unpickle into it, until close())
    for make in (lambda: Store.create(path, "1MiB"), lambda: Store("1MiB")):
        p = make()
        p.header = p.alloc(64)
        p.ring = [p.alloc(8), p.alloc(8)]
        refs.append(weakref.ref(p))
        del p
    gc.collect()
    assert [r() for r in refs] == [None, None]
    with Pool.open(path) as q:  # (a file pool keeps its ranges: close() runs, not free)
        assert len(q) == 3
