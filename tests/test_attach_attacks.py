"""Attach under attack: crafted shared segments (and pool files) are refused with
CorruptionError within a bounded time, never a hang, never another exception.

Real segments in /dev/shm, real processes: every attach runs in a subprocess with a
timeout, so a regression that hangs shows as a failure naming the case, not as a hung
test run.  The lock attacks write into the robust mutex of the control block the
thread id of a live unrelated process (a `sleep`), of no process at all, and of the
attaching thread itself; the kernel recovers none of them (it marks a robust lock
only when its real owner dies), so attach has to find out by itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import LockHolder, needs_syscall_names, wait_until

import mempool
from mempool import Pool, SharedPool
from mempool._segment import (_FMT, CHECKSUM_OFFSET, HEADER_SIZE, PLACEMENT_OFFSET, Header,
                              Placement, _digest, slot_sum)

SHM = Path("/dev/shm")
MAGIC = b"MPSHARED"
FILE_MAGIC = b"MEMPOOL\0"
SRC = str(Path(mempool.__file__).resolve().parent.parent)
ENV = dict(os.environ, PYTHONPATH=SRC)

# mp_shared_ctl_t (src/mempool/_core/shared.c): offset and struct format of each field
CTL = {
    "magic": (0, "<I"), "bits": (4, "<I"), "max_entries": (8, "<I"), "entries": (12, "<I"),
    "corrupt": (16, "<I"), "recoveries": (20, "<I"), "serial": (24, "<Q"),
    "free_head": (32, "<I"), "top": (36, "<I"), "lock_waits": (40, "<Q"),
    "lock_wait_ns": (48, "<Q"), "repaired": (56, "<Q"),
    "committed": (2288, "<I"), "bits_max": (2292, "<I"),
}
MUTEX = 64  # the pthread mutex; glibc's words: __lock +0, __owner +8, __kind +16
WHY = 128
JOURNAL = 192  # the journal (journal.h): magic, phase, seq, nundo, ... undo records
CTL_SIZE = 192 + 2048 + 64  # ..., the journal, the lease counters (then index, entries, leases)
LEASES, LEASE_DUE = 192 + 2048 + 4, 192 + 2048 + 24  # ctl.leases, ctl.lease_due
OWNER_DIED = 0x40000000
WAITERS = 0x80000000

# Attach every name given; a name "self:<n>" first writes this thread's own id into
# the lock word of segment <n>; "nobody:<n>" attaches <n> as user nobody (the
# process stays root until then); "file:<path>" opens a pool file.  One JSON line each.
WORKER = r"""
import json, mmap, os, struct, sys, threading, time
from mempool import Pool, SharedPool
from mempool._segment import Header
for arg in sys.argv[1:]:
    t0 = time.monotonic()
    try:
        if arg.startswith("file:"):
            Pool.open(arg[5:]).close()
        else:
            name = arg
            if arg.startswith("nobody:"):
                name = arg[7:]
                os.setgid(65534)
                os.setuid(65534)
            if arg.startswith("self:"):
                name = arg[5:]
                with open("/dev/shm/" + name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
                    h = Header.unpack(m, len(m), b"MPSHARED", name)
                    struct.pack_into("<I", m, h.lock_off + 64, threading.get_native_id())
            SharedPool.attach(name).close()
        out = [None, ""]
    except BaseException as e:
        out = [type(e).__name__, str(e)]
    print(json.dumps([arg] + out + [time.monotonic() - t0]), flush=True)
"""


def run_attaches(groups: list[list[str]], timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> dict[str, tuple[str | None, str, float]]:
    """Attach the names of each group in a subprocess of its own (the groups run at
    once); {name: (exception type name or None, message, seconds)}.  A case that hangs
    or crashes its process fails the test here, named."""
    e = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, *g], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=e)
             for g in groups]
    deadline = time.monotonic() + timeout
    results: dict[str, tuple[str | None, str, float]] = {}
    problems = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            problems.append(f"timed out after {timeout} s")
        for line in out.splitlines():
            arg, exc, msg, secs = json.loads(line)
            results[arg] = (exc, msg, secs)
        if p.returncode:
            problems.append(f"exit {p.returncode}: {err[-2000:]}")
    missing = [n for g in groups for n in g if n not in results]
    assert not missing, f"no answer (hung or crashed) for {missing}: {problems}"
    return results


@pytest.fixture
def seg():
    """seg(name_suffix, data) writes a crafted segment and returns its name; all are
    removed after the test."""
    made: list[Path] = []
    base = f"mptest-atk-{os.getpid()}-{time.monotonic_ns()}"

    def write(suffix: str, data: bytes, mode: int = 0o600) -> str:
        name = f"{base}-{suffix}"
        path = SHM / name
        path.write_bytes(data)
        path.chmod(mode)
        made.append(path)
        return name

    yield write
    for path in made:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def good() -> tuple[bytes, Header]:
    """A valid segment's bytes with live blocks in its registry, and its header."""
    name = f"mptest-atk-{os.getpid()}-good"
    with SharedPool.create(name, "256KiB", max_entries=600) as p:
        keep = [p.alloc(100 * (i + 1)) for i in range(5)]
        p.free(keep[1])
        data = (SHM / name).read_bytes()
        p.unlink()
    del keep
    return data, Header.unpack(data, len(data), MAGIC, name)


def with_header(data: bytes, h: Header, **fields) -> bytes:
    """data with a header whose fields are replaced and whose checksum is valid again
    (what an attacker who knows the format writes)."""
    return dataclasses.replace(h, **fields).pack() + data[HEADER_SIZE:]


def with_raw_header(data: bytes, index: int, value) -> bytes:
    """data with raw header field `index` (of the 120-byte struct) replaced, checksum
    recomputed: reaches what Header.pack cannot write (any strategy bytes)."""
    f = list(_FMT.unpack(data[:120]))
    f[index] = value
    body = _FMT.pack(*f)
    out = bytearray(data)
    out[:120] = body
    out[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 8] = _digest(body).to_bytes(8, "little")
    return bytes(out)


def poke(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def header_cases(data: bytes, h: Header) -> dict[str, bytes]:
    big = 1 << 62
    cases = {
        "magic": with_header(data, h, magic=b"NOTAPOOL"),
        "version-0": with_header(data, h, version=0),
        "version-1": with_header(data, h, version=1),
        "version-2": with_header(data, h, version=2),
        "version-6": with_header(data, h, version=6),
        # the redo log (format 5): none, too short for a transaction, past the end, or
        # one in a format that has none
        "log_entries-0": with_header(data, h, log_entries=0),
        "log_entries-128": with_header(data, h, log_entries=128),
        "log_entries-more": with_header(data, h, log_entries=h.log_entries + 4096 // 40 + 1),
        "log_entries-huge": with_header(data, h, log_entries=big),
        "log_entries-v4": with_header(data, h, version=4),
        "shadow_off-0": with_header(data, h, shadow_off=0),
        "shadow_off-odd": with_header(data, h, shadow_off=h.shadow_off + 64),
        "shadow_off-data": with_header(data, h, shadow_off=h.data_off),
        "shadow_off-huge": with_header(data, h, shadow_off=big),
        "kind-99": with_header(data, h, kind=99),
        "kind-other": with_header(data, h, kind=h.kind + 1),
        "capacity-0": with_header(data, h, capacity=0),
        "capacity-more": with_header(data, h, capacity=h.capacity + 4096),
        "capacity-less": with_header(data, h, capacity=h.capacity - 4096),
        "capacity-huge": with_header(data, h, capacity=big),
        "state_off-0": with_header(data, h, state_off=0),
        "state_off-page": with_header(data, h, state_off=2 * HEADER_SIZE),
        "state_size-0": with_header(data, h, state_size=0),
        "state_size-small": with_header(data, h, state_size=64),
        "state_size-less": with_header(data, h, state_size=h.state_size - 64),
        "state_size-more": with_header(data, h, state_size=h.state_size + 64),
        "state_size-huge": with_header(data, h, state_size=big),
        "data_off-0": with_header(data, h, data_off=0),
        "data_off-odd": with_header(data, h, data_off=h.data_off + 1),
        "data_off-page": with_header(data, h, data_off=h.data_off + 4096),
        "data_off-huge": with_header(data, h, data_off=big),
        "total_size-0": with_header(data, h, total_size=0),
        "total_size-more": with_header(data, h, total_size=h.total_size + 4096),
        "total_size-huge": with_header(data, h, total_size=big),
        "lock_off-0": with_header(data, h, lock_off=0),
        "lock_off-odd": with_header(data, h, lock_off=h.lock_off + 8),
        "lock_off-64": with_header(data, h, lock_off=h.lock_off + 64),
        "lock_off-state": with_header(data, h, lock_off=h.state_off),
        "lock_off-huge": with_header(data, h, lock_off=big),
        "lock_size-0": with_header(data, h, lock_size=0),
        "lock_size-1": with_header(data, h, lock_size=1),
        "lock_size-less": with_header(data, h, lock_size=max(h.lock_size - 64, 1)),
        "lock_size-more": with_header(data, h, lock_size=h.lock_size + 64),
        "lock_size-huge": with_header(data, h, lock_size=big),
        "strategy-other": with_header(data, h, strategy="bestfit"),
        "strategy-unknown": with_header(data, h, strategy="nosuch"),
        "strategy-binary": with_raw_header(data, 12, b"\xff\xfe" * 8),
        "header_size": with_raw_header(data, 2, 8192),
    }
    bad_sum = bytearray(data)
    bad_sum[CHECKSUM_OFFSET] ^= 1
    cases["checksum"] = bytes(bad_sum)
    return cases


def control_cases(data: bytes, h: Header) -> dict[str, bytes]:
    lo = h.lock_off
    max_entries = struct.unpack_from("<I", data, lo + 8)[0]
    bits = struct.unpack_from("<I", data, lo + 4)[0]
    entries = struct.unpack_from("<I", data, lo + 12)[0]
    top = struct.unpack_from("<I", data, lo + 36)[0]
    committed, bits_max = struct.unpack_from("<II", data, lo + 2288)
    magic = struct.unpack_from("<I", data, lo)[0]

    def ctl(field: str, value: int) -> bytes:
        off, fmt = CTL[field]
        return poke(data, lo + off, fmt, value)

    cases = {
        "ctl-magic": ctl("magic", 0),
        "ctl-bits-0": ctl("bits", 0),
        "ctl-bits-more": ctl("bits", bits + 1),
        "ctl-bits-40": ctl("bits", 40),
        "ctl-max_entries-0": ctl("max_entries", 0),
        "ctl-max_entries-more": ctl("max_entries", max_entries + 1),
        "ctl-max_entries-huge": ctl("max_entries", 1 << 31),
        "ctl-entries-more": ctl("entries", entries + 1),
        "ctl-entries-over": ctl("entries", max_entries + 1),
        "ctl-corrupt": ctl("corrupt", 1),
        "ctl-serial-0": ctl("serial", 0),
        "ctl-free_head-0": ctl("free_head", 0),
        "ctl-free_head-over": ctl("free_head", max_entries + 5),
        "ctl-free_head-loop": ctl("free_head", 0xFFFFFFFE),
        "ctl-free_head-beyond-top": ctl("free_head", top),
        # the reserve: entries handed out or committed beyond it, an index too small for
        # the committed entries (it could fill up: probed for ever) or beyond its room
        "ctl-top-over": ctl("top", committed + 1),
        "ctl-committed-over": ctl("committed", max_entries + 1),
        "ctl-committed-index": ctl("committed", min(1 << bits, max_entries)),
        "ctl-bits-less": ctl("bits", bits - 1),
        "ctl-bits-beyond-room": ctl("bits", bits_max + 1),
        "ctl-bits_max-more": ctl("bits_max", bits_max + 1),
        "ctl-bits_max-0": ctl("bits_max", 0),
        # the journal: its magic, a phase it never has, undo records it cannot hold or
        # that name words outside the registry
        "journal-magic": poke(data, lo + JOURNAL, "<Q", 0),
        "journal-phase": poke(data, lo + JOURNAL + 8, "<Q", 3),
        "journal-nundo": poke(data, lo + JOURNAL + 24, "<Q", 10**6),
        "journal-undo-outside": poke(poke(poke(data, lo + JOURNAL + 8, "<Q", 1),
                                          lo + JOURNAL + 24, "<Q", 1),
                                     lo + JOURNAL + 64, "<q", -(1 << 20)),
        # an interrupted call whose one undo record restores a word no call logs: the
        # layout (bits: the index rebuilt over 2**31 slots, or one too small for the
        # entries, walked for ever), the journal itself, the mutex
        "journal-undo-bits-31": undo_one(data, lo, 0, magic | 31 << 32),
        "journal-undo-bits-4": undo_one(data, lo, 0, magic | 4 << 32),
        "journal-undo-max_entries": undo_one(data, lo, 8, (1 << 20) | entries << 32),
        "journal-undo-top": undo_one(data, lo, 32, 0xFFFFFFFF | 0x7FFFFFFF << 32),
        "journal-undo-committed": undo_one(data, lo, 2288, (1 << 27) | bits_max << 32),
        "journal-undo-journal": undo_one(data, lo, JOURNAL + 8, 2),
        "journal-undo-mutex": undo_one(data, lo, MUTEX, 0x7FFF),
        # the mutex's kind: not robust, recursive, error-checking, priority-inheriting, nonsense
        "mutex-kind-plain": poke(data, lo + MUTEX + 16, "<i", 128),
        "mutex-kind-0": poke(data, lo + MUTEX + 16, "<i", 0),
        "mutex-kind-recursive": poke(data, lo + MUTEX + 16, "<i", 128 | 16 | 1),
        "mutex-kind-errorcheck": poke(data, lo + MUTEX + 16, "<i", 128 | 16 | 2),
        "mutex-kind-pi": poke(data, lo + MUTEX + 16, "<i", 128 | 32 | 16),
        "mutex-kind-junk": poke(data, lo + MUTEX + 16, "<i", 0x7FFF_FFF3),
        "mutex-kind-negative": poke(data, lo + MUTEX + 16, "<i", -1),
        # glibc's owner bookkeeping (rewritten by every taker): any value is harmless
        "mutex-owner": poke(data, lo + MUTEX + 8, "<i", 0x7FFFFFFF),
    }
    rng = random.Random(7)
    junk = bytearray(data)
    junk[lo + MUTEX:lo + MUTEX + 64] = rng.randbytes(64)
    cases["mutex-random"] = bytes(junk)
    # the index and the entry table (their prefixes in use; the reserve follows each)
    slots = 1 << bits
    ix = lo + CTL_SIZE
    ent = ix + (((1 << bits_max) * 4 + 63) & ~63)
    for label, at, n in (("index", ix, slots * 4), ("entries", ent, top * 64)):
        junk = bytearray(data)
        junk[at:at + n] = rng.randbytes(n)
        cases[f"registry-{label}-random"] = bytes(junk)
        junk = bytearray(data)
        junk[at:at + n] = b"\0" * n
        cases[f"registry-{label}-zero"] = bytes(junk)
    # a lease slot in flight and past its deadline that names an entry beyond the table
    # (expired at the first lock, before the registry's check: it used that entry)
    leases = ent + max_entries * 64
    lease = bytearray(data)
    struct.pack_into("<QQI", lease, leases, 1, 0, 0x7FFFFFFF)  # tag, deadline, entry
    struct.pack_into("<I", lease, lo + LEASES, 1)             # ctl.leases
    struct.pack_into("<Q", lease, lo + LEASE_DUE, 0)          # ctl.lease_due
    cases["lease-entry-beyond"] = bytes(lease)
    struct.pack_into("<I", lease, leases + 16, 0)             # entry 0: a free one
    cases["lease-entry-free"] = bytes(lease)
    live = next(i for i in range(max_entries)
                if struct.unpack_from("<Q", data, ent + 64 * i)[0] != 2**64 - 1)
    for k, field in enumerate(("offset", "tag", "size", "state")):  # one live entry's words
        cases[f"registry-entry-{field}"] = poke(data, ent + 64 * live + 8 * k, "<Q", 12345 + k)
    # the strategy state
    junk = bytearray(data)
    junk[h.state_off + 64:h.state_off + h.state_size] = rng.randbytes(h.state_size - 64)
    cases["state-random"] = bytes(junk)
    # its shadow apart from it in an idle journal (taken: the next roll-back copied it
    # over a heap with live ranges, and an alloc overlapped one), and undo records that
    # name a word of the state or the shadow (only the commit writes them)
    cases["shadow-apart"] = poke(data, h.shadow_off + 24, "<Q",
                                 struct.unpack_from("<Q", data, h.shadow_off + 24)[0] + 16)
    for label, at in (("state", h.state_off), ("shadow", h.shadow_off)):
        word = at + 24  # (head.used)
        cases[f"journal-undo-{label}"] = undo_one(
            data, lo, word - lo, struct.unpack_from("<Q", data, word)[0] + 16)
    return cases


def undo_one(data: bytes, lo: int, at: int, old: int) -> bytes:
    """data whose journal says a call was under way, with one undo record: the word at
    lo + at had the value `old` before it."""
    out = poke(poke(data, lo + JOURNAL + 8, "<Q", 1), lo + JOURNAL + 24, "<Q", 1)
    out = poke(out, lo + JOURNAL + 64, "<q", at - JOURNAL)
    return poke(out, lo + JOURNAL + 72, "<Q", old)


def shape_cases(data: bytes, h: Header) -> dict[str, bytes]:
    rng = random.Random(11)
    cases = {
        "random-page": rng.randbytes(4096),
        "random-all": rng.randbytes(len(data)),
        "random-magic": MAGIC + rng.randbytes(len(data) - 8),
        "zeros": bytes(len(data)),
    }
    for n in (1, 100, HEADER_SIZE - 1, HEADER_SIZE, h.lock_off, h.lock_off + 100,
              h.data_off, len(data) - 4096):
        cases[f"truncated-{n}"] = data[:n]
    return cases


# fields any value of which is valid: attach may accept them, but must answer promptly
# (counters, the text of a corrupt mark that is not set, glibc's owner bookkeeping, the
# size a block was asked with, which is information only)
FREE = {"ctl-lock_waits", "ctl-lock_wait_ns", "ctl-repaired", "ctl-recoveries", "ctl-why",
        "mutex-owner", "registry-entry-size"}


def test_the_good_segment_attaches(good, seg):
    data, _ = good
    name = seg("good", data)
    r = run_attaches([[name]])
    assert r[name][0] is None, r


def test_every_crafted_field_is_refused_with_corruption_error(good, seg):
    data, h = good
    cases = {**header_cases(data, h), **control_cases(data, h), **shape_cases(data, h)}
    names = {seg(label, blob): label for label, blob in cases.items()}
    names[seg("empty", b"")] = "empty"
    for field in ("lock_waits", "lock_wait_ns", "repaired", "recoveries"):
        off, fmt = CTL[field]
        big = 2 ** (8 * struct.calcsize(fmt)) - 3
        names[seg(f"ctl-{field}", poke(data, h.lock_off + off, fmt, big))] = f"ctl-{field}"
    junk = bytearray(data)
    junk[h.lock_off + WHY:h.lock_off + WHY + 64] = random.Random(3).randbytes(64)
    names[seg("ctl-why", bytes(junk))] = "ctl-why"
    listed = list(names)
    results = run_attaches([listed[i::4] for i in range(4)], timeout=120)
    wrong = {}
    for name, label in names.items():
        exc, msg, secs = results[name]
        ok = exc == "CorruptionError" or (label in FREE and exc is None)
        if not ok or secs > 10:
            wrong[label] = (exc, msg, round(secs, 2))
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def test_a_dead_roll_back_that_put_top_back_below_the_count_attaches(good, seg):
    """What a recovery killed in its roll-back leaves, after it put `top` back and before
    it rebuilt the count of entries from them (the count is not undo-logged): the phase
    ACTIVE, the count above top.  An attach must not refuse it (the layout's check holds
    the count to top only between calls: ctl-entries-more above is that count when the
    journal is idle), and the recovery under the lock rebuilds the count."""
    data, h = good
    lo = h.lock_off
    top = struct.unpack_from("<I", data, lo + CTL["top"][0])[0]
    word = struct.unpack_from("<Q", data, lo + CTL["free_head"][0])[0]  # free_head | top << 32
    crafted = poke(undo_one(data, lo, CTL["free_head"][0], word), lo + CTL["entries"][0], "<I",
                   top + 1)
    phase = struct.unpack_from("<Q", data, lo + JOURNAL + 8)[0]  # IDLE | committed entries << 8
    crafted = poke(crafted, lo + JOURNAL + 8, "<Q", phase | 1)  # ACTIVE: the log's kept
    stats = {}
    for label, blob in (("count-above-top", crafted), ("as-it-was", data)):
        name = seg(label, blob)
        assert run_attaches([[name]])[name][0] is None  # (another process, which recovers it)
        q = SharedPool.attach(name)
        try:
            q.check()
            stats[label] = q.shared_stats()
        finally:
            q.close()
    # the count rebuilt: as the same segment without the dead roll-back gives it
    assert stats["count-above-top"].entries == stats["as-it-was"].entries
    assert (stats["count-above-top"].rolled_back, stats["as-it-was"].rolled_back) == (1, 0)


def test_corruption_messages_name_the_segment(good, seg):
    data, h = good
    name = seg("named", with_header(data, h, capacity=0))
    exc, msg, _ = run_attaches([[name]])[name]
    assert exc == "CorruptionError" and name in msg


def _lock_word(data: bytes, h: Header, word: int) -> bytes:
    return poke(data, h.lock_off + MUTEX, "<I", word)


def _unused_tid() -> int:
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    for tid in range(limit - 1, 300, -1):
        if not Path(f"/proc/{tid}").exists():
            return tid
    pytest.skip("no free thread id")


def test_lock_held_by_a_live_unrelated_process(good, seg):
    data, h = good
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        names = {seg("live", _lock_word(data, h, sleeper.pid)): "live",
                 seg("live-waiters", _lock_word(data, h, sleeper.pid | WAITERS)): "waiters"}
        r = run_attaches([[n] for n in names], timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    for n in names:
        exc, msg, secs = r[n]
        assert exc == "CorruptionError", r[n]
        assert f"held by pid {sleeper.pid}, which does not have the pool open" in msg, msg
        assert secs < 6, r[n]


def test_lock_word_with_waiters_and_no_holder(good, seg):
    # FUTEX_WAITERS with no owner tid: every wait for it times out, and no holder can be
    # judged; glibc never leaves such a word (an unlock clears it whole): refused in ~2 s
    data, h = good
    name = seg("waiters-only", _lock_word(data, h, WAITERS))
    exc, msg, secs = run_attaches([[name]], timeout=30)[name]
    assert exc == "CorruptionError", (exc, msg)
    assert "lock word 0x80000000 names no holder" in msg and secs < 6


def test_lock_held_by_a_thread_id_that_does_not_exist(good, seg):
    data, h = good
    tid = _unused_tid()
    name = seg("gone", _lock_word(data, h, tid))
    exc, msg, secs = run_attaches([[name]], timeout=30)[name]
    assert exc == "CorruptionError", (exc, msg)
    assert f"held by pid {tid}, which does not exist" in msg
    assert secs < 6


def test_lock_naming_the_attaching_thread_itself(good, seg):
    data, _ = good
    name = seg("self", data)
    exc, msg, secs = run_attaches([[f"self:{name}"]], timeout=30)[f"self:{name}"]
    assert exc == "CorruptionError", (exc, msg)
    assert "names this thread" in msg and secs < 6


def test_lock_of_a_dead_owner_marked_by_the_kernel_is_recovered(good, seg):
    # the kernel's own marking (FUTEX_OWNER_DIED) is the normal recovery: attach works
    data, h = good
    name = seg("died", _lock_word(data, h, _unused_tid() | OWNER_DIED))
    exc, msg, _ = run_attaches([[name]], timeout=30)[name]
    assert exc is None, msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to attach as another user")
def test_holder_that_cannot_be_verified_is_waited_for_a_bounded_time(good, seg):
    # another user's process: its memory map is unreadable, so attach cannot tell a
    # legitimate holder from a stray one; it waits MEMPOOL_LOCK_UNVERIFIED_S, then refuses
    data, h = good
    sleeper = subprocess.Popen(["sleep", "60"])  # root's
    try:
        name = seg("unverified", _lock_word(data, h, sleeper.pid), mode=0o666)
        r = run_attaches([[f"nobody:{name}"]], timeout=30,
                         env={"MEMPOOL_LOCK_UNVERIFIED_S": "2.5"})
    finally:
        sleeper.kill()
        sleeper.wait()
    exc, msg, secs = r[f"nobody:{name}"]
    assert exc == "CorruptionError", (exc, msg)
    assert f"by pid {sleeper.pid}" in msg and "cannot verify" in msg
    assert 2.5 <= secs < 8


def _lock_waited_for(name: str):
    """A function that says whether a process or thread sleeps in the kernel waiting for
    the lock of segment `name` now (glibc sets the waiters bit of the robust mutex's
    word before it does)."""
    data = (SHM / name).read_bytes()
    at = Header.unpack(data, len(data), MAGIC, name).lock_off + MUTEX

    def waited_for() -> bool:
        with open(SHM / name, "rb") as f:
            return bool(struct.unpack("<I", os.pread(f.fileno(), 4, at))[0] & WAITERS)
    return waited_for


@needs_syscall_names
def test_a_legitimate_long_holder_is_still_waited_for(name):
    # a process of ours holds the lock for longer than the probes need to judge a
    # stranger: attach waits for it and succeeds.  The holder lets go 3 s after the
    # attach is seen waiting, not at a fixed time: the attaching interpreter's start
    # (0.3 s here, 1 s under load or ASan) came out of a fixed 3.5 s hold
    with SharedPool.create(name, "64KiB") as p, LockHolder(p) as holder:
        waited_for = _lock_waited_for(name)
        got: list = []
        attacher = threading.Thread(target=lambda: got.append(run_attaches([[name]], timeout=60)))
        attacher.start()
        wait_until(lambda: waited_for() or not attacher.is_alive(),
                   "the attach waits for the lock", timeout=60)
        time.sleep(3.0)
        t0 = time.monotonic()
        holder.release()
        attacher.join(60)
        assert got, "run_attaches failed (its AssertionError is in the thread's output)"
        r = got[0]
        assert r[name][0] is None, r
        assert r[name][2] > 2.5, r  # it really waited (past two probes)
        assert time.monotonic() - t0 < 10


@needs_syscall_names
def test_a_live_holder_in_a_subprocess_is_still_waited_for(name):
    # the holder is another process that has the pool open (not a thread of ours); it
    # says "held" once a thread of it sleeps with the lock (before: it printed, then
    # took the lock), and lets go once told, 3 s after check() is seen waiting
    holder_code = textwrap.dedent("""
        import signal, sys, threading
        from helpers import sleeps_in_c, wait_until
        from mempool import SharedPool
        signal.signal(signal.SIGUSR1, lambda *_: None)
        p = SharedPool.attach(sys.argv[1])
        t = threading.Thread(target=p._hold_lock, args=(60.0,))
        t.start()
        wait_until(lambda: sleeps_in_c(t.native_id), "the holder sleeps with the lock")
        print("held", flush=True)
        sys.stdin.readline()
        signal.pthread_kill(t.ident, signal.SIGUSR1)
        t.join()
        """)
    tests = str(Path(__file__).resolve().parent)
    with SharedPool.create(name, "64KiB") as p:
        holder = subprocess.Popen(
            [sys.executable, "-c", holder_code, name], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, tests])))
        waited_for = _lock_waited_for(name)

        def release_once_waited() -> None:
            wait_until(lambda: waited_for() or holder.poll() is not None,
                       "check() waits for the lock", timeout=60)
            time.sleep(3.0)
            holder.stdin.write("\n")
            holder.stdin.flush()

        try:
            assert holder.stdout.readline().strip() == "held"
            releaser = threading.Thread(target=release_once_waited, daemon=True)
            releaser.start()
            t0 = time.monotonic()
            p.check()  # waits for the holder: no CorruptionError for a real one
            assert time.monotonic() - t0 > 2.5
            releaser.join(60)
            assert holder.wait(60) == 0
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()


# ---- Pool.open on crafted files ---------------------------------------------------------
def pack_slot(pl: Placement, magic: bytes = b"MPPLACE1") -> bytes:
    """The placement slot naming pl, as place.c writes it (checksum valid)."""
    body = struct.pack("<8sQQQQQ8s", magic, pl.gen, pl.state_off, pl.shadow_off,
                       pl.state_size, pl.end, bytes(8))
    return body + slot_sum(body).to_bytes(8, "little")


def with_slot(data: bytes, k: int, pl: Placement) -> bytes:
    """data with placement slot k naming pl (checksum valid: a crafted slot)."""
    out = bytearray(data)
    out[PLACEMENT_OFFSET + 64 * k:PLACEMENT_OFFSET + 64 * (k + 1)] = pack_slot(pl)
    return bytes(out)


def bad_magic_slot(data: bytes, pl: Placement) -> bytes:
    out = bytearray(data)
    out[PLACEMENT_OFFSET:PLACEMENT_OFFSET + 64] = pack_slot(pl, b"NOTASLOT")
    return bytes(out)


def placement_cases(data: bytes, h: Header) -> dict[str, bytes]:
    """A file pool's placement slots (format 4) naming what is not a grown pair."""
    end = len(data)
    good = Placement(end, end + 4096, h.state_size, end + 8192, 1, 0)
    tail = bytes(8192)  # a pair of zeros: no state there
    rep = dataclasses.replace
    return {
        "slot-zeros-state": with_slot(data, 0, good) + tail,
        "slot-past-end": with_slot(data, 0, good),
        "slot-gen-0": with_slot(data, 0, rep(good, gen=0)) + tail,
        "slot-gen-huge": with_slot(data, 0, rep(good, gen=2**64 - 1)) + tail,
        "slot-odd-state": with_slot(data, 0, rep(good, state_off=end + 64)) + tail,
        "slot-in-data": with_slot(data, 0, rep(good, state_off=h.data_off,
                                             shadow_off=h.data_off + 4096)) + tail,
        "slot-overlap": with_slot(data, 0, rep(good, shadow_off=end)) + tail,
        "slot-small": with_slot(data, 0, rep(good, state_size=64)) + tail,
        "slot-huge": with_slot(data, 0, rep(good, state_size=1 << 62)) + tail,
        "slot-same-gen": with_slot(with_slot(data, 0, good), 1, good) + tail,
        "slot-bad-magic": bad_magic_slot(data, good) + tail,
        # the state the slot names is a copy of the header's own, which is fine; but that
        # one retired (magic cleared), as a growth leaves it, while a damaged slot names
        # nothing any more: never opened as if it were current
        "slot-torn-retired": poke(data, PLACEMENT_OFFSET, "<Q", 12345)[:h.state_off]
        + bytes(4) + data[h.state_off + 4:],
    }



@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> tuple[bytes, Header]:
    path = tmp_path_factory.mktemp("atk") / "good.pool"
    with Pool.create(path, "256KiB") as p:
        keep = [p.alloc(100 * (i + 1)) for i in range(5)]
        p.free(keep[1])
    data = path.read_bytes()
    return data, Header.unpack(data, len(data), FILE_MAGIC, str(path))


def test_pool_open_refuses_crafted_files(good_file, tmp_path):
    data, h = good_file
    cases = {**header_cases(data, h), **shape_cases(data, h), "empty": b""}
    cases["state-random"] = data[:h.state_off + 64] + random.Random(5).randbytes(
        h.state_size - 64) + data[h.state_off + h.state_size:]
    cases.update(placement_cases(data, h))
    args = {}
    for label, blob in cases.items():
        if label.startswith("lock_") and h.lock_size == 0 and label in (
                "lock_off-0", "lock_size-0"):
            continue  # a file pool has no lock area: these are its valid values
        path = tmp_path / f"{label}.pool"
        path.write_bytes(blob)
        args[f"file:{path}"] = label
    good_path = tmp_path / "good.pool"
    good_path.write_bytes(data)
    results = run_attaches([list(args), [f"file:{good_path}"]], timeout=120)
    assert results[f"file:{good_path}"][0] is None, results[f"file:{good_path}"]
    wrong = {label: results[a] for a, label in args.items() if results[a][0] != "CorruptionError"}
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


@pytest.mark.skipif(not shutil.which("setarch"), reason="needs setarch -R (a fixed mapping)")
def test_an_undo_record_that_wraps_the_address_space_is_refused(good_file, tmp_path):
    # with the mapping's address known (no ASLR), an undo offset chosen so that the
    # word's address + 8 wraps to 0 passed the range check, and the recovery wrote at
    # 0xfff...8: SIGSEGV in Pool.open
    from mempool._segment import JOURNAL_OFFSET as J
    data, _ = good_file
    path = tmp_path / "wrap.pool"
    path.write_bytes(data)
    probe = ("import sys\nfrom mempool import Pool\np = Pool.open(sys.argv[1])\n"
             "print(next(int(ln.split('-')[0], 16) for ln in open('/proc/self/maps')\n"
             "           if sys.argv[1] in ln and ln.split()[2] == '00000000'))\np.close()")
    run = ["setarch", "-R", sys.executable, "-c"]
    base = int(subprocess.run(run + [probe, str(path)], capture_output=True, text=True,
                              check=True, env=ENV).stdout)
    off = (2**64 - 8) - (base + J)
    crafted = bytearray(data)
    struct.pack_into("<QQQ", crafted, J + 8, 1, 0, 1)  # ACTIVE, seq, one undo record
    struct.pack_into("<qQ", crafted, J + 64, off - 2**64 if off >= 2**63 else off, 0)
    path.write_bytes(crafted)
    r = subprocess.run(run + ["import sys\nfrom mempool import Pool, CorruptionError\n"
                              "try:\n    Pool.open(sys.argv[1])\n"
                              "except CorruptionError as e:\n    print(e)", str(path)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and "undo record 0 names a word outside" in r.stdout, r


def test_a_grown_pair_another_process_named_is_checked_before_it_is_used(tmp_path):
    # a valid slot naming a pair whose head is valid and whose body is garbage, written
    # while a process has the pool attached: its next alloc followed it and crashed
    # (SIGSEGV in TLSF's search); now CorruptionError, and the pool stays on its pair
    code = textwrap.dedent("""
        import os, random, struct, sys
        from pathlib import Path
        from mempool import SharedPool, CorruptionError
        from mempool._segment import Header, PLACEMENT_OFFSET, slot_sum
        name = sys.argv[1]
        p = SharedPool.create(name, "256KiB", unlink_on_exit=True)
        keep = [p.alloc(1000) for _ in range(3)]
        path = Path("/dev/shm") / name
        data = path.read_bytes()
        h = Header.unpack(data, len(data), b"MPSHARED", "x")
        st = bytearray(data[h.state_off:h.state_off + h.state_size])
        st[64:] = random.Random(1).randbytes(len(st) - 64)
        pg = (h.state_size + 4095) // 4096 * 4096
        S, SH, END = len(data), len(data) + pg, len(data) + 2 * pg
        with open(path, "r+b") as f:
            f.truncate(END)
            os.pwrite(f.fileno(), bytes(st), S)
            os.pwrite(f.fileno(), bytes(st), SH)
            body = struct.pack("<8sQQQQQ8s", b"MPPLACE1", 1, S, SH, h.state_size, END, bytes(8))
            os.pwrite(f.fileno(), body + slot_sum(body).to_bytes(8, "little"), PLACEMENT_OFFSET)
        for _ in range(2):
            try:
                p.alloc(64)
            except CorruptionError as e:
                print("CorruptionError:", e)
        os._exit(0)  # (its Blocks cannot go back through a pair it refuses)
    """)
    r = subprocess.run([sys.executable, "-c", code, f"mptest-follow-{os.getpid()}"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    (SHM / f"mptest-follow-{os.getpid()}").unlink(missing_ok=True)
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == ["CorruptionError: layout 1164115433906158532 is neither "
                                     "the full (0) nor the compact one (1)"] * 2, r
