/* sandbox_test: the sandbox driver's parts that need no sandbox: config
 * validation (domain.md 4.3), the fake provider through the driver's
 * operations (ids, reuse, policies, the execute refusal, release), the
 * execution target (3.6) and the workspace unpack script run by a local
 * /bin/sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "drivers/sandbox_int.h"

#define ENV_ID   "5a0e3f0c-7d1b-4c55-9a6e-0c2f1e3d4b5a"
#define LEASE_ID "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
#define RUN_ID   "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"

static json_t *jload(const char *text)
{
    json_t *v = json_loads(text, 0, NULL);

    assert_non_null(v);
    return v;
}

/* Parse text; returns the rc and leaves the message in msg. */
static int parse(const char *text, struct er_sandbox_config *cfg, char *msg,
                 size_t msg_len)
{
    json_t *config = jload(text);
    struct er_err err;
    int rc;

    er_err_clear(&err);
    rc = er_sandbox_config_parse(config, cfg, &err);
    snprintf(msg, msg_len, "%s", err.msg);
    json_decref(config);
    return rc;
}

static void config_defaults_and_kinds(void **state)
{
    struct er_sandbox_config cfg;
    char msg[256];

    (void)state;
    assert_int_equal(parse("{}", &cfg, msg, sizeof(msg)), 0);
    assert_int_equal(cfg.kind, ER_SANDBOX_FAKE);
    assert_string_equal(cfg.provider, "fake");
    assert_string_equal(cfg.image, "ubuntu:24.04");
    assert_false(cfg.is_reuse_lease);

    assert_int_equal(parse("{\"provider\":\"bwrap\",\"memoryMb\":512,"
                           "\"maxProcesses\":64,\"cpuSeconds\":30}",
                           &cfg, msg, sizeof(msg)),
                     0);
    assert_int_equal(cfg.kind, ER_SANDBOX_BWRAP);
    assert_int_equal(cfg.lim.memory_bytes, 512LL * 1024 * 1024);
    assert_int_equal(cfg.lim.processes, 64);
    assert_int_equal(cfg.lim.cpu_seconds, 30);

    /* Any other key is a plugin's, with its own keys allowed. */
    assert_int_equal(parse("{\"provider\":\"e2b\",\"template\":\"base\","
                           "\"timeoutMs\":60000,\"reuseLease\":true}",
                           &cfg, msg, sizeof(msg)),
                     0);
    assert_int_equal(cfg.kind, ER_SANDBOX_PLUGIN);
    assert_int_equal(cfg.timeout_ms, 60000);
    assert_true(cfg.is_reuse_lease);
}

static void config_errors(void **state)
{
    struct er_sandbox_config cfg;
    char msg[256];

    (void)state;
    assert_int_equal(parse("{\"provider\":\"E2B\"}", &cfg, msg, sizeof(msg)),
                     ER_EINVAL);
    assert_non_null(strstr(msg, "Sandbox provider must match"));
    assert_int_equal(parse("{\"provider\":7}", &cfg, msg, sizeof(msg)),
                     ER_EINVAL);
    assert_int_equal(parse("{\"provider\":\"fake\",\"template\":\"x\"}", &cfg,
                           msg, sizeof(msg)),
                     ER_EINVAL);
    assert_string_equal(msg, "Fake sandbox environment config has an unknown "
                             "key: template");
    assert_int_equal(parse("{\"image\":\"  \"}", &cfg, msg, sizeof(msg)),
                     ER_EINVAL);
    assert_string_equal(msg, "Fake sandbox image must be a non-empty string.");
    assert_int_equal(
        parse("{\"provider\":\"e2b\",\"timeoutMs\":0}", &cfg, msg, sizeof(msg)),
        ER_EINVAL);
    assert_string_equal(msg, "timeoutMs must be between 1 and 86400000.");
    assert_int_equal(parse("{\"provider\":\"e2b\",\"timeoutMs\":1.5}", &cfg,
                           msg, sizeof(msg)),
                     ER_EINVAL);
    assert_int_equal(parse("{\"provider\":\"bwrap\",\"maxProcesses\":2}", &cfg,
                           msg, sizeof(msg)),
                     ER_EINVAL);
    assert_string_equal(msg, "maxProcesses must be between 16 and 65536.");
    assert_int_equal(parse("{\"provider\":\"bwrap\",\"image\":\"x\"}", &cfg,
                           msg, sizeof(msg)),
                     ER_EINVAL);
    assert_int_equal(parse("{\"reuseLease\":\"yes\"}", &cfg, msg, sizeof(msg)),
                     ER_EINVAL);
    assert_string_equal(msg, "reuseLease must be a boolean.");
}

