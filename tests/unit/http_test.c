/* http_test: the request parser on good and bad heads, and a real server on
 * 127.0.0.1:0 asked by a plain socket client (loopback only). The client
 * runs on the test thread; the server on its own. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "worker/worker.h"

struct parsed {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
};

static int parse(const char *s, struct parsed *p)
{
    memset(p, 0, sizeof(*p));
    return er_http_parse_request(s, strlen(s), &p->method, &p->method_len,
                                 &p->path, &p->path_len);
}

static void assert_span(const char *p, size_t len, const char *want)
{
    assert_int_equal(len, strlen(want));
    assert_memory_equal(p, want, len);
}

static void http_parse_accepts_requests(void **state)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\n"
                              "Host: 127.0.0.1:9464\r\n"
                              "User-Agent: Prometheus/2.45\r\n"
                              "Accept: text/plain;q=0.9,\t*/*\r\n"
                              "\r\n";
    struct parsed p;

    (void)state;
    assert_int_equal(parse(req, &p), 0);
    assert_span(p.method, p.method_len, "GET");
    assert_span(p.path, p.path_len, "/metrics");
    assert_ptr_equal(p.method, req);

    assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &p), 0);
    assert_span(p.path, p.path_len, "/");

    /* The query is not part of the path. */
    assert_int_equal(parse("GET /readyz?verbose=1&x=%20 HTTP/1.1\r\n\r\n", &p),
                     0);
    assert_span(p.path, p.path_len, "/readyz");
    assert_int_equal(parse("GET /healthz? HTTP/1.1\r\n\r\n", &p), 0);
    assert_span(p.path, p.path_len, "/healthz");

    /* Any token is a method; routing decides 405. */
    assert_int_equal(parse("M-SEARCH /x HTTP/1.1\r\nHost: h\r\n\r\n", &p), 0);
    assert_span(p.method, p.method_len, "M-SEARCH");

    /* A body after the head is ignored, control bytes and all. */
    assert_int_equal(
        parse("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n\x01\x02\n",
              &p),
        0);
    assert_span(p.method, p.method_len, "POST");
}

static void http_parse_rejects_bad_heads(void **state)
{
    static const char *const bad[] = {
        "",
        "G",
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n",                /* no CRLFCRLF */
        "GET / HTTP/1.1\n\n",                           /* bare LF */
        "\r\n\r\n",                                     /* empty request line */
        "\r\nGET / HTTP/1.1\r\n\r\n",                   /* leading CRLF */
        "GE(T / HTTP/1.1\r\n\r\n",                      /* bad method char */
        "G\x01T / HTTP/1.1\r\n\r\n",                    /* control in method */
        " / HTTP/1.1\r\n\r\n",                          /* empty method */
        "GET  / HTTP/1.1\r\n\r\n",                      /* two spaces */
        "GET HTTP/1.1\r\n\r\n",                         /* no target */
        "GET metrics HTTP/1.1\r\n\r\n",                 /* not origin-form */
        "GET /a\x7f HTTP/1.1\r\n\r\n",                  /* DEL in target */
        "GET /\xc3\xa9 HTTP/1.1\r\n\r\n",               /* non-ASCII target */
        "GET /\tx HTTP/1.1\r\n\r\n",                    /* tab in target */
        "GET / HTTP/2.0\r\n\r\n",                       /* version */
        "GET / HTTP/1.2\r\n\r\n",                       /* version */
        "GET / http/1.1\r\n\r\n",                       /* version case */
        "GET / HTTP/1.1 \r\n\r\n",                      /* trailing space */
        "GET / HTTP/1.1x\r\n\r\n",                      /* junk after version */
        "GET /\r\n\r\n",                                /* HTTP/0.9 */
        "GET / HTTP/1.1\r\nHost h\r\n\r\n",             /* header without ':' */
        "GET / HTTP/1.1\r\n: v\r\n\r\n",                /* empty header name */
        "GET / HTTP/1.1\r\nHo st: h\r\n\r\n",           /* space in name */
        "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", /* obs-fold */
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",         /* bare CR */
        "GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n",         /* bare LF */
        "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",        /* control in value */
        "GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",        /* DEL in value */
    };
    static const char nul_req[] = "GET /\0x HTTP/1.1\r\n\r\n";
    static const char nul_hdr[] = "GET / HTTP/1.1\r\nA: \0\r\n\r\n";
    struct parsed p;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse(bad[i], &p) != ER_EBADMSG)
            fail_msg("accepted bad head #%zu", i);
    }
    assert_int_equal(er_http_parse_request(nul_req, sizeof(nul_req) - 1,
                                           &p.method, &p.method_len, &p.path,
                                           &p.path_len),
                     ER_EBADMSG);
    assert_int_equal(er_http_parse_request(nul_hdr, sizeof(nul_hdr) - 1,
                                           &p.method, &p.method_len, &p.path,
                                           &p.path_len),
                     ER_EBADMSG);
    assert_int_equal(er_http_parse_request(NULL, 0, &p.method, &p.method_len,
                                           &p.path, &p.path_len),
                     ER_EBADMSG);
    assert_int_equal(er_http_parse_request(NULL, 100, &p.method, &p.method_len,
                                           &p.path, &p.path_len),
                     ER_EBADMSG);
}

