/* blocking.c: blocking socket I/O bounded by a deadline (see blocking.h). */
#include "http/blocking.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

uint64_t polis__mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int polis__fd_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = polis__mono_ms();
        if (now >= deadline)
            return POLIS_ETIMEDOUT;
        uint64_t left = deadline - now;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return POLIS_ESYS;
    }
}

int polis__tcp_connect(const struct sockaddr *sa, socklen_t len, uint64_t deadline, int *out)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return POLIS_ESYS;
    int rc = POLIS_ESYS, err = 0;
    if (connect(fd, sa, len) < 0) {
        if (errno != EINPROGRESS && errno != EINTR)
            goto fail;
        rc = polis__fd_wait(fd, POLLOUT, deadline);
        if (rc < 0)
            goto fail;
        rc = POLIS_ESYS;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            goto fail;
        if (err != 0) {
            errno = err;
            goto fail;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out = fd;
    return 0;
fail:
    err = errno;
    close(fd);
    errno = err;
    return rc;
}

int polis__send_all(int fd, struct iovec *iov, int cnt, uint64_t deadline)
{
    while (cnt > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return POLIS_ESYS;
            int rc = polis__fd_wait(fd, POLLOUT, deadline);
            if (rc < 0)
                return rc;
            continue;
        }
        size_t left = (size_t)n;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}
