"""The command line's replay and show (layer 6) and what they stand on: trace.replay_series,
mempool.view (file pools read-only, live shared pools from a copy of the state).

Real traces written here, real file pools and shared pools, real child processes."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mempool
from mempool import Pool, SharedPool
from mempool import trace as tr
from mempool.cli import bench, main
from mempool.view import PoolView, format_bytes, view_file, view_pool, view_shared

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
ENV = dict(os.environ, PYTHONPATH=SRC)

KNOWN = """\
# mempool-trace v1 program=known
a 1 100
a 2 200
f 1
a 3 50
a 4 300
r 3 80
f 2
f 3
f 4
"""


def cli(*args):
    """main() in this process: (exit status, stdout, stderr) via capsys by the caller."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's own exits (bad arguments, --help)
        return e.code


def run(*args, env=None):
    """`python -m mempool ...` as a real process."""
    return subprocess.run([sys.executable, "-m", "mempool", *map(str, args)], env=env or ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def known(tmp_path):
    p = tmp_path / "known.trace"
    p.write_text(KNOWN)
    return p


# ---- replay_series ------------------------------------------------------------------------
def model_series(trace, strategy, capacity):
    """The figures after every op, from Python calls on a strategy object (the model)."""
    obj = tr.strategy_for(trace, strategy, capacity=capacity)
    where = {}
    used, hw, lf = [], [], []
    for o, i, s in zip(trace.op.tolist(), trace.id.tolist(), trace.size.tolist(), strict=True):
        if o == 0:
            where[i] = obj.alloc(s or 1)
        elif o == 1:
            obj.free(where.pop(i))
        else:
            where[i] = obj.realloc(where[i], s)
        used.append(obj.used)
        hw.append(obj.high_water)
        lf.append(obj.largest_free)
    return used, hw, lf


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "bitmap", "heap"])
def test_replay_series_every_op_matches_python_calls(known, strategy):
    t = tr.read(known)
    s = tr.replay_series(t, strategy, capacity=1 << 16, samples=len(t))
    used, hw, lf = model_series(t, strategy, 1 << 16)
    assert s.ops.tolist() == list(range(1, 10))
    assert s.used.tolist() == used
    assert s.high_water.tolist() == hw
    assert s.largest_free.tolist() == lf
    assert s.result.ops == 9 and s.result.maxlive == 580 and s.result.failures == 0


def test_replay_series_exact_figures_of_the_known_trace(known):
    t = tr.read(known)
    s = tr.replay_series(t, "bestfit", capacity=4096, samples=len(t))
    # a1 [0,100) a2 [100,300); f1; a3 best fit in [0,100); a4 [300,600); r3 80 in place
    assert s.used.tolist() == [100, 300, 200, 250, 550, 580, 380, 300, 0]
    assert s.requested.tolist() == [100, 300, 200, 250, 550, 580, 380, 300, 0]
    assert s.high_water.tolist() == [100, 300, 300, 300, 600, 600, 600, 600, 600]
    assert s.largest_free.tolist() == [3996, 3796, 3796, 3796, 3496, 3496, 3496, 3496, 4096]
    assert s.available.tolist() == [4096 - u for u in s.used.tolist()]
    assert s.live.tolist() == [1, 2, 1, 2, 3, 3, 2, 1, 0]
    frag = 1 - s.largest_free / s.available
    assert np.allclose(s.fragmentation, frag)
    assert (s.result.peak_used, s.result.high_water) == (580, 600)
    assert s.peak_index == 5


def test_replay_series_sampling_interval_and_last_row(known):
    t = tr.read(known)
    assert tr.replay_series(t, "tlsf", capacity=4096, samples=4).ops.tolist() == [2, 4, 6, 8, 9]
    assert tr.replay_series(t, "tlsf", capacity=4096, samples=3).ops.tolist() == [3, 6, 9]
    assert tr.replay_series(t, "tlsf", capacity=4096, samples=1).ops.tolist() == [9]
    # as many rows as ops at most, whatever is asked
    assert len(tr.replay_series(t, "tlsf", capacity=4096, samples=1000).ops) == 9


