/* bridge_host: the registry of this worker's callback bridges and their
 * exec channel over the lease's driver (see bridge_host_int.h). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bridge/bridge.h"
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
    struct chan *chan;
    struct er_bridge_run *run;
};

static struct {
    pthread_mutex_t mu;
    struct er_bridge_allow *allow;
    char origin[512];
    struct entry *head;
    size_t cnt;
} host = { .mu = PTHREAD_MUTEX_INITIALIZER };

int er_bridge_host_setup(const char *api_url, const char *allowlist_path,
                         struct er_err *err)
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

/* One `sh -c script` through the lease's driver. A poller's call brings
 * its cancel flag; the step's own calls keep the thread's. */
static int chan_exec(struct chan *c, bool is_detached, const char *script,
                     const void *in, size_t in_len, int64_t timeout_ms,
                     const atomic_bool *cancel, struct er_bridge_exec_out *out,
                     struct er_err *err)
{
    const char *args[] = { "-c", script, NULL };
    struct er_driver_env env = { c->env_id, c->company_id, c->env_name,
                                 c->driver, c->env_status, c->config };
    struct er_driver_lease lease = {
        c->lease_id,          c->lease_status, c->policy, c->provider,
        c->provider_lease_id, c->run_id,       c->meta
    };
    struct er_driver_exec req;
    struct er_driver_exec_result res;
    int rc;

    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.cwd = c->cwd;
    req.stdin_data = in;
    req.stdin_len = in_len;
    req.timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    req.max_output_bytes = out->out.max_len;
    req.is_detached = is_detached;
    if (cancel != NULL)
        er_proc_set_cancel(cancel);
    rc = c->ops->execute(&env, &lease, &req, &res, err);
    if (cancel != NULL)
        er_proc_set_cancel(NULL);
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

/* Take the lease's entry out of the registry (NULL: none). */
static struct entry *take(const char *lease_id)
{
    struct entry **pp;
    struct entry *e = NULL;

    pthread_mutex_lock(&host.mu);
    for (pp = &host.head; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->lease_id, lease_id) == 0) {
            e = *pp;
            *pp = e->next;
            host.cnt--;
            break;
        }
    }
    pthread_mutex_unlock(&host.mu);
    return e;
}

static void entry_free(struct entry *e, bool stop_gateway)
{
    er_bridge_run_stop(e->run, STOP_DRAIN_MS, stop_gateway);
    chan_free(e->chan);
    er_free(e);
}

int er_bridge_host_start(const struct er_bridge_host_req *req,
                         json_t **agent_env, json_t **detail,
                         struct er_err *err)
{
    struct er_bridge_run_opts o;
    const struct er_bridge_paths *paths;
    struct entry *e;
    struct entry *old;
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
    /* A realize seen again (redelivered, resumed): its poller goes; the
     * gateway stays and is kept below, token and port unchanged. */
    old = take(req->lease->id);
    if (old != NULL)
        entry_free(old, false);
    e = er_calloc(1, sizeof(*e));
    if (e == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    snprintf(e->lease_id, sizeof(e->lease_id), "%s", req->lease->id);
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
    rc = er_bridge_run_start(&o, &e->run, err);
    if (rc != 0) {
        chan_free(e->chan);
        er_free(e);
        return rc;
    }
    paths = er_bridge_run_paths(e->run);
    *agent_env =
        json_pack("{s:s, s:s, s:s, s:s}", "PAPERCLIP_API_URL",
                  er_bridge_run_base_url(e->run), "PAPERCLIP_API_KEY",
                  er_bridge_run_token(e->run), "PAPERCLIP_API_BRIDGE_MODE",
                  "queue_v1", "PAPERCLIP_BRIDGE_QUEUE_DIR", paths->queue_dir);
    *detail = json_pack("{s:s, s:s, s:i, s:s, s:s}", "transport", "queue_v1",
                        "queueDir", paths->queue_dir, "port",
                        er_bridge_run_port(e->run), "remoteCwd",
                        req->remote_cwd, "adapter", req->adapter_key);
    if (*agent_env == NULL || *detail == NULL) {
        json_decref(*agent_env);
        json_decref(*detail);
        *agent_env = NULL;
        *detail = NULL;
        entry_free(e, true);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    }
    pthread_mutex_lock(&host.mu);
    e->next = host.head;
    host.head = e;
    host.cnt++;
    pthread_mutex_unlock(&host.mu);
    return 0;
}

void er_bridge_host_stop(const struct er_driver_ops *ops,
                         const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const char *detail_json)
{
    struct entry *e = take(lease->id);
    struct chan *c;
    json_t *detail;
    const char *queue_dir;
    const char *cwd;
    struct er_err err;

    if (e != NULL) {
        entry_free(e, true);
        er_log_kv(ER_LOG_INFO, "bridge", "callback bridge stopped", "leaseId",
                  lease->id, (const char *)NULL);
        return;
    }
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
        entry_free(e, false);
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
