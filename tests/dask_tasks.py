"""Task functions of tests/test_dask.py.  They live here, not in the test module: a
spawned worker unpickles a function by its module's name, and `dask_tasks` is
importable from tests/ (conftest puts it on sys.path, which spawn hands to the child)
where pytest's own name for a test module (`tests.test_dask`) is not."""

from __future__ import annotations

import os

import numpy as np

import mempool.dask as md
from mempool.shared import _block_of

PLUGIN = md.SharedPoolPlugin.name


def make(n, start=0.0):
    a = md.empty(n)
    a[:] = np.arange(start, start + n)
    return a


def describe(a):
    """What a worker received: its type, the block (offset, tag) under it, whether that
    block is in this worker's host pool, a checksum, the worker's pid."""
    blk = _block_of(a)
    in_pool = False
    if blk is not None:
        try:
            in_pool = blk.pool is md.host_pool()
        except RuntimeError:
            pass
    where = (blk.offset, blk.tag) if blk is not None else None
    return type(a).__name__, where, in_pool, float(np.asarray(a).sum()), os.getpid()


def pool_used():
    return md.host_pool().used


def pool_name():
    return md.host_pool().name


def hold_leak(n, dask_worker=None):
    dask_worker._mempool_leak = md.zeros(n)  # no key: only reclaim can free it
    return md.host_pool().used


async def remove_plugin(dask_worker=None):
    await dask_worker.plugin_remove(PLUGIN)


async def add_plugin(plugin, dask_worker=None):
    await dask_worker.plugin_add(plugin=plugin, name=PLUGIN)



def join_then_leave(name: str, joined, in_close, left, slow: bool) -> None:
    """Join the host pool `name` as a worker's setup does, wait until both callers
    have joined (the barrier `joined`), then leave it.  The slow one's close says it
    has begun (`in_close`) and waits until the other has left (`left`); the other
    leaves only once the slow one is closing: the worst interleaving of two workers
    leaving at once, made certain."""
    with md._host_lock():
        pool = md.SharedPoolPlugin._open(name, 1 << 20, "tlsf", {})
    a = pool.zeros(10)
    del a
    joined.wait(30)
    if slow:
        close = pool.close

        def late_close() -> None:
            in_close.set()
            left.wait(30)
            close()

        pool.close = late_close  # (an instance attribute: this process only)
        md._leave(pool)
    else:
        in_close.wait(30)
        md._leave(pool)
        left.set()