static void http_parse_respects_len(void **state)
{
    static const char req[] = "GET /healthz HTTP/1.1\r\n\r\n";
    struct parsed p;
    size_t n;

    (void)state;
    /* Every strict prefix is incomplete. */
    for (n = 0; n < sizeof(req) - 1; n++) {
        assert_int_equal(er_http_parse_request(req, n, &p.method, &p.method_len,
                                               &p.path, &p.path_len),
                         ER_EBADMSG);
    }
    assert_int_equal(er_http_parse_request(req, n, &p.method, &p.method_len,
                                           &p.path, &p.path_len),
                     0);
}

/* ================================================================
 * The server, asked over loopback
 * ================================================================ */

/* Send req to 127.0.0.1:port and read the whole response (the server
 * closes the connection) into out. */
static void ask(int port, const char *req, size_t req_len, char *out,
                size_t out_len)
{
    struct sockaddr_in sin;
    struct timeval tv = { .tv_sec = 5, .tv_usec = 0 };
    size_t len = 0;
    int fd;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)),
                     0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    if (req_len > 0)
        assert_int_equal(send(fd, req, req_len, MSG_NOSIGNAL),
                         (ssize_t)req_len);
    /* EOF tells the server that nothing more is coming. */
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    for (;;) {
        ssize_t r = recv(fd, out + len, out_len - 1 - len, 0);

        assert_true(r >= 0);
        if (r == 0)
            break;
        len += (size_t)r;
        assert_true(len < out_len - 1);
    }
    out[len] = '\0';
    close(fd);
}

static void get(int port, const char *req, char *out, size_t out_len)
{
    ask(port, req, strlen(req), out, out_len);
}

static const char *body_of(const char *resp)
{
    const char *p = strstr(resp, "\r\n\r\n");

    assert_non_null(p);
    return p + 4;
}

static void assert_status(const char *resp, const char *status_line)
{
    size_t n = strlen(status_line);

    if (strncmp(resp, status_line, n) != 0 || resp[n] != '\r')
        fail_msg("want \"%s\", got \"%.40s\"", status_line, resp);
    assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
}

