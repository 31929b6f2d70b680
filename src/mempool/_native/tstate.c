/*
 * tstate.c -- the two words of CPython 3.11 that tell the NumPy handler, on its hot
 * path, that this thread holds the GIL (handler.c): the thread state that runs now (the
 * GIL holder's), _PyRuntime.gilstate.tstate_current, and this thread's own state, in
 * the thread-specific slot of PyGILState's key.  They are equal when this thread holds
 * the GIL, and neither is another thread's memory to read: the holder's state is
 * compared as a pointer, never read (a caller without the GIL that read it raced with
 * a holder exiting, which frees it).  They are equal otherwise only where PyGILState's
 * own check is wrong too: a state moved to another thread, or a slot left pointing at a
 * state another thread freed (CPython clears the slot when the owner deletes its state;
 * Py_FinalizeEx and zapthreads delete daemon threads' states from the main thread, and
 * an embedder may) whose memory a later state that holds the GIL reuses.  A runtime
 * finalized and initialized again makes the key anew and is not followed (NumPy does
 * not support that either).  A sub-interpreter's state is in no such slot: the
 * general way (native.h: mp_gil_held) sees to it.  Read inline, each is two or three
 * loads; the exported getters (_PyThreadState_UncheckedGet, PyGILState_GetThisThreadState
 * or pthread_getspecific) are calls through the PLT, which made the handler's fast
 * paths non-leaf functions (five registers saved and restored per call: ~100
 * instructions an np.empty / free pair, callgrind).
 *
 * The first word's place comes from CPython's own internal headers (installed with it;
 * this file alone is built as a core module to see them), so it is the running
 * interpreter's by construction; the slot's from the descriptors glibc exports for
 * libthread_db.  handler.c checks at import (and in a forked child) that the words hold
 * the importing thread's state, and takes the general way (PyGILState_Ensure) for every
 * call if not.  Other versions: NULL / -1 (from 3.12 the handler calls the getter of
 * this thread's own state).
 */
#define Py_BUILD_CORE_MODULE 1
#include "native.h"

#ifdef MP_TSTATE_WORD /* (native.h: where handler.c reads it inline) */
#include "internal/pycore_runtime.h"
#include <dlfcn.h>

const volatile uintptr_t *mp_tstate_slot(void)
{
    /* (an _Atomic uintptr_t in C11: the same word, read relaxed as CPython does) */
    return (const volatile uintptr_t *)(const void *)&_PyRuntime.gilstate.tstate_current._value;
}

/* glibc's layout, from the descriptors it exports for libthread_db (dlsym): the word
 * of a thread-specific key k < 32 is at *(self + spec) + k * size + data, where self is
 * the thread's struct pthread (%fs:16), spec the offset of its `specific` table, whose
 * first entry glibc points at the thread's first block of keys. */
static uint32_t tdb(const char *name, int i)
{
    const uint32_t *d = dlsym(RTLD_DEFAULT, name);
    return d ? d[i] : 0;
}

static uintptr_t self_word(size_t spec, size_t off)
{
    return *(const uintptr_t *)(*(const char *const *)(mp_fs16() + spec) + off);
}

int mp_own_tstate_word(size_t *spec, size_t *off)
{
    const Py_tss_t *k = &_PyRuntime.gilstate.autoTSSkey;
    uint32_t sp = tdb("_thread_db_pthread_specific", 2);
    uint32_t sp_bits = tdb("_thread_db_pthread_specific", 0);
    uint32_t data_bits = tdb("_thread_db_pthread_key_data_data", 0);
    uint32_t data = tdb("_thread_db_pthread_key_data_data", 2);
    uint32_t size = tdb("_thread_db_sizeof_pthread_key_data", 0);
    uint32_t whole = tdb("_thread_db_sizeof_pthread", 0);
    uintptr_t self = mp_fs16();
    if (!k->_is_initialized || k->_key >= 32 || sp_bits < 64 || data_bits != 64 ||
        data + 8 > size || size < 8 || (uintptr_t)self != (uintptr_t)pthread_self() ||
        (size_t)sp + 8 > whole)
        return -1;
    /* the first block is inside the thread's struct pthread */
    const char *first = *(const char *const *)(self + sp);
    if (first < (const char *)self || first + 32 * (size_t)size > (const char *)self + whole)
        return -1;
    /* the layout reads what pthread_getspecific returns: CPython's key (this thread's
     * state: the GIL is held), and a key of our own set, changed and cleared */
    size_t py = (size_t)k->_key * size + data;
    void *mine = pthread_getspecific(k->_key);
    if (!mine || mine != (void *)PyThreadState_Get() || self_word(sp, py) != (uintptr_t)mine)
        return -1;
    pthread_key_t t; /* (a process with 32 keys already: CPython's key was checked) */
    if (pthread_key_create(&t, NULL)) return -1;
    static int marks[2];
    int ok = 1;
    for (int i = 0; t < 32 && ok && i < 3; i++) {
        void *v = i < 2 ? (void *)&marks[i] : NULL;
        ok = pthread_setspecific(t, v) == 0 &&
             self_word(sp, (size_t)t * size + data) == (uintptr_t)v;
    }
    pthread_key_delete(t);
    if (!ok) return -1;
    *spec = sp;
    *off = py;
    return 0;
}
#else
const volatile uintptr_t *mp_tstate_slot(void) { return NULL; }
int mp_own_tstate_word(size_t *spec, size_t *off)
{
    (void)spec;
    (void)off;
    return -1;
}
#endif
