/* gwrunner: `envrun-gateway --serve-commands`, the queue_v1 host's held
 * command runner (see gateway.h). The host starts it once through a held
 * exec and sends it the scripts it would otherwise start one exec each
 * for; each runs as `/bin/sh -c` in a process group of its own, its
 * output streamed back in frames. Memory stays fixed whatever the sizes:
 * input and output pass through one 64 KiB buffer each. The host is the
 * worker, so its frames are trusted to be well formed; anything else ends
 * the runner (the host then runs its scripts one exec each). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bridge/gateway/gateway_int.h"

#define RD_MAX       65536
#define SCRIPT_MAX   65536
#define LINE_MAX_LEN 64

/* Buffered stdin: a frame's header, script and input arrive together. */
static struct {
    char buf[RD_MAX];
    size_t off, len;
    bool is_eof;
} rd;

static char script[SCRIPT_MAX + 1];

/* SIGCHLD wakes the loop through this pipe: a child that exits while a
 * background process of its own keeps its output open is seen at once. */
static int chld[2] = { -1, -1 };
/* The command running (its process group), for a stop signal. */
static volatile sig_atomic_t running_pid;

static void on_chld(int sig)
{
    int saved = errno;

    (void)sig;
    if (write(chld[1], "c", 1) < 0) {
        /* full: a wake-up is already pending */
    }
    errno = saved;
}

static void rd_compact(void)
{
    if (rd.off > 0) {
        memmove(rd.buf, rd.buf + rd.off, rd.len - rd.off);
        rd.len -= rd.off;
        rd.off = 0;
    }
}

/* Read what stdin has (blocking). false at end of file or error. */
static bool rd_fill(void)
{
    ssize_t n;

    rd_compact();
    if (rd.len == sizeof(rd.buf))
        return true;
    do
        n = read(STDIN_FILENO, rd.buf + rd.len, sizeof(rd.buf) - rd.len);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        rd.is_eof = true;
        return false;
    }
    rd.len += (size_t)n;
    return true;
}

/* The next line (without '\n') into line, waiting for it. false at end
 * of input or on a line over the limit. */
static bool rd_line(char line[LINE_MAX_LEN])
{
    for (;;) {
        char *nl = memchr(rd.buf + rd.off, '\n', rd.len - rd.off);

        if (nl != NULL) {
            size_t n = (size_t)(nl - (rd.buf + rd.off));

            if (n >= LINE_MAX_LEN)
                return false;
            memcpy(line, rd.buf + rd.off, n);
            line[n] = '\0';
            rd.off += n + 1;
            return true;
        }
        if (rd.len - rd.off >= LINE_MAX_LEN || !rd_fill())
            return false;
    }
}

/* One output frame: "<kind> <n>\n" and n bytes. */
static bool send_chunk(char kind, const char *data, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof(head), "%c %zu\n", kind, len);

    return er_gateway_write_all(STDOUT_FILENO, head, (size_t)n) == 0 &&
           er_gateway_write_all(STDOUT_FILENO, data, len) == 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Move what the child wrote on fd into a frame; closes fd at its end. */
static bool pass_output(int *fd, char kind)
{
    static char buf[RD_MAX];
    ssize_t n;

    do
        n = read(*fd, buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return true;
    if (n <= 0) {
        close_fd(fd);
        return true;
    }
    return send_chunk(kind, buf, (size_t)n);
}

static bool parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;

    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *s = p;
    *out = v;
    return true;
}

/* "X <timeout ms> <script bytes> <input bytes>" */
static bool parse_command(const char *line, uint64_t *timeout_ms,
                          uint64_t *script_len, uint64_t *in_len)
{
    const char *p = line;

    if (p[0] != 'X' || p[1] != ' ')
        return false;
    p += 2;
    if (!parse_u64(&p, timeout_ms) || *p++ != ' ' ||
        !parse_u64(&p, script_len) || *p++ != ' ' || !parse_u64(&p, in_len) ||
        *p != '\0')
        return false;
    return *timeout_ms > 0 && *script_len > 0 && *script_len <= SCRIPT_MAX;
}

static bool make_pipe(int fds[2])
{
    if (pipe(fds) != 0)
        return false;
    (void)fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return true;
}

