"""pool.named: the directory of named arrays (layer 4, over _core/named.c).

Real files, real reopen in new processes, real SIGKILLs of a writer mid-storm."""

from __future__ import annotations

import ast
import contextlib
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mempool
from mempool import CorruptionError, NotAllocated, Pool, PoolClosed
from mempool import named as named_mod
from mempool._segment import NAMED_ROOT_OFFSET

# the mempool this test imported (the source tree when built in place, else the installed one)
SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
SLOW = os.environ.get("MEMPOOL_SLOW_TESTS") == "1"


def run_py(code: str, timeout: float = 60) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def filled(dt: np.dtype, *values: int) -> np.ndarray:
    a = np.zeros(2, dt)
    for name, v in zip(dt.names or (), values):
        a[name] = v
    return a


def samples() -> dict[str, np.ndarray]:
    big = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    rec = np.zeros(3, dtype=[("x", "<f4"), ("y", "S3"), ("z", "<u2", (2,))])
    rec["x"] = [1.5, 2.5, 3.5]
    rec["y"] = [b"ab", b"cd", b"ef"]
    rec["z"] = [[1, 2], [3, 4], [5, 6]]
    return {
        "f8": np.linspace(0, 1, 7),
        "2d": np.arange(12.0).reshape(3, 4),
        "big-endian": big,
        "zero-d": np.array(3.25, dtype="<f4"),
        "empty": np.empty((0, 5), dtype="i2"),
        "bool": np.array([True, False, True]),
        "complex": np.arange(4) * (1 + 2j),
        "strided (copied)": np.arange(40, dtype="u1").reshape(5, 8)[::2, 1::3],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "unicode": np.array(["a", "bcd"]),
        "datetime": np.array(["2026-01-01", "2026-12-05"], dtype="M8[ns]"),
        "structured": rec,
        "ünïcödé ✓": np.arange(3, dtype="i8"),
        # dtypes whose descr does not give them back (padding, offsets, itemsize, an
        # aligned struct) or that have none (out-of-order fields), a non-ASCII field
        # (padding is not data: zeroed here, so that the bytes compare)
        "aligned struct": filled(np.dtype([("a", "i1"), ("b", "<i8")], align=True), 1, 2),
        "offsets": filled(np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i2"],
                                    "offsets": [4, 0]}), 5, 6),
        "itemsize": filled(np.dtype({"names": ["a"], "formats": ["<i4"], "offsets": [0],
                                     "itemsize": 16}), 7),
        "titles": np.array([(1.5, (b"xy",))], np.dtype([(("a title", "a"), ">f8"),
                                                        ("n", [("y", "S2")])])),
        "field names": np.array([(1, 2)], np.dtype([("é", "<i4"), ("✓", "<u2")])),
        # an aligned struct holding a packed one (a C header's common shape): NumPy cannot
        # rebuild it with align=True (it aligns the nested one too)
        "aligned over packed": filled(np.dtype([("a", "i1"), ("s", np.dtype([("x", "i1"),
                                                ("y", "<i8")]))], align=True), 1),
    }


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.fixture(params=["private", "file"])
def pool(request, tmp_path):
    if request.param == "private":
        p = Pool(1 << 20, max_blocks=4096)
    else:
        p = Pool.create(tmp_path / "p.pool", 1 << 20, max_blocks=4096)
    yield p
    if not p.closed:
        import gc
        gc.collect()
        p.close()


# ---- round trips ---------------------------------------------------------------------
def test_round_trip_same_process(pool):
    s = samples()
    for k, v in s.items():
        pool.named[k] = v
    assert len(pool.named) == len(s) and set(pool.named) == set(s)
    for k, v in s.items():
        got = pool.named[k]
        same(got, v)
        assert got.flags.c_contiguous or got.size == 0 or got.ndim == 0
        assert k in pool.named
    assert "nope" not in pool.named
    pool.check()


