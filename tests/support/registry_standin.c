/* registry_standin: see registry_standin.h. One thread polls the listening
 * socket and up to CONN_MAX connections; each complete request is answered
 * at once and the connection kept open (HTTP/1.1 keep-alive). */
#include "tests/support/registry_standin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"

#define CONN_MAX   16
#define IN_MAX     (256 * 1024)
#define SCHEMA_MAX 64

struct conn {
    int fd; /* -1: free */
    char in[IN_MAX];
    size_t in_len;
};

struct schema {
    int id;
    char *text;
    int fetches;
};

struct version {
    char subject[256];
    int id;
};

struct er_registry_standin {
    int listen_fd;
    int port;
    pthread_t tid;
    atomic_bool is_stopping;
    pthread_mutex_t mu;
    bool is_down;
    bool is_lost;
    char auth[512]; /* "Basic <base64>", "" for none */
    struct schema schemas[SCHEMA_MAX];
    int schema_cnt;
    struct version versions[SCHEMA_MAX];
    int version_cnt;
    int connections;
    int unauthorized;
    int requests;
    struct conn conns[CONN_MAX];
};

/* Caller holds mu. */
static int add_locked(struct er_registry_standin *reg, const char *subject,
                      const char *text)
{
    struct schema *s = NULL;
    struct version *v;
    int i;

    for (i = 0; i < reg->schema_cnt; i++) {
        if (strcmp(reg->schemas[i].text, text) == 0)
            s = &reg->schemas[i];
    }
    if (s == NULL) {
        if (reg->schema_cnt == SCHEMA_MAX)
            return -1;
        s = &reg->schemas[reg->schema_cnt];
        s->text = strdup(text);
        if (s->text == NULL)
            return -1;
        reg->schema_cnt++;
        s->id = 100 + reg->schema_cnt; /* ids that are not small indexes */
        s->fetches = 0;
    }
    for (i = 0; i < reg->version_cnt; i++) {
        if (reg->versions[i].id == s->id &&
            strcmp(reg->versions[i].subject, subject) == 0)
            return s->id;
    }
    if (reg->version_cnt == SCHEMA_MAX)
        return -1;
    v = &reg->versions[reg->version_cnt++];
    snprintf(v->subject, sizeof(v->subject), "%s", subject);
    v->id = s->id;
    return s->id;
}

static void reply(int fd, int status, const char *reason, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/vnd.schemaregistry.v1+json\r\n"
                     "Content-Length: %zu\r\n"
                     "\r\n",
                     status, reason, strlen(body));

    if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
        return; /* the client went away */
}

static void reply_error(int fd, int status, const char *reason, int code,
                        const char *msg)
{
    char body[512];

    snprintf(body, sizeof(body), "{\"error_code\":%d,\"message\":\"%s\"}", code,
             msg);
    reply(fd, status, reason, body);
}

/* The value of header name in head (not NUL-terminated past head_len is
 * fine: head ends at "\r\n\r\n"), copied into out; false when absent. */
static bool header(const char *head, const char *name, char *out,
                   size_t out_len)
{
    const char *p = head;
    size_t name_len = strlen(name);

    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, name_len) == 0 && p[name_len] == ':') {
            const char *v = p + name_len + 1;
            const char *end = strstr(v, "\r\n");

            while (*v == ' ')
                v++;
            if (end == NULL)
                return false;
            snprintf(out, out_len, "%.*s", (int)(end - v), v);
            return true;
        }
    }
    return false;
}