static pid_t spawn(int in[2], int out[2], int err[2])
{
    pid_t pid = fork();

    if (pid != 0)
        return pid;
    (void)setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0 ||
        dup2(err[1], STDERR_FILENO) < 0)
        _exit(127);
    execl("/bin/sh", "sh", "-c", script, (char *)NULL);
    _exit(127);
}

/* SIGTERM, SIGHUP, SIGINT: the command's process group goes with us. */
static void on_stop(int sig)
{
    pid_t pid = (pid_t)running_pid;

    if (pid > 0)
        kill(-pid, SIGKILL);
    _exit(128 + sig);
}

/* Take a "K" line if the buffer starts with one: the host's cancel. */
static bool take_cancel(void)
{
    if (rd.len - rd.off >= 2 && rd.buf[rd.off] == 'K' &&
        rd.buf[rd.off + 1] == '\n') {
        rd.off += 2;
        return true;
    }
    return false;
}

/* Run the script read into `script`, feeding it in_len bytes of stdin.
 * false when the runner must end (its host is gone or broke the
 * protocol); the command's own end frame is sent first when it can be. */
static bool run_one(uint64_t timeout_ms, uint64_t in_len)
{
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
    int64_t deadline = er_gateway_mono_ms() + (int64_t)timeout_ms;
    bool is_killed = false;
    bool is_reaped = false;
    bool is_ok = true;
    char line[LINE_MAX_LEN];
    int status = 0;
    pid_t pid;
    int n;

    if (!make_pipe(in) || !make_pipe(out) || !make_pipe(err)) {
        close_fd(&in[0]);
        close_fd(&in[1]);
        close_fd(&out[0]);
        close_fd(&out[1]);
        return send_chunk('E', "runner: cannot make pipes\n", 26) &&
               er_gateway_write_all(STDOUT_FILENO, "R 127\n", 6) == 0;
    }
    pid = spawn(in, out, err);
    if (pid > 0) {
        (void)setpgid(pid, pid);
        running_pid = pid;
    }
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    (void)fcntl(in[1], F_SETFL, O_NONBLOCK);
    (void)fcntl(out[0], F_SETFL, O_NONBLOCK);
    (void)fcntl(err[0], F_SETFL, O_NONBLOCK);
    if (pid < 0)
        is_reaped = true;
    if (in_len == 0)
        close_fd(&in[1]);
    while (!is_reaped || out[0] >= 0 || err[0] >= 0) {
        struct pollfd fds[5];
        size_t buffered = rd.len - rd.off;
        int64_t left = deadline - er_gateway_mono_ms();
        int wait_ms;
        nfds_t cnt = 0;
        int i_stdin = -1, i_in = -1, i_out = -1, i_err = -1, i_chld;

        if (is_reaped) { /* what a background process left open */
            (void)pass_output(&out[0], 'O');
            (void)pass_output(&err[0], 'E');
            close_fd(&out[0]);
            close_fd(&err[0]);
            break;
        }
        if (!is_killed && left <= 0) {
            kill(-pid, SIGKILL);
            is_killed = true;
        }
        /* Input first from the buffer, then from stdin; after it, stdin
         * brings only the host's cancel. */
        if (in_len > 0 && buffered > 0 && in[1] >= 0) {
            fds[cnt] = (struct pollfd){ in[1], POLLOUT, 0 };
            i_in = (int)cnt++;
        } else if (!rd.is_eof && (in_len > 0 || buffered < 2)) {
            fds[cnt] = (struct pollfd){ STDIN_FILENO, POLLIN, 0 };
            i_stdin = (int)cnt++;
        }
        if (out[0] >= 0) {
            fds[cnt] = (struct pollfd){ out[0], POLLIN, 0 };
            i_out = (int)cnt++;
        }
        if (err[0] >= 0) {
            fds[cnt] = (struct pollfd){ err[0], POLLIN, 0 };
            i_err = (int)cnt++;
        }
        fds[cnt] = (struct pollfd){ chld[0], POLLIN, 0 };
        i_chld = (int)cnt++;
        wait_ms = -1;
        if (!is_killed)
            wait_ms = left > 0 ? (int)(left < INT32_MAX ? left : INT32_MAX) : 0;
        n = poll(fds, cnt, wait_ms);
        if (n < 0 && errno != EINTR)
            break;
        if (i_in >= 0 && fds[i_in].revents != 0) {
            size_t want = buffered < in_len ? buffered : (size_t)in_len;
            ssize_t w = write(in[1], rd.buf + rd.off, want);

            if (w > 0) {
                rd.off += (size_t)w;
                in_len -= (uint64_t)w;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                /* The child does not read: the rest is dropped. */
                rd.off += want;
                in_len -= want;
            }
            if (in_len == 0)
                close_fd(&in[1]);
        }
        if (i_stdin >= 0 && fds[i_stdin].revents != 0 && !rd_fill() &&
            !is_killed) {
            kill(-pid, SIGKILL); /* the host is gone */
            is_killed = true;
        }
        if (in_len == 0 && take_cancel() && !is_killed) {
            kill(-pid, SIGKILL);
            is_killed = true;
        }
        if (i_out >= 0 && fds[i_out].revents != 0)
            is_ok = pass_output(&out[0], 'O') && is_ok;
        if (i_err >= 0 && fds[i_err].revents != 0)
            is_ok = pass_output(&err[0], 'E') && is_ok;
        if (fds[i_chld].revents != 0) {
            char drain[64];

            while (read(chld[0], drain, sizeof(drain)) > 0)
                ;
        }
        if (!is_reaped && waitpid(pid, &status, WNOHANG) == pid)
            is_reaped = true;
        if (!is_ok && !is_killed) {
            kill(-pid, SIGKILL); /* nobody reads the output */
            is_killed = true;
        }
    }
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&err[0]);
    if (pid > 0 && !is_reaped) {
        kill(-pid, SIGKILL);
        is_killed = true;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    running_pid = 0;
    /* Input the child left unread is skipped, so the next frame lines up. */
    while (in_len > 0 && (rd.len > rd.off || rd_fill())) {
        size_t take =
            rd.len - rd.off < in_len ? rd.len - rd.off : (size_t)in_len;

        rd.off += take;
        in_len -= take;
    }
    n = snprintf(line, sizeof(line), "R %d\n",
                 pid < 0                           ? 127
                 : is_killed || !WIFEXITED(status) ? -1
                                                   : WEXITSTATUS(status));
    return er_gateway_write_all(STDOUT_FILENO, line, (size_t)n) == 0 && is_ok &&
           !rd.is_eof;
}

