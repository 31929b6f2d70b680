/*
 * callgrind_replay.c -- replay one plain (gunzipped) trace through TLSF or BestFit with
 * mp_replay, as the bench does (capacity max(2 * maxlive, 4096), max_blocks
 * min(capacity, 2 * (max_id + 1) + 64)), for instruction counts that do not drift with
 * the machine's noise (issue 15's profiles and commit messages):
 *
 *   C=src/mempool/_core; gcc -std=c11 -O2 -g -I $C $C/[a-z]*.c bench/callgrind_replay.c -o /tmp/cgr
 *   zcat src/mempool/traces/sqlite3-import-index.trace.gz > /tmp/sqlite.trace
 *   valgrind --tool=callgrind --toggle-collect=mp_replay --cache-sim=yes \
 *       --callgrind-out-file=/tmp/cg.out /tmp/cgr /tmp/sqlite.trace tlsf
 *   python bench/callgrind_breakdown.py /tmp/cg.out
 *
 * The timed loop's Ir is mp_replay's inclusive count minus mp_trace_validate's (the
 * untimed pre-pass); callgrind_breakdown.py prints both and the loop's Ir per op.
 * Arguments: TRACE tlsf|bestfit [REPS]; prints ops, failures, span / maxlive, the best
 * ns/op of REPS replays and check()'s verdict.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mempool.h"
#include "replay.h"
int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[2], "tlsf") && strcmp(argv[2], "bestfit"))) {
        fprintf(stderr, "usage: %s TRACE tlsf|bestfit [REPS]\n", argv[0]);
        return 2;
    }
    int tlsf = !strcmp(argv[2], "tlsf");
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        return 2;
    }
    fclose(f);
    char *nl = memchr(text, '\n', (size_t)len);
    if (!nl || strncmp(text, "# mempool-trace v1", 18)) {
        fprintf(stderr, "%s: not a plain mempool-trace v1 file (gunzip it first)\n", argv[1]);
        return 2;
    }
    char *body = nl + 1;
    uint64_t blen = (uint64_t)(text + len - body), cap = 1;
    for (uint64_t i = 0; i < blen; i++) cap += body[i] == '\n';
    uint8_t *op = malloc(cap);
    uint32_t *id = malloc(cap * 4), *al = malloc(cap * 4);
    uint64_t *sz = malloc(cap * 8), line;
    char err[200];
    int64_t n = mp_trace_parse(body, blen, cap, op, id, sz, al, &line, err, sizeof err);
    if (n < 0) {
        fprintf(stderr, "%s: line %llu: %s\n", argv[1], (unsigned long long)line, err);
        return 2;
    }
    uint32_t max_id = 0;
    for (int64_t k = 0; k < n; k++)
        if (id[k] > max_id) max_id = id[k];
    uint64_t *ptr = malloc((max_id + 1) * 8ull), *live = malloc((max_id + 1) * 8ull);
    mp_replay_result_t r;
    if (mp_trace_validate((uint64_t)n, op, id, sz, max_id, live, &r)) {
        fprintf(stderr, "%s: not valid at op %llu\n", argv[1], (unsigned long long)r.bad_op);
        return 2;
    }
    uint64_t capb = 2 * r.maxlive < 4096 ? 4096 : 2 * r.maxlive;
    uint64_t mb = 2 * ((uint64_t)max_id + 1) + 64;
    if (mb > capb) mb = capb;
    const mp_ops_t *ops = tlsf ? &mp_tlsf_ops : &mp_bestfit_ops;
    uint64_t ss = tlsf ? mp_tlsf_state_size(capb, mb) : mp_bestfit_state_size(capb, mb);
    void *st = aligned_alloc(64, (ss + 63) & ~63ull);
    int reps = argc > 3 ? atoi(argv[3]) : 1;
    double best = 1e30;
    for (int k = 0; k < (reps > 0 ? reps : 1); k++) {
        if ((tlsf ? mp_tlsf_init(st, capb, mb) : mp_bestfit_init(st, capb, mb)) != MP_OK) return 2;
        mp_replay(ops, st, (uint64_t)n, op, id, sz, al, max_id, ptr, live, &r);
        double ns = (double)r.elapsed_ns / (double)n;
        if (ns < best) best = ns;
    }
    char msg[256];
    int ck = ops->check(st, ss, msg, sizeof msg);
    printf("%s %s ops=%lld fail=%llu hw=%llu maxlive=%llu hw/maxlive=%.4f best_ns/op=%.2f "
           "check=%s\n", argv[1], argv[2], (long long)n, (unsigned long long)r.failures,
           (unsigned long long)r.high_water, (unsigned long long)r.maxlive,
           (double)r.high_water / (double)r.maxlive, best, ck == MP_OK ? "ok" : msg);
    return ck != MP_OK;
}
