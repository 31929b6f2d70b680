"""The layout of a self-describing segment: a persistent pool file or a shared pool.

::

    0      +------------------------------+
           | header (one 4 KiB page)      |  magic, version, sizes, strategy, checksum;
           |                              |  at JOURNAL_OFFSET the file pool's journal,
           |                              |  at NAMED_ROOT_OFFSET its named arrays' root
    4096   +------------------------------+
           | strategy state block         |  principle 1: integers only, relocatable
           +------------------------------+
           | lock (shared pools only)     |  lock, block registry, the shared journal
    data   +------------------------------+  page aligned
           | data: capacity bytes         |
    shadow +------------------------------+  page aligned
           | the state's shadow copy      |  the state as of the last checkpoint
           +------------------------------+  page aligned
           | the redo log (format 5)      |  the calls since then (journal.h): 40-byte
           +------------------------------+  entries, as many as the state has bytes / 40
           | a grown state and its shadow |  format 4: a state whose node
           | (page aligned, each)         |  budget ran out moves to a larger pair here,
           +------------------------------+  named by a placement slot in the header

A file pool's or a shared pool's state grows by moving (``_native/place.c``): the grown
state and its shadow are written past the last pair, then one of the two placement
slots at PLACEMENT_OFFSET (generation, offsets, sizes, checksum) is written to name
them; the valid slot of the higher generation wins.  A process killed before that write leaves
the old slot the winner (the file's tail is then garbage that the next growth
overwrites); once it is written the new pair is the state.  The state it replaced is
then marked retired (its head's magic cleared), so a damaged winning slot can never
fall back to a stale state silently: attaching a retired state is a CorruptionError.

The header's first 120 bytes are immutable after creation and covered by a
checksum.  The journal (``_core/journal.h``), the shadow and the redo log make every allocator
call all-or-nothing for a process killed in it: the next opener (file pools) or lock
taker (shared pools) rolls the call back or forward.  Every field is validated
against the segment's real length before anything is trusted, so a truncated,
foreign or random segment raises CorruptionError.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .errors import CorruptionError

__all__ = ["HEADER_SIZE", "JOURNAL_OFFSET", "JOURNAL_SIZE", "NAMED_ROOT_OFFSET",
           "LOG_ENTRY", "PLACEMENT_OFFSET", "Header", "Placement", "base_end", "home", "layout", "log_of",
           "named_root", "placement", "slot_sum"]

HEADER_SIZE = 4096
VERSION = 5  # 5: the redo log; 4: placement slots (a grown state); 3: the directory of
#             named arrays; 2: the journal and the shadow (1 had neither)
READABLE = (3, 4, 5)  # a format-3 file opens as before, and its state does not grow; 3
#                      and 4 journal without a log (each call replays on the shadow)
_FMT = struct.Struct("<8sIIII QQQQQ QQ 16s Q Q Q")  # 120 bytes
assert _FMT.size == 120
CHECKSUM_OFFSET = 120
CREATED_NS_OFFSET = 96  #: the header's created_ns (a shared pool's segment_id)
JOURNAL_OFFSET = 1024  #: the journal of a file pool (a shared pool's is in its lock area)
JOURNAL_SIZE = 2048  #: MP_JOURNAL_BYTES
NAMED_ROOT_OFFSET = 3072  #: a file pool's directory of named arrays (_core/named.h): its root
NAMED_ROOT_SIZE = 64
PLACEMENT_OFFSET = 512  #: two placement slots of 64 bytes (format 4: where a grown state is)
_SLOT = struct.Struct("<8sQQQQQ8s")  # magic, gen, state_off, shadow_off, state_size, total, pad
_SLOT_MAGIC = b"MPPLACE1"
_JOURNAL_MAGIC = (0x314c4e524a504d).to_bytes(8, "little")
_PAGE = 4096
LOG_ENTRY = 40  #: bytes per redo log entry (MP_TX_LOG_ENTRY)
_LOG_MIN = 10 * _PAGE  #: a log of at least 1024 entries (the 64 of one transaction, twice, and more)
_LOG_MAX = 64 << 20  #: and at most 64 MiB (a state larger than that checkpoints more often)


def named_root() -> bytes:
    """An empty directory of named arrays (_core/named.h: magic, no table)."""
    return struct.pack("<8Q", 0x3144454d414e504d, 2**64 - 1, 0, 0, 0, 0, 0, 0)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Header:
    """The immutable header fields of a segment."""

    magic: bytes
    kind: int
    capacity: int
    state_off: int
    state_size: int
    data_off: int
    total_size: int
    lock_off: int
    lock_size: int
    strategy: str
    created_ns: int = 0
    shadow_off: int = 0
    log_entries: int = 0  # the redo log's entries (format 5), after the shadow
    version: int = VERSION
    flags: int = 0

    @property
    def log_off(self) -> int:
        """Where the redo log is: the page after the header's shadow."""
        return self.shadow_off + _align(self.state_size, _PAGE)

    def pack(self) -> bytes:
        """The header page: fields, checksum, an empty journal area."""
        body = _FMT.pack(
            self.magic, self.version, HEADER_SIZE, self.kind, self.flags,
            self.capacity, self.state_off, self.state_size, self.data_off, self.total_size,
            self.lock_off, self.lock_size, self.strategy.encode("ascii").ljust(16, b"\0"),
            self.created_ns, self.shadow_off, self.log_entries,
        )
        page = bytearray(HEADER_SIZE)
        page[:120] = body
        # an empty journal (journal.c: its magic "MPJRNL1", phase idle, no undo records)
        page[JOURNAL_OFFSET:JOURNAL_OFFSET + 8] = _JOURNAL_MAGIC
        page[NAMED_ROOT_OFFSET:NAMED_ROOT_OFFSET + NAMED_ROOT_SIZE] = named_root()
        page[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 8] = _digest(body).to_bytes(8, "little")
        return bytes(page)

    @classmethod
    def unpack(cls, buf: memoryview | bytes, length: int, magic: bytes, what: str) -> Header:
        """Validate and read a header from a segment of ``length`` bytes.

        Raises CorruptionError naming ``what`` (the file or segment) for anything
        that does not hold.
        """
        if length < HEADER_SIZE:
            raise CorruptionError(f"{what}: {length} bytes, too short for a mempool header")
        body = bytes(buf[:120])
        f = _FMT.unpack(body)
        if f[0] != magic:
            raise CorruptionError(f"{what}: not a mempool segment (magic {f[0]!r})")
        if f[1] not in READABLE:
            raise CorruptionError(f"{what}: format version {f[1]}, this mempool reads "
                                  f"{' and '.join(map(str, READABLE))}")
        stored = int.from_bytes(bytes(buf[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 8]), "little")
        if stored != _digest(body):
            raise CorruptionError(f"{what}: header checksum mismatch (damaged header)")
        try:
            name = f[12].rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise CorruptionError(f"{what}: bad strategy name in the header") from None
        h = cls(magic=f[0], version=f[1], kind=f[3], flags=f[4], capacity=f[5], state_off=f[6],
                state_size=f[7], data_off=f[8], total_size=f[9], lock_off=f[10], lock_size=f[11],
                strategy=name, created_ns=f[13], shadow_off=f[14], log_entries=f[15])
        if f[2] != HEADER_SIZE or h.state_off != HEADER_SIZE:
            raise CorruptionError(f"{what}: unexpected header size")
        state_end = h.state_off + h.state_size
        lock_end = h.lock_off + h.lock_size if h.lock_size else 0
        if (h.capacity < 1 or h.state_size < 64 or h.data_off % _PAGE
                or h.data_off < max(state_end, lock_end)
                or (h.lock_size and h.lock_off < state_end) or (h.lock_off and not h.lock_size)
                or h.data_off + h.capacity > h.total_size
                or h.shadow_off % _PAGE or h.shadow_off < h.data_off + h.capacity
                or h.shadow_off + h.state_size > h.total_size
                or (h.version < 5 and h.log_entries)
                or (h.version >= 5 and not 128 < h.log_entries <= _LOG_MAX // LOG_ENTRY)
                or h.log_off + h.log_entries * LOG_ENTRY > h.total_size):
            raise CorruptionError(f"{what}: inconsistent sizes in the header")
        if h.total_size > length:
            raise CorruptionError(
                f"{what}: truncated: the header says {h.total_size} bytes, found {length}")
        return h

    def check_kind(self, buf: memoryview | bytes, what: str, state_off: int = 0) -> None:
        """Compare the header's strategy kind with the state's (mp_head_t.kind) in
        ``buf``, the whole segment, already validated by :meth:`unpack` (the state at
        ``state_off``: where :func:`placement` says; default the header's)."""
        at = state_off or self.state_off
        state_kind = int.from_bytes(bytes(buf[at + 4:at + 6]), "little")
        if state_kind != self.kind:
            raise CorruptionError(
                f"{what}: the header says strategy kind {self.kind}, the state is kind "
                f"{state_kind}")


@dataclass(frozen=True)
class Placement:
    """Where a segment's state and its shadow are now: the header's own pair (gen 0),
    or the grown pair a placement slot names."""

    state_off: int
    shadow_off: int
    state_size: int
    end: int  # the end of the segment's last pair (where a grown pair would go)
    gen: int = 0
    slot: int = -1  # which slot names it (-1: the header's pair)

    def for_core(self, h: Header) -> tuple[int, int, int, int, int]:
        """The ``placement`` argument of the C core (place.c, mp_place_setup)."""
        return (self.gen, self.slot, self.end, base_end(h), h.state_size)


def slot_sum(body: bytes) -> int:
    """A placement slot's checksum over its first 56 bytes (seven words): a mix the C
    core computes too (pool_shared.c grows a shared pool's state under its lock)."""
    h, m = 0x9E3779B97F4A7C15, (1 << 64) - 1
    for (w,) in struct.iter_unpack("<Q", body[:56]):
        h = ((h ^ w) * 0xFF51AFD7ED558CCD) & m
        h ^= h >> 32
    return h


def base_end(h: Header) -> int:
    """The end of the header's own pair (its shadow's last page) and of the redo log
    after it: grown pairs lie past it."""
    return h.log_off + _align(h.log_entries * LOG_ENTRY, _PAGE)


def log_of(h: Header) -> tuple[int, ...]:
    """The redo log's (offset, entries) for the C core, or () (format 3 and 4: none)."""
    return (h.log_off, h.log_entries) if h.log_entries else ()


def home(h: Header) -> Placement:
    """The header's own pair (generation 0): where a new segment's state is."""
    return Placement(h.state_off, h.shadow_off, h.state_size, base_end(h))


def placement(h: Header, buf: memoryview | bytes, length: int, what: str) -> Placement:
    """The pair the state is in now (``buf``: the whole segment, ``length`` bytes, its
    header validated by :meth:`Header.unpack`).  A slot that fails its checksum is a
    write a killed process left unfinished and does not count; one that passes it but
    names bytes outside the segment, or before the header's pair ends, is
    CorruptionError."""
    base = home(h)
    if h.version < 4:
        return base
    best = base
    for k in range(2):
        at = PLACEMENT_OFFSET + 64 * k
        raw = bytes(buf[at:at + 64])
        if raw == bytes(64):
            continue
        body, digest = raw[:56], int.from_bytes(raw[56:], "little")
        if digest != slot_sum(body):
            continue  # torn: a growth killed while it wrote the slot
        magic, gen, st, sh, size, end, _ = _SLOT.unpack(body)
        if (magic != _SLOT_MAGIC or not 1 <= gen < 1 << 62 or st % _PAGE or sh % _PAGE
                or size < h.state_size or st < base.end or sh < st + size or end < sh + size):
            raise CorruptionError(f"{what}: placement slot {k} is inconsistent")
        if end > length:
            raise CorruptionError(f"{what}: truncated: placement slot {k} names {end} bytes, "
                                  f"found {length}")
        if gen > best.gen:
            best = Placement(st, sh, size, end, gen, k)
        elif gen == best.gen:
            raise CorruptionError(f"{what}: two placement slots of generation {gen}")
    return best


def layout(magic: bytes, kind: int, strategy: str, capacity: int, state_size: int,
           lock_size: int = 0, created_ns: int = 0) -> Header:
    """Where everything goes in a new segment."""
    state_off = HEADER_SIZE
    lock_off = _align(state_off + state_size, 64) if lock_size else 0
    end = (lock_off + lock_size) if lock_size else state_off + state_size
    data_off = _align(end, _PAGE)
    shadow_off = data_off + _align(capacity, _PAGE)
    # the redo log: as many bytes as the state (a checkpoint copies ~one byte per byte
    # logged), whole pages, at least 1024 entries and at most 64 MiB
    log_bytes = _align(min(max(state_size, _LOG_MIN), _LOG_MAX), _PAGE)
    log_off = shadow_off + _align(state_size, _PAGE)
    return Header(magic=magic, kind=kind, capacity=capacity, state_off=state_off,
                  state_size=state_size, data_off=data_off,
                  total_size=log_off + log_bytes, lock_off=lock_off,
                  lock_size=lock_size, strategy=strategy, created_ns=created_ns,
                  shadow_off=shadow_off, log_entries=log_bytes // LOG_ENTRY)
