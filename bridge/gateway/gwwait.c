/* gwwait: the host's queue_v1 operations done by the gateway binary where
 * it runs (see gateway.h): `--wait-requests DIR MS`, so that waiting for
 * a request costs no process per step and ends the moment one is
 * published (the gateway renames requests/<id>.json.tmp into place), and
 * `--write-response QUEUE NAME REQUIRE`, B7's guarded write in one
 * process instead of a shell starting six. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define FALLBACK_STEP_MS 10
#define WAIT_MAX_MS      60000

/* Print the request files in dir; how many (-1: dir cannot be read).
 * first gets the least name (by strcmp: the one the host takes first). */
static int list_once(const char *dir, char first[NAME_MAX + 1])
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int cnt = 0;

    first[0] = '\0';
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        struct stat st;

        if (len <= 5 || e->d_name[0] == '.' ||
            strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        printf("%s\n", e->d_name);
        if (first[0] == '\0' || strcmp(e->d_name, first) < 0)
            snprintf(first, NAME_MAX + 1, "%s", e->d_name);
        cnt++;
    }
    closedir(d);
    return cnt;
}

/* After the names: an empty line, the first name, a line with a length
 * and that many bytes of the file (at most max), so that the host needs
 * no exec to read it. Nothing when it is gone or not a regular file (the
 * host reads it itself); a length the bytes do not match (the file
 * shrank, the output was cut) tells the host the same. */
static void print_first(const char *dir, const char *first, size_t max)
{
    char buf[65536];
    struct stat st;
    size_t left;
    int dfd;
    int fd;

    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    fd = openat(dfd, first, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    close(dfd);
    if (fd < 0)
        return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) {
        close(fd);
        return;
    }
    left = (uint64_t)st.st_size < max ? (size_t)st.st_size : max;
    printf("\n%s\n%zu\n", first, left);
    while (left > 0) {
        ssize_t n = read(fd, buf, left < sizeof(buf) ? left : sizeof(buf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        fwrite(buf, 1, (size_t)n, stdout);
        left -= (size_t)n;
    }
    close(fd);
}

int er_gateway_wait_requests(const char *dir, const char *ms_text,
                             const char *max_text)
{
    char first[NAME_MAX + 1];
    char *end = NULL;
    long ms = strtol(ms_text, &end, 10);
    unsigned long long max = 0;
    int64_t deadline;
    int cnt;
    int fd;

    if (end == ms_text || *end != '\0' || ms < 0 || ms > WAIT_MAX_MS) {
        fprintf(stderr, "[paperclip-bridge] --wait-requests: bad wait\n");
        return 2;
    }
    if (max_text != NULL) {
        end = NULL;
        errno = 0;
        max = strtoull(max_text, &end, 10);
        if (end == max_text || *end != '\0' || errno != 0 ||
            max_text[0] == '-' || max > SIZE_MAX / 2) {
            fprintf(stderr, "[paperclip-bridge] --wait-requests: bad size\n");
            return 2;
        }
    }
    deadline = er_gateway_mono_ms() + ms;
    /* A request already there is printed at once, with no inotify
     * instance: tearing one down waits for an RCU grace period (about
     * 20 ms here), which only a wait that really waits should pay. */
    cnt = list_once(dir, first);
    if (cnt != 0 || ms == 0)
        goto out;
    /* Watch, then look again: nothing published in between is missed. */
    fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd >= 0 && inotify_add_watch(
                       fd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) < 0) {
        close(fd);
        fd = -1;
    }
    for (;;) {
        int64_t left;

        cnt = list_once(dir, first);
        if (cnt != 0) /* some, or no directory (nothing to wait for) */
            break;
        left = deadline - er_gateway_mono_ms();
        if (left <= 0)
            break;
        if (fd >= 0) {
            struct pollfd p = { fd, POLLIN, 0 };
            char buf[4096];

            if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
                break;
            while (read(fd, buf, sizeof(buf)) > 0)
                ;
        } else {
            struct timespec ts = { 0, FALLBACK_STEP_MS * 1000000L };

            nanosleep(&ts, NULL);
        }
    }
    if (fd >= 0)
        close(fd);
out:
    if (cnt > 0 && max > 0)
        print_first(dir, first, (size_t)max);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- --write-response ---- */

#define LOCK_TRIES   600 /* x 50 ms, as upstream's writers */
#define WPATH_MAX    (ER_GATEWAY_PATH_MAX + 400)
#define LOCK_STEP_MS 50

static bool name_is_plain(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return i > 5 && s[0] != '.' && strcmp(s + i - 5, ".json") == 0;
}

/* Take <resp>.paperclip-write.lock (a directory holding its owner's pid;
 * a dead owner's lock is taken over). 0, or -1 after the time is up. */
static int lock_take(const char *lock)
{
    char pidfile[WPATH_MAX + 64];
    int tries;

    snprintf(pidfile, sizeof(pidfile), "%s/pid", lock);
    for (tries = 0; tries < LOCK_TRIES; tries++) {
        char buf[32];
        ssize_t n;
        int fd;

        if (mkdir(lock, 0700) == 0) {
            fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd >= 0) {
                n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
                if (write(fd, buf, (size_t)n) != n) {
                    /* the pid is advisory */
                }
                close(fd);
            }
            return 0;
        }
        fd = open(pidfile, O_RDONLY | O_CLOEXEC);
        n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (n > 0) {
            long holder;

            buf[n] = '\0';
            holder = strtol(buf, NULL, 10);
            if (holder > 0 && kill((pid_t)holder, 0) != 0 && errno == ESRCH) {
                unlink(pidfile);
                rmdir(lock);
                continue;
            }
        }
        nanosleep(&(struct timespec){ 0, LOCK_STEP_MS * 1000000L }, NULL);
    }
    return -1;
}

static void lock_drop(const char *lock)
{
    char pidfile[WPATH_MAX + 64];

    snprintf(pidfile, sizeof(pidfile), "%s/pid", lock);
    unlink(pidfile);
    rmdir(lock);
}

/* Copy stdin into fd; -1 on a failure. */
static int copy_stdin(int fd)
{
    char buf[65536];

    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
        ssize_t off = 0;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));

            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
            off += w;
        }
    }
}

