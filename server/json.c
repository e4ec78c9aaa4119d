#include "json.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *p;
    const char *end;
    char *err;
    size_t err_cap;
    int depth;
} parser;

static int perr(parser *ps, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, ps->err_cap, fmt, ap);
    va_end(ap);
    return -1;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int literal(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return perr(ps, "unexpected text at offset %td", ps->p);
    ps->p += n;
    return 0;
}

static int hex4(parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4) return perr(ps, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return perr(ps, "bad \\u escape");
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int parse_string(parser *ps, char **out, size_t *out_len)
{
    ps->p++;   /* opening quote */
    /* The decoded string is never longer than its source. */
    const char *start = ps->p;
    while (ps->p < ps->end && *ps->p != '"') ps->p += (*ps->p == '\\') ? 2 : 1;
    if (ps->p >= ps->end) return perr(ps, "unterminated string");
    size_t cap = (size_t)(ps->p - start) + 1;
    char *s = malloc(cap);
    if (!s) return perr(ps, "out of memory");
    size_t n = 0;
    ps->p = start;
    while (*ps->p != '"') {
        char c = *ps->p++;
        if ((unsigned char)c < 0x20) {
            free(s);
            return perr(ps, "control character in string");
        }
        if (c != '\\') {
            s[n++] = c;
            continue;
        }
        char e = *ps->p++;
        switch (e) {
        case '"': s[n++] = '"'; break;
        case '\\': s[n++] = '\\'; break;
        case '/': s[n++] = '/'; break;
        case 'b': s[n++] = '\b'; break;
        case 'f': s[n++] = '\f'; break;
        case 'n': s[n++] = '\n'; break;
        case 'r': s[n++] = '\r'; break;
        case 't': s[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(ps, &cp)) {
                free(s);
                return -1;
            }
            if (cp >= 0xd800 && cp <= 0xdbff && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                ps->p += 2;
                unsigned lo;
                if (hex4(ps, &lo)) {
                    free(s);
                    return -1;
                }
                if (lo >= 0xdc00 && lo <= 0xdfff) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            /* \uXXXX takes 6 source bytes and at most 4 decoded ones. */
            n += put_utf8(s + n, cp);
            break;
        }
        default:
            free(s);
            return perr(ps, "bad escape \\%c", e);
        }
    }
    ps->p++;   /* closing quote */
    s[n] = '\0';
    *out = s;
    *out_len = n;
    return 0;
}

static int parse_value(parser *ps, json_value *v);

static int grow(json_value *v, size_t *cap, bool with_keys)
{
    if (v->count < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    json_value *items = realloc(v->items, nc * sizeof *items);
    if (!items) return -1;
    v->items = items;
    if (with_keys) {
        char **keys = realloc(v->keys, nc * sizeof *keys);
        if (!keys) return -1;
        v->keys = keys;
    }
    *cap = nc;
    return 0;
}

static int parse_container(parser *ps, json_value *v, bool object)
{
    if (++ps->depth > 64) return perr(ps, "nesting deeper than 64");
    char close = object ? '}' : ']';
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    ps->p++;
    size_t cap = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        if (grow(v, &cap, object)) return perr(ps, "out of memory");
        json_value *item = &v->items[v->count];
        memset(item, 0, sizeof *item);
        if (object) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return perr(ps, "object key must be a string");
            size_t klen;
            if (parse_string(ps, &v->keys[v->count], &klen)) return -1;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(v->keys[v->count]);
                return perr(ps, "expected ':'");
            }
            ps->p++;
        }
        v->count++;
        if (parse_value(ps, item)) return -1;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return perr(ps, "expected ',' or '%c'", close);
    }
}

static int parse_value(parser *ps, json_value *v)
{
    skip_ws(ps);
    if (ps->p >= ps->end) return perr(ps, "unexpected end");
    char c = *ps->p;
    if (c == '{') return parse_container(ps, v, true);
    if (c == '[') return parse_container(ps, v, false);
    if (c == '"') {
        v->type = JSON_STRING;
        return parse_string(ps, &v->string, &v->string_len);
    }
    if (c == 't' || c == 'f') {
        v->type = JSON_BOOL;
        v->boolean = c == 't';
        return literal(ps, c == 't' ? "true" : "false");
    }
    if (c == 'n') {
        v->type = JSON_NULL;
        return literal(ps, "null");
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char buf[64];
        size_t n = 0;
        while (ps->p + n < ps->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", ps->p[n])) n++;
        memcpy(buf, ps->p, n);
        buf[n] = '\0';
        char *endp;
        v->type = JSON_NUMBER;
        v->number = strtod(buf, &endp);
        if (endp != buf + n || n == 0) return perr(ps, "bad number");
        ps->p += n;
        return 0;
    }
    return perr(ps, "unexpected character '%c'", c);
}

static void free_children(json_value *v)
{
    for (size_t i = 0; i < v->count; i++) {
        free_children(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
}

json_value *json_parse(const char *text, size_t len, char *err, size_t err_cap)
{
    parser ps = {.p = text, .end = text + len, .err = err, .err_cap = err_cap};
    json_value *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    if (parse_value(&ps, v) == 0) {
        skip_ws(&ps);
        if (ps.p == ps.end) return v;
        perr(&ps, "text after the JSON value");
    }
    json_free(v);
    return NULL;
}

void json_free(json_value *v)
{
    if (!v) return;
    free_children(v);
    free(v);
}

const json_value *json_get(const json_value *v, const char *key)
{
    if (!v || v->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < v->count; i++)
        if (strcmp(v->keys[i], key) == 0) return &v->items[i];
    return NULL;
}

bool json_get_number(const json_value *v, const char *key, double *out)
{
    const json_value *m = json_get(v, key);
    if (!m || m->type != JSON_NUMBER) return false;
    *out = m->number;
    return true;
}

bool json_get_string(const json_value *v, const char *key, const char **out)
{
    const json_value *m = json_get(v, key);
    if (!m || m->type != JSON_STRING) return false;
    *out = m->string;
    return true;
}

void json_write_string(FILE *f, const char *s, size_t len)
{
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}
