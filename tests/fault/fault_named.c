/*
 * fault_named.c -- pool.named's crash guarantee proved by fault injection, store by
 * store (built like fault_journal.c: every store of the core is a call to the hooks
 * below, and the process is ended before its N-th store into the file image).
 *
 * A file pool's image -- journal, directory root, TLSF state, shadow, data -- and the
 * calls the binding makes for named[k] = v (copy in: a data range, a record, the slot;
 * the first name makes the table; the 13th grows it; a replace frees the old ranges)
 * and del named[k] (the last name frees the table).  For each call: the "before" and
 * "after" images, then for N = 1 .. S (the call's stores) a child killed before its
 * N-th store, recovery as Pool.open does (mp_tx_recover over the undo range root ..
 * data end), and the requirement that the state is byte for byte before or after, the
 * shadow equal to it, the root the same side, mp_named_check clean, and every name
 * found with the bytes of that side.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "journal.h"
#include "mempool.h"
#include "named.h"

#include "store_hooks.h" /* the kill points */

/* image: journal (2048) | root (64) ... | state | shadow | data | counter */
#define CAP (1u << 18)
#define NAMES 16
static char *seg, *before, *after;
static uint64_t seg_len, st_len, st_off, data_off;
static mp_tx_t tx;
static mp_named_t dir;
#define LOG_CAP (MP_TX_OPS + 8) /* small: a checkpoint every few calls */
static int with_log;            /* argv[1] == "log": a redo log after the data (format 5) */

static void die(const char *why)
{
    fprintf(stderr, "fault_named: %s\n", why);
    exit(1);
}

static void bind(void)
{
    tx.nops = 0;
    mp_tx_setup(&tx, (mp_journal_t *)seg, &mp_tlsf_ops, seg + st_off, seg + st_off + st_len,
                st_len, seg + 2048, seg + data_off + CAP);
    if (with_log) mp_tx_set_log(&tx, seg + data_off + CAP, LOG_CAP);
    memset(&dir, 0, sizeof dir);
    dir.root = (mp_named_root_t *)(seg + 2048);
    dir.base = seg + data_off;
    dir.cap = CAP;
    dir.ops = &mp_tlsf_ops;
    dir.st = seg + st_off;
    dir.tx = &tx;
}

