"""mempool.trace.record(): NumPy's allocations and pool operations written as a trace."""

import gzip
import threading

import numpy as np
import pytest

import mempool
from mempool import trace

from helpers import can_mount_a_tmpfs, on_a_small_fs


def test_numpy_script_replays_to_its_peak(tmp_path):
    # a known workload: the live data bytes, counted here from nbytes, peak at `expected`
    out = tmp_path / "np.trace.gz"
    live, expected = 0, 0
    with trace.record(out) as rec:
        keep = []
        for k in range(1, 21):
            a = np.empty(1000 * k)
            keep.append(a)
            live += a.nbytes
            expected = max(expected, live)
            if k % 3 == 0:
                live -= keep.pop(0).nbytes
        keep.clear()
    t = trace.read(out)
    assert gzip.open(out, "rt").readline().startswith("# mempool-trace v1 ")
    assert t.maxlive == rec.maxlive == expected
    assert len(t) == rec.ops
    for name in mempool.STRATEGIES:
        r = trace.replay(t, name, capacity=4 * expected)
        assert r.maxlive == expected
        if name in ("tlsf", "bestfit"):  # exact strategies: every request fits twice over
            assert r.failures == 0 and r.peak_used == expected


def test_pool_ops_exact_sizes_and_order(tmp_path):
    out = tmp_path / "pool.trace"
    with trace.record(out):
        p = mempool.Pool(1 << 20)
        x = p.alloc(100)
        y = p.alloc(300, align=64)
        x.free()
        y = p.realloc(y, 1000)
        s = mempool.TLSF(4096)
        o = s.alloc(10)
        s.free(o)
    lines = out.read_text().splitlines()[1:]
    assert lines == ["a 0 100 16", "a 1 300 64", "f 0", "r 1 1000", "a 0 10", "f 0"]
    y.free()
    p.close()


def test_pool_made_outside_is_not_recorded_unless_activated(tmp_path):
    p = mempool.Pool(1 << 20)
    out = tmp_path / "a.trace"
    with trace.record(out):
        p.alloc(10).free()
        with p.activate():
            p.alloc(20).free()
    assert out.read_text().splitlines()[1:] == ["a 0 20 16", "f 0"]
    p.close()


def test_nested_and_concurrent_refused(tmp_path):
    with trace.record(tmp_path / "a.trace"):
        with pytest.raises(RuntimeError, match="does not nest"):
            with trace.record(tmp_path / "b.trace"):
                pass
        errors = []

        def other():
            try:
                with trace.record(tmp_path / "c.trace"):
                    pass
            except RuntimeError as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1
    trace.read(tmp_path / "a.trace")


def test_exception_inside_still_writes_the_file(tmp_path):
    out = tmp_path / "e.trace"
    with pytest.raises(ZeroDivisionError):
        with trace.record(out):
            a = np.empty(512)
            1 / 0
    t = trace.read(out)
    assert t.maxlive == 4096 and len(t) >= 1
    del a
    assert not mempool._mempool._rec_active()
    assert list(tmp_path.iterdir()) == [out]  # no body file left behind


def test_unwritable_path(tmp_path):
    with pytest.raises(OSError):
        trace.record(tmp_path / "no" / "such" / "dir.trace").__enter__()
    assert not mempool._mempool._rec_active()


