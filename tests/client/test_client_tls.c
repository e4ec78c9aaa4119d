/*
 * The C client over tls+tcp:// against the real daemon, which requires
 * client certificates (--tls-ca): a whole session with a client
 * certificate, a retry that must redial with TLS after a daemon restart,
 * and the clients the daemon or the client must refuse (no client
 * certificate, the wrong CA, the wrong server name), each failing with a
 * transport error that names TLS instead of hanging. Certificates are
 * made for the test with openssl.
 */
#include "check.h"
#include "test_daemon.h"

#include <optimd/client.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static test_daemon d;
static char pki[300];
static char listen_url[256];
static char ready[300];

static const char *pki_file(const char *name)
{
    /* A few names live at once in one call's arguments. */
    static char buf[8][400];
    static unsigned next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", pki, name);
    return p;
}

/* A CA, a server certificate for 127.0.0.1 and localhost, a client
 * certificate from that CA, and a second CA that issued nothing here. */
static int make_pki(void)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "set -e; cd '%s'; "
             "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
             "for ca in ca rogue_ca; do "
             "  openssl req -x509 $ec -keyout $ca.key -out $ca.pem -days 2 "
             "    -subj \"/CN=optimd C test $ca\"; done; "
             "echo 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.cnf; "
             "for n in server client; do "
             "  cn=$n; [ $n = server ] && cn=localhost; "
             "  openssl req -new $ec -keyout $n.key -out $n.csr -subj /CN=$cn; "
             "  ext=; [ $n = server ] && ext='-extfile san.cnf'; "
             "  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key "
             "    -CAcreateserial -out $n.pem -days 2 $ext; done",
             pki);
    char quiet[sizeof cmd + 32];
    snprintf(quiet, sizeof quiet, "(%s) >/dev/null 2>&1", cmd);
    return system(quiet) == 0 ? 0 : -1;
}

static int start_daemon(const char *listen)
{
    const char *args[] = {"--tls-cert", pki_file("server.pem"),
                          "--tls-key",  pki_file("server.key"),
                          "--tls-ca",   pki_file("ca.pem"),
                          NULL};
    char state[320];
    snprintf(state, sizeof state, "%s/state", d.state_dir);
    char log[320];
    snprintf(log, sizeof log, "%s/optimd.log", d.state_dir);
    d.pid = test_daemon_spawn(listen, state, ready, log, args, 30000, d.url,
                              sizeof d.url);
    return d.pid > 0 ? 0 : -1;
}

/* A client with the test's CA, certificate and server name; NULL members
 * of `o` are left unset. */
static void good_options(optimd_client_options *o)
{
    optimd_client_options_init(o);
    o->timeout_ms = 10000;
    o->max_retries = 0;
    o->tls_ca_file = pki_file("ca.pem");
    o->tls_cert_file = pki_file("client.pem");
    o->tls_key_file = pki_file("client.key");
    o->tls_server_name = "localhost";
}

static const int64_t shape[1] = {6};

static void test_whole_session(void)
{
    optimd_client_options o;
    good_options(&o);
    optimd_client *c;
    int rv = optimd_client_connect_ex(d.url, &o, &c);
    REQUIRE(rv == 0, "connect: %s", optimd_client_error(NULL));

    optimd_server_info info;
    rv = optimd_client_hello(c, &info);
    CHECK(rv == 0 && strcmp(info.server, "optimd") == 0, "hello: %d %s", rv,
          optimd_client_error(c));

    optimd_session s;
    optimd_hvalue hp[] = {{"lr", OPTIMD_HVALUE_FLOAT, 0.125, 0}};
    rv = optimd_client_open(c, "tls", "adam", hp, 1, NULL, NULL, 0, &s, NULL);
    if (rv) {
        CHECK(0, "open: %s", optimd_client_error(c));
        optimd_client_free(c);
        return;
    }
    float w[6] = {0, 1, 2, 3, 4, 5};
    optimd_named_tensor param = {"w", OPTIMD_CLIENT_F32, 1, shape, w};
    rv = optimd_client_register(c, &s, &param, 1);
    CHECK(rv == 0, "register: %s", optimd_client_error(c));

    float g[6] = {1, -1, 2, -2, 0.5f, -0.5f};
    float w_new[6];
    optimd_named_tensor grad = {"w", OPTIMD_CLIENT_F32, 1, shape, g};
    optimd_named_tensor out = {"w", OPTIMD_CLIENT_F32, 1, shape, w_new};
    optimd_step_result res;
    rv = optimd_client_step_ex(c, &s, &grad, 1, &out, 1, &res);
    CHECK(rv == 0 && res.steps == 1, "step: %s", optimd_client_error(c));
    /* Adam's first step moves each element by lr against sign(g) (the
     * bias-corrected m/sqrt(v) is g/|g|, up to eps). */
    for (int i = 0; rv == 0 && i < 6; i++) {
        float want = w[i] - (g[i] > 0 ? 0.125f : -0.125f);
        CHECK(w_new[i] > want - 1e-5f && w_new[i] < want + 1e-5f,
              "w[%d] = %g after the step, expected %g", i, w_new[i], want);
    }

    float pulled[6];
    optimd_named_tensor pull = {"w", OPTIMD_CLIENT_F32, 1, shape, pulled};
    rv = optimd_client_pull(c, &s, &pull, 1);
    CHECK(rv == 0 && memcmp(pulled, w_new, sizeof pulled) == 0,
          "pull: %d %s", rv, optimd_client_error(c));

    rv = optimd_client_close(c, &s);
    CHECK(rv == 0, "close: %s", optimd_client_error(c));
    optimd_client_free(c);
}