def test_replay_series_same_result_as_replay():
    # (3,000 ops in a debug build, which checks the state after each: 30,000 took 136 s
    # under ASan + MP_DEBUG)
    t = tr.read(tr.bundled()[0]).head(3_000 if mempool._mempool.DEBUG_BUILD else 30_000)
    for name in ("tlsf", "heap", "bitmap"):
        a = tr.replay(t, name)
        b = tr.replay_series(t, name, samples=100).result
        assert (a.peak_used, a.high_water, a.failures, a.maxlive, a.ops) == (
            b.peak_used, b.high_water, b.failures, b.maxlive, b.ops)


def test_replay_series_bad_arguments(known):
    t = tr.read(known)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        tr.replay_series(t, "tlsf", samples=0)
    with pytest.raises(TypeError, match="samples must be an int"):
        tr.replay_series(t, "tlsf", samples=2.5)
    with pytest.raises(ValueError, match="libc keeps no figures"):
        tr.replay_series(t, "libc")
    with pytest.raises(ValueError, match="unknown strategy"):
        tr.replay_series(t, "nope")
    # the binding: a samples buffer too small, or without an interval
    rows = np.zeros(7, np.uint64)
    with pytest.raises(ValueError, match="samples must hold"):
        mempool._mempool.replay(mempool.TLSF(4096), t.op, t.id, t.size, t.align, t.max_id, 1,
                                rows)
    with pytest.raises(ValueError, match="go together"):
        mempool._mempool.replay(mempool.TLSF(4096), t.op, t.id, t.size, t.align, t.max_id, 0,
                                rows)


# ---- replay on the command line ----------------------------------------------------------
def test_replay_cli_known_trace(known, capsys):
    assert cli("replay", known, "-s", "bestfit", "-s", "tlsf", "--capacity", "4KiB", "-q") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = [ln.split() for ln in lines if ln.startswith("known ")]
    assert [r[1] for r in table] == ["libc", "bestfit", "tlsf"]
    for r in table[1:]:
        assert r[5] == f"{600 / 580:.4f}" and r[6] == "1.0000" and r[7] == "0"
    story = {ln.split()[0]: ln.split() for ln in lines if ln.startswith(("bestfit ", "tlsf "))
             and "KiB" in ln}
    for name in ("bestfit", "tlsf"):
        # capacity, peak used, high water, hw/maxlive, largest free and free at the peak
        assert story[name][1:9] == ["4.0", "KiB", "580", "B", "600", "B", "1.0345", "3.4"]
    assert "9 ops, peak live requested bytes (maxlive) 580 B" in out


def test_replay_cli_all_strategies_skips_what_cannot_be_made(known, capsys):
    assert cli("replay", known, "--capacity", "4096", "-q") == 0
    out = capsys.readouterr().out
    assert "skipped slab: mempool.Slab(): capacity 4096 is smaller than one page" in out
    names = [ln.split()[1] for ln in out.splitlines() if ln.startswith("known ")]
    assert names == ["libc", "tlsf", "bestfit", "buddy", "bitmap", "bump", "heap"]
    # named explicitly, it is an error
    assert cli("replay", known, "--capacity", "4096", "-s", "slab", "-q") == 2
    err = capsys.readouterr().err
    assert err.strip() == ("mempool replay: slab over 4096 bytes: mempool.Slab(): capacity 4096 "
                           "is smaller than one page (page_size 65536)")


def test_replay_cli_default_capacity_is_twice_maxlive(known, capsys):
    assert cli("replay", known, "-s", "tlsf", "-q") == 0
    story = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("tlsf ")]
    assert story[0][1:3] == ["4.0", "KiB"]  # max(2 * 580, 4096)


def test_replay_cli_real_process_quiet_when_not_a_terminal(known):
    r = run("replay", known, "-s", "heap")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().startswith("(") and r.stderr.count("\n") == 1  # only the time
    assert "heap" in r.stdout


