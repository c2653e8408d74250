/* ctl_leases: `envrunctl leases`: list environment leases from Postgres as
 * an aligned table. The query lives behind the store's door
 * (worker/store_ctl.c); this file parses options and prints. */
#include <string.h>

#include "ctl/ctl_int.h"
#include "worker/worker.h"

#define LEASES_DEFAULT_LIMIT 100
#define LEASES_TABLE_MAX     (64 * 1024 * 1024)

static const char usage[] =
    "usage: envrunctl leases [--database-url URL] [--company ID] [--run ID]\n"
    "                        [--status S] [--limit N] [--format json|table]\n"
    "List environment leases (newest first) with their environment's name.\n"
    "\n"
    "  --database-url URL  libpq connection string or URI "
    "($ENVRUN_DATABASE_URL)\n"
    "  --company ID        only this company's leases\n"
    "  --run ID            only this heartbeat run's leases\n"
    "  --status S          only leases in status S (active, released, "
    "expired,\n"
    "                      failed)\n"
    "  --limit N           at most N rows (default 100)\n"
    "  --format F          table (default: aligned columns) or json (one\n"
    "                      object a line; empty values null)\n";

/* A flag that must hold a UUID: 0, or a usage error naming it. */
static int check_uuid(const char *flag, const char *v)
{
    if (v == NULL || er_uuid_is_valid(v, strlen(v)))
        return 0;
    er_ctl_util_usage_error("leases", "--%s: expected a uuid", flag);
    return ER_EINVAL;
}

int er_ctl_leases_main(int argc, char **argv)
{
    const char *url = NULL;
    const char *company = NULL;
    const char *run = NULL;
    const char *status = NULL;
    const char *limit_s = NULL;
    const char *format = NULL;
    int64_t limit = LEASES_DEFAULT_LIMIT;
    size_t pos_cnt = 0;
    struct er_buf table;
    struct er_err err;
    int exit_code = ER_CTL_EXIT_USAGE;
    const struct er_ctl_opt opts[] = {
        { "database-url", &url, NULL, NULL },
        { "company", &company, NULL, NULL },
        { "run", &run, NULL, NULL },
        { "status", &status, NULL, NULL },
        { "limit", &limit_s, NULL, NULL },
        { "format", &format, NULL, NULL },
    };

    er_buf_init(&table, LEASES_TABLE_MAX);
    er_err_clear(&err);
    switch (er_ctl_util_parse("leases", argc, argv, opts,
                              sizeof(opts) / sizeof(opts[0]), NULL, 0,
                              &pos_cnt)) {
    case ER_CTL_PARSE_OK:
        break;
    case ER_CTL_PARSE_HELP:
        fputs(usage, stdout);
        exit_code = ER_CTL_EXIT_OK;
        goto out;
    case ER_CTL_PARSE_USAGE:
        goto out;
    }
    if (url == NULL)
        url = er_ctl_util_env("ENVRUN_DATABASE_URL", NULL);
    if (url == NULL) {
        er_ctl_util_usage_error("leases", "--database-url or "
                                          "ENVRUN_DATABASE_URL is required");
        goto out;
    }
    if (check_uuid("company", company) != 0 || check_uuid("run", run) != 0)
        goto out;
    if (limit_s != NULL &&
        er_ctl_util_parse_int(limit_s, 1, 1000000, &limit) != 0) {
        er_ctl_util_usage_error("leases", "--limit: expected an integer "
                                          "1..1000000");
        goto out;
    }

    if (format != NULL && strcmp(format, "json") != 0 &&
        strcmp(format, "table") != 0) {
        er_ctl_util_usage_error("leases", "--format: expected json or table");
        goto out;
    }

    exit_code = ER_CTL_EXIT_FAIL;
    if (er_store_ctl_leases(url, company, run, status, (int)limit,
                            format != NULL && strcmp(format, "json") == 0,
                            &table, &err) != 0) {
        fprintf(stderr, "envrunctl leases: %s\n", err.msg);
        goto out;
    }
    fwrite(table.data, 1, table.len, stdout);
    exit_code = ER_CTL_EXIT_OK;

out:
    er_buf_fini(&table);
    return exit_code;
}