int er_gateway_serve_commands(void)
{
    static const char hello[] = "envrun-runner 1\n";
    char line[LINE_MAX_LEN];
    struct sigaction sa;

    signal(SIGPIPE, SIG_IGN);
    if (!make_pipe(chld))
        return 1;
    (void)fcntl(chld[0], F_SETFL, O_NONBLOCK);
    (void)fcntl(chld[1], F_SETFL, O_NONBLOCK);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) != 0)
        return 1;
    sa.sa_handler = on_stop;
    sa.sa_flags = 0;
    if (sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGHUP, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return 1;
    if (er_gateway_write_all(STDOUT_FILENO, hello, sizeof(hello) - 1) != 0)
        return 1;
    for (;;) {
        uint64_t timeout_ms, script_len, in_len;

        if (!rd_line(line))
            return rd.is_eof ? 0 : 2;
        if (strcmp(line, "K") == 0)
            continue; /* a cancel that came after its command ended */
        if (!parse_command(line, &timeout_ms, &script_len, &in_len)) {
            fprintf(stderr, "[paperclip-bridge] --serve-commands: bad frame\n");
            return 2;
        }
        while (rd.len - rd.off < script_len) {
            if (!rd_fill())
                return 0;
        }
        memcpy(script, rd.buf + rd.off, (size_t)script_len);
        script[script_len] = '\0';
        rd.off += (size_t)script_len;
        if (strlen(script) != script_len) {
            fprintf(stderr, "[paperclip-bridge] --serve-commands: bad frame\n");
            return 2;
        }
        if (!run_one(timeout_ms, in_len))
            return rd.is_eof ? 0 : 1;
    }
}
