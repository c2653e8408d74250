/* gwqueue: the queue_v1 transport (upstream.md B2, B3, B5 steps 2, 6, 7):
 * request files published by rename, the depth check with its stale
 * sweep, the response file looked for on a timer and read in budgeted
 * slices so one large envelope never stalls the loop. Loop thread only;
 * owns the requests/ and responses/ directory descriptors. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define NAME_MAX_LEN 64

static int mkdir_p(char *path)
{
    char *p;

    for (p = path + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            *p = '/';
            return -1;
        }
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void log_path_errno(const char *what, const char *path, int err)
{
    char buf[128];

    if (strerror_r(err, buf, sizeof(buf)) != 0)
        snprintf(buf, sizeof(buf), "errno %d", err);
    er_gateway_log("%s %.300s: %s", what, path, buf);
}

/* B4 rule 2: mkdir -p requests, responses and logs. */
int er_gwqueue_open(struct er_gateway *gw)
{
    static const char *const subdirs[] = { "requests", "responses", "logs" };
    char path[ER_GATEWAY_PATH_MAX + 16];
    size_t i;

    for (i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", gw->cfg->queue_dir, subdirs[i]);
        if (mkdir_p(path) != 0) {
            log_path_errno("could not create", path, errno);
            return -1;
        }
    }
    snprintf(path, sizeof(path), "%s/requests", gw->cfg->queue_dir);
    gw->requests_dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (gw->requests_dir < 0) {
        log_path_errno("could not open", path, errno);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/responses", gw->cfg->queue_dir);
    gw->responses_dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (gw->responses_dir < 0) {
        log_path_errno("could not open", path, errno);
        return -1;
    }
    /* A response landing (renamed into place, or written) wakes the
     * requests waiting at once; without inotify they poll as upstream's. */
    gw->notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (gw->notify_fd >= 0 &&
        inotify_add_watch(gw->notify_fd, path, IN_MOVED_TO | IN_CLOSE_WRITE) <
            0) {
        close(gw->notify_fd);
        gw->notify_fd = -1;
    }
    return 0;
}

void er_gwqueue_on_notify(struct er_gateway *gw)
{
    char buf[4096];
    int64_t now = er_gateway_mono_ms();
    size_t i;

    while (read(gw->notify_fd, buf, sizeof(buf)) > 0)
        ;
    for (i = 0; i < ER_GW_CONN_MAX; i++) {
        if (gw->conns[i].state == ER_GWCONN_WAIT)
            gw->conns[i].poll_at_ms = now;
    }
}

/* ready.json via ready.json.tmp and rename (B3). */
int er_gwqueue_write_ready(struct er_gateway *gw, const char *json, size_t len)
{
    char tmp[ER_GATEWAY_PATH_MAX + 32];
    char dst[ER_GATEWAY_PATH_MAX + 32];
    int fd, rc;

    snprintf(tmp, sizeof(tmp), "%s/ready.json.tmp", gw->cfg->queue_dir);
    snprintf(dst, sizeof(dst), "%s/ready.json", gw->cfg->queue_dir);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_path_errno("could not create", tmp, errno);
        return -1;
    }
    rc = er_gateway_write_all(fd, json, len);
    if (close(fd) != 0)
        rc = -1;
    if (rc != 0 || rename(tmp, dst) != 0) {
        log_path_errno("could not write", dst, errno);
        unlink(tmp);
        return -1;
    }
    return 0;
}

static bool is_entry_name(const char *name)
{
    size_t n = strlen(name);

    return n > 5 && strcmp(name + n - 5, ".json") == 0;
}

/* Count regular *.json files in requests/; with stale_before_ms > 0 first
 * delete those last modified before it (wall clock, ms). */
static int64_t count_entries(struct er_gateway *gw, int64_t stale_before_ms)
{
    int fd = dup(gw->requests_dir);
    DIR *dir;
    struct dirent *de;
    int64_t cnt = 0;

    if (fd < 0)
        return -1;
    dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return -1;
    }
    rewinddir(dir);
    while ((de = readdir(dir)) != NULL) {
        struct stat st;
        int64_t mtime_ms;

        if (!is_entry_name(de->d_name) ||
            fstatat(gw->requests_dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) !=
                0 ||
            !S_ISREG(st.st_mode))
            continue;
        mtime_ms =
            (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
        if (stale_before_ms > 0 && mtime_ms < stale_before_ms &&
            unlinkat(gw->requests_dir, de->d_name, 0) == 0) {
            er_gateway_log("removed stale request file %.80s", de->d_name);
            continue;
        }
        cnt++;
    }
    closedir(dir);
    return cnt;
}

int er_gwqueue_depth_check(struct er_gateway *gw)
{
    int64_t max = gw->cfg->max_queue_depth;
    struct timespec ts;
    int64_t now_ms;

    if (count_entries(gw, 0) < max)
        return 0;
    /* Orphans of killed callers or of an earlier gateway (#9535). */
    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (count_entries(gw, now_ms - gw->cfg->response_timeout_ms -
                              ER_GW_STALE_GRACE_MS) < max)
        return 0;
    return -1;
}

static void entry_name(char out[NAME_MAX_LEN], const char *id,
                       const char *suffix)
{
    snprintf(out, NAME_MAX_LEN, "%s.json%s", id, suffix);
}

