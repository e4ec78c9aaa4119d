/* Client hyperparameter maps checked against a plugin's declarations and
 * turned into the dense double arrays plugins receive. */
#ifndef OPTIMD_SERVER_HPARAMS_H
#define OPTIMD_SERVER_HPARAMS_H

#include "plugin_registry.h"
#include "request_error.h"

#include <msgpack.h>
#include <stdbool.h>

/* Every value to its default; required ones to NaN until given. */
void hparams_defaults(const plugin *p, double *values);

/* Checks every entry of `map` (NULL: none) and only then writes them into
 * `values`. `only_mutable` refuses keys not declared OPTIMD_HP_MUTABLE.
 * `given` (may be NULL) gets true for each key present. */
int hparams_apply(const plugin *p, const msgpack_object *map, bool only_mutable,
                  double *values, bool *given, request_error *err);

/* Required keys present and the plugin's own cross-key rules hold. */
int hparams_validate(const plugin *p, const double *values, request_error *err);

/* A map key -> value, typed as declared. */
void hparams_pack(msgpack_packer *pk, const plugin *p, const double *values);

#endif
