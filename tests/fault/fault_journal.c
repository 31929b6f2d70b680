/*
 * fault_journal.c -- the crash guarantee proved by fault injection, store by store.
 *
 * Built by .ci/run with the core compiled under GCC's kernel-address instrumentation
 * in call mode (-fsanitize=kernel-address --param asan-instrumentation-with-call-
 * threshold=0): every store the core makes first calls __asan_storeN_noabort(addr),
 * defined below.  A process that is killed stops between two stores, so "killed at
 * any instruction of a call" is "killed before its N-th store into the shared
 * memory", for every N.  For each strategy and each kind of state-changing call of
 * a file pool and of a shared pool, this program
 *
 *   1. builds a state with live ranges and registry entries (the "before" image),
 *   2. runs the call to its end in a child: the "after" image and the number S of
 *      stores the call makes into the segment (state, shadow, journal, registry),
 *   3. for N = 1 .. S: restores "before", forks a child that runs the call and
 *      _exit()s at its N-th store, then recovers as the next process would (a file
 *      pool: mp_tx_recover; a shared pool: mp_shared_recover, which also recounts the
 *      registry) and requires the strategy state to be byte for byte "before" or
 *      "after", the shadow equal to it, the registry the same side in every field a
 *      handle or reclaim reads, and mp_shared_check() clean;
 *   4. also kills the recovery itself at each of its stores (for the kill points in
 *      the middle of the call) and recovers again.
 * Three journals each: without a redo log (formats 3 and 4: the operations replay on
 * the shadow at each commit), with one whose entries the call appends to (format 5:
 * "the shadow equal to it" is then the shadow with the log replayed on it,
 * mp_tx_verify), and with one so nearly full that the call begins with a checkpoint.
 * Any state that is neither before nor after fails the run.  It prints, per strategy,
 * the calls and kill points covered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "journal.h"
#include "mempool.h"
#include "shared.h"

#include "store_hooks.h" /* the kill points */

/* ---- the segment: state | shadow | log | registry | counter --------------------------------- */
#define CAP (1u << 20)
#define LOG_ROOM 256 /* entries (populate makes 14, a call at most MP_TX_OPS) */
static int logmode;   /* 0: no redo log; 1: a roomy one; 2: one the call checkpoints first */
static const char *log_names[] = {"", "+log", "+ckpt"};
#define MAX_ENTRIES 1024 /* reserved; MP_REG_COMMIT0 (256) committed: C_GROW grows it */
static char *seg, *before, *after, *mid;
static uint64_t seg_len, st_len, ctl_len;
static void *st, *shadow;
static mp_shared_ctl_t *ctl;
static mp_tx_t tx;
/* A call may name the kill point whose recovery is swept too (else its middle one):
 * C_FRESH's, where the count of entries is above the top a roll-back puts back. */
static volatile long *nest_mark;
static mp_shared_bind_t bind; /* tx's registry, in a shared pool (a roll-back rebuilds it) */
static int with_registry;

static void die(const char *why)
{
    fprintf(stderr, "fault_journal: %s\n", why);
    exit(1);
}

static const char *strategy_names[] = {"tlsf", "bestfit", "buddy", "bitmap", "slab", "bump", "heap"};