int er_gwqueue_create(struct er_gateway *gw, struct er_gwconn *conn)
{
    char name[NAME_MAX_LEN];

    entry_name(name, conn->id, ".tmp");
    conn->file_fd = openat(gw->requests_dir, name,
                           O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    return conn->file_fd < 0 ? -errno : 0;
}

int er_gwqueue_dispatch(struct er_gateway *gw, struct er_gwconn *conn)
{
    char tmp[NAME_MAX_LEN];
    char name[NAME_MAX_LEN];
    int rc = 0;

    entry_name(tmp, conn->id, ".tmp");
    entry_name(name, conn->id, "");
    if (close(conn->file_fd) != 0)
        rc = -errno;
    conn->file_fd = -1;
    if (rc == 0 && renameat(gw->requests_dir, tmp, gw->requests_dir, name) != 0)
        rc = -errno;
    if (rc != 0)
        unlinkat(gw->requests_dir, tmp, 0);
    return rc;
}

void er_gwqueue_discard(struct er_gateway *gw, struct er_gwconn *conn)
{
    char tmp[NAME_MAX_LEN];

    entry_name(tmp, conn->id, ".tmp");
    close(conn->file_fd);
    conn->file_fd = -1;
    unlinkat(gw->requests_dir, tmp, 0);
}

/* B5 step 7 on timeout: removing the request file tells the host nobody
 * waits (its writes are guarded on it). A response that raced in is
 * removed too, so it cannot linger in the queue. */
void er_gwqueue_abandon(struct er_gateway *gw, struct er_gwconn *conn)
{
    char name[NAME_MAX_LEN];

    entry_name(name, conn->id, "");
    unlinkat(gw->requests_dir, name, 0);
    unlinkat(gw->responses_dir, name, 0);
}

static void remove_response(struct er_gateway *gw, struct er_gwconn *conn)
{
    char name[NAME_MAX_LEN];

    entry_name(name, conn->id, "");
    unlinkat(gw->responses_dir, name, 0);
}

/* Pass one is over (json_err: the syntax error, or NULL). */
static void parse_done(struct er_gateway *gw, struct er_gwconn *conn,
                       const char *json_err)
{
    int fd = conn->file_fd;

    remove_response(gw, conn);
    conn->file_fd = -1;
    er_gwconn_respond(gw, conn, &conn->resp, fd, conn->file_size, json_err);
}

void er_gwqueue_poll(struct er_gateway *gw, struct er_gwconn *conn)
{
    char name[NAME_MAX_LEN];
    char msg[160];
    struct stat st;
    int fd;

    entry_name(name, conn->id, "");
    fd = openat(gw->responses_dir, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno != ENOENT) {
            snprintf(msg, sizeof(msg), "Could not open the bridge response");
            er_gwconn_fail(gw, conn, false, msg);
        }
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        remove_response(gw, conn);
        er_gwconn_fail(gw, conn, false, "Bridge response is not a file.");
        return;
    }
    if ((uint64_t)st.st_size > gw->envelope_max) {
        close(fd);
        remove_response(gw, conn);
        er_gwconn_fail(gw, conn, false, ER_GW_MSG_ENV_LIMIT);
        return;
    }
    conn->file_fd = fd;
    conn->file_size = (uint64_t)st.st_size;
    conn->file_off = 0;
    conn->state = ER_GWCONN_PARSE;
    er_gwenvelope_resp_init(&conn->resp, conn->scratch + ER_GW_STATUS_ROOM,
                            sizeof(conn->scratch) - ER_GW_STATUS_ROOM - 96);
    er_gwjson_init(&conn->js, 0);
    er_gwqueue_parse_step(gw, conn);
}

/* Pass one over the response file, at most ER_GW_PASS1_BUDGET bytes per
 * call; the loop calls again while the connection is in PARSE. */
void er_gwqueue_parse_step(struct er_gateway *gw, struct er_gwconn *conn)
{
    size_t budget = ER_GW_PASS1_BUDGET;
    struct stat st;

    while (budget > 0) {
        ssize_t n = pread(conn->file_fd, gw->rbuf, sizeof(gw->rbuf),
                          (off_t)conn->file_off);
        int rc;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            parse_done(gw, conn, "Could not read the bridge response.");
            return;
        }
        if (n == 0)
            break;
        conn->file_off += (uint64_t)n;
        rc = er_gwjson_feed(&conn->js, gw->rbuf, (size_t)n,
                            er_gwenvelope_resp_event, &conn->resp, NULL);
        if (rc < 0) {
            parse_done(gw, conn, conn->js.err);
            return;
        }
        if (conn->file_off > conn->file_size)
            break;
        budget -= (size_t)n < budget ? (size_t)n : budget;
    }
    if (budget == 0)
        return; /* more next turn */
    if (fstat(conn->file_fd, &st) != 0 ||
        (uint64_t)st.st_size != conn->file_size ||
        conn->file_off != conn->file_size) {
        parse_done(gw, conn, ER_GW_MSG_ENV_CHANGED);
        return;
    }
    if (er_gwjson_finish(&conn->js, er_gwenvelope_resp_event, &conn->resp) !=
        0) {
        parse_done(gw, conn, conn->js.err);
        return;
    }
    parse_done(gw, conn, NULL);
}