/* ---- the fake provider through the driver's operations ---- */

static struct er_driver_env fake_env(const json_t *config)
{
    return (struct er_driver_env){ .id = ENV_ID,
                                   .company_id = "co-1",
                                   .name = "Fake",
                                   .driver = "sandbox",
                                   .status = "active",
                                   .config = config };
}

static void fake_acquire_ids(void **state)
{
    json_t *config = jload("{\"provider\":\"fake\",\"image\":\"debian:12\"}");
    struct er_driver_env env = fake_env(config);
    struct er_driver_lease_ctx ctx = { .lease_id = LEASE_ID,
                                       .company_id = "co-1",
                                       .heartbeat_run_id = RUN_ID,
                                       .execution_workspace_mode = "shared" };
    struct er_driver_acquired acq;
    struct er_err err;
    const char *prefix = "sandbox://fake/" RUN_ID "/";

    (void)state;
    memset(&acq, 0, sizeof(acq));
    er_err_clear(&err);
    assert_int_equal(er_sandbox_driver.acquire(&env, &ctx, &acq, &err), 0);
    assert_string_equal(acq.lease_policy, "ephemeral");
    assert_string_equal(acq.provider, "fake");
    assert_memory_equal(acq.provider_lease_id, prefix, strlen(prefix));
    assert_true(er_uuid_is_valid(acq.provider_lease_id + strlen(prefix), 36));
    assert_string_equal(
        json_string_value(json_object_get(acq.metadata, "image")), "debian:12");
    assert_string_equal(json_string_value(json_object_get(
                            acq.metadata, "executionWorkspaceMode")),
                        "shared");
    er_driver_acquired_fini(&acq);

    /* A probe: a random run id stands in. */
    ctx.heartbeat_run_id = NULL;
    assert_int_equal(er_sandbox_driver.acquire(&env, &ctx, &acq, &err), 0);
    assert_memory_equal(acq.provider_lease_id, "sandbox://fake/", 15);
    assert_memory_not_equal(acq.provider_lease_id + 15, RUN_ID, 36);
    er_driver_acquired_fini(&acq);
    json_decref(config);
}

