/* sandbox_fuzz: a sandbox environment config (company-controlled JSON from
 * the environments table) through er_sandbox_config_parse, then, when it
 * validates, the fake provider's acquire and the execution target, and
 * the workspace unpack script for a cwd taken from the input's second line
 * (a plugin provider's answer). Checks: a parse either succeeds with a
 * provider key in the allowed alphabet or fails with a message; the unpack
 * script holds the cwd only as one quoted shell word. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "drivers/sandbox_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_provider(const char *p)
{
    size_t i;

    if (p[0] == '\0' || strlen(p) > ER_SANDBOX_PROVIDER_MAX)
        abort();
    for (i = 0; p[i] != '\0'; i++) {
        if (strchr("abcdefghijklmnopqrstuvwxyz0123456789._-", p[i]) == NULL)
            abort();
    }
}

static void fake_cycle(const json_t *config)
{
    struct er_driver_env env = { .id = "5a0e3f0c-7d1b-4c55-9a6e-0c2f1e3d4b5a",
                                 .company_id = "co-1",
                                 .name = "fuzz",
                                 .driver = "sandbox",
                                 .status = "active",
                                 .config = config };
    struct er_driver_lease_ctx ctx = {
        .lease_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        .company_id = "co-1",
        .heartbeat_run_id = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    };
    struct er_driver_acquired acq;
    struct er_driver_lease lease;
    struct er_err err;
    json_t *t;

    memset(&acq, 0, sizeof(acq));
    er_err_clear(&err);
    if (er_sandbox_driver.acquire(&env, &ctx, &acq, &err) != 0)
        return;
    lease =
        (struct er_driver_lease){ .id = ctx.lease_id,
                                  .provider = acq.provider,
                                  .provider_lease_id = acq.provider_lease_id,
                                  .lease_policy = acq.lease_policy,
                                  .metadata = acq.metadata };
    t = er_sandbox_driver.target(&env, &lease, "claude_local", &err);
    json_decref(t);
    er_driver_acquired_fini(&acq);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    size_t json_len = nl != NULL ? (size_t)((const uint8_t *)nl - data) : size;
    struct er_sandbox_config cfg;
    struct er_err err;
    json_t *config = json_loadb((const char *)data, json_len, 0, NULL);

    er_err_clear(&err);
    if (config != NULL) {
        if (er_sandbox_config_parse(config, &cfg, &err) == 0) {
            check_provider(cfg.provider);
            if (cfg.kind == ER_SANDBOX_FAKE)
                fake_cycle(config);
        } else if (err.msg[0] == '\0') {
            abort();
        }
        json_decref(config);
    }
    if (nl != NULL) {
        size_t cwd_len = size - json_len - 1;
        char *cwd = malloc(cwd_len + 1);
        struct er_buf script;
        struct er_buf quoted;

        if (cwd == NULL)
            return 0;
        memcpy(cwd, nl + 1, cwd_len);
        cwd[cwd_len] = '\0';
        er_buf_init(&script, 65536);
        er_buf_init(&quoted, 65536);
        /* The cwd goes in only as one quoted shell word. */
        if (er_sandbox_unpack_script(cwd, "-", &script) == 0 &&
            (er_sh_quote(&quoted, cwd) != 0 ||
             strstr((const char *)script.data, (const char *)quoted.data) ==
                 NULL))
            abort();
        er_buf_fini(&quoted);
        er_buf_fini(&script);
        free(cwd);
    }
    return 0;
}
