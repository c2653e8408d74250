/* run: the worker's start-up and shut-down order. Migrate, then start the
 * health endpoint, the outbox relay, the dispatcher and the consumer; stop
 * them in reverse so every committed step's messages are published before
 * the process exits. Owns all of them for the duration of er_worker_run. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "drivers/driver.h"
#include "schemas/schemas.h"
#include "worker/bridge_host_int.h"
#include "worker/consumer_int.h"
#include "worker/dispatch_int.h"
#include "worker/outbox_int.h"
#include "worker/reaper_int.h"
#include "worker/store_int.h"
#include "worker/worker.h"

#define DB_WAIT_MS          30000
#define OUTBOX_DRAIN_MS     5000
#define REGISTRY_BACKOFF_MS 500
#define REGISTRY_MAX_MS     30000

volatile sig_atomic_t er_worker_stop;

/* Connect and migrate, retrying while the database is not up yet; then
 * tell the drivers which installation they work for. */
static int migrate(const struct er_config *cfg)
{
    char installation[40];

    int64_t deadline = er_time_mono_ms() + DB_WAIT_MS;
    struct er_err err;

    for (;;) {
        struct er_store *store;
        int rc;

        er_err_clear(&err);
        store = er_store_new(cfg->database_url, &err);
        rc = store != NULL ? er_store_migrate(store, &err) : err.code;
        if (rc == 0)
            rc = er_store_installation_id(store, installation, &err);
        /* Read from the catalog, never from a version string. */
        if (rc == 0)
            er_log_kv(ER_LOG_INFO, "worker", "paperclip schema", "era",
                      er_store_era_name(er_store_era(store)), "meaning",
                      er_store_era_describe(er_store_era(store)),
                      (const char *)NULL);
        er_store_destroy(store);
        if (rc == 0) {
            er_driver_set_installation(installation);
            return 0;
        }
        if (err.cls != ER_ERRCLASS_RETRY || er_time_mono_ms() > deadline ||
            er_worker_stop) {
            ER_LOG_ERR("worker", "database not ready: %s", err.msg);
            return -1;
        }
        {
            struct timespec ts = { 0, 500 * 1000000L };

            nanosleep(&ts, NULL);
        }
    }
}

/* The topic each of envrun's records is the value of (subject
 * "<topic>-value"). */
static const struct {
    enum er_record_type type;
    const char *topic;
} registered[] = {
    { ER_REC_RUN_COMMAND, "commands" },
    { ER_REC_COMMAND_RESULT, "results" },
    { ER_REC_LEASE_EVENT, "lease-events" },
    { ER_REC_ACTIVITY_EVENT, "activity" },
};