def test_round_trip_after_reopen_in_new_process(tmp_path):
    path = tmp_path / "p.pool"
    with Pool.create(path, 1 << 20, max_blocks=4096) as p:
        for k, v in samples().items():
            p.named[k] = v
        x = p.zeros((6, 8), "<f8")
        x[:] = np.arange(48).reshape(6, 8)
        p.named["adopted view"] = x[1::2, ::3]
        p.named["raw"] = b"\x00hello\xff"
        blk = p.alloc(10)
        memoryview(blk)[:] = b"0123456789"
        p.named["block"] = blk
        del x, blk
    out = run_py(f"""
        import numpy as np, pickle, sys
        from mempool import Pool
        from mempool.named import _dtype_spec
        with Pool.open({str(path)!r}) as p:
            p.check()
            d = {{k: p.named[k] for k in p.named if k != "block"}}
            d = {{k: (ascii(_dtype_spec(v.dtype)), v.shape, v.strides, v.tobytes())
                  for k, v in d.items()}}
            b = p.named["block"]
            d["block"] = bytes(memoryview(b))
            del b
            sys.stdout.write(repr(d))
    """)
    got = eval(out)  # our own child's repr
    for k, v in samples().items():
        spec, shape, strides, values = got[k]
        assert np.dtype(ast.literal_eval(spec)) == v.dtype, k  # exactly, in another process
        assert shape == v.shape, k
        # (values, not bytes: a structured copy leaves padding undefined)
        same(np.frombuffer(values, v.dtype).reshape(shape), v)
        c = np.ascontiguousarray(v) if v.ndim else v
        assert strides == c.strides, k
    _, shape, strides, values = got["adopted view"]
    assert shape == (3, 3) and strides == (128, 24)
    assert values == np.arange(48.0).reshape(6, 8)[1::2, ::3].tobytes()
    assert got["raw"][3] == b"\x00hello\xff"
    assert got["block"] == b"0123456789"


def test_adopt_keeps_offset_and_does_not_copy(pool):
    x = pool.zeros((4, 5), "i4")
    used = pool.used
    live = len(pool)
    pool.named["v"] = x[::2, 1::2]
    assert len(pool) == live + 2  # the record and the table: no data range
    v = pool.named["v"]
    assert mempool._mempool.data_address(v) == mempool._mempool.data_address(x[0:, 1:])
    assert v.strides == (40, 8) and v.shape == (2, 2)
    x[0, 1] = 7
    assert v[0, 0] == 7  # the same bytes
    del x, v
    import gc
    gc.collect()  # the array that made the range is gone: the name keeps it
    assert pool.named["v"][0, 0] == 7
    assert pool.used > used - 1
    pool.check()


def test_copy_is_a_separate_range(pool):
    a = np.arange(10.0)
    pool.named["a"] = a
    a[0] = 99
    got = pool.named["a"]
    assert got[0] == 0
    x = pool.zeros(3)
    pool.named["x1"] = x
    pool.named["x2"] = pool.named["x1"]  # a named range is never shared: copied
    assert mempool._mempool.data_address(pool.named["x2"]) != mempool._mempool.data_address(x)
    pool.check()


def test_delete_frees_and_used_goes_back(pool):
    before = (pool.used, len(pool))
    pool.named["a"] = np.arange(1000.0)
    pool.named["b"] = b"xyz"
    x = pool.empty(100)
    pool.named["c"] = x
    del x
    assert pool.used > before[0]
    for k in ["a", "b", "c"]:
        del pool.named[k]
    assert (pool.used, len(pool)) == before
    assert len(pool.named) == 0 and list(pool.named) == []
    pool.check()


def test_delete_with_live_view_is_refused_and_unchanged(pool):
    pool.named["a"] = np.arange(10)
    v = pool.named["a"][2:5]
    st, segs = pool.stats(), pool.segments()
    with pytest.raises(BufferError, match="view"):
        del pool.named["a"]
    with pytest.raises(BufferError, match="view"):
        pool.named["a"] = np.zeros(3)  # replacing: the same rule
    assert pool.stats() == st and pool.segments() == segs
    same(pool.named["a"], np.arange(10))
    m = memoryview(pool.named["a"])
    del v
    with pytest.raises(BufferError):
        del pool.named["a"]
    with pytest.raises(BufferError):
        pool.close()  # a named view is a view of the pool's memory
    m.release()
    del m
    del pool.named["a"]
    pool.check()


