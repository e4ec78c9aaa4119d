/* The transport bound for a remote step: a rep0 server that answers every
 * request with the request itself, so a client can time moving a step's
 * bytes there and back with no work in between.
 *
 * It serves CONTEXTS requests at once (default 64, one NNG context each,
 * answered from the receive callback), so that with many clients the echo
 * is not held to one request at a time while the daemon, which also serves
 * through many contexts, is not.
 * usage: nng_echo URL READY_FILE [CONTEXTS] */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct slot {
    nng_ctx ctx;
    nng_aio *aio;
    bool sending;
} slot;

static void on_done(void *arg)
{
    slot *s = arg;
    if (s->sending) {
        /* A reply that could not be sent (its client went away) is ours. */
        if (nng_aio_result(s->aio) != 0) nng_msg_free(nng_aio_get_msg(s->aio));
        s->sending = false;
        nng_ctx_recv(s->ctx, s->aio);
        return;
    }
    int rv = nng_aio_result(s->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    if (rv != 0) {
        nng_ctx_recv(s->ctx, s->aio);
        return;
    }
    /* The received message is already on the aio: send it straight back. */
    s->sending = true;
    nng_ctx_send(s->ctx, s->aio);
}

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    int contexts = argc > 3 ? atoi(argv[3]) : 64;
    if (contexts < 1) return 2;
    signal(SIGPIPE, SIG_IGN);
    nng_socket sock;
    if (nng_rep0_open(&sock) != 0) return 1;
    nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, 0);
    slot *slots = calloc((size_t)contexts, sizeof *slots);
    if (!slots) return 1;
    for (int i = 0; i < contexts; i++)
        if (nng_ctx_open(&slots[i].ctx, sock) != 0 || nng_aio_alloc(&slots[i].aio, on_done, &slots[i]) != 0)
            return 1;
    nng_listener l;
    if (nng_listener_create(&l, sock, argv[1]) != 0 || nng_listener_start(l, 0) != 0) {
        fprintf(stderr, "nng_echo: cannot listen on %s\n", argv[1]);
        return 1;
    }
    for (int i = 0; i < contexts; i++) nng_ctx_recv(slots[i].ctx, slots[i].aio);
    int port = 0;
    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%d\n", port);
    fclose(f);
    /* Served from NNG's threads until a signal ends the process. */
    for (;;) pause();
}
