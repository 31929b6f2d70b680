"""The journal's redo log (format 5, _core/journal.h): what a file or a segment holds
between calls (the shadow as of the last checkpoint, the calls since then in the log),
what a reopen replays, what it refuses, and the files of the formats before it."""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys

import pytest

import mempool
from mempool import Pool, SharedPool
from mempool._segment import JOURNAL_OFFSET, LOG_ENTRY, Header

SRC = os.path.dirname(os.path.dirname(os.path.abspath(mempool.__file__)))
ENV = dict(os.environ, PYTHONPATH=SRC)
CTL_JOURNAL = 192  # the journal's offset in a shared pool's control block (shared.c)
ENTRY = struct.Struct("<IIQQQQ")  # code, rc, a, b, c, out (mp_tx_op_t)
ALLOC, FREE, REALLOC, RESET = 1, 2, 3, 4


def journal(raw: bytes | bytearray, at: int) -> dict:
    """The journal at `at`: its phase (the phase word's low byte), the log's committed
    entries (above it), and the counters."""
    magic, word, seq, nundo, back, fwd, ckpt = struct.unpack_from("<7Q", raw, at)
    return {"phase": word & 0xFF, "nlog": word >> 8, "seq": seq, "nundo": nundo,
            "rolled_back": back, "rolled_forward": fwd, "checkpoints": ckpt}


def entries(raw: bytes | bytearray, h: Header, n: int) -> list[tuple[int, ...]]:
    return [ENTRY.unpack_from(raw, h.log_off + k * LOG_ENTRY) for k in range(n)]