def test_replace_frees_the_old_range(pool):
    pool.named["a"] = np.arange(100.0)
    used = pool.used
    pool.named["a"] = np.arange(100.0) * 2
    assert pool.used == used
    same(pool.named["a"], np.arange(100.0) * 2)
    assert len(pool.named) == 1


def test_named_block_and_bytes(pool):
    b = pool.alloc(16)
    memoryview(b)[:] = bytes(range(16))
    pool.named["blk"] = b
    b.free()  # the user's handle goes; the name keeps the range
    nb = pool.named["blk"]
    assert isinstance(nb, mempool.Block) and bytes(memoryview(nb)) == bytes(range(16))
    with pytest.raises(BufferError):
        del pool.named["blk"]
    nb.free()
    del pool.named["blk"]
    pool.named["m"] = memoryview(np.arange(6, dtype="<u2")).cast("B")
    got = pool.named["m"]
    assert got.dtype == np.uint8 and got.tobytes() == np.arange(6, dtype="<u2").tobytes()
    pool.check()


# ---- bad input -------------------------------------------------------------------------
def test_a_dtype_too_long_to_describe_is_refused_and_nothing_changes(pool):
    # 300 fields: a description of ~6.9 KB, past the record's 4096 bytes; before, the
    # record was written and every later lookup, listing, check and delete failed
    dt = np.dtype([(f"field_{i:04d}", "<f8") for i in range(300)])
    pool.named["keep"] = np.arange(4)
    used = pool.used
    with pytest.raises(ValueError, match="description takes 6901 bytes.*at most 4096"):
        pool.named["big"] = np.zeros(2, dt)
    assert list(pool.named) == ["keep"] and pool.used == used and "big" not in pool.named
    pool.check()
    # the binding refuses a record the directory could not read back, whoever makes it
    good = named_mod._record(named_mod.KIND_ARRAY, b"r", (4,), (8,), b"s<i8")
    for bad in (good[:-1], good[:32] + struct.pack("<IIII", 0, 1, 1, 5000) + good[48:],
                good[:32] + struct.pack("<IIII", 3, 1, 1, 4) + good[48:]):
        with pytest.raises(ValueError, match="not a record this directory can hold"):
            pool._named_put("r", bad, np.arange(4), None, 0)
    assert list(pool.named) == ["keep"] and pool.used == used
    pool.check()


def test_bad_names_and_values(pool):
    pool.named["a"] = np.arange(3)
    pool.named["x" * 255] = np.arange(2)  # the longest name
    del pool.named["x" * 255]
    st, segs = pool.stats(), pool.segments()
    for bad in [1, None, b"a", ("a",)]:
        with pytest.raises(TypeError, match="name must be a str"):
            pool.named[bad] = np.arange(2)  # type: ignore[index]
        with pytest.raises(TypeError):
            pool.named[bad]  # type: ignore[index]
        with pytest.raises(TypeError):
            del pool.named[bad]  # type: ignore[arg-type]
    for bad in ["", "x" * 256, "é" * 128, "\ud800"]:
        with pytest.raises(ValueError, match="name"):
            pool.named[bad] = np.arange(2)
        with pytest.raises(ValueError):
            pool.named[bad]
    with pytest.raises(KeyError, match="missing"):
        pool.named["missing"]
    with pytest.raises(KeyError):
        del pool.named["missing"]
    with pytest.raises(TypeError, match="object"):
        pool.named["o"] = np.array([object()])
    with pytest.raises(TypeError, match="holds NumPy arrays"):
        pool.named["l"] = [1, 2, 3]
    assert pool.stats() == st and pool.segments() == segs
    assert list(pool.named) == ["a"]
    pool.check()