static void drain_stdin(void)
{
    char buf[65536];

    while (read(STDIN_FILENO, buf, sizeof(buf)) > 0)
        ;
}

int er_gateway_write_response(const char *queue, const char *name,
                              const char *require)
{
    char req[WPATH_MAX];
    char resp[WPATH_MAX];
    char tmp[WPATH_MAX + 8];
    char lock[WPATH_MAX + 32];
    struct stat st;
    bool is_required = strcmp(require, "1") == 0;
    bool wrote = false;
    int fd;

    if (!name_is_plain(name) || strlen(queue) >= ER_GATEWAY_PATH_MAX ||
        strlen(name) > 200) {
        fprintf(stderr, "[paperclip-bridge] --write-response: bad name\n");
        return 2;
    }
    snprintf(req, sizeof(req), "%s/requests/%s", queue, name);
    snprintf(resp, sizeof(resp), "%s/responses/%s", queue, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", resp);
    snprintf(lock, sizeof(lock), "%s.paperclip-write.lock", resp);
    {
        char dir[ER_GATEWAY_PATH_MAX + 32];

        snprintf(dir, sizeof(dir), "%s/responses", queue);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "[paperclip-bridge] cannot create %s\n", dir);
            return 1;
        }
    }
    if (lock_take(lock) != 0) {
        fprintf(stderr, "Timed out acquiring sandbox callback bridge response "
                        "lock.\n");
        return 1;
    }
    /* Only while its gateway waits (the request file is there), never
     * over an answer already written. */
    if ((is_required && (lstat(req, &st) != 0 || !S_ISREG(st.st_mode))) ||
        lstat(resp, &st) == 0) {
        drain_stdin();
    } else {
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                  0644);
        if (fd < 0 || copy_stdin(fd) != 0 || close(fd) != 0 ||
            rename(tmp, resp) != 0) {
            if (fd >= 0)
                unlink(tmp);
            lock_drop(lock);
            fprintf(stderr, "[paperclip-bridge] cannot write %s: %s\n", resp,
                    strerror(errno));
            return 1;
        }
        wrote = true;
    }
    unlink(req);
    lock_drop(lock);
    printf("{\"wrote\":%s}\n", wrote ? "true" : "false");
    return fflush(stdout) == 0 ? 0 : 1;
}
