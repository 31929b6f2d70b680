/*
 * trace.c -- parse the text of a mempool-trace v1 file into flat arrays.
 *
 * The format (../shared/traces/README.md):
 *     a ID SIZE [ALIGN]     allocate (ALIGN a power of two)
 *     f ID                  free
 *     r ID SIZE             realloc to SIZE > 0
 * one record per line; '#' lines are comments/headers.  The parser is a single
 * pass over the bytes with no allocation: the caller sizes the arrays (one op
 * per newline is an upper bound).  Errors name the 1-based line.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "replay.h"

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

/* Parse an unsigned decimal; returns NULL when there is none or it overflows. */
static const char *parse_num(const char *p, const char *end, uint64_t *out)
{
    p = skip_blanks(p, end);
    if (p >= end || *p < '0' || *p > '9') return NULL;
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return NULL;
        v = v * 10 + d;
        p++;
    }
    *out = v;
    return p;
}

int64_t mp_trace_parse(const char *text, uint64_t len, uint64_t cap, uint8_t *op, uint32_t *id,
                       uint64_t *size, uint32_t *align, uint64_t *err_line, char *err,
                       size_t errlen)
{
    const char *p = text, *end = text + len;
    uint64_t n = 0, line = 0;
#define BAD(...)                                                                                 \
    do {                                                                                         \
        *err_line = line;                                                                        \
        snprintf(err, errlen, __VA_ARGS__);                                                      \
        return -1;                                                                               \
    } while (0)
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        const char *eol = nl ? nl : end;
        if (eol > p && eol[-1] == '\r') eol--;
        line++;
        const char *q = skip_blanks(p, eol);
        if (q == eol || *q == '#') {
            p = next;
            continue;
        }
        char c = *q++;
        if (q < eol && *q != ' ' && *q != '\t') BAD("unknown operation '%c%c...'", c, *q);
        uint64_t v_id, v_size = 0, v_align = 1;
        q = parse_num(q, eol, &v_id);
        if (!q) BAD("expected an ID after '%c'", c);
        if (v_id >= UINT32_MAX) BAD("ID %llu is too large", (unsigned long long)v_id);
        if (n >= cap) BAD("more operations than expected");
        switch (c) {
        case 'a':
            q = parse_num(q, eol, &v_size);
            if (!q) BAD("expected a SIZE after 'a %llu'", (unsigned long long)v_id);
            {
                const char *r = skip_blanks(q, eol);
                if (r < eol) {
                    q = parse_num(r, eol, &v_align);
                    if (!q) BAD("bad ALIGN");
                    if (!mp_is_pow2(v_align) || v_align > UINT32_MAX / 2 + 1)
                        BAD("ALIGN %llu is not a power of two", (unsigned long long)v_align);
                }
            }
            op[n] = MP_OP_ALLOC;
            break;
        case 'f':
            op[n] = MP_OP_FREE;
            break;
        case 'r':
            q = parse_num(q, eol, &v_size);
            if (!q) BAD("expected a SIZE after 'r %llu'", (unsigned long long)v_id);
            if (v_size == 0) BAD("realloc to size 0");
            op[n] = MP_OP_REALLOC;
            break;
        default:
            BAD("unknown operation '%c'", c);
        }
        q = skip_blanks(q, eol);
        if (q != eol) BAD("unexpected text after the operation");
        id[n] = (uint32_t)v_id;
        size[n] = v_size;
        align[n] = (uint32_t)v_align;
        n++;
        p = next;
    }
#undef BAD
    return (int64_t)n;
}
