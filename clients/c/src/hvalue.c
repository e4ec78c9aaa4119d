#include <optimd/client.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An integer literal must stay an int on the wire: an `int`
 * hyperparameter rejects a float that is not integral, and a large int
 * would lose precision as a double. */
static int parse_int(const char *s, int64_t *out)
{
    const char *digits = s + (*s == '-' || *s == '+');
    if (!*digits) return -1;
    for (const char *p = digits; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno) return -1;
    *out = v;
    return 0;
}

int optimd_hvalue_parse(char *text, optimd_hvalue *out)
{
    if (!text || !out) return OPTIMD_CLIENT_E_ARG;
    char *eq = strchr(text, '=');
    if (!eq || eq == text || !eq[1]) return OPTIMD_CLIENT_E_ARG;
    *eq = '\0';
    const char *value = eq + 1;
    optimd_hvalue v = {.key = text};
    if (strcmp(value, "true") == 0 || strcmp(value, "false") == 0) {
        v.type = OPTIMD_HVALUE_BOOL;
        v.i = value[0] == 't';
    } else if (parse_int(value, &v.i) == 0) {
        v.type = OPTIMD_HVALUE_INT;
    } else {
        char *end;
        errno = 0;
        v.f = strtod(value, &end);
        /* strtod skips leading blanks; a value is all of the text. */
        if (*end || end == value || isspace((unsigned char)value[0]) ||
            (errno == ERANGE && isinf(v.f))) {
            *eq = '=';
            return OPTIMD_CLIENT_E_ARG;
        }
        v.type = OPTIMD_HVALUE_FLOAT;
    }
    *out = v;
    return 0;
}