static void setup(void)
{
    st_len = (mp_tlsf_state_size(CAP, 512) + 63) & ~(uint64_t)63;
    st_off = 4096;
    data_off = (st_off + 2 * st_len + 4095) & ~(uint64_t)4095;
    seg_len = data_off + CAP + LOG_CAP * MP_TX_LOG_ENTRY + 64;
    seg = mmap(NULL, seg_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (seg == MAP_FAILED) die("mmap");
    before = malloc(seg_len);
    after = malloc(seg_len);
    if (!before || !after) die("malloc");
    store_count = (volatile long *)(seg + seg_len - 64);
    seg_lo = seg;
    seg_hi = seg + seg_len - 64;
    mp_journal_init((mp_journal_t *)seg);
    mp_named_root_init((mp_named_root_t *)(seg + 2048));
    if (mp_tlsf_init(seg + st_off, CAP, 512)) die("init");
    memcpy(seg + st_off + st_len, seg + st_off, st_len);
    bind();
}

static void name_of(int i, char *out) { snprintf(out, 16, "name-%d", i & 0xffff); }

/* what the binding's _named_put does for a copy of len bytes of `fill` */
static void put(int i, uint64_t len, int fill)
{
    char name[16];
    name_of(i, name);
    uint32_t n = (uint32_t)strlen(name);
    uint64_t h = mp_named_hash(name, n), slot, old, data, rec, rlen = MP_NAMED_REC_HEAD + 16 + n + 3;
    char msg[200];
    int exists = mp_named_find(&dir, name, n, h, &slot, &old, msg, sizeof msg) == MP_OK;
    mp_tx_begin(&tx);
    if (mp_named_alloc(&dir, len, 64, &data) || mp_named_alloc(&dir, rlen, 8, &rec)) die("alloc");
    memset(dir.base + data, fill, len);
    mp_named_rec_t *r = (mp_named_rec_t *)(dir.base + rec);
    memset(r, 0, rlen);
    r->magic = MP_NAMED_REC_MAGIC;
    r->hash = h;
    r->data = data;
    r->dsize = len;
    r->view = data;
    r->ndim = 1;
    r->name_len = n;
    r->dtype_len = 3;
    r->size = rlen;
    memcpy((char *)r + MP_NAMED_REC_HEAD + 16, name, n);
    if (exists) {
        uint64_t od = ((mp_named_rec_t *)(dir.base + old))->data;
        mp_named_replace(&dir, slot, rec);
        mp_named_free(&dir, old);
        mp_named_free(&dir, od);
    } else if (mp_named_insert(&dir, h, rec)) {
        die("insert");
    }
    mp_tx_commit(&tx);
}

static void del(int i)
{
    char name[16], msg[200];
    name_of(i, name);
    uint32_t n = (uint32_t)strlen(name);
    uint64_t slot, rec;
    if (mp_named_find(&dir, name, n, mp_named_hash(name, n), &slot, &rec, msg, sizeof msg))
        die("del: absent");
    uint64_t data = ((mp_named_rec_t *)(dir.base + rec))->data;
    mp_tx_begin(&tx);
    mp_named_remove(&dir, slot);
    mp_named_free(&dir, rec);
    mp_named_free(&dir, data);
    mp_tx_commit(&tx);
}

/* the names as seen: for each, -1 when absent, else the fill byte (all bytes equal) */
static void seen(int *out)
{
    char msg[200];
    if (mp_named_check(&dir, msg, sizeof msg)) die(msg);
    for (int i = 0; i < NAMES; i++) {
        char name[16];
        name_of(i, name);
        uint32_t n = (uint32_t)strlen(name);
        uint64_t slot, rec;
        int rc = mp_named_find(&dir, name, n, mp_named_hash(name, n), &slot, &rec, msg, sizeof msg);
        out[i] = -1;
        if (rc == MP_ENOTALLOC) continue;
        if (rc) die(msg);
        const mp_named_rec_t *r = (const mp_named_rec_t *)(dir.base + rec);
        const unsigned char *d = (const unsigned char *)dir.base + r->data;
        for (uint64_t k = 1; k < r->dsize; k++)
            if (d[k] != d[0]) die("a named range's bytes are torn");
        out[i] = d[0];
    }
}

typedef struct {
    const char *what;
    int op, i, fill; /* op 0 put, 1 del */
} call_t;

static void run(const call_t *c)
{
    if (c->op == 0) put(c->i, 100 + 8 * (uint64_t)c->i, c->fill);
    else del(c->i);
}

static long points_total;

static void sweep(const call_t *c)
{
    int sb[NAMES], sa[NAMES], s[NAMES];
    memcpy(before, seg, seg_len);
    bind();
    seen(sb);
    *store_count = 0;
    fault_at = 0;
    pid_t pid = fork();
    if (pid == 0) {
        run(c);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) die("the call itself failed");
    long S = *store_count;
    memcpy(after, seg, seg_len);
    seen(sa);
    for (long N = 1; N <= S; N++) {
        memcpy(seg, before, seg_len);
        *store_count = 0;
        fault_at = N;
        pid = fork();
        if (pid == 0) {
            bind();
            run(c);
            _exit(0);
        }
        waitpid(pid, &status, 0);
        fault_at = 0;
        bind();
        char rmsg[160];
        if (mp_tx_recover(&tx, rmsg, sizeof rmsg) < 0) die(rmsg);
        int b = !memcmp(seg + st_off, before + st_off, st_len) &&
                !memcmp(seg + 2048, before + 2048, 64);
        int a = !memcmp(seg + st_off, after + st_off, st_len) &&
                !memcmp(seg + 2048, after + 2048, 64);
        if (!a && !b) {
            fprintf(stderr, "%s: killed at store %ld of %ld: neither before nor after\n",
                    c->what, N, S);
            exit(1);
        }
        if (mp_tx_verify(&tx, seg + st_off, seg + st_off + st_len, st_len, rmsg, sizeof rmsg))
            die(rmsg);
        seen(s);
        if (memcmp(s, b ? sb : sa, sizeof s)) {
            fprintf(stderr, "%s: killed at store %ld: the names are not the %s side's\n",
                    c->what, N, b ? "before" : "after");
            exit(1);
        }
    }
    memcpy(seg, after, seg_len);
    bind();
    points_total += S;
    printf("  %-40s %ld kill points\n", c->what, S);
}

int main(int argc, char **argv)
{
    with_log = argc > 1 && strcmp(argv[1], "log") == 0;
    setup();
    const call_t first = {"put: the first name (makes the table)", 0, 0, 1};
    sweep(&first);
    for (int i = 1; i < 12; i++) put(i, 100 + 8 * (uint64_t)i, i + 1);
    const call_t calls[] = {
        {"put: the 13th name (grows the table)", 0, 12, 13},
        {"put: replace a name", 0, 3, 99},
        {"del: a name", 1, 5, 0},
        {"put: into a tombstone's place", 0, 5, 55},
    };
    for (size_t k = 0; k < sizeof calls / sizeof *calls; k++) sweep(&calls[k]);
    for (int i = 0; i < NAMES; i++)
        if (i != 7) {
            char name[16], msg[200];
            uint64_t slot, rec;
            name_of(i, name);
            uint32_t n = (uint32_t)strlen(name);
            if (mp_named_find(&dir, name, n, mp_named_hash(name, n), &slot, &rec, msg,
                              sizeof msg) == MP_OK)
                del(i);
        }
    const call_t last = {"del: the last name (frees the table)", 1, 7, 0};
    sweep(&last);
    if (dir.root->table != MP_NAMED_NONE) die("the table outlived the last name");
    printf("fault_named: tlsf%s, %ld kill points, every one before or after\n",
           with_log ? " with a redo log" : "", points_total);
    return 0;
}
