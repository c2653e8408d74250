/* bridge_host: the callback bridges this worker runs (contract.md 7), one
 * per bridged run: started by realize for a remote lease whose command
 * carries hostApiToken, stopped by release. The bridge's exec channel is
 * the lease's driver (execute). Process-wide and thread-safe: a registry
 * keyed by lease id under one mutex; the bridges' pollers run on threads
 * of their own. */
#ifndef ER_WORKER_BRIDGE_HOST_INT_H
#define ER_WORKER_BRIDGE_HOST_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "drivers/driver.h"

/* Once at start-up: the API origin (ENVRUN_PAPERCLIP_API_URL; "" or NULL:
 * bridges cannot start), the allow-list file (NULL or "": built in) and
 * whether stream_v1 is off (ENVRUN_BRIDGE_TRANSPORT=queue_v1). Errors (a
 * configuration error): ER_EINVAL naming the setting. */
int er_bridge_host_setup(const char *api_url, const char *allowlist_path,
                         bool is_queue_only, struct er_err *err);
/* Stop every poller this process runs and free the registry. Gateways
 * are left running: the run's next owner re-attaches to them. */
void er_bridge_host_shutdown(void);

/* What starting one run's bridge needs (borrowed; copied where kept). */
struct er_bridge_host_req {
    const struct er_driver_ops *ops;
    const struct er_driver_env *env;
    const struct er_driver_lease *lease;
    const char *remote_cwd;  /* the realized remote workspace */
    const char *adapter_key; /* the run's adapter type */
    const struct er_secret *host_token;
    const char *run_id;
    int32_t partition; /* of the run's commands; -1: none (tools) */
    int port;          /* the journaled port to ask for again; 0: none */
    /* The realize command's; NULL or not a W3C traceparent: none. A kept
     * bridge forwards in the latest realize's trace. */
    const char *traceparent;
};

/* Start the run's bridge, stream_v1 where the driver can hold an exec
 * open (bwrap, ssh), else queue_v1 (or keep the one serving with its
 * token), and fill *agent_env with {PAPERCLIP_API_URL, PAPERCLIP_API_KEY,
 * PAPERCLIP_API_BRIDGE_MODE, and for queue_v1 PAPERCLIP_BRIDGE_QUEUE_DIR}
 * and *detail with
 * what the journal keeps of it (no secret: transport, queueDir, port,
 * remoteCwd, adapter). Errors: ER_EINVAL when bridges are not configured or
 * the driver cannot execute, else the bridge's own (B7 sentences). */
int er_bridge_host_start(const struct er_bridge_host_req *req,
                         json_t **agent_env, json_t **detail,
                         struct er_err *err);

/* Stop the lease's bridge: its poller when this process runs it, then its
 * gateway, through the driver; detail_json (the journal's, may be NULL)
 * names the queue when this process does not hold the bridge. Best
 * effort: failures are logged. */
void er_bridge_host_stop(const struct er_driver_ops *ops,
                         const struct er_driver_env *env,
                         const struct er_driver_lease *lease,
                         const char *detail_json);

/* Stop the lease's bridge if this process runs it (poller, then gateway);
 * whether it did. */
bool er_bridge_host_drop(const char *lease_id);

/* How many bridges this process runs. */
size_t er_bridge_host_count(void);
/* Whether this process runs the lease's bridge (and, for stream_v1, its
 * held exec still runs). */
bool er_bridge_host_has(const char *lease_id);
/* The commands partition left this worker: stop the pollers of its runs'
 * bridges at once (a forward in flight is aborted, its request answered
 * 504-indeterminate; a listed one not yet forwarded gets the retry-safe
 * 503), so that the partition's next owner is the only one forwarding for
 * them. Their gateways keep serving; the next owner re-attaches. */
void er_bridge_host_drop_partition(int32_t partition);
/* The partition was revoked and may come back (eager rebalancing): its
 * runs' bridges keep their gateways and pollers but forward nothing while
 * paused, so that no request is forwarded twice across a handover. */
void er_bridge_host_pause(int32_t partition, bool is_paused);
/* The assignment is ids: the bridges of every other partition are handed
 * over (as er_bridge_host_drop_partition), the rest resume. */
void er_bridge_host_assigned(const int32_t *ids, size_t cnt);

#endif