static const mp_ops_t *setup(int k)
{
    uint64_t mb = 256;
    if (seg) munmap(seg, seg_len);
    const mp_ops_t *ops[] = {&mp_tlsf_ops, &mp_bestfit_ops, &mp_buddy_ops, &mp_bitmap_ops,
                             &mp_slab_ops, &mp_bump_ops, &mp_heap_ops};
    switch (k) {
    case 0: st_len = mp_tlsf_state_size(CAP, mb); break;
    case 1: st_len = mp_bestfit_state_size(CAP, mb); break;
    case 2: st_len = mp_buddy_state_size(CAP, 64, 0, 2); break;
    case 3: st_len = mp_bitmap_state_size(CAP, 64, 0); break;
    case 4: st_len = mp_slab_state_size(CAP, 64, 4096); break;
    case 5: st_len = mp_bump_state_size(CAP, mb); break;
    default: st_len = mp_heap_state_size(CAP, 4096, mb); break;
    }
    ctl_len = mp_shared_ctl_size(MAX_ENTRIES, 16);
    uint64_t sl = (st_len + 63) & ~(uint64_t)63, ll = (uint64_t)LOG_ROOM * MP_TX_LOG_ENTRY;
    seg_len = 2 * sl + ll + ctl_len + 64;
    seg = mmap(NULL, seg_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (seg == MAP_FAILED) die("mmap");
    free(before), free(after), free(mid);
    before = malloc(seg_len), after = malloc(seg_len), mid = malloc(seg_len);
    st = seg;
    shadow = seg + sl;
    ctl = (mp_shared_ctl_t *)(seg + 2 * sl + ll);
    store_count = (volatile long *)(seg + 2 * sl + ll + ctl_len);
    nest_mark = store_count + 1;
    seg_lo = seg;
    seg_hi = (char *)store_count; /* the counter itself is no kill point */
    int rc;
    switch (k) {
    case 0: rc = mp_tlsf_init(st, CAP, mb); break;
    case 1: rc = mp_bestfit_init(st, CAP, mb); break;
    case 2: rc = mp_buddy_init(st, CAP, 64, 0, 2); break;
    case 3: rc = mp_bitmap_init(st, CAP, 64, 0); break;
    case 4: rc = mp_slab_init(st, CAP, 64, 4096); break;
    case 5: rc = mp_bump_init(st, CAP, mb); break;
    default: rc = mp_heap_init(st, CAP, 4096, mb); break;
    }
    if (rc || mp_shared_ctl_init(ctl, MAX_ENTRIES, 16, 1000000000ull)) die("init");
    memcpy(shadow, st, st_len);
    mp_tx_setup(&tx, mp_shared_journal(ctl), ops[k], st, shadow, st_len, ctl, (char *)ctl + ctl_len);
    if (with_registry) mp_shared_bind_tx(&bind, ctl, ctl_len, &tx); /* as the binding does */
    /* +ckpt: populate's 14 operations fit, the call's begin finds less than a
     * transaction's room (MP_TX_OPS) left and checkpoints first */
    if (logmode) mp_tx_set_log(&tx, seg + 2 * sl, logmode == 1 ? LOG_ROOM : MP_TX_OPS + 13);
    return ops[k];
}

/* ---- the calls under test ----------------------------------------------------------------
 * Each runs as the binding does: one transaction (begin ... commit) around the strategy
 * operations and the registry updates of one locked call.  Sizes fit every strategy
 * (a Slab item is 64 bytes). */
#define LIVE 12
static uint64_t lease_token[2];
static uint64_t live_off[LIVE];
static uint32_t live_entry[LIVE];
#define ALIVE 1001u /* pids: a live process, and one that died */
#define DEAD 1002u

/* The "before" state: LIVE ranges, every third owned by DEAD, the others by ALIVE; a
 * few borrowed by the other pid. */
static void populate(void)
{
    uint64_t tag = 1;
    mp_shared_reserve_tags(ctl, 1000);
    for (int k = 0; k < LIVE; k++) {
        mp_tx_begin(&tx);
        if (mp_tx_alloc(&tx, 24 + 8 * (uint64_t)(k % 5), 8, &live_off[k])) die("populate alloc");
        if (with_registry &&
            mp_reg_add(ctl, live_off[k], 24, k % 3 ? ALIVE : DEAD, tag++, &live_entry[k]))
            die("populate reg_add");
        if (with_registry && k % 4 == 1) {
            int disp;
            if (mp_ref_take(ctl, live_entry[k], 0, k % 3 ? DEAD : ALIVE, &disp)) die("take");
        }
        mp_tx_commit(&tx);
    }
    if (with_registry) { /* two handles in flight: one to adopt, one past its deadline */
        mp_tx_begin(&tx);
        if (mp_lease_add(ctl, &tx, live_entry[7], 8, ALIVE, &lease_token[0]) ||
            mp_lease_add(ctl, &tx, live_entry[9], 10, DEAD, &lease_token[1]))
            die("lease_add");
        mp_tx_commit(&tx);
    }
    /* a hole or two in the middle, so that frees merge and allocations split */
    for (int k = 3; k < LIVE; k += 5) {
        mp_tx_begin(&tx);
        if (with_registry) mp_reg_drop(ctl, live_entry[k]);
        mp_tx_free(&tx, live_off[k]);
        live_off[k] = MP_NO_SPACE;
        mp_tx_commit(&tx);
    }
}

enum call { C_ALLOC, C_FREE, C_REALLOC_GROW, C_REALLOC_SHRINK, C_TAKE, C_RELEASE_BORROWED,
            C_RECLAIM, C_FLUSH, C_LEASE, C_ADOPT, C_EXPIRE, C_GROW, C_FRESH, NCALLS };
static const char *call_names[] = {"alloc", "free", "realloc+", "realloc-", "take",
                                   "release_borrowed", "reclaim", "flush", "lease", "adopt",
                                   "expire", "grow", "fresh"};

static void run_call(enum call c)
{
    uint64_t off;
    int disp;
    mp_tx_begin(&tx);
    switch (c) {
    case C_ALLOC:
        if (mp_tx_alloc(&tx, 40, 16, &off) == MP_OK && with_registry) {
            uint32_t e;
            if (mp_reg_add(ctl, off, 40, ALIVE, 900, &e)) die("reg_add");
        }
        break;
    case C_FREE:
        if (with_registry) mp_reg_drop(ctl, live_entry[0]);
        mp_tx_free(&tx, live_off[0]);
        break;
    case C_REALLOC_GROW:
    case C_REALLOC_SHRINK:
        if (mp_tx_realloc(&tx, live_off[2], c == C_REALLOC_GROW ? 64 : 8, 8, &off) == MP_OK &&
            with_registry && off != live_off[2])
            mp_reg_move(ctl, live_entry[2], off, 64);
        break;
    case C_TAKE:
        mp_ref_take(ctl, live_entry[4], 0, ALIVE, &disp);
        break;
    case C_RELEASE_BORROWED: /* the last reference: the range goes */
        if (mp_ref_release(ctl, live_entry[5], DEAD, 1) < 0) {} /* (owner's, lock-free: none) */
        if (mp_ref_release_borrowed(ctl, live_entry[5], DEAD) == 1) {
            mp_reg_drop(ctl, live_entry[5]);
            mp_tx_free(&tx, live_off[5]);
        }
        break;
    case C_RECLAIM: {
        uint64_t released;
        mp_shared_reclaim(ctl, &tx, DEAD, &released);
        break;
    }
    case C_LEASE: { /* a handle pickled */
        uint64_t token;
        mp_lease_add(ctl, &tx, live_entry[4], 5, ALIVE, &token);
        break;
    }
    case C_ADOPT: /* ... and unpickled */
        mp_lease_adopt(ctl, lease_token[0], live_entry[7], 8, DEAD);
        break;
    case C_EXPIRE: /* every lease past its deadline released (the clock moved on) */
        mp_lease_expire_at(ctl, &tx, ALIVE, UINT64_MAX - 1);
        break;
    case C_GROW: /* the registry grows into its reserve (the index rebuilt twice as
                  * large), then an allocation, as the binding's reg_room does */
        if (mp_reg_grow(ctl) != MP_OK) die("reg_grow");
        if (mp_tx_alloc(&tx, 40, 16, &off) == MP_OK) {
            uint32_t e;
            if (mp_reg_add(ctl, off, 40, ALIVE, 900, &e)) die("reg_add after grow");
        }
        break;
    case C_FRESH: /* an entry never used: allocations empty the registry's free list,
                   * one more raises top, and it is dropped again in the same call (a
                   * roll-back puts top back below the count that counted it) */
    {
        uint32_t top = 0; /* populate's entries were the first ones: a fresh one is above */
        for (int k = 0; k < LIVE; k++)
            if (live_entry[k] + 1 > top) top = live_entry[k] + 1;
        for (uint64_t tag = 900;; tag++) {
            uint32_t e;
            mp_tx_room(&tx, 2, 8);
            if (mp_tx_alloc(&tx, 40, 16, &off) != MP_OK) die("alloc (fresh)");
            if (mp_reg_add(ctl, off, 40, ALIVE, tag, &e)) die("reg_add (fresh)");
            if (e < top) continue; /* (one of the free list's) */
            *nest_mark = *store_count + 1; /* killed here: counted, top to be put back */
            mp_reg_drop(ctl, e);
            mp_tx_free(&tx, off);
            break;
        }
        break;
    }
    case C_FLUSH: /* a cache given back: three ranges disposed in one call */
        for (int k = 6; k <= 10; k += 2) {
            if (live_off[k] == MP_NO_SPACE) continue;
            mp_tx_room(&tx, 1, 8);
            if (with_registry) mp_reg_drop(ctl, live_entry[k]);
            mp_tx_free(&tx, live_off[k]);
        }
        break;
    default: break;
    }
    mp_tx_commit(&tx);
}

/* ---- comparing states ------------------------------------------------------------------ */
/* What a handle, a release or reclaim reads of an entry (the index and the free list
 * are derived: rebuilt from the entries after a rollback). */
static int same_registry(const char *a_img, const char *b_img)
{
    const mp_shared_ctl_t *ca = (const mp_shared_ctl_t *)(a_img + ((char *)ctl - seg));
    const mp_shared_ctl_t *cb = (const mp_shared_ctl_t *)(b_img + ((char *)ctl - seg));
    /* entries at or past top were never handed out: their words are what a rolled-back
     * add left (shared.c: only the offset and top are logged), read by no one */
    uint32_t top = mp_reg_top(ca);
    if (top != mp_reg_top(cb)) return 0;
    for (uint32_t i = 0; i < top; i++) {
        const mp_entry_t *x = mp_reg_entry((mp_shared_ctl_t *)ca, i);
        const mp_entry_t *y = mp_reg_entry((mp_shared_ctl_t *)cb, i);
        if ((x->offset == UINT64_MAX) != (y->offset == UINT64_MAX)) return 0;
        if (x->offset == UINT64_MAX) continue;
        uint64_t rx = x->state & 0xffffffffull, ry = y->state & 0xffffffffull;
        if (x->offset != y->offset || x->tag != y->tag || x->size != y->size || rx != ry ||
            x->overflow != y->overflow || memcmp(x->holder, y->holder, sizeof x->holder))
            return 0;
        /* the owner matters while it holds its reference, or caches the range */
        if (((rx & 0x80000000u) || !(rx & 0x7fffffffu)) && (x->state >> 32) != (y->state >> 32))
            return 0;
    }
    uint64_t la[4], lb[4]; /* leases in flight and expired (each entry's are in its refs) */
    mp_lease_stats(ca, la);
    mp_lease_stats(cb, lb);
    return la[0] == lb[0] && la[2] == lb[2];
}

static uint64_t checks;
static void verify(const char *what, long n)
{
    char msg[256];
    int b = !memcmp(st, before, st_len), a = !memcmp(st, after, st_len);
    if (!a && !b) {
        const mp_journal_t *mj = (const mp_journal_t *)(mid + ((char *)mp_shared_journal(ctl) - seg));
        uint64_t i = 0, i2 = 0;
        while (i < st_len && ((char *)st)[i] == before[i]) i++;
        while (i2 < st_len && ((char *)st)[i2] == after[i2]) i2++;
        fprintf(stderr, "first byte off after: %llu; mid==after there: %d; live now %llu after %llu\n", (unsigned long long)i2,
                mid[i2] == after[i2], (unsigned long long)((mp_head_t *)st)->live, (unsigned long long)((mp_head_t *)after)->live);
        fprintf(stderr, "%s, killed at store %ld: the state is neither before nor after (the dead "
                "call left phase %llu, %llu undo records; first byte off before: %llu)\n", what, n,
                (unsigned long long)mj->phase, (unsigned long long)mj->nundo, (unsigned long long)i);
        exit(1);
    }
    if (mp_tx_verify(&tx, st, shadow, st_len, msg, sizeof msg)) {
        fprintf(stderr, "%s, killed at store %ld: the shadow (and log) differ from the state: "
                "%s\n", what, n, msg);
        exit(1);
    }
    if (with_registry) {
        if (!(b && same_registry(seg, before)) && !(a && same_registry(seg, after))) {
            fprintf(stderr, "%s, killed at store %ld: the registry is not on the state's side "
                    "(state %s)\n", what, n, a ? "after" : "before");
            exit(1);
        }
        if (mp_shared_check(ctl, ctl_len, tx.ops, st, st_len, msg, sizeof msg)) {
            fprintf(stderr, "%s, killed at store %ld: %s\n", what, n, msg);
            exit(1);
        }
    } else if (tx.ops->check(st, st_len, msg, sizeof msg)) {
        fprintf(stderr, "%s, killed at store %ld: %s\n", what, n, msg);
        exit(1);
    }
    checks++;
}

/* Run f in a child that dies at store n (0: never); returns the stores counted. */
static long in_child(void (*f)(enum call), enum call c, long n)
{
    *store_count = 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        fault_at = n;
        f(c);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    if (!WIFEXITED(status)) die("a child died of a signal");
    int want = n ? 77 : 0;
    if (WEXITSTATUS(status) != want) {
        fprintf(stderr, "child exit %d, expected %d (kill point %ld)\n", WEXITSTATUS(status), want,
                n);
        exit(1);
    }
    return *store_count;
}

/* What an attach checks first, before any lock or recovery: a dead call's leftovers
 * (killed at store n), or a dead recovery's (killed at its store m, m > 0), must pass it
 * (the recovery under the lock then rolls them back or forward).  Shared pools only. */
static void attach_check(const char *what, long n, long m)
{
    char lm[256];
    if (!with_registry || !mp_shared_check_layout(ctl, ctl_len, lm, sizeof lm)) return;
    if (m) fprintf(stderr, "%s, killed at store %ld, its recovery at store %ld: an attach would "
                   "refuse the pool: %s\n", what, n, m, lm);
    else fprintf(stderr, "%s, killed at store %ld: an attach would refuse the pool: %s\n",
                 what, n, lm);
    exit(1);
}

static void recover_call(enum call c)
{
    (void)c;
    char msg[256];
    if (with_registry) {
        if (mp_shared_recover(ctl, &tx, msg, sizeof msg)) die(msg);
    } else if (mp_tx_recover(&tx, msg, sizeof msg) < 0) {
        die(msg);
    }
}

int main(void)
{
    long total = 0;
    for (int reg = 0; reg < 2; reg++) {
        with_registry = reg;
        for (int lm = 0; lm < 3; lm++)
        for (int k = 0; k < 7; k++) {
            logmode = lm;
            long points = 0, nested = 0;
            for (int c = 0; c < NCALLS; c++) {
                if (!reg && c >= C_TAKE && c != C_FLUSH) continue; /* (C_GROW: registry) */
                setup(k);
                populate();
                memcpy(before, seg, seg_len);
                *nest_mark = 0;
                long s = in_child(run_call, (enum call)c, 0); /* to the end: "after" */
                long nest = *nest_mark ? *nest_mark : (s + 1) / 2;
                memcpy(after, seg, seg_len);
                if (s == 0) die("a call made no store");
                {
                    const char *jo = (const char *)mp_shared_journal(ctl);
                    const mp_journal_t *jb = (const mp_journal_t *)(before + (jo - seg));
                    const mp_journal_t *ja = (const mp_journal_t *)(after + (jo - seg));
                    if ((logmode == 2) != (ja->checkpoints > jb->checkpoints))
                        die(logmode == 2 ? "+ckpt: the call made no checkpoint"
                                         : "a checkpoint where none was due");
                }
                if (getenv("FJ_VERBOSE")) printf("    %s %s %s: %ld stores\n", reg ? "shared" : "file", strategy_names[k], call_names[c], s);
                char what[96];
                snprintf(what, sizeof what, "%s%s %s %s", reg ? "shared" : "file", log_names[lm],
                         strategy_names[k], call_names[c]);
                for (long n = 1; n <= s; n++) {
                    memcpy(seg, before, seg_len);
                    in_child(run_call, (enum call)c, n);
                    memcpy(mid, seg, seg_len); /* a dead call's leftovers */
                    attach_check(what, n, 0);
                    recover_call((enum call)c);
                    verify(what, n);
                    points++;
                    /* the recovery killed too, at each of its stores (not after a
                     * checkpoint: the same recovery as without a log, swept there) */
                    if (n == nest && logmode != 2) {
                        memcpy(seg, mid, seg_len);
                        long r = in_child(recover_call, (enum call)c, 0);
                        for (long m = 1; m <= r; m++) {
                            memcpy(seg, mid, seg_len);
                            in_child(recover_call, (enum call)c, m);
                            attach_check(what, n, m);
                            recover_call((enum call)c);
                            verify(what, n);
                            nested++;
                        }
                    }
                }
            }
            char kind[24];
            snprintf(kind, sizeof kind, "%s%s", reg ? "shared" : "file", log_names[lm]);
            printf("  %-11s %-8s %6ld kill points in calls, %6ld in recoveries: all before or after\n",
                   kind, strategy_names[k], points, nested);
            total += points + nested;
        }
    }
    printf("fault_journal ok: %ld kill points, %llu states checked, 0 neither before nor after\n",
           total, (unsigned long long)checks);
    return 0;
}
