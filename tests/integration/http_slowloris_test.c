/* http_slowloris_test: /healthz, /metrics and /readyz keep answering while
 * other clients trickle bytes, say nothing or never read (issue 7). A real
 * server on 127.0.0.1:0 in this process; plain socket clients on the test
 * thread, plus one helper thread that trickles. Latencies are printed: the
 * target is 100 ms, the asserted bound is a loose 2 s for loaded CI boxes. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "worker/http_int.h"
#include "worker/worker.h"

#define ANSWER_BOUND_MS 2000 /* asserted; the target is 100 ms */
#define WAIT_MS         5000 /* a client gives up on the server after this */
#define TRICKLE_CNT     3
#define IDLE_CNT        (ER_HTTP_CONN_MAX + 5)
#define TRICKLE_MS      50 /* one byte per slow client this often */

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void pause_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000,
                           .tv_nsec = (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A blocking socket connected to 127.0.0.1:port. With rcvbuf_len > 0 its
 * receive buffer (so the window it offers) is made that small first. */
static int connect_to(int port, int rcvbuf_len)
{
    struct sockaddr_in sin;
    /* connect() gives up after SO_SNDTIMEO, should the backlog be full. */
    struct timeval tv = { .tv_sec = WAIT_MS / 1000, .tv_usec = 0 };
    int fd;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)),
                     0);
    if (rcvbuf_len > 0)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_len,
                                    sizeof(rcvbuf_len)),
                         0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
        fail_msg("connect to port %d: errno %d", port, errno);
    return fd;
}

static void send_str(int fd, const char *s)
{
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Read until the server closes (EOF or reset) into out, NUL-terminated.
 * Returns the bytes read, or -1 when wait_ms passed first. */
static ssize_t read_to_end(int fd, char *out, size_t out_size, int wait_ms)
{
    int64_t deadline_us = now_us() + (int64_t)wait_ms * 1000;
    size_t len = 0;

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN, .revents = 0 };
        int64_t left_ms = (deadline_us - now_us()) / 1000;
        ssize_t r;

        if (left_ms <= 0)
            return -1;
        if (poll(&pfd, 1, (int)left_ms) <= 0)
            continue; /* EINTR or time is up: the top of the loop says */
        r = recv(fd, out + len, out_size - 1 - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        assert_true(len < out_size - 1);
    }
    out[len] = '\0';
    return (ssize_t)len;
}

/* resp is a whole answer with this status line: its body is as long as
 * its Content-Length says. */
static void assert_full_answer(const char *resp, const char *status_line)
{
    const char *len_hdr = strstr(resp, "\r\nContent-Length: ");
    const char *body = strstr(resp, "\r\n\r\n");
    size_t n = strlen(status_line);

    if (strncmp(resp, status_line, n) != 0 || resp[n] != '\r')
        fail_msg("want \"%s\", got \"%.40s\"", status_line, resp);
    assert_non_null(len_hdr);
    assert_non_null(body);
    assert_int_equal(strtoul(len_hdr + 18, NULL, 10), strlen(body + 4));
}

/* GET path as a well-behaved probe would (no half-close); the whole answer
 * goes to out. Returns how long it took in microseconds. */
static int64_t timed_get(int port, const char *path, char *out, size_t out_size)
{
    char req[128];
    int64_t start_us = now_us();
    int64_t took_us;
    ssize_t n;
    int fd;

    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: probe\r\n\r\n", path);
    fd = connect_to(port, 0);
    send_str(fd, req);
    n = read_to_end(fd, out, out_size, WAIT_MS);
    took_us = now_us() - start_us;
    close(fd);
    if (n < 0)
        fail_msg("GET %s: no whole answer after %.0f ms", path,
                 (double)took_us / 1000.0);
    return took_us;
}

/* Ask the three endpoints one after the other; each must answer in full
 * within the bound. */
