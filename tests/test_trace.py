"""mempool.trace: reading (good and malformed files), replay in C, the libc
baseline, the Python-loop replay."""

import gzip
import os

import numpy as np
import pytest

import mempool
from mempool import trace

HEADER = "# mempool-trace v1 program=test maxlive=300 ops=6\n"


def write(tmp_path, text, name="t.trace", gz=False):
    p = tmp_path / (name + (".gz" if gz else ""))
    data = text.encode()
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_read_small_trace(tmp_path, gz):
    p = write(tmp_path, HEADER + "a 0 100\na 1 200 64\nr 0 150\nf 1\na 1 0\nf 0\n", gz=gz)
    t = trace.read(p)
    assert len(t) == 6 and t.name == "t" and t.program == "test"
    assert t.op.tolist() == [0, 0, 2, 1, 0, 1]
    assert t.id.tolist() == [0, 1, 0, 1, 1, 0]
    assert t.size.tolist() == [100, 200, 150, 0, 0, 0]
    assert t.align.tolist() == [1, 64, 1, 1, 1, 1]
    assert t.maxlive == 350 and t.max_id == 1
    assert t.header["maxlive"] == "300"


def test_blank_and_comment_lines_and_crlf(tmp_path):
    p = write(tmp_path, HEADER + "\n# note\r\na 0 5\r\n\nf 0")
    assert trace.read(p).op.tolist() == [0, 1]


@pytest.mark.parametrize(
    "body, line, match",
    [
        ("a 0 10\nx 1 5\n", 3, "unknown operation"),
        ("a 0 10\na 1\n", 3, "expected a SIZE"),
        ("a 0 10\nf\n", 3, "expected an ID"),
        ("a 0 10\na 1 8 3\n", 3, "not a power of two"),
        ("a 0 10\na 1 8 64 9\n", 3, "unexpected text"),
        ("a 0 10\nr 0 0\n", 3, "realloc to size 0"),
        ("a 0 -5\n", 2, "expected a SIZE"),
        ("a 0 99999999999999999999999\n", 2, "expected a SIZE"),
        ("a 0 10\nfree 0\n", 3, "unknown operation"),
        ("a 0 10\na 0 10\n", 3, "alloc of an ID that is live"),
        ("a 0 10\n\nf 1\n", 4, "free of an ID that is not live"),
        ("a 0 10\nf 0\nr 0 5\n", 4, "realloc of an ID that is not live"),
        ("a 5000000000 10\n", 2, "too large"),
        # sizes that would wrap the validator's bookkeeping (size + 1, the live sum)
        ("a 1 16\nr 1 18446744073709551615\na 1 16\nf 1\n", 3, "live bytes would pass 2"),
        ("a 1 4611686018427387905\n", 2, "size 4611686018427387905: live bytes"),
        ("a 1 4611686018427387904\na 2 1\n", 3, "size 1: live bytes would pass"),
    ],
)
def test_malformed_lines_are_named(tmp_path, body, line, match):
    p = write(tmp_path, HEADER + body)
    with pytest.raises(trace.TraceError, match=f"line {line}: .*{match}"):
        trace.read(p)


def test_bad_header_and_files(tmp_path):
    with pytest.raises(trace.TraceError, match="line 1: not a mempool-trace v1 header"):
        trace.read(write(tmp_path, "a 0 10\n"))
    with pytest.raises(trace.TraceError, match="line 1"):
        trace.read(write(tmp_path, "\xff\xfe garbage"))
    bad_gz = tmp_path / "bad.trace.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    with pytest.raises(trace.TraceError, match="gzip"):
        trace.read(bad_gz)
    with pytest.raises(OSError):
        trace.read(tmp_path / "missing.trace")
    assert issubclass(trace.TraceError, ValueError)


