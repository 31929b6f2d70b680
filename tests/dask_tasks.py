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
