/*
 * sys.c -- the system calls the memory sources need and the standard library lacks:
 * mbind(2) and get_mempolicy(2) (NUMA policies, without libnuma: the raw system
 * calls, numbered by the <sys/syscall.h> of the architecture being built) and
 * mlock(2) (the system call too: ASan's mlock() interceptor ignores the request).
 * Each raises OSError(errno, strerror) when the kernel refuses; the sources
 * (sources.py) turn that into their own messages.
 *
 * A C library whose headers lack SYS_mbind / SYS_get_mempolicy gets no mbind /
 * get_mempolicy function: sources.py then says "mbind is not known" (ENOSYS).
 *
 * And whether a process is gone (mp_pid_gone: kill(2) and /proc), the one rule that
 * SharedPool.reclaim() with no pid (pool_shared.c) and reclaim(pid)'s refusal of a
 * live pid (shared.py, through pid_gone) both follow.
 */
#include "native.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define WORD_BITS (8 * sizeof(unsigned long))
/* Node numbers accepted: the kernel's MAX_NUMNODES is at most 2**10 (NODES_SHIFT
 * 10); anything up to this bound gets the kernel's own answer (EINVAL). */
#define MAX_NODE 65536
/* Bits of the mask get_mempolicy fills: at least the kernel's node count. */
#define POLICY_BITS 4096

/* An address or a length: an int in [0, 2**64). */
static int read_u64(PyObject *o, const char *name, uint64_t *out)
{
    int rc = mp_arg_u64(o, name, out);
    if (rc > 0) PyErr_Format(PyExc_OverflowError, "%s %S does not fit 64 bits", name, o);
    return rc ? -1 : 0;
}

#ifdef SYS_mbind
/* mbind(address, length, mode, nodes) */
static PyObject *ext_mbind(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *addr_obj, *len_obj, *nodes_obj;
    int mode;
    uint64_t addr, len;
    if (!PyArg_ParseTuple(args, "OOiO:mbind", &addr_obj, &len_obj, &mode, &nodes_obj)) return NULL;
    if (read_u64(addr_obj, "address", &addr) < 0 || read_u64(len_obj, "length", &len) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(nodes_obj, "nodes must be a sequence of node numbers");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t *node = PyMem_Calloc((size_t)n + 1, sizeof *node), top = 0;
    if (!node) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        if (mp_arg_u64(item, "node", &node[k]) != 0 || node[k] >= MAX_NODE) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "NUMA nodes must be in [0, %d), got %S", MAX_NODE,
                             item);
            }
            Py_DECREF(seq);
            PyMem_Free(node);
            return NULL;
        }
        if (node[k] + 1 > top) top = node[k] + 1;
    }
    Py_DECREF(seq);
    /* no nodes: no mask; else whole words, and maxnode one more than their bits (the
     * kernel reads maxnode - 1 bits) */
    size_t words = n ? (size_t)((top + WORD_BITS - 1) / WORD_BITS) : 0;
    unsigned long *mask = n ? PyMem_Calloc(words, sizeof *mask) : NULL;
    if (n && !mask) {
        PyMem_Free(node);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < n; k++) mask[node[k] / WORD_BITS] |= 1UL << (node[k] % WORD_BITS);
    PyMem_Free(node);
    unsigned long maxnode = n ? (unsigned long)(words * WORD_BITS + 1) : 0;
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_mbind, (void *)(uintptr_t)addr, (unsigned long)len, (unsigned long)mode, mask,
                 maxnode, 0U);
    err = errno;
    Py_END_ALLOW_THREADS
    PyMem_Free(mask);
    if (rc != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}
#endif