def test_a_trace_over_max_bytes_is_refused_before_it_is_read_whole(tmp_path):
    body = HEADER + "a 0 100\nf 0\n" * 500         # 6,051 bytes of text
    n = len(body.encode())
    for gz in (False, True):
        p = write(tmp_path, body, gz=gz)
        assert len(trace.read(p, max_bytes=n)) == 1000
        with pytest.raises(trace.TraceError, match=f"more than max_bytes={n - 1:,} bytes of"):
            trace.read(p, max_bytes=n - 1)
    # a gzip bomb: 17 KiB of gzip that inflates to 16 MiB, refused at 1 MiB; several
    # members inflate as one text, as gzip's own reader has them
    member = gzip.compress(b"\n" * (1 << 20), compresslevel=9)
    bomb = tmp_path / "bomb.trace.gz"
    bomb.write_bytes(gzip.compress(HEADER.encode()) + member * 16)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(trace.TraceError, match="once inflated"):
        trace.read(bomb, max_bytes=1 << 20)
    assert len(trace.read(bomb, max_bytes=17 << 20)) == 0   # (blank lines: no operations)
    assert trace.MAX_TRACE_BYTES == 1 << 30
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        trace.read(bomb, max_bytes=1.5)
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        trace.read(bomb, max_bytes=True)
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        trace.read(bomb, max_bytes=-1)
    assert len(trace.read(p, max_bytes=np.int64(n))) == 1000   # (any integer)
    with pytest.raises(trace.TraceError, match="once inflated"):
        trace.read(bomb, max_bytes=np.uint32(1 << 20))
    # a truncated gzip: a clear error, not EOFError
    whole = gzip.compress(body.encode())
    cut = tmp_path / "cut.trace.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(trace.TraceError, match="not a valid gzip"):
        trace.read(cut)
    corrupt = tmp_path / "corrupt.trace.gz"
    corrupt.write_bytes(whole[:12] + bytes(b ^ 0x55 for b in whole[12:-8]) + whole[-8:])
    with pytest.raises(trace.TraceError, match="not a valid gzip"):
        trace.read(corrupt)

@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan's shadow memory needs more address space than the limit")
def test_reading_a_small_trace_asks_for_no_more_memory_than_it_needs(tmp_path):
    # (a reviewer's find) read(max_bytes + 1) at once allocated max_bytes first: under
    # an address-space limit of 900 MiB a 50-line trace raised MemoryError.  A child
    # process with that limit reads a plain and a gzip trace, and a text of exactly
    # max_bytes, with the default bound (1 GiB) and the largest there is
    import subprocess
    import sys
    body = HEADER + "a 0 100\nf 0\n" * 25
    plain, gz = write(tmp_path, body), write(tmp_path, body, name="z.trace", gz=True)
    code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (900 << 20, 900 << 20))
from mempool import trace
for p in ({str(plain)!r}, {str(gz)!r}):
    assert len(trace.read(p)) == 50
    assert len(trace.read(p, max_bytes=sys.maxsize)) == 50
    assert len(trace.read(p, max_bytes={len(body.encode())})) == 50
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]

def test_bundled_traces_are_packaged():
    names = sorted(p.name for p in trace.bundled())
    assert names == ["ffmpeg-x264-aac.trace.gz", "python3-compileall.trace.gz",
                     "sqlite3-import-index.trace.gz"]


def test_read_bundled_trace_matches_its_readme():
    t = trace.read(next(p for p in trace.bundled() if p.name.startswith("ffmpeg")))
    assert len(t) == 630_430 and t.maxlive == 11_885_351 and t.max_id == 781
    assert int((t.op == 0).sum()) == 314_689 and int((t.op == 2).sum()) == 1_056
    assert int((t.align == 64).sum()) == 287_861


@pytest.mark.parametrize("strategy", ["tlsf", "bestfit", "libc"])
def test_replay_prefix(strategy):
    t = trace.read(next(p for p in trace.bundled() if p.name.startswith("sqlite"))).head(40_000)
    r = trace.replay(t, strategy)
    assert r.ops == 40_000 and r.failures == 0 and r.ns_per_op > 0
    assert r.maxlive == t.maxlive
    if strategy != "libc":
        assert r.capacity == 2 * t.maxlive
        assert 1.0 <= r.high_water_ratio < 1.1
        assert r.peak_used >= t.maxlive


def test_replay_counts_failures_in_a_small_span(tmp_path):
    p = write(tmp_path, HEADER + "a 0 100\na 1 100\nf 0\na 0 50\nr 1 500\nf 1\n")
    r = trace.replay(p, "tlsf", capacity=150)
    # 'a 1 100' fails; then 'r 1' and 'f 1' are skipped (1 is not live); 'a 0 50' fits
    assert r.failures == 1 and r.high_water == 100
    r = trace.replay(p, "tlsf", capacity=1000)
    assert r.failures == 0 and r.high_water == 600  # 'r 1 500' grew in place at 100


def test_replay_instance_must_be_empty_and_strategy_known(tmp_path):
    p = write(tmp_path, HEADER + "a 0 10\nf 0\n")
    s = mempool.TLSF(100)
    s.alloc(1)
    with pytest.raises(ValueError, match="empty"):
        trace.replay(p, s)
    with pytest.raises(ValueError, match="unknown strategy"):
        trace.replay(p, "nope")
    with pytest.raises(TypeError):
        trace.replay(p, 42)


