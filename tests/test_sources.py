"""Memory sources against the real machine: mappings, huge pages, NUMA, mlock."""

import ctypes
import errno
import mmap
import os
import platform
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import can_mount_an_ext4, on_a_small_fs

import mempool
from mempool import AnonymousMemory, BufferMemory, FileMemory, NumaPolicy, Pool, _mempool, sources
from mempool.sources import numa_nodes

_libc = ctypes.CDLL(None, use_errno=True)
_MODE_NUMBERS = {"default": 0, "preferred": 1, "bind": 2, "interleave": 3, "local": 4}


def smaps(address):
    """The /proc/self/smaps fields (in bytes) of the mapping (VMA) that holds address.
    The kernel may merge a mapping with a neighbour of the same flags and policy: use
    resident() for the bytes of one source."""
    fields, here = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        f = line.split()
        if not f[0].endswith(":"):  # a mapping's header: start-end perms ...
            start, end = (int(x, 16) for x in f[0].split("-"))
            here = start <= address < end
        elif here and len(f) == 3 and f[2] == "kB":
            fields[f[0][:-1]] = int(f[1]) * 1024
    assert fields, f"no mapping holds {address:#x}"
    return fields


_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident(source):
    """Bytes of source's mapping that are in memory (mincore)."""
    pages = source.size // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(pages)
    assert _libc.mincore(source.address, source.size, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw[:pages]) * mmap.PAGESIZE


def mempolicy_at(address):
    """(mode, nodes) the kernel holds for the page at address (get_mempolicy MPOL_F_ADDR)."""
    if not hasattr(_mempool, "get_mempolicy"):
        pytest.skip(f"the C library's headers do not number get_mempolicy on {platform.machine()}")
    return _mempool.get_mempolicy(address)


def thp_available():
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.fixture
def calls(monkeypatch):
    """Records, in order, the mmap flags, mbind calls and deferred pre-faults that an
    AnonymousMemory construction makes."""
    seen = []
    real_mmap, real_apply, real_prefault = mmap.mmap, NumaPolicy.apply, sources._prefault

    def fake_mmap(*args, **kw):
        seen.append(("mmap", bool(kw["flags"] & mmap.MAP_POPULATE)))
        return real_mmap(*args, **kw)

    def fake_apply(self, address, length):
        seen.append(("mbind", self.mode))
        return real_apply(self, address, length)

    def fake_prefault(mm, length):
        seen.append(("prefault", length))
        return real_prefault(mm, length)

    monkeypatch.setattr(sources.mmap, "mmap", fake_mmap)
    monkeypatch.setattr(NumaPolicy, "apply", fake_apply)
    monkeypatch.setattr(sources, "_prefault", fake_prefault)
    return seen


def test_anonymous_memory_rounds_to_pages_and_is_writable():
    m = AnonymousMemory(1000)
    assert m.size == mmap.PAGESIZE and m.address % mmap.PAGESIZE == 0
    mv = memoryview(m.buffer)
    mv[0] = 1
    mv.release()
    m.close()
    assert m.closed
    with pytest.raises(mempool.PoolClosed):
        m.address
    m.close()


def test_anonymous_memory_options_that_work_here():
    # this machine: THP in madvise mode, node 0, mbind allowed: everything applies
    if not thp_available():
        pytest.skip("transparent huge pages are off here")
    node = numa_nodes()[0]
    m = AnonymousMemory("8MiB", populate=True, hugepages="transparent",
                        numa=NumaPolicy("bind", (node,)))
    assert m.size == 8 << 20 and m.refused == []
    assert resident(m) == m.size  # pre-faulted
    f = smaps(m.address)
    # faulted after MADV_HUGEPAGE (MAP_POPULATE would have faulted 4 KiB pages first)
    assert f["AnonHugePages"] >= 2 << 20, f
    assert mempolicy_at(m.address) == (_MODE_NUMBERS["bind"], (node,))
    assert not any(memoryview(m.buffer))  # still zeros
    m.close()


