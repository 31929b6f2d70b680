/*
 * stress_common.h -- what every C stress test shares: a seeded generator, failure
 * reports that say where and after which operation, and an allocator that exits;
 * with mempool.h included first, the attacks on a valid state that check() must survive.
 * (Included by the stress tests in this folder; CI builds each test file on its own.)
 */
#ifndef MEMPOOL_STRESS_COMMON_H
#define MEMPOOL_STRESS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef unsigned long long ull;

static uint64_t g_rng;     /* splitmix64 state: set from the seed          */
static char g_ctx[512];    /* what the test is doing (strategy, run, step) */
static char g_op[256];     /* the last operation, for the failure report   */

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

#define FAIL(...)                                                                                \
    do {                                                                                         \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                     \
        fprintf(stderr, __VA_ARGS__);                                                            \
        fprintf(stderr, "\n  context: %s\n  last op: %s\n", g_ctx, g_op);                        \
        exit(1);                                                                                 \
    } while (0)
#define REQUIRE(cond, ...)                                                                       \
    do {                                                                                         \
        if (!(cond)) FAIL(__VA_ARGS__);                                                          \
    } while (0)

/* zeroed memory, or exit(2) */
static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}


/* The command line every stress test takes: [seed [scale]].  The default seed is fixed
 * so that CI repeats itself; pass another seed to explore.  Seeds the generator, prints
 * the banner, returns the scale (default 1; the test multiplies its work by it). */
static double stress_args(int argc, char **argv, const char *name, uint64_t default_seed,
                          uint64_t *seed)
{
    *seed = argc > 1 ? strtoull(argv[1], NULL, 0) : default_seed;
    double scale = argc > 2 ? strtod(argv[2], NULL) : 1.0;
    if (!(scale > 0)) {
        fprintf(stderr, "usage: %s [seed [scale > 0]]\n", name);
        exit(2);
    }
    g_rng = *seed;
    printf("%s: seed %llu scale %g\n", name, (ull)*seed, scale);
    return scale;
}

#ifdef MEMPOOL_H
#include <string.h>

/* ---- refusals every strategy gives ----------------------------------------------------- */
/* off starts no live range: free, size_of and realloc each say MP_ENOTALLOC */
static inline void expect_not_allocated(const mp_ops_t *ops, void *st, uint64_t off)
{
    uint64_t out;
    int rc = ops->free(st, off);
    REQUIRE(rc == MP_ENOTALLOC, "free(%llu) of a non-live offset = %d", (ull)off, rc);
    rc = ops->size_of(st, off, &out);
    REQUIRE(rc == MP_ENOTALLOC, "size_of(%llu) of a non-live offset = %d", (ull)off, rc);
    rc = ops->realloc(st, off, 1 + below(64), 1, &out);
    REQUIRE(rc == MP_ENOTALLOC, "realloc(%llu) of a non-live offset = %d", (ull)off, rc);
}

/* alloc of size 0 or with an alignment that is not a power of two, and (unless live is
 * MP_NO_SPACE) realloc of the live range at `live` to size 0 or align 3: MP_EINVAL */
static inline void expect_invalid_args(const mp_ops_t *ops, void *st, uint64_t live)
{
    static const uint64_t bad_align[] = {0, 3, 6, 12, 4097, UINT64_MAX};
    uint64_t out;
    REQUIRE(ops->alloc(st, 0, 1, &out) == MP_EINVAL, "alloc(0) not EINVAL");
    for (size_t k = 0; k < sizeof bad_align / sizeof bad_align[0]; k++)
        REQUIRE(ops->alloc(st, 1, bad_align[k], &out) == MP_EINVAL,
                "alloc(1, align %llu) not EINVAL", (ull)bad_align[k]);
    if (live != MP_NO_SPACE) {
        REQUIRE(ops->realloc(st, live, 0, 1, &out) == MP_EINVAL, "realloc(0) not EINVAL");
        REQUIRE(ops->realloc(st, live, 1, 3, &out) == MP_EINVAL, "realloc(align 3) not EINVAL");
    }
}

/* ---- attacks on a valid state ---------------------------------------------------------
 * check() must refuse every truncation and every flip in the bytes it fully covers, must
 * never crash on anything, and a state it accepts must keep working (its ops keep
 * check() passing).  The test names the bytes and the ops; the attacks are shared. */
typedef struct attack attack_t;
struct attack {
    const mp_ops_t *ops;
    const unsigned char *st;                  /* a valid state of len bytes           */
    uint64_t len;
    unsigned char *buf;                       /* len bytes of scratch: the attacked copy */
    uint64_t (*must_byte)(const attack_t *a); /* a random byte whose flips must be caught */
    void (*op)(const attack_t *a);            /* one random op on the state in buf     */
    void *ctx;                                /* the test's own model                  */
};