def test_strategy_for_is_what_replay_runs(tmp_path):
    p = write(tmp_path, HEADER + "a 0 100\na 1 200 64\nr 0 150\nf 1\na 1 0\nf 0\n")
    t = trace.read(p)
    s = trace.strategy_for(t, "tlsf")
    assert type(s) is mempool.TLSF and s.capacity == 4096  # 2 * maxlive, at least 4096
    assert s.state_size == mempool.TLSF(4096, max_blocks=2 * (t.max_id + 1) + 64).state_size
    b = trace.strategy_for(t, mempool.Buddy, capacity=1 << 16, min_block=16)
    assert type(b) is mempool.Buddy and b.capacity == 1 << 16 and b.min_block == 16
    assert trace.strategy_for(t, "libc") is None and trace.strategy_for(t, None) is None
    assert trace.strategy_for(t, s) is s
    assert trace.replay(t, s).strategy == "tlsf"  # one object, replayed again and again
    assert trace.replay(t, s).ops == 6 and len(s) == 0
    with pytest.raises(ValueError, match="unknown strategy"):
        trace.strategy_for(t, "nope")


def test_python_replay(tmp_path):
    p = write(tmp_path, HEADER + "a 0 100\na 1 200 64\nr 0 150\nf 1\na 1 0\nf 0\n")
    ns, failures = trace.python_replay(trace.read(p), "bestfit")
    assert ns > 0 and failures == 0


def test_trace_arrays_types():
    t = trace.read(next(p for p in trace.bundled() if p.name.startswith("sqlite"))).head(10)
    assert t.op.dtype == np.uint8 and t.id.dtype == np.uint32
    assert t.size.dtype == np.uint64 and t.align.dtype == np.uint32


@pytest.mark.parametrize("big", [500_000_000, 2**32 - 2])
def test_sparse_ids_are_numbered_anew(tmp_path, big):
    # an ID is a label: what a replay keeps per ID used to be sized by the largest one
    # (a 50-byte file with ID 500,000,000 took ~8 GB and 27 s; 2**32 - 2: MemoryError)
    import resource
    p = tmp_path / "sparse.trace"
    p.write_text(f"# {trace.MAGIC} program=x\na {big} 16\na 7 8\nr {big} 32\nf {big}\nf 7\n")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = trace.read(p)
    assert t.id.tolist() == [1, 0, 1, 1, 0] and t.max_id == 1 and t.maxlive == 40
    for s in ("tlsf", "bestfit"):
        r = trace.replay(t, s)
        assert r.ops == 5 and r.failures == 0
    assert trace.python_replay(t, "tlsf")[1] == 0  # (no failure)
    made = trace.Trace(t.op, np.array([big, 7, big, big, 7], np.uint32), t.size, t.align,
                       "x", 40, "x")  # made by hand: the same
    assert made.id.tolist() == [1, 0, 1, 1, 0]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 << 10  # KiB
    p.write_text(f"# {trace.MAGIC} program=x\na {big} 16\nf 5\n")
    with pytest.raises(trace.TraceError, match=r"line 3: free of an ID that is not live \(ID 5\)"):
        trace.read(p)


def test_read_refuses_what_is_not_a_regular_file(tmp_path):
    # a FIFO waited for a writer and /dev/zero filled the memory
    fifo = tmp_path / "f.trace"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(trace.TraceError, match="not a regular file"):
            trace.read(path)


def test_read_takes_version_1_exactly_and_utf8_program_names(tmp_path):
    for head in ("v12", "v1.5-incompatible", "v10"):
        p = tmp_path / "x.trace"
        p.write_text(f"# mempool-trace {head} program=x\na 0 1\n")
        with pytest.raises(trace.TraceError, match="not a mempool-trace v1 header"):
            trace.read(p)
    with trace.record(tmp_path / "u.trace", program="café"):
        mempool.TLSF(1 << 16).alloc(10)
    t = trace.read(tmp_path / "u.trace")
    assert t.program == "café" and len(t) == 1


def test_head_refuses_a_negative_count(tmp_path):
    with trace.record(tmp_path / "h.trace"):
        s = mempool.TLSF(1 << 16)
        s.free(s.alloc(10))
    t = trace.read(tmp_path / "h.trace")
    with pytest.raises(ValueError, match=">= 0"):
        t.head(-1)
    assert len(t.head(0)) == 0 and len(t.head(5)) == 2
