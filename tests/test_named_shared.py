"""pool.named in a SharedPool: the directory in the segment, every attached process's
names, references counted in the registry across processes (_native/pool_shared_named.c).

Real processes (attach in a child, a view held by another process, SIGKILLs of a writer
mid-storm, reclaim), real NumPy arrays."""

from __future__ import annotations

import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_named import same, samples

import mempool
from mempool import CorruptionError, OutOfSpace, PoolClosed, SharedPool
from mempool._segment import NAMED_ROOT_OFFSET

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
SLOW = os.environ.get("MEMPOOL_SLOW_TESTS") == "1"
ENV = dict(os.environ, PYTHONPATH=SRC)
_n = iter(range(10**6))


@pytest.fixture
def sp():
    p = SharedPool.create(f"mp-ns-{os.getpid()}-{next(_n)}", 4 << 20, unlink_on_exit=True)
    yield p
    if not p.closed:
        import gc
        gc.collect()
        p.close()
    p.unlink()


def run_py(code: str, *args: str, timeout: float = 60) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ranges_of_names(p) -> int:
    """Registry entries the directory owns: data + record per name, and the table."""
    n = len(p.named)
    return 2 * n + (1 if n else 0)


# ---- round trips ----------------------------------------------------------------------
def test_round_trip_and_views_are_shared_arrays(sp):
    s = samples()
    for k, v in s.items():
        sp.named[k] = v
    assert sorted(sp.named) == sorted(s) and len(sp.named) == len(s)
    for k, v in s.items():
        got = sp.named[k]
        same(got, v)
        assert isinstance(got, mempool.shared.SharedArray)
        del got
    assert len(sp) == ranges_of_names(sp)
    sp.check()


def test_another_process_reads_and_writes_names(sp):
    sp.named["w"] = np.arange(6.0).reshape(2, 3)
    out = run_py("""
        import sys, numpy as np, mempool
        q = mempool.SharedPool.attach(sys.argv[1])
        w = q.named["w"]
        print(w.shape, float(w.sum()))
        w[0, 0] = 100.0                     # a view: the parent sees the write
        q.named["from-child"] = np.full(4, 7, dtype="<i2")
        del w
        q.close()
    """, sp.name)
    assert out.split("\n")[0] == "(2, 3) 15.0"
    assert sp.named["w"][0, 0] == 100.0
    same(sp.named["from-child"], np.full(4, 7, dtype="<i2"))
    sp.check()


def test_adopt_keeps_offset_and_does_not_copy(sp):
    a = sp.empty((10, 10), "f4")
    a[:] = 3
    off, used = a.ctypes.data - sp.address, sp.used
    sp.named["a"] = a
    assert sp.used - used < 512              # only the record and the table are new
    del a
    b = sp.named["a"]
    assert b.ctypes.data - sp.address == off and float(b.sum()) == 300.0
    del b
    del sp.named["a"]
    assert sp.used == 0 and len(sp) == 0
    sp.check()


def test_replace_frees_the_old_range(sp):
    sp.named["x"] = np.zeros(1000)
    used = sp.used
    sp.named["x"] = np.ones(10)
    assert sp.used < used and float(sp.named["x"].sum()) == 10.0
    assert len(sp) == ranges_of_names(sp)
    del sp.named["x"]
    assert sp.used == 0
    sp.check()


def test_block_and_bytes_values(sp):
    sp.named["raw"] = b"\x01\x02\x03"
    blk = sp.alloc(64)
    np.asarray(blk)[:] = 9
    sp.named["blk"] = blk
    del blk
    assert bytes(sp.named["raw"]) == b"\x01\x02\x03"
    got = sp.named["blk"]
    assert isinstance(got, mempool.Block) and bytes(got)[:64] == b"\x09" * 64
    del got
    sp.check()


# ---- references across processes ------------------------------------------------------
HOLDER = """
import sys, time, mempool
q = mempool.SharedPool.attach(sys.argv[1])
v = q.named["x"]
print("holding", flush=True)
time.sleep(60)
"""


def test_a_view_in_another_process_blocks_delete_until_it_dies(sp):
    sp.named["x"] = np.arange(100)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, sp.name], env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        before = (sp.used, len(sp), sorted(sp.named))
        with pytest.raises(BufferError, match="1 view"):
            del sp.named["x"]
        with pytest.raises(BufferError, match="replace"):
            sp.named["x"] = np.zeros(3)
        assert (sp.used, len(sp), sorted(sp.named)) == before
        same(sp.named["x"], np.arange(100))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    sp.reclaim(child.pid)                    # its view's reference goes
    del sp.named["x"]
    assert sp.used == 0 and len(sp) == 0
    sp.check()


def test_names_outlive_the_process_that_made_them(sp):
    out = run_py("""
        import os, sys, numpy as np, mempool
        q = mempool.SharedPool.attach(sys.argv[1])
        q.named["mine"] = np.arange(5, dtype="i8")
        a = q.empty(3); a[:] = 1
        q.named["adopted"] = a
        print(os.getpid(), flush=True)
        os._exit(0)                          # no close, nothing collected
    """, sp.name)
    pid = int(out)
    sp.reclaim(pid)                          # what it held goes; its names stay
    same(sp.named["mine"], np.arange(5, dtype="i8"))
    same(sp.named["adopted"], np.ones(3))
    assert len(sp) == ranges_of_names(sp)
    sp.check()


