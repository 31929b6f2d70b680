/*
 * named.h -- a directory of named ranges kept in a pool's own memory (named.c): the
 * storage behind pool.named.  Pool-level, above the strategy: the directory's table
 * and records are ranges the strategy handed out like any other, and the directory
 * reads and writes them (a strategy never reads the memory it manages; this is not a
 * strategy).  Offsets only, so the same bytes serve a private pool, a file pool after
 * reopen and a shared pool in every attached process.
 *
 *   root (64 bytes, found where the pool kind keeps it: a file's header page, a shared
 *   pool's control block, malloc'd memory in a private pool)
 *     magic | table | slots | count | tombs | gen | pad[2]
 *   table (a range, slots * 16 bytes, open addressing with linear probing)
 *     slot: hash (64-bit FNV-1a of the UTF-8 name) | ref (0 empty, 1 tombstone,
 *           else record offset + 2)
 *   record (a range, immutable once published)
 *     magic | hash | data | dsize | view | kind, ndim | name_len, dtype_len | size
 *     int64 shape[ndim], int64 strides[ndim], name bytes, dtype bytes
 *     data  the range the name owns (adopted or copied in); dsize its size_of
 *     view  byte offset of element 0 from the pool's byte 0
 *
 * Crash consistency: a change runs inside the caller's transaction (journal.h) when
 * it has one (file and shared pools): ranges come from mp_tx_alloc/free, new records
 * and tables are written out of place into ranges this very transaction allocated
 * (free before it, so a rollback makes their bytes irrelevant), and the only words
 * written in place -- the root's and one slot's -- go through mp_jset64.  So a kill
 * at any point leaves the directory and the strategy state both before or both after.
 *
 * Invariants (mp_named_check): magic; table == NONE iff slots == 0 iff count == 0 and
 * tombs == 0; slots a power of two >= 16; count + tombs < slots; the table is a live
 * range of size >= slots * 16; every used slot's record is a live range whose header
 * fits it and carries the slot's hash; used slots == count, tombstones == tombs.
 */
#ifndef MEMPOOL_NAMED_H
#define MEMPOOL_NAMED_H

#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include "mempool.h"

#define MP_NAMED_ROOT_BYTES 64
#define MP_NAMED_ROOT_OFFSET 3072 /* in a segment's header page (_segment.NAMED_ROOT_OFFSET) */
#define MP_NAMED_MAX_NAME 255 /* bytes of UTF-8 */
#define MP_NAMED_MAX_NDIM 64
#define MP_NAMED_MAX_DTYPE 4096
#define MP_NAMED_REC_HEAD 64
#define MP_NAMED_NONE UINT64_MAX
#define MP_NAMED_MAGIC 0x3144454d414e504dull /* "MPNAMED1" */
#define MP_NAMED_REC_MAGIC 0x31434552454d414eull /* "NAMEREC1" */

typedef struct mp_named_root {
    uint64_t magic, table, slots, count, tombs, gen, pad[2];
} mp_named_root_t;
_Static_assert(sizeof(mp_named_root_t) == MP_NAMED_ROOT_BYTES, "the root fills its room");

typedef struct mp_named_rec {
    uint64_t magic, hash, data, dsize, view;
    uint32_t kind, ndim, name_len, dtype_len;
    uint64_t size;
} mp_named_rec_t;
_Static_assert(sizeof(mp_named_rec_t) == MP_NAMED_REC_HEAD, "record head");

/* Where a directory lives and how its changes are made. */
typedef struct mp_named {
    mp_named_root_t *root;
    char *base;       /* byte 0 of the pool's data                                   */
    uint64_t cap;     /* its capacity                                                */
    const mp_ops_t *ops;
    void *st;         /* the strategy state (changed through tx when there is one)   */
    mp_tx_t *tx;      /* NULL: a private pool, plain stores                          */
    /* shared pools: what else a range allocated or freed by the directory needs (its
     * registry entry); NULL: nothing.  on_alloc returns MP_OK or an error (the caller
     * gives the range back). */
    int (*on_alloc)(void *arg, uint64_t off, uint64_t size);
    void (*on_free)(void *arg, uint64_t off);
    void *arg;
    /* this process's index of the directory's ranges (which offsets are a name's data,
     * which a record), made on demand and kept while the root's gen and table say the
     * directory has not changed: mp_named_owns / mp_named_meta in O(1); NULL: none */
    void *idx;
    uint64_t idx_asked; /* 1 + the root's gen at the last query the index did not serve:
                           the index is made at the second query with no change between
                           (a loop that changes the directory between queries walks) */
} mp_named_t;

void mp_named_root_init(mp_named_root_t *r);
uint64_t mp_named_hash(const void *name, size_t n);
/* Validate the root, the table and every record's head (bounded: slots steps). */
int mp_named_check(const mp_named_t *d, char *msg, size_t msglen);
/* Validate the root alone (cheap; at open/attach). */
int mp_named_check_root(const mp_named_t *d, char *msg, size_t msglen);
/* Find a name: MP_OK with *slot and *rec, MP_ENOTALLOC when absent, MP_ECORRUPT
 * (msg) for a table or record that is not one.  At most `slots` probes. */
int mp_named_find(const mp_named_t *d, const void *name, uint32_t n, uint64_t hash,
                  uint64_t *slot, uint64_t *rec, char *msg, size_t msglen);
/* Validate a record head at off (bounds, magic, sizes). */
int mp_named_rec_ok(const mp_named_t *d, uint64_t off, char *msg, size_t msglen);
/* Let the index go (the caller frees d). */
void mp_named_forget(mp_named_t *d);
/* Is `data` the range of some name?  1 / 0 / MP_ECORRUPT. */
int mp_named_owns(mp_named_t *d, uint64_t data);
/* Is `off` one of the directory's own ranges (its table or a record), which no Block
 * may hold?  1 / 0 / MP_ECORRUPT. */
int mp_named_meta(mp_named_t *d, uint64_t off);
/* Allocate and free ranges the way the directory does (through tx and the hooks). */
int mp_named_alloc(mp_named_t *d, uint64_t size, uint64_t align, uint64_t *off);
int mp_named_free(mp_named_t *d, uint64_t off);
/* Publish a new record (the name absent): grows the table when needed.  MP_OK, an
 * allocation error, or MP_ECORRUPT (MP_NAMED_FULL: a crafted table with more names
 * than its root counts had no slot to give); then nothing of the directory changed
 * (the caller undoes the allocations). */
#define MP_NAMED_FULL "named directory: the table holds more names than its root counts " \
                      "(no empty slot)"
int mp_named_insert(mp_named_t *d, uint64_t hash, uint64_t rec);
/* Fill the record at rec (rlen bytes allocated): the caller's bytes (name, dtype,
 * shape...) then the head naming the data range and the view's offset in it. */
void mp_named_rec_write(mp_named_t *d, uint64_t rec, const void *bytes, uint64_t rlen,
                        uint64_t hash, uint64_t data, uint64_t dsize, uint64_t view);
/* Point an existing slot at a new record. */
void mp_named_replace(mp_named_t *d, uint64_t slot, uint64_t rec);
/* Remove the name at slot (its record and data are the caller's to free); frees the
 * table when the last name goes. */
void mp_named_remove(mp_named_t *d, uint64_t slot);
/* Walk the used slots: fn(ctx, rec) for each; stops at non-zero. */
int mp_named_walk(const mp_named_t *d, int (*fn)(void *ctx, uint64_t rec), void *ctx);

#endif /* MEMPOOL_NAMED_H */