def open_image(tmp_path, calls: str, strategy: str = "tlsf") -> tuple[bytes, Header, list]:
    """A file pool's bytes as a writer left them between two calls, without closing it
    (a process that ended without close: its log not checkpointed), and its segments()
    then."""
    path = tmp_path / "w.mp"
    Pool.create(path, "1MiB", strategy).close()
    code = ("import os, sys\nfrom mempool import Pool\np = Pool.open(sys.argv[1])\n"
            f"{calls}\nprint(p.segments())\nsys.stdout.flush()\n"
            "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, env=ENV, check=True).stdout
    raw = path.read_bytes()
    return raw, Header.unpack(raw, len(raw), raw[:8], str(path)), eval(out)


def test_a_new_file_has_a_log_as_long_as_its_state(tmp_path):
    with Pool.create(tmp_path / "p.mp", "64MiB") as p:
        p.alloc(64)
    raw = (tmp_path / "p.mp").read_bytes()
    h = Header.unpack(raw, len(raw), raw[:8], "p")
    assert h.version == 5
    assert h.log_off == h.shadow_off + -(-h.state_size // 4096) * 4096
    assert h.log_entries == -(-h.state_size // 4096) * 4096 // LOG_ENTRY
    assert h.total_size == h.log_off + -(-h.log_entries * LOG_ENTRY // 4096) * 4096
    # close checkpointed: the shadow is the state, the log empty
    j = journal(raw, JOURNAL_OFFSET)
    assert (j["phase"], j["nlog"], j["checkpoints"]) == (0, 0, 1)
    assert raw[h.state_off:h.state_off + h.state_size] == raw[h.shadow_off:h.shadow_off + h.state_size]


def test_a_writer_that_ends_without_close_leaves_its_calls_in_the_log(tmp_path):
    raw, h, held = open_image(tmp_path, "k = [p.alloc(100), p.alloc(200), p.alloc(300)]\n"
                              "p.free(k[1]); p.realloc(k[0], 1000)")
    j = journal(raw, JOURNAL_OFFSET)
    assert (j["phase"], j["nlog"], j["checkpoints"]) == (0, 5, 0)
    log = entries(raw, h, 5)
    assert [e[0] for e in log] == [ALLOC, ALLOC, ALLOC, FREE, REALLOC]
    assert [e[2] for e in log[:3]] == [100, 200, 300]  # sizes
    assert all(e[1] == 0 for e in log)  # every one succeeded
    assert log[3][2] == log[1][5]  # the free names what the second alloc handed out
    # the shadow is the state before them all (the file as created)
    assert raw[h.state_off:h.state_off + h.state_size] != raw[h.shadow_off:h.shadow_off + h.state_size]
    (tmp_path / "w.mp").write_bytes(raw)
    with Pool.open(tmp_path / "w.mp") as p:  # the shadow with the log replayed is the state
        assert not p.recovered
        p.check()
        assert p.segments() == held
        assert len(p) == 2


def test_a_full_log_checkpoints(tmp_path):
    raw, h, held = open_image(tmp_path, "for i in range(3 * 1100):\n    b = p.alloc(64); b.free()\n"
                              "keep = p.alloc(64)")
    j = journal(raw, JOURNAL_OFFSET)
    assert h.log_entries == -(-h.state_size // 4096) * 4096 // LOG_ENTRY < 2 * 3300
    # a call begins with a checkpoint when fewer than a transaction's 64 entries are left
    n = checkpoints = 0
    for _ in range(2 * 3300 + 1):  # one entry a call
        if n + 64 > h.log_entries:
            checkpoints, n = checkpoints + 1, 0
        n += 1
    assert (j["checkpoints"], j["nlog"]) == (checkpoints, n) and checkpoints >= 3
    with Pool.open(tmp_path / "w.mp") as p:
        p.check()
        assert p.segments() == held and len(p) == 1


def test_a_call_killed_with_a_log_is_rolled_back(tmp_path):
    # a writer killed inside a call: the journal ACTIVE, the state half written; the
    # shadow with the log's committed entries replayed is the state before the call
    raw, h, held = open_image(tmp_path, "k = [p.alloc(48 * (i + 1)) for i in range(20)]\n"
                              "for b in k[::3]: b.free()")
    crafted = bytearray(raw)
    word = struct.unpack_from("<Q", crafted, JOURNAL_OFFSET + 8)[0]
    assert word >> 8 == 27
    struct.pack_into("<Q", crafted, JOURNAL_OFFSET + 8, word | 1)  # ACTIVE
    crafted[h.state_off + 64:h.state_off + h.state_size] = b"\xa5" * (h.state_size - 64)
    (tmp_path / "w.mp").write_bytes(crafted)
    with Pool.open(tmp_path / "w.mp") as p:
        assert p.recovered
        # read before close (which checkpoints): the recovery itself ended in one
        j = journal((tmp_path / "w.mp").read_bytes(), JOURNAL_OFFSET)
        assert (j["phase"], j["nlog"], j["rolled_back"], j["checkpoints"]) == (0, 0, 1, 1)
        p.check()
        assert p.segments() == held
        assert len(p) == 13


def crafted_logs(raw: bytes, h: Header) -> dict[str, bytes]:
    """A file image whose log has 3 committed entries, made wrong one way each."""
    word_at = JOURNAL_OFFSET + 8
    word = struct.unpack_from("<Q", raw, word_at)[0]
    assert word == 3 << 8

    def with_entry(k: int, **f) -> bytes:
        out = bytearray(raw)
        e = dict(zip(("code", "rc", "a", "b", "c", "out"),
                     ENTRY.unpack_from(out, h.log_off + k * LOG_ENTRY)))
        e.update(f)
        ENTRY.pack_into(out, h.log_off + k * LOG_ENTRY, *e.values())
        return bytes(out)

    def with_word(w: int) -> bytes:
        out = bytearray(raw)
        struct.pack_into("<Q", out, word_at, w)
        return bytes(out)

    return {
        "code-0": with_entry(1, code=0),
        "code-5": with_entry(1, code=5),
        "size": with_entry(0, a=4096),  # replays to another answer than it logged
        "answer": with_entry(2, out=8),
        "rc": with_entry(1, rc=2**32 - 1),  # logged as failed, replays as done
        "free-unknown": with_entry(2, code=FREE, a=12345),
        "count-more": with_word(4 << 8),  # an entry never written: replays to 0s
        "count-past-log": with_word((h.log_entries + 1) << 8),
        "count-huge": with_word(2**63 | 0),
        "phase-3": with_word(3 << 8 | 3),
        "phase-bits": with_word(3 << 8 | 0x10),
        "active-size": bytes(bytearray(with_entry(0, a=4096))[:word_at]) + struct.pack(
            "<Q", 3 << 8 | 1) + with_entry(0, a=4096)[word_at + 8:],
        "count-fewer": with_word(2 << 8),  # the state is ahead of what the log says
    }


def not_refused(open_it) -> str | None:
    """None when open_it() raises CorruptionError, else what it did instead."""
    try:
        open_it().close()
        return "opened"
    except mempool.CorruptionError:
        return None
    except Exception as e:  # anything outside the error tree
        return repr(e)


def test_a_crafted_log_is_refused_at_open(tmp_path):
    raw, h, held = open_image(tmp_path, "k = [p.alloc(100), p.alloc(200), p.alloc(300)]")
    wrong = {}
    for label, blob in crafted_logs(raw, h).items():
        path = tmp_path / f"{label}.mp"
        path.write_bytes(blob)
        if (what := not_refused(lambda: Pool.open(path))):
            wrong[label] = what
    assert not wrong, wrong
    (tmp_path / "good.mp").write_bytes(raw)  # and the image itself opens
    with Pool.open(tmp_path / "good.mp") as p:
        assert p.segments() == held


def test_a_crafted_log_is_refused_by_view(tmp_path):
    from mempool.view import view_file
    raw, h, _ = open_image(tmp_path, "k = [p.alloc(100), p.alloc(200), p.alloc(300)]")
    (tmp_path / "x.mp").write_bytes(crafted_logs(raw, h)["size"])
    with pytest.raises(mempool.CorruptionError, match="does not replay"):
        view_file(tmp_path / "x.mp")
    assert (tmp_path / "x.mp").read_bytes() == crafted_logs(raw, h)["size"]  # untouched


def segment_bytes(name: str) -> bytearray:
    with open(f"/dev/shm/{name}", "rb") as f:
        return bytearray(f.read())


def test_a_shared_pool_logs_and_each_close_checkpoints(name):
    with SharedPool.create(name, "1MiB") as p:
        keep = [p.alloc(4096) for _ in range(4)]
        raw = segment_bytes(name)
        h = Header.unpack(raw, len(raw), raw[:8], name)
        j = journal(raw, h.lock_off + CTL_JOURNAL)
        assert j["phase"] == 0 and j["nlog"] == 4 and j["checkpoints"] == 0
        assert [e[0] for e in entries(raw, h, 4)] == [ALLOC] * 4
        q = SharedPool.attach(name)  # the attach replays the log on a copy of the shadow
        assert q.segments() == p.segments()
        q.close()  # a close checkpoints (under the lock)
        raw = segment_bytes(name)
        j = journal(raw, h.lock_off + CTL_JOURNAL)
        assert (j["nlog"], j["checkpoints"]) == (0, 1)
        assert raw[h.state_off:h.state_off + h.state_size] == raw[h.shadow_off:h.shadow_off + h.state_size]
        keep.append(p.alloc(64))
        assert journal(segment_bytes(name), h.lock_off + CTL_JOURNAL)["nlog"] == 1
        del keep
    j = journal(segment_bytes(name), h.lock_off + CTL_JOURNAL)  # and the creator's close
    assert (j["nlog"], j["checkpoints"]) == (0, 2)


def test_a_crafted_shared_log_is_refused_at_attach(name):
    with SharedPool.create(name, "1MiB") as p:
        keep = [p.alloc(4096) for _ in range(3)]
        good = segment_bytes(name)
        h = Header.unpack(good, len(good), good[:8], name)
        ja = h.lock_off + CTL_JOURNAL
        cases = {}
        for label, (at, value) in {
            "size": (h.log_off + 8, 8192),  # entry 0's size: entry 1 replays elsewhere
            "code": (h.log_off, 9),
            "count-more": (ja + 8, 4 << 8),
            "count-past-log": (ja + 8, (h.log_entries + 1) << 8),
        }.items():
            b = bytearray(good)
            struct.pack_into("<I" if label == "code" else "<Q", b, at, value)
            cases[label] = b
        wrong = {}
        for label, blob in cases.items():
            with open(f"/dev/shm/{name}", "r+b") as f:
                f.write(blob)
            if (what := not_refused(lambda: SharedPool.attach(name))):
                wrong[label] = what
            with open(f"/dev/shm/{name}", "r+b") as f:  # (a refused attach left it corrupt)
                f.write(good)
        assert not wrong, wrong
        del keep


LIMITED = """
import os, sys
import mempool
p = mempool.Pool.open(sys.argv[1])
keep = [p.alloc(4096)]
p.set_limit(3 * 4096)
keep.append(p.alloc(4096))
refused = 0
for size in (8192, 4096 * 10, 100):
    try:
        keep.append(p.alloc(size))
    except mempool.OutOfSpace:
        refused += 1
p.set_limit(p.used + 4100)
try:  # within the limit as asked; a Buddy rounds it past: allocated, then undone
    keep.append(p.alloc(4097))
except mempool.OutOfSpace:
    refused += 1
try:  # a realloc the limit refuses before the strategy sees it
    p.realloc(keep[0], 4096 * 4)
except mempool.OutOfSpace:
    refused += 1
p.set_limit(None)
keep.append(p.alloc(64))
print(refused, p.segments())
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.parametrize("strategy, refusals, live", [("tlsf", 3, 5), ("buddy", 4, 4)])
def test_calls_a_limit_refused_reopen_as_the_writer_saw_them(tmp_path, strategy, refusals, live):
    # the limit is this process's: a reopening process replays the log without it, so
    # a call the limit refused or undid is not logged (its transaction checkpoints
    # instead)
    path = tmp_path / "l.mp"
    Pool.create(path, "1MiB", strategy).close()
    out = subprocess.run([sys.executable, "-c", LIMITED, str(path)], capture_output=True,
                         text=True, env=ENV, check=True).stdout.split(maxsplit=1)
    refused, held = int(out[0]), eval(out[1])
    assert refused == refusals and sum(a for _, _, a in held) == live
    raw = path.read_bytes()
    assert journal(raw, JOURNAL_OFFSET)["checkpoints"] == refusals  # one per refused call
    with Pool.open(path) as p:
        p.check()
        assert p.segments() == held


@pytest.mark.parametrize("version", [3, 4])
def test_files_of_the_formats_before_the_log_open_and_journal(tmp_path, version):
    path = tmp_path / "old.mp"
    with Pool.create(path, "1MiB") as p:
        p.alloc(96)
    raw = bytearray(path.read_bytes())
    h = Header.unpack(raw, len(raw), raw[:8], "old")
    old = dataclasses.replace(h, version=version, log_entries=0,
                              total_size=h.log_off)  # what they wrote: no log
    state = raw[h.state_off:h.state_off + h.state_size]
    raw = bytearray(old.pack()) + raw[4096:h.log_off]
    raw[h.state_off:h.state_off + h.state_size] = state
    path.write_bytes(raw)
    code = ("import os, sys\nfrom mempool import Pool\np = Pool.open(sys.argv[1])\n"
            "k = [p.alloc(100) for _ in range(5)]\nk[2].free()\n"
            "print(p.segments())\nsys.stdout.flush()\nos._exit(0)\n")
    held = eval(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                               text=True, env=ENV, check=True).stdout)
    raw = path.read_bytes()
    assert len(raw) == h.log_off  # no log written past it
    j = journal(raw, JOURNAL_OFFSET)  # each call replayed on the shadow at its commit
    assert (j["phase"], j["nlog"], j["checkpoints"]) == (0, 0, 0)
    assert raw[h.state_off:h.state_off + h.state_size] == raw[h.shadow_off:h.shadow_off + h.state_size]
    with Pool.open(path) as p:
        p.check()
        assert p.segments() == held
        assert len(p) == 5


UNCLOSED = """
import sys
from mempool import Pool
p = Pool.open(sys.argv[1])
keep = [p.alloc(64) for _ in range(900)]
sys.stdout.write("go\\n"); sys.stdout.flush()
"""  # ends without close(): its lock goes with the process's objects


def test_a_writer_ending_without_close_writes_nothing_after_its_lock(tmp_path):
    # a dealloc's checkpoint ran after the lock's finalizer had let the file go: the
    # next opener read a shadow being copied over (CorruptionError at open) or had its
    # own calls' log count overwritten (the file refused later)
    path = tmp_path / "race.mp"
    for trial in range(4):
        Pool.create(path, "4MiB", max_blocks=1 << 19).close()  # a 28 MiB state: a slow copy
        child = subprocess.Popen([sys.executable, "-c", UNCLOSED, str(path)],
                                 stdout=subprocess.PIPE, env=ENV)
        assert child.stdout.readline() == b"go\n"
        while True:
            try:
                q = Pool.open(path)  # as soon as the child lets go
                break
            except BlockingIOError:
                continue
        ks = [q.alloc(64) for _ in range(200)]
        for k in ks[::2]:
            k.free()
        n = len(q)
        q.close()
        assert child.wait() == 0
        child.stdout.close()
        with Pool.open(path) as r:
            r.check()
            assert len(r) == n == 1000
        path.unlink()
