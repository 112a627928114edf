/* json.c - a small JSON reader (a flat node tree; strings decoded, UTF-8 kept as is) and
 * the escaping writer. Depth is limited to 32; numbers are kept as their literal text. */
#include <string.h>
#include <stdlib.h>

#include "p11m.h"

#define MAX_DEPTH 32

typedef struct {
    const char *p, *end;
    jdoc *d;
} parser;

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' ||
                               *ps->p == '\r'))
        ps->p++;
}

static int new_node(jdoc *d, int type)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 32;
        jnode *nn = realloc(d->nodes, cap * sizeof *nn);
        if (nn == NULL)
            return -1;
        d->nodes = nn;
        d->cap = cap;
    }
    jnode *x = &d->nodes[d->n];
    memset(x, 0, sizeof *x);
    x->type = type;
    x->first = x->next = -1;
    return (int)d->n++;
}

static void put_utf8(char *out, size_t *o, unsigned cp)
{
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xC0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xE0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*o)++] = (char)(0xF0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned x;
        if (c >= '0' && c <= '9')
            x = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            x = (unsigned)(c - 'A' + 10);
        else
            return -1;
        *v = *v << 4 | x;
    }
    return 0;
}

/* Parses a string at ps->p (a '"'); stores the decoded text in d->strs. */
static int parse_string(parser *ps, const char **s, size_t *slen)
{
    jdoc *d = ps->d;
    ps->p++;
    char *out = d->strs + d->used;
    size_t o = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            out[o++] = (char)c;
            continue;
        }
        if (ps->p >= ps->end)
            return -1;
        char e = *ps->p++;
        switch (e) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp) != 0)
                return -1;
            ps->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                    hex4(ps->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                return -1;
            }
            put_utf8(out, &o, cp); /* never longer than the 6-char escape */
            break;
        }
        default:
            return -1;
        }
    }
    if (ps->p >= ps->end)
        return -1;
    ps->p++;
    out[o] = 0;
    *s = out;
    *slen = o;
    d->used += o + 1;
    return 0;
}

static int parse_value(parser *ps, int depth);

static int parse_container(parser *ps, int depth, int is_obj)
{
    int self = new_node(ps->d, is_obj ? J_OBJ : J_ARR);
    if (self < 0)
        return -1;
    ps->p++;
    skip_ws(ps);
    int last = -1;
    if (ps->p < ps->end && *ps->p == (is_obj ? '}' : ']')) {
        ps->p++;
        return self;
    }
    for (;;) {
        const char *key = NULL;
        size_t klen = 0;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"' || parse_string(ps, &key, &klen) != 0)
                return -1;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return -1;
            ps->p++;
        }
        int kid = parse_value(ps, depth + 1);
        if (kid < 0)
            return -1;
        ps->d->nodes[kid].key = key;
        ps->d->nodes[kid].klen = klen;
        if (last < 0)
            ps->d->nodes[self].first = kid;
        else
            ps->d->nodes[last].next = kid;
        last = kid;
        skip_ws(ps);
        if (ps->p >= ps->end)
            return -1;
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == (is_obj ? '}' : ']')) {
            ps->p++;
            return self;
        }
        return -1;
    }
}

static int parse_value(parser *ps, int depth)
{
    if (depth > MAX_DEPTH)
        return -1;
    skip_ws(ps);
    if (ps->p >= ps->end)
        return -1;
    char c = *ps->p;
    if (c == '{' || c == '[')
        return parse_container(ps, depth, c == '{');
    if (c == '"') {
        const char *s;
        size_t n;
        if (parse_string(ps, &s, &n) != 0)
            return -1;
        int x = new_node(ps->d, J_STR);
        if (x < 0)
            return -1;
        ps->d->nodes[x].s = s;
        ps->d->nodes[x].slen = n;
        return x;
    }
    static const struct { const char *word; int type; } words[] = {
        {"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
    for (size_t i = 0; i < 3; i++) {
        size_t wl = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= wl && memcmp(ps->p, words[i].word, wl) == 0) {
            ps->p += wl;
            return new_node(ps->d, words[i].type);
        }
    }
    const char *start = ps->p;
    while (ps->p < ps->end && (strchr("+-.eE", *ps->p) != NULL ||
                               (*ps->p >= '0' && *ps->p <= '9')))
        ps->p++;
    if (ps->p == start)
        return -1;
    int x = new_node(ps->d, J_NUM);
    if (x < 0)
        return -1;
    char *lit = ps->d->strs + ps->d->used;
    memcpy(lit, start, (size_t)(ps->p - start));
    lit[ps->p - start] = 0;
    ps->d->used += (size_t)(ps->p - start) + 1;
    ps->d->nodes[x].s = lit;
    ps->d->nodes[x].slen = (size_t)(ps->p - start);
    return x;
}

int json_parse(jdoc *d, const char *text, size_t len)
{
    memset(d, 0, sizeof *d);
    d->scap = len + 1;
    d->strs = malloc(d->scap);
    if (d->strs == NULL)
        return -1;
    parser ps = {text, text + len, d};
    int root = parse_value(&ps, 0);
    skip_ws(&ps);
    if (root != 0 || ps.p != ps.end) {
        json_free(d);
        return -1;
    }
    return 0;
}

void json_free(jdoc *d)
{
    if (d->strs != NULL) {
        wipe(d->strs, d->scap); /* responses can hold plaintext */
        free(d->strs);
    }
    free(d->nodes);
    memset(d, 0, sizeof *d);
}

int json_get(const jdoc *d, int obj, const char *key)
{
    if (d->nodes == NULL || obj < 0 || (size_t)obj >= d->n || d->nodes[obj].type != J_OBJ)
        return -1;
    size_t kl = strlen(key);
    for (int k = d->nodes[obj].first; k >= 0; k = d->nodes[k].next)
        if (d->nodes[k].klen == kl && memcmp(d->nodes[k].key, key, kl) == 0)
            return k;
    return -1;
}

const char *json_str(const jdoc *d, int obj, const char *key, size_t *len)
{
    int k = json_get(d, obj, key);
    if (k < 0 || d->nodes[k].type != J_STR)
        return NULL;
    if (len != NULL)
        *len = d->nodes[k].slen;
    return d->nodes[k].s;
}

int json_bool(const jdoc *d, int obj, const char *key, int dflt)
{
    int k = json_get(d, obj, key);
    if (k < 0)
        return dflt;
    if (d->nodes[k].type == J_TRUE)
        return 1;
    if (d->nodes[k].type == J_FALSE)
        return 0;
    return dflt;
}

int json_add_str(buf_t *b, const char *s, size_t n)
{
    if (buf_add(b, "\"", 1) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            if (buf_add(b, esc, 2) != 0)
                return -1;
        } else if (c < 0x20) {
            if (buf_addf(b, "\\u%04x", c) != 0)
                return -1;
        } else if (buf_add(b, &s[i], 1) != 0) {
            return -1;
        }
    }
    return buf_add(b, "\"", 1);
}
