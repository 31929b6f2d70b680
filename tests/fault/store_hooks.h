/*
 * store_hooks.h -- the kill points of the fault-injection tests (fault_*.c): the core
 * is built with -fsanitize=kernel-address in call mode, so every store it makes first
 * calls __asan_storeN_noabort(addr); a store into [seg_lo, seg_hi) is counted in
 * *store_count, and the one numbered fault_at ends the process (_exit(77)) before it
 * happens.  MPI_FAULT_POINT (internal.h) reaches hit() through mpi_fault_point.
 * Include once, in the test's one translation unit.
 */
#ifndef MEMPOOL_FAULT_STORE_HOOKS_H
#define MEMPOOL_FAULT_STORE_HOOKS_H

#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

static char *seg_lo, *seg_hi;      /* the segment: stores there are kill points */
static long fault_at;              /* 0: count only                             */
static volatile long *store_count; /* in the segment's tail: read by the parent */

static inline void hit(uintptr_t a)
{
    if ((char *)a < seg_lo || (char *)a >= seg_hi || !store_count) return;
    long n = ++*store_count;
    if (fault_at && n == fault_at) _exit(77);
}
/* (the _noabort forms; the plain ones where -fno-sanitize-recover is given too) */
#define STORE_HOOK(n)                                                                          \
    void __asan_store##n##_noabort(uintptr_t a);                                               \
    void __asan_store##n##_noabort(uintptr_t a) { hit(a); }                                    \
    void __asan_load##n##_noabort(uintptr_t a);                                                \
    void __asan_load##n##_noabort(uintptr_t a) { (void)a; }                                    \
    void __asan_store##n(uintptr_t a);                                                         \
    void __asan_store##n(uintptr_t a) { hit(a); }                                              \
    void __asan_load##n(uintptr_t a);                                                          \
    void __asan_load##n(uintptr_t a) { (void)a; }
STORE_HOOK(1)
STORE_HOOK(2)
STORE_HOOK(4)
STORE_HOOK(8)
STORE_HOOK(16)
#undef STORE_HOOK
void __asan_storeN_noabort(uintptr_t a, size_t n);
void __asan_storeN_noabort(uintptr_t a, size_t n) { (void)n, hit(a); }
void __asan_loadN_noabort(uintptr_t a, size_t n);
void __asan_loadN_noabort(uintptr_t a, size_t n) { (void)a, (void)n; }
void __asan_storeN(uintptr_t a, size_t n);
void __asan_storeN(uintptr_t a, size_t n) { (void)n, hit(a); }
void __asan_loadN(uintptr_t a, size_t n);
void __asan_loadN(uintptr_t a, size_t n) { (void)a, (void)n; }
void __asan_handle_no_return(void);
void __asan_handle_no_return(void) {}
void mpi_fault_point(const void *addr);
void mpi_fault_point(const void *addr) { hit((uintptr_t)addr); }

#endif /* MEMPOOL_FAULT_STORE_HOOKS_H */