def test_populate_with_numa_binds_before_faulting(calls):
    node = numa_nodes()[0]
    m = AnonymousMemory(1 << 20, numa=NumaPolicy("bind", (node,)), populate=True)
    # no MAP_POPULATE: mbind (flags 0) does not move pages that are already there
    assert calls == [("mmap", False), ("mbind", "bind"), ("prefault", 1 << 20)]
    assert m.refused == [] and resident(m) == 1 << 20
    assert mempolicy_at(m.address) == (_MODE_NUMBERS["bind"], (node,))
    m.close()


def test_populate_alone_uses_map_populate(calls):
    m = AnonymousMemory(1 << 20, populate=True)
    assert calls == [("mmap", True)]
    assert resident(m) == 1 << 20
    m.close()
    calls.clear()
    m = AnonymousMemory(1 << 20, numa=NumaPolicy("local"))  # no populate: nothing faulted
    assert calls == [("mmap", False), ("mbind", "local")]
    assert resident(m) == 0
    m.close()


def test_prefault_without_madv_populate_write_touches_every_page(monkeypatch):
    # a kernel before 5.14 answers EINVAL to the advice: one zero byte per page instead
    monkeypatch.setattr(sources, "MADV_POPULATE_WRITE", 0x7fff)
    m = AnonymousMemory(1 << 20, numa=NumaPolicy("interleave", (numa_nodes()[0],)),
                        populate=True)
    assert m.refused == [] and resident(m) == 1 << 20
    assert not any(memoryview(m.buffer))
    m.close()


def test_prefault_refused_is_named(monkeypatch):
    def no_room(mm, length):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(sources, "_prefault", no_room)
    with pytest.raises(OSError) as e:
        AnonymousMemory(1 << 16, numa=NumaPolicy("local"), populate=True)
    assert e.value.errno == errno.ENOMEM
    assert e.value.strerror == ("pre-faulting 65536 bytes (madvise MADV_POPULATE_WRITE) "
                                "refused: Cannot allocate memory")
    m = AnonymousMemory(1 << 16, numa=NumaPolicy("local"), populate=True, strict=False)
    assert m.refused == ["pre-faulting 65536 bytes (madvise MADV_POPULATE_WRITE) refused"]
    memoryview(m.buffer)[0] = 1
    m.close()


def test_lock_within_the_limit():
    m = AnonymousMemory(64 << 10, lock=True)
    assert m.refused == [] and resident(m) == 64 << 10
    assert smaps(m.address)["Locked"] >= 64 << 10
    m.close()


def _in_child(fn):
    """Run fn() in a forked child; returns its exit status (0 = passed)."""
    import os

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            fn()
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_lock_beyond_the_limit_is_a_clear_error():
    import os
    import resource

    def body():
        if os.geteuid() == 0:  # root may lock anything: become nobody (drops CAP_IPC_LOCK)
            os.setgid(65534)
            os.setuid(65534)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 16, 1 << 16))
        why = "mlock of 1048576 bytes refused (RLIMIT_MEMLOCK; see ulimit -l)"
        try:
            AnonymousMemory(1 << 20, lock=True)
        except OSError as e:
            assert e.strerror in (f"{why}: Cannot allocate memory",
                                  f"{why}: Operation not permitted"), e
        else:
            raise AssertionError("mlock beyond RLIMIT_MEMLOCK did not raise")
        m = AnonymousMemory(1 << 20, lock=True, strict=False)
        assert m.refused == [why], m.refused
        m.close()

    assert _in_child(body) == 0


