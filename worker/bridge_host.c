/* bridge_host: the registry of this worker's callback bridges and their
 * exec channel over the lease's driver (see bridge_host_int.h). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "bridge/bridge.h"
#include "schemas/schemas.h"
#include "worker/bridge_host_int.h"

/* B6: the drain a release gives requests in flight. */
#define STOP_DRAIN_MS ER_BRIDGE_STOP_DRAIN_MS

/* The driver's view of the lease, copied so that it outlives the step
 * that started the bridge (the poller's thread uses it). */
struct chan {
    const struct er_driver_ops *ops;
    char *env_id, *company_id, *env_name, *driver, *env_status;
    json_t *config;
    char *lease_id, *lease_status, *policy, *provider, *provider_lease_id,
        *run_id;
    json_t *meta;
    char *cwd;
};

struct entry {
    struct entry *next;
    char lease_id[64];
    int32_t partition;
    struct chan *chan;
    struct er_bridge_run *run;
};

/* Partitions whose runs' bridges wait (revoked, maybe coming back). */
#define PAUSE_MAX 1024
static atomic_bool paused[PAUSE_MAX];

/* A start in progress, on its caller's stack: a second start or a drop
 * of the same lease waits for it, so that a realize and a re-attach (the
 * reaper's follow pass) never run two bridges for one lease. */
struct starting {
    struct starting *next;
    const char *lease_id;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t started; /* a start ended */
    struct er_bridge_allow *allow;
    char origin[512];
    bool is_queue_only;
    struct entry *head;
    size_t cnt;
    struct starting *starting;
    /* The consumer's assignment, once known: a start that ends after its
     * partition was handed over does not keep its bridge. */
    bool is_assign_known;
    bool owned[PAUSE_MAX];
} host = { .mu = PTHREAD_MUTEX_INITIALIZER,
           .started = PTHREAD_COND_INITIALIZER };

int er_bridge_host_setup(const char *api_url, const char *allowlist_path,
                         bool is_queue_only, struct er_err *err)
{
    struct er_bridge_allow *allow = NULL;
    int rc;

    if (api_url != NULL && api_url[0] != '\0') {
        rc = er_bridge_origin_check(api_url, err);
        if (rc != 0)
            return rc;
        if (strlen(api_url) >= sizeof(host.origin))
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                              "ENVRUN_PAPERCLIP_API_URL is too long");
    }
    rc = er_bridge_allow_load(allowlist_path, &allow, err);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&host.mu);
    er_bridge_allow_free(host.allow);
    host.allow = allow;
    snprintf(host.origin, sizeof(host.origin), "%s",
             api_url != NULL ? api_url : "");
    host.is_queue_only = is_queue_only;
    pthread_mutex_unlock(&host.mu);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? er_strdup(s) : NULL;
}

static void chan_free(struct chan *c)
{
    if (c == NULL)
        return;
    er_free(c->env_id);
    er_free(c->company_id);
    er_free(c->env_name);
    er_free(c->driver);
    er_free(c->env_status);
    json_decref(c->config);
    er_free(c->lease_id);
    er_free(c->lease_status);
    er_free(c->policy);
    er_free(c->provider);
    er_free(c->provider_lease_id);
    er_free(c->run_id);
    json_decref(c->meta);
    er_free(c->cwd);
    er_free(c);
}

static struct chan *chan_new(const struct er_driver_ops *ops,
                             const struct er_driver_env *env,
                             const struct er_driver_lease *lease,
                             const char *cwd)
{
    struct chan *c = er_calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->ops = ops;
    c->env_id = dup_or_null(env->id);
    c->company_id = dup_or_null(env->company_id);
    c->env_name = dup_or_null(env->name);
    c->driver = dup_or_null(env->driver);
    c->env_status = dup_or_null(env->status);
    c->config = json_deep_copy(env->config);
    c->lease_id = dup_or_null(lease->id);
    c->lease_status = dup_or_null(lease->status);
    c->policy = dup_or_null(lease->lease_policy);
    c->provider = dup_or_null(lease->provider);
    c->provider_lease_id = dup_or_null(lease->provider_lease_id);
    c->run_id = dup_or_null(lease->heartbeat_run_id);
    c->meta = json_deep_copy(lease->metadata);
    c->cwd = dup_or_null(cwd);
    if (c->config == NULL || c->meta == NULL || c->lease_id == NULL ||
        (cwd != NULL && c->cwd == NULL)) {
        chan_free(c);
        return NULL;
    }
    return c;
}

