/* Operational metrics in the Prometheus text format (version 0.0.4), served
 * by a small HTTP/1.1 endpoint on the main loop (--metrics-listen).
 *
 * Request threads count what they answered with metrics_record (atomics
 * only, no locks); the loop thread reads those counters and samples the
 * sessions, plugins and process when a scrape arrives. One daemon per
 * process, so the counters are process globals. */
#ifndef OPTIMD_SERVER_METRICS_H
#define OPTIMD_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server;

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t metrics_now_ns(void);

/* One answered request: `op` is the name of the op it ran (static storage,
 * e.g. the dispatch table's) or NULL when it named none that exists;
 * `code` its result (0: ok). Any thread. */
void metrics_record(const char *op, int code, int64_t elapsed_ns, size_t bytes_in, size_t bytes_out);

/* A gradient the step had to copy before the plugin could read it, because
 * it did not lie at a multiple of its element size in the message (a
 * client that does not pad, docs/protocol.md §3). Any thread. */
void metrics_unaligned_gradient(size_t bytes);

/* Starts serving GET /metrics on `hostport` ("127.0.0.1:9464",
 * "[::1]:9464", "localhost:9464") on `loop`. NULL: metrics off, returns 0.
 * -1 (logged) when the address is bad or cannot be bound. Loop thread. */
int metrics_start(uv_loop_t *loop, struct server *srv, const char *hostport);
/* Closes the listener and every connection; their memory goes when the
 * loop runs their close callbacks. Safe when never started. Loop thread. */
void metrics_stop(void);

#endif
