/* blocking.h: blocking socket I/O bounded by a deadline, for the few threads allowed to block
 * (the trace exporter, service handlers calling other services). Never on an event loop. */
#ifndef POLIS_HTTP_BLOCKING_H
#define POLIS_HTTP_BLOCKING_H

#include <polis/core.h>

#include <sys/socket.h>

/* Milliseconds on the monotonic clock (deadlines are in this unit). */
uint64_t polis__mono_ms(void);

/* Wait until fd is ready for events (POLLIN, POLLOUT) or the deadline passes. Returns 0,
 * POLIS_ETIMEDOUT or POLIS_ESYS (errno). */
int polis__fd_wait(int fd, short events, uint64_t deadline);

/* Open a non-blocking TCP connection (TCP_NODELAY, close-on-exec) to sa by the deadline.
 * Returns 0 and *out, POLIS_ETIMEDOUT or POLIS_ESYS with errno saying why. */
int polis__tcp_connect(const struct sockaddr *sa, socklen_t len, uint64_t deadline, int *out);

/* Send every byte of iov[0..cnt) (the array is consumed: its entries are advanced) by the
 * deadline, without SIGPIPE. Returns 0, POLIS_ETIMEDOUT or POLIS_ESYS (errno). */
int polis__send_all(int fd, struct iovec *iov, int cnt, uint64_t deadline);

#endif
