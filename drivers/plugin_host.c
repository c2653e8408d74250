/* plugin_host: sandbox-provider plugins run as upstream runs them
 * (upstream.md Part A): one worker process per plugin speaking JSON-RPC 2.0
 * as newline-delimited JSON over its stdin and stdout. A supervisor thread
 * per plugin owns the process and all its descriptors (spawn, initialize,
 * reading, writing, stop, restart with backoff); callers queue requests and
 * block on the plugin's condition variable. Thread-safe. Owns the plugin
 * table (er_plugin_host_setup to er_plugin_host_shutdown) and the workers.
 * This file: the host and the supervisor; the manifests are in
 * plugin_manifest.c, the messages and the callers' API in plugin_call.c. */
#define _GNU_SOURCE /* pipe2 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/plugin_host_int.h"

#define FAC "driver.plugin"

#define DRAIN_READS 16 /* chunks per pipe per turn of the loop */
/* What is read after the exit: what the worker wrote last, bounded (a
 * helper that left its process group could write forever). */
#define FINAL_READS (ER_PLUGIN_MAX_LINE_BYTES / ER_PLUGIN_READ_CHUNK + 1)

/* The stop sequence (A4; the grace after shutdown is answered:
 * ER_PLUGIN_EXIT_GRACE_MS). */
#define SHUTDOWN_DRAIN_MS 10000
#define SIGTERM_GRACE_MS  5000
#define SIGKILL_WAIT_MS   2000

/* Restarts (A7). */
#define CRASH_WINDOW_MS         600000
#define MAX_CONSECUTIVE_CRASHES 10
#define MIN_BACKOFF_MS          1000
#define MAX_BACKOFF_MS          300000

/* How often a process is checked for exit while its pipes stay open (a
 * grandchild may hold them), and right after its stdout closed. */
#define REAP_POLL_MS 100
#define EXIT_POLL_MS 5

/* What initialize says about the host (A4; the stock server's values). */
#define HOST_VERSION        "0.0.0"
#define DEFAULT_INSTANCE_ID "default"

/* The worker variables passed through when the manifest has capability
 * environment.drivers.register and they are not blank (A2). */
static const char *const api_key_vars[] = {
    "ANTHROPIC_API_KEY",       "OPENAI_API_KEY",
    "GOOGLE_API_KEY",          "GEMINI_API_KEY",
    "OPENROUTER_API_KEY",      "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT", "KUBERNETES_SERVICE_PORT_HTTPS",
};
#define API_KEY_CNT  (sizeof(api_key_vars) / sizeof(api_key_vars[0]))
#define BASE_ENV_CNT 6

/* The host: one per process, as the worker has one set of plugins. */
struct host {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* users left */
    bool is_set_up;
    bool is_closing;
    int users; /* calls inside the plugin table */
    struct er_plugin **plugins;
    size_t plugin_cnt;
    char *node; /* real path of node; NULL when no plugin needs it */
    /* The worker's environment at setup (A2), "K=v" each. */
    char *base_env[BASE_ENV_CNT];
    struct er_secret api_env[API_KEY_CNT];
    char *deployment_mode; /* "" when unset */
    char *deployment_exposure;
    struct er_plugin_host_timing timing;
};

static struct host host = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
};
static struct er_plugin_host_timing timing_override; /* under host.mu */

/* ================================================================
 * Small helpers
 * ================================================================ */

int64_t er_plugin__now_ms(void)
{
    return er_time_mono_ms();
}

static const char *status_name(enum er_plugin_status status)
{
    switch (status) {
    case ER_PLUGIN_STOPPED:
        return "stopped";
    case ER_PLUGIN_STARTING:
        return "starting";
    case ER_PLUGIN_RUNNING:
        return "running";
    case ER_PLUGIN_STOPPING:
        return "stopping";
    case ER_PLUGIN_CRASHED:
        return "crashed";
    case ER_PLUGIN_BACKOFF:
        return "backoff";
    }
    return "unknown";
}

bool er_plugin__is_blank(const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n' && *s != '\f' &&
            *s != '\v')
            return false;
    }
    return true;
}

static void kill_group(pid_t pid, int sig)
{
    if (kill(-pid, sig) != 0)
        kill(pid, sig);
}

