#include "session_table.h"

#include <stdlib.h>
#include <string.h>

void session_table_init(session_table *t, size_t limit)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mutex, NULL);
    t->limit = limit;
}

void session_table_clear(session_table *t)
{
    pthread_mutex_lock(&t->mutex);
    for (size_t i = 0; i < t->count; i++) session_unref(t->sessions[i]);
    free(t->sessions);
    t->sessions = NULL;
    t->count = t->cap = 0;
    pthread_mutex_unlock(&t->mutex);
    pthread_mutex_destroy(&t->mutex);
}

/* Position of `name` or where it would go; *found says which. */
static size_t bisect(const session_table *t, const char *name, size_t len, int *found)
{
    size_t lo = 0, hi = t->count;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = t->sessions[mid]->name;
        size_t m_len = strlen(m);
        int c = memcmp(m, name, m_len < len ? m_len : len);
        if (c == 0) c = (m_len > len) - (m_len < len);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int session_table_add(session_table *t, session *s, request_error *err)
{
    pthread_mutex_lock(&t->mutex);
    int found, rc = 0;
    size_t at = bisect(t, s->name, strlen(s->name), &found);
    if (found) {
        rc = fail(err, OPTIMD_E_SESSION_EXISTS, "session '%s' already exists", s->name);
    } else if (t->count >= t->limit) {
        rc = fail(err, OPTIMD_E_LIMIT, "the daemon holds its limit of %zu sessions", t->limit);
    } else {
        if (t->count == t->cap) {
            size_t cap = t->cap ? t->cap * 2 : 16;
            session **grown = realloc(t->sessions, cap * sizeof *grown);
            if (!grown) {
                rc = fail(err, OPTIMD_E_NOMEM, "out of memory");
                goto out;
            }
            t->sessions = grown;
            t->cap = cap;
        }
        memmove(&t->sessions[at + 1], &t->sessions[at], (t->count - at) * sizeof *t->sessions);
        t->sessions[at] = s;
        t->count++;
    }
out:
    pthread_mutex_unlock(&t->mutex);
    return rc;
}

session *session_table_get(session_table *t, const char *name, size_t len)
{
    pthread_mutex_lock(&t->mutex);
    int found;
    size_t at = bisect(t, name, len, &found);
    session *s = found ? t->sessions[at] : NULL;
    if (s) session_ref(s);
    pthread_mutex_unlock(&t->mutex);
    return s;
}

int session_table_remove(session_table *t, const session *s)
{
    pthread_mutex_lock(&t->mutex);
    int found;
    size_t at = bisect(t, s->name, strlen(s->name), &found);
    session *held = NULL;
    if (found && t->sessions[at] == s) {
        held = t->sessions[at];
        memmove(&t->sessions[at], &t->sessions[at + 1], (t->count - at - 1) * sizeof *t->sessions);
        t->count--;
    }
    pthread_mutex_unlock(&t->mutex);
    if (!held) return -1;
    session_unref(held);
    return 0;
}

session **session_table_list(session_table *t, size_t *count)
{
    pthread_mutex_lock(&t->mutex);
    session **list = malloc((t->count ? t->count : 1) * sizeof *list);
    *count = 0;
    if (list) {
        for (size_t i = 0; i < t->count; i++) {
            session_ref(t->sessions[i]);
            list[i] = t->sessions[i];
        }
        *count = t->count;
    }
    pthread_mutex_unlock(&t->mutex);
    return list;
}

void session_table_release_list(session **list, size_t count)
{
    for (size_t i = 0; i < count; i++) session_unref(list[i]);
    free(list);
}

uint64_t session_table_committed_bytes(session_table *t)
{
    size_t n;
    session **list = session_table_list(t, &n);
    uint64_t total = 0;
    for (size_t i = 0; list && i < n; i++) total += atomic_load(&list[i]->committed_bytes);
    session_table_release_list(list, n);
    return total;
}