/* Run `sh -c script` through the lease's driver with what req already
 * holds (stdin, deadline, ...), from the copies c keeps. A call that brings
 * a cancel flag (a poller's, a stream's) has it for the call; the step's
 * own calls keep the thread's. */
static int chan_run(const struct chan *c, const char *script,
                    struct er_driver_exec *req, const atomic_bool *cancel,
                    struct er_driver_exec_result *res, struct er_err *err)
{
    const char *args[] = { "-c", script, NULL };
    const struct er_driver_env env = { c->env_id, c->company_id, c->env_name,
                                       c->driver, c->env_status, c->config };
    const struct er_driver_lease lease = {
        c->lease_id,          c->lease_status, c->policy, c->provider,
        c->provider_lease_id, c->run_id,       c->meta
    };
    int rc;

    req->command = "sh";
    req->args = args;
    req->cwd = c->cwd;
    if (cancel != NULL)
        er_proc_set_cancel(cancel);
    rc = c->ops->execute(&env, &lease, req, res, err);
    if (cancel != NULL)
        er_proc_set_cancel(NULL);
    return rc;
}

/* One exec of the bridge's exec channel (er_bridge_exec_fn). */
static int chan_exec(struct chan *c, bool is_detached, const char *script,
                     const void *in, size_t in_len, int64_t timeout_ms,
                     const atomic_bool *cancel, struct er_bridge_exec_out *out,
                     struct er_err *err)
{
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    int rc;

    memset(&req, 0, sizeof(req));
    req.stdin_data = in;
    req.stdin_len = in_len;
    req.timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    req.max_output_bytes = out->out.max_len;
    req.is_detached = is_detached;
    /* The bridge's own scripts (queue list and write, upload, start, stop)
     * start nothing that must end with them. */
    req.is_worker_tool = true;
    rc = chan_run(c, script, &req, cancel, &res, err);
    if (rc != 0)
        return rc;
    out->exit_code = res.is_timed_out ? -1 : res.exit_code;
    if ((res.out_len > 0 &&
         er_buf_append(&out->out, res.out, res.out_len) != 0) ||
        (res.err_len > 0 &&
         er_buf_append(&out->err, res.err_text, res.err_len) != 0))
        rc = er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE,
                        "bridge exec output over its limit");
    er_driver_exec_result_fini(&res);
    return rc;
}

/* stream_v1's held exec: the gateway's stdin and stdout are our pipes;
 * not detached, so it ends with the exec (and with this worker). */
static int chan_hold(void *arg, const char *script, int in_fd, int out_fd,
                     int64_t timeout_ms, const atomic_bool *cancel,
                     int *exit_code, struct er_err *err)
{
    struct er_driver_stdio stdio = { in_fd, out_fd };
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    int rc;

    memset(&req, 0, sizeof(req));
    req.timeout_ms = timeout_ms;
    req.stdio = &stdio;
    rc = chan_run(arg, script, &req, cancel, &res, err);
    if (rc != 0)
        return rc;
    *exit_code = res.is_timed_out ? -1 : res.exit_code;
    er_driver_exec_result_fini(&res);
    return 0;
}

static int exec_plain(void *arg, const char *script, const void *in,
                      size_t in_len, int64_t timeout_ms,
                      const atomic_bool *cancel, struct er_bridge_exec_out *out,
                      struct er_err *err)
{
    return chan_exec(arg, false, script, in, in_len, timeout_ms, cancel, out,
                     err);
}

static int exec_detached(void *arg, const char *script, const void *in,
                         size_t in_len, int64_t timeout_ms,
                         const atomic_bool *cancel,
                         struct er_bridge_exec_out *out, struct er_err *err)
{
    return chan_exec(arg, true, script, in, in_len, timeout_ms, cancel, out,
                     err);
}

static bool entry_may_forward(void *arg)
{
    const struct entry *e = arg;

    return e->partition < 0 || e->partition >= PAUSE_MAX ||
           !atomic_load(&paused[e->partition]);
}