#ifdef SYS_get_mempolicy
/* get_mempolicy(address) -> (mode, nodes): the policy of the page at address */
static PyObject *ext_get_mempolicy(PyObject *Py_UNUSED(mod), PyObject *addr_obj)
{
    uint64_t addr;
    if (read_u64(addr_obj, "address", &addr) < 0) return NULL;
    unsigned long mask[POLICY_BITS / WORD_BITS] = {0};
    int mode = -1;
    /* MPOL_F_ADDR (2): the policy that applies at addr */
    if (syscall(SYS_get_mempolicy, &mode, mask, (unsigned long)POLICY_BITS,
                (void *)(uintptr_t)addr, 2UL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *nodes = PyList_New(0);
    if (!nodes) return NULL;
    for (unsigned long b = 0; b < POLICY_BITS; b++) {
        if (!(mask[b / WORD_BITS] >> (b % WORD_BITS) & 1)) continue;
        PyObject *v = PyLong_FromUnsignedLong(b);
        if (!v || PyList_Append(nodes, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(nodes);
            return NULL;
        }
        Py_DECREF(v);
    }
    PyObject *tup = PyList_AsTuple(nodes);
    Py_DECREF(nodes);
    return tup ? Py_BuildValue("(iN)", mode, tup) : NULL;
}
#endif

/* mlock(address, length) */
static PyObject *ext_mlock(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *addr_obj, *len_obj;
    uint64_t addr, len;
    if (!PyArg_ParseTuple(args, "OO:mlock", &addr_obj, &len_obj)) return NULL;
    if (read_u64(addr_obj, "address", &addr) < 0 || read_u64(len_obj, "length", &len) < 0)
        return NULL;
    int rc, err;
    Py_BEGIN_ALLOW_THREADS /* faults every page in: may take a while */
    /* the system call itself: a sanitizer runtime intercepts mlock() and does nothing */
    rc = (int)syscall(SYS_mlock, (const void *)(uintptr_t)addr, (size_t)len);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* The state letter of /proc/<path>/stat (R, S, Z, X, ...), or 0 when it cannot be read. */
static char proc_state(const char *path)
{
    char buf[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the state follows the command's name */
    return p && p[1] == ' ' ? p[2] : 0;
}

/* Is process pid gone: no such process, or a zombie (dead, not yet reaped)?  A pid no
 * process can have (above INT_MAX: a crafted word) is not asked about: kill() of a
 * negative pid signals a process group.  A process whose main thread has ended while
 * other threads run shows the zombie state too: it is gone only when none of its
 * other threads runs (each is a zombie or dead too: a killed process's threads end
 * one by one). */
int mp_pid_gone(uint32_t pid)
{
    if (pid == 0 || pid > INT_MAX) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    if (proc_state(path) != 'Z') return 0; /* (no /proc: only kill's answer) */
    snprintf(path, sizeof path, "/proc/%u/task", pid);
    DIR *d = opendir(path);
    if (!d) return 1; /* (reaped meanwhile) */
    int running = 0;
    for (struct dirent *t; !running && (t = readdir(d));) {
        if (t->d_name[0] == '.' || (uint32_t)strtoul(t->d_name, NULL, 10) == pid) continue;
        snprintf(path, sizeof path, "/proc/%u/task/%.20s/stat", pid, t->d_name);
        char st = proc_state(path);
        running = st && st != 'Z' && st != 'X';
    }
    closedir(d);
    return !running;
}

/* pid_gone(pid) -> bool */
static PyObject *ext_pid_gone(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    unsigned long pid = PyLong_AsUnsignedLong(arg);
    if (pid == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(pid <= UINT32_MAX && mp_pid_gone((uint32_t)pid));
}

static PyMethodDef sys_methods[] = {
#ifdef SYS_mbind
    {"mbind", ext_mbind, METH_VARARGS,
     "mbind($module, address, length, mode, nodes, /)\n--\n\n"
     "Set the NUMA policy `mode` (MPOL_DEFAULT 0, PREFERRED 1, BIND 2, INTERLEAVE 3, LOCAL 4)\n"
     "with the node numbers `nodes` on [address, address + length).  OSError when the\n"
     "kernel refuses; ValueError for a node outside [0, 65536)."},
#endif
#ifdef SYS_get_mempolicy
    {"get_mempolicy", ext_get_mempolicy, METH_O,
     "get_mempolicy($module, address, /)\n--\n\n"
     "(mode, nodes) of the NUMA policy of the page at `address` (MPOL_F_ADDR).  OSError\n"
     "when the kernel refuses (an address that is not mapped: EFAULT)."},
#endif
    {"mlock", ext_mlock, METH_VARARGS,
     "mlock($module, address, length, /)\n--\n\n"
     "Lock [address, address + length) in memory.  OSError when the kernel refuses\n"
     "(RLIMIT_MEMLOCK: ENOMEM or EPERM)."},
    {"pid_gone", ext_pid_gone, METH_O,
     "pid_gone($module, pid, /)\n--\n\n"
     "Whether process `pid` is gone: no such process, or a zombie none of whose threads\n"
     "runs.  False for a pid no process can have (0, above INT_MAX)."},
    {NULL, NULL, 0, NULL},
};

int mp_sys_ready(PyObject *module)
{
    return PyModule_AddFunctions(module, sys_methods);
}