/* on_retry's work: the daemon comes back, on the same address and state,
 * before the client's re-send. */
static int restarts;

static void restart_daemon(void *arg, const char *message)
{
    (void)arg;
    (void)message;
    if (restarts++ == 0 && start_daemon(listen_url) != 0)
        fprintf(stderr, "restart failed\n");
}

/* A retry closes the socket and dials afresh (client.c, reconnect): that
 * dialer must carry the TLS configuration too, or the re-sent request
 * finds no connection this time either. */
static void test_retry_redials_with_tls(void)
{
    optimd_client_options o;
    good_options(&o);
    o.timeout_ms = 2000;
    o.max_retries = 3;
    o.backoff_ms = 1;
    o.on_retry = restart_daemon;
    optimd_client *c;
    REQUIRE(optimd_client_connect_ex(d.url, &o, &c) == 0, "connect: %s",
            optimd_client_error(NULL));
    optimd_server_info info;
    CHECK(optimd_client_hello(c, &info) == 0, "hello: %s",
          optimd_client_error(c));

    /* The same port again: a restart must find the client's URL. */
    snprintf(listen_url, sizeof listen_url, "%s", d.url);
    char keep[sizeof d.state_dir];
    snprintf(keep, sizeof keep, "%s", d.state_dir);
    /* Stop without removing the directory: only the process goes. */
    d.state_dir[0] = '\0';
    CHECK(test_daemon_stop(&d) == 0, "daemon exit status");
    snprintf(d.state_dir, sizeof d.state_dir, "%s", keep);

    restarts = 0;
    int rv = optimd_client_hello(c, &info);
    CHECK(rv == 0, "hello across a restart: %d %s", rv,
          optimd_client_error(c));
    CHECK(restarts == 1 && optimd_client_last_retries(c) >= 1,
          "%d restarts, %u retries", restarts,
          optimd_client_last_retries(c));
    optimd_client_free(c);
}

/* A client the TLS handshake turns away: a transport error within its
 * timeout that says TLS, and no retries (they would meet the same
 * certificates). */
static void expect_refused(const char *what, const optimd_client_options *o)
{
    optimd_client *c;
    int rv = optimd_client_connect_ex(d.url, o, &c);
    REQUIRE(rv == 0, "%s: connect: %s", what, optimd_client_error(NULL));
    optimd_server_info info;
    rv = optimd_client_hello(c, &info);
    CHECK(rv == OPTIMD_CLIENT_E_TRANSPORT, "%s: hello gave %d (%s)", what,
          rv, optimd_client_error(c));
    CHECK(strstr(optimd_client_error(c), "TLS handshake") != NULL,
          "%s: the error does not name TLS: %s", what,
          optimd_client_error(c));
    CHECK(optimd_client_last_retries(c) == 0, "%s: %u retries", what,
          optimd_client_last_retries(c));
    printf("%s: %s\n", what, optimd_client_error(c));
    optimd_client_free(c);
}

static void test_refused(void)
{
    optimd_client_options o;
    good_options(&o);
    /* Short, since a refused client waits out its timeout once; retries
     * on, to see that none is made. */
    o.timeout_ms = 1000;
    o.max_retries = 3;
    o.tls_cert_file = o.tls_key_file = NULL;
    expect_refused("no client certificate", &o);

    good_options(&o);
    o.timeout_ms = 1000;
    o.tls_ca_file = pki_file("rogue_ca.pem");
    expect_refused("another CA", &o);

    good_options(&o);
    o.timeout_ms = 1000;
    o.tls_server_name = "not-the-daemon.example";
    expect_refused("another server name", &o);
}