static bool is_starting_locked(const char *lease_id)
{
    const struct starting *st;

    for (st = host.starting; st != NULL; st = st->next) {
        if (strcmp(st->lease_id, lease_id) == 0)
            return true;
    }
    return false;
}

/* Take the lease's entry out of the registry (NULL: none), once no start
 * of it is in progress; with st, reserve the lease for a start (ended by
 * start_end). */
static struct entry *take(const char *lease_id, struct starting *st)
{
    struct entry **pp;
    struct entry *e = NULL;

    pthread_mutex_lock(&host.mu);
    while (is_starting_locked(lease_id))
        pthread_cond_wait(&host.started, &host.mu);
    for (pp = &host.head; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->lease_id, lease_id) == 0) {
            e = *pp;
            *pp = e->next;
            host.cnt--;
            break;
        }
    }
    if (st != NULL) {
        st->lease_id = lease_id;
        st->next = host.starting;
        host.starting = st;
    }
    pthread_mutex_unlock(&host.mu);
    return e;
}

static bool is_owned_locked(int32_t partition)
{
    return partition < 0 || partition >= PAUSE_MAX || !host.is_assign_known ||
           host.owned[partition];
}

/* End the start st: keep e (may be NULL) in the registry unless its
 * partition left this worker meanwhile; what is not kept is returned for
 * the caller to hand over. */
static struct entry *start_end(struct starting *st, struct entry *e)
{
    struct starting **pp;