def test_explicit_hugepages_without_reservation_is_a_clear_error():
    from pathlib import Path

    if int(Path("/proc/sys/vm/nr_hugepages").read_text()) > 0:
        pytest.skip("this machine reserves huge pages")
    huge = sources._hugepage_size()
    why = (f"explicit huge pages: cannot map {4 << 20} bytes from the huge-page pool "
           f"(0 pages of {huge} bytes reserved in /proc/sys/vm/nr_hugepages): "
           "Cannot allocate memory")
    with pytest.raises(OSError) as e:
        AnonymousMemory("4MiB", hugepages="explicit")
    assert e.value.errno == errno.ENOMEM and e.value.strerror == why
    m = AnonymousMemory("4MiB", hugepages="explicit", strict=False)
    assert m.refused == [why] and m.size == 4 << 20
    m.close()


def test_numa_policies_validate_nodes():
    nodes = numa_nodes()
    assert nodes and all(isinstance(n, int) for n in nodes)
    with pytest.raises(ValueError, match="do not exist"):
        NumaPolicy("bind", (max(nodes) + 1,))
    with pytest.raises(ValueError, match="do not exist"):
        NumaPolicy("interleave", (9,)) if 9 not in nodes else NumaPolicy("bind", (-1,))
    with pytest.raises(ValueError, match="mode"):
        NumaPolicy("nearest", (0,))
    with pytest.raises(ValueError, match="no nodes"):
        NumaPolicy("local", (nodes[0],))
    with pytest.raises(ValueError, match="exactly one"):
        NumaPolicy("preferred", ())
    with pytest.raises(ValueError, match="at least one"):
        NumaPolicy("bind", ())
    with pytest.raises(TypeError):
        NumaPolicy("bind", ("0",))
    with pytest.raises(TypeError):
        AnonymousMemory(4096, numa="bind")


@pytest.mark.parametrize("populate", [False, True])
@pytest.mark.parametrize("mode, nodes", [("default", ()), ("local", ()), ("bind", None),
                                         ("preferred", None), ("interleave", None)])
def test_numa_policy_applies(mode, nodes, populate):
    # every mode on an online node applies here (strict: a refusal would raise)
    nodes = (numa_nodes()[0],) if nodes is None else nodes
    m = AnonymousMemory(1 << 16, numa=NumaPolicy(mode, nodes), populate=populate)
    assert m.refused == []
    assert mempolicy_at(m.address) == (_MODE_NUMBERS[mode], nodes)
    assert resident(m) == (1 << 16 if populate else 0)
    memoryview(m.buffer)[0] = 1
    m.close()


def test_numa_policy_refused_by_the_kernel_says_why():
    # a node the kernel will not bind to (as in a cpuset that excludes it): validation
    # is bypassed so that the refusal comes from mbind itself
    policy = NumaPolicy("bind", (numa_nodes()[0],))
    object.__setattr__(policy, "nodes", (1000,))
    why = "mbind(bind, nodes=[1000]) refused: Invalid argument"
    with pytest.raises(OSError) as e:
        AnonymousMemory(1 << 16, numa=policy, populate=True)
    assert e.value.errno == errno.EINVAL and e.value.strerror == why
    m = AnonymousMemory(1 << 16, numa=policy, populate=True, strict=False)
    assert m.refused == [why]
    assert mempolicy_at(m.address) == (0, ())
    m.close()


