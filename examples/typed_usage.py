"""The public API as a typed program: `mypy --strict` checks it against the package's
stubs and annotations (the variables' annotations are the types the API promises),
and running it checks that it does what it says.

    python -m mypy                  # [tool.mypy] in pyproject.toml lists this file
    python examples/typed_usage.py  # runs in a second or so
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

import mempool
from mempool import (
    TLSF,
    AnonymousMemory,
    BestFit,
    Bitmap,
    Block,
    Buddy,
    Bump,
    External,
    Heap,
    NotAllocated,
    OutOfSpace,
    Pool,
    RegionPool,
    Slab,
    Stats,
    Strategy,
)
from mempool import trace as mtrace


def strategies() -> None:
    s = TLSF(1 << 20, max_blocks=1024)
    a: int = s.alloc(4096, align=4096)
    b: int = s.alloc(np.int64(100))  # NumPy integers go through __index__
    b = s.realloc(b, 200)
    assert s.size_of(b) == 200
    offs: npt.NDArray[np.int64] = s.alloc_many([64, 128, 256])
    s.free_many(offs)
    s.free(a)
    st: Stats = s.stats()
    assert st.live == 1 and s.used == 200 and len(s) == 1
    segs: list[tuple[int, int, bool]] = s.segments()
    assert segs[0][0] == 0 and sum(size for _, size, _ in segs) == s.capacity
    s.check()
    t: TLSF = TLSF.restore(s.snapshot())  # restore() returns the type it is called on
    assert t.size_of(b) == 200
    u: TLSF = pickle.loads(pickle.dumps(t))
    assert u.stats() == t.stats()

    bf = BestFit(1 << 16)
    assert bf.alloc(10) == 0

    buddy = Buddy(1 << 20, min_block=4096, fanout=4)
    k: int = buddy.class_of(5000)
    assert buddy.class_size(k) == 16384 and buddy.num_classes == 5

    bm = Bitmap(1 << 16, 64, first_fit=True)
    ff: bool = bm.first_fit
    assert ff and bm.blocks == 1024 and bm.block_size == 64

    slab = Slab(1 << 20, 48, page_size=65536)
    arr_off: int = slab.alloc_array(10)
    slab.free_array(arr_off, 10)
    assert slab.item_stride == 48 and slab.items_per_page == 65536 // 48

    bump = Bump(1 << 16)
    mark: int = bump.mark()
    bump.alloc(100)
    bump.rewind(mark)
    assert bump.top == 0 and bump.depth == 0

    heap = Heap(1 << 20, page_size=4096)
    small = heap.alloc(24)
    where: str = heap.served_by(small)
    assert where == "class" and heap.size_class(24) == 32

    registry: dict[str, type[Strategy]] = mempool.STRATEGIES
    for name, cls in registry.items():
        obj: Strategy = cls(1 << 20)
        assert obj.strategy == name

    try:
        TLSF(4096).alloc(8192)
    except OutOfSpace as e:
        assert e.size == 8192
    try:
        TLSF(4096).free(0)
    except NotAllocated:
        pass


def pools() -> None:
    with Pool("1MiB", "tlsf") as pool:
        blk: Block = pool.alloc(4096)
        with memoryview(blk) as view:  # a Block is a buffer
            view[:5] = b"hello"
        data = np.asarray(blk)
        assert bytes(data[:5]) == b"hello"
        del data
        blk = pool.realloc(blk, 8192)
        assert blk.size == 8192 and blk.live
        blk.free()
        x: npt.NDArray[np.float64] = pool.zeros((4, 4), np.float64)
        y = pool.array([1, 2, 3], dtype=np.int32)
        assert x.sum() == 0 and int(y.sum()) == 6
        del x, y
        st: Stats = pool.stats()
        assert st.live == 0

    src = AnonymousMemory(1 << 16)
    with Pool(1 << 16, source=src) as over:
        addr: int | None = over.address
        assert addr == src.address
    src.close()

    with Pool(1 << 30, "bestfit", source=External(1 << 30)) as offsets:
        assert offsets.alloc(1 << 20).offset == 0

    with RegionPool("tlsf", region_size="64KiB") as rp:
        r = rp.alloc(100)
        rp.free(r)
        assert rp.stats().live == 0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heap.mp"
        with Pool.create(path, "1MiB") as p:
            keep = p.alloc(64).offset
        with Pool.open(path) as q:
            assert q.block_at(keep).size == 64


def traces() -> None:
    paths: list[Path] = mtrace.bundled()
    tr = mtrace.read(paths[0]).head(10_000)
    res: mtrace.ReplayResult = mtrace.replay(tr, "tlsf")
    assert res.ops == len(tr) and res.failures == 0
    strat = mtrace.strategy_for(tr, "buddy", min_block=16)  # one warm object, replayed twice
    assert strat is not None and mtrace.replay(tr, strat).strategy == "buddy"
    assert mtrace.replay(tr, strat).ops == len(tr)


if __name__ == "__main__":
    strategies()
    pools()
    traces()
    print("typed_usage: ok")
