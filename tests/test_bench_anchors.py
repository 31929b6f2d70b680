"""bench/anchors.py (issue 15): the one-run table of mempool next to the native anchors,
and its refusals of bad arguments.  The harness itself needs the anchors' sources
(not in the project), so the table is checked on a raw.json of the harness's shape."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mempool

BENCH = Path(__file__).resolve().parent.parent / "bench" / "anchors.py"
SRC = os.path.dirname(os.path.dirname(mempool.__file__))


def load():
    spec = importlib.util.spec_from_file_location("bench_anchors", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def raw(orderly: bool = True) -> dict:
    ns = {"libc": [5.0, 6.0, 7.0], "OffsetAllocator": [10.0, 10.0, 11.0],
          "tlsf": [12.0, 12.5, 13.0], "bestfit": [25.0, 30.0, 35.0]}
    info = {"OffsetAllocator": {"span_ratio": 1.2213}, "tlsf": {"span_ratio": 1.0146},
            "bestfit": {"span_ratio": 1.0145}, "libc": {}}
    if orderly:
        ns["orderly"] = [40.0, 50.0, 60.0]
        info["orderly"] = {"span_ratio": 1.0662}
    return {"meta": {}, "traces": {"t1": {"ns_per_op": ns, "info": info}}}


def test_table_ratios_to_each_anchor_and_the_best():
    lines = load().table(raw()).splitlines()
    assert lines[2] == ("| trace | glibc | OffsetAllocator | orderly | tlsf | tlsf/OA | tlsf/orderly"
                        " | tlsf/best anchor | bestfit | bestfit/OA | bestfit/orderly"
                        " | bestfit/best anchor |")
    # medians: libc 6, OA 10, orderly 50, tlsf 12.5, bestfit 30; the best anchor is OA
    assert lines[4] == ("| t1 | 6.0 | 10.0 (1.2213) | 50.0 (1.0662) | 12.5 (1.0146) | 1.25 | 0.25"
                        " | 1.25 | 30.0 (1.0145) | 3.00 | 0.60 | 3.00 |")


def test_table_without_orderly_leaves_its_columns_out():
    lines = load().table(raw(orderly=False)).splitlines()
    assert "orderly" not in lines[2]
    assert lines[4] == ("| t1 | 6.0 | 10.0 (1.2213) | 12.5 (1.0146) | 1.25 | 1.25"
                        " | 30.0 (1.0145) | 3.00 | 3.00 |")


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("args, what", [
    ([], "--oa-src"),
    (["--oa-src", "/nonexistent/oa"], "--oa-src: no such folder: /nonexistent/oa"),
    (["--oa-src", ".", "--orderly-src", "/nonexistent/o"], "--orderly-src: no such folder"),
    (["--oa-src", ".", "--harness", "/nonexistent/run.sh"], "--harness: no such file"),
    (["--oa-src", ".", "--rounds", "0"], "--rounds must be >= 1"),
    (["--oa-src", ".", "--rounds", "x"], "--rounds: invalid int value"),
])
def test_bad_arguments_exit_2_with_one_line(args, what, tmp_path):
    r = run(*args, "--out", str(tmp_path / "out.txt"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert what in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.txt").exists()


def test_a_failing_harness_is_reported_without_a_traceback(tmp_path):
    harness = tmp_path / "run.sh"
    harness.write_text("echo 'need --oa-src DIR' >&2\nexit 2\n")
    r = run("--oa-src", str(tmp_path), "--harness", str(harness), "--out", str(tmp_path / "o.txt"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "need --oa-src DIR" in r.stderr
    assert "the harness failed (exit 2)" in r.stderr
    assert not (tmp_path / "o.txt").exists()