# ---- bad arguments: one line, exit 2 ------------------------------------------------------
def one_line_error(capsys, code, start):
    cap = capsys.readouterr()
    assert code == 2
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
    assert cap.err.startswith(start), cap.err
    return cap.err


def test_replay_bad_arguments(known, tmp_path, capsys):
    missing = tmp_path / "missing.trace"
    e = one_line_error(capsys, cli("replay", missing), "mempool replay: cannot read")
    assert "No such file or directory" in e
    bad = tmp_path / "bad.trace"
    bad.write_text("# mempool-trace v1\na 1 10\nf 2\n")
    e = one_line_error(capsys, cli("replay", bad), "mempool replay: ")
    assert "line 3: free of an ID that is not live (ID 2)" in e
    junk = tmp_path / "junk.trace"
    junk.write_bytes(os.urandom(100))
    e = one_line_error(capsys, cli("replay", junk), "mempool replay: ")
    assert "not a mempool-trace v1 header" in e
    gz = tmp_path / "broken.trace.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 20)
    assert "not a valid gzip file" in one_line_error(capsys, cli("replay", gz), "mempool replay")
    folder = tmp_path
    one_line_error(capsys, cli("replay", folder), "mempool replay: cannot read")
    # --max-bytes bounds the text (a gzip bomb's, here a small one): refused, then read
    size = len(KNOWN.encode())
    e = one_line_error(capsys, cli("replay", known, "--max-bytes", size - 1, "-q"),
                       "mempool replay: ")
    assert f"more than max_bytes={size - 1:,} bytes of trace" in e and "--max-bytes" in e
    e = one_line_error(capsys, cli("bench", known, "--max-bytes", size - 1, "-q"),
                       "mempool bench: ")
    assert f"more than max_bytes={size - 1:,}" in e
    assert cli("replay", known, "--max-bytes", size, "-q", "-s", "tlsf") == 0
    capsys.readouterr()
    e = one_line_error(capsys, cli("replay", known, "--max-bytes", "lots"),
                       "python -m mempool replay: error: argument --max-bytes")
    for cap in ("abc", "-1", "0", "1.5B", "12XB"):
        e = one_line_error(capsys, cli("replay", known, "--capacity", cap),
                           "python -m mempool replay: error: argument --capacity")
    assert "size must be an integer or a size such as '64MiB'" in e
    e = one_line_error(capsys, cli("replay", known, "-s", "nope"),
                       "python -m mempool replay: error: argument --strategy/-s: invalid choice")
    e = one_line_error(capsys, cli("replay", known, "--plot", tmp_path / "no" / "x.png"),
                       "python -m mempool replay: error: argument --plot")
    assert "no folder" in e
    e = one_line_error(capsys, cli("replay", known, "--plot", tmp_path / "x.txt"),
                       "python -m mempool replay: error: argument --plot")
    assert "suffix must be .png or .svg" in e
    one_line_error(capsys, cli("replay", known, "--samples", "0"), "python -m mempool replay")
    one_line_error(capsys, cli("replay"), "python -m mempool replay: error:")
    one_line_error(capsys, cli(), "python -m mempool: error:")
    one_line_error(capsys, cli("nope"), "python -m mempool: error:")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_plot_into_a_read_only_folder(known, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    e = one_line_error(capsys, cli("replay", known, "--plot", ro / "x.png"), "python -m mempool")
    assert "not writable" in e


def test_bad_arguments_in_a_real_process_without_matplotlib(known, tmp_path):
    # matplotlib made unimportable in the child: --plot is refused before any work
    code = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None
        from mempool.cli import main
        sys.exit(main(["replay", {str(known)!r}, "--plot", {str(tmp_path / "r.png")!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr == ("mempool replay: pictures need matplotlib: "
                        "pip install 'mempool[plot]'\n")
    assert r.stdout == ""
    # and without --plot the same child works
    code = code.replace(f', "--plot", {str(tmp_path / "r.png")!r}', ', "-s", "tlsf"')
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_help_of_every_subcommand(capsys):
    for sub in ("bench", "replay", "show"):
        assert cli(sub, "--help") == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m mempool {sub}")
        assert "--plot FILE" in out
    r = run("--help")
    assert r.returncode == 0 and "{bench,replay,show" in r.stdout


# ---- show: a file pool ----------------------------------------------------------------------
def known_file_pool(path):
    """A 64 KiB BestFit file pool with the layout
    [0,4K) used  [4K,12K) free  [12K,16K) used  [16K,32K) used  [32K,32K+512) used  rest free."""
    p = Pool.create(path, 65536, "bestfit")
    a, b, c, d = p.alloc(4096), p.alloc(8192), p.alloc(4096), p.alloc(16384)
    e = p.alloc(512)
    assert [x.offset for x in (a, b, c, d, e)] == [0, 4096, 12288, 16384, 32768]
    b.free()
    p.flush()
    return p, (a, c, d, e)


MAP_LINES = [
    "     0 B │████········████│",
    "16.0 KiB │████████████████│",
    "32.0 KiB │▒···············│",
    "48.0 KiB │················│",
]


def test_show_file_pool_exact(tmp_path, capsys):
    path = tmp_path / "heap.mp"
    p, _keep = known_file_pool(path)
    p.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns
    v = view_file(path)
    assert v.strategy == "bestfit" and v.source == f"file pool {str(path)!r}"
    st = v.stats
    assert (st.capacity, st.used, st.available, st.largest_free, st.live, st.free_ranges) == (
        65536, 25088, 40448, 32256, 4, 2)
    assert v.largest_free(5) == [(33280, 32256), (4096, 8192)]
    assert v.largest_free(1) == [(33280, 32256)]
    assert v.text_map(4, 16) == MAP_LINES
    assert v.text_map(4, 16, ascii=True)[2] == "32.0 KiB |-...............|"
    assert v.legend(4, 16).startswith("each character 1.0 KiB of the span")
    assert cli("show", path, "--rows", "4", "--width", "16", "--top", "3") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"file pool {str(path)!r}: bestfit, capacity 65,536 B (64.0 KiB)"
    assert "  used            25,088 B (24.5 KiB)  38.28 % of the capacity" in out
    assert "  largest free    32,256 B (31.5 KiB)" in out
    assert "  live ranges     4" in out and "  free ranges     2" in out
    assert "largest free ranges (2 of 2):" in out
    assert "  offset          33,280  size          32,256 B  (31.5 KiB)" in out
    assert out[-4:] == MAP_LINES
    assert out[-5].startswith("memory map (each character 1.0 KiB of the span: █ allocated")
    # read-only: not a byte, not the time stamp
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns) == before
    with Pool.open(path) as q:  # and a writer opens it as before, nothing to recover
        assert not q.recovered and q.stats() == st


def test_show_file_pool_while_its_writer_has_it_open(tmp_path, capsys):
    path = tmp_path / "heap.mp"
    p, keep = known_file_pool(path)
    try:
        v = view_file(path)
        assert v.stats.used == 25088 and v.text_map(4, 16) == MAP_LINES
        assert v.notes == ["the pool is open in another process: read as it was at this moment"]
        p.alloc(1024)  # the writer carries on
        assert view_file(path).stats.used == 25088 + 1024
    finally:
        del keep
        p.close()


CHURN = """
import random, sys, time
import mempool
p = mempool.Pool.open(sys.argv[1])
rng, live = random.Random(3), []
print("ready", flush=True)
while True:
    if rng.random() < 0.05:  # (a writer that never rests leaves a reader no moment between
        time.sleep(0.001)    # two of its calls: under ASan, none in 6 s)
    if rng.random() < 0.6 or not live:
        try:
            live.append(p.alloc(rng.choice([16, 100, 3000])))
        except mempool.OutOfSpace:
            pass
    else:
        live.pop(rng.randrange(len(live))).free()
"""


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit"])
def test_a_view_of_a_file_its_writer_is_changing_agrees_with_itself(tmp_path, strategy):
    # each view is one moment of the writer's state: its counts and its map agree
    # (read from the private mapping, pages the writer changed meanwhile disagreed: 131
    # of 146 views in a review's run)
    path = tmp_path / "live.mp"
    Pool.create(path, "4MiB", strategy, max_blocks=64).close()
    w = subprocess.Popen([sys.executable, "-c", CHURN, str(path)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert w.stdout.readline().strip() == "ready"
        seen = 0
        end = time.monotonic() + 6.0
        while seen < 10 and time.monotonic() < end:  # (a busy writer: some reads retry)
            try:
                v = view_file(path)
            except mempool.CorruptionError:  # (caught in a call 20 times in a row)
                continue
            live = v.allocated
            assert (v.stats.live, v.stats.used) == (int(live.sum()), int(v.sizes[live].sum()))
            seen += 1
        assert seen >= 3
    finally:
        w.kill()
        w.wait()


def test_show_map_of_small_spans_and_views():
    s = mempool.BestFit(100)
    s.alloc(30)
    s.alloc(20)
    s.free(0)
    v = view_pool(s)
    # 100 bytes, 64-character lines: a cell a byte, two lines, the second shorter
    assert v.text_map(32, 64) == [" 0 B │" + "·" * 30 + "█" * 20 + "·" * 14 + "│",
                                  "64 B │" + "·" * 36 + "│"]
    assert v.text_map(1, 4) == ["0 B │·▓··│"]  # 25-byte cells: [25,50) is 20/25 used
    # ranges that leave a gap are tiled with free ranges
    g = PoolView.from_segments([(10, 10, True), (40, 20, True)], mempool.Stats(
        100, 30, 70, 40, 2, 2, 30, 60, 0.0))
    assert g.offsets.tolist() == [0, 10, 20, 40, 60]
    assert g.sizes.tolist() == [10, 10, 20, 20, 40]
    assert g.allocated.tolist() == [False, True, False, True, False]
    assert g.allocated_below(np.array([0, 15, 20, 50, 100])).tolist() == [0, 5, 10, 20, 30]
    for rows, width in ((0, 10), (10, 0), (-1, 5)):
        # (legend divided by zero, or said "each character -819 B")
        for draw in (v.text_map, v.legend):
            with pytest.raises(ValueError, match="rows and width must be >= 1"):
                draw(rows, width)
    assert format_bytes(0) == "0 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 << 30) == "3.0 GiB"


def test_show_bad_files(tmp_path, capsys):
    e = one_line_error(capsys, cli("show", tmp_path / "missing.mp"), "mempool show: ")
    assert e.endswith("missing.mp: no such file\n")
    junk = tmp_path / "junk.mp"
    junk.write_bytes(os.urandom(8192))
    e = one_line_error(capsys, cli("show", junk), f"mempool show: {junk}: not a mempool segment")
    short = tmp_path / "short.mp"
    short.write_bytes(b"x" * 100)
    e = one_line_error(capsys, cli("show", short), "mempool show: ")
    assert "100 bytes, too short for a mempool file" in e
    one_line_error(capsys, cli("show", tmp_path), f"mempool show: {tmp_path}: is a folder")
    fifo = tmp_path / "fifo.mp"  # (its open blocked until a writer came: for ever)
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("show blocked on a FIFO")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        one_line_error(capsys, cli("show", fifo), f"mempool show: {fifo}: not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # a damaged state: the strategy's check refuses it, in the private copy
    path = tmp_path / "heap.mp"
    p, _keep = known_file_pool(path)
    p.close()
    del _keep
    raw = bytearray(path.read_bytes())
    raw[4096 + 40:4096 + 48] = (123).to_bytes(8, "little")  # mp_head_t.used
    path.write_bytes(raw)
    e = one_line_error(capsys, cli("show", path), f"mempool show: {path}: ")
    assert path.read_bytes() == raw  # untouched
    one_line_error(capsys, cli("show"), "mempool show: give a pool file PATH or --shared NAME")
    one_line_error(capsys, cli("show", path, "--shared", "x"), "mempool show: give a pool file")
    one_line_error(capsys, cli("show", path, "--rows", "0"), "python -m mempool show: error:")
    one_line_error(capsys, cli("show", path, "--top", "-1"), "mempool show: --top must be >= 0")


def test_show_bad_shared_names(capsys):
    e = one_line_error(capsys, cli("show", "--shared", f"nope-{os.getpid()}"), "mempool show: ")
    assert e == f"mempool show: shared pool 'nope-{os.getpid()}': no such shared pool\n"
    e = one_line_error(capsys, cli("show", "--shared", "a/b"), "mempool show: shared pool 'a/b'")


# ---- show: a live shared pool -------------------------------------------------------------
ALLOCATOR = textwrap.dedent("""
    import os, sys, time
    from mempool import SharedPool
    p = SharedPool.attach(sys.argv[1])
    count = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bs = [p.alloc(64 + 16 * (k % 7)) for k in range(50)]
        del bs
        count += 50
        if count % 5000 == 0:  # written whole, then renamed: a reader never sees it empty
            with open(sys.argv[2] + ".tmp", "w") as f:
                f.write(str(count))
            os.replace(sys.argv[2] + ".tmp", sys.argv[2])
""")


def test_show_shared_pool_while_a_child_keeps_allocating(name, tmp_path, capsys):
    pool = SharedPool.create(name, "8MiB", "tlsf")
    try:
        mine = [pool.alloc(1 << 20) for _ in range(3)]  # [0,1M) [1M,2M) [2M,3M)
        assert [b.offset for b in mine] == [0, 1 << 20, 2 << 20]
        mine[1].free()
        counter = tmp_path / "count"
        child = subprocess.Popen([sys.executable, "-c", ALLOCATOR, name, str(counter)], env=ENV)
        try:
            def progress():
                try:
                    return int(counter.read_text() or 0)
                except (FileNotFoundError, ValueError):
                    return 0
            deadline = time.monotonic() + 60
            while progress() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert progress() > 0, "the child never allocated"
            v = view_shared(name)
            assert v.source == f"shared pool {name!r}" and v.strategy == "tlsf"
            assert v.stats.capacity == 8 << 20
            assert v.stats.used >= 2 << 20  # ours, plus whatever the child holds
            alloc = dict(zip(v.offsets.tolist(), zip(v.sizes.tolist(), v.allocated.tolist(),
                                                     strict=True), strict=True))
            assert alloc[0] == (1 << 20, True) and alloc[2 << 20] == (1 << 20, True)
            assert v.notes[0].startswith("state copied in ")
            assert v.notes[1].startswith("registry: ")
            # the real command, while the child carries on
            r = run("show", "--shared", name, "--rows", "8", "--width", "32")
            assert r.returncode == 0, r.stderr
            out = r.stdout.splitlines()
            assert out[0] == f"shared pool {name!r}: tlsf, capacity 8,388,608 B (8.0 MiB)"
            assert out[-8] == "    0 B │" + "█" * 32 + "│"
            assert out[-4].startswith("4.0 MiB │")  # the line of offset 4 MiB
            before = progress()
            deadline = time.monotonic() + 60
            while progress() <= before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert progress() > before, "the child stopped allocating"
            assert child.poll() is None
        finally:
            child.kill()
            child.wait()
        # the pool is as the users left it (the reader's attachment changed nothing)
        pool.reclaim(child.pid)
        pool.check()
        assert pool.stats().used == 2 << 20 and pool.stats().live == 2
    finally:
        pool.close()
        pool.unlink()


def test_view_shared_keeps_this_process_attachment(name):
    from mempool import shared

    pool = SharedPool.create(name, "1MiB")
    try:
        b = pool.alloc(1000)
        assert shared._attached.get(name) is pool
        v = view_shared(name)
        assert v.stats.used == pool.stats().used and v.stats.live == 1
        assert shared._attached.get(name) is pool
        del b
    finally:
        pool.close()
        pool.unlink()
    # with no attachment here, the reader's own goes again
    SharedPool.create(name, "1MiB").close()
    view_shared(name)
    assert name not in shared._attached


@pytest.mark.parametrize("strategy", list(mempool.STRATEGIES))
def test_view_file_of_every_strategy_agrees_with_the_pool(tmp_path, strategy, capsys):
    path = tmp_path / f"{strategy}.mp"
    opts = {"item_size": 64} if strategy == "slab" else {}
    with Pool.create(path, "1MiB", strategy, **opts) as p:
        keep = [p.alloc(48) for _ in range(20)]
        for b in keep[::2]:
            b.free()
        want_stats, want_segs = p.stats(), p.segments()
        v = view_file(path)
        assert v.stats == want_stats and v.strategy == strategy
        # the same ranges, tiled: every allocated one is listed at its offset and size
        got = set(zip(v.offsets.tolist(), v.sizes.tolist(), v.allocated.tolist(), strict=True))
        assert {s for s in want_segs if s[2]} == {s for s in got if s[2]}
        assert int(v.sizes.sum()) == want_stats.capacity
        assert int(v.sizes[v.allocated].sum()) == want_stats.used
        del keep
    assert cli("show", path, "--rows", "2", "--width", "8") == 0
    assert capsys.readouterr().out.startswith(f"file pool {str(path)!r}: {strategy}")


def test_views_of_spans_past_2_52_bytes():
    # the edges of the map's cells were k * capacity in int64: wrong labels and glyphs
    # above ~2**52 bytes, an IndexError in the plot; a span the int64 offsets cannot
    # hold is a ValueError, not an OverflowError
    s = mempool.TLSF(1 << 60)
    s.alloc(1 << 59)
    v = view_pool(s)
    assert v.text_map(4, 8, ascii=True) == ["         0 B |########|",
                                            "262144.0 TiB |########|",
                                            "524288.0 TiB |........|",
                                            "786432.0 TiB |........|"]
    assert list(v.cell_fractions(4)) == [1.0, 1.0, 0.0, 0.0]
    t = mempool.TLSF(1 << 63)
    t.alloc(1 << 62)
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        view_pool(t)
    with pytest.raises(TypeError, match="view each of its regions"):
        view_pool(mempool.RegionPool())


def test_bench_skips_what_cannot_be_made_and_refuses_an_infinite_factor(known, capsys):
    # a trace whose maxlive is below Slab's page: bench ended in a traceback
    assert cli("bench", known, "--quick", "-q", "--repeat", "1") == 0
    out = capsys.readouterr().out
    assert "skipped slab on known: mempool.Slab(): capacity 4096 is smaller than one page" in out
    names = [ln.split()[1] for ln in out.splitlines() if ln.startswith("known ")]
    assert names == ["libc", "tlsf", "bestfit", "buddy", "bitmap", "bump", "heap"]
    for bad in ("inf", "nan", "0", "-1"):
        assert cli("bench", known, "--capacity-factor", bad, "-q") == 2
        assert "--capacity-factor must be > 0 and finite" in capsys.readouterr().err


def test_bench_csv_path_is_checked_before_the_run(known, tmp_path, capsys):
    # the bench ran its whole table, then failed on the CSV's path
    for bad, why in ((tmp_path / "no" / "x.csv", "no folder"), (tmp_path, "is a folder")):
        assert cli("bench", known, "--csv", str(bad), "-q") == 2
        err = capsys.readouterr()
        assert f"argument --csv: {bad}: {why}" in err.err and err.out == ""
    with pytest.raises(FileNotFoundError, match="no folder"):
        bench([known], ["tlsf"], csv_path=str(tmp_path / "no" / "x.csv"), quiet=True)
    assert capsys.readouterr().out == ""
    good = tmp_path / "rows.csv"
    assert cli("bench", known, "--csv", str(good), "-q", "--repeat", "1", "-s", "tlsf") == 0
    assert good.read_text().splitlines()[0].startswith("trace,")