static void http_serves_endpoints(void **state)
{
    struct er_err err;
    struct er_http *http;
    static char resp[256 * 1024];
    char len_hdr[64];
    int port;

    (void)state;
    er_err_clear(&err);
    http = er_http_new("127.0.0.1:0", &err);
    if (http == NULL)
        fail_msg("er_http_new: %s", err.msg);
    port = er_http_port(http);
    assert_true(port > 0 && port < 65536);

    get(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 200 OK");
    assert_string_equal(body_of(resp), "ok\n");
    assert_non_null(strstr(resp, "\r\nContent-Length: 3\r\n"));

    er_metrics_set_db_ready(true);
    er_metrics_set_kafka_ready(false);
    get(port, "GET /readyz HTTP/1.0\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 503 Service Unavailable");
    assert_string_equal(body_of(resp), "not ready\n");
    er_metrics_set_kafka_ready(true);
    get(port, "GET /readyz?x=1 HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 200 OK");
    assert_string_equal(body_of(resp), "ready\n");
    er_metrics_set_db_ready(false);
    er_metrics_set_kafka_ready(false);

    er_metrics_dlq();
    get(port, "GET /metrics HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 200 OK");
    assert_non_null(
        strstr(resp, "\r\nContent-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(body_of(resp), "# TYPE envrun_dlq_total counter\n"));
    snprintf(len_hdr, sizeof(len_hdr), "\r\nContent-Length: %zu\r\n",
             strlen(body_of(resp)));
    assert_non_null(strstr(resp, len_hdr));

    get(port, "GET /nope HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 404 Not Found");
    get(port, "GET /metricsx HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 404 Not Found");

    get(port, "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", resp,
        sizeof(resp));
    assert_status(resp, "HTTP/1.1 405 Method Not Allowed");
    assert_non_null(strstr(resp, "\r\nAllow: GET\r\n"));
    get(port, "HEAD /healthz HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 405 Method Not Allowed");

    get(port, "GARBAGE\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 400 Bad Request");
    /* A head cut short by EOF is a bad request. */
    get(port, "GET /healthz HTTP/1.1\r\n\r", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 400 Bad Request");

    /* A client that connects and says nothing gets no answer, and does not
     * stop the server. */
    ask(port, NULL, 0, resp, sizeof(resp));
    assert_string_equal(resp, "");
    get(port, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 200 OK");

    er_http_destroy(http);
}

static void http_reads_head_split_across_packets(void **state)
{
    struct er_err err;
    struct er_http *http;
    struct sockaddr_in sin;
    struct timeval tv = { .tv_sec = 5, .tv_usec = 0 };
    struct timespec pause = { .tv_sec = 0, .tv_nsec = 50000000L };
    char resp[1024];
    size_t len = 0;
    int fd;

    (void)state;
    http = er_http_new("127.0.0.1:0", &err);
    assert_non_null(http);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)),
                     0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)er_http_port(http));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    /* The CRLFCRLF straddles the two writes; the connection stays open, so
     * only the head's end can make the server answer. */
    assert_int_equal(send(fd, "GET /healthz HTTP/1.1\r\n\r", 24, 0), 24);
    nanosleep(&pause, NULL);
    assert_int_equal(send(fd, "\n", 1, 0), 1);
    for (;;) {
        ssize_t r = recv(fd, resp + len, sizeof(resp) - 1 - len, 0);

        assert_true(r >= 0);
        if (r == 0)
            break;
        len += (size_t)r;
        assert_true(len < sizeof(resp) - 1);
    }
    resp[len] = '\0';
    close(fd);
    assert_status(resp, "HTTP/1.1 200 OK");
    er_http_destroy(http);
}

static void http_answers_oversized_head_with_400(void **state)
{
    struct er_err err;
    struct er_http *http;
    static char req[20000];
    static char resp[4096];

    (void)state;
    http = er_http_new("127.0.0.1:0", &err);
    assert_non_null(http);
    memcpy(req, "GET / HTTP/1.1\r\nX: ", 19);
    memset(req + 19, 'a', sizeof(req) - 19 - 5);
    memcpy(req + sizeof(req) - 5, "\r\n\r\n", 5);
    ask(er_http_port(http), req, sizeof(req) - 1, resp, sizeof(resp));
    assert_status(resp, "HTTP/1.1 400 Bad Request");
    er_http_destroy(http);
}

static void http_new_rejects_bad_addresses(void **state)
{
    static const char *const bad[] = {
        "",           "localhost",   "127.0.0.1",       ":80",
        "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536", "127.0.0.1:123456",
        "[::1]80",    "[::1",        "[]:80",
    };
    struct er_err err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        er_err_clear(&err);
        if (er_http_new(bad[i], &err) != NULL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(err.code, ER_EINVAL);
    }
    assert_null(er_http_new(NULL, NULL));
    er_http_destroy(NULL);
}

static void http_new_reports_bind_failure(void **state)
{
    struct er_err err;
    struct er_http *first;
    char addr[64];

    (void)state;
    first = er_http_new("127.0.0.1:0", &err);
    assert_non_null(first);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", er_http_port(first));
    er_err_clear(&err);
    assert_null(er_http_new(addr, &err));
    assert_int_equal(err.code, ER_EIO);
    assert_non_null(strstr(err.msg, "listen"));
    er_http_destroy(first);

    /* A host that is not ours cannot be bound. */
    er_err_clear(&err);
    assert_null(er_http_new("192.0.2.1:0", &err));
    assert_int_equal(err.code, ER_EIO);
}

static void http_new_survives_allocation_failures(void **state)
{
    struct er_err err;
    struct er_http *http = NULL;
    uint64_t n;

    (void)state;
    for (n = 1; n < 32 && http == NULL; n++) {
        er_mem_fail_at(n);
        http = er_http_new("127.0.0.1:0", &err);
        er_mem_fail_at(0);
        if (http == NULL)
            assert_int_equal(err.code, ER_ENOMEM);
    }
    assert_non_null(http);
    er_http_destroy(http);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(http_parse_accepts_requests),
        cmocka_unit_test(http_parse_rejects_bad_heads),
        cmocka_unit_test(http_parse_respects_len),
        cmocka_unit_test(http_serves_endpoints),
        cmocka_unit_test(http_reads_head_split_across_packets),
        cmocka_unit_test(http_answers_oversized_head_with_400),
        cmocka_unit_test(http_new_rejects_bad_addresses),
        cmocka_unit_test(http_new_reports_bind_failure),
        cmocka_unit_test(http_new_survives_allocation_failures),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
