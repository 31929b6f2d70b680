"""record --malloc: a preload library records any program's C heap calls as a trace
(real programs: gzip, sqlite3, CPython with threads), replayed through the strategies."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mempool
from mempool import cli, trace

from helpers import can_mount_a_tmpfs, on_a_small_fs

SQLITE = shutil.which("sqlite3")


@pytest.fixture(autouse=True)
def _no_sanitizer_preload(monkeypatch):
    # under the ASan CI run the interpreter has libasan preloaded; the programs recorded
    # here are not instrumented, and ASan refuses to come second in their preload list
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        monkeypatch.delenv("LD_PRELOAD")


def record(tmp_path, *cmd, out="t.trace.gz"):
    path = tmp_path / out
    rc = cli.main(["record", "--malloc", "-o", str(path), "--", *cmd])
    return rc, path


def test_gzip_runs_as_usual_and_its_trace_replays(tmp_path, capsys):
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(1 << 20) * 2)
    rc, path = record(tmp_path, "gzip", "-k", "-9", str(data))
    assert rc == 0
    assert gzip.open(tmp_path / "in.bin.gz").read() == data.read_bytes()  # ran normally
    head = gzip.open(path, "rt").readline().split()
    assert head[:4] == ["#", "mempool-trace", "v1", "program=gzip"]
    t = trace.read(path)  # valid: every f / r names a live ID
    assert len(t) > 0 and f"ops={len(t)}" in head and f"maxlive={t.maxlive}" in head
    err = capsys.readouterr().err
    assert f"{len(t):,} ops" in err
    for name in ("tlsf", "bestfit", "buddy", "heap"):
        r = trace.replay(t, name, capacity=4 * t.maxlive + (1 << 16))
        assert r.ops == len(t) and r.failures == 0 and r.maxlive == t.maxlive


@pytest.mark.skipif(SQLITE is None, reason="needs the sqlite3 shell")
def test_sqlite3_workload(tmp_path):
    sql = "create table t(a, b);" + "".join(
        f"insert into t values ({i}, '{'x' * (i % 97)}');" for i in range(3000)
    ) + "create index ib on t(b); select count(*), sum(length(b)) from t;"
    (tmp_path / "w.sql").write_text(sql)
    rc, path = record(tmp_path, SQLITE, str(tmp_path / "db"), f".read {tmp_path / 'w.sql'}",
                      out="sq.trace")
    assert rc == 0
    t = trace.read(path)
    assert len(t) > 1000 and t.maxlive > 0
    r = trace.replay(t, "tlsf")
    assert r.failures == 0 and r.peak_used >= t.maxlive


def test_threads_are_serialized_into_one_valid_stream(tmp_path, monkeypatch):
    # four CPython threads allocating at once, every object through malloc
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    code = ("import json, threading\n"
            "def work():\n"
            "    for i in range(400):\n"
            "        d = json.loads(json.dumps({str(j): [j] * (j % 7) for j in range(20)}))\n"
            "ts = [threading.Thread(target=work) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n")
    rc, path = record(tmp_path, os.path.realpath(sys.executable), "-S", "-c", code)
    assert rc == 0
    t = trace.read(path)
    assert len(t) > 4 * 400 * 20  # (valid: read() checked every f and r; the replays of
    # the other tests would take minutes here under MP_DEBUG's check after every op)


def test_exit_status_and_processes_started_are_reported(tmp_path, capsys):
    # the shell's exit status comes back; the ls it forks and execs is not recorded
    rc, path = record(tmp_path, "sh", "-c", "ls / > /dev/null; exit 3", out="sh.trace")
    assert rc == 3
    trace.read(path)
    assert "process(es) it started not recorded" in capsys.readouterr().err
    rc, _ = record(tmp_path, "sh", "-c", "kill -9 $$", out="killed.trace")
    assert rc == 128 + 9


@pytest.mark.parametrize("cmd, msg", [
    (["/nonexistent/cmd"], "cannot run /nonexistent/cmd: No such file or directory"),
    ([], "no command to record"),
])
def test_bad_commands_exit_2_with_one_line_and_leave_no_file(tmp_path, capsys, cmd, msg):
    rc, path = record(tmp_path, *cmd)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not path.exists()


def test_unwritable_output(tmp_path, capsys):
    rc = cli.main(["record", "--malloc", "-o", str(tmp_path / "no" / "t.trace"), "--", "true"])
    assert rc == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_static_program_is_refused(tmp_path, capsys):
    static = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if Path(p).exists()), None)
    info = subprocess.run(["file", "-L", static], capture_output=True, text=True).stdout \
        if static and shutil.which("file") else ""
    if "static" not in info:
        pytest.skip("no statically linked program here")
    rc, path = record(tmp_path, static, "--version")
    assert rc == 2
    assert "did not load the malloc recorder" in capsys.readouterr().err
    assert not path.exists()


def test_the_recorder_is_in_the_package():
    lib = trace.malloc_recorder()
    assert lib.parent == Path(mempool.__file__).resolve().parent and lib.suffix == ".so"


ALLOC_LOOP = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
ps = []
for i in range(100000):
    ps.append(libc.malloc(123456789))
    if len(ps) > 10:
        libc.free(ps.pop(0))
"""


@pytest.mark.skipif(not can_mount_a_tmpfs(), reason="needs root and unshare -m (a small tmpfs)")
# (.ci/run's sanitizer step: `record` runs in a process of its own there, whose
# instrumented mempool needs ASan preloaded, which the recorded program then gets second)
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="a recording process of its own under a preloaded ASan")
@pytest.mark.parametrize("size", ["128k", "256k"])
def test_a_full_disk_is_an_error_not_a_cut_trace(tmp_path, size):
    # the recorder stopped writing when the disk filled and told nobody: `record` said
    # it recorded 12,382 calls of ~400,000, and the last line was cut mid-number
    script = tmp_path / "loop.py"
    script.write_text(ALLOC_LOOP)
    r = on_a_small_fs(tmp_path, size,
                         f"{sys.executable} -m mempool record --malloc -o {{mnt}}/x.trace.gz -- "
                         f"{sys.executable} {script}; echo rc=$?; ls -A {{mnt}}")
    out = r.stdout.split()
    assert out[0] == "rc=2" and out[1:] == [], (r.stdout, r.stderr)  # and no file left
    assert "No space left on device" in r.stderr
