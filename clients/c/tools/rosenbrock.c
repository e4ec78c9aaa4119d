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
    "           [--start X,Y] [--session NAME [--token-file FILE]]\n"
    "           [--durability always|interval|none] [--csv FILE]\n"
    "Minimises f(x,y) = (1-x)^2 + 100(y-x^2)^2 from (X,Y) (default "
    "-1.5,2.0)\n"
    "with the daemon's optimizer on the fp32 tensor [x, y], until the "
    "session\n"
    "has taken N steps in all. Prints progress lines (step, lr, f) and, "
    "last,\n"
    "the final point as \"x y\".\n"
    "Without --session the session is rosenbrock-PID-TIME and is closed at "
    "the\n"
    "end. --session NAME creates the session, or resumes it where it "
    "stands\n"
    "(its step count from info, its point from pull) and runs it on to N;\n"
    "it stays open, so that the same command can resume it again after a\n"
    "crash. Its token is kept in FILE (default $OPTIMD_TOKEN_DIR/NAME, "
    "else\n"
    "./var/optimctl-tokens/NAME), mode 0600. A resumed session keeps its "
    "own\n"
    "hyperparameters; --optimizer, --scheduler and --durability must match\n"
    "it.\n"
    "--csv writes step,x,y,f,lr for the steps this run covers; lr is the lr "
    "in\n"
    "effect at that point, i.e. the one the next step would use.\n";