@pytest.mark.parametrize("kind", ["private", "file"])
def test_out_of_space_changes_nothing(tmp_path, kind):
    p = (Pool(1 << 16, max_blocks=256) if kind == "private"
         else Pool.create(tmp_path / "s.pool", 1 << 16, max_blocks=256))
    with p:
        p.named["a"] = np.arange(10)
        st, segs = p.stats(), p.segments()
        with pytest.raises(mempool.OutOfSpace):
            p.named["huge"] = np.zeros(1 << 14)
        with pytest.raises(mempool.OutOfSpace):
            p.named["a"] = np.zeros(1 << 14)
        # the data fits, the record then does not: what was taken goes back
        fill = p.alloc(p.largest_free - 700)
        st, segs = p.stats(), p.segments()
        record = 64 + 16 * 32 + 255 + 4  # 32 dimensions, the longest name, "s|u1": 835 bytes
        whys = set()
        for n in range(700, 0, -50):  # the data fits (at last), the record never does
            with pytest.raises(mempool.OutOfSpace) as ei:
                p.named["x" * 255] = np.zeros((1,) * 31 + (n,), dtype="u1")
            whys.add(str(ei.value).split(":")[0])
            assert p.stats() == st and p.segments() == segs, n
        assert f"cannot allocate {record} bytes" in whys
        fill.free()
        st, segs = p.stats(), p.segments()
        assert p.stats() == st and p.segments() == segs
        same(p.named["a"], np.arange(10))
        p.check()


def test_closed_pool_and_external():
    p = Pool(1 << 16)
    p.named["a"] = np.arange(3)
    named = p.named
    p.close()
    with pytest.raises(PoolClosed):
        named["a"]
    for fn in (lambda: "a" in named, lambda: "b" in named, lambda: list(named),
               lambda: len(named), lambda: named.__setitem__("c", b"x")):
        with pytest.raises(PoolClosed):  # (not the answer a cache of this process had)
            fn()
    with pytest.raises(PoolClosed):
        p.named
    with pytest.raises(TypeError, match="External"):
        Pool(1 << 16, source=mempool.External(1 << 16)).named