static void sleep_ms(int64_t ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* With ENVRUN_SCHEMA_REGISTRY_URL set: register envrun's schemas and
 * install the client, before any command is consumed. While the registry
 * cannot be reached the start waits, with backoff; nothing is consumed
 * meanwhile, so nothing is lost. 0 (also when no registry is set), or -1
 * after logging why (refused, or stopped while waiting). */
static int start_registry(const struct er_config *cfg, struct er_registry **out)
{
    struct er_registry *reg = NULL;
    int64_t backoff_ms = REGISTRY_BACKOFF_MS;
    struct er_err err;
    size_t i = 0;

    *out = NULL;
    if (cfg->schema_registry_url[0] == '\0')
        return 0;
    er_err_clear(&err);
    if (er_registry_new(cfg->schema_registry_url, cfg->schema_registry_ca_file,
                        &reg, &err) != 0) {
        ER_LOG_ERR("worker", "schema registry: %s", err.msg);
        return -1;
    }
    while (i < sizeof(registered) / sizeof(registered[0])) {
        char subject[256];

        er_config_topic(cfg, registered[i].topic, subject, sizeof(subject));
        strncat(subject, "-value", sizeof(subject) - strlen(subject) - 1);
        er_err_clear(&err);
        if (er_registry_register(reg, registered[i].type, subject, &err) == 0) {
            ER_LOG_INFO("worker", "schema registered: subject %s, id %d",
                        subject, (int)er_registry_id(reg, registered[i].type));
            i++;
            continue;
        }
        if (err.cls != ER_ERRCLASS_RETRY || er_worker_stop) {
            ER_LOG_ERR("worker", "schema registry: %s",
                       er_worker_stop ? "stopped while "
                                        "waiting for it"
                                      : err.msg);
            er_registry_destroy(reg);
            return -1;
        }
        ER_LOG_WARN("worker",
                    "start delayed: %s; next try in %lld ms (no command is "
                    "consumed until the schemas are registered)",
                    err.msg, (long long)backoff_ms);
        sleep_ms(backoff_ms);
        backoff_ms =
            backoff_ms * 2 > REGISTRY_MAX_MS ? REGISTRY_MAX_MS : backoff_ms * 2;
    }
    er_registry_install(reg);
    ER_LOG_INFO("worker",
                "schema registry %s: values use the Confluent wire "
                "format",
                er_registry_url_shown(reg));
    *out = reg;
    return 0;
}

int er_worker_run(const struct er_config *cfg)
{
    struct er_http *http = NULL;
    struct er_outbox *outbox = NULL;
    struct er_dispatch *dispatch = NULL;
    struct er_consumer *consumer = NULL;
    struct er_reaper *reaper = NULL;
    struct er_registry *registry = NULL;
    const char *brokers = cfg->kafka_brokers;
    struct er_err err;
    int rc = 1;

    er_err_clear(&err);
    er_driver_setup(cfg->secrets_dir);
    er_driver_set_workspace_roots(cfg->workspace_roots);
    if (er_sandbox_setup(cfg->sandbox_dir, cfg->plugins_dir, &err) != 0) {
        /* A configuration error, reported like the others. */
        fprintf(stderr, "envrun-worker: ENVRUN_PLUGINS_DIR: %s\n", err.msg);
        return 2;
    }
    if (er_bridge_host_setup(cfg->paperclip_api_url, cfg->bridge_allowlist,
                             cfg->bridge_queue_only, &err) != 0) {
        /* Checked by the configuration already; reported like it. */
        fprintf(stderr, "envrun-worker: %s\n", err.msg);
        er_sandbox_shutdown();
        return 2;
    }
    if (er_codec_init(&err) != 0) {
        ER_LOG_ERR("worker", "codec: %s", err.msg);
        return 1;
    }
    if (migrate(cfg) != 0)
        goto out;
    er_metrics_set_db_ready(true);
    if (cfg->http_addr[0] != '\0') {
        http = er_http_new(cfg->http_addr, &err);
        if (http == NULL) {
            ER_LOG_ERR("worker", "http endpoint: %s", err.msg);
            goto out;
        }
    }
    if (start_registry(cfg, &registry) != 0)
        goto out;
    outbox = er_outbox_new(cfg, brokers, &err);
    if (outbox == NULL)
        goto fail;
    dispatch = er_dispatch_new(cfg, cfg->concurrency, &err);
    if (dispatch == NULL)
        goto fail;
    er_dispatch_set_on_commit(dispatch, er_outbox_kick, outbox);
    reaper = er_reaper_new(cfg, &err);
    if (reaper == NULL)
        goto fail;
    er_dispatch_set_expiry_hook(dispatch, er_reaper_expect, reaper);
    consumer = er_consumer_new(cfg, brokers, dispatch, &err);
    if (consumer == NULL)
        goto fail;
    er_reaper_follow_bridges(reaper, er_consumer_owner(consumer), brokers,
                             cfg->kafka_props);
    er_consumer_set_on_assign(consumer, er_reaper_expect, reaper);
    ER_LOG_INFO("worker", "started: group %s, concurrency %d", cfg->kafka_group,
                cfg->concurrency);
    rc = er_consumer_run(consumer);
    ER_LOG_INFO("worker", "stopping");
    goto out;
fail:
    ER_LOG_ERR("worker", "start-up failed: %s", err.msg);
    rc = 1;
out:
    er_consumer_destroy(consumer);
    er_reaper_destroy(reaper);
    er_dispatch_destroy(dispatch);
    er_outbox_destroy(outbox, OUTBOX_DRAIN_MS);
    er_http_destroy(http);
    er_registry_install(NULL);
    er_registry_destroy(registry);
    er_bridge_host_shutdown();
    er_sandbox_shutdown();
    er_codec_shutdown();
    return rc;
}