def test_a_pickled_named_view_travels_as_a_handle(sp):
    sp.named["p"] = np.arange(50.0)
    data = pickle.dumps(sp.named["p"])
    assert len(data) < 1000                  # a handle, not 400 bytes of floats + header
    out = run_py("""
        import pickle, sys
        a = pickle.loads(bytes.fromhex(sys.argv[1]))
        print(float(a.sum()))
    """, data.hex())
    assert float(out) == sum(range(50))
    sp.check()


def test_attach_again_finds_names_and_close_keeps_them(sp):
    sp.named["k"] = np.arange(3)
    q = SharedPool.attach(sp.name)
    assert list(q.named) == ["k"]
    q.close()
    with pytest.raises(PoolClosed):
        q.named
    r = SharedPool.attach(sp.name)
    same(r.named["k"], np.arange(3))
    r.close()


# ---- failures change nothing -------------------------------------------------------
def test_out_of_space_and_full_registry_change_nothing():
    p = SharedPool.create(f"mp-ns-full-{os.getpid()}", 1 << 16, max_entries=8,
                          unlink_on_exit=True)
    try:
        p.named["a"] = np.arange(10)
        before = (p.segments(), len(p), sorted(p.named))
        with pytest.raises(OutOfSpace):
            p.named["big"] = np.zeros(1 << 14)       # 128 KiB > 64 KiB
        assert (p.segments(), len(p), sorted(p.named)) == before
        for i in range(2):
            p.named[f"n{i}"] = np.arange(2)          # 3 + 2 + 2 = 7 entries of 8
        before = (p.segments(), len(p), sorted(p.named))
        with pytest.raises(OutOfSpace, match="registry"):
            p.named["one-too-many"] = np.arange(2)
        assert (p.segments(), len(p), sorted(p.named)) == before
        p.check()
    finally:
        p.close()
        p.unlink()


def test_bad_names_and_values(sp):
    with pytest.raises(TypeError):
        sp.named[1] = np.arange(3)
    with pytest.raises(ValueError):
        sp.named[""] = np.arange(3)
    with pytest.raises(ValueError):
        sp.named["x" * 256] = np.arange(3)
    with pytest.raises(TypeError, match="object"):
        sp.named["o"] = np.array([object()])
    with pytest.raises(TypeError):
        sp.named["l"] = [1, 2]
    with pytest.raises(KeyError):
        sp.named["absent"]
    with pytest.raises(KeyError):
        del sp.named["absent"]
    assert "absent" not in sp.named and len(sp) == 0
    sp.close()
    with pytest.raises(PoolClosed):
        sp.named


@pytest.mark.parametrize("field,value", [(0, 0xdeadbeef), (1, 1 << 60), (2, 3), (3, 1 << 50)])
def test_crafted_root_is_refused_on_attach(sp, field, value):
    sp.named["a"] = np.arange(5)
    path = f"/dev/shm/{sp.name}"
    with open(path, "r+b") as f:
        f.seek(NAMED_ROOT_OFFSET)
        root = list(struct.unpack("<8Q", f.read(64)))
        root[field] = value
        f.seek(NAMED_ROOT_OFFSET)
        f.write(struct.pack("<8Q", *root))
    with pytest.raises(CorruptionError, match="named directory"):
        SharedPool.attach(sp.name)


