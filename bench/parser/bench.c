/* bench/parser/bench.c: parse one request or response head N times, for callgrind Ir per parse. */
#include <polis/http.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A typical proxied GET: 299 bytes, 8 headers. */
static const char req[] = "GET /api/v1/users/12345/orders?fields=id,total&li=2 HTTP/1.1\r\n"
                          "Host: api.example.com\r\n"
                          "User-Agent: curl/8.1.2\r\n"
                          "Accept: application/json\r\n"
                          "Accept-Encoding: gzip, deflate, br\r\n"
                          "Accept-Language: en-US,en;q=0.9\r\n"
                          "Connection: keep-alive\r\n"
                          "X-Request-Id: 9f1c2d3e-4b5a-6789-abcd-ef01234\r\n"
                          "Cookie: sid=a1b2c3d4\r\n"
                          "\r\n";

/* A typical upstream response: 8 headers. */
static const char resp[] = "HTTP/1.1 200 OK\r\n"
                           "Date: Mon, 06 May 2024 10:00:00 GMT\r\n"
                           "Server: polis-sdk/0.1\r\n"
                           "Content-Type: application/json; charset=utf-8\r\n"
                           "Content-Length: 1234\r\n"
                           "Connection: keep-alive\r\n"
                           "Cache-Control: no-cache, no-store\r\n"
                           "X-Request-Id: 9f1c2d3e-4b5a-6789-abcd-ef01234\r\n"
                           "Vary: Accept-Encoding\r\n"
                           "\r\n";

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 10000;
    int response = argc > 2 && strcmp(argv[2], "resp") == 0;
    const char *src = response ? resp : req;
    size_t len = response ? sizeof(resp) - 1 : sizeof(req) - 1;
    /* An exact-size heap copy, so a sanitizer build would see any over-read. */
    char *buf = malloc(len);
    if (buf == NULL)
        return 1;
    memcpy(buf, src, len);
    struct polis_h1_header h[32];
    struct polis_h1_msg m = {.headers = h};
    size_t head = 0;
    int rc = 0;
    for (long i = 0; i < n; i++) {
        size_t scan = 0;
        rc = response ? polis_h1_parse_response(buf, len, &scan, &m, 32, NULL, false, &head)
                      : polis_h1_parse_request(buf, len, &scan, &m, 32, NULL, &head);
        if (rc != 0)
            break;
    }
    printf("%s: %zu bytes, %zu headers, rc %d\n", response ? "response" : "request", len,
           m.num_headers, rc);
    free(buf);
    return rc != 0;
}
