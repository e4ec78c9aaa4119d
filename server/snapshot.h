/* A session as one file in the safetensors layout: tensors "param/<name>"
 * and "state/<name>/<slot>", and everything else (plugin ids, hyper-
 * parameters, counters, token) as a JSON manifest in the header's
 * __metadata__ under "optimd". torch users can open it with safetensors. */
#ifndef OPTIMD_SERVER_SNAPSHOT_H
#define OPTIMD_SERVER_SNAPSHOT_H

#include "plugin_registry.h"
#include "session.h"

#include <stdio.h>

/* Writes `s` (the caller holds its lock) to `f`. Returns 0, or -1 with
 * errno set. */
int snapshot_write(const session *s, FILE *f);
/* The same with only the parameters keep[i] marks (NULL: all); everything
 * of the session besides its parameters is written as it is. */
int snapshot_write_some(const session *s, const bool *keep, FILE *f);

/* Reads the snapshot at `path` into a new session (one reference). On
 * failure returns NULL and says why in `why`. */
session *snapshot_read(const char *path, plugin_registry *reg, char *why, size_t why_cap);

/* The same from memory (an imported snapshot). `rename_to`, if not NULL,
 * replaces the stored session name. */
session *snapshot_parse(const unsigned char *buf, size_t size, plugin_registry *reg,
                        const char *rename_to, char *why_buf, size_t why_cap);

#endif
