/* optimctl schedule: a scheduler plugin's lr sequence, computed by the
 * daemon itself in a throw-away session, so what it prints is what a
 * training session with that scheduler would use. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char schedule_usage[] =
    "usage: optimctl schedule ID [--sched-set KEY=VALUE]... [--base-lr LR]\n"
    "                        [--optimizer ID [--set KEY=VALUE]...] "
    "--steps N\n"
    "Prints the lr after construction and after each of N steps, one %.9g\n"
    "value per line (N + 1 lines). The daemon runs the schedule in a\n"
    "temporary session (optimizer sgd unless --optimizer, durability none,\n"
    "no parameters), closed at the end. --base-lr is the optimizer's lr,\n"
    "the scheduler's base (default 0.1).\n";

int cmd_schedule(const cli *cli, int argc, char **argv)
{
    cli_open_spec spec;
    int rv = cli_open_spec_init(&spec, argc);
    if (rv) return rv;
    const char *steps_text = NULL, *base_text = NULL;
    for (int i = 0; i < argc && !rv; i++) {
        int got = cli_open_option(cli, argc, argv, &i, &spec);
        if (got < 0) rv = -got;
        else if (got) continue;
        else if ((got = cli_option(argc, argv, &i, "--steps", &steps_text)) ||
                 (got = cli_option(argc, argv, &i, "--base-lr", &base_text)))
            rv = got < 0 ? cli_usage_error(cli, "%s needs a value", argv[i]) : 0;
        else if (argv[i][0] == '-' && argv[i][1])
            rv = cli_usage_error(cli, "unknown option '%s'", argv[i]);
        else if (spec.scheduler)
            rv = cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        else spec.scheduler = argv[i];
    }
    uint64_t steps = 0;
    double base_lr = 0.1;
    if (!rv && !spec.scheduler) rv = cli_usage_error(cli, "no scheduler ID given");
    if (!rv && (!steps_text || !cli_parse_u64(steps_text, &steps)))
        rv = cli_usage_error(cli, "--steps N is required (a count)");
    if (!rv && base_text && !cli_parse_double(base_text, &base_lr))
        rv = cli_usage_error(cli, "--base-lr '%s' is not a number", base_text);
    for (size_t i = 0; !rv && i < spec.n_hp; i++)
        if (strcmp(spec.hp[i].key, "lr") == 0)
            rv = cli_usage_error(cli, "give the lr as --base-lr");
    if (!rv && spec.durability)
        rv = cli_usage_error(cli, "the temporary session has durability none");
    optimd_client *c = NULL;
    if (!rv) rv = cli_connect(cli, &c);
    optimd_session s;
    bool opened = false;
    if (!rv) {
        /* The hvalue array was sized for argc entries; one more for lr. */
        optimd_hvalue *hp = calloc(spec.n_hp + 1, sizeof *hp);
        if (!hp) rv = cli_fail("out of memory");
        char name[64], id[33];
        if (!rv) {
            memcpy(hp, spec.hp, spec.n_hp * sizeof *hp);
            hp[spec.n_hp] = (optimd_hvalue){"lr", OPTIMD_HVALUE_FLOAT, base_lr, 0};
            /* A random name: several schedule commands may run at once. */
            snprintf(id, sizeof id, "%s", optimd_client_id(c));
            snprintf(name, sizeof name, "optimctl-schedule-%.16s", id);
            optimd_open_options o;
            optimd_open_options_init(&o);
            o.optimizer = spec.optimizer ? spec.optimizer : "sgd";
            o.hparams = hp;
            o.n_hparams = spec.n_hp + 1;
            o.scheduler = spec.scheduler;
            o.sched_hparams = spec.sched_hp;
            o.n_sched_hparams = spec.n_sched_hp;
            o.durability = "none";
            double lr;
            if (optimd_client_open_ex(c, name, &o, &s, &lr) != 0) {
                rv = cli_fail("%s", optimd_client_error(c));
            } else {
                opened = true;
                printf("%.9g\n", lr);
            }
        }
        free(hp);
    }
    for (uint64_t k = 0; !rv && k < steps; k++) {
        optimd_step_result res;
        if (optimd_client_step_ex(c, &s, NULL, 0, NULL, 0, &res) != 0)
            rv = cli_fail("step %llu: %s", (unsigned long long)k + 1,
                          optimd_client_error(c));
        else
            printf("%.9g\n", res.next_lr);
    }
    if (opened && optimd_client_close(c, &s) != 0 && !rv)
        rv = cli_fail("closing the temporary session %s: %s", s.name,
                      optimd_client_error(c));
    optimd_client_free(c);
    cli_open_spec_free(&spec);
    return rv;
}