def _cli(*args, cwd=None):
    import os
    import subprocess
    import sys
    src = os.path.dirname(os.path.dirname(mempool.__file__))
    env = dict(os.environ, PYTHONPATH=src)
    return subprocess.run([sys.executable, "-m", "mempool", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def test_cli_records_a_script_and_passes_its_exit_code(tmp_path):
    import sys
    script = tmp_path / "s.py"
    script.write_text("import sys, numpy as np\nkeep = [np.empty(1000), np.empty(3000)]\n"
                      "assert sys.argv[1:] == ['x', 'y']\nsys.exit(3)\n")
    out = tmp_path / "s.trace.gz"
    r = _cli("record", "-o", str(out), "--", sys.executable, str(script), "x", "y")
    assert r.returncode == 3, r.stderr
    t = trace.read(out)
    assert t.program == "s.py" and t.maxlive == 32000


def test_cli_records_python_c_with_its_arguments(tmp_path):
    import sys
    out = tmp_path / "c.trace"
    # (its own __main__, as python -c: the boot script's names are not its globals)
    code = ("import sys, numpy as np\nkeep = np.empty(5000)\nassert sys.argv == ['-c', 'x']\n"
            "assert sorted(k for k in globals() if k[:2] != '__') == ['keep', 'np', 'sys']\n"
            "assert __name__ == '__main__' and sys.modules['__main__'].keep is keep\nsys.exit(4)")
    r = _cli("record", "-o", str(out), "--", sys.executable, "-c", code, "x")
    assert r.returncode == 4, r.stderr
    t = trace.read(out)
    assert t.program == "python_-c" and t.maxlive >= 40000


@pytest.mark.parametrize("args, msg", [
    (["-o", "OUT", "python", "s.py"], "put the command after --"),
    (["-o", "OUT", "--"], "no command to record"),
    (["-o", "/no/such/dir/o.trace", "--", "python", "s.py"], "cannot write"),
    (["-o", "OUT", "--", "gzip", "-h"], "not a Python interpreter"),
    (["-o", "OUT", "--", "python", "-c"], "-c needs the code"),
    (["-o", "OUT", "--", "python", "-m"], "-m needs a module name"),
    (["-o", "OUT", "--", "python", "-u", "s.py"], "option -u is not supported"),
    (["-o", "OUT", "--", "python", "no_such.py"], "cannot open no_such.py"),
])
def test_cli_bad_arguments_one_line(tmp_path, args, msg):
    args = [a.replace("OUT", str(tmp_path / "o.trace")) for a in args]
    (tmp_path / "s.py").write_text("")  # a script that exists: the fault is elsewhere
    r = _cli("record", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["tlsf", "bestfit", "buddy"])
def test_a_recorded_strategy_replays_through_the_recorder(tmp_path, name):
    # TLSF and BestFit compile their own replay loop; a recorded strategy must not take
    # it (it would step around the recorder): its replay is recorded op by op
    src = tmp_path / "src.trace"
    src.write_text("# mempool-trace v1 program=t maxlive=300 ops=4\n"
                   "a 0 100\na 1 200\nf 0\nf 1\n")
    t = trace.read(src)
    out = tmp_path / "rec.trace"
    with trace.record(out):
        s = {"tlsf": mempool.TLSF, "bestfit": mempool.BestFit, "buddy": mempool.Buddy}[name](1 << 16)
        r = trace.replay(t, s)
    assert r.ops == 4 and r.failures == 0
    # (NumPy's scratch arrays of the replay are in the trace too: 8-byte-multiple sizes)
    ops = [ln.split() for ln in out.read_text().splitlines()[1:]]
    mine = [o for o in ops if o[0] == "a" and o[2] in ("100", "200")]
    assert [o[2] for o in mine] == ["100", "200"]
    ids = [o[1] for o in mine]
    frees = [o[1] for o in ops[ops.index(mine[1]) + 1:] if o[0] == "f" and o[1] in ids]
    assert frees[:2] == ids


FILL = """\
import os, sys, numpy as np
from mempool import trace
out = sys.argv[1]
try:
    with trace.record(out):
        for i in range(6000):
            a = np.empty(1000 + i % 7)
            del a
    print("recorded", os.path.getsize(out))
except OSError as e:
    d = os.path.dirname(out)
    print("OSError", e.errno, sorted((f, os.path.islink(os.path.join(d, f)),
                                      os.path.getsize(os.path.join(d, f))) for f in os.listdir(d)))
"""


@pytest.mark.skipif(not can_mount_a_tmpfs(), reason="needs root and unshare -m (a small tmpfs)")
@pytest.mark.parametrize("size", ["64k", "128k"])
@pytest.mark.parametrize("link", [False, True])
def test_a_full_disk_leaves_no_cut_trace(tmp_path, size, link):
    # 6,000 recorded pairs: a 78 KB body.  In 64k the body fills the disk while recording;
    # in 128k the body fits and the copy into the output fills it.  Both raised OSError
    # but left the output behind, empty or cut mid-line
    import sys
    script = tmp_path / "fill.py"
    script.write_text(FILL)
    r = on_a_small_fs(tmp_path, size, ("ln -s {mnt}/real.trace {mnt}/x.trace && " if link
                                          else "") + f"{sys.executable} {script} {{mnt}}/x.trace")
    # (through a symbolic link: the user's link stays, its target emptied; the link
    # itself was removed)
    left = "[('real.trace', False, 0), ('x.trace', True, 0)]" if link else "[]"
    assert r.stdout.strip() == f"OSError 28 {left}", (r.stdout, r.stderr)
