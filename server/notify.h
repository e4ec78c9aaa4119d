/* Readiness for service managers: systemd's Type=notify. */
#ifndef OPTIMD_SERVER_NOTIFY_H
#define OPTIMD_SERVER_NOTIFY_H

/* Sends `state` ("READY=1", "STOPPING=1", "RELOADING=1") to $NOTIFY_SOCKET;
 * nothing when it is unset. Any thread. */
void notify_systemd(const char *state);

#endif
