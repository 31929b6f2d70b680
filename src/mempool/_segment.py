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
           | the state's shadow copy      |  equal to the state between calls
           +------------------------------+

The header's first 120 bytes are immutable after creation and covered by a
checksum.  The journal (``_core/journal.h``) and the shadow make every allocator
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

__all__ = ["HEADER_SIZE", "JOURNAL_OFFSET", "JOURNAL_SIZE", "NAMED_ROOT_OFFSET", "Header",
           "layout", "named_root"]

HEADER_SIZE = 4096
VERSION = 3  # 3: the directory of named arrays; 2: the journal and the shadow (1 had neither)
_FMT = struct.Struct("<8sIIII QQQQQ QQ 16s Q Q 8s")  # 120 bytes
assert _FMT.size == 120
CHECKSUM_OFFSET = 120
JOURNAL_OFFSET = 1024  #: the journal of a file pool (a shared pool's is in its lock area)
JOURNAL_SIZE = 2048  #: MP_JOURNAL_BYTES
NAMED_ROOT_OFFSET = 3072  #: a file pool's directory of named arrays (_core/named.h): its root
NAMED_ROOT_SIZE = 64
_JOURNAL_MAGIC = (0x314c4e524a504d).to_bytes(8, "little")
_PAGE = 4096


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
    version: int = VERSION
    flags: int = 0

    def pack(self) -> bytes:
        """The header page: fields, checksum, an empty journal area."""
        body = _FMT.pack(
            self.magic, self.version, HEADER_SIZE, self.kind, self.flags,
            self.capacity, self.state_off, self.state_size, self.data_off, self.total_size,
            self.lock_off, self.lock_size, self.strategy.encode("ascii").ljust(16, b"\0"),
            self.created_ns, self.shadow_off, b"\0" * 8,
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
        if f[1] != VERSION:
            raise CorruptionError(f"{what}: format version {f[1]}, this mempool reads {VERSION}")
        stored = int.from_bytes(bytes(buf[CHECKSUM_OFFSET:CHECKSUM_OFFSET + 8]), "little")
        if stored != _digest(body):
            raise CorruptionError(f"{what}: header checksum mismatch (damaged header)")
        try:
            name = f[12].rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise CorruptionError(f"{what}: bad strategy name in the header") from None
        h = cls(magic=f[0], version=f[1], kind=f[3], flags=f[4], capacity=f[5], state_off=f[6],
                state_size=f[7], data_off=f[8], total_size=f[9], lock_off=f[10], lock_size=f[11],
                strategy=name, created_ns=f[13], shadow_off=f[14])
        if f[2] != HEADER_SIZE or h.state_off != HEADER_SIZE:
            raise CorruptionError(f"{what}: unexpected header size")
        state_end = h.state_off + h.state_size
        lock_end = h.lock_off + h.lock_size if h.lock_size else 0
        if (h.capacity < 1 or h.state_size < 64 or h.data_off % _PAGE
                or h.data_off < max(state_end, lock_end)
                or (h.lock_size and h.lock_off < state_end) or (h.lock_off and not h.lock_size)
                or h.data_off + h.capacity > h.total_size
                or h.shadow_off % _PAGE or h.shadow_off < h.data_off + h.capacity
                or h.shadow_off + h.state_size > h.total_size):
            raise CorruptionError(f"{what}: inconsistent sizes in the header")
        if h.total_size > length:
            raise CorruptionError(
                f"{what}: truncated: the header says {h.total_size} bytes, found {length}")
        return h

    def check_kind(self, buf: memoryview | bytes, what: str) -> None:
        """Compare the header's strategy kind with the state's (mp_head_t.kind) in
        ``buf``, the whole segment, already validated by :meth:`unpack`."""
        state_kind = int.from_bytes(bytes(buf[self.state_off + 4:self.state_off + 6]), "little")
        if state_kind != self.kind:
            raise CorruptionError(
                f"{what}: the header says strategy kind {self.kind}, the state is kind "
                f"{state_kind}")


def layout(magic: bytes, kind: int, strategy: str, capacity: int, state_size: int,
           lock_size: int = 0, created_ns: int = 0) -> Header:
    """Where everything goes in a new segment."""
    state_off = HEADER_SIZE
    lock_off = _align(state_off + state_size, 64) if lock_size else 0
    end = (lock_off + lock_size) if lock_size else state_off + state_size
    data_off = _align(end, _PAGE)
    shadow_off = data_off + _align(capacity, _PAGE)
    return Header(magic=magic, kind=kind, capacity=capacity, state_off=state_off,
                  state_size=state_size, data_off=data_off,
                  total_size=shadow_off + _align(state_size, _PAGE), lock_off=lock_off,
                  lock_size=lock_size, strategy=strategy, created_ns=created_ns,
                  shadow_off=shadow_off)
