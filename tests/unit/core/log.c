/* Unit tests of lib/core/log.c: one JSON line per message, escaping, request context fields. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <polis/core.h>

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Log through a pipe and return the line written (without its newline) in buf. */
static void logged(char *buf, size_t cap, enum polis_log_level level, const char *msg)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    polis_log_set_fd(p[1]);
    polis_log(level, "%s", msg);
    polis_log_set_fd(2);
    close(p[1]);
    ssize_t n = read(p[0], buf, cap - 1);
    close(p[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_int_equal(buf[n - 1], '\n'); /* one whole line */
    buf[n - 1] = '\0';
    assert_null(strchr(buf, '\n'));
}

static void line_is_json_with_escapes(void **state)
{
    char line[8192];
    logged(line, sizeof(line), POLIS_LOG_WARN, "quote \" backslash \\ newline\n bell \a");
    assert_non_null(strstr(line, "\"level\":\"warn\""));
    assert_non_null(strstr(line, "\"msg\":\"quote \\\" backslash \\\\ newline\\n bell \\u0007\"}"));
    assert_memory_equal(line, "{\"ts\":\"", 7);
}

static void context_fields_follow_the_thread(void **state)
{
    char line[8192];
    polis_log_set_context(POLIS_STR("req-42"), POLIS_STR("4bf92f3577b34da6a3ce929d0e0e4736"));
    logged(line, sizeof(line), POLIS_LOG_INFO, "in a request");
    assert_non_null(strstr(line, "\"msg\":\"in a request\",\"request_id\":\"req-42\","
                                 "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}"));
    polis_log_set_context(POLIS_STR("only-request"), (struct polis_str){NULL, 0});
    logged(line, sizeof(line), POLIS_LOG_INFO, "x");
    assert_non_null(strstr(line, "\"request_id\":\"only-request\"}"));
    assert_null(strstr(line, "trace_id"));
    polis_log_set_context((struct polis_str){NULL, 0}, (struct polis_str){NULL, 0});
    logged(line, sizeof(line), POLIS_LOG_INFO, "after");
    assert_null(strstr(line, "request_id"));
}

static void long_messages_stay_one_valid_line(void **state)
{
    static char big[10000];
    memset(big, '"', sizeof(big) - 1); /* each byte doubles when escaped */
    char line[8192];
    polis_log_set_context(POLIS_STR("r"), POLIS_STR("t"));
    logged(line, sizeof(line), POLIS_LOG_ERROR, big);
    size_t n = strlen(line);
    assert_true(n < 4096);
    const char *tail = "\",\"request_id\":\"r\",\"trace_id\":\"t\"}";
    assert_string_equal(line + n - strlen(tail), tail);
    polis_log_set_context((struct polis_str){NULL, 0}, (struct polis_str){NULL, 0});
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(line_is_json_with_escapes),
        cmocka_unit_test(context_fields_follow_the_thread),
        cmocka_unit_test(long_messages_stay_one_valid_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
