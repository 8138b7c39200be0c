/* Unit tests of lib/core/io.c: the socket layer and the in-memory peer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/core.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

static void memory_reads_in_chunks_then_eof(void **state)
{
    struct polis_io io;
    struct polis_io_mem m = {.in = "hello world", .in_len = 11, .read_chunk = 4, .eof = true};
    polis_buf_init(&m.out, 1024);
    polis_io_memory(&io, &m);
    char buf[64];
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "hell", 4);
    assert_int_equal(polis_io_read(&io, buf, 2), 2); /* the caller's length bounds it too */
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "worl", 4);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), 1);
    assert_int_equal(polis_io_read(&io, buf, sizeof(buf)), 0);
    polis_buf_free(&m.out);
}

static void memory_stutter_and_would_block(void **state)
{
    struct polis_io io;
    struct polis_io_mem m = {.in = "abcdef", .in_len = 6, .read_chunk = 3, .stutter = true};
    polis_buf_init(&m.out, 1024);
    polis_io_memory(&io, &m);
    char buf[8];
    assert_int_equal(polis_io_read(&io, buf, 8), 3);
    errno = 0;
    assert_int_equal(polis_io_read(&io, buf, 8), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(polis_io_read(&io, buf, 8), 3);
    assert_int_equal(polis_io_read(&io, buf, 8), -1); /* stutter */
    assert_int_equal(polis_io_read(&io, buf, 8), -1); /* no eof: would block forever */
    assert_int_equal(errno, EAGAIN);
    polis_buf_free(&m.out);
}

static void memory_short_writes_and_shutdown(void **state)
{
    struct polis_io io;
    struct polis_io_mem m = {.write_chunk = 5};
    polis_buf_init(&m.out, 1024);
    polis_io_memory(&io, &m);
    struct iovec iov[2] = {{"abc", 3}, {"defgh", 5}};
    assert_int_equal(polis_io_writev(&io, iov, 2), 5);
    assert_memory_equal(polis_buf_head(&m.out), "abcde", 5);
    io.ops->shutdown(&io);
    assert_int_equal(polis_io_writev(&io, iov, 1), -1);
    assert_int_equal(errno, EPIPE);
    polis_buf_free(&m.out);
}

static void socket_layer_moves_bytes(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct polis_io a, b;
    polis_io_socket(&a, sv[0]);
    polis_io_socket(&b, sv[1]);
    struct iovec iov[2] = {{"GET ", 4}, {"/\r\n", 3}};
    assert_int_equal(polis_io_writev(&a, iov, 2), 7);
    char buf[16];
    assert_int_equal(polis_io_read(&b, buf, sizeof(buf)), 7);
    assert_memory_equal(buf, "GET /\r\n", 7);
    assert_int_equal(polis_io_read(&b, buf, sizeof(buf)), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    a.ops->shutdown(&a);
    assert_int_equal(polis_io_read(&b, buf, sizeof(buf)), 0);
    close(sv[1]); /* writing to a closed peer: an error, never SIGPIPE */
    assert_int_equal(polis_io_writev(&a, iov, 1), -1);
    assert_int_equal(errno, EPIPE);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(memory_reads_in_chunks_then_eof),
        cmocka_unit_test(memory_stutter_and_would_block),
        cmocka_unit_test(memory_short_writes_and_shutdown),
        cmocka_unit_test(socket_layer_moves_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
