/*
 * The C client against the language-neutral conformance vectors,
 * tests/protocol/vectors.json (schema: tests/protocol/README.md).
 *
 * Requests: each vector's `call` goes through the library's request
 * builders (client_internal.h: the ones its public calls use) and the
 * packed bytes must decode to the vector's msgpack value. Replies: each
 * vector's bytes go to the library's reply parser as the answer to
 * `request_id`, then to the op's reader, and the typed result must say
 * what `expect` says. A call key, result key or op this file does not map
 * fails the test: a vector added to the file cannot pass unread.
 *
 * C has no JSON parser in the tree, so a small strict one is below.
 */
#include "check.h"

#include "client_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- allocations freed after each vector ---------------------------- */

static void **owned;
static size_t n_owned, cap_owned;

static void *own(void *p)
{
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    if (n_owned == cap_owned) {
        cap_owned = cap_owned ? 2 * cap_owned : 64;
        owned = realloc(owned, cap_owned * sizeof *owned);
        if (!owned) exit(2);
    }
    owned[n_owned++] = p;
    return p;
}

static void free_owned(void)
{
    for (size_t i = 0; i < n_owned; i++) free(owned[i]);
    n_owned = 0;
}

/* ---- a strict JSON reader ------------------------------------------- */

typedef enum jtype { J_NULL, J_BOOL, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jv {
    jtype t;
    bool b;
    int64_t i;                 /* J_INT */
    double num;                /* J_INT and J_FLOAT */
    char *s;                   /* J_STR, NUL-terminated (no NUL inside) */
    struct jv *items;          /* J_ARR, J_OBJ */
    char **keys;               /* J_OBJ */
    size_t n;
} jv;

typedef struct jparser {
    const char *p, *end;
    const char *err;
} jparser;

static void jskip(jparser *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool jfail(jparser *j, const char *why)
{
    if (!j->err) j->err = why;
    return false;
}

static bool jvalue(jparser *j, jv *out, int depth);

static void put_utf8(char **w, unsigned cp)
{
    unsigned char *o = (unsigned char *)*w;
    if (cp < 0x80) *o++ = (unsigned char)cp;
    else if (cp < 0x800) {
        *o++ = (unsigned char)(0xc0 | cp >> 6);
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (unsigned char)(0xe0 | cp >> 12);
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (unsigned char)(0xf0 | cp >> 18);
        *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    }
    *w = (char *)o;
}

static bool jhex4(jparser *j, unsigned *out)
{
    if (j->end - j->p < 4) return jfail(j, "short \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char ch = *j->p++;
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v |= (unsigned)(ch - 'A' + 10);
        else return jfail(j, "bad \\u escape");
    }
    *out = v;
    return true;
}

static bool jstring(jparser *j, char **out)
{
    j->p++;                    /* the opening quote */
    /* Escapes never make a string longer than its source text. */
    char *buf = own(malloc((size_t)(j->end - j->p) + 1)), *w = buf;
    for (;;) {
        if (j->p >= j->end) return jfail(j, "unterminated string");
        unsigned char ch = (unsigned char)*j->p++;
        if (ch == '"') break;
        if (ch < 0x20) return jfail(j, "control character in a string");
        if (ch != '\\') {
            *w++ = (char)ch;
            continue;
        }
        if (j->p >= j->end) return jfail(j, "unterminated escape");
        char e = *j->p++;
        unsigned cp;
        switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u':
            if (!jhex4(j, &cp)) return false;
            if (cp >= 0xd800 && cp < 0xdc00) {
                unsigned lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return jfail(j, "lone surrogate");
                j->p += 2;
                if (!jhex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return jfail(j, "bad surrogate pair");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return jfail(j, "lone surrogate");
            }
            if (cp == 0) return jfail(j, "NUL in a string");
            put_utf8(&w, cp);
            break;
        default: return jfail(j, "bad escape");
        }
    }
    *w = '\0';
    *out = buf;
    return true;
}

static bool jnumber(jparser *j, jv *out)
{
    const char *start = j->p;
    bool is_float = false;
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return jfail(j, "bad number");
    if (*j->p == '0') j->p++;
    else
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    if (j->p < j->end && *j->p == '.') {
        is_float = true;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return jfail(j, "bad fraction");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        is_float = true;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return jfail(j, "bad exponent");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    char text[64];
    size_t len = (size_t)(j->p - start);
    if (len >= sizeof text) return jfail(j, "number too long");
    memcpy(text, start, len);
    text[len] = '\0';
    errno = 0;
    if (is_float) {
        out->t = J_FLOAT;
        out->num = strtod(text, NULL);
    } else {
        out->t = J_INT;
        out->i = strtoll(text, NULL, 10);
        out->num = (double)out->i;
    }
    if (errno) return jfail(j, "number out of range");
    return true;
}

static bool jlit(jparser *j, const char *word)
{
    size_t len = strlen(word);
    if ((size_t)(j->end - j->p) < len || memcmp(j->p, word, len) != 0)
        return jfail(j, "unknown literal");
    j->p += len;
    return true;
}

/* Appends to a growing item array. */
static jv *jpush(jv *out, size_t *cap)
{
    if (out->n == *cap) {
        *cap = *cap ? 2 * *cap : 4;
        jv *grown = own(malloc(*cap * sizeof *grown));
        if (out->n) memcpy(grown, out->items, out->n * sizeof *grown);
        out->items = grown;
        if (out->t == J_OBJ) {
            char **keys = own(malloc(*cap * sizeof *keys));
            if (out->n) memcpy(keys, out->keys, out->n * sizeof *keys);
            out->keys = keys;
        }
    }
    memset(&out->items[out->n], 0, sizeof out->items[0]);
    return &out->items[out->n++];
}

static bool jcontainer(jparser *j, jv *out, int depth, bool obj)
{
    out->t = obj ? J_OBJ : J_ARR;
    size_t cap = 0;
    j->p++;
    jskip(j);
    if (j->p < j->end && *j->p == (obj ? '}' : ']')) {
        j->p++;
        return true;
    }
    for (;;) {
        jskip(j);
        char *key = NULL;
        if (obj) {
            if (j->p >= j->end || *j->p != '"') return jfail(j, "key expected");
            if (!jstring(j, &key)) return false;
            for (size_t k = 0; k < out->n; k++)
                if (strcmp(out->keys[k], key) == 0)
                    return jfail(j, "duplicate key");
            jskip(j);
            if (j->p >= j->end || *j->p++ != ':') return jfail(j, "':' expected");
        }
        jv *item = jpush(out, &cap);
        if (obj) out->keys[out->n - 1] = key;
        if (!jvalue(j, item, depth + 1)) return false;
        jskip(j);
        if (j->p >= j->end) return jfail(j, "unterminated container");
        char ch = *j->p++;
        if (ch == ',') continue;
        if (ch == (obj ? '}' : ']')) return true;
        return jfail(j, "',' or end of container expected");
    }
}

static bool jvalue(jparser *j, jv *out, int depth)
{
    memset(out, 0, sizeof *out);
    if (depth > 64) return jfail(j, "nested too deep");
    jskip(j);
    if (j->p >= j->end) return jfail(j, "value expected");
    switch (*j->p) {
    case '{': return jcontainer(j, out, depth, true);
    case '[': return jcontainer(j, out, depth, false);
    case '"': out->t = J_STR; return jstring(j, &out->s);
    case 't': out->t = J_BOOL; out->b = true; return jlit(j, "true");
    case 'f': out->t = J_BOOL; out->b = false; return jlit(j, "false");
    case 'n': out->t = J_NULL; return jlit(j, "null");
    default: return jnumber(j, out);
    }
}

static const jv *jget(const jv *o, const char *key)
{
    if (!o || o->t != J_OBJ) return NULL;
    for (size_t k = 0; k < o->n; k++)
        if (strcmp(o->keys[k], key) == 0) return &o->items[k];
    return NULL;
}

/* ---- reporting ------------------------------------------------------ */

static const char *vec_kind, *vec_name;
static int mismatches;         /* in the current check */
static bool quiet;             /* the self-checks expect mismatches */

static void mismatch(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void mismatch(const char *fmt, ...)
{
    mismatches++;
    if (quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s vector '%s': ", vec_kind, vec_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- JSON to library arguments -------------------------------------- */

/* A call's keys; each one read is marked, and any left unread fails the
 * vector (it would have been dropped). */
typedef struct call_args {
    const jv *m;
    bool used[64];
} call_args;

static const jv *arg(call_args *a, const char *key)
{
    for (size_t k = 0; k < a->m->n && k < 64; k++)
        if (strcmp(a->m->keys[k], key) == 0) {
            a->used[k] = true;
            return &a->m->items[k];
        }
    return NULL;
}

static const char *arg_str(call_args *a, const char *key)
{
    const jv *v = arg(a, key);
    if (v && v->t != J_STR) mismatch("call key '%s' is not a string", key);
    return v && v->t == J_STR ? v->s : NULL;
}

static void args_done(call_args *a)
{
    if (a->m->n > 64) mismatch("call has more than 64 keys");
    for (size_t k = 0; k < a->m->n && k < 64; k++)
        if (!a->used[k])
            mismatch("call key '%s' is not mapped onto the C client",
                     a->m->keys[k]);
}

static unsigned char *hex_bytes(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    unsigned char *out = own(malloc(n / 2 + 1));
    if (n % 2) {
        mismatch("odd-length hex");
        n--;
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            mismatch("bad hex");
            v = 0;
        }
        out[i] = (unsigned char)v;
    }
    *len = n / 2;
    return out;
}

static int32_t dtype_of(const jv *d)
{
    if (d && d->t == J_STR && strcmp(d->s, "f32") == 0) return OPTIMD_CLIENT_F32;
    if (d && d->t == J_STR && strcmp(d->s, "f64") == 0) return OPTIMD_CLIENT_F64;
    mismatch("a tensor's dtype is not \"f32\" or \"f64\"");
    return OPTIMD_CLIENT_F32;
}

/* A JSON tensor {dtype, shape, data} as a caller tensor named `name`;
 * with `zeroed` its data is a zeroed buffer of the same size (an output
 * buffer), else the bytes of `data`. */
static void json_tensor(const char *name, const jv *t, bool zeroed,
                        optimd_named_tensor *out, size_t *nbytes)
{
    const jv *shape = jget(t, "shape"), *data = jget(t, "data");
    memset(out, 0, sizeof *out);
    out->name = name;
    out->dtype = dtype_of(jget(t, "dtype"));
    if (!shape || shape->t != J_ARR || !data || data->t != J_STR) {
        mismatch("tensor '%s' lacks shape or data", name);
        *nbytes = 0;
        return;
    }
    int64_t *dims = own(calloc(shape->n + 1, sizeof *dims));
    for (size_t k = 0; k < shape->n; k++) dims[k] = shape->items[k].i;
    out->ndim = (uint32_t)shape->n;
    out->shape = dims;
    unsigned char *bytes = hex_bytes(data->s, nbytes);
    out->data = zeroed ? own(calloc(*nbytes + 1, 1)) : bytes;
}

static optimd_named_tensor *json_tensors(const jv *map, bool zeroed,
                                         size_t *n)
{
    *n = 0;
    if (!map || map->t != J_OBJ) {
        mismatch("a tensor map is not an object");
        return NULL;
    }
    optimd_named_tensor *t = own(calloc(map->n + 1, sizeof *t));
    for (size_t k = 0; k < map->n; k++) {
        size_t nbytes;
        json_tensor(map->keys[k], &map->items[k], zeroed, &t[k], &nbytes);
    }
    *n = map->n;
    return t;
}

static optimd_hvalue *json_hvalues(const jv *map, size_t *n)
{
    *n = 0;
    if (!map) return NULL;
    if (map->t != J_OBJ) {
        mismatch("a hyperparameter map is not an object");
        return NULL;
    }
    optimd_hvalue *hp = own(calloc(map->n + 1, sizeof *hp));
    for (size_t k = 0; k < map->n; k++) {
        const jv *v = &map->items[k];
        hp[k].key = map->keys[k];
        if (v->t == J_BOOL) {
            hp[k].type = OPTIMD_HVALUE_BOOL;
            hp[k].i = v->b;
        } else if (v->t == J_INT) {
            hp[k].type = OPTIMD_HVALUE_INT;
            hp[k].i = v->i;
        } else if (v->t == J_FLOAT) {
            hp[k].type = OPTIMD_HVALUE_FLOAT;
            hp[k].f = v->num;
        } else {
            mismatch("hyperparameter '%s' is not a bool or number",
                     map->keys[k]);
        }
    }
    *n = map->n;
    return hp;
}

static double arg_num(call_args *a, const char *key, double absent)
{
    const jv *v = arg(a, key);
    if (!v) return absent;
    if (v->t != J_INT && v->t != J_FLOAT)
        mismatch("call key '%s' is not a number", key);
    return v->num;
}

static void session_of(call_args *a, optimd_session *s)
{
    const char *name = arg_str(a, "session"), *token = arg_str(a, "token");
    memset(s, 0, sizeof *s);
    if (!name || !token || strlen(name) >= sizeof s->name ||
        strlen(token) >= sizeof s->token) {
        mismatch("a session op's call lacks session or token");
        return;
    }
    strcpy(s->name, name);
    strcpy(s->token, token);
}

/* Everything a built call points at lives here until it is packed. */
typedef struct built {
    optimd_session s;
    client_call call;
    union {
        req_open open;
        req_register reg;
        req_step step;
        req_names names;
        req_set_hparams set;
        req_observe observe;
        req_str str;
        req_import import;
        req_switch sw;
        req_admin admin;
    } u;
} built;

/* `schedulers` and `milestones` of a call (open, or a group of it). */
static void json_combined(call_args *a, const optimd_sched_spec **sc,
                          size_t *n_sc, const int64_t **ms, size_t *n_ms)
{
    const jv *arr = arg(a, "schedulers"), *mil = arg(a, "milestones");
    if (arr && arr->t == J_ARR) {
        optimd_sched_spec *list = own(calloc(arr->n + 1, sizeof *list));
        for (size_t k = 0; k < arr->n; k++) {
            call_args sa = {.m = &arr->items[k]};
            if (sa.m->t != J_OBJ) {
                mismatch("schedulers[%zu] is not an object", k);
                continue;
            }
            list[k].scheduler = arg_str(&sa, "scheduler");
            list[k].sched_hparams = json_hvalues(arg(&sa, "sched_hparams"),
                                                 &list[k].n_sched_hparams);
            args_done(&sa);
        }
        *sc = list;
        *n_sc = arr->n;
    } else if (arr) {
        mismatch("schedulers is not an array");
    }
    if (mil && mil->t == J_ARR) {
        int64_t *list = own(calloc(mil->n + 1, sizeof *list));
        for (size_t k = 0; k < mil->n; k++) {
            if (mil->items[k].t != J_INT) mismatch("milestones[%zu]", k);
            list[k] = mil->items[k].i;
        }
        *ms = list;
        *n_ms = mil->n;
    } else if (mil) {
        mismatch("milestones is not an array");
    }
}

static void build_open(call_args *a, built *b)
{
    req_open *r = &b->u.open;
    memset(r, 0, sizeof *r);
    optimd_open_options_init(&r->o);
    r->name = arg_str(a, "session");
    r->o.optimizer = arg_str(a, "optimizer");
    r->o.hparams = json_hvalues(arg(a, "hparams"), &r->o.n_hparams);
    r->o.scheduler = arg_str(a, "scheduler");
    r->o.sched_hparams =
        json_hvalues(arg(a, "sched_hparams"), &r->o.n_sched_hparams);
    r->o.durability = arg_str(a, "durability");
    r->open_key = arg_str(a, "open_key");
    json_combined(a, &r->o.schedulers, &r->o.n_schedulers, &r->o.milestones,
                  &r->o.n_milestones);
    const jv *la = arg(a, "lookahead");
    if (la && la->t == J_OBJ) {
        call_args la_args = {.m = la};
        r->o.lookahead = 1;
        r->o.lookahead_k = (int64_t)arg_num(&la_args, "k", 0);
        r->o.lookahead_alpha = arg_num(&la_args, "alpha", 0);
        args_done(&la_args);
    } else if (la) {
        mismatch("lookahead is not an object");
    }
    const jv *groups = arg(a, "groups");
    if (groups) {
        if (groups->t != J_ARR) mismatch("groups is not an array");
        optimd_group_spec *g = own(calloc(groups->n + 1, sizeof *g));
        for (size_t k = 0; k < groups->n && groups->t == J_ARR; k++) {
            call_args ga = {.m = &groups->items[k]};
            if (ga.m->t != J_OBJ) {
                mismatch("groups[%zu] is not an object", k);
                continue;
            }
            g[k].name = arg_str(&ga, "name");
            g[k].hparams = json_hvalues(arg(&ga, "hparams"), &g[k].n_hparams);
            const jv *sched = arg(&ga, "scheduler");
            if (sched && sched->t == J_NULL) g[k].no_scheduler = 1;
            else if (sched && sched->t == J_STR) g[k].scheduler = sched->s;
            else if (sched) mismatch("groups[%zu].scheduler", k);
            g[k].sched_hparams =
                json_hvalues(arg(&ga, "sched_hparams"), &g[k].n_sched_hparams);
            json_combined(&ga, &g[k].schedulers, &g[k].n_schedulers,
                          &g[k].milestones, &g[k].n_milestones);
            args_done(&ga);
        }
        r->o.groups = g;
        r->o.n_groups = groups->t == J_ARR ? groups->n : 0;
    }
    if (!r->name || !r->o.optimizer) mismatch("open without session/optimizer");
    req_open_call(r, &b->call);
}

static void build_step(call_args *a, built *b)
{
    req_step *r = &b->u.step;
    memset(r, 0, sizeof *r);
    session_of(a, &b->s);
    r->grads = json_tensors(arg(a, "grads"), false, &r->n_grads);
    const jv *ret = arg(a, "return");
    r->ret = !ret ? -1 : ret->t == J_BOOL ? ret->b : (mismatch("return"), -1);
    double seq = arg_num(a, "seq", 0);
    r->seq = (uint64_t)seq;
    r->client = arg_str(a, "client");
    r->clip_value = arg_num(a, "clip_value", 0);
    r->per_group = -1;
    const jv *norm = arg(a, "clip_norm");
    if (norm) {
        call_args na = {.m = norm};
        if (norm->t != J_OBJ) {
            mismatch("clip_norm is not an object");
        } else {
            r->max_norm = arg_num(&na, "max_norm", 0);
            r->norm_type = arg_num(&na, "norm_type", 0);
            const jv *pg = arg(&na, "per_group");
            if (pg && pg->t != J_BOOL) mismatch("per_group is not a bool");
            else if (pg) r->per_group = pg->b;
            args_done(&na);
        }
    }
    req_step_call(&b->s, r, &b->call);
}

/* Builds the request a vector's call describes; false when the op has no
 * builder. */
static bool build_request(call_args *a, built *b)
{
    const char *op = arg_str(a, "op");
    if (!op) {
        mismatch("call has no op");
        return false;
    }
    memset(&b->s, 0, sizeof b->s);
    if (strcmp(op, "hello") == 0) {
        b->u.str = (req_str){"hello", "client", arg_str(a, "client")};
        req_str_call(NULL, &b->u.str, &b->call);
    } else if (strcmp(op, "plugins") == 0 || strcmp(op, "sessions") == 0) {
        b->u.str = (req_str){op, NULL, NULL};
        req_str_call(NULL, &b->u.str, &b->call);
    } else if (strcmp(op, "attach") == 0 || strcmp(op, "hparams") == 0 ||
               strcmp(op, "close") == 0 || strcmp(op, "export") == 0) {
        session_of(a, &b->s);
        b->u.str = (req_str){op, NULL, NULL};
        req_str_call(&b->s, &b->u.str, &b->call);
    } else if (strcmp(op, "info") == 0) {
        session_of(a, &b->s);
        b->u.str = (req_str){"info", "client", arg_str(a, "client")};
        req_str_call(&b->s, &b->u.str, &b->call);
    } else if (strcmp(op, "open") == 0) {
        build_open(a, b);
    } else if (strcmp(op, "register") == 0) {
        session_of(a, &b->s);
        b->u.reg.params = json_tensors(arg(a, "params"), false, &b->u.reg.n);
        b->u.reg.group = arg_str(a, "group");
        req_register_call(&b->s, &b->u.reg, &b->call);
    } else if (strcmp(op, "set_hparams") == 0) {
        session_of(a, &b->s);
        b->u.set.hp = json_hvalues(arg(a, "hparams"), &b->u.set.n);
        b->u.set.group = arg_str(a, "group");
        req_set_hparams_call(&b->s, &b->u.set, &b->call);
    } else if (strcmp(op, "step") == 0) {
        build_step(a, b);
    } else if (strcmp(op, "observe") == 0) {
        session_of(a, &b->s);
        b->u.observe.metric = arg_num(a, "metric", NAN);
        b->u.observe.group = arg_str(a, "group");
        req_observe_call(&b->s, &b->u.observe, &b->call);
    } else if (strcmp(op, "pull") == 0 || strcmp(op, "state") == 0) {
        session_of(a, &b->s);
        req_names *r = &b->u.names;
        memset(r, 0, sizeof *r);
        r->op = op;
        const jv *names = arg(a, "names");
        r->absent = names == NULL;
        if (names && names->t == J_ARR) {
            const char **list = own(calloc(names->n + 1, sizeof *list));
            for (size_t k = 0; k < names->n; k++) {
                if (names->items[k].t != J_STR) mismatch("names[%zu]", k);
                list[k] = names->items[k].s ? names->items[k].s : "";
            }
            r->names = list;
            r->n = names->n;
        } else if (names) {
            mismatch("names is not an array");
        }
        req_names_call(&b->s, r, &b->call);
    } else if (strcmp(op, "import") == 0) {
        req_import *r = &b->u.import;
        const char *hex = arg_str(a, "snapshot");
        r->snapshot = hex ? hex_bytes(hex, &r->size) : NULL;
        r->name = arg_str(a, "session");
        r->durability = arg_str(a, "durability");
        req_import_call(r, &b->call);
    } else if (strcmp(op, "switch") == 0) {
        session_of(a, &b->s);
        req_switch *r = &b->u.sw;
        r->optimizer = arg_str(a, "optimizer");
        if (!r->optimizer) mismatch("switch without an optimizer");
        const jv *hp = arg(a, "hparams");
        r->hp = json_hvalues(hp, &r->n);
        if (r->optimizer) req_switch_call(&b->s, r, &b->call);
        else return false;
    } else if (strcmp(op, "reload") == 0 || strcmp(op, "load") == 0 ||
               strcmp(op, "drop") == 0 || strcmp(op, "shutdown") == 0) {
        req_admin *r = &b->u.admin;
        r->op = op;
        r->admin_token = arg_str(a, "admin_token");
        r->path = arg_str(a, "path");
        r->session = arg_str(a, "session");
        if (op[0] == 'l' && !r->path) mismatch("load without a path");
        if (op[0] == 'd' && !r->session) mismatch("drop without a session");
        req_admin_call(r, &b->call);
    } else {
        mismatch("op '%s' has no request builder here", op);
        return false;
    }
    if (strcmp(b->call.op, op) != 0)
        mismatch("the builder made a '%s' request", b->call.op);
    return true;
}

/* ---- msgpack value comparison (README: ignoring key order, integer
 * width, float32 vs float64; bin by bytes) ---------------------------- */

static bool mp_equal(const msgpack_object *a, const msgpack_object *b,
                     bool skip_id, char *path, size_t cap);

static bool mp_is_float(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_FLOAT32 ||
           o->type == MSGPACK_OBJECT_FLOAT64;
}

static bool mp_key_is(const msgpack_object *k, const char *s)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
           memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

static const msgpack_object *mp_find(const msgpack_object *map,
                                     const msgpack_object *key)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && key->type == MSGPACK_OBJECT_STR &&
            k->via.str.size == key->via.str.size &&
            memcmp(k->via.str.ptr, key->via.str.ptr, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static uint32_t mp_count_keys(const msgpack_object *map, bool skip_id)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (!(skip_id && mp_key_is(&map->via.map.ptr[i].key, "id"))) n++;
    return n;
}

static bool mp_equal(const msgpack_object *a, const msgpack_object *b,
                     bool skip_id, char *path, size_t cap)
{
    size_t at = strlen(path);
    if (mp_is_float(a) && mp_is_float(b))
        return a->via.f64 == b->via.f64 ||
               (isnan(a->via.f64) && isnan(b->via.f64));
    if (a->type != b->type) return false;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL: return true;
    case MSGPACK_OBJECT_BOOLEAN: return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_STR:
        return a->via.str.size == b->via.str.size &&
               memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0;
    case MSGPACK_OBJECT_BIN:
        return a->via.bin.size == b->via.bin.size &&
               (a->via.bin.size == 0 ||
                memcmp(a->via.bin.ptr, b->via.bin.ptr, a->via.bin.size) == 0);
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size) return false;
        for (uint32_t i = 0; i < a->via.array.size; i++) {
            snprintf(path + at, cap - at, "[%u]", (unsigned)i);
            if (!mp_equal(&a->via.array.ptr[i], &b->via.array.ptr[i], false,
                          path, cap))
                return false;
        }
        path[at] = '\0';
        return true;
    case MSGPACK_OBJECT_MAP:
        if (mp_count_keys(a, skip_id) != mp_count_keys(b, skip_id))
            return false;
        for (uint32_t i = 0; i < a->via.map.size; i++) {
            const msgpack_object_kv *kv = &a->via.map.ptr[i];
            if (skip_id && mp_key_is(&kv->key, "id")) continue;
            if (kv->key.type != MSGPACK_OBJECT_STR) return false;
            snprintf(path + at, cap - at, ".%.*s", (int)kv->key.via.str.size,
                     kv->key.via.str.ptr);
            const msgpack_object *other = mp_find(b, &kv->key);
            if (!other || !mp_equal(&kv->val, other, false, path, cap))
                return false;
        }
        path[at] = '\0';
        return true;
    default: return false;
    }
}

/* Packs what `b` describes and compares it with the vector's bytes. */
static void compare_request(optimd_client *c, const built *b,
                            const char *want_hex)
{
    nng_msg *msg;
    int rv = client_call_pack(c, &b->call, &msg);
    if (rv) {
        mismatch("packing failed: %s", optimd_client_error(c));
        return;
    }
    size_t want_len;
    const unsigned char *want = hex_bytes(want_hex, &want_len);
    msgpack_unpacked got_up, want_up;
    msgpack_unpacked_init(&got_up);
    msgpack_unpacked_init(&want_up);
    size_t off_got = 0, off_want = 0;
    bool got_ok = msgpack_unpack_next(&got_up, nng_msg_body(msg),
                                      nng_msg_len(msg), &off_got) ==
                      MSGPACK_UNPACK_SUCCESS &&
                  off_got == nng_msg_len(msg);
    bool want_ok = msgpack_unpack_next(&want_up, (const char *)want,
                                       want_len, &off_want) ==
                       MSGPACK_UNPACK_SUCCESS &&
                   off_want == want_len;
    char path[512] = "";
    if (!got_ok) mismatch("the packed request is not one msgpack value");
    else if (!want_ok) mismatch("the vector's msgpack does not decode");
    else if (!mp_equal(&got_up.data, &want_up.data, true, path, sizeof path))
        mismatch("the packed request differs from the vector at '%s'",
                 path[0] ? path : "(top)");
    msgpack_unpacked_destroy(&got_up);
    msgpack_unpacked_destroy(&want_up);
    nng_msg_free(msg);
}

static void check_request_vector(optimd_client *c, const jv *v)
{
    const jv *call = jget(v, "call"), *hex = jget(v, "msgpack");
    if (!call || call->t != J_OBJ || !hex || hex->t != J_STR) {
        mismatch("lacks call or msgpack");
        return;
    }
    call_args a = {.m = call};
    built b;
    memset(&b, 0, sizeof b);
    bool built_ok = build_request(&a, &b);
    args_done(&a);
    if (built_ok) compare_request(c, &b, hex->s);
}

/* ---- comparing typed results with `expect.result` ------------------- */

static void expect_num(const char *what, double got, const jv *want)
{
    if (!want || (want->t != J_INT && want->t != J_FLOAT))
        mismatch("%s: the expected value is not a number", what);
    else if (got != want->num)
        mismatch("%s: got %.17g, expected %.17g", what, got, want->num);
}

static void expect_uint(const char *what, uint64_t got, const jv *want)
{
    if (!want || want->t != J_INT || want->i < 0)
        mismatch("%s: the expected value is not a uint", what);
    else if (got != (uint64_t)want->i)
        mismatch("%s: got %llu, expected %lld", what,
                 (unsigned long long)got, (long long)want->i);
}

static void expect_bool(const char *what, bool got, const jv *want)
{
    if (!want || want->t != J_BOOL)
        mismatch("%s: the expected value is not a bool", what);
    else if (got != want->b)
        mismatch("%s: got %d, expected %d", what, got, want->b);
}

/* `got` NULL stands for nil. */
static void expect_str(const char *what, const char *got, const jv *want)
{
    if (!want) mismatch("%s: no expected value", what);
    else if (want->t == J_NULL) {
        if (got) mismatch("%s: got \"%s\", expected null", what, got);
    } else if (want->t != J_STR) {
        mismatch("%s: the expected value is not a string", what);
    } else if (!got || strcmp(got, want->s) != 0) {
        mismatch("%s: got %s%s%s, expected \"%s\"", what, got ? "\"" : "",
                 got ? got : "NULL", got ? "\"" : "", want->s);
    }
}

static void expect_bytes(const char *what, const void *got, size_t len,
                         const jv *want_hex)
{
    if (!want_hex || want_hex->t != J_STR) {
        mismatch("%s: the expected bytes are not a hex string", what);
        return;
    }
    size_t want_len;
    const unsigned char *want = hex_bytes(want_hex->s, &want_len);
    if (len != want_len || (len && memcmp(got, want, len) != 0))
        mismatch("%s: %zu bytes differ from the expected %zu", what, len,
                 want_len);
}

static void expect_shape(const char *what, uint32_t ndim,
                         const int64_t *shape, const jv *want)
{
    bool same = want && want->t == J_ARR && want->n == ndim;
    for (uint32_t k = 0; same && k < ndim; k++)
        same = want->items[k].t == J_INT && want->items[k].i == shape[k];
    if (!same) mismatch("%s: shape differs", what);
}

static void expect_dtype(const char *what, int32_t dtype, const jv *want)
{
    const char *name = dtype == OPTIMD_CLIENT_F32   ? "f32"
                       : dtype == OPTIMD_CLIENT_F64 ? "f64"
                                                    : "?";
    expect_str(what, name, want);
}

/* A hyperparameter map, by value, in any order. */
static void expect_hvalues(const char *what, const optimd_hvalue *hp,
                           size_t n, const jv *want)
{
    if (!want || want->t != J_OBJ) {
        mismatch("%s: the expected value is not an object", what);
        return;
    }
    if (n != want->n) mismatch("%s: %zu keys, expected %zu", what, n, want->n);
    for (size_t k = 0; k < want->n; k++) {
        const jv *w = &want->items[k];
        size_t i = 0;
        while (i < n && strcmp(hp[i].key, want->keys[k]) != 0) i++;
        char sub[160];
        snprintf(sub, sizeof sub, "%s['%s']", what, want->keys[k]);
        if (i == n) {
            mismatch("%s: missing", sub);
            continue;
        }
        if (w->t == J_BOOL) {
            if (hp[i].type != OPTIMD_HVALUE_BOOL) mismatch("%s: not a bool", sub);
            else expect_bool(sub, hp[i].i != 0, w);
        } else if (hp[i].type == OPTIMD_HVALUE_BOOL) {
            mismatch("%s: a bool, expected a number", sub);
        } else {
            expect_num(sub, hp[i].type == OPTIMD_HVALUE_INT ? (double)hp[i].i
                                                            : hp[i].f, w);
        }
    }
}

/* A map group name -> number against one column of per-group rows:
 * `which` 0 lr, 1 next_lr, 2 grad_norm. An absent map means no row may
 * have that value. */
static void expect_group_column(const char *what, const optimd_group_value *g,
                                size_t n, int which, const jv *want)
{
    size_t have = 0;
    for (size_t i = 0; i < n; i++) {
        double v = which == 0 ? g[i].lr : which == 1 ? g[i].next_lr
                                                     : g[i].grad_norm;
        if (!isnan(v)) have++;
    }
    size_t expected = want && want->t == J_OBJ ? want->n : 0;
    if (want && want->t != J_OBJ) mismatch("%s: expected value not an object", what);
    if (have != expected)
        mismatch("%s: %zu groups have a value, expected %zu", what, have,
                 expected);
    for (size_t k = 0; k < expected; k++) {
        size_t i = 0;
        while (i < n && strcmp(g[i].name, want->keys[k]) != 0) i++;
        char sub[160];
        snprintf(sub, sizeof sub, "%s['%s']", what, want->keys[k]);
        if (i == n) {
            mismatch("%s: missing", sub);
            continue;
        }
        expect_num(sub, which == 0 ? g[i].lr : which == 1 ? g[i].next_lr
                                                          : g[i].grad_norm,
                   &want->items[k]);
    }
}

/* Output buffers for the tensors an expected result names. */
static void expect_tensors_in(const char *what, const optimd_named_tensor *t,
                              size_t n, const jv *want)
{
    for (size_t k = 0; k < n; k++) {
        const jv *w = &want->items[k];
        char sub[160];
        snprintf(sub, sizeof sub, "%s['%s']", what, t[k].name);
        size_t len;
        unsigned char *bytes = hex_bytes(jget(w, "data") ? jget(w, "data")->s
                                                         : "", &len);
        if (memcmp(t[k].data, bytes, len) != 0)
            mismatch("%s: values differ", sub);
    }
}

/* Marks each result key as checked; any left unchecked fails. */
typedef struct result_keys {
    const jv *r;
    bool seen[64];
} result_keys;

static const jv *rk(result_keys *k, const char *key)
{
    for (size_t i = 0; i < k->r->n && i < 64; i++)
        if (strcmp(k->r->keys[i], key) == 0) {
            k->seen[i] = true;
            return &k->r->items[i];
        }
    return NULL;
}

static void rk_done(result_keys *k)
{
    for (size_t i = 0; i < k->r->n && i < 64; i++)
        if (!k->seen[i])
            mismatch("result key '%s' is not checked by this test",
                     k->r->keys[i]);
}

/* `schedulers` and `milestones` (absent: none may be reported). */
static void expect_combined(const optimd_sched_info *sc, size_t n_sc,
                            const uint64_t *ms, size_t n_ms,
                            const jv *want_sc, const jv *want_ms)
{
    size_t expected = want_sc && want_sc->t == J_ARR ? want_sc->n : 0;
    if (n_sc != expected)
        mismatch("schedulers: %zu, expected %zu", n_sc, expected);
    for (size_t i = 0; i < n_sc && i < expected; i++) {
        result_keys k = {.r = &want_sc->items[i]};
        expect_str("schedulers[].scheduler", sc[i].scheduler,
                   rk(&k, "scheduler"));
        expect_hvalues("schedulers[].sched_hparams", sc[i].sched_hparams,
                       sc[i].n_sched_hparams, rk(&k, "sched_hparams"));
        rk_done(&k);
    }
    expected = want_ms && want_ms->t == J_ARR ? want_ms->n : 0;
    if (n_ms != expected)
        mismatch("milestones: %zu, expected %zu", n_ms, expected);
    for (size_t i = 0; i < n_ms && i < expected; i++)
        expect_uint("milestones[]", ms[i], &want_ms->items[i]);
}

static void expect_group_infos(const optimd_group_info *g, size_t n,
                               const jv *want)
{
    if (!want || want->t != J_ARR || want->n != n) {
        mismatch("groups: %zu, expected %zu", n, want ? want->n : 0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        result_keys k = {.r = &want->items[i]};
        expect_str("groups[].name", g[i].name, rk(&k, "name"));
        expect_str("groups[].scheduler", g[i].scheduler, rk(&k, "scheduler"));
        expect_hvalues("groups[].hparams", g[i].hparams, g[i].n_hparams,
                       rk(&k, "hparams"));
        expect_hvalues("groups[].sched_hparams", g[i].sched_hparams,
                       g[i].n_sched_hparams, rk(&k, "sched_hparams"));
        expect_num("groups[].base_lr", g[i].base_lr, rk(&k, "base_lr"));
        expect_num("groups[].lr", g[i].lr, rk(&k, "lr"));
        expect_uint("groups[].params", g[i].params, rk(&k, "params"));
        expect_combined(g[i].schedulers, g[i].n_schedulers, g[i].milestones,
                        g[i].n_milestones, rk(&k, "schedulers"),
                        rk(&k, "milestones"));
        rk_done(&k);
    }
}

static void check_details(const optimd_session_details *d, result_keys *k,
                          bool full)
{
    expect_hvalues("hparams", d->hparams, d->n_hparams, rk(k, "hparams"));
    expect_hvalues("sched_hparams", d->sched_hparams, d->n_sched_hparams,
                   rk(k, "sched_hparams"));
    expect_num("base_lr", d->base_lr, rk(k, "base_lr"));
    expect_num("lr", d->lr, rk(k, "lr"));
    expect_group_infos(d->groups, d->n_groups, rk(k, "groups"));
    expect_combined(d->schedulers, d->n_schedulers, d->milestones,
                    d->n_milestones, rk(k, "schedulers"),
                    rk(k, "milestones"));
    if (!full) return;
    const jv *la = rk(k, "lookahead");
    if (!la || la->t == J_NULL) {
        if (d->has_lookahead) mismatch("lookahead: reported, expected none");
    } else if (!d->has_lookahead) {
        mismatch("lookahead: none reported");
    } else {
        result_keys lk = {.r = la};
        expect_num("lookahead.k", (double)d->lookahead_k, rk(&lk, "k"));
        expect_num("lookahead.alpha", d->lookahead_alpha, rk(&lk, "alpha"));
        rk_done(&lk);
    }
    const jv *cs = rk(k, "client_seq");
    if (cs) expect_uint("client_seq", d->client_seq, cs);
    if ((cs != NULL) != (d->has_client_seq != 0)) mismatch("client_seq presence");
    expect_str("durability", d->durability, rk(k, "durability"));
    expect_str("session", d->session, rk(k, "session"));
    expect_str("optimizer", d->optimizer, rk(k, "optimizer"));
    expect_str("optimizer_version", d->optimizer_version,
               rk(k, "optimizer_version"));
    expect_str("scheduler", d->scheduler, rk(k, "scheduler"));
    expect_uint("steps", d->steps, rk(k, "steps"));
    const jv *params = rk(k, "params");
    if (!params || params->t != J_ARR || params->n != d->n_params) {
        mismatch("params: %zu entries", d->n_params);
        return;
    }
    for (size_t i = 0; i < d->n_params; i++) {
        result_keys pk = {.r = &params->items[i]};
        const optimd_param_info *p = &d->params[i];
        expect_str("params[].name", p->name, rk(&pk, "name"));
        expect_str("params[].group", p->group, rk(&pk, "group"));
        expect_dtype("params[].dtype", p->dtype, rk(&pk, "dtype"));
        expect_shape("params[].shape", p->ndim, p->shape, rk(&pk, "shape"));
        expect_uint("params[].steps", p->steps, rk(&pk, "steps"));
        rk_done(&pk);
    }
}

static void check_plugins(const optimd_plugin_info *list, size_t n,
                          const jv *want)
{
    if (!want || want->t != J_ARR || want->n != n) {
        mismatch("plugins: %zu entries", n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const optimd_plugin_info *p = &list[i];
        result_keys k = {.r = &want->items[i]};
        expect_str("id", p->id, rk(&k, "id"));
        expect_str("kind", p->kind, rk(&k, "kind"));
        expect_str("version", p->version, rk(&k, "version"));
        expect_str("description", p->description, rk(&k, "description"));
        const jv *hp = rk(&k, "hparams");
        if (!hp || hp->t != J_ARR || hp->n != p->n_hparams) {
            mismatch("'%s' hparams: %zu", p->id, p->n_hparams);
        } else {
            for (size_t j = 0; j < hp->n; j++) {
                const optimd_hparam_info *h = &p->hparams[j];
                result_keys hk = {.r = &hp->items[j]};
                static const char *const types[] = {"?", "float", "int", "bool"};
                expect_str("hparam key", h->key, rk(&hk, "key"));
                expect_str("hparam type", types[h->type & 3], rk(&hk, "type"));
                expect_bool("required", h->required, rk(&hk, "required"));
                expect_bool("mutable", h->is_mutable, rk(&hk, "mutable"));
                expect_num("min", h->min, rk(&hk, "min"));
                expect_num("max", h->max, rk(&hk, "max"));
                expect_bool("min_exclusive", h->min_exclusive,
                            rk(&hk, "min_exclusive"));
                expect_bool("max_exclusive", h->max_exclusive,
                            rk(&hk, "max_exclusive"));
                const jv *def = rk(&hk, "default");
                if (!def || def->t == J_NULL) {
                    if (h->def.type != 0) mismatch("default: expected null");
                } else if (def->t == J_BOOL) {
                    expect_bool("default", h->def.i != 0, def);
                } else {
                    expect_num("default", h->def.type == OPTIMD_HVALUE_FLOAT
                                              ? h->def.f
                                              : (double)h->def.i, def);
                }
                expect_str("doc", h->doc, rk(&hk, "doc"));
                rk_done(&hk);
            }
        }
        const jv *slots = rk(&k, "slots");
        static const jv none = {.t = J_ARR};
        if (!slots) slots = &none;     /* a scheduler may leave it out */
        if (slots->t != J_ARR || slots->n != p->n_slots) {
            mismatch("'%s' slots: %zu", p->id, p->n_slots);
        } else {
            for (size_t j = 0; j < slots->n; j++) {
                const optimd_slot_info *s = &p->slots[j];
                result_keys sk = {.r = &slots->items[j]};
                expect_str("slot key", s->key, rk(&sk, "key"));
                expect_str("slot dtype", s->dtype, rk(&sk, "dtype"));
                expect_str("slot shape", s->shape, rk(&sk, "shape"));
                expect_str("slot enabled_by", s->enabled_by,
                           rk(&sk, "enabled_by"));
                expect_str("slot doc", s->doc, rk(&sk, "doc"));
                rk_done(&sk);
            }
        }
        const jv *dtypes = rk(&k, "dtypes");
        if (!dtypes) dtypes = &none;
        if (dtypes->t != J_ARR || dtypes->n != p->n_dtypes)
            mismatch("'%s' dtypes: %zu", p->id, p->n_dtypes);
        else
            for (size_t j = 0; j < dtypes->n; j++)
                expect_str("dtypes[]", p->dtypes[j], &dtypes->items[j]);
        const jv *sliced = rk(&k, "sliced");
        bool want_sliced = sliced && sliced->t == J_BOOL && sliced->b;
        if (sliced && sliced->t != J_BOOL)
            mismatch("'%s' sliced: not a bool in the vector", p->id);
        else if ((p->sliced != 0) != want_sliced)
            mismatch("'%s' sliced: %d", p->id, p->sliced);
        rk_done(&k);
    }
}

static void check_state(const optimd_param_state *st, size_t n, const jv *want)
{
    if (!want || want->t != J_OBJ || want->n != n) {
        mismatch("state: %zu parameters", n);
        return;
    }
    for (size_t k = 0; k < want->n; k++) {
        size_t i = 0;
        while (i < n && strcmp(st[i].name, want->keys[k]) != 0) i++;
        const jv *slots = &want->items[k];
        if (i == n || slots->t != J_OBJ || slots->n != st[i].n_slots) {
            mismatch("state['%s'] missing or of another size", want->keys[k]);
            continue;
        }
        for (size_t j = 0; j < slots->n; j++) {
            size_t s = 0;
            while (s < st[i].n_slots &&
                   strcmp(st[i].slots[s].name, slots->keys[j]) != 0)
                s++;
            char sub[160];
            snprintf(sub, sizeof sub, "state['%s']['%s']", want->keys[k],
                     slots->keys[j]);
            if (s == st[i].n_slots) {
                mismatch("%s: missing", sub);
                continue;
            }
            const optimd_tensor *t = &st[i].slots[s];
            expect_dtype(sub, t->dtype, jget(&slots->items[j], "dtype"));
            expect_shape(sub, t->ndim, t->shape, jget(&slots->items[j], "shape"));
            expect_bytes(sub, t->data, t->nbytes, jget(&slots->items[j], "data"));
        }
    }
}

/* A str key that only some entries carry: absent means NULL. */
static void expect_opt_str(const char *what, const char *got, const jv *want)
{
    if (want) expect_str(what, got, want);
    else if (got) mismatch("%s: got \"%s\", expected none", what, got);
}

static void check_reload(const optimd_reload_report *r, const jv *want)
{
    if (!want || want->t != J_ARR || want->n != r->n_files) {
        mismatch("plugins: %zu files, expected %zu", r->n_files,
                 want && want->t == J_ARR ? want->n : 0);
        return;
    }
    size_t refused = 0;
    for (size_t i = 0; i < r->n_files; i++) {
        const optimd_plugin_file *f = &r->files[i];
        result_keys fk = {.r = &want->items[i]};
        if (want->items[i].t != J_OBJ) {
            mismatch("plugins[%zu] is not an object", i);
            continue;
        }
        expect_str("path", f->path, rk(&fk, "path"));
        expect_bool("loaded", f->loaded, rk(&fk, "loaded"));
        expect_opt_str("id", f->id, rk(&fk, "id"));
        expect_opt_str("version", f->version, rk(&fk, "version"));
        expect_opt_str("error", f->error, rk(&fk, "error"));
        rk_done(&fk);
        refused += !f->loaded;
    }
    if (refused != r->n_refused)
        mismatch("n_refused %zu, but %zu entries are refused", r->n_refused,
                 refused);
    if (r->maybe_incomplete) mismatch("maybe_incomplete set by the reader");
}

/* Reads a parsed success reply with `op`'s reader and compares the typed
 * result with `want` (NULL: only the reader's verdict matters). Returns
 * the reader's code. */
static int read_and_check(optimd_client *c, const char *op,
                          const client_reply *rep, const jv *want)
{
    result_keys k = {.r = want};
    static const jv empty = {.t = J_OBJ};
    if (!want) k.r = &empty;
    int rv;
    if (strcmp(op, "hello") == 0) {
        optimd_server_info info;
        if ((rv = read_hello(c, rep, &info)) || !want) return rv;
        expect_str("server", info.server, rk(&k, "server"));
        expect_str("version", info.version, rk(&k, "version"));
        expect_num("protocol", (double)info.protocol, rk(&k, "protocol"));
        const jv *abi = rk(&k, "abi");
        if (!abi || abi->t != J_ARR || abi->n != 2) mismatch("abi");
        else {
            expect_num("abi[0]", (double)info.abi_major, &abi->items[0]);
            expect_num("abi[1]", (double)info.abi_minor, &abi->items[1]);
        }
        expect_uint("max_message", info.max_message, rk(&k, "max_message"));
    } else if (strcmp(op, "open") == 0) {
        optimd_session s;
        double lr = NAN;
        int32_t existing = -1;
        const jv *name = want ? jget(want, "session") : NULL;
        if ((rv = read_open(c, rep, name && name->t == J_STR ? name->s : "run1",
                            &s, &lr, &existing)) || !want)
            return rv;
        expect_str("session", s.name, rk(&k, "session"));
        expect_str("token", s.token, rk(&k, "token"));
        expect_num("lr", lr, rk(&k, "lr"));
        expect_bool("existing", existing == 1, rk(&k, "existing"));
    } else if (strcmp(op, "register") == 0) {
        const jv *n = want ? jget(want, "registered") : NULL;
        if ((rv = read_register(c, rep, n ? (size_t)n->i : 0)) || !want)
            return rv;
        rk(&k, "registered");   /* read_register checked it equals n */
        /* ...and that it would reject another count. */
        char saved[CLIENT_ERR_CAP];
        snprintf(saved, sizeof saved, "%s", c->err);
        if (read_register(c, rep, (size_t)n->i + 1) == 0)
            mismatch("registered: accepted as %lld too", (long long)n->i + 1);
        snprintf(c->err, sizeof c->err, "%s", saved);
    } else if (strcmp(op, "step") == 0) {
        const jv *params = want ? jget(want, "params") : NULL;
        size_t n_out = 0;
        optimd_named_tensor *out =
            params ? json_tensors(params, true, &n_out) : NULL;
        optimd_group_value groups[OPTIMD_MAX_GROUPS];
        optimd_step_result res;
        if ((rv = read_step(c, rep, out, n_out, groups, OPTIMD_MAX_GROUPS,
                            &res)) || !want)
            return rv;
        expect_uint("steps", res.steps, rk(&k, "steps"));
        expect_num("lr", res.lr, rk(&k, "lr"));
        expect_num("next_lr", res.next_lr, rk(&k, "next_lr"));
        expect_bool("duplicate", res.duplicate, rk(&k, "duplicate"));
        const jv *norm = rk(&k, "grad_norm");
        if (norm) expect_num("grad_norm", res.grad_norm, norm);
        else if (!isnan(res.grad_norm)) mismatch("grad_norm: not NaN");
        expect_group_column("lrs", groups, res.n_groups, 0, rk(&k, "lrs"));
        expect_group_column("next_lrs", groups, res.n_groups, 1,
                            rk(&k, "next_lrs"));
        expect_group_column("grad_norms", groups, res.n_groups, 2,
                            rk(&k, "grad_norms"));
        if (params) {
            rk(&k, "params");
            expect_tensors_in("params", out, n_out, params);
        }
    } else if (strcmp(op, "observe") == 0) {
        optimd_group_value groups[OPTIMD_MAX_GROUPS];
        double lr;
        size_t n;
        if ((rv = read_observe(c, rep, &lr, groups, OPTIMD_MAX_GROUPS, &n)) ||
            !want)
            return rv;
        expect_num("lr", lr, rk(&k, "lr"));
        expect_group_column("lrs", groups, n, 0, rk(&k, "lrs"));
        expect_group_column("(observe has no next_lrs)", groups, n, 1, NULL);
    } else if (strcmp(op, "pull") == 0) {
        const jv *params = want ? jget(want, "params") : NULL;
        size_t n_out = 0;
        optimd_named_tensor *out =
            params ? json_tensors(params, true, &n_out) : NULL;
        if ((rv = reply_tensors_into(c, rep, out, n_out)) || !want) return rv;
        rk(&k, "params");
        const msgpack_object *map = wire_map_get(rep->root, "params");
        if (map->via.map.size != n_out)
            mismatch("params: %u tensors, expected %zu",
                     (unsigned)map->via.map.size, n_out);
        expect_tensors_in("params", out, n_out, params);
    } else if (strcmp(op, "state") == 0) {
        optimd_param_state *st;
        size_t n;
        if ((rv = read_state(c, rep, &st, &n))) return rv;
        if (want) check_state(st, n, rk(&k, "state"));
        optimd_param_state_free(st, n);
    } else if (strcmp(op, "sessions") == 0) {
        optimd_session_summary *list;
        size_t n;
        if ((rv = read_sessions(c, rep, &list, &n))) return rv;
        const jv *w = want ? rk(&k, "sessions") : NULL;
        if (want && (!w || w->t != J_ARR || w->n != n)) {
            mismatch("sessions: %zu entries", n);
        } else if (want) {
            for (size_t i = 0; i < n; i++) {
                result_keys sk = {.r = &w->items[i]};
                expect_str("session", list[i].name, rk(&sk, "session"));
                expect_str("optimizer", list[i].optimizer, rk(&sk, "optimizer"));
                expect_str("scheduler", list[i].scheduler, rk(&sk, "scheduler"));
                expect_uint("params", list[i].params, rk(&sk, "params"));
                expect_uint("steps", list[i].steps, rk(&sk, "steps"));
                rk_done(&sk);
            }
        }
        optimd_session_list_free(list, n);
    } else if (strcmp(op, "plugins") == 0) {
        optimd_plugin_info *list;
        size_t n;
        if ((rv = read_plugins(c, rep, &list, &n))) return rv;
        if (want) check_plugins(list, n, rk(&k, "plugins"));
        optimd_plugin_list_free(list, n);
    } else if (strcmp(op, "close") == 0 || strcmp(op, "drop") == 0 ||
               strcmp(op, "shutdown") == 0) {
        rv = 0;                /* the envelope is the whole reply */
    } else if (strcmp(op, "export") == 0) {
        void *snap;
        size_t size;
        if ((rv = read_export(c, rep, &snap, &size))) return rv;
        if (want) expect_bytes("snapshot", snap, size, rk(&k, "snapshot"));
        free(snap);
    } else if (strcmp(op, "import") == 0) {
        optimd_session s;
        uint64_t steps;
        const jv *name = want ? jget(want, "session") : NULL;
        if ((rv = read_import(c, rep, name && name->t == J_STR ? name->s : NULL,
                              &s, &steps)) || !want)
            return rv;
        expect_str("session", s.name, rk(&k, "session"));
        expect_str("token", s.token, rk(&k, "token"));
        expect_uint("steps", steps, rk(&k, "steps"));
    } else if (strcmp(op, "hparams") == 0 || strcmp(op, "set_hparams") == 0 ||
               strcmp(op, "info") == 0 || strcmp(op, "attach") == 0) {
        bool full = op[0] == 'i' || op[0] == 'a';
        optimd_session_details *d;
        if ((rv = read_details(c, rep, full, &d))) return rv;
        if (want) check_details(d, &k, full);
        optimd_session_details_free(d);
    } else if (strcmp(op, "switch") == 0) {
        optimd_switch_result sw;
        if ((rv = read_switch(c, rep, &sw))) return rv;
        if (want) {
            expect_str("optimizer", sw.optimizer, rk(&k, "optimizer"));
            expect_str("optimizer_version", sw.optimizer_version,
                       rk(&k, "optimizer_version"));
            const jv *carried = rk(&k, "carried");
            if (!carried || carried->t != J_ARR ||
                carried->n != sw.n_carried) {
                mismatch("carried: %zu keys, expected %zu", sw.n_carried,
                         carried && carried->t == J_ARR ? carried->n : 0);
            } else {
                for (size_t i = 0; i < sw.n_carried; i++)
                    expect_str("carried[]", sw.carried[i],
                               &carried->items[i]);
                if (sw.carried[sw.n_carried])
                    mismatch("carried is not NULL-terminated");
            }
        }
        optimd_switch_result_free(&sw);
        if (sw.mem || sw.carried)
            mismatch("optimd_switch_result_free left pointers behind");
    } else if (strcmp(op, "reload") == 0 || strcmp(op, "load") == 0) {
        optimd_reload_report r;
        if ((rv = read_reload(c, rep, &r))) return rv;
        if (want) check_reload(&r, rk(&k, "plugins"));
        optimd_reload_report_free(&r);
    } else {
        mismatch("op '%s' has no reply reader here", op);
        return OPTIMD_CLIENT_E_ARG;
    }
    if (want) rk_done(&k);
    return 0;
}

static void check_reply_vector(optimd_client *c, const jv *v)
{
    const jv *op = jget(v, "op"), *id = jget(v, "request_id"),
             *hex = jget(v, "msgpack"), *expect = jget(v, "expect");
    if (!op || op->t != J_STR || !id || id->t != J_INT || !hex ||
        hex->t != J_STR || !expect || expect->t != J_OBJ) {
        mismatch("lacks op, request_id, msgpack or expect");
        return;
    }
    size_t len;
    const unsigned char *bytes = hex_bytes(hex->s, &len);
    nng_msg *msg;
    if (nng_msg_alloc(&msg, 0) != 0 || nng_msg_append(msg, bytes, len) != 0) {
        mismatch("out of memory");
        return;
    }
    client_reply rep;
    int rv = client_parse_reply(c, op->s, (uint64_t)id->i, msg, &rep);
    if (rv == 0) {
        const jv *ok = jget(expect, "ok");
        bool want_ok = ok && ok->t == J_BOOL && ok->b;
        rv = read_and_check(c, op->s, &rep, want_ok ? jget(expect, "result")
                                                    : NULL);
        client_reply_free(&rep);
    }
    const jv *invalid = jget(expect, "invalid"), *ok = jget(expect, "ok");
    if (invalid) {
        if (invalid->t != J_BOOL || !invalid->b || expect->n != 1)
            mismatch("expect.invalid is not the only key, or not true");
        if (rv != OPTIMD_CLIENT_E_PROTOCOL)
            mismatch("got %d (%s), expected a protocol error", rv,
                     optimd_error_name(rv));
    } else if (ok && ok->t == J_BOOL && ok->b) {
        if (rv != 0)
            mismatch("got %d (%s: %s), expected success", rv,
                     optimd_error_name(rv), optimd_client_error(c));
        if (expect->n != 2 || !jget(expect, "result"))
            mismatch("expect has keys besides ok and result");
    } else if (ok && ok->t == J_BOOL) {
        const jv *code = jget(expect, "code"), *name = jget(expect, "error");
        if (!code || code->t != J_INT || !name || name->t != J_STR ||
            expect->n != 3) {
            mismatch("expect of an error lacks code or error");
        } else {
            if (rv != code->i)
                mismatch("got %d (%s), expected server error %lld", rv,
                         optimd_error_name(rv), (long long)code->i);
            if (strcmp(optimd_error_name(rv), name->s) != 0)
                mismatch("the code's name is %s, expected %s",
                         optimd_error_name(rv), name->s);
            /* The client reports the daemon's own name for it. */
            size_t nl = strlen(name->s);
            if (strncmp(optimd_client_error(c), name->s, nl) != 0 ||
                optimd_client_error(c)[nl] != ':')
                mismatch("the error text '%s' does not start with '%s:'",
                         optimd_client_error(c), name->s);
        }
    } else {
        mismatch("expect is neither invalid nor ok");
    }
}

/* ---- driving -------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *grown = realloc(buf, cap);
            if (!grown) break;
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0) break;
        n += got;
    }
    fclose(f);
    *len = n;
    return buf;
}

typedef void (*vector_fn)(optimd_client *c, const jv *v);

/* Runs one vector; returns its mismatch count. */
static int run_vector(optimd_client *c, const char *kind, const jv *v,
                      vector_fn fn)
{
    const jv *name = jget(v, "name");
    vec_kind = kind;
    vec_name = name && name->t == J_STR ? name->s : "?";
    int before = mismatches;
    fn(c, v);
    return mismatches - before;
}

/* The checks above must be able to fail: a vector whose expectation is
 * changed must be caught. Each mutation edits a parsed vector in place
 * and is undone after. */
static void self_checks(optimd_client *c, const jv *requests,
                        const jv *replies)
{
    quiet = true;
    int caught = 0, tried = 0;
    for (size_t i = 0; i < replies->n; i++) {
        jv *v = &replies->items[i];
        jv *result = (jv *)jget(jget(v, "expect"), "result");
        if (!result) continue;
        /* Every number and string of the result's top level, changed. */
        for (size_t k = 0; k < result->n; k++) {
            jv *item = &result->items[k];
            jv saved = *item;
            if (item->t == J_INT) {
                item->i += 1;
                item->num += 1;
            } else if (item->t == J_FLOAT) {
                item->num = item->num * 2 + 1;
            } else if (item->t == J_STR && item->s[0]) {
                item->s = "mutated-by-self-check";
            } else if (item->t == J_BOOL) {
                item->b = !item->b;
            } else {
                continue;
            }
            tried++;
            if (run_vector(c, "self-check", v, check_reply_vector) > 0)
                caught++;
            else
                fprintf(stderr, "self-check: changing '%s' of reply '%s' "
                        "went unnoticed\n", result->keys[k],
                        jget(v, "name")->s);
            *item = saved;
        }
    }
    CHECK(tried > 20 && caught == tried,
          "%d of %d mutated reply expectations caught", caught, tried);
    /* A request compared with another vector's bytes must differ. */
    tried = caught = 0;
    for (size_t i = 0; i + 1 < requests->n; i++) {
        jv *v = &requests->items[i];
        jv *hex = (jv *)jget(v, "msgpack");
        jv saved = *hex;
        *hex = *jget(&requests->items[i + 1], "msgpack");
        tried++;
        if (run_vector(c, "self-check", v, check_request_vector) > 0) caught++;
        else
            fprintf(stderr, "self-check: request '%s' matched the bytes of "
                    "the next vector\n", jget(v, "name")->s);
        *hex = saved;
    }
    CHECK(tried > 10 && caught == tried,
          "%d of %d swapped request vectors caught", caught, tried);
    quiet = false;
}

/* Hostile container counts are refused by the pre-scan, before msgpack-c
 * would reserve room for them. */
static int parse_bytes(optimd_client *c, const void *bytes, size_t len)
{
    nng_msg *msg;
    if (nng_msg_alloc(&msg, 0) != 0 || nng_msg_append(msg, bytes, len) != 0)
        return OPTIMD_CLIENT_E_NOMEM;
    client_reply rep;
    int rv = client_parse_reply(c, "hello", 7, msg, &rep);
    if (rv == 0) client_reply_free(&rep);
    return rv;
}

/* Success replies of switch, reload and load whose own keys break the
 * protocol: the vectors hold only good ones of these ops. */
typedef struct bad_file {
    const char *path;          /* NULL: absent */
    int loaded;                /* -1 absent, 0, 1; 2: the str "yes" */
    const char *id, *version, *error;   /* NULL: absent */
    bool version_int;          /* version is 2, not a str */
    bool not_a_map;            /* the entry is the str "x" */
} bad_file;

static void pack_opt_str(msgpack_packer *pk, const char *key, const char *v,
                         size_t len)
{
    if (!v) return;
    wire_pack_str(pk, key);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, v, len);
}

static int parse_admin(optimd_client *c, const char *op,
                       const msgpack_sbuffer *sb)
{
    nng_msg *msg;
    if (nng_msg_alloc(&msg, 0) != 0 ||
        nng_msg_append(msg, sb->data, sb->size) != 0)
        return OPTIMD_CLIENT_E_NOMEM;
    client_reply rep;
    int rv = client_parse_reply(c, op, 7, msg, &rep);
    if (rv) return rv;
    if (strcmp(op, "switch") == 0) {
        optimd_switch_result r;
        memset(&r, 0, sizeof r);
        rv = read_switch(c, &rep, &r);
        optimd_switch_result_free(&r);
    } else {
        optimd_reload_report r;
        memset(&r, 0, sizeof r);
        rv = read_reload(c, &rep, &r);
        if (rv == 0)
            CHECK(r.n_files == 1 && r.n_refused == (r.files[0].loaded == 0),
                  "%s: %zu files, %zu refused", op, r.n_files, r.n_refused);
        optimd_reload_report_free(&r);
    }
    client_reply_free(&rep);
    return rv;
}

static void envelope(msgpack_packer *pk, uint32_t n_keys)
{
    msgpack_pack_map(pk, 3 + n_keys);
    wire_pack_str(pk, "v");
    msgpack_pack_int(pk, 1);
    wire_pack_str(pk, "id");
    msgpack_pack_int(pk, 7);
    wire_pack_str(pk, "ok");
    msgpack_pack_true(pk);
}

static int reload_reply(optimd_client *c, const char *op, const bad_file *f)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    envelope(&pk, 1);
    wire_pack_str(&pk, "plugins");
    msgpack_pack_array(&pk, 1);
    if (f->not_a_map) {
        wire_pack_str(&pk, "x");
    } else {
        uint32_t n = (f->path != NULL) + (f->loaded >= 0) + (f->id != NULL) +
                     (f->version != NULL || f->version_int) +
                     (f->error != NULL);
        msgpack_pack_map(&pk, n);
        pack_opt_str(&pk, "path", f->path, f->path ? strlen(f->path) : 0);
        if (f->loaded >= 0) {
            wire_pack_str(&pk, "loaded");
            if (f->loaded == 2) wire_pack_str(&pk, "yes");
            else if (f->loaded) msgpack_pack_true(&pk);
            else msgpack_pack_false(&pk);
        }
        pack_opt_str(&pk, "id", f->id, f->id ? strlen(f->id) : 0);
        if (f->version_int) {
            wire_pack_str(&pk, "version");
            msgpack_pack_int(&pk, 2);
        }
        pack_opt_str(&pk, "version", f->version,
                     f->version ? strlen(f->version) : 0);
        pack_opt_str(&pk, "error", f->error, f->error ? strlen(f->error) : 0);
    }
    int rv = parse_admin(c, op, &sb);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

/* carried: 0 ["momentum_buffer"], 1 absent, 2 [1], 3 a str with a NUL,
 * 4 "momentum_buffer" (not an array). */
static int switch_reply(optimd_client *c, const char *opt, const char *ver,
                        int carried)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    envelope(&pk, (opt != NULL) + (ver != NULL) + (carried != 1));
    pack_opt_str(&pk, "optimizer", opt, opt ? strlen(opt) : 0);
    pack_opt_str(&pk, "optimizer_version", ver, ver ? strlen(ver) : 0);
    if (carried != 1) {
        wire_pack_str(&pk, "carried");
        if (carried != 4) msgpack_pack_array(&pk, 1);
        switch (carried) {
        case 0: wire_pack_str(&pk, "momentum_buffer"); break;
        case 2: msgpack_pack_int(&pk, 1); break;
        case 3:
            msgpack_pack_str(&pk, 3);
            msgpack_pack_str_body(&pk, "a\0b", 3);
            break;
        default: wire_pack_str(&pk, "momentum_buffer"); break;
        }
    }
    int rv = parse_admin(c, "switch", &sb);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

static void test_admin_replies(optimd_client *c)
{
    const int P = OPTIMD_CLIENT_E_PROTOCOL;
    CHECK(switch_reply(c, "rmsprop", "1.0.0", 0) == 0, "a good switch: %s",
          optimd_client_error(c));
    static const struct {
        const char *opt, *ver;
        int carried;
    } bad_switch[] = {{"rmsprop", "1.0.0", 1}, {"rmsprop", "1.0.0", 2},
                      {"rmsprop", "1.0.0", 3}, {"rmsprop", "1.0.0", 4},
                      {NULL, "1.0.0", 0},      {"rmsprop", NULL, 0},
                      {"", "1.0.0", 0}};
    for (size_t i = 0; i < sizeof bad_switch / sizeof bad_switch[0]; i++)
        CHECK(switch_reply(c, bad_switch[i].opt, bad_switch[i].ver,
                           bad_switch[i].carried) == P,
              "bad switch reply %zu accepted", i);
    static const bad_file good[] = {
        {"/p/toy.so", 1, "toy", "2.0.0", NULL, false, false},
        {"/p/bad.so", 0, NULL, NULL, "no symbol", false, false},
        /* Keys no client knows are ignored. */
        {"/p/toy.so", 1, "toy", "2.0.0", "unused", false, false}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        for (int op = 0; op < 2; op++)
            CHECK(reload_reply(c, op ? "load" : "reload", &good[i]) == 0,
                  "good reload reply %zu refused: %s", i,
                  optimd_client_error(c));
    static const bad_file bad[] = {
        {"/p/toy.so", 1, NULL, "2.0.0", NULL, false, false},
        {"/p/toy.so", 1, "toy", NULL, NULL, false, false},
        {"/p/toy.so", 1, "toy", NULL, NULL, true, false},
        {"/p/bad.so", 0, "toy", "2.0.0", NULL, false, false},
        {"/p/toy.so", 2, "toy", "2.0.0", NULL, false, false},
        {"/p/toy.so", -1, "toy", "2.0.0", NULL, false, false},
        {NULL, 1, "toy", "2.0.0", NULL, false, false},
        {NULL, 0, NULL, NULL, NULL, false, true}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(reload_reply(c, i % 2 ? "load" : "reload", &bad[i]) == P,
              "bad reload reply %zu accepted", i);
    /* `plugins` missing, or not an array. */
    for (int k = 0; k < 2; k++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        envelope(&pk, (uint32_t)k);
        if (k) {
            wire_pack_str(&pk, "plugins");
            msgpack_pack_map(&pk, 0);
        }
        CHECK(parse_admin(c, "reload", &sb) == P,
              "a reload reply with %s accepted",
              k ? "a map for plugins" : "no plugins");
        msgpack_sbuffer_destroy(&sb);
    }
}

static void test_prescan(optimd_client *c)
{
    /* {"v": 1, "id": 7, "ok": true}, and prefixes of it. */
    static const unsigned char good[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'i',
                                         'd',  0x07, 0xa2, 'o', 'k', 0xc3};
    CHECK(parse_bytes(c, good, sizeof good) == 0, "a good reply: %s",
          optimd_client_error(c));
    for (size_t cut = 0; cut < sizeof good; cut++)
        CHECK(parse_bytes(c, good, cut) == OPTIMD_CLIENT_E_PROTOCOL,
              "%zu of its bytes accepted", cut);
    static const struct {
        const char *what;
        unsigned char bytes[16];
        size_t len;
    } hostile[] = {
        {"map32 of 2^32-1 pairs", {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0}, 6},
        {"array32 of 2^31 values", {0xdd, 0x80, 0x00, 0x00, 0x00, 0x01}, 6},
        {"map16 of 65535 pairs in a map",
         {0x81, 0xa1, 'v', 0xde, 0xff, 0xff, 0x01, 0x02}, 8},
        {"array16 of 3 values with 2 bytes left",
         {0xdc, 0x00, 0x03, 0x01, 0x02}, 5},
    };
    for (size_t k = 0; k < sizeof hostile / sizeof hostile[0]; k++) {
        int rv = parse_bytes(c, hostile[k].bytes, hostile[k].len);
        CHECK(rv == OPTIMD_CLIENT_E_PROTOCOL &&
                  strstr(optimd_client_error(c), "claims"),
              "%s: %d (%s)", hostile[k].what, rv, optimd_client_error(c));
    }
    char why[160];
    static const unsigned char bin_long[] = {0xc4, 0x05, 1, 2};
    CHECK(!wire_prescan(bin_long, sizeof bin_long, why, sizeof why) &&
              strstr(why, "truncated"), "bin8 past the end: %s", why);
    static const unsigned char nested[] = {0x91, 0x91, 0x91, 0x80};
    CHECK(wire_prescan(nested, sizeof nested, why, sizeof why),
          "[[[{}]]]: %s", why);
    static const unsigned char stray[] = {0x80, 0x00};
    CHECK(!wire_prescan(stray, sizeof stray, why, sizeof why) &&
              strstr(why, "stray"), "trailing byte: %s", why);
    static const unsigned char unused_byte[] = {0xc1};
    CHECK(!wire_prescan(unused_byte, 1, why, sizeof why), "0xc1 accepted");
}

int main(int argc, char **argv)
{
    char path[4096];
    const char *src = getenv("OPTIMD_SOURCE_DIR");
    if (argc > 1) snprintf(path, sizeof path, "%s", argv[1]);
    else if (src)
        snprintf(path, sizeof path, "%s/tests/protocol/vectors.json", src);
    else {
        fprintf(stderr, "set OPTIMD_SOURCE_DIR or name vectors.json\n");
        return 1;
    }
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    jparser j = {text, text + len, NULL};
    jv root;
    bool parsed = jvalue(&j, &root, 0);
    jskip(&j);
    if (!parsed || j.p != j.end) {
        fprintf(stderr, "%s: not one JSON value: %s at byte %zu\n", path,
                j.err ? j.err : "trailing text", (size_t)(j.p - text));
        return 1;
    }
    /* The parse tree stays until the end; vectors free their own. */
    size_t tree_end = n_owned;
    const jv *protocol = jget(&root, "protocol");
    const jv *requests = jget(&root, "requests");
    const jv *replies = jget(&root, "replies");
    CHECK(protocol && protocol->t == J_INT &&
              protocol->i == OPTIMD_PROTOCOL_VERSION,
          "protocol is not %d", OPTIMD_PROTOCOL_VERSION);
    if (!requests || requests->t != J_ARR || !replies || replies->t != J_ARR ||
        requests->n == 0 || replies->n == 0) {
        fprintf(stderr, "%s: no requests or replies\n", path);
        return 1;
    }

    /* Nothing is sent: the client only packs and parses. */
    optimd_client *c;
    if (optimd_client_connect("tcp://127.0.0.1:1", 1000, &c) != 0) {
        fprintf(stderr, "client: %s\n", optimd_client_error(NULL));
        return 1;
    }
    size_t failed = 0;
    for (size_t i = 0; i < requests->n; i++) {
        if (run_vector(c, "request", &requests->items[i],
                       check_request_vector))
            failed++;
        while (n_owned > tree_end) free(owned[--n_owned]);
    }
    for (size_t i = 0; i < replies->n; i++) {
        if (run_vector(c, "reply", &replies->items[i], check_reply_vector))
            failed++;
        while (n_owned > tree_end) free(owned[--n_owned]);
    }
    CHECK(failed == 0, "%zu of %zu vectors failed", failed,
          requests->n + replies->n);
    printf("%zu request and %zu reply vectors checked\n", requests->n,
           replies->n);
    self_checks(c, requests, replies);
    test_prescan(c);
    test_admin_replies(c);
    while (n_owned > tree_end) free(owned[--n_owned]);

    optimd_client_free(c);
    free_owned();
    free(owned);
    free(text);
    return check_report("client_vectors");
}
