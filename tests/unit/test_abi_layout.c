/* Pins the layout of ABI v1 on LP64: plugins built against these headers
 * must keep loading, so a change to any size or offset below is an ABI break
 * and must fail the build. The array element types (hparam, slot, tensor)
 * are indexed by sizeof on both sides, so their sizes are frozen for 1.x. */
#include <optimd/plugin.h>
#include <stddef.h>
#include <stdio.h>

#define PIN_SIZE(type, bytes) _Static_assert(sizeof(type) == (bytes), #type " size changed")
#define PIN_AT(type, member, at) \
    _Static_assert(offsetof(type, member) == (at), #type "." #member " moved")

PIN_SIZE(optimd_tensor, 48);
PIN_AT(optimd_tensor, dtype, 4);
PIN_AT(optimd_tensor, data, 8);
PIN_AT(optimd_tensor, numel, 16);
PIN_AT(optimd_tensor, ndim, 24);
PIN_AT(optimd_tensor, shape, 32);
PIN_AT(optimd_tensor, strides, 40);

PIN_SIZE(optimd_hparam_def, 56);
PIN_AT(optimd_hparam_def, type, 4);
PIN_AT(optimd_hparam_def, flags, 8);
PIN_AT(optimd_hparam_def, key, 16);
PIN_AT(optimd_hparam_def, doc, 24);
PIN_AT(optimd_hparam_def, min, 32);
PIN_AT(optimd_hparam_def, max, 40);
PIN_AT(optimd_hparam_def, default_value, 48);

PIN_SIZE(optimd_slot_def, 40);
PIN_AT(optimd_slot_def, shape, 4);
PIN_AT(optimd_slot_def, dtype, 8);
PIN_AT(optimd_slot_def, key, 16);
PIN_AT(optimd_slot_def, doc, 24);
PIN_AT(optimd_slot_def, enabled_by, 32);

/* Structs that may grow at their end: their v1.0 prefix is pinned. */
PIN_AT(optimd_host, call, 16);
PIN_AT(optimd_host, log, 24);
PIN_AT(optimd_host, set_error, 32);
PIN_AT(optimd_host, scratch, 40);
PIN_AT(optimd_host, parallel_for, 48);

PIN_AT(optimd_step_args, n_hparams, 4);
PIN_AT(optimd_step_args, hparams, 8);
PIN_AT(optimd_step_args, step, 16);
PIN_AT(optimd_step_args, param, 24);
PIN_AT(optimd_step_args, grad, 32);
PIN_AT(optimd_step_args, slots, 40);
PIN_AT(optimd_step_args, n_slots, 48);

PIN_AT(optimd_optimizer, n_hparams, 4);
PIN_AT(optimd_optimizer, hparams, 8);
PIN_AT(optimd_optimizer, n_slots, 16);
PIN_AT(optimd_optimizer, dtypes, 20);
PIN_AT(optimd_optimizer, slots, 24);
PIN_AT(optimd_optimizer, check_hparams, 32);
PIN_AT(optimd_optimizer, step, 40);
PIN_AT(optimd_optimizer, migrate, 48);         /* 1.1 */
PIN_AT(optimd_optimizer, n_test_vectors, 56);  /* 1.1 */
PIN_AT(optimd_optimizer, flags, 60);           /* 1.2 (1.1: reserved2, 0) */
PIN_AT(optimd_optimizer, test_vectors, 64);    /* 1.1 */
PIN_AT(optimd_migrate_args, hparams, 8);       /* 1.1 */
PIN_AT(optimd_migrate_args, from_id, 16);
PIN_AT(optimd_migrate_args, from_version, 24);
PIN_AT(optimd_migrate_args, step, 32);
PIN_AT(optimd_migrate_args, param, 40);
PIN_AT(optimd_migrate_args, n_from_slots, 48);
PIN_AT(optimd_migrate_args, n_slots, 52);
PIN_AT(optimd_migrate_args, from_keys, 56);
PIN_AT(optimd_migrate_args, from_slots, 64);
PIN_AT(optimd_migrate_args, slots, 72);

/* 1.1. Read with a stride of its struct_size, so it may grow at its end
 * like the tables above. */
PIN_AT(optimd_test_vector, dtype, 4);
PIN_AT(optimd_test_vector, name, 8);
PIN_AT(optimd_test_vector, n_hparam_values, 16);
PIN_AT(optimd_test_vector, n_slots, 20);
PIN_AT(optimd_test_vector, hparam_keys, 24);
PIN_AT(optimd_test_vector, hparam_values, 32);
PIN_AT(optimd_test_vector, step, 40);
PIN_AT(optimd_test_vector, numel, 48);
PIN_AT(optimd_test_vector, ndim, 56);
PIN_AT(optimd_test_vector, max_ulps, 60);
PIN_AT(optimd_test_vector, shape, 64);
PIN_AT(optimd_test_vector, max_abs_error, 72);
PIN_AT(optimd_test_vector, param, 80);
PIN_AT(optimd_test_vector, grad, 88);
PIN_AT(optimd_test_vector, slots, 96);
PIN_AT(optimd_test_vector, expected_param, 104);
PIN_AT(optimd_test_vector, expected_slots, 112);

PIN_AT(optimd_sched_args, n_hparams, 4);
PIN_AT(optimd_sched_args, hparams, 8);
PIN_AT(optimd_sched_args, epoch, 16);
PIN_AT(optimd_sched_args, base_lr, 24);
PIN_AT(optimd_sched_args, last_lr, 32);
PIN_AT(optimd_sched_args, state, 40);          /* 1.1 */

PIN_AT(optimd_scheduler, hparams, 8);
PIN_AT(optimd_scheduler, check_hparams, 16);
PIN_AT(optimd_scheduler, lr, 24);
PIN_AT(optimd_scheduler, momentum, 32);        /* 1.1 */
PIN_AT(optimd_scheduler, n_state, 40);         /* 1.1 */
PIN_AT(optimd_scheduler, observe, 48);         /* 1.1 */

PIN_AT(optimd_plugin_desc, abi_major, 0);
PIN_AT(optimd_plugin_desc, abi_minor, 4);
PIN_AT(optimd_plugin_desc, struct_size, 8);
PIN_AT(optimd_plugin_desc, kind, 12);
PIN_AT(optimd_plugin_desc, id, 16);
PIN_AT(optimd_plugin_desc, version, 24);
PIN_AT(optimd_plugin_desc, description, 32);
PIN_AT(optimd_plugin_desc, optimizer, 40);
PIN_AT(optimd_plugin_desc, scheduler, 48);

int main(void)
{
    /* The assertions above run at compile time; reaching here is the pass. */
    printf("test_abi_layout: ABI v1 layout as pinned\n");
    return 0;
}