/* Set from a signal handler: the loop stops between steps, so that an
 * unnamed session is still closed and a named one is left consistent. */
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
    const char *token_file;
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
        } else if ((got = cli_option(argc, argv, &i, "--token-file",
                                     &value))) {
            if (got < 0) return cli_usage_error(cli, "--token-file needs a "
                                                "file");
            a->token_file = value;
        } else if ((got = cli_option(argc, argv, &i, "--csv", &value))) {
            if (got < 0) return cli_usage_error(cli, "--csv needs a file");
            a->csv = value;
        } else {
            return cli_usage_error(cli, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!a->have_steps) return cli_usage_error(cli, "--steps is required");
    if (a->token_file && !a->session)
        return cli_usage_error(cli, "--token-file needs --session");
    /* The name becomes the token file's name, so it must be one the
     * daemon would accept anyway (no '/', no leading dot). */
    if (a->session && !cli_session_name_ok(a->session))
        return cli_usage_error(cli, "--session '%s': 1 to 128 characters of "
                               "A-Z a-z 0-9 _ . -, not starting with a dot",
                               a->session);
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

static const int64_t xy_shape[1] = {2};

/* Where a run begins: the session, how many steps it has taken, its point
 * and the lr of its next step. */
typedef struct rb_state {
    optimd_session s;
    uint64_t done;
    float xy[2];
    double lr;
} rb_state;

static void open_options(const rb_args *a, optimd_open_options *o)
{
    optimd_open_options_init(o);
    o->optimizer = a->spec.optimizer;
    o->hparams = a->spec.hp;
    o->n_hparams = a->spec.n_hp;
    o->scheduler = a->spec.scheduler;
    o->sched_hparams = a->spec.sched_hp;
    o->n_sched_hparams = a->spec.n_sched_hp;
    o->durability = a->spec.durability;
}

static int open_session(optimd_client *c, const rb_args *a, rb_state *st)
{
    optimd_open_options o;
    open_options(a, &o);
    if (optimd_client_open_ex(c, a->session, &o, &st->s, &st->lr) != 0)
        return cli_fail("%s", optimd_client_error(c));
    return CLI_OK;
}

/* Registers the start point on a session that has no parameter yet. */
static int register_start(optimd_client *c, const rb_args *a, rb_state *st)
{
    st->xy[0] = a->start[0];
    st->xy[1] = a->start[1];
    optimd_named_tensor p = {"xy", OPTIMD_CLIENT_F32, 1, xy_shape, st->xy};
    if (optimd_client_register(c, &st->s, &p, 1) != 0)
        return cli_fail("%s", optimd_client_error(c));
    return CLI_OK;
}

/* A resumed session must be the one this command describes: stepping an
 * SGD session with an Adam command line would silently mix the two. */
static int check_same(const rb_args *a, const optimd_session_info *info)
{
    const char *want_sched = a->spec.scheduler ? a->spec.scheduler : "";
    if (info->optimizer[0] && strcmp(info->optimizer, a->spec.optimizer))
        return cli_fail("session %s runs optimizer %s, not %s",
                        a->session, info->optimizer, a->spec.optimizer);
    if (info->optimizer[0] && strcmp(info->scheduler, want_sched))
        return cli_fail("session %s has scheduler %s, not %s", a->session,
                        info->scheduler[0] ? info->scheduler : "(none)",
                        want_sched[0] ? want_sched : "(none)");
    if (a->spec.durability && info->durability[0] &&
        strcmp(info->durability, a->spec.durability))
        return cli_fail("session %s has durability %s, not %s", a->session,
                        info->durability, a->spec.durability);
    return CLI_OK;
}

/* Picks a session up where it stands. */
static int resume(optimd_client *c, const rb_args *a,
                  const optimd_session_info *info, rb_state *st)
{
    int rv = check_same(a, info);
    if (rv) return rv;
    st->done = info->steps;
    st->lr = info->lr;
    /* The run that opened it died before registering the point. */
    if (info->params == 0) return register_start(c, a, st);
    optimd_named_tensor p = {"xy", OPTIMD_CLIENT_F32, 1, xy_shape, st->xy};
    if (optimd_client_pull(c, &st->s, &p, 1) != 0)
        return cli_fail("session %s: %s (is it a session of optimctl "
                        "rosenbrock, with one fp32 'xy' of shape [2]?)",
                        a->session, optimd_client_error(c));
    if (st->done)
        fprintf(stderr, "optimctl: resuming session %s at step %llu of "
                "%llu\n", a->session, (unsigned long long)st->done,
                (unsigned long long)a->steps);
    return CLI_OK;
}

/* A named session: resumed when its token file names a session the
 * daemon has, created (and its token kept) otherwise. */
static int begin_named(optimd_client *c, const rb_args *a, rb_state *st)
{
    char path[4096];
    bool exists;
    int rv;
    if ((rv = cli_token_path(a->session, a->token_file, path, sizeof path)) ||
        (rv = cli_read_token(path, st->s.token, &exists)))
        return rv;
    strcpy(st->s.name, a->session);
    if (exists) {
        optimd_session_info info;
        int got = optimd_client_info(c, &st->s, &info);
        if (got == 0) return resume(c, a, &info, st);
        if (got == OPTIMD_E_BAD_TOKEN)
            return cli_fail("session %s exists, but %s holds another "
                            "session's token (was it closed and opened "
                            "again elsewhere?)", a->session, path);
        if (got != OPTIMD_E_UNKNOWN_SESSION)
            return cli_fail("%s", optimd_client_error(c));
        fprintf(stderr, "optimctl: session %s is not on the daemon; "
                "opening it anew (replacing token file %s)\n", a->session,
                path);
    }
    optimd_open_options o;
    open_options(a, &o);
    rv = optimd_client_open_ex(c, a->session, &o, &st->s, &st->lr);
    if (rv == OPTIMD_E_SESSION_EXISTS)
        return cli_fail("%s; there is no token for it in %s, so it cannot "
                        "be resumed from here (give --token-file with its "
                        "token, or another --session)",
                        optimd_client_error(c), path);
    if (rv) return cli_fail("%s", optimd_client_error(c));
    if (cli_write_token(path, st->s.token)) {
        /* Nobody could ever resume it: better gone than stranded. */
        if (optimd_client_close(c, &st->s) != 0)
            cli_fail("closing session %s: %s", a->session,
                     optimd_client_error(c));
        return CLI_FAIL;
    }
    return register_start(c, a, st);
}

/* The steps themselves, from st->done to a->steps. Returns CLI_OK, or an
 * exit code after printing why. */
static int run_steps(optimd_client *c, const rb_args *a, rb_state *st,
                     FILE *csv)
{
    float grad[2];
    optimd_named_tensor g = {"xy", OPTIMD_CLIENT_F32, 1, xy_shape, grad};
    optimd_named_tensor p = {"xy", OPTIMD_CLIENT_F32, 1, xy_shape, st->xy};
    const char *resume_hint = a->session ? "; run the same command again to "
                                           "resume"
                                         : "";
    uint64_t every = a->steps / 10 ? a->steps / 10 : 1;
    if (st->done > a->steps)
        fprintf(stderr, "optimctl: session %s has taken %llu steps already, "
                "more than --steps %llu\n", st->s.name,
                (unsigned long long)st->done, (unsigned long long)a->steps);
    if (st->done < a->steps) progress(st->done, a->steps, st->xy, st->lr);
    csv_row(csv, st->done, st->xy, st->lr);
    for (uint64_t k = st->done + 1; k <= a->steps; k++) {
        if (stop_signal) {
            cli_fail("interrupted by signal %d after step %llu%s",
                     (int)stop_signal, (unsigned long long)k - 1,
                     resume_hint);
            return 128 + (int)stop_signal;
        }
        rosenbrock_grad(st->xy, grad);
        optimd_step_result res;
        /* A step lost with the connection is re-sent by the library with
         * the same seq, so a daemon restart neither skips nor doubles it;
         * a duplicate answer carries the point that step produced. */
        if (optimd_client_step_ex(c, &st->s, &g, 1, &p, 1, &res) != 0)
            return cli_fail("step %llu: %s%s", (unsigned long long)k,
                            optimd_client_error(c), resume_hint);
        if (res.steps != k)
            return cli_fail("step %llu: the session counts %llu steps; "
                            "someone else is stepping session %s",
                            (unsigned long long)k,
                            (unsigned long long)res.steps, st->s.name);
        csv_row(csv, k, st->xy, res.next_lr);
        if (k % every == 0 && k != a->steps)
            progress(k, a->steps, st->xy, res.next_lr);
        st->lr = res.next_lr;
        st->done = k;
    }
    progress(st->done, a->steps, st->xy, st->lr);
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
    bool named = a.session != NULL;
    char default_name[64];
    if (!named) {
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
    rb_state st;
    memset(&st, 0, sizeof st);
    bool opened = false;
    rv = cli_connect(cli, &c);
    if (!rv) {
        rv = named ? begin_named(c, &a, &st) : open_session(c, &a, &st);
        /* An unnamed session exists once open succeeded, whatever failed
         * after it. */
        opened = !named && st.s.token[0];
        if (!rv && !named) rv = register_start(c, &a, &st);
    }
    if (!rv) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        /* The first Ctrl-C stops between steps; a second one, e.g. while
         * the library waits out a daemon restart, ends the process. */
        sa.sa_flags = SA_RESETHAND;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        /* `optimctl rosenbrock ... | head` must not die on the next
         * progress line with its session still open; every later write to
         * the closed pipe raises SIGPIPE again, so this one stays. */
        sa.sa_flags = 0;
        sigaction(SIGPIPE, &sa, NULL);
        rv = run_steps(c, &a, &st, csv);
    }
    /* An unnamed session is closed even after a failure: nobody could
     * resume it, and it would hold daemon memory until closed by hand. A
     * named one stays for the next run. */
    if (opened && optimd_client_close(c, &st.s) != 0) {
        int close_rv = cli_fail("closing session %s: %s", st.s.name,
                                optimd_client_error(c));
        if (!rv) rv = close_rv;
    }
    if (csv && (ferror(csv) | fclose(csv)) && !rv)
        rv = cli_fail("writing %s failed", a.csv);
    if (!rv) printf("%.9g %.9g\n", st.xy[0], st.xy[1]);
    optimd_client_free(c);
    cli_open_spec_free(&a.spec);
    return rv;
}
