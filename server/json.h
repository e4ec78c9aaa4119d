/* Just enough JSON for the snapshot manifest and safetensors headers: a
 * parser into a small tree, and string escaping for writers. Numbers are
 * doubles (written with %.17g they round-trip exactly). */
#ifndef OPTIMD_SERVER_JSON_H
#define OPTIMD_SERVER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    bool boolean;
    double number;
    char *string;              /* JSON_STRING: NUL-terminated, may hold \u0000 as NUL */
    size_t string_len;
    struct json_value *items;  /* JSON_ARRAY elements or JSON_OBJECT values */
    char **keys;               /* JSON_OBJECT keys, parallel to items */
    size_t count;
} json_value;

/* Parses exactly one JSON value spanning `len` bytes. Returns NULL and a
 * message in `err` on failure. Nesting is limited to 64 levels. */
json_value *json_parse(const char *text, size_t len, char *err, size_t err_cap);
void json_free(json_value *v);

/* Member of an object, or NULL (also when `v` is no object). */
const json_value *json_get(const json_value *v, const char *key);
/* Typed getters: false when absent or of another type. */
bool json_get_number(const json_value *v, const char *key, double *out);
bool json_get_string(const json_value *v, const char *key, const char **out);

/* Writes `s` (len bytes) as a JSON string literal, quotes included. */
void json_write_string(FILE *f, const char *s, size_t len);

#endif