void er_plugin__close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int set_nonblock(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0)
        return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Wait on plugin->cond (mu held) until deadline (monotonic ms). */
void er_plugin__cond_wait_until(struct er_plugin *plugin, int64_t deadline_ms)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(deadline_ms / 1000);
    ts.tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
    pthread_cond_timedwait(&plugin->cond, &plugin->mu, &ts);
}

void er_plugin__wake(struct er_plugin *plugin)
{
    ssize_t n = write(plugin->wake[1], "x", 1);

    (void)n; /* EAGAIN: a wake-up is already pending */
}

/* ================================================================
 * The worker's environment (A2)
 * ================================================================ */

static char *env_pair(const char *name, const char *value)
{
    size_t n = strlen(name);
    size_t m = strlen(value);
    char *s = er_malloc(n + m + 2);

    if (s == NULL)
        return NULL;
    memcpy(s, name, n);
    s[n] = '=';
    memcpy(s + n + 1, value, m + 1);
    return s;
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);

    return v != NULL && v[0] != '\0' ? v : fallback;
}

static void env_fini(void)
{
    size_t i;

    for (i = 0; i < BASE_ENV_CNT; i++) {
        er_free(host.base_env[i]);
        host.base_env[i] = NULL;
    }
    for (i = 0; i < API_KEY_CNT; i++)
        er_secret_fini(&host.api_env[i]);
    er_free(host.deployment_mode);
    er_free(host.deployment_exposure);
    host.deployment_mode = NULL;
    host.deployment_exposure = NULL;
}

/* Snapshot what the workers get from this process's environment, once at
 * setup (getenv is not safe once threads may setenv). The deployment mode
 * and exposure come from PAPERCLIP_DEPLOYMENT_MODE and
 * PAPERCLIP_DEPLOYMENT_EXPOSURE when the operator sets them. */
static int env_snapshot(void)
{
    size_t i;
    char *pair;

    host.deployment_mode = er_strdup(env_or("PAPERCLIP_DEPLOYMENT_MODE", ""));
    host.deployment_exposure =
        er_strdup(env_or("PAPERCLIP_DEPLOYMENT_EXPOSURE", ""));
    host.base_env[0] =
        env_pair("PAPERCLIP_DEPLOYMENT_MODE",
                 host.deployment_mode != NULL ? host.deployment_mode : "");
    host.base_env[1] = env_pair(
        "PAPERCLIP_DEPLOYMENT_EXPOSURE",
        host.deployment_exposure != NULL ? host.deployment_exposure : "");
    host.base_env[2] = env_pair("PATH", env_or("PATH", ""));
    host.base_env[3] = env_pair("NODE_PATH", env_or("NODE_PATH", ""));
    host.base_env[4] = env_pair("NODE_ENV", env_or("NODE_ENV", "production"));
    host.base_env[5] = env_pair("TZ", env_or("TZ", "UTC"));
    for (i = 0; i < BASE_ENV_CNT; i++) {
        if (host.base_env[i] == NULL)
            return ER_ENOMEM;
    }
    if (host.deployment_mode == NULL || host.deployment_exposure == NULL)
        return ER_ENOMEM;
    for (i = 0; i < API_KEY_CNT; i++) {
        const char *v = getenv(api_key_vars[i]);
        int rc;

        if (v == NULL || er_plugin__is_blank(v))
            continue;
        pair = env_pair(api_key_vars[i], v);
        if (pair == NULL)
            return ER_ENOMEM;
        rc = er_secret_set(&host.api_env[i], pair, strlen(pair));
        memset(pair, 0, strlen(pair));
        er_free(pair);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211u;
    }
    return h;
}

/* PAPERCLIP_PLUGIN_ID: upstream passes the plugin's database id; envrun has
 * no plugin table, so a name-based UUID (version 8) of the installation
 * (er_driver_installation) and the manifest id, the same on every start
 * and every worker process of the installation. */
