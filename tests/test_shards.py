"""MEMPOOL_SHARD=k/n (tests/conftest.py): .ci/run's ASan run is two processes, each a
shard; together they must run every test once, and an xdist group in one shard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FILES = ["test_cli_see.py", "test_dask.py"]  # (test_dask.py: one xdist group)


def collect(shard: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEMPOOL_SHARD"}
    if shard is not None:
        env["MEMPOOL_SHARD"] = shard
    return subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider",
                           "--collect-only", "-q", *FILES], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=120)


def ids(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_two_shards_run_every_test_once_and_a_group_in_one():
    pytest.importorskip("distributed")
    every = ids(collect(None))
    a, b = ids(collect("0/2")), ids(collect("1/2"))
    assert sorted(a + b) == sorted(every) and not set(a) & set(b)
    assert a and b
    dask = {t for t in every if "test_dask.py::" in t}
    assert dask and (dask <= set(a) or dask <= set(b))


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1/0", "x", "1/2/3", ""])
def test_a_malformed_shard_is_a_usage_error(shard):
    r = collect(shard)
    if shard == "":  # (unset in effect: everything)
        assert r.returncode == 0
        return
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert f"MEMPOOL_SHARD={shard}: expected k/n with 0 <= k < n" in r.stderr
