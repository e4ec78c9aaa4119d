/*
 * optimctl rosenbrock: minimises f(x, y) = (1-x)^2 + 100(y-x^2)^2 with a
 * remote optimizer. The point lives on the daemon as one fp32 tensor
 * "xy" of shape [2]; each step sends the gradient at the point the daemon
 * last returned. The procedure is fixed so that a torch script can repeat
 * it exactly (tests/client/test_optimctl.py does): the gradient is computed
 * in double from the fp32 point, in the order written below, then rounded
 * to fp32.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char rosenbrock_usage[] =
    "usage: optimctl rosenbrock --optimizer ID [--set KEY=VALUE]...\n"
    "           [--scheduler ID [--sched-set KEY=VALUE]...] --steps N\n"
    "           [--start X,Y] [--session NAME] [--csv FILE]\n"
    "Minimises f(x,y) = (1-x)^2 + 100(y-x^2)^2 from (X,Y) (default "
    "-1.5,2.0)\n"
    "with N steps of the daemon's optimizer on the fp32 tensor [x, y].\n"
    "Prints progress lines (step, lr, f) and, last, the final point as "
    "\"x y\".\n"
    "--csv writes step,x,y,f,lr for steps 0..N; lr is the lr in effect at "
    "that\n"
    "point, i.e. the one the next step would use.\n"
    "The session (default rosenbrock-PID-TIME) is closed at the end.\n";

/* Set from a signal handler, so that Ctrl-C (or a closed pipe) still
 * closes the session. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static double rosenbrock_f(float xf, float yf)
{
    double x = xf, y = yf;
    double a = 1.0 - x, b = y - x * x;
    return a * a + 100.0 * b * b;
}

static void rosenbrock_grad(const float xy[2], float g[2])
{
    double x = xy[0], y = xy[1];
    double gx = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
    double gy = 200.0 * (y - x * x);
    g[0] = (float)gx;
    g[1] = (float)gy;
}

typedef struct rb_args {
    cli_open_spec spec;
    uint64_t steps;
    bool have_steps;
    float start[2];
    const char *session;
    const char *csv;
} rb_args;

static bool parse_start(const char *text, float out[2])
{
    char buf[128];
    if (strlen(text) >= sizeof buf) return false;
    strcpy(buf, text);
    char *comma = strchr(buf, ',');
    if (!comma) return false;
    *comma = '\0';
    double x, y;
    if (!cli_parse_double(buf, &x) || !cli_parse_double(comma + 1, &y) ||
        !isfinite(x) || !isfinite(y) || !isfinite((float)x) ||
        !isfinite((float)y))
        return false;
    out[0] = (float)x;
    out[1] = (float)y;
    return true;
}

static int parse_args(const cli *cli, int argc, char **argv, rb_args *a)
{
    a->start[0] = -1.5f;
    a->start[1] = 2.0f;
    for (int i = 0; i < argc; i++) {
        const char *value;
        int got = cli_open_option(cli, argc, argv, &i, &a->spec);
        if (got < 0) return -got;
        if (got) continue;
        if ((got = cli_option(argc, argv, &i, "--steps", &value))) {
            if (got < 0) return cli_usage_error(cli, "--steps needs a value");
            if (!cli_parse_u64(value, &a->steps))
                return cli_usage_error(cli, "--steps '%s': expected a "
                                       "non-negative integer", value);
            a->have_steps = true;
        } else if ((got = cli_option(argc, argv, &i, "--start", &value))) {
            if (got < 0 || !parse_start(value, a->start))
                return cli_usage_error(cli, "--start expects X,Y (two "
                                       "finite numbers)");
        } else if ((got = cli_option(argc, argv, &i, "--session", &value))) {
            if (got < 0) return cli_usage_error(cli, "--session needs a name");
            a->session = value;
        } else if ((got = cli_option(argc, argv, &i, "--csv", &value))) {
            if (got < 0) return cli_usage_error(cli, "--csv needs a file");
            a->csv = value;
        } else {
            return cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!a->have_steps) return cli_usage_error(cli, "--steps is required");
    return cli_open_spec_check(cli, &a->spec);
}

static void csv_row(FILE *csv, uint64_t step, const float xy[2], double lr)
{
    if (csv)
        fprintf(csv, "%llu,%.9g,%.9g,%.9g,%.9g\n", (unsigned long long)step,
                xy[0], xy[1], rosenbrock_f(xy[0], xy[1]), lr);
}

static void progress(uint64_t step, uint64_t total, const float xy[2],
                     double lr)
{
    printf("step %llu/%llu lr %.9g f %.9g\n", (unsigned long long)step,
           (unsigned long long)total, lr, rosenbrock_f(xy[0], xy[1]));
    fflush(stdout);
}

/* The steps themselves, on an open session. Returns CLI_OK, or an exit
 * code after printing why. */