def test_mbind_is_the_extensions_system_call():
    # the C function, numbered by <sys/syscall.h>, on this machine's node 0 (and no
    # ctypes anywhere in the sources)
    node = numa_nodes()[0]
    m = AnonymousMemory(1 << 16)
    assert mempolicy_at(m.address) == (0, ())
    _mempool.mbind(m.address, m.size, _MODE_NUMBERS["bind"], [node])
    assert mempolicy_at(m.address) == (_MODE_NUMBERS["bind"], (node,))
    _mempool.mbind(m.address, m.size, _MODE_NUMBERS["default"], ())
    assert mempolicy_at(m.address) == (0, ())
    with pytest.raises(OSError) as e:  # the kernel's answer, as errno
        _mempool.mbind(m.address, m.size, _MODE_NUMBERS["bind"], [1000])
    assert e.value.errno == errno.EINVAL and e.value.strerror == os.strerror(errno.EINVAL)
    with pytest.raises(OSError) as e:  # a mode the kernel does not have
        _mempool.mbind(m.address, m.size, 99, [node])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="NUMA nodes must be in"):
        _mempool.mbind(m.address, m.size, _MODE_NUMBERS["bind"], [1 << 20])
    with pytest.raises(ValueError, match="NUMA nodes must be in"):
        _mempool.mbind(m.address, m.size, _MODE_NUMBERS["bind"], [-1])
    with pytest.raises(TypeError):
        _mempool.mbind(m.address, m.size, _MODE_NUMBERS["bind"], 0)
    with pytest.raises(OverflowError):
        _mempool.mbind(1 << 64, m.size, _MODE_NUMBERS["bind"], [node])
    assert mempolicy_at(m.address) == (0, ())  # nothing applied by a refusal
    m.close()
    with pytest.raises(OSError) as e:  # page 0 is never mapped (vm.mmap_min_addr)
        _mempool.mbind(0, mmap.PAGESIZE, _MODE_NUMBERS["bind"], [node])
    assert e.value.errno == errno.EFAULT
    with pytest.raises(OSError) as e:
        _mempool.get_mempolicy(0)
    assert e.value.errno == errno.EFAULT
    assert "ctypes" not in Path(sources.__file__).read_text()


def test_numa_policy_without_mbind_says_why(monkeypatch):
    monkeypatch.setattr(sources, "_mbind", None)
    why = f"mbind is not known on {platform.machine()}"
    with pytest.raises(OSError) as e:
        AnonymousMemory(1 << 16, numa=NumaPolicy("local"))
    assert e.value.errno == errno.ENOSYS
    assert e.value.strerror == f"{why}: Function not implemented"
    m = AnonymousMemory(1 << 16, numa=NumaPolicy("local"), strict=False)
    assert m.refused == [why]
    m.close()


def test_anonymous_memory_bad_arguments():
    with pytest.raises(ValueError):
        AnonymousMemory(0)
    with pytest.raises(ValueError, match="hugepages"):
        AnonymousMemory(4096, hugepages="yes")
    with pytest.raises(TypeError):
        AnonymousMemory(1.5)