static void assert_probes_answer(int port, const char *situation)
{
    static const char *const paths[] = { "/healthz", "/metrics", "/readyz" };
    static char resp[256 * 1024];
    size_t i;

    for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        int64_t took_us = timed_get(port, paths[i], resp, sizeof(resp));

        print_message("GET %-8s answered in %7.3f ms (%s)\n", paths[i],
                      (double)took_us / 1000.0, situation);
        if (took_us > (int64_t)ANSWER_BOUND_MS * 1000)
            fail_msg("GET %s took %.0f ms", paths[i], (double)took_us / 1000.0);
        assert_full_answer(resp, "HTTP/1.1 200 OK");
    }
    assert_non_null(strstr(resp, "\r\n\r\nready\n"));
}

/* A helper thread sends one byte of a never-ending head every TRICKLE_MS
 * on each of fds; errors (the server closed) are ignored. */
struct trickle {
    int fds[TRICKLE_CNT];
    size_t fd_cnt;
    atomic_bool is_stopping;
    pthread_t thread;
};

static void *trickle_loop(void *arg)
{
    static const char head[] = "GET /healthz HTTP/1.1\r\nX-Slow: ";
    struct trickle *t = arg;
    size_t pos = 0;
    size_t i;

    while (!atomic_load(&t->is_stopping)) {
        const char *c = pos < sizeof(head) - 1 ? &head[pos] : "a";

        for (i = 0; i < t->fd_cnt; i++)
            (void)send(t->fds[i], c, 1, MSG_NOSIGNAL);
        pos++;
        pause_ms(TRICKLE_MS);
    }
    return NULL;
}

static void trickle_start(struct trickle *t, int port, size_t fd_cnt)
{
    size_t i;

    assert_true(fd_cnt <= TRICKLE_CNT);
    t->fd_cnt = fd_cnt;
    atomic_init(&t->is_stopping, false);
    for (i = 0; i < fd_cnt; i++)
        t->fds[i] = connect_to(port, 0);
    assert_int_equal(pthread_create(&t->thread, NULL, trickle_loop, t), 0);
}

static void trickle_stop(struct trickle *t)
{
    size_t i;

    atomic_store(&t->is_stopping, true);
    pthread_join(t->thread, NULL);
    for (i = 0; i < t->fd_cnt; i++)
        close(t->fds[i]);
}

static struct er_http *start_server(void)
{
    struct er_err err;
    struct er_http *http;

    er_err_clear(&err);
    http = er_http_new("127.0.0.1:0", &err);
    if (http == NULL)
        fail_msg("er_http_new: %s", err.msg);
    er_metrics_set_db_ready(true);
    er_metrics_set_kafka_ready(true);
    return http;
}

static void stop_server(struct er_http *http)
{
    er_http_destroy(http);
    er_metrics_set_db_ready(false);
    er_metrics_set_kafka_ready(false);
}

/* The report: three clients sending a byte at a time held /healthz
 * for 15 s. Then more idle clients than the cap. */
static void healthz_answers_under_slowloris(void **state)
{
    struct er_http *http;
    static struct trickle slow; /* outlives a failed test's frame */
    char what[96];
    int idle[IDLE_CNT];
    int port;
    size_t i;

    (void)state;
    http = start_server();
    port = er_http_port(http);

    trickle_start(&slow, port, TRICKLE_CNT);
    pause_ms(200); /* they are accepted and part-way through their heads */
    snprintf(what, sizeof(what), "%d clients send a byte every %d ms",
             TRICKLE_CNT, TRICKLE_MS);
    assert_probes_answer(port, what);

    /* Past the cap: half say nothing at all, half stop mid-line. */
    for (i = 0; i < IDLE_CNT; i++) {
        idle[i] = connect_to(port, 0);
        if (i % 2 == 1)
            send_str(idle[i], "GET /heal");
    }
    pause_ms(100);
    snprintf(what, sizeof(what),
             "and %d more clients hold connections (cap %d)", IDLE_CNT,
             ER_HTTP_CONN_MAX);
    assert_probes_answer(port, what);

    trickle_stop(&slow);
    for (i = 0; i < IDLE_CNT; i++)
        close(idle[i]);
    stop_server(http);
}

