"""pool.named: a directory of named arrays that the pool itself owns (layer 4).

The directory lives in the pool's own memory (``_core/named.h``: a hash table of
records, probed in C), so a file pool finds its names again after reopen and a shared
pool's names are every attached process's.  This module is the mapping type over it:
it encodes values into records, decodes records into NumPy views, and keeps a
per-process cache (name -> decoded record) so that a lookup is a dict hit and one C
call that makes the view.

Values:

* a NumPy array (numeric, bool, str/bytes, datetime, void and structured dtypes: any
  dtype without Python objects) -- read back as an array with its dtype, shape and
  strides.  An array that lives in this pool (a view of a Block or of an array the
  pool made) is *adopted*: the name takes over the range, no copy, and the view keeps
  its exact offset, shape and strides.  Any other array is copied in, C-contiguous.
* ``bytes`` / ``bytearray`` / ``memoryview`` -- copied in, read back as a 1-d
  ``uint8`` array.
* a :class:`~mempool.Block` -- of this pool: its range is adopted; of another pool:
  copied into a new range.  Read back as a Block (``pool.block_at``) of the range.

Assigning to a name that exists replaces it (its old range is freed) unless a view of
the old one is alive (``BufferError``, nothing changed).  A range already named is
copied, never shared by two names.
"""

from __future__ import annotations

import ast
import struct
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._mempool import Block, SharedPoolCore, data_address
from .errors import CorruptionError, NotAllocated

if TYPE_CHECKING:
    from ._mempool import PoolCore

__all__ = ["MAX_DTYPE_BYTES", "MAX_NAME_BYTES", "NamedArrays"]

MAX_NAME_BYTES = 255  #: the longest name, in bytes of UTF-8 (MP_NAMED_MAX_NAME)
MAX_NDIM = 64
_LOOKUPS = 1000  # a shared lookup's tries when another process replaces the name meanwhile
MAX_DTYPE_BYTES = 4096  #: the longest dtype description a record holds (MP_NAMED_MAX_DTYPE)
_HEAD = struct.Struct("<QQQQQIIIIQ")  # mp_named_rec_t: 64 bytes
assert _HEAD.size == 64
KIND_ARRAY, KIND_BYTES, KIND_BLOCK = 0, 1, 2
_U8 = np.dtype(np.uint8)
try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # NumPy 1.x
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]
_dtypes: dict[bytes, np.dtype[Any]] = {}