/* Answer one request (head NUL-terminated, body of body_len bytes). */
static void serve(struct er_registry_standin *reg, int fd, char *head,
                  const char *body, size_t body_len)
{
    char method[8] = "";
    char path[512] = "";
    char auth[512] = "";
    char subject[256];
    json_t *req = NULL;
    int id;

    sscanf(head, "%7s %511s", method, path);
    pthread_mutex_lock(&reg->mu);
    reg->requests++;
    if (reg->is_down) {
        pthread_mutex_unlock(&reg->mu);
        reply_error(fd, 503, "Service Unavailable", 50003, "stand-in is down");
        return;
    }
    if (reg->is_lost) {
        pthread_mutex_unlock(&reg->mu);
        reply(fd, 404, "Not Found", "no route to the schema registry");
        return;
    }
    if (reg->auth[0] != '\0' &&
        (!header(head, "Authorization", auth, sizeof(auth)) ||
         strcmp(auth, reg->auth) != 0)) {
        reg->unauthorized++;
        pthread_mutex_unlock(&reg->mu);
        reply_error(fd, 401, "Unauthorized", 40101, "Unauthorized");
        return;
    }
    if (strcmp(method, "POST") == 0 &&
        sscanf(path, "/subjects/%255[^/]/versions", subject) == 1 &&
        strstr(path, "/versions") != NULL) {
        const char *text;

        req = json_loadb(body, body_len, 0, NULL);
        text = json_string_value(json_object_get(req, "schema"));
        if (text == NULL) {
            pthread_mutex_unlock(&reg->mu);
            reply_error(fd, 422, "Unprocessable Entity", 42201,
                        "Invalid schema");
        } else {
            char out[64];

            id = add_locked(reg, subject, text);
            pthread_mutex_unlock(&reg->mu);
            snprintf(out, sizeof(out), "{\"id\":%d}", id);
            reply(fd, 200, "OK", out);
        }
        json_decref(req);
        return;
    }
    if (strcmp(method, "GET") == 0 &&
        sscanf(path, "/schemas/ids/%d", &id) == 1) {
        int i;

        for (i = 0; i < reg->schema_cnt; i++) {
            if (reg->schemas[i].id == id) {
                json_t *ans = json_pack("{ss}", "schema", reg->schemas[i].text);
                char *text = json_dumps(ans, JSON_COMPACT);

                reg->schemas[i].fetches++;
                pthread_mutex_unlock(&reg->mu);
                reply(fd, 200, "OK", text != NULL ? text : "{}");
                free(text);
                json_decref(ans);
                return;
            }
        }
        pthread_mutex_unlock(&reg->mu);
        reply_error(fd, 404, "Not Found", 40403, "Schema not found");
        return;
    }
    pthread_mutex_unlock(&reg->mu);
    reply_error(fd, 404, "Not Found", 404, "HTTP 404 Not Found");
}

/* Serve every complete request c holds; false when the connection must
 * close (malformed or over the cap). */
static bool drain(struct er_registry_standin *reg, struct conn *c)
{
    for (;;) {
        char *end;
        char value[32];
        size_t head_len;
        size_t body_len = 0;

        c->in[c->in_len] = '\0';
        end = strstr(c->in, "\r\n\r\n");
        if (end == NULL)
            return c->in_len < IN_MAX - 1;
        head_len = (size_t)(end - c->in) + 4;
        end[2] = '\0'; /* the head keeps its last "\r\n" */
        if (header(c->in, "Content-Length", value, sizeof(value)))
            body_len = strtoul(value, NULL, 10);
        if (body_len >= IN_MAX || head_len + body_len >= IN_MAX)
            return false;
        if (c->in_len < head_len + body_len) {
            end[2] = '\r'; /* wait for the rest of the body */
            return true;
        }
        serve(reg, c->fd, c->in, c->in + head_len, body_len);
        memmove(c->in, c->in + head_len + body_len,
                c->in_len - head_len - body_len);
        c->in_len -= head_len + body_len;
    }
}

static void *run(void *arg)
{
    struct er_registry_standin *reg = arg;

    while (!atomic_load(&reg->is_stopping)) {
        struct pollfd pfd[CONN_MAX + 1];
        int idx[CONN_MAX + 1];
        int n = 0;
        int i;

        pfd[n].fd = reg->listen_fd;
        pfd[n].events = POLLIN;
        idx[n++] = -1;
        for (i = 0; i < CONN_MAX; i++) {
            if (reg->conns[i].fd >= 0) {
                pfd[n].fd = reg->conns[i].fd;
                pfd[n].events = POLLIN;
                idx[n++] = i;
            }
        }
        if (poll(pfd, (nfds_t)n, 100) <= 0)
            continue;
        for (i = 1; i < n; i++) {
            struct conn *c = &reg->conns[idx[i]];
            ssize_t got;

            if (pfd[i].revents == 0)
                continue;
            got = read(c->fd, c->in + c->in_len, IN_MAX - 1 - c->in_len);
            if (got > 0) {
                c->in_len += (size_t)got;
                if (drain(reg, c))
                    continue;
            }
            close(c->fd);
            c->fd = -1;
            c->in_len = 0;
        }
        if (pfd[0].revents & POLLIN) {
            int fd = accept(reg->listen_fd, NULL, NULL);

            for (i = 0; fd >= 0 && i < CONN_MAX; i++) {
                if (reg->conns[i].fd < 0) {
                    reg->conns[i].fd = fd;
                    reg->conns[i].in_len = 0;
                    fd = -1;
                    pthread_mutex_lock(&reg->mu);
                    reg->connections++;
                    pthread_mutex_unlock(&reg->mu);
                }
            }
            if (fd >= 0)
                close(fd); /* all slots taken */
        }
    }
    return NULL;
}