static void plugin_uuid(const struct er_plugin *plugin, char out[37])
{
    const char *inst = er_driver_installation();
    unsigned char b[16];
    uint64_t h1 = 14695981039346656037u;
    uint64_t h2;
    int i;

    h1 = fnv1a(h1, "envrun-plugin\n");
    h1 = fnv1a(h1, inst);
    h1 = fnv1a(h1, "\n");
    h1 = fnv1a(h1, plugin->key);
    h2 = fnv1a(h1 ^ 0x9e3779b97f4a7c15u, plugin->key);
    h2 = fnv1a(h2, inst);
    for (i = 0; i < 8; i++) {
        b[i] = (unsigned char)(h1 >> (56 - 8 * i));
        b[8 + i] = (unsigned char)(h2 >> (56 - 8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x80);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

/* ================================================================
 * The worker process (supervisor thread)
 * ================================================================ */

static int proc_spawn(struct er_plugin *plugin, struct er_plugin_proc *proc,
                      struct er_err *err)
{
    const char *envp[BASE_ENV_CNT + API_KEY_CNT + 2];
    const char *argv[3];
    struct er_proc_opts opts;
    char id_var[64];
    char uuid[37];
    char ebuf[128];
    int in[2] = { -1, -1 };
    int out[2] = { -1, -1 };
    int errp[2] = { -1, -1 };
    size_t n = 0;
    size_t i;
    int rc;

    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
        pipe2(errp, O_CLOEXEC) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY, "pipe: %s",
                        er_strerror(errno, ebuf, sizeof(ebuf)));
        goto out;
    }
    for (i = 0; i < 2; i++)
        envp[n++] = host.base_env[i];
    for (i = 0; i < API_KEY_CNT && plugin->has_register_cap; i++) {
        if (er_secret_is_set(&host.api_env[i]))
            envp[n++] = host.api_env[i].value;
    }
    for (i = 2; i < BASE_ENV_CNT; i++)
        envp[n++] = host.base_env[i];
    plugin_uuid(plugin, uuid);
    snprintf(id_var, sizeof(id_var), "PAPERCLIP_PLUGIN_ID=%s", uuid);
    envp[n++] = id_var;
    envp[n] = NULL;
    /* argv[1] must be the worker file itself (A2: the SDK compares it). */
    n = 0;
    if (plugin->is_script)
        argv[n++] = host.node;
    argv[n++] = plugin->entry;
    argv[n] = NULL;
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    opts.cwd = plugin->dir;
    opts.stdin_fd = in[0];
    opts.stdout_fd = out[1];
    opts.stderr_fd = errp[1];
    rc = er_proc_spawn(&opts, &proc->pid, err);
    if (rc != 0)
        goto out;
    proc->in_fd = in[1];
    proc->out_fd = out[0];
    proc->err_fd = errp[0];
    in[1] = -1;
    out[0] = -1;
    errp[0] = -1;
    set_nonblock(proc->in_fd);
    set_nonblock(proc->out_fd);
    set_nonblock(proc->err_fd);
out:
    for (i = 0; i < 2; i++) {
        er_plugin__close_fd(&in[i]);
        er_plugin__close_fd(&out[i]);
        er_plugin__close_fd(&errp[i]);
    }
    return rc;
}

/* Queue initialize, the first and, until it is answered, only message
 * (A4). mu held. */
static int init_queue(struct er_plugin *plugin, struct er_plugin_proc *proc)
{
    const char *inst = er_driver_installation();
    struct er_plugin_outmsg *msg = NULL;
    char *info_text = NULL;
    struct er_buf buf;
    json_t *info;
    int rc = ER_ENOMEM;

    er_buf_init(&buf, ER_PLUGIN_MAX_LINE_BYTES);
    info = json_pack("{s:s, s:s}", "instanceId",
                     inst[0] != '\0' ? inst : DEFAULT_INSTANCE_ID,
                     "hostVersion", HOST_VERSION);
    if (info != NULL && host.deployment_mode[0] != '\0')
        json_object_set_new(info, "deploymentMode",
                            json_string(host.deployment_mode));
    if (info != NULL && host.deployment_exposure[0] != '\0')
        json_object_set_new(info, "deploymentExposure",
                            json_string(host.deployment_exposure));
    info_text = info != NULL ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    if (info_text == NULL)
        goto out;
    proc->init_id = plugin->next_id++;
    rc = er_buf_printf(&buf,
                       "{\"jsonrpc\":\"2.0\",\"id\":%" PRId64
                       ",\"method\":\"initialize\",\"params\":{"
                       "\"manifest\":%s,\"config\":{},\"instanceInfo\":%s,"
                       "\"apiVersion\":1,\"databaseNamespace\":null}}\n",
                       proc->init_id, plugin->manifest_text, info_text);
    if (rc == 0)
        msg = er_plugin__outmsg_new((const char *)buf.data, buf.len, "", 0);
    if (msg == NULL) {
        rc = ER_ENOMEM;
        goto out;
    }
    er_plugin__out_push(plugin, msg);
    proc->init_deadline_ms =
        er_plugin__now_ms() + host.timing.initialize_timeout_ms;
out:
    free(info_text); /* from json_dumps */
    er_buf_fini(&buf);
    return rc;
}

void er_plugin__init_fail(struct er_plugin *plugin, struct er_plugin_proc *proc,
                          const char *reason)
{
    er_log(ER_LOG_ERROR, FAC, "Worker initialize failed for \"%s\": %s",
           plugin->key, reason);
    proc->init_id = 0;
    kill_group(proc->pid, SIGKILL);
}

/* Start the stop sequence (A4). mu held. */
static void stop_begin(struct er_plugin *plugin, struct er_plugin_proc *proc)
{
    char text[128];

    if (plugin->status == ER_PLUGIN_RUNNING && !proc->is_in_broken) {
        proc->shutdown_id = plugin->next_id++;
        snprintf(text, sizeof(text),
                 "{\"jsonrpc\":\"2.0\",\"id\":%" PRId64
                 ",\"method\":\"shutdown\",\"params\":{}}",
                 proc->shutdown_id);
        er_plugin__out_push_text(plugin, text);
        proc->stop = ER_PLUGIN_STOP_DRAIN;
        proc->stop_deadline_ms = er_plugin__now_ms() + SHUTDOWN_DRAIN_MS;
    } else {
        /* Not initialized: nothing but initialize may be sent to it. */
        kill_group(proc->pid, SIGTERM);
        proc->stop = ER_PLUGIN_STOP_TERM;
        proc->stop_deadline_ms = er_plugin__now_ms() + SIGTERM_GRACE_MS;
    }
    proc->init_id = 0;
    plugin->status = ER_PLUGIN_STOPPING;
    pthread_cond_broadcast(&plugin->cond);
}

/* Deadlines of the stop sequence and of initialize. */
static void proc_deadlines(struct er_plugin *plugin,
                           struct er_plugin_proc *proc)
{
    int64_t now = er_plugin__now_ms();
    char reason[96];

    pthread_mutex_lock(&plugin->mu);
    if (proc->init_id != 0 && now >= proc->init_deadline_ms) {
        snprintf(reason, sizeof(reason),
                 "RPC call \"initialize\" timed out after %" PRId64 "ms",
                 host.timing.initialize_timeout_ms);
        er_plugin__init_fail(plugin, proc, reason);
    }
    if (proc->stop != ER_PLUGIN_STOP_NONE && now >= proc->stop_deadline_ms) {
        switch (proc->stop) {
        case ER_PLUGIN_STOP_NONE:
            break;
        case ER_PLUGIN_STOP_DRAIN:
            proc->stop = ER_PLUGIN_STOP_GRACE;
            proc->stop_deadline_ms = now + ER_PLUGIN_EXIT_GRACE_MS;
            break;
        case ER_PLUGIN_STOP_GRACE:
            kill_group(proc->pid, SIGTERM);
            proc->stop = ER_PLUGIN_STOP_TERM;
            proc->stop_deadline_ms = now + SIGTERM_GRACE_MS;
            break;
        case ER_PLUGIN_STOP_TERM:
            kill_group(proc->pid, SIGKILL);
            proc->stop = ER_PLUGIN_STOP_KILL;
            proc->stop_deadline_ms = now + SIGKILL_WAIT_MS;
            break;
        case ER_PLUGIN_STOP_KILL:
            er_log(ER_LOG_WARN, FAC,
                   "the worker of %s (pid %ld) is still there %dms after "
                   "SIGKILL",
                   plugin->key, (long)proc->pid, SIGKILL_WAIT_MS);
            proc->stop_deadline_ms = INT64_MAX;
            break;
        }
    }
    pthread_mutex_unlock(&plugin->mu);
}

/* Whether the worker has exited; if so it is reaped, what it wrote last is
 * read and its process group (helpers it left behind) is killed. */
static bool proc_exited(struct er_plugin *plugin, struct er_plugin_proc *proc)
{
    siginfo_t si;
    int status = 0;
    pid_t r;

    memset(&si, 0, sizeof(si));
    /* WNOWAIT keeps the zombie, so its pid (the group id) cannot be reused
     * before the group is killed. */
    if (waitid(P_PID, (id_t)proc->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
        if (errno == EINTR)
            return false;
        er_log(ER_LOG_ERROR, FAC,
               "cannot tell how the worker of %s (pid %ld) ended: waitid "
               "failed (is SIGCHLD ignored?)",
               plugin->key, (long)proc->pid);
        proc->exit_code = -1;
        proc->exit_sig = 0;
        return true;
    }
    if (si.si_pid != proc->pid)
        return false;
    kill(-proc->pid, SIGKILL);
    do {
        r = waitpid(proc->pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    proc->exit_code = -1;
    proc->exit_sig = 0;
    if (r == proc->pid && WIFEXITED(status))
        proc->exit_code = WEXITSTATUS(status);
    else if (r == proc->pid && WIFSIGNALED(status))
        proc->exit_sig = WTERMSIG(status);
    if (!proc->is_out_eof)
        er_plugin__drain(plugin, proc, proc->out_fd, true, FINAL_READS);
    if (!proc->is_err_eof)
        er_plugin__drain(plugin, proc, proc->err_fd, false, FINAL_READS);
    er_plugin__err_finish(plugin, proc);
    return true;
}

/* Serve the worker until it has exited and been reaped. */
static void proc_serve(struct er_plugin *plugin, struct er_plugin_proc *proc)
{
    for (;;) {
        struct pollfd pfd[4];
        int i_out = -1;
        int i_err = -1;
        int i_in = -1;
        nfds_t nfds = 0;
        int64_t now = er_plugin__now_ms();
        int64_t timeout = REAP_POLL_MS;
        bool wants_write;
        char junk[64];

        pthread_mutex_lock(&plugin->mu);
        if (plugin->is_closing && proc->stop == ER_PLUGIN_STOP_NONE)
            stop_begin(plugin, proc);
        wants_write = plugin->out_head != NULL && !proc->is_in_broken;
        pthread_mutex_unlock(&plugin->mu);

        if (proc->is_out_eof && now - proc->out_eof_ms < 1000)
            timeout = EXIT_POLL_MS;
        if (proc->init_id != 0 && proc->init_deadline_ms - now < timeout)
            timeout = proc->init_deadline_ms - now;
        if (proc->stop != ER_PLUGIN_STOP_NONE &&
            proc->stop_deadline_ms - now < timeout)
            timeout = proc->stop_deadline_ms - now;
        if (timeout < 0)
            timeout = 0;
        pfd[nfds++] =
            (struct pollfd){ .fd = plugin->wake[0], .events = POLLIN };
        if (!proc->is_out_eof) {
            i_out = (int)nfds;
            pfd[nfds++] =
                (struct pollfd){ .fd = proc->out_fd, .events = POLLIN };
        }
        if (!proc->is_err_eof) {
            i_err = (int)nfds;
            pfd[nfds++] =
                (struct pollfd){ .fd = proc->err_fd, .events = POLLIN };
        }
        if (wants_write) {
            i_in = (int)nfds;
            pfd[nfds++] =
                (struct pollfd){ .fd = proc->in_fd, .events = POLLOUT };
        }
        if (poll(pfd, nfds, (int)timeout) < 0 && errno != EINTR) {
            er_log(ER_LOG_ERROR, FAC, "poll failed for the worker of %s",
                   plugin->key);
            kill_group(proc->pid, SIGKILL);
        }
        if (pfd[0].revents != 0) {
            while (read(plugin->wake[0], junk, sizeof(junk)) > 0)
                continue;
        }
        if (i_out >= 0 && pfd[i_out].revents != 0 &&
            er_plugin__drain(plugin, proc, proc->out_fd, true, DRAIN_READS)) {
            proc->is_out_eof = true;
            proc->out_eof_ms = er_plugin__now_ms();
        }
        if (i_err >= 0 && pfd[i_err].revents != 0 &&
            er_plugin__drain(plugin, proc, proc->err_fd, false, DRAIN_READS))
            proc->is_err_eof = true;
        /* Also without POLLOUT: a caller may have queued since. */
        pthread_mutex_lock(&plugin->mu);
        if (i_in >= 0 || plugin->out_head != NULL)
            er_plugin__out_flush(plugin, proc);
        pthread_mutex_unlock(&plugin->mu);
        proc_deadlines(plugin, proc);
        if (proc_exited(plugin, proc))
            return;
    }
}

/* One run of the worker: spawn, initialize, serve until it exits. */
static void worker_run(struct er_plugin *plugin)
{
    struct er_plugin_proc *proc = er_calloc(1, sizeof(*proc));
    struct er_err err;
    char pid_text[24];
    int rc;

    if (proc == NULL) {
        er_log_kv(ER_LOG_ERROR, FAC, "cannot start plugin worker", "plugin",
                  plugin->key, "error", "out of memory", NULL);
        return;
    }
    proc->in_fd = -1;
    proc->out_fd = -1;
    proc->err_fd = -1;
    er_buf_init(&proc->line, ER_PLUGIN_MAX_LINE_BYTES);
    er_plugin__err_init(proc);
    er_err_clear(&err);
    if (proc_spawn(plugin, proc, &err) != 0) {
        er_log_kv(ER_LOG_ERROR, FAC, "cannot start plugin worker", "plugin",
                  plugin->key, "error", err.msg, NULL);
        er_free(proc);
        return;
    }
    pthread_mutex_lock(&plugin->mu);
    plugin->pid = proc->pid;
    rc = init_queue(plugin, proc);
    pthread_mutex_unlock(&plugin->mu);
    snprintf(pid_text, sizeof(pid_text), "%ld", (long)proc->pid);
    er_log_kv(ER_LOG_INFO, FAC, "plugin worker started", "plugin", plugin->key,
              "pid", pid_text, NULL);
    if (rc != 0)
        er_plugin__init_fail(plugin, proc, "out of memory");
    proc_serve(plugin, proc);
    er_plugin__proc_finish(plugin, proc);
    er_free(proc);
}

/* The delay before restart n (A7): 1000 * 2^(n-1) ms (base overridable),
 * +-25 % uniform jitter, rounded, capped at 300 s. */
static int64_t backoff_ms(int n)
{
    double delay = (double)host.timing.backoff_base_ms;
    uint32_t r = 0;
    double jittered;
    int i;

    for (i = 1; i < n && delay < MAX_BACKOFF_MS * 2.0; i++)
        delay *= 2.0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
        r = (uint32_t)er_plugin__now_ms();
    jittered = delay + delay * 0.25 * (2.0 * ((double)r / 4294967296.0) - 1.0);
    if (jittered > MAX_BACKOFF_MS)
        return MAX_BACKOFF_MS;
    return jittered < 0 ? 0 : (int64_t)(jittered + 0.5);
}

/* After a crash (mu held): count it and either wait out the backoff or
 * give up (A7). */
static void crash_handle(struct er_plugin *plugin)
{
    int64_t now = er_plugin__now_ms();
    int64_t deadline;
    int64_t delay;
    char delay_text[24];

    if (plugin->has_crashed && now - plugin->last_crash_ms > CRASH_WINDOW_MS)
        plugin->crash_cnt = 0;
    plugin->crash_cnt++;
    plugin->has_crashed = true;
    plugin->last_crash_ms = now;
    if (plugin->crash_cnt > MAX_CONSECUTIVE_CRASHES) {
        plugin->status = ER_PLUGIN_CRASHED;
        plugin->is_given_up = true;
        pthread_cond_broadcast(&plugin->cond);
        er_log_kv(ER_LOG_ERROR, FAC,
                  "plugin worker: max consecutive crashes reached, not "
                  "restarting",
                  "plugin", plugin->key, NULL);
        return;
    }
    delay = backoff_ms(plugin->crash_cnt);
    snprintf(delay_text, sizeof(delay_text), "%" PRId64, delay);
    er_log_kv(ER_LOG_WARN, FAC, "plugin worker will restart", "plugin",
              plugin->key, "delay_ms", delay_text, NULL);
    plugin->status = ER_PLUGIN_BACKOFF;
    pthread_cond_broadcast(&plugin->cond);
    deadline = now + delay;
    while (!plugin->is_closing && er_plugin__now_ms() < deadline)
        er_plugin__cond_wait_until(plugin, deadline);
}

static void *supervise(void *arg)
{
    struct er_plugin *plugin = arg;
    sigset_t set;

    /* A write to a worker that has gone gives EPIPE, not a signal. */
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_mutex_lock(&plugin->mu);
    while (!plugin->is_closing) {
        if (plugin->is_given_up) {
            pthread_cond_wait(&plugin->cond, &plugin->mu);
            continue;
        }
        plugin->status = ER_PLUGIN_STARTING;
        pthread_cond_broadcast(&plugin->cond);
        pthread_mutex_unlock(&plugin->mu);
        worker_run(plugin);
        pthread_mutex_lock(&plugin->mu);
        if (plugin->is_closing)
            break;
        crash_handle(plugin);
    }
    plugin->status = ER_PLUGIN_STOPPED;
    pthread_cond_broadcast(&plugin->cond);
    pthread_mutex_unlock(&plugin->mu);
    return NULL;
}

/* ================================================================
 * For the callers (plugin_call.c): the plugin table, starting a worker
 * ================================================================ */

bool er_plugin__host_enter(void)
{
    bool is_in;

    pthread_mutex_lock(&host.mu);
    is_in = host.is_set_up && !host.is_closing;
    if (is_in)
        host.users++;
    pthread_mutex_unlock(&host.mu);
    return is_in;
}

void er_plugin__host_leave(void)
{
    pthread_mutex_lock(&host.mu);
    host.users--;
    if (host.users == 0)
        pthread_cond_broadcast(&host.cond);
    pthread_mutex_unlock(&host.mu);
}

/* The plugin serving provider, or NULL (table read-only while users > 0). */
struct er_plugin *er_plugin__for(const char *provider)
{
    size_t i;
    size_t k;

    for (i = 0; i < host.plugin_cnt; i++) {
        for (k = 0; k < er_plugin__driver_cnt(host.plugins[i]); k++) {
            if (strcmp(er_plugin__provider_at(host.plugins[i], k), provider) ==
                0)
                return host.plugins[i];
        }
    }
    return NULL;
}

/* Start the supervisor if needed and wait up to the ready wait for the
 * worker to run (mu held). 0, or ER_EDRIVER with domain.md 4.3 step 3's
 * message. */
int er_plugin__wait_running(struct er_plugin *plugin, const char *provider,
                            struct er_err *err)
{
    int64_t deadline = er_plugin__now_ms() + host.timing.ready_wait_ms;

    if (!plugin->has_thread && !plugin->is_closing) {
        if (pthread_create(&plugin->thread, NULL, supervise, plugin) != 0)
            return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_RETRY,
                              "Sandbox provider \"%s\" is installed via "
                              "plugin \"%s\", but its worker is not "
                              "running.",
                              provider, plugin->key);
        plugin->has_thread = true;
    }
    /* Given up after too many crashes: try again once the crash window
     * has passed, else say so at once. */
    if (plugin->is_given_up &&
        er_plugin__now_ms() - plugin->last_crash_ms > CRASH_WINDOW_MS) {
        plugin->is_given_up = false;
        pthread_cond_broadcast(&plugin->cond);
    }
    while (plugin->status != ER_PLUGIN_RUNNING && !plugin->is_closing &&
           !plugin->is_given_up && er_plugin__now_ms() < deadline)
        er_plugin__cond_wait_until(plugin, deadline);
    if (plugin->status == ER_PLUGIN_RUNNING)
        return 0;
    er_log(ER_LOG_DEBUG, FAC, "the worker of %s is %s", plugin->key,
           status_name(plugin->status));
    if (plugin->is_given_up)
        return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_RETRY,
                          "Sandbox provider \"%s\" is installed via plugin "
                          "\"%s\", but that plugin is currently error.",
                          provider, plugin->key);
    return er_err_set(err, ER_EDRIVER, ER_ERRCLASS_RETRY,
                      "Sandbox provider \"%s\" is installed via plugin "
                      "\"%s\", but its worker is not running.",
                      provider, plugin->key);
}

/* ================================================================
 * Setup and shutdown
 * ================================================================ */

void er_plugin_host_set_timing(const struct er_plugin_host_timing *timing)
{
    pthread_mutex_lock(&host.mu);
    if (timing != NULL)
        timing_override = *timing;
    else
        memset(&timing_override, 0, sizeof(timing_override));
    pthread_mutex_unlock(&host.mu);
}

static int64_t pick(int64_t value, int64_t fallback)
{
    return value > 0 ? value : fallback;
}

int er_plugin_host_setup(const char *plugins_dir, struct er_err *err)
{
    struct er_plugin **plugins = NULL;
    size_t cnt = 0;
    char *node = NULL;
    size_t i;
    size_t k;
    int rc = 0;

    pthread_mutex_lock(&host.mu);
    if (host.is_set_up) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                        "the plugin host is already set up");
        goto out;
    }
    host.timing.initialize_timeout_ms = pick(
        timing_override.initialize_timeout_ms, ER_PLUGIN_INITIALIZE_TIMEOUT_MS);
    host.timing.ready_wait_ms =
        pick(timing_override.ready_wait_ms, ER_PLUGIN_READY_WAIT_MS);
    host.timing.backoff_base_ms =
        pick(timing_override.backoff_base_ms, MIN_BACKOFF_MS);
    if (plugins_dir != NULL && plugins_dir[0] != '\0') {
        rc = er_plugin__plugins_load(plugins_dir, &plugins, &cnt, err);
        if (rc != 0)
            goto out;
    }
    for (i = 0; i < cnt && node == NULL; i++) {
        if (!plugins[i]->is_script)
            continue;
        node = er_plugin__node_find();
        if (node == NULL) {
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                            "plugin directory %s: its worker needs node, "
                            "which is not found (set ENVRUN_NODE)",
                            plugins[i]->dir);
            goto out;
        }
    }
    rc = env_snapshot();
    if (rc != 0) {
        env_fini();
        er_err_set(err, rc, ER_ERRCLASS_FATAL, "out of memory");
        goto out;
    }
    for (i = 0; i < cnt; i++) {
        for (k = 0; k < er_plugin__driver_cnt(plugins[i]); k++) {
            if (er_plugin__provider_at(plugins[i], k)[0] != '\0')
                er_log_kv(ER_LOG_INFO, FAC, "sandbox provider plugin found",
                          "plugin", plugins[i]->key, "provider",
                          er_plugin__provider_at(plugins[i], k), "dir",
                          plugins[i]->dir, NULL);
        }
    }
    host.plugins = plugins;
    host.plugin_cnt = cnt;
    host.node = node;
    host.is_set_up = true;
    plugins = NULL;
    node = NULL;