/* Clients that ask and then never read (nor close) must not hold the
 * server; each still gets its answer, or is closed at the cap. Their
 * receive buffers are tiny so the answer cannot all be delivered. */
static void healthz_answers_while_clients_never_read(void **state)
{
    static char resp[64 * 1024];
    struct er_http *http;
    char what[96];
    int reader[IDLE_CNT];
    size_t full_cnt = 0;
    int port;
    size_t i;

    (void)state;
    http = start_server();
    port = er_http_port(http);

    for (i = 0; i < IDLE_CNT; i++) {
        reader[i] = connect_to(port, 1024);
        send_str(reader[i], "GET /metrics HTTP/1.1\r\nHost: lazy\r\n\r\n");
    }
    pause_ms(100);
    snprintf(what, sizeof(what), "%d clients never read their answer",
             IDLE_CNT);
    assert_probes_answer(port, what);

    /* Now read: the server must have finished with every one of them. */
    for (i = 0; i < IDLE_CNT; i++) {
        ssize_t n = read_to_end(reader[i], resp, sizeof(resp), WAIT_MS);

        if (n < 0)
            fail_msg("lazy client %zu: server never closed", i);
        if (n > 0) {
            assert_full_answer(resp, "HTTP/1.1 200 OK");
            full_cnt++;
        }
        close(reader[i]);
    }
    print_message("%zu of %d lazy clients got their whole answer (cap %d)\n",
                  full_cnt, IDLE_CNT, ER_HTTP_CONN_MAX);
    /* Only connections closed at the cap before their head was read can
     * miss it. */
    assert_true(full_cnt >= ER_HTTP_CONN_MAX);
    stop_server(http);
}

/* A client that says nothing, one that stops mid-head and one that keeps
 * trickling are all let go at the head deadline: the first without an
 * answer, the others with 400 for what they sent. */
static void stalled_connection_is_closed_after_its_deadline(void **state)
{
    static char resp[4096];
    static const char *const names[] = { "silent", "stopped", "trickling" };
    struct er_http *http;
    static struct trickle slow; /* outlives a failed test's frame */
    int fds[3];
    int64_t start_us;
    int port;
    size_t i;

    (void)state;
    http = start_server();
    port = er_http_port(http);
    start_us = now_us();
    fds[0] = connect_to(port, 0);
    fds[1] = connect_to(port, 0);
    send_str(fds[1], "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    trickle_start(&slow, port, 1);
    fds[2] = slow.fds[0];

    for (i = 0; i < 3; i++) {
        ssize_t n = read_to_end(fds[i], resp, sizeof(resp), WAIT_MS);
        int64_t took_ms = (now_us() - start_us) / 1000;

        if (n < 0)
            fail_msg("%s client: still open after %d ms", names[i], WAIT_MS);
        print_message("%s client closed after %lld ms (deadline %d ms)\n",
                      names[i], (long long)took_ms, ER_HTTP_HEAD_DEADLINE_MS);
        assert_true(took_ms >= ER_HTTP_HEAD_DEADLINE_MS - 50);
        assert_true(took_ms < ER_HTTP_HEAD_DEADLINE_MS + ANSWER_BOUND_MS);
        if (i == 0)
            assert_int_equal(n, 0);
        else
            assert_full_answer(resp, "HTTP/1.1 400 Bad Request");
    }
    close(fds[0]);
    close(fds[1]);
    trickle_stop(&slow);

    assert_probes_answer(port, "the stalled clients are gone");
    stop_server(http);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(healthz_answers_under_slowloris),
        cmocka_unit_test(healthz_answers_while_clients_never_read),
        cmocka_unit_test(stalled_connection_is_closed_after_its_deadline),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
