/* api_standin: see api_standin.h. */
#define _GNU_SOURCE /* strcasestr */

#include "tests/support/api_standin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridge/bridge.h"
#include "common/common.h"

#define SEEN_MAX 65536

struct er_api_standin {
    int fd;
    int port;
    pthread_t tid;
    pthread_mutex_t mu;
    int hits;
    char seen[SEEN_MAX];
    const char *answer;
    int delay_ms;
};

/* One connection: read the head, then Content-Length bytes of body. */
static size_t read_request(int c, char *buf, size_t cap)
{
    size_t len = 0;

    while (len < cap - 1) {
        ssize_t n = read(c, buf + len, cap - 1 - len);
        const char *end;

        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
        if (end != NULL) {
            const char *cl = strcasestr(buf, "\r\ncontent-length:");
            long body = cl != NULL && cl < end ? strtol(cl + 17, NULL, 10) : 0;

            if (len >= (size_t)(end + 4 - buf) + (size_t)body)
                break;
        }
    }
    buf[len] = '\0';
    return len;
}

static void *standin_main(void *arg)
{
    struct er_api_standin *api = arg;
    static char buf[SEEN_MAX];

    for (;;) {
        const char *answer;
        size_t len;
        size_t used;
        int delay;
        int c = accept(api->fd, NULL, NULL);

        if (c < 0)
            return NULL;
        len = read_request(c, buf, sizeof(buf));
        pthread_mutex_lock(&api->mu);
        api->hits++;
        /* Appended, as much as fits: every request since the answer. */
        used = strlen(api->seen);
        if (len > sizeof(api->seen) - 1 - used)
            len = sizeof(api->seen) - 1 - used;
        memcpy(api->seen + used, buf, len);
        api->seen[used + len] = '\0';
        answer = api->answer;
        delay = api->delay_ms;
        pthread_mutex_unlock(&api->mu);
        if (delay > 0)
            usleep((useconds_t)delay * 1000);
        if (answer != NULL && write(c, answer, strlen(answer)) < 0)
            perror("api stand-in: write");
        close(c);
    }
}

struct er_api_standin *er_api_standin_start(void)
{
    struct er_api_standin *api = er_calloc(1, sizeof(*api));
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof(sa);

    if (api == NULL)
        return NULL;
    pthread_mutex_init(&api->mu, NULL);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    api->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (api->fd < 0 || bind(api->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(api->fd, 64) != 0 ||
        getsockname(api->fd, (struct sockaddr *)&sa, &sl) != 0 ||
        pthread_create(&api->tid, NULL, standin_main, api) != 0) {
        perror("api stand-in: start");
        if (api->fd >= 0)
            close(api->fd);
        pthread_mutex_destroy(&api->mu);
        er_free(api);
        return NULL;
    }
    api->port = ntohs(sa.sin_port);
    return api;
}

void er_api_standin_stop(struct er_api_standin *api)
{
    if (api == NULL)
        return;
    shutdown(api->fd, SHUT_RDWR);
    close(api->fd);
    pthread_join(api->tid, NULL);
    pthread_mutex_destroy(&api->mu);
    er_free(api);
}

int er_api_standin_port(const struct er_api_standin *api)
{
    return api->port;
}

void er_api_standin_answer(struct er_api_standin *api, const char *raw,
                           int delay_ms)
{
    pthread_mutex_lock(&api->mu);
    api->answer = raw;
    api->delay_ms = delay_ms;
    api->hits = 0;
    api->seen[0] = '\0';
    pthread_mutex_unlock(&api->mu);
}

int er_api_standin_hits(struct er_api_standin *api, char *seen, size_t len)
{
    int hits;

    pthread_mutex_lock(&api->mu);
    hits = api->hits;
    if (seen != NULL)
        snprintf(seen, len, "%s", api->seen);
    pthread_mutex_unlock(&api->mu);
    return hits;
}

int er_api_standin_fwd(const struct er_api_standin *api, size_t max_body,
                       int64_t timeout_ms, struct er_bridge_allow **allow,
                       struct er_bridge_fwd **fwd)
{
    struct er_err err;
    char origin[64];

    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d", api->port);
    if (er_bridge_allow_load(NULL, allow, &err) != 0 ||
        er_bridge_fwd_new(origin, *allow, max_body, timeout_ms, fwd, &err) !=
            0) {
        fprintf(stderr, "api stand-in: %s\n", err.msg);
        return -1;
    }
    return 0;
}