static void fake_reuse_and_resume(void **state)
{
    json_t *config = jload("{\"reuseLease\":true}");
    json_t *parked_meta = jload("{\"driver\":\"sandbox\",\"provider\":"
                                "\"fake\",\"reuseLease\":true,\"image\":"
                                "\"ubuntu:24.04\"}");
    json_t *other_meta = jload("{\"driver\":\"sandbox\",\"provider\":"
                               "\"fake\",\"reuseLease\":true,\"image\":"
                               "\"alpine\"}");
    struct er_driver_lease parked[2] = {
        { .id = "l-0",
          .provider = "fake",
          .provider_lease_id = "sandbox://fake/other-image",
          .metadata = other_meta },
        { .id = "l-1",
          .provider = "fake",
          .provider_lease_id = "sandbox://fake/" ENV_ID,
          .metadata = parked_meta },
    };
    struct er_driver_env env = fake_env(config);
    struct er_driver_lease_ctx ctx = { .lease_id = LEASE_ID,
                                       .company_id = "co-1",
                                       .heartbeat_run_id = RUN_ID };
    struct er_driver_acquired acq;
    struct er_err err;

    (void)state;
    memset(&acq, 0, sizeof(acq));
    er_err_clear(&err);
    assert_int_equal(er_sandbox_driver.acquire(&env, &ctx, &acq, &err), 0);
    assert_string_equal(acq.lease_policy, "reuse_by_environment");
    assert_string_equal(acq.provider_lease_id, "sandbox://fake/" ENV_ID);
    assert_true(json_is_false(json_object_get(acq.metadata, "resumedLease")));
    er_driver_acquired_fini(&acq);

    /* The matching parked lease is resumed; the other image is not. */
    ctx.reusable = parked;
    ctx.reusable_cnt = 2;
    assert_int_equal(er_sandbox_driver.acquire(&env, &ctx, &acq, &err), 0);
    assert_string_equal(acq.provider_lease_id, "sandbox://fake/" ENV_ID);
    assert_true(json_is_true(json_object_get(acq.metadata, "resumedLease")));
    er_driver_acquired_fini(&acq);

    /* A probe is never reusable (2.4). */
    ctx.heartbeat_run_id = NULL;
    assert_int_equal(er_sandbox_driver.acquire(&env, &ctx, &acq, &err), 0);
    assert_string_equal(acq.lease_policy, "ephemeral");
    er_driver_acquired_fini(&acq);
    json_decref(parked_meta);
    json_decref(other_meta);
    json_decref(config);
}

static void fake_execute_refused_release_noop(void **state)
{
    json_t *config = jload("{}");
    json_t *meta = jload("{\"driver\":\"sandbox\",\"provider\":\"fake\"}");
    struct er_driver_env env = fake_env(config);
    struct er_driver_lease lease = { .id = LEASE_ID,
                                     .status = "active",
                                     .lease_policy = "retain_on_failure",
                                     .provider = "fake",
                                     .provider_lease_id = "sandbox://fake/x",
                                     .metadata = meta };
    const char *args[] = { "-lc", "true", NULL };
    struct er_driver_exec req = { .command = "bash",
                                  .args = args,
                                  .timeout_ms = 1000 };
    struct er_driver_exec_result res;
    struct er_driver_released rel;
    struct er_err err;

    (void)state;
    er_err_clear(&err);
    assert_int_equal(er_sandbox_driver.execute(&env, &lease, &req, &res, &err),
                     ER_EDRIVER);
    assert_string_equal(err.msg, "Sandbox driver does not support direct "
                                 "command execution for built-in providers.");
    er_driver_exec_result_fini(&res);
    assert_int_equal(
        er_sandbox_driver.release(&env, &lease, "released", &rel, &err), 0);
    assert_string_equal(rel.status, "released");
    assert_string_equal(rel.cleanup_status, "success");
    /* retain_on_failure: a failed run's lease is retained (4.3 step 4). */
    assert_int_equal(
        er_sandbox_driver.release(&env, &lease, "failed", &rel, &err), 0);
    assert_string_equal(rel.status, "retained");
    assert_string_equal(rel.failure_reason, "adapter_or_run_failure");
    json_decref(meta);
    json_decref(config);
}

static void target_for_remote_adapters_only(void **state)
{
    json_t *config = jload("{\"provider\":\"bwrap\",\"timeoutMs\":5000}");
    json_t *meta = jload("{\"driver\":\"sandbox\",\"provider\":\"bwrap\","
                         "\"remoteCwd\":\"/workspace\",\"shellCommand\":"
                         "\"bash\"}");
    struct er_driver_env env = fake_env(config);
    struct er_driver_lease lease = { .id = LEASE_ID,
                                     .provider = "bwrap",
                                     .metadata = meta };
    struct er_err err;
    json_t *t;

    (void)state;
    er_err_clear(&err);
    t = er_sandbox_driver.target(&env, &lease, "claude_local", &err);
    assert_non_null(t);
    assert_string_equal(json_string_value(json_object_get(t, "transport")),
                        "sandbox");
    assert_string_equal(json_string_value(json_object_get(t, "providerKey")),
                        "bwrap");
    assert_string_equal(json_string_value(json_object_get(t, "remoteCwd")),
                        "/workspace");
    assert_int_equal(json_integer_value(json_object_get(t, "timeoutMs")), 5000);
    assert_null(json_object_get(t, "paperclipApiUrl"));
    json_decref(t);
    t = er_sandbox_driver.target(&env, &lease, "process", &err);
    assert_true(json_is_null(t));
    json_decref(t);
    t = er_sandbox_driver.target(&env, NULL, "claude_local", &err);
    assert_true(json_is_null(t));
    json_decref(t);
    json_decref(meta);
    json_decref(config);
}