out:
    pthread_mutex_unlock(&host.mu);
    er_plugin__plugins_free(plugins, cnt);
    er_free(node);
    return rc;
}

void er_plugin_host_shutdown(void)
{
    size_t i;
    bool has_thread;

    pthread_mutex_lock(&host.mu);
    if (!host.is_set_up || host.is_closing) {
        pthread_mutex_unlock(&host.mu);
        return;
    }
    host.is_closing = true;
    pthread_mutex_unlock(&host.mu);

    /* Every worker's stop sequence runs at once; then wait for them. */
    for (i = 0; i < host.plugin_cnt; i++) {
        struct er_plugin *plugin = host.plugins[i];

        pthread_mutex_lock(&plugin->mu);
        plugin->is_closing = true;
        pthread_cond_broadcast(&plugin->cond);
        pthread_mutex_unlock(&plugin->mu);
        er_plugin__wake(plugin);
    }
    for (i = 0; i < host.plugin_cnt; i++) {
        struct er_plugin *plugin = host.plugins[i];

        pthread_mutex_lock(&plugin->mu);
        has_thread = plugin->has_thread;
        pthread_mutex_unlock(&plugin->mu);
        if (has_thread)
            pthread_join(plugin->thread, NULL);
    }

    pthread_mutex_lock(&host.mu);
    while (host.users > 0)
        pthread_cond_wait(&host.cond, &host.mu);
    er_plugin__plugins_free(host.plugins, host.plugin_cnt);
    host.plugins = NULL;
    host.plugin_cnt = 0;
    er_free(host.node);
    host.node = NULL;
    env_fini();
    host.is_set_up = false;
    host.is_closing = false;
    pthread_mutex_unlock(&host.mu);
}
