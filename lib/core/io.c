/* io.c: the I/O layers under connections: plain sockets and in-memory peers for tests. */
#include <polis/core.h>

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t sock_read(struct polis_io *io, void *buf, size_t len)
{
    ssize_t n;
    do
        n = recv(io->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

static ssize_t sock_writev(struct polis_io *io, const struct iovec *iov, int iovcnt)
{
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    ssize_t n;
    do
        n = sendmsg(io->fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

static void sock_shutdown(struct polis_io *io)
{
    shutdown(io->fd, SHUT_WR);
}

const struct polis_io_ops polis_io_socket_ops = {sock_read, sock_writev, sock_shutdown};

static ssize_t mem_read(struct polis_io *io, void *buf, size_t len)
{
    struct polis_io_mem *m = io->ctx;
    size_t left = m->in_len - m->in_pos;
    if (left == 0) {
        if (m->eof)
            return 0;
        errno = EAGAIN;
        return -1;
    }
    if (m->stutter && m->stalled) { /* an EAGAIN between chunks, as a socket would */
        m->stalled = false;
        errno = EAGAIN;
        return -1;
    }
    size_t n = left < len ? left : len;
    if (m->read_chunk > 0 && n > m->read_chunk)
        n = m->read_chunk;
    memcpy(buf, m->in + m->in_pos, n);
    m->in_pos += n;
    m->stalled = true;
    return (ssize_t)n;
}

static ssize_t mem_writev(struct polis_io *io, const struct iovec *iov, int iovcnt)
{
    struct polis_io_mem *m = io->ctx;
    if (m->shut) {
        errno = EPIPE;
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t n = iov[i].iov_len;
        if (m->write_chunk > 0 && total + n > m->write_chunk)
            n = m->write_chunk - total;
        if (polis_buf_append(&m->out, iov[i].iov_base, n) < 0)
            break;
        total += n;
        if (m->write_chunk > 0 && total == m->write_chunk)
            break;
    }
    if (total == 0 && iovcnt > 0) {
        errno = EAGAIN;
        return -1;
    }
    return (ssize_t)total;
}

static void mem_shutdown(struct polis_io *io)
{
    struct polis_io_mem *m = io->ctx;
    m->shut = true;
}

const struct polis_io_ops polis_io_mem_ops = {mem_read, mem_writev, mem_shutdown};