def test_file_memory_create_extend_and_reopen(tmp_path):
    path = tmp_path / "f.bin"
    f = FileMemory(path, 8192)
    memoryview(f.buffer)[:5] = b"hello"
    f.flush()
    f.close()
    assert path.stat().st_size == 8192
    g = FileMemory(path)
    assert g.size == 8192 and bytes(memoryview(g.buffer)[:5]) == b"hello"
    g.close()
    h = FileMemory(path, 16384)  # extends
    assert path.stat().st_size == 16384
    h.close()
    with pytest.raises(ValueError, match="empty"):
        (tmp_path / "empty").touch()
        FileMemory(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        FileMemory(tmp_path / "missing")


def test_file_memory_lock_is_not_inherited_by_a_fork(tmp_path):
    path = tmp_path / "lock.bin"
    f = FileMemory(path, 4096, exclusive=True)
    with pytest.raises(BlockingIOError, match="open elsewhere"):
        FileMemory(path, exclusive=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # alive until the parent closes its end of the pipe
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        f.close()
        FileMemory(path, exclusive=True).close()  # free at once, the child still alive
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # it was, all along
    finally:
        os.close(w)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# The fork design (sources.py, _LOCKED): the parent never waits for the child at
# fork(); it unlocks with LOCK_UN, so a child's copy of the lock descriptor holds
# nothing once the parent lets go; the child closes its copies without unlocking.
_SLOW_CHILD = r"""
import os, sys, time
# another library's hook, registered first, so it runs in the child before mempool's:
# the child holds its copy of the lock descriptor for these 3 s
os.register_at_fork(after_in_child=lambda: time.sleep(3))
from mempool import Pool
path = sys.argv[1]
p = Pool.create(path, 65536)
p.alloc(10)
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os._exit(0)
took = time.perf_counter() - t0
p.close()
t1 = time.perf_counter()
with Pool.open(path) as q:  # at once: the child is still in the slow hook
    assert len(q) == 1
reopened = time.perf_counter() - t1
os.waitpid(pid, 0)
print(f"{took:.3f} {reopened:.3f}")
"""


def test_fork_does_not_wait_for_the_child_and_its_copy_holds_no_lock(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SLOW_CHILD, str(tmp_path / "slow.mp")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fork_s, reopen_s = map(float, out.stdout.split())
    # the old design waited at fork() until the child had run mempool's hook (3 s here,
    # up to 10 s), and without LOCK_UN the reopen would raise BlockingIOError
    assert fork_s < 1.0 and reopen_s < 1.0


def test_a_forked_child_neither_holds_nor_drops_the_parents_lock(tmp_path):
    path = tmp_path / "child.bin"
    f = FileMemory(path, 4096, exclusive=True)
    ready_r, ready_w = os.pipe()  # child -> parent: its copy is closed
    go_r, go_w = os.pipe()  # parent -> child: the parent let go
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            f.close()  # its copy: closes nothing of the parent's, unlocks nothing
            try:
                FileMemory(path, exclusive=True)
                code = 2  # the parent's lock did not hold
            except BlockingIOError:
                pass
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            FileMemory(path, exclusive=True).close()  # the child's own lock, at once
            if code == 1:
                code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(BlockingIOError):  # still the parent's
            FileMemory(path, exclusive=True)
    finally:
        f.close()
        os.write(go_w, b"1")
        os.close(go_w)
        os.close(ready_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    FileMemory(path, exclusive=True).close()


def test_buffer_memory_refuses_buffers_of_python_objects():
    # a pool over them wrote over the object pointers: a segfault at the next use
    import ctypes
    for obj in (np.array([object()] * 8, dtype=object), (ctypes.py_object * 8)(),
                np.zeros(2, [("a", "i4"), ("o", "O")])):
        with pytest.raises(ValueError, match="Python object references"):
            BufferMemory(obj)
    BufferMemory(np.zeros(2, [("Oscar", "i4")]))  # (a field named O... is plain bytes)


def test_a_pool_over_a_shared_buffer_serves_only_its_process():
    # an mmap (MAP_SHARED by default) through BufferMemory: a forked child's copy of the
    # pool's state handed out the parent's live range again
    import mmap
    mm = mmap.mmap(-1, 1 << 16)
    src = BufferMemory(mm)
    assert src._shared_mapping and not BufferMemory(bytearray(64))._shared_mapping
    pool = Pool(1 << 16, source=src)
    a = pool.alloc(64)
    pid = os.fork()
    if pid == 0:
        try:
            pool.alloc(64)
            os._exit(1)
        except mempool.PoolClosed:
            os._exit(0)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0
    a.free()
    pool.close()
    src.close()


def test_one_pool_per_source():
    # two pools over one source handed out the same bytes
    src = AnonymousMemory("1MiB")
    p1 = Pool("1MiB", source=src)
    with pytest.raises(ValueError, match="already serves"):
        Pool("1MiB", source=src)
    p1.close()
    p2 = Pool("1MiB", source=src)  # free again once the first pool is closed
    p2.close()
    src.close()
    ext = mempool.External("1MiB")
    pe = Pool("1MiB", source=ext)
    b = pe.alloc(100)
    with pytest.raises(BufferError, match="uses it"):
        ext.close()  # (it has no buffer export to keep it open: it says so itself)
    assert not ext.closed and pe.alloc(100).offset != b.offset
    pe.close()
    ext.close()


def test_a_file_memory_that_fails_to_be_made_leaves_no_file(tmp_path):
    path = tmp_path / "data"
    with pytest.raises(OSError):
        FileMemory(path, "100TiB")  # EFBIG / ENOSPC
    assert not path.exists()
    path.write_bytes(b"x" * 10)
    with pytest.raises(OSError):
        FileMemory(path, "100TiB")  # a file that was there stays
    assert path.read_bytes() == b"x" * 10


def test_numpy_pool_hugepages_is_true_or_false():
    with pytest.raises(TypeError, match="hugepages must be True or False"):
        with mempool.numpy_pool("1MiB", hugepages="explicit"):
            pass


FILL_EXT4 = """\
import os, sys
from mempool import Pool
from mempool.sources import FileMemory
d = sys.argv[1]
def free():
    st = os.statvfs(d)
    return st.f_bavail * st.f_frsize
# 1. an existing 4 KiB file asked to be 1 GiB on a 16 MiB file system
p = os.path.join(d, "data.bin")
with open(p, "wb") as f:
    f.write(b"A" * 4096)
f0 = free()
try:
    FileMemory(p, "1GiB")
except OSError as e:
    print("raised", e.errno)
with open(p, "rb") as f:
    print(os.path.getsize(p), f.read() == b"A" * 4096, f0 - free() < 65536)
os.unlink(p)
# 2. a file pool whose state grows on a file system with ~1 MiB left
path = os.path.join(d, "heap.mp")
pool = Pool.create(path, "1MiB", max_blocks=32)
with open(os.path.join(d, "filler"), "wb") as f:
    os.posix_fallocate(f.fileno(), 0, free() - (1 << 20))
blocks = []
while True:
    size0, free0 = os.path.getsize(path), free()
    try:
        blocks.append(pool.alloc(16))
    except OSError as e:
        print("raised", e.errno)
        break
pool.check()
print(os.path.getsize(path) == size0, free0 - free() < 65536, len(pool) == len(blocks))
"""


@pytest.mark.skipif(not can_mount_an_ext4(), reason="needs root, unshare -m, mkfs.ext4 and loop")
def test_a_full_disk_leaves_the_file_as_it_was(tmp_path):
    # posix_fallocate that runs out of room keeps what it got: FileMemory over an
    # existing 4 KiB file asked for 1 GiB left it 14 MB long and the file system full,
    # and a file pool's state growth left its file 3.3 MB longer
    import sys
    script = tmp_path / "fill.py"
    script.write_text(FILL_EXT4)
    r = on_a_small_fs(tmp_path, 16 << 20, f"{sys.executable} {script} {{mnt}}", ext4=True)
    assert r.stdout.split() == ["raised", "28", "4096", "True", "True",
                                "raised", "28", "True", "True", "True"], (r.stdout, r.stderr)


def test_a_fifo_is_refused_read_only_too(tmp_path):
    # FileMemory(fifo, readonly=True) opened it O_RDONLY and waited for a writer forever
    import threading
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    seen = []

    def opens():
        for kw in ({"readonly": True}, {}, {"size": 4096, "readonly": True}):
            try:
                FileMemory(fifo, **kw)
            except ValueError as e:
                seen.append(str(e))

    t = threading.Thread(target=opens, daemon=True)
    t.start()
    t.join(10)
    hung = t.is_alive()
    if hung:  # (a writer lets the stuck open go)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
    assert not hung, "FileMemory waited for a writer"
    assert [m.replace(str(fifo), "F") for m in seen] == [
        "F is empty: give a size to create it", "F is empty: give a size to create it",
        "F holds 0 bytes, fewer than 4096"]


def test_a_file_larger_than_any_is_an_os_error(tmp_path):
    # (OverflowError from inside os.posix_fallocate for 2**63)
    for size in (2**63, 2**64 + 5):
        with pytest.raises(OSError, match=f"size {size} is larger than any file") as e:
            FileMemory(tmp_path / "big", size)
        assert e.value.errno == errno.EFBIG
    assert not (tmp_path / "big").exists()
