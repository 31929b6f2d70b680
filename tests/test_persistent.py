"""Persistent pools: state in the file, reopened by a second process, validated
on open, and consistent (or refused) after a writer is killed mid-call."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import SLOW

import mempool
from mempool import Pool


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


def test_killed_writer_leaves_consistent_or_refused_file(tmp_path):
    path = tmp_path / "crash.mp"
    Pool.create(path, "1MiB", max_blocks=4096).close()
    rng = random.Random(11)
    rounds = 200 if SLOW else 25
    outcomes = {"consistent": 0, "recovered": 0, "refused": 0}
    for k in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASH_CHILD), str(path),
                                  str(k)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.001, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        try:
            p = Pool.open(path)
        except mempool.CorruptionError:
            outcomes["refused"] += 1
            path.unlink()
            Pool.create(path, "1MiB", max_blocks=4096).close()
            continue
        p.check()
        outcomes["recovered" if p.recovered else "consistent"] += 1
        # usable after the crash
        b = p.alloc(100)
        b.free()
        p.close()
    print(outcomes)
    assert sum(outcomes.values()) == rounds
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