# ---- corrupt directories ----------------------------------------------------------------
def _poke(path, off: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _root(path) -> list[int]:
    with open(path, "rb") as f:
        f.seek(NAMED_ROOT_OFFSET)
        return list(struct.unpack("<8Q", f.read(64)))


@pytest.mark.parametrize("field,value", [
    (0, 0xdeadbeef),              # magic
    (1, 1 << 60),                 # table outside
    (1, 8),                       # table not a live range
    (2, 3),                       # slots not a power of two
    (3, 1 << 50),                 # count
    (4, 1 << 50),                 # tombstones
])
def test_crafted_root_is_refused_on_open(tmp_path, field, value):
    path = tmp_path / "c.pool"
    with Pool.create(path, 1 << 20, max_blocks=1024) as p:
        p.named["a"] = np.arange(5)
    root = _root(path)
    root[field] = value
    _poke(path, NAMED_ROOT_OFFSET, struct.pack("<8Q", *root))
    with pytest.raises(CorruptionError, match="named directory"):
        Pool.open(path)


def test_crafted_records_are_refused_on_lookup(tmp_path):
    path = tmp_path / "c.pool"
    with Pool.create(path, 1 << 20, max_blocks=1024) as p:
        p.named["a"] = np.arange(5)
        from mempool._segment import Header
        h = Header.unpack(memoryview(p.source.buffer), p.source.size, b"MEMPOOL\0", "x")
        rec = p._named_find("a")[0]
    table = _root(path)[1]
    with open(path, "rb") as f:
        f.seek(h.data_off + table)
        slots = f.read(16 * 16)
    ref = [struct.unpack_from("<QQ", slots, 16 * i) for i in range(16)]
    used = [i for i, (_, r) in enumerate(ref) if r > 1]
    assert len(used) == 1
    rec_off = ref[used[0]][1] - 2
    cases = {
        "slot ref out of bounds": (h.data_off + table + 16 * used[0] + 8, struct.pack("<Q", 1 << 62)),
        "record magic": (h.data_off + rec_off, b"XXXXXXXX"),
        "record ndim": (h.data_off + rec_off + 44, struct.pack("<I", 1000)),
        "record size": (h.data_off + rec_off + 56, struct.pack("<Q", 1 << 40)),
        "record data": (h.data_off + rec_off + 16, struct.pack("<Q", 1 << 50)),
    }
    good = path.read_bytes()
    for what, (off, data) in cases.items():
        path.write_bytes(good)
        _poke(path, off, data)
        p = Pool.open(path)  # the root is fine: open is lazy, the lookup finds out
        try:
            with pytest.raises(CorruptionError, match="named"):
                p.named["a"]
                pytest.fail(what)
            with pytest.raises(CorruptionError):
                p.check()
        finally:
            p.close()
    assert rec  # (read through the private door too)


@pytest.mark.parametrize("names", [2, 12])  # 12: the put grows the table first
def test_a_crafted_table_without_an_empty_slot_is_refused_and_nothing_is_written(tmp_path,
                                                                                   names):
    # the root says `names` names in 16 slots, the table has every slot in use: the put
    # wrote its slot at table[-1] (16 bytes before the table: another record's bytes),
    # len() counted a name no lookup found, and a name stored before went missing
    from mempool._segment import Header
    path = tmp_path / "c.pool"
    with Pool.create(path, 1 << 20) as p:
        for i in range(names):
            p.named[f"k{i}"] = np.arange(8) + i
        h = Header.unpack(memoryview(p.source.buffer), p.source.size, b"MEMPOOL\0", "x")
    _, table, slots, count, _, _, _, _ = _root(path)
    assert (slots, count) == (16, names)
    with open(path, "r+b") as f:
        f.seek(h.data_off + table)
        tbl = bytearray(f.read(16 * slots))
        ref = next(r for _, r in struct.iter_unpack("<QQ", tbl) if r > 1)
        for i in range(slots):
            if struct.unpack_from("<QQ", tbl, 16 * i)[1] == 0:
                struct.pack_into("<QQ", tbl, 16 * i, 0x1234 + i, ref)
        f.seek(h.data_off + table)
        f.write(tbl)
    crafted = path.read_bytes()
    with Pool.open(path) as p:  # (the root is valid: open reads it alone)
        used, segs = p.stats().used, p.segments()
        with pytest.raises(CorruptionError, match="more names than its root counts"):
            p.named["zzz"] = b"hello"
        assert p.stats().used == used and p.segments() == segs and len(p.named) == names
        with pytest.raises(KeyError):
            p.named["zzz"]
    # nothing written (the failed call was undone): the root, the table and the 16 bytes
    # before it as they were (the rest of the heap: used and segments, above)
    after = path.read_bytes()
    root = slice(NAMED_ROOT_OFFSET, NAMED_ROOT_OFFSET + 64)
    near = slice(h.data_off + table - 16, h.data_off + table + 16 * slots)
    assert after[root] == crafted[root] and after[near] == crafted[near]
    with Pool.open(path) as p:
        for i in range(names):
            assert list(p.named[f"k{i}"]) == list(np.arange(8) + i)


@pytest.mark.parametrize("target", ["a's data", "the table", "a's record"])
def test_check_finds_one_range_named_twice(tmp_path, target):
    # b's record made to name a's data range (or the table, or a's record): check()
    # passed, and deleting a freed a range that b still named (the next alloc got it)
    from mempool._segment import Header
    path = tmp_path / "c.pool"
    with Pool.create(path, 1 << 20) as p:
        p.named["a"] = np.arange(8)
        p.named["b"] = np.arange(8) + 100
        h = Header.unpack(memoryview(p.source.buffer), p.source.size, b"MEMPOOL\0", "x")
        data_a, data_b = p._named_find("a")[1].offset, p._named_find("b")[1].offset
        p.check()
    _, table, slots = _root(path)[:3]
    with open(path, "rb") as f:  # the records: the slots' refs, told apart by their data
        f.seek(h.data_off + table)
        recs = [r - 2 for _, r in struct.iter_unpack("<QQ", f.read(16 * slots)) if r > 1]
        data_of = {}
        for r in recs:
            f.seek(h.data_off + r + 16)
            data_of[struct.unpack("<Q", f.read(8))[0]] = r
    rec_a, rec_b = data_of[data_a], data_of[data_b]
    off = {"a's data": data_a, "the table": table, "a's record": rec_a}[target]
    _poke(path, h.data_off + rec_b + 16, struct.pack("<Q", off))  # b's record: data
    with Pool.open(path) as p:
        with pytest.raises(CorruptionError, match=f"the range at offset {off} is the "
                                                  "directory's twice"):
            p.check()


def test_old_format_is_refused(tmp_path):
    path = tmp_path / "v.pool"
    Pool.create(path, 1 << 16, max_blocks=64).close()
    _poke(path, 8, struct.pack("<I", 2))
    with pytest.raises(CorruptionError, match="format version 2"):
        Pool.open(path)


# ---- crash consistency: SIGKILL in a storm ----------------------------------------------
STORM = """
import os, sys, numpy as np, random
from mempool import Pool
p = Pool.open(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
seq = int(sys.argv[3])
adopt = sys.argv[4] == "1"
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    seq += 1
    k = f"k{rng.randrange(24)}"
    if rng.random() < 0.3 and k in p.named:
        del p.named[k]
    elif adopt and rng.random() < 0.3:
        x = p.empty(rng.randrange(1, 200), "<i8")
        x[:] = seq
        p.named[k] = x[::rng.randrange(1, 3)]
        del x  # (alive, it would be a view of k's range: no replacing k then)
    else:
        p.named[k] = np.full(rng.randrange(0, 300), seq, dtype=">i8")
"""


def _verify_storm(path, slack: int = 0) -> int:
    """Every name intact; no range but the names' (records, data, the table), except
    up to `slack` unnamed arrays a killed writer made and could not name or free (an
    unnamed array of a file pool is freed when collected, and a kill collects nothing)."""
    with Pool.open(path) as p:
        p.check()
        names = list(p.named)
        ranges = 0
        for k in names:
            a = p.named[k]
            assert a.dtype.kind == "i" and a.itemsize == 8
            if a.size:
                assert (a == a.flat[0]).all(), k  # intact: one writer's seq throughout
            ranges += 2
            del a
        extra = len(p) - ranges - (1 if names else 0)
        assert 0 <= extra <= slack, f"{extra} leaked range(s)"
        return len(names)


@pytest.mark.parametrize("seed", range(8 if not SLOW else 60))
def test_sigkill_in_a_storm_leaves_the_directory_whole(tmp_path, seed):
    path = tmp_path / "k.pool"
    with Pool.create(path, 4 << 20, max_blocks=4096) as p:
        for i in range(5):  # names the storm never touches: intact after every kill
            p.named[f"keep{i}"] = np.full(50 + i, -i - 1, dtype=">i8")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    rng = random.Random(seed)
    for rnd in range(2 if not SLOW else 5):
        adopt = seed % 2  # odd seeds adopt arrays too (unnamed ones may be left: slack)
        proc = subprocess.Popen([sys.executable, "-c", STORM, str(path), str(seed * 10 + rnd),
                                 str(rnd * 10**9), str(adopt)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # killed in the storm, not dead of an error
        _verify_storm(path, slack=(rnd + 1) * adopt)
        with Pool.open(path) as p:
            for i in range(5):
                same(p.named[f"keep{i}"], np.full(50 + i, -i - 1, dtype=">i8"))


def test_reopen_is_lazy(tmp_path):
    """open() reads the root only: a damaged record far away does not stop it."""
    path = tmp_path / "l.pool"
    with Pool.create(path, 1 << 20, max_blocks=4096) as p:
        for i in range(200):
            p.named[f"n{i}"] = np.full(3, i)
    with Pool.open(path) as p:
        assert len(p.named) == 200
        same(p.named["n150"], np.full(3, 150))


def test_other_blocks_of_a_named_range_never_free_it(pool):
    pool.named["a"] = np.arange(8.0)
    off = pool.named._cache["a"][0].offset
    b = pool.block_at(off)
    with pytest.raises(BufferError):
        del pool.named["a"]  # a Block of it is alive
    b.free()  # only this handle goes
    b2 = pool.block_at(off)
    del b, b2
    import gc
    gc.collect()
    same(pool.named["a"], np.arange(8.0))
    pool.check()
    del pool.named["a"]
    assert len(pool) == 0


def test_a_forked_child_must_open_the_file_itself(tmp_path):
    path = tmp_path / "f.pool"
    with Pool.create(path, 1 << 20, max_blocks=1024) as p:
        p.named["a"] = np.arange(4)
        pid = os.fork()
        if pid == 0:  # the child: the parent's mapping is not its to use
            code = 0
            try:
                p.named["a"]
                code = 1
            except PoolClosed:
                pass
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        same(p.named["a"], np.arange(4))
    out = run_py(f"""
        import numpy as np
        from mempool import Pool
        with Pool.open({str(path)!r}) as p:
            p.named["b"] = p.named["a"] * 2
    """)
    assert out == ""
    with Pool.open(path) as p:
        same(p.named["b"], np.arange(4) * 2)
        p.check()


@pytest.mark.parametrize("seed", range(12))
def test_random_damage_to_the_directory_never_crashes(tmp_path, seed):
    """Random words written over the table and the records: every read gives the data
    or CorruptionError (KeyError where a damaged record no longer carries its name)."""
    path = tmp_path / "d.pool"
    with Pool.create(path, 1 << 20, max_blocks=1024) as p:
        for i in range(30):
            p.named[f"n{i}"] = np.arange(i + 1, dtype="<i4").reshape(1, -1)[:, ::-1]
        from mempool._segment import Header
        h = Header.unpack(memoryview(p.source.buffer), p.source.size, b"MEMPOOL\0", "x")
        live = [(o, n) for o, n, a in p.segments() if a]
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for _ in range(rng.choice([1, 3, 10])):
            off, n = rng.choice(live)
            at = off + rng.randrange(0, max(1, n - 8)) // 8 * 8
            f.seek(h.data_off + at)
            v = rng.choice([0, 1, 2, 2**63, 2**64 - 1, rng.getrandbits(64), rng.getrandbits(20)])
            f.write(struct.pack("<Q", v))
    try:
        p = Pool.open(path)
    except CorruptionError:
        return
    try:
        try:
            names = list(p.named)
        except CorruptionError:
            names = [f"n{i}" for i in range(30)]
        for k in [*names, "n0", "n29"]:
            try:
                a = p.named[k]
                a.sum()
                del a
            except (CorruptionError, KeyError):
                pass
        with contextlib.suppress(CorruptionError):
            p.check()
    finally:
        p.close()


def test_random_structured_dtypes_read_back_equal():
    # nested, aligned and packed in every combination, subarrays, explicit offsets and
    # itemsize: every one stored reads back == (a record that could not was refused
    # before anything was written: none is, here)
    rng = random.Random(7)

    def rnd(depth=0):
        fields = []
        for i in range(rng.randint(1, 4)):
            c = rng.random()
            if c < 0.3 and depth < 2:
                f = rnd(depth + 1)
            elif c < 0.4:
                f = (rng.choice(["i1", "<i8", "<f4", ">u2"]), (rng.randint(1, 3),))
            else:
                f = rng.choice(["i1", "<i8", "<f4", ">u2", "S3", "<c16", "<M8[s]"])
            fields.append((f"f{i}", f))
        d = np.dtype(fields, align=rng.random() < 0.5)
        if rng.random() < 0.2:
            names = list(d.names)
            d = np.dtype({"names": names, "formats": [d.fields[n][0] for n in names],
                          "offsets": [d.fields[n][1] for n in names],
                          "itemsize": d.itemsize + rng.randint(0, 8)})
        return d

    p = Pool("4MiB")
    for i in range(300):
        dt = rnd()
        p.named["x"] = np.zeros(2, dt)
        back = p.named["x"].dtype
        assert back == dt and back.itemsize == dt.itemsize, (i, dt)
        assert named_mod._decode_dtype(named_mod._encode_dtype(dt)) == dt
    del p.named["x"]
    assert p.used == 0
    p.check()


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "heap", "bump"])
def test_check_after_the_state_grew_reads_the_state_of_now(strategy):
    # a private pool's state moves when it grows: check() read the directory through
    # the state it had before (freed: a segfault, or under ASan a use after free; the
    # Heap's said the table was not live)
    p = Pool(1 << 20, strategy, max_blocks=32)
    p.named["w"] = np.arange(4.0)
    before = p.stats().metadata
    keep = []
    while p.stats().metadata == before:  # until it grows (ranges of pages for the Heap)
        keep.append(p.alloc(16 if len(keep) % 2 else 5000))
    junk = [bytearray(n) for n in range(4000, 60000, 8)]  # malloc reuses the old block
    p.check()
    assert p.named["w"].tolist() == [0.0, 1.0, 2.0, 3.0] and list(p.named) == ["w"]
    del junk, keep
    p.check()


@pytest.mark.filterwarnings("ignore::mempool.errors.UnnamedArrayWarning")  # (a file pool's)
def test_adopted_views_of_any_legal_shape_read_back(pool):
    # what NumPy allows, stored by adoption, reads back: an empty view whose earlier
    # dimension strides far (its extent is nothing), a broadcast over 2**62 bytes
    c = pool.zeros(1000)
    pool.named["empty"] = np.lib.stride_tricks.as_strided(c, shape=(5, 0), strides=(8000, 8))
    z = pool.zeros(1, "u1")
    z[0] = 7
    pool.named["wide"] = np.broadcast_to(z, (1 << 62,))
    one = pool.zeros(3)
    pool.named["one"] = np.lib.stride_tricks.as_strided(one, shape=(1, 3), strides=(1 << 62, 8))
    e, w, o = pool.named["empty"], pool.named["wide"], pool.named["one"]
    assert e.shape == (5, 0) and w.shape == (1 << 62,) and w[(1 << 62) - 1] == 7
    assert o.shape == (1, 3) and o.tolist() == [[0.0, 0.0, 0.0]]
    del e, w, o, c, z, one
    pool.check()


@pytest.mark.filterwarnings("ignore::mempool.errors.UnnamedArrayWarning")  # (a file pool's)
def test_the_directory_index_follows_every_change(pool):
    # block_at and adoption ask an index of which ranges are names' data and which the
    # directory's own (made at the second query without a change, then kept in step with
    # every put, replace and delete of this process): after each random step, every
    # allocated range answers as a walk of the records would
    rng = random.Random(5)
    keep: list = []
    for step in range(400):
        names = list(pool.named)
        r = rng.random()
        if r < 0.35 or not names:
            v = pool.zeros(rng.randrange(1, 40)) if rng.random() < 0.5 else np.arange(rng.randrange(1, 40))
            pool.named[f"n{rng.randrange(30)}"] = v  # adopt or copy; a new name or a replacement
            del v
        elif r < 0.55:
            del pool.named[rng.choice(names)]
        elif r < 0.7:
            keep.append(pool.alloc(rng.randrange(1, 200)))
        elif keep:
            keep.pop(rng.randrange(len(keep))).free()
        data = {struct.unpack_from("<Q", pool._named_find(k)[0], 16)[0] for k in pool.named}
        mine = {b.offset for b in keep}
        for off, size, allocated in pool.segments():
            if not allocated:
                continue
            assert pool._named_owns(off) == (off in data), (step, off)
            if off in data or off in mine:
                b = pool.block_at(off)   # (a name's range: this Block only leaves it)
                b.free()
            else:  # the directory's own: a record, the table
                try:
                    b = pool.block_at(off)
                except NotAllocated as e:
                    assert "directory of named arrays" in str(e)
                else:
                    raise AssertionError(f"step {step}: block_at({off}) of a directory range")
    for k in list(pool.named):
        del pool.named[k]
    del keep
    pool.check()