static void expect_arg(const char *what, const char *url,
                       const optimd_client_options *o, const char *text)
{
    optimd_client *c = (optimd_client *)1;
    int rv = optimd_client_connect_ex(url, o, &c);
    CHECK(rv == OPTIMD_CLIENT_E_ARG && c == NULL, "%s: connect gave %d",
          what, rv);
    CHECK(strstr(optimd_client_error(NULL), text) != NULL,
          "%s: error '%s' lacks '%s'", what, optimd_client_error(NULL), text);
    if (rv == 0) optimd_client_free(c);
}

static void test_bad_options(void)
{
    optimd_client_options o;
    good_options(&o);
    expect_arg("TLS options on tcp://", "tcp://127.0.0.1:1", &o,
               "tls+tcp://");
    good_options(&o);
    o.tls_ca_file = NULL;
    expect_arg("no CA", d.url, &o, "tls_ca_file");
    good_options(&o);
    o.tls_key_file = NULL;
    expect_arg("certificate without key", d.url, &o, "tls_key_file");
    good_options(&o);
    o.tls_ca_file = pki_file("no-such-ca.pem");
    expect_arg("missing CA file", d.url, &o, "no-such-ca.pem");
    good_options(&o);
    o.tls_cert_file = pki_file("ca.key");
    expect_arg("a key for a certificate", d.url, &o, "ca.key");

    /* A caller built before the TLS members: struct_size stops short of
     * them, so the library must not read them. */
    good_options(&o);
    o.struct_size = offsetof(optimd_client_options, tls_ca_file);
    expect_arg("old struct_size on tls+tcp://", d.url, &o, "tls_ca_file");
}

/* Runs `optimctl --server URL [tls options] hello`, with stderr folded
 * into what it returns in `out`. Returns the exit status, or -1. */
static int optimctl_hello(const char *tls_args, char *out, size_t cap)
{
    const char *bin = getenv("OPTIMD_OPTIMCTL");
    if (!bin) return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' --server '%s' --timeout 2000 %s hello 2>&1",
             bin, d.url, tls_args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t len = fread(out, 1, cap - 1, p);
    out[len] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_optimctl(void)
{
    char args[1600], out[4096];
    snprintf(args, sizeof args,
             "--tls-ca '%s' --tls-cert '%s' --tls-key '%s' "
             "--tls-server-name localhost",
             pki_file("ca.pem"), pki_file("client.pem"),
             pki_file("client.key"));
    int rv = optimctl_hello(args, out, sizeof out);
    CHECK(rv == 0 && strstr(out, "server optimd\n") != NULL,
          "optimctl hello over TLS: exit %d, output:\n%s", rv, out);

    snprintf(args, sizeof args,
             "--tls-ca '%s' --tls-server-name localhost --retries 0",
             pki_file("ca.pem"));
    rv = optimctl_hello(args, out, sizeof out);
    CHECK(rv == 1 && strstr(out, "TLS handshake") != NULL,
          "optimctl hello without a certificate: exit %d, output:\n%s", rv,
          out);

    /* A usage slip, not a connection failure. */
    rv = optimctl_hello("--tls-ca", out, sizeof out);
    CHECK(rv == 2, "optimctl --tls-ca without a file: exit %d:\n%s", rv, out);
}

int main(void)
{
    snprintf(d.state_dir, sizeof d.state_dir, "/tmp/optimd-test-XXXXXX");
    if (!mkdtemp(d.state_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(pki, sizeof pki, "%s/pki", d.state_dir);
    snprintf(ready, sizeof ready, "%s/ready", d.state_dir);
    char mk[1024];
    snprintf(mk, sizeof mk, "mkdir -p '%s' '%s/state'", pki, d.state_dir);
    if (system(mk) != 0 || make_pki() != 0) {
        fprintf(stderr, "cannot make the test certificates with openssl\n");
        test_daemon_stop(&d);
        return 1;
    }
    /* TLS first: the ready file holds the first listen address. */
    if (start_daemon("tls+tcp://127.0.0.1:0") != 0) {
        test_daemon_stop(&d);
        return 1;
    }
    CHECK(strncmp(d.url, "tls+tcp://", 10) == 0, "daemon url '%s'", d.url);

    test_whole_session();
    test_bad_options();
    test_refused();
    test_optimctl();
    test_retry_redials_with_tls();
    /* Refused clients left the daemon serving the others. */
    test_whole_session();

    CHECK(test_daemon_alive(&d), "the daemon died");
    CHECK(test_daemon_stop(&d) == 0, "daemon exit status");
    return check_report("client_tls");
}
