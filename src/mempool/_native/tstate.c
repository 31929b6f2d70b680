/*
 * tstate.c -- where CPython 3.11 keeps the thread state that runs now (the GIL's
 * holder's): _PyRuntime.gilstate.tstate_current, for the NumPy handler's "this thread
 * holds the GIL" test on its hot path (handler.c).  Read there inline, it is two loads;
 * the exported _PyThreadState_UncheckedGet() reads the same word behind a call through
 * the PLT, which made the handler's fast paths non-leaf functions (five registers saved
 * and restored per call: ~40 instructions an np.empty / free pair, callgrind).
 *
 * The layout comes from CPython's own internal headers (installed with it; this file
 * alone is built as a core module to see them), so it is the running interpreter's
 * by construction; handler.c still checks at import that the word holds the importing
 * thread's state, and takes the general way (PyGILState_Ensure) for every call if not.
 * Other versions: NULL (the handler calls the public getter).
 */
#define Py_BUILD_CORE_MODULE 1
#include "native.h"

#ifdef MP_TSTATE_WORD /* (native.h: where handler.c reads it inline) */
#include "internal/pycore_runtime.h"

const volatile uintptr_t *mp_tstate_slot(void)
{
    /* (an _Atomic uintptr_t in C11: the same word, read relaxed as CPython does) */
    return (const volatile uintptr_t *)(const void *)&_PyRuntime.gilstate.tstate_current._value;
}
#else
const volatile uintptr_t *mp_tstate_slot(void) { return NULL; }
#endif