static inline void attack_expect(const attack_t *a, const void *st, uint64_t len, const char *what)
{
    char msg[256];
    snprintf(g_op, sizeof g_op, "%s", what);
    REQUIRE(a->ops->check(st, len, msg, sizeof msg) == MP_ECORRUPT,
            "check() accepted %s (state of %llu bytes)", what, (ull)a->len);
}

/* run `steps` random ops on the accepted state in buf, check() after each */
static inline void attack_exercise(const attack_t *a, int steps)
{
    char msg[256];
    for (int k = 0; k < steps; k++) {
        a->op(a);
        REQUIRE(a->ops->check(a->buf, a->len, msg, sizeof msg) == MP_OK,
                "an accepted state broke after an op: %s", msg);
    }
}

/* check() of the attacked state in buf says OK or CORRUPT (never anything else); an
 * accepted state must work for `steps` ops.  Returns 1 when it was accepted. */
static inline int attack_judge(const attack_t *a, int steps)
{
    char msg[256];
    int rc = a->ops->check(a->buf, a->len, msg, sizeof msg);
    REQUIRE(rc == MP_OK || rc == MP_ECORRUPT, "check returned %d", rc);
    if (rc != MP_OK) return 0;
    attack_exercise(a, steps);
    return 1;
}

/* every length from 0 up in random steps of 1..stride, and the last 24 short of len */
static inline void attack_truncated(const attack_t *a, uint64_t stride)
{
    char what[64];
    for (uint64_t n = 0; n < a->len; n += 1 + below(stride)) {
        snprintf(what, sizeof what, "a length of %llu", (ull)n);
        attack_expect(a, a->st, n, what);
    }
    for (uint64_t cut = 1; cut <= 24 && cut <= a->len; cut++) {
        snprintf(what, sizeof what, "a state %llu bytes short", (ull)cut);
        attack_expect(a, a->st, a->len - cut, what);
    }
}

/* `rounds` single-bit flips in bytes must_byte() names: each must be refused */
static inline void attack_flips(const attack_t *a, int rounds)
{
    char what[64];
    for (int r = 0; r < rounds; r++) {
        memcpy(a->buf, a->st, a->len);
        uint64_t byte = a->must_byte(a);
        unsigned bit = (unsigned)below(8);
        a->buf[byte] ^= (unsigned char)(1u << bit);
        snprintf(what, sizeof what, "a flip of bit %u in byte %llu", bit, (ull)byte);
        attack_expect(a, a->buf, a->len, what);
    }
}

/* `rounds` mutations of 1..6 places (a byte set to random, 0 or 0xff; an aligned word
 * set to a random or an index-shaped value): check() says OK or CORRUPT, and an
 * accepted state works for `steps` ops.  Returns how many were accepted. */
static inline uint64_t attack_mutations(const attack_t *a, int rounds, int steps)
{
    uint64_t accepted = 0;
    for (int r = 0; r < rounds; r++) {
        memcpy(a->buf, a->st, a->len);
        int n = 1 + (int)below(6);
        for (int k = 0; k < n; k++) {
            uint64_t pos = below(a->len);
            if (below(2)) {
                uint64_t c = below(3);
                a->buf[pos] = c == 0 ? (unsigned char)rnd() : c == 1 ? 0 : 0xff;
            } else {
                uint64_t v = below(2) ? rnd() : rnd() % 70;
                pos &= ~(uint64_t)7;
                if (pos + 8 <= a->len) memcpy(a->buf + pos, &v, below(2) ? 8 : 1);
            }
        }
        snprintf(g_op, sizeof g_op, "mutation %d of %d places", r, n);
        accepted += attack_judge(a, steps);
    }
    return accepted;
}

/* `rounds` states of random bytes, half of them behind the valid first head_bytes:
 * never a crash, an accepted one works.  Returns how many were accepted. */
static inline uint64_t attack_garbage(const attack_t *a, int rounds, uint64_t head_bytes, int steps)
{
    uint64_t accepted = 0;
    for (int r = 0; r < rounds; r++) {
        for (uint64_t b = 0; b < a->len; b++) a->buf[b] = (unsigned char)rnd();
        if (below(2)) memcpy(a->buf, a->st, head_bytes < a->len ? head_bytes : a->len);
        snprintf(g_op, sizeof g_op, "random bytes %d", r);
        accepted += attack_judge(a, steps);
    }
    return accepted;
}
#endif

#endif