    pthread_mutex_lock(&host.mu);
    for (pp = &host.starting; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    if (e != NULL && is_owned_locked(e->partition)) {
        e->next = host.head;
        host.head = e;
        host.cnt++;
        e = NULL;
    }
    pthread_cond_broadcast(&host.started);
    pthread_mutex_unlock(&host.mu);
    return e;
}

static void entry_free(struct entry *e, int64_t drain_ms, bool stop_gateway)
{
    er_bridge_run_stop(e->run, drain_ms, stop_gateway);
    chan_free(e->chan);
    er_free(e);
}

/* traceparent when it is a W3C one, else NULL: only that goes to the API
 * with the bridge's requests (the command's was checked when it was
 * decoded; this is the bridge's own door). */
static const char *bridge_trace(const char *traceparent)
{
    if (traceparent == NULL ||
        !er_traceparent_is_valid(traceparent, strlen(traceparent)))
        return NULL;
    return traceparent;
}

/* er_bridge_host_start with the lease reserved: old is its entry taken
 * out of the registry (NULL: none); *out gets the entry to keep. */
static int start_one(const struct er_bridge_host_req *req, const char *origin,
                     struct entry *old, struct entry **out, json_t **agent_env,
                     json_t **detail, struct er_err *err)
{
    struct er_bridge_run_opts o;
    const struct er_bridge_paths *paths;
    struct entry *e;
    const char *transport;
    const char *trace = bridge_trace(req->traceparent);
    int port = 0;
    int rc;

    /* A realize seen again (redelivered, resumed, the run's next one): a
     * stream_v1 bridge still running is kept, its requests in this
     * realize's trace from now on; otherwise the old one goes (a queue_v1
     * gateway stays and is found serving below) and the new one, with
     * this realize's trace, asks for its port. */
    if (old != NULL && er_bridge_run_is_alive(old->run) &&
        strcmp(er_bridge_run_transport(old->run), "stream_v1") == 0) {
        e = old;
        er_bridge_run_set_trace(e->run, trace);
        er_log_kv(ER_LOG_INFO, "bridge", "callback bridge kept", "leaseId",
                  e->lease_id, "transport", "stream_v1", (const char *)NULL);
        goto answer;
    }
    if (old != NULL) {
        port = er_bridge_run_port(old->run);
        entry_free(old, STOP_DRAIN_MS, false);
    }
    e = er_calloc(1, sizeof(*e));
    if (e == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    snprintf(e->lease_id, sizeof(e->lease_id), "%s", req->lease->id);
    e->partition = req->partition;
    e->chan = chan_new(req->ops, req->env, req->lease, req->remote_cwd);
    if (e->chan == NULL) {
        er_free(e);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    memset(&o, 0, sizeof(o));
    o.exec = exec_plain;
    o.exec_detached = exec_detached;
    o.exec_arg = e->chan;
    o.remote_cwd = req->remote_cwd;
    o.adapter_key = req->adapter_key;
    o.origin = origin;
    o.allow = host.allow;
    o.host_token = req->host_token;
    o.lease_id = req->lease->id;
    o.run_id = req->run_id;
    o.traceparent = trace;
    o.may_forward = entry_may_forward;
    o.may_forward_arg = e;
    o.hold = chan_hold;
    o.is_queue_only = host.is_queue_only;
    o.port = req->port > 0 ? req->port : port;
    rc = er_bridge_run_start(&o, &e->run, err);
    if (rc != 0) {
        chan_free(e->chan);
        er_free(e);
        return rc;
    }
answer:
    paths = er_bridge_run_paths(e->run);
    transport = er_bridge_run_transport(e->run);
    *agent_env = json_pack("{s:s, s:s, s:s}", "PAPERCLIP_API_URL",
                           er_bridge_run_base_url(e->run), "PAPERCLIP_API_KEY",
                           er_bridge_run_token(e->run),
                           "PAPERCLIP_API_BRIDGE_MODE", transport);
    if (*agent_env != NULL && strcmp(transport, "queue_v1") == 0 &&
        json_object_set_new(*agent_env, "PAPERCLIP_BRIDGE_QUEUE_DIR",
                            json_string(paths->queue_dir)) != 0) {
        json_decref(*agent_env);
        *agent_env = NULL;
    }
    *detail = json_pack("{s:s, s:s, s:i, s:s, s:s}", "transport", transport,
                        "queueDir", paths->queue_dir, "port",
                        er_bridge_run_port(e->run), "remoteCwd",
                        req->remote_cwd, "adapter", req->adapter_key);
    if (*agent_env == NULL || *detail == NULL) {
        json_decref(*agent_env);
        json_decref(*detail);
        *agent_env = NULL;
        *detail = NULL;
        entry_free(e, STOP_DRAIN_MS, true);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    *out = e;
    return 0;
}

int er_bridge_host_start(const struct er_bridge_host_req *req,
                         json_t **agent_env, json_t **detail,
                         struct er_err *err)
{
    struct starting st;
    struct entry *e = NULL;
    char origin[sizeof(host.origin)];
    int rc;

    *agent_env = NULL;
    *detail = NULL;
    pthread_mutex_lock(&host.mu);
    snprintf(origin, sizeof(origin), "%s", host.origin);
    pthread_mutex_unlock(&host.mu);
    if (origin[0] == '\0' || host.allow == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "ENVRUN_PAPERCLIP_API_URL is not set, so the "
                          "worker has no API to forward to.");
    if (req->ops->execute == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "Environment driver \"%s\" does not support command "
                          "execution.",
                          req->ops->name);
    if (strlen(req->lease->id) >= sizeof(e->lease_id))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE, "bad lease id");
    rc = start_one(req, origin, take(req->lease->id, &st), &e, agent_env,
                   detail, err);
    e = start_end(&st, rc == 0 ? e : NULL);
    if (e != NULL) {
        /* The partition left meanwhile: its next owner re-attaches. */
        er_log_kv(ER_LOG_INFO, "bridge",
                  "callback bridge handed over with its partition", "leaseId",
                  e->lease_id, (const char *)NULL);
        entry_free(e, -1, false);
    }
    return rc;
}

bool er_bridge_host_drop(const char *lease_id)
{
    struct entry *e = take(lease_id, NULL);

    if (e == NULL)
        return false;
    entry_free(e, STOP_DRAIN_MS, true);
    er_log_kv(ER_LOG_INFO, "bridge", "callback bridge stopped", "leaseId",
              lease_id, (const char *)NULL);
    return true;
}

void er_bridge_host_stop(const struct er_driver_ops *ops,
                         const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const char *detail_json)
{
    struct chan *c;
    json_t *detail;
    const char *queue_dir;
    const char *cwd;
    struct er_err err;

    if (er_bridge_host_drop(lease->id))
        return;
    /* Started by another worker (or before a restart): its gateway still
     * runs where the journal says. */
    if (detail_json == NULL || ops->execute == NULL)
        return;
    detail = json_loads(detail_json, 0, NULL);
    queue_dir = json_string_value(json_object_get(detail, "queueDir"));
    cwd = json_string_value(json_object_get(detail, "remoteCwd"));
    c = queue_dir != NULL ? chan_new(ops, env, lease, cwd) : NULL;
    er_err_clear(&err);
    if (c != NULL &&
        er_bridge_gateway_stop(exec_plain, c, queue_dir, &err) != 0)
        er_log_kv(ER_LOG_WARN, "bridge", "gateway stop failed", "leaseId",
                  lease->id, "error", err.msg, (const char *)NULL);
    else if (c != NULL)
        er_log_kv(ER_LOG_INFO, "bridge", "callback bridge stopped", "leaseId",
                  lease->id, (const char *)NULL);
    chan_free(c);
    json_decref(detail);
}

void er_bridge_host_shutdown(void)
{
    struct entry *e;

    for (;;) {
        pthread_mutex_lock(&host.mu);
        e = host.head;
        if (e != NULL) {
            host.head = e->next;
            host.cnt--;
        }
        pthread_mutex_unlock(&host.mu);
        if (e == NULL)
            break;
        entry_free(e, -1, false);
    }
    pthread_mutex_lock(&host.mu);
    er_bridge_allow_free(host.allow);
    host.allow = NULL;
    pthread_mutex_unlock(&host.mu);
}

size_t er_bridge_host_count(void)
{
    size_t n;

    pthread_mutex_lock(&host.mu);
    n = host.cnt;
    pthread_mutex_unlock(&host.mu);
    return n;
}

bool er_bridge_host_has(const char *lease_id)
{
    struct entry *e;
    bool is_found = false;

    /* A stream_v1 bridge whose exec ended (its gateway died) is not one
     * this process runs any more: the next pass starts it again. */
    pthread_mutex_lock(&host.mu);
    for (e = host.head; e != NULL && !is_found; e = e->next)
        is_found = strcmp(e->lease_id, lease_id) == 0 &&
                   er_bridge_run_is_alive(e->run);
    pthread_mutex_unlock(&host.mu);
    return is_found;
}

void er_bridge_host_pause(int32_t partition, bool is_paused)
{
    if (partition >= 0 && partition < PAUSE_MAX)
        atomic_store(&paused[partition], is_paused);
}

static bool is_in(int32_t p, const int32_t *ids, size_t cnt)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        if (ids[i] == p)
            return true;
    }
    return false;
}

/* Hand over (stop the pollers of) the bridges whose partition is in ids
 * (is_in true) or not in ids (is_in false). */
static void hand_over(const int32_t *ids, size_t cnt, bool want_in)
{
    struct entry **pp;
    struct entry *gone = NULL;
    struct entry *e;

    pthread_mutex_lock(&host.mu);
    pp = &host.head;
    while (*pp != NULL) {
        e = *pp;
        if (e->partition >= 0 && is_in(e->partition, ids, cnt) == want_in) {
            *pp = e->next;
            host.cnt--;
            e->next = gone;
            gone = e;
        } else {
            pp = &e->next;
        }
    }
    pthread_mutex_unlock(&host.mu);
    while (gone != NULL) {
        e = gone;
        gone = e->next;
        er_log_kv(ER_LOG_INFO, "bridge",
                  "callback bridge handed over with its partition", "leaseId",
                  e->lease_id, (const char *)NULL);
        entry_free(e, -1, false);
    }
}

void er_bridge_host_drop_partition(int32_t partition)
{
    if (partition >= 0 && partition < PAUSE_MAX) {
        pthread_mutex_lock(&host.mu);
        host.owned[partition] = false;
        pthread_mutex_unlock(&host.mu);
    }
    hand_over(&partition, 1, true);
    er_bridge_host_pause(partition, false);
}

void er_bridge_host_assigned(const int32_t *ids, size_t cnt)
{
    size_t i;

    pthread_mutex_lock(&host.mu);
    host.is_assign_known = true;
    for (i = 0; i < PAUSE_MAX; i++)
        host.owned[i] = is_in((int32_t)i, ids, cnt);
    pthread_mutex_unlock(&host.mu);
    hand_over(ids, cnt, false);
    for (i = 0; i < PAUSE_MAX; i++)
        atomic_store(&paused[i], false);
}
