/* The transport bound for a remote step: a rep0 server that answers every
 * request with the request itself, so a client can time moving a step's
 * bytes there and back with no work in between.
 * usage: nng_echo URL READY_FILE */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <signal.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    signal(SIGPIPE, SIG_IGN);
    nng_socket sock;
    if (nng_rep0_open(&sock) != 0) return 1;
    nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, 0);
    nng_listener l;
    if (nng_listener_create(&l, sock, argv[1]) != 0 || nng_listener_start(l, 0) != 0) {
        fprintf(stderr, "nng_echo: cannot listen on %s\n", argv[1]);
        return 1;
    }
    int port = 0;
    nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%d\n", port);
    fclose(f);
    for (;;) {
        nng_msg *m;
        if (nng_recvmsg(sock, &m, 0) != 0) break;
        if (nng_sendmsg(sock, m, 0) != 0) nng_msg_free(m);
    }
    return 0;
}
