"""Memory sources against the real machine: mappings, huge pages, NUMA, mlock."""

import mmap
import os
import signal
import time

import pytest

import mempool
from mempool import AnonymousMemory, FileMemory, NumaPolicy
from mempool.sources import numa_nodes


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
    m = AnonymousMemory("1MiB", populate=True, hugepages="transparent",
                        numa=NumaPolicy("bind", (numa_nodes()[0],)), strict=False)
    assert m.size == 1 << 20
    # whatever the machine refused is named, never silently dropped
    assert all(isinstance(r, str) for r in m.refused)
    m.close()


def test_lock_within_the_limit():
    m = AnonymousMemory(64 << 10, lock=True, strict=False)
    assert m.refused == [] or "mlock" in m.refused[0]
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
        try:
            AnonymousMemory(1 << 20, lock=True)
        except OSError as e:
            assert "mlock" in str(e) and "RLIMIT_MEMLOCK" in str(e), e
        else:
            raise AssertionError("mlock beyond RLIMIT_MEMLOCK did not raise")
        m = AnonymousMemory(1 << 20, lock=True, strict=False)
        assert any("mlock" in r for r in m.refused), m.refused
        m.close()

    assert _in_child(body) == 0


def test_explicit_hugepages_without_reservation_is_a_clear_error():
    from pathlib import Path

    if int(Path("/proc/sys/vm/nr_hugepages").read_text()) > 0:
        pytest.skip("this machine reserves huge pages")
    with pytest.raises(OSError, match="huge"):
        AnonymousMemory("4MiB", hugepages="explicit")
    m = AnonymousMemory("4MiB", hugepages="explicit", strict=False)
    assert any("huge" in r for r in m.refused) and m.size == 4 << 20
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


@pytest.mark.parametrize("mode, nodes", [("default", ()), ("local", ()), ("bind", None),
                                         ("preferred", None), ("interleave", None)])
def test_numa_policy_applies_or_says_why(mode, nodes):
    nodes = (numa_nodes()[0],) if nodes is None else nodes
    try:
        m = AnonymousMemory(1 << 16, numa=NumaPolicy(mode, nodes))
    except OSError as e:  # a container may forbid mbind: the error names the call
        assert "mbind" in str(e)
        return
    memoryview(m.buffer)[0] = 1
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
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(2)
        finally:
            os._exit(0)
    try:
        f.close()
        FileMemory(path, exclusive=True).close()  # free at once, the child still alive
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