static int run_steps(optimd_client *c, const optimd_session *s,
                     const rb_args *a, double lr, float xy[2], FILE *csv)
{
    static const int64_t shape[1] = {2};
    float grad[2];
    optimd_named_tensor g = {"xy", OPTIMD_CLIENT_F32, 1, shape, grad};
    optimd_named_tensor p = {"xy", OPTIMD_CLIENT_F32, 1, shape, xy};
    if (optimd_client_register(c, s, &p, 1) != 0)
        return cli_fail("%s", optimd_client_error(c));

    uint64_t every = a->steps / 10 ? a->steps / 10 : 1;
    progress(0, a->steps, xy, lr);
    csv_row(csv, 0, xy, lr);
    for (uint64_t k = 1; k <= a->steps; k++) {
        if (stop_signal) {
            cli_fail("interrupted by signal %d after step %llu",
                     (int)stop_signal, (unsigned long long)k - 1);
            return 128 + (int)stop_signal;
        }
        rosenbrock_grad(xy, grad);
        optimd_step_result res;
        if (optimd_client_step_ex(c, s, &g, 1, &p, 1, &res) != 0)
            return cli_fail("step %llu: %s", (unsigned long long)k,
                            optimd_client_error(c));
        csv_row(csv, k, xy, res.next_lr);
        if (k % every == 0 && k != a->steps)
            progress(k, a->steps, xy, res.next_lr);
        lr = res.next_lr;
    }
    if (a->steps) progress(a->steps, a->steps, xy, lr);
    return CLI_OK;
}

int cmd_rosenbrock(const cli *cli, int argc, char **argv)
{
    rb_args a;
    memset(&a, 0, sizeof a);
    int rv = cli_open_spec_init(&a.spec, argc);
    if (rv) return rv;
    if ((rv = parse_args(cli, argc, argv, &a))) {
        cli_open_spec_free(&a.spec);
        return rv;
    }
    char default_name[64];
    if (!a.session) {
        snprintf(default_name, sizeof default_name, "rosenbrock-%ld-%lld",
                 (long)getpid(), (long long)time(NULL));
        a.session = default_name;
    }

    FILE *csv = NULL;
    if (a.csv && !(csv = fopen(a.csv, "w"))) {
        rv = cli_fail("cannot write %s: %s", a.csv, strerror(errno));
        cli_open_spec_free(&a.spec);
        return rv;
    }
    if (csv) fputs("step,x,y,f,lr\n", csv);

    optimd_client *c = NULL;
    optimd_session s;
    double lr = 0;
    float xy[2] = {a.start[0], a.start[1]};
    rv = cli_connect(cli, &c);
    if (!rv && optimd_client_open(c, a.session, a.spec.optimizer, a.spec.hp,
                                  a.spec.n_hp, a.spec.scheduler,
                                  a.spec.sched_hp, a.spec.n_sched_hp, &s,
                                  &lr) != 0) {
        rv = cli_fail("%s", optimd_client_error(c));
    } else if (!rv) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        /* `optimctl rosenbrock ... | head` must not die on the next
         * progress line with its session still open. */
        sigaction(SIGPIPE, &sa, NULL);
        rv = run_steps(c, &s, &a, lr, xy, csv);
        /* Close even after a failure: a forgotten session holds daemon
         * memory until someone closes it by hand. */
        if (optimd_client_close(c, &s) != 0) {
            int close_rv = cli_fail("closing session %s: %s", s.name,
                                    optimd_client_error(c));
            if (!rv) rv = close_rv;
        }
    }
    if (csv && (ferror(csv) | fclose(csv)) && !rv)
        rv = cli_fail("writing %s failed", a.csv);
    if (!rv) printf("%.9g %.9g\n", xy[0], xy[1]);
    optimd_client_free(c);
    cli_open_spec_free(&a.spec);
    return rv;
}