/* ---- the unpack script, run by a local /bin/sh ---- */

static void run(const char *cmd)
{
    assert_int_equal(system(cmd), 0);
}

static void unpack_keeps_runtime_and_replaces_the_rest(void **state)
{
    char dir[64] = "/tmp/sandbox-test-XXXXXX";
    char cmd[8192];
    const char *argv[12];
    struct er_buf script;
    size_t i;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof(cmd),
             "mkdir -p %s/src/sub %s/src/.paperclip-runtime %s/dst/old "
             "%s/dst/.paperclip-runtime && echo new > %s/src/sub/f && "
             "echo hidden > %s/src/.dot && echo meta > %s/src/._junk && "
             "echo host-runtime > %s/src/.paperclip-runtime/x && "
             "echo keep > %s/dst/.paperclip-runtime/k && "
             "echo stale > %s/dst/old/s && echo stale > %s/dst/.stale",
             dir, dir, dir, dir, dir, dir, dir, dir, dir, dir, dir);
    run(cmd);
    /* The archive the host would stream in. */
    er_sandbox_tar_argv("SRC", argv);
    snprintf(cmd, sizeof(cmd), "cd %s && ", dir);
    for (i = 0; argv[i] != NULL; i++) {
        strcat(cmd, strcmp(argv[i], "SRC") == 0 ? "src" : argv[i]);
        strcat(cmd, " ");
    }
    strcat(cmd, "> a.tar");
    run(cmd);
    er_buf_init(&script, 8192);
    snprintf(cmd, sizeof(cmd), "%s/dst", dir);
    {
        char archive[128];

        snprintf(archive, sizeof(archive), "%s/a.tar", dir);
        assert_int_equal(er_sandbox_unpack_script(cmd, archive, &script), 0);
    }
    assert_int_equal(er_buf_append(&script, "", 1), 0);
    {
        const char *argv_sh[] = { "/bin/sh", "-c", (const char *)script.data,
                                  NULL };
        struct er_proc_opts opts;
        struct er_proc_result res;
        struct er_err err;

        er_proc_opts_init(&opts);
        opts.argv = argv_sh;
        opts.timeout_ms = 20000;
        er_err_clear(&err);
        assert_int_equal(er_proc_run(&opts, &res, &err), 0);
        if (res.exit_code != 0)
            fail_msg("unpack failed: %s", res.err_text);
        er_proc_result_fini(&res);
    }
    er_buf_fini(&script);
    snprintf(cmd, sizeof(cmd),
             "cd %s/dst && test \"$(cat sub/f)\" = new && test -e .dot && "
             "test ! -e ._junk && test ! -e old && test ! -e .stale && "
             "test \"$(cat .paperclip-runtime/k)\" = keep && "
             "test ! -e .paperclip-runtime/x && test ! -e ../a.tar",
             dir);
    run(cmd);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    run(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_defaults_and_kinds),
        cmocka_unit_test(config_errors),
        cmocka_unit_test(fake_acquire_ids),
        cmocka_unit_test(fake_reuse_and_resume),
        cmocka_unit_test(fake_execute_refused_release_noop),
        cmocka_unit_test(target_for_remote_adapters_only),
        cmocka_unit_test(unpack_keeps_runtime_and_replaces_the_rest),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