def check_name(name: object) -> bytes:
    """The UTF-8 bytes of a valid name; TypeError / ValueError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a name must be encodable as UTF-8: {name!r}") from None
    if not raw:
        raise ValueError("a name must not be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"a name must be at most {MAX_NAME_BYTES} bytes of UTF-8, got "
                         f"{len(raw)}")
    return raw


def _dtype_spec(dt: np.dtype[Any], flags: bool = True) -> Any:
    """A literal that np.dtype() turns back into exactly ``dt``: its fields' names, formats,
    offsets and titles, its itemsize and whether it is an aligned struct (``dt.descr``
    loses padding, which reads back as extra ``f1`` fields, and has no form at all for
    overlapping or out-of-order fields)."""
    if dt.fields is None:
        if dt.subdtype is not None:
            base, shape = dt.subdtype
            return (_dtype_spec(base, flags), shape)
        return dt.str
    names = list(dt.names or ())
    fields = [dt.fields[n] for n in names]
    spec: dict[str, Any] = {"names": names, "formats": [_dtype_spec(f[0], flags) for f in fields],
                            "offsets": [f[1] for f in fields], "itemsize": dt.itemsize}
    if any(len(f) > 2 for f in fields):
        spec["titles"] = [f[2] if len(f) > 2 else None for f in fields]
    if flags and dt.isalignedstruct:
        spec["aligned"] = True
    return spec


def _encode_dtype(dt: np.dtype[Any]) -> bytes:
    """A record's dtype: b"s" + dt.str for a plain dtype; else the first of b"d" + its
    descr (the form every version reads), b"D" + _dtype_spec (with, then without the
    aligned flags: NumPy applies one to the structs nested in it too) that reads back equal to
    ``dt``, its aligned flag kept where one does; ascii() escapes non-ASCII field names.
    ValueError when none does, or past MAX_DTYPE_BYTES: nothing is stored that cannot
    be read back."""
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python object references, which cannot live in "
                        "pool memory")
    if dt.fields is None and dt.subdtype is None:
        raw = b"s" + str(dt.str).encode("ascii")
    else:
        forms = []
        try:
            forms.append(b"d" + ascii(dt.descr).encode("ascii"))
        except (TypeError, ValueError):  # no descr: overlapping or out-of-order fields
            pass
        forms.append(b"D" + ascii(_dtype_spec(dt)).encode("ascii"))
        forms.append(b"D" + ascii(_dtype_spec(dt, flags=False)).encode("ascii"))
        fits = [f for f in forms if len(f) <= MAX_DTYPE_BYTES]  # (before any decoding)
        if not fits:
            raise ValueError(f"the dtype's description takes {min(map(len, forms))} bytes; "
                             f"a named array's is at most {MAX_DTYPE_BYTES}")
        back = [(f, _read_back(f)) for f in fits]
        equal = [f for f, b in back if b is not None and b == dt]
        flagged = [f for f, b in back if b is not None and b == dt and
                   b.isalignedstruct == dt.isalignedstruct]
        if not equal:
            raise ValueError(f"dtype {dt} has no description that reads back equal to it")
        raw = (flagged or equal)[0]
    if len(raw) > MAX_DTYPE_BYTES:
        raise ValueError(f"the dtype's description takes {len(raw)} bytes; a named array's "
                         f"is at most {MAX_DTYPE_BYTES}")
    return raw


def _read_back(raw: bytes) -> np.dtype[Any] | None:
    try:
        return _decode_dtype(raw)
    except CorruptionError:
        return None


def _decode_dtype(raw: bytes) -> np.dtype[Any]:
    dt = _dtypes.get(raw)
    if dt is not None:
        return dt
    try:
        text = raw[1:].decode("ascii")
        if raw[:1] == b"s":
            dt = np.dtype(text)
        elif raw[:1] in (b"d", b"D"):
            dt = np.dtype(ast.literal_eval(text))
        else:
            raise ValueError(raw[:1])
    except Exception:
        raise CorruptionError(f"named directory: a dtype it cannot read: {raw[:80]!r}") from None
    if dt.hasobject:
        raise CorruptionError("named directory: a dtype with Python objects")
    if len(_dtypes) < 4096:
        _dtypes[raw] = dt
    return dt


def _record(kind: int, name: bytes, shape: tuple[int, ...], strides: tuple[int, ...],
            dtype: bytes) -> bytes:
    nd = len(shape)
    if nd > MAX_NDIM:
        raise ValueError(f"a named array has at most {MAX_NDIM} dimensions, got {nd}")
    head = _HEAD.pack(0, 0, 0, 0, 0, kind, nd, len(name), len(dtype), 0)
    return b"".join((head, struct.pack(f"<{nd}q", *shape), struct.pack(f"<{nd}q", *strides),
                     name, dtype))


class NamedArrays(MutableMapping[str, Any]):
    """``pool.named``: names (str, 1 to 255 bytes of UTF-8) -> arrays the pool owns.

    ``named[k] = value`` copies in or adopts (see the module's docstring) and replaces
    an existing name (``BufferError`` while a view of the old one is alive);
    ``named[k]`` is a zero-copy view (``KeyError`` when absent); ``del named[k]``
    frees the range (``BufferError`` while a view of it is alive, nothing changed);
    ``in``, ``len``, iteration (in the table's order).  A name that is not a str raises
    TypeError, an empty or too long one ValueError -- in every operation.  A failed
    call changes nothing; every change is one transaction of the pool's journal in
    file and shared pools (a process killed in it leaves the directory before or
    after).  PoolClosed after the pool is closed.
    """

    __slots__ = ("_cache", "_pool", "_shared")

    def __init__(self, pool: PoolCore) -> None:
        self._pool = pool
        # a shared pool's directory changes under other processes: no cache; each
        # lookup reads it under the segment's lock and takes a handle of the range
        self._shared = isinstance(pool, SharedPoolCore)
        # name -> (pin, dtype, shape, strides, offset in the range, kind)
        self._cache: dict[str, tuple[Block, np.dtype[Any], tuple[int, ...],
                                     tuple[int, ...], int, int]] = {}

    # ---- reading -----------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if self._shared:
            return self._shared_get(name)
        e = self._cache.get(name)
        if e is None:
            e = self._load(name)
        if e[5] == KIND_BLOCK:
            return self._pool._named_view(e[0], None, (), (), 0)
        return self._pool._named_view(e[0], e[1], e[2], e[3], e[4])

    def _load(self, name: str) -> tuple[Block, np.dtype[Any], tuple[int, ...],
                                         tuple[int, ...], int, int]:
        check_name(name)
        found = self._pool._named_find(name)
        if found is None:
            raise KeyError(name)
        rec, pin = found
        dt, shape, strides, view, kind = _decode(rec, name)
        e = (pin, dt, shape, strides, view, kind)
        self._cache[name] = e
        return e

    def _shared_get(self, name: str) -> Any:
        check_name(name)
        pool: Any = self._pool
        last = None
        for _ in range(_LOOKUPS):
            found = pool._named_find(name)
            if found is None:
                raise KeyError(name)
            rec, data, tag = found
            dt, shape, strides, view, kind = _decode(rec, name)
            try:
                blk = pool._handle(data, tag)  # a reference of this process's own
            except NotAllocated:  # replaced (or deleted) by another process meanwhile:
                if (data, tag) == last:  # (not replaced: the same range twice, refused)
                    raise CorruptionError(f"named directory: the range of {name!r} at "
                                          f"{data} is not a live block of the registry"
                                          ) from None
                last = (data, tag)
                continue  # the name's next value, or KeyError if it is gone
            if kind == KIND_BLOCK:
                return blk
            return pool._named_array(blk, dt, shape, strides, view)
        raise KeyError(name)  # (replaced _LOOKUPS times in a row between two locks)

    def __contains__(self, name: object) -> bool:
        if not self._shared and name in self._cache and not self._pool.closed:
            return True
        check_name(name)
        assert isinstance(name, str)
        return self._pool._named_find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._pool._named_names())

    def __len__(self) -> int:
        return self._pool._named_state()[0]

    # ---- writing -----------------------------------------------------------------
    def __setitem__(self, name: str, value: Any) -> None:
        raw = check_name(name)
        pool = self._pool
        src: Any = None
        block: Block | None = None
        shape: tuple[int, ...]
        strides: tuple[int, ...]
        view = 0
        if isinstance(value, Block):
            kind, shape, strides, dt = KIND_BLOCK, (), (), b""
            if value.pool is pool and value.live and not pool._named_owns(value.offset):
                block = value
            else:
                src = memoryview(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            mv = memoryview(value)
            if not mv.c_contiguous:
                mv = memoryview(mv.tobytes())
            src = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
            kind, shape, strides, dt = KIND_BYTES, (src.nbytes,), (1,), b""
        elif isinstance(value, np.ndarray):
            kind, dt = KIND_ARRAY, _encode_dtype(value.dtype)
            owner = _pool_block(value, pool)
            if owner is not None:
                block = owner
                view = data_address(value) - owner.address
                lo, hi = _byte_bounds(value)
                if value.size and (lo < owner.address or hi > owner.address + owner.size):
                    block = None  # (not the range's own bytes: copy)
            if block is None:
                value = np.array(value, order="C", copy=True, subok=False)
                src = value.reshape(-1).view(np.uint8) if value.size else b""
                view = 0
            shape, strides = value.shape, value.strides
        else:
            raise TypeError(f"pool.named holds NumPy arrays, bytes-like objects and Blocks, "
                            f"not {type(value).__name__}")
        rec = _record(kind, raw, shape, strides, dt)
        pin = pool._named_put(name, rec, src, block, view)
        if self._shared:
            return  # (no cache: see __init__)
        # the pin is the name's reference in this process: kept while the name lives
        self._cache[name] = (pin, _decode_dtype(dt) if kind == KIND_ARRAY else _U8,
                             tuple(shape), tuple(strides), view, kind)

    def __delitem__(self, name: str) -> None:
        check_name(name)
        self._pool._named_del(name)
        self._cache.pop(name, None)

    def __repr__(self) -> str:
        return f"<named arrays of {self._pool!r}: {len(self)} names>"


def _decode(rec: bytes, name: str) -> tuple[np.dtype[Any], tuple[int, ...], tuple[int, ...],
                                           int, int]:
    """(dtype, shape, strides, byte offset of element 0 in the range, kind) of a record."""
    _, _, data, dsize, view, kind, nd, nlen, dlen, _ = _HEAD.unpack_from(rec)
    shape = struct.unpack_from(f"<{nd}q", rec, 64)
    strides = struct.unpack_from(f"<{nd}q", rec, 64 + 8 * nd)
    if kind == KIND_ARRAY:
        dt = _decode_dtype(rec[64 + 16 * nd + nlen:64 + 16 * nd + nlen + dlen])
    else:
        dt = _U8
    if not data <= view <= data + dsize:
        raise CorruptionError(f"named directory: {name!r}'s view lies outside its range")
    return dt, shape, strides, view - data, kind


def _pool_block(arr: np.ndarray, pool: Any) -> Block | None:
    """The live Block of ``pool`` whose bytes ``arr`` views, or None."""
    b: Any = arr
    for _ in range(64):
        if isinstance(b, np.ndarray):
            b = b.base
        elif isinstance(b, memoryview):
            b = b.obj
        else:
            break
    if isinstance(b, Block) and b.pool is pool and b.live and not pool._named_owns(b.offset):
        return b
    return None