def test_a_crafted_table_without_an_empty_slot_is_refused_and_a_is_kept(sp):
    # every slot of the table in use, the root saying one name: the put wrote its slot
    # 16 bytes before the table, over the record of "a", which then was gone (KeyError)
    import mmap
    sp.named["a"] = np.arange(4.0)
    with open(f"/dev/shm/{sp.name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        _, table, slots, count = struct.unpack_from("<4Q", mm, NAMED_ROOT_OFFSET)
        data_off = struct.unpack_from("<8sIIII QQQQQ", mm, 0)[8]
        t = data_off + table
        ref = next(r for _, r in struct.iter_unpack("<QQ", mm[t:t + 16 * slots]) if r > 1)
        for i in range(slots):
            if struct.unpack_from("<QQ", mm, t + 16 * i)[1] == 0:
                struct.pack_into("<QQ", mm, t + 16 * i, 0x5555 + i, ref)
        near = bytes(mm[t - 16:t + 16 * slots])
        used, segs = sp.stats().used, sp.segments()
        with pytest.raises(CorruptionError, match="more names than its root counts"):
            sp.named["new"] = np.arange(3.0)
        assert bytes(mm[t - 16:t + 16 * slots]) == near
    assert sp.stats().used == used and sp.segments() == segs
    assert list(sp.named["a"]) == [0.0, 1.0, 2.0, 3.0] and (slots, count) == (16, 1)
    with pytest.raises(KeyError):
        sp.named["new"]


def test_views_and_unpickled_arrays_hold_the_pool_open(sp):
    # a named view and an unpickled array each count as an export of the pool: close()
    # refuses (BufferError) while one lives, instead of unmapping memory it reads
    sp.named["a"] = np.arange(5.0)
    v = sp.named["a"]
    w = v[1:]
    u = pickle.loads(pickle.dumps(sp.zeros(3)))
    assert type(u) is mempool.SharedArray and u.sum() == 0
    for keep in (v, w, u):
        with pytest.raises(BufferError, match="cannot close the pool"):
            sp.close()
        assert not sp.closed
    del v
    with pytest.raises(BufferError):
        sp.close()
    assert w.tolist() == [1.0, 2.0, 3.0, 4.0]
    del w, u, keep
    sp.close()
    assert sp.closed


def test_a_broadcast_view_reads_back(sp):
    # stride 0 along 2**41 elements: inside its 8 bytes, so stored and read back (the
    # bound on a record's shape once refused it on reading only)
    z = sp.zeros(1)
    z[0] = 2.5
    sp.named["b"] = np.broadcast_to(z, (1 << 41,))
    del z
    v = sp.named["b"]
    assert v.shape == (1 << 41,) and v.strides == (0,) and v[(1 << 41) - 1] == 2.5
    del v
    del sp.named["b"]
    assert sp.used == 0


@pytest.mark.parametrize("stride", [-(1 << 63) + 8, 1 << 62, 1 << 41, -(1 << 41), 8 * 30])
def test_crafted_strides_of_a_named_record_are_refused(sp, stride):
    # the record's first stride, made huge or just past the range: CorruptionError, no
    # view that reaches outside the segment (NumPy's own bound check overflows on these)
    sp.named["victim"] = np.arange(29.0)
    path = f"/dev/shm/{sp.name}"
    with open(path, "r+b") as f:
        raw = f.read()
        at = raw.find(struct.pack("<Q", 0x31434552454d414e))  # the record's magic
        assert raw[at + 64 + 16:at + 64 + 22] == b"victim"
        f.seek(at + 64 + 8)
        f.write(struct.pack("<q", stride))
    q = SharedPool.attach(sp.name)
    try:
        used = q.used
        with pytest.raises(CorruptionError, match="an array's record"):
            q.named["victim"]
        assert q.used == used and q.shared_stats().entries == sp.shared_stats().entries
    finally:
        q.close()
    with pytest.raises(CorruptionError, match="an array's record"):
        sp.named["victim"]


def test_a_name_replaced_by_another_process_is_never_missing(sp):
    # a lookup finds the record and then takes the range under two locks; a replacement
    # in between made it a KeyError, for a name that existed at every instant
    import multiprocessing as mp
    from shared_workers import replace_name
    sp.named["x"] = np.arange(16)
    with mp.get_context("spawn").Pool(1) as workers:
        r = workers.apply_async(replace_name, (sp.name, "x", 1.5))
        lookups = 0
        while not r.ready():
            v = sp.named["x"]                      # never KeyError
            assert v.tolist() == list(range(16))
            del v
            lookups += 1
        assert r.get(timeout=60) > 0 and lookups > 0
    assert sp.named["x"].tolist() == list(range(16))
    sp.check()


# ---- killed writers ---------------------------------------------------------------------
STORM = """
import random, sys, numpy as np, mempool
p = mempool.SharedPool.attach(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
seq = int(sys.argv[3])
print("ready", flush=True)
while True:
    seq += 1
    k = f"k{rng.randrange(16)}"
    try:
        if rng.random() < 0.3 and k in p.named:
            del p.named[k]
        elif rng.random() < 0.3:
            x = p.empty(rng.randrange(1, 200), "<i8")
            x[:] = seq
            p.named[k] = x
            del x
        else:
            p.named[k] = np.full(rng.randrange(0, 300), seq, dtype="<i8")
    except BufferError:
        pass
"""


@pytest.mark.parametrize("seed", range(4 if not SLOW else 40))
def test_sigkill_in_a_storm_leaves_names_whole_and_nothing_leaked(sp, seed):
    for i in range(3):
        sp.named[f"keep{i}"] = np.full(20 + i, -i - 1, dtype="<i8")
    rng = random.Random(seed)
    for rnd in range(3):
        proc = subprocess.Popen([sys.executable, "-c", STORM, sp.name, str(seed * 10 + rnd),
                                 str(rnd * 10**9)], env=ENV, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        sp.reclaim(proc.pid)                 # (the next lock taker recovered the call)
        sp.check()
        for k in sp.named:
            a = sp.named[k]
            if a.size:
                assert (a == a.flat[0]).all(), k
            del a
        for i in range(3):
            same(sp.named[f"keep{i}"], np.full(20 + i, -i - 1, dtype="<i8"))
        assert len(sp) == ranges_of_names(sp)   # nothing but the names' ranges is left


def test_named_views_is_for_private_and_file_pools(sp):
    sp.named["a"] = np.arange(3)
    with pytest.raises(TypeError, match="private and file pools"):
        sp._named_views("a")

