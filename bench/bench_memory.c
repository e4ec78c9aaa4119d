/* Daemon memory per parameter: opens one AdamW session (durability none),
 * registers N fp32 elements, steps it STEPS times, and reads the daemon's
 * VmRSS from /proc/PID/status before registering, after registering and
 * after every step. AdamW's ideal is 12 bytes per element (the parameter
 * and two moments); the issue-8 target is at most 1.05 x that plus a fixed
 * 64 MiB, steady across steps.
 *
 * Steps ask for no parameters back (`return: false`), as a trainer that
 * keeps its own copy would; one last step with `return: true` shows what a
 * reply of N elements adds while it is built (VmHWM, the peak).
 *
 * usage: bench_memory OPTIMD_URL DAEMON_PID N STEPS */
#include <optimd/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long status_kb(long pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(1);
    }
    long kb = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') kb = atol(line + n + 1);
    fclose(f);
    return kb;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(optimd_client *c, int rv, const char *what)
{
    if (rv != 0) {
        fprintf(stderr, "bench_memory: %s: %s\n", what, optimd_client_error(c));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s OPTIMD_URL DAEMON_PID N STEPS\n", argv[0]);
        return 2;
    }
    long pid = atol(argv[2]);
    int64_t n = atoll(argv[3]);
    int steps = atoi(argv[4]);
    float *p = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
    if (!p || !g) return 1;
    for (int64_t i = 0; i < n; i++) {
        p[i] = (float)(i % 1000) * 1e-3f - 0.5f;
        g[i] = (float)(i % 997) * 1e-6f - 5e-4f;
    }
    optimd_client *c;
    if (optimd_client_connect(argv[1], 300000, &c) != 0) {
        fprintf(stderr, "bench_memory: %s\n", optimd_client_error(NULL));
        return 1;
    }
    optimd_open_options o;
    optimd_open_options_init(&o);
    optimd_hvalue hp[2] = {{"lr", OPTIMD_HVALUE_FLOAT, 1e-3, 0}, {"weight_decay", OPTIMD_HVALUE_FLOAT, 1e-2, 0}};
    o.optimizer = "adamw";
    o.hparams = hp;
    o.n_hparams = 2;
    o.durability = "none";
    optimd_session s;
    check(c, optimd_client_open_ex(c, "mem", &o, &s, NULL), "open");

    const double mib = 1024.0 * 1024.0;
    long base = status_kb(pid, "VmRSS");
    int64_t shape[1] = {n};
    optimd_named_tensor t = {"w", OPTIMD_CLIENT_F32, 1, shape, p};
    check(c, optimd_client_register(c, &s, &t, 1), "register");
    long reg = status_kb(pid, "VmRSS"), hwm_reg = status_kb(pid, "VmHWM");
    printf("N = %lld fp32 elements, AdamW; ideal 12 B/element = %.1f MiB\n", (long long)n, 12.0 * (double)n / mib);
    printf("%-22s %10s %12s %10s\n", "when", "VmRSS_MiB", "over_base", "B/element");
    printf("%-22s %10.1f %12s %10s\n", "open, nothing yet", base / 1024.0, "-", "-");
    printf("%-22s %10.1f %12.1f %10.2f\n", "registered", reg / 1024.0, (reg - base) / 1024.0,
           (double)(reg - base) * 1024.0 / (double)n);
    optimd_named_tensor gt = {"w", OPTIMD_CLIENT_F32, 1, shape, g};
    long first = 0, lo = 0, hi = 0;
    double t0 = now_s();
    for (int k = 1; k <= steps; k++) {
        check(c, optimd_client_step_ex(c, &s, &gt, 1, NULL, 0, NULL), "step");
        long rss = status_kb(pid, "VmRSS");
        if (k == 1) first = lo = hi = rss;
        lo = rss < lo ? rss : lo;
        hi = rss > hi ? rss : hi;
        if (k == 1 || k == 2 || k == steps)
            printf("%-22s %10.1f %12.1f %10.2f\n", k == 1 ? "after step 1" : k == 2 ? "after step 2" : "after last step",
                   rss / 1024.0, (rss - base) / 1024.0, (double)(rss - base) * 1024.0 / (double)n);
    }
    double per_step = (now_s() - t0) / steps;
    long last = status_kb(pid, "VmRSS");
    long hwm_noreturn = status_kb(pid, "VmHWM");
    /* A step whose reply carries every element back. */
    optimd_named_tensor out = {"w", OPTIMD_CLIENT_F32, 1, shape, p};
    check(c, optimd_client_step_ex(c, &s, &gt, 1, &out, 1, NULL), "step with return");
    long ret = status_kb(pid, "VmRSS"), hwm = status_kb(pid, "VmHWM");
    printf("%-22s %10.1f %12.1f %10.2f\n", "after a returning step", ret / 1024.0, (ret - base) / 1024.0,
           (double)(ret - base) * 1024.0 / (double)n);
    printf("steps: %d (%.0f ms each, return false); VmRSS over steps 1..%d: min %.1f, max %.1f MiB, "
           "drift %+.1f MiB\n", steps, per_step * 1e3, steps, lo / 1024.0, hi / 1024.0, (last - first) / 1024.0);
    printf("peak VmHWM: %.1f MiB by the end of register, %.1f MiB after the return-false steps, %.1f MiB with a returning step\n",
           hwm_reg / 1024.0, hwm_noreturn / 1024.0, hwm / 1024.0);
    double target = 1.05 * 12.0 * (double)n / mib + 64.0;
    printf("target: VmRSS <= 1.05 x 12 B x N + 64 MiB = %.1f MiB; measured %.1f MiB after the last step "
           "(%.3fx of 12 B x N + 64 MiB): %s\n", target, last / 1024.0,
           last / 1024.0 / (12.0 * (double)n / mib + 64.0), last / 1024.0 <= target ? "met" : "NOT met");
    check(c, optimd_client_close(c, &s), "close");
    optimd_client_free(c);
    free(p);
    free(g);
    return 0;
}