struct er_registry_standin *er_registry_standin_start(const char *user_info)
{
    struct er_registry_standin *reg = calloc(1, sizeof(*reg));
    struct sockaddr_in sa;
    socklen_t sa_len = sizeof(sa);
    int i;

    if (reg == NULL)
        return NULL;
    pthread_mutex_init(&reg->mu, NULL);
    for (i = 0; i < CONN_MAX; i++)
        reg->conns[i].fd = -1;
    if (user_info != NULL) {
        char *b64 = er_base64_dup(user_info, strlen(user_info));

        snprintf(reg->auth, sizeof(reg->auth), "Basic %s", b64);
        er_free(b64);
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    reg->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (reg->listen_fd < 0 ||
        bind(reg->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(reg->listen_fd, 16) != 0 ||
        getsockname(reg->listen_fd, (struct sockaddr *)&sa, &sa_len) != 0 ||
        pthread_create(&reg->tid, NULL, run, reg) != 0) {
        fprintf(stderr, "registry stand-in: cannot listen: %s\n",
                strerror(errno));
        if (reg->listen_fd >= 0)
            close(reg->listen_fd);
        free(reg);
        return NULL;
    }
    reg->port = ntohs(sa.sin_port);
    return reg;
}

void er_registry_standin_stop(struct er_registry_standin *reg)
{
    int i;

    if (reg == NULL)
        return;
    atomic_store(&reg->is_stopping, true);
    pthread_join(reg->tid, NULL);
    close(reg->listen_fd);
    for (i = 0; i < CONN_MAX; i++) {
        if (reg->conns[i].fd >= 0)
            close(reg->conns[i].fd);
    }
    for (i = 0; i < reg->schema_cnt; i++)
        free(reg->schemas[i].text);
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

int er_registry_standin_port(const struct er_registry_standin *reg)
{
    return reg->port;
}

void er_registry_standin_set_down(struct er_registry_standin *reg, bool is_down)
{
    pthread_mutex_lock(&reg->mu);
    reg->is_down = is_down;
    pthread_mutex_unlock(&reg->mu);
}

void er_registry_standin_set_lost(struct er_registry_standin *reg, bool is_lost)
{
    pthread_mutex_lock(&reg->mu);
    reg->is_lost = is_lost;
    pthread_mutex_unlock(&reg->mu);
}

int er_registry_standin_add(struct er_registry_standin *reg,
                            const char *subject, const char *schema)
{
    int id;

    pthread_mutex_lock(&reg->mu);
    id = add_locked(reg, subject, schema);
    pthread_mutex_unlock(&reg->mu);
    return id;
}

int er_registry_standin_subject_id(struct er_registry_standin *reg,
                                   const char *subject)
{
    int id = -1;
    int i;

    pthread_mutex_lock(&reg->mu);
    for (i = 0; i < reg->version_cnt; i++) {
        if (strcmp(reg->versions[i].subject, subject) == 0)
            id = reg->versions[i].id;
    }
    pthread_mutex_unlock(&reg->mu);
    return id;
}

int er_registry_standin_fetches(struct er_registry_standin *reg, int id)
{
    int n = 0;
    int i;

    pthread_mutex_lock(&reg->mu);
    for (i = 0; i < reg->schema_cnt; i++) {
        if (reg->schemas[i].id == id)
            n = reg->schemas[i].fetches;
    }
    pthread_mutex_unlock(&reg->mu);
    return n;
}

#define COUNTER(fn, field)                  \
    int fn(struct er_registry_standin *reg) \
    {                                       \
        int n;                              \
                                            \
        pthread_mutex_lock(&reg->mu);       \
        n = reg->field;                     \
        pthread_mutex_unlock(&reg->mu);     \
        return n;                           \
    }

COUNTER(er_registry_standin_connections, connections)
COUNTER(er_registry_standin_unauthorized, unauthorized)
COUNTER(er_registry_standin_requests, requests)
