/*
 * core.c -- what every strategy shares: the registry of operation tables, the
 * head validation that precedes any deep check, the bytes available of any state,
 * the default node budget, and the debug build's checks (internal.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static const mp_ops_t *const registry[] = {
#define MP_REGISTRY_(KIND, sname, number) [MP_KIND_##KIND] = &mp_##sname##_ops,
    MP_STRATEGIES(MP_REGISTRY_)
#undef MP_REGISTRY_
};

const mp_ops_t *mp_ops_by_kind(unsigned kind)
{
    if (kind >= sizeof registry / sizeof registry[0]) return NULL;
    return registry[kind];
}

#ifdef MP_DEBUG
static const mp_ops_t *const raw_registry[] = {
#define MP_RAW_REGISTRY_(KIND, sname, number) [MP_KIND_##KIND] = &mpi_##sname##_ops_raw,
    MP_STRATEGIES(MP_RAW_REGISTRY_)
#undef MP_RAW_REGISTRY_
};

const mp_ops_t *mpi_ops_raw(const mp_ops_t *ops)
{
    const mp_ops_t *raw = ops->kind < sizeof raw_registry / sizeof raw_registry[0]
                              ? raw_registry[ops->kind]
                              : NULL;
    return raw && ops == mp_ops_by_kind(ops->kind) ? raw : ops;
}

void mpi_assert_fail(const char *cond, const char *file, int line, const char *func)
{
    fprintf(stderr, "mempool: assertion failed: %s (%s:%d, %s)\n", cond, file, line, func);
    abort();
}

int mpi_debug_after(const mp_ops_t *raw, const void *st, const char *what, int rc)
{
    char msg[512];
    if (raw->check(st, ((const mp_head_t *)st)->state_size, msg, sizeof msg) != MP_OK) {
        fprintf(stderr, "mempool: %s state broken after %s (returned %d): %s\n", raw->name, what,
                rc, msg);
        abort();
    }
    return rc;
}
#else
const mp_ops_t *mpi_ops_raw(const mp_ops_t *ops) { return ops; }
#endif

int mp_head_validate(const void *st, uint64_t state_len, const mp_ops_t *ops, char *msg,
                     size_t msglen)
{
    const mp_head_t *h = st;
    if (state_len < sizeof(mp_head_t)) {
        snprintf(msg, msglen, "state of %llu bytes is shorter than its head",
                 (unsigned long long)state_len);
        return MP_ECORRUPT;
    }
    if (h->magic != MP_STATE_MAGIC) {
        snprintf(msg, msglen, "bad state magic 0x%08x", h->magic);
        return MP_ECORRUPT;
    }
    if (h->kind != ops->kind) {
        const mp_ops_t *other = mp_ops_by_kind(h->kind);
        snprintf(msg, msglen, "state is a %s state, not %s", other ? other->name : "unknown",
                 ops->name);
        return MP_ECORRUPT;
    }
    if (h->version != MP_STATE_VERSION) {
        snprintf(msg, msglen, "state format version %u, this build reads %u", h->version,
                 MP_STATE_VERSION);
        return MP_ECORRUPT;
    }
    if (h->state_size != state_len) {
        snprintf(msg, msglen, "state says %llu bytes, got %llu", (unsigned long long)h->state_size,
                 (unsigned long long)state_len);
        return MP_ECORRUPT;
    }
    return MP_OK;
}

uint64_t mp_head_state_size(const mp_head_t *h)
{
    switch (h->kind) {
    case MP_KIND_TLSF: /* (head.param[1]: the layout, tlsf.c) */
        if (h->param[1] > 1) return 0;
        return h->param[1] ? mp_tlsf_compact_state_size(h->capacity, h->param[0])
                           : mp_tlsf_state_size(h->capacity, h->param[0]);
    case MP_KIND_BESTFIT: return mp_bestfit_state_size(h->capacity, h->param[0]);
    case MP_KIND_BUMP: return mp_bump_state_size(h->capacity, h->param[0]);
    case MP_KIND_HEAP: return mp_heap_state_size(h->capacity, h->param[0], h->param[1]);
    default: return 0;
    }
}

uint64_t mpi_head_available(const void *st)
{
    const mp_head_t *h = st;
    return h->capacity - h->used;
}

/* One node per 8 KiB of capacity, at least 32 and at most 2^20, and never more than
 * the capacity (every range holds >= 1 byte, so a pool of n bytes never needs more
 * than n nodes).  A TLSF node costs ~40 B and ~12-24 B of hash slots: ~0.9% of the
 * capacity, plus the fixed bins (7.9 KB TLSF, 15.6 KB BestFit; a compact TLSF below
 * 1 MiB: mp_tlsf_compact_max_blocks). */
uint64_t mp_default_max_blocks(uint64_t capacity)
{
    uint64_t n = capacity / 8192;
    if (n < 32) n = 32;
    if (n > ((uint64_t)1 << 20)) n = (uint64_t)1 << 20;
    if (n > capacity) n = capacity;
    return n;
}

uint64_t mp_tlsf_compact_max_blocks(uint64_t capacity)
{
    uint64_t n = capacity / 8192;
    if (n < 8) n = 8;
    return n > capacity ? capacity : n;
}

uint64_t mp_fixed_max_blocks(uint64_t capacity)
{
    uint64_t n = mp_default_max_blocks(capacity);
    if (n < 1024) n = capacity < 1024 ? capacity : 1024;
    return n;
}
