/* ctl_leases: `envrunctl leases`: list environment leases from Postgres as
 * an aligned table or JSON lines. The query lives behind the store's door
 * (worker/store_ctl.c), which gives the rows as JSON; this file parses
 * options and draws the table, every cell through er_ctl_view_cell. */
#include <string.h>

#include <jansson.h>

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
    "                      object a line; empty values null)\n"
    "Exit status: 0 done, 1 runtime failure (also: stdout closed), 2 usage\n"
    "error (a malformed --database-url included).\n";

/* The columns of the table: header and the key of the store's JSON row. */
static const struct {
    const char *head;
    const char *key;
} columns[] = {
    { "LEASE", "leaseId" },       { "ENVIRONMENT", "environment" },
    { "STATUS", "status" },       { "RUN", "heartbeatRunId" },
    { "ISSUE", "issueId" },       { "ACQUIRED", "acquiredAt" },
    { "RELEASED", "releasedAt" }, { "FAILURE", "failureReason" },
};
#define COLUMN_CNT (sizeof(columns) / sizeof(columns[0]))

/* The text of column c of row (a JSON object; null or absent: ""). */
static const char *cell_of(const json_t *row, size_t c, size_t *len)
{
    const json_t *v = json_object_get(row, columns[c].key);

    if (!json_is_string(v)) {
        *len = 0;
        return "";
    }
    *len = json_string_length(v);
    return json_string_value(v);
}

/* One line of cells (row NULL: the header), padded to widths, two spaces
 * apart, without trailing blanks. */
static int put_line(struct er_buf *out, const json_t *row, const int *widths)
{
    size_t c;
    int rc = 0;

    for (c = 0; c < COLUMN_CNT && rc == 0; c++) {
        size_t len = strlen(columns[c].head);
        const char *text =
            row != NULL ? cell_of(row, c, &len) : columns[c].head;

        rc = er_ctl_view_cell(out, text, len, widths[c], c + 1 == COLUMN_CNT);
    }
    while (rc == 0 && out->len > 0 && out->data[out->len - 1] == ' ')
        out->len--;
    if (rc == 0)
        rc = er_buf_append(out, "\n", 1);
    return rc;
}

/* The rows of lines (one JSON object a line) into the array rows. */
static int parse_rows(const struct er_buf *lines, json_t *rows,
                      struct er_err *err)
{
    const char *p = (const char *)lines->data;
    const char *end = p + lines->len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        json_t *row;

        row = json_loadb(p, n, JSON_ALLOW_NUL, NULL);
        if (!json_is_object(row) || json_array_append_new(rows, row) != 0) {
            if (!json_is_object(row))
                json_decref(row);
            return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_FATAL,
                              "leases: a row does not parse");
        }
        p += n + 1;
    }
    return 0;
}

int er_ctl_leases_table(const char *conninfo, const char *company,
                        const char *run, const char *status, int limit,
                        struct er_buf *out, struct er_err *err)
{
    struct er_buf lines;
    json_t *rows = NULL;
    json_t *row;
    int widths[COLUMN_CNT];
    size_t c;
    size_t i;
    int rc;

    er_buf_init(&lines, out->max_len);
    rc =
        er_store_ctl_leases(conninfo, company, run, status, limit, &lines, err);
    if (rc != 0)
        goto out;
    rows = json_array();
    if (rows == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                        "leases: out of memory");
        goto out;
    }
    rc = parse_rows(&lines, rows, err);
    if (rc != 0)
        goto out;
    for (c = 0; c < COLUMN_CNT; c++) {
        widths[c] = (int)strlen(columns[c].head);
        json_array_foreach(rows, i, row)
        {
            size_t len;
            const char *text = cell_of(row, c, &len);
            int w = (int)er_ctl_view_cell_width(text, len);

            if (w > widths[c])
                widths[c] = w;
        }
    }
    rc = put_line(out, NULL, widths);
    json_array_foreach(rows, i, row)
    {
        if (rc == 0)
            rc = put_line(out, row, widths);
    }
    if (rc == 0 && json_array_size(rows) == (size_t)limit)
        rc = er_buf_printf(out,
                           "(first %d leases; narrow with --company, --run "
                           "or --status, or raise --limit)\n",
                           limit);
    if (rc != 0)
        rc = er_err_set(err, rc, ER_ERRCLASS_FATAL, "leases table: %s",
                        er_errname(rc));

out:
    json_decref(rows);
    er_buf_fini(&lines);
    return rc;
}

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
    int rc;
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
    if (status != NULL && strcmp(status, "active") != 0 &&
        strcmp(status, "released") != 0 && strcmp(status, "expired") != 0 &&
        strcmp(status, "failed") != 0) {
        er_ctl_util_usage_error("leases", "--status: expected active, "
                                          "released, expired or failed");
        goto out;
    }
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
    er_ctl_util_sigpipe_ignore();
    if (format != NULL && strcmp(format, "json") == 0) {
        rc = er_store_ctl_leases(url, company, run, status, (int)limit, &table,
                                 &err);
        if (rc == 0 && er_ctl_util_json_escape_controls(&table) != 0)
            rc = er_err_set(&err, ER_E2BIG, ER_ERRCLASS_FATAL,
                            "leases: output too large");
    } else {
        rc = er_ctl_leases_table(url, company, run, status, (int)limit, &table,
                                 &err);
    }
    if (rc != 0) {
        /* A connection string libpq cannot parse is a usage error. */
        if (err.code == ER_EINVAL)
            exit_code = ER_CTL_EXIT_USAGE;
        er_ctl_util_err_print("leases", err.msg);
        goto out;
    }
    if (table.len != 0)
        fwrite(table.data, 1, table.len, stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        er_ctl_util_err_print("leases", "stdout closed");
        goto out;
    }
    exit_code = ER_CTL_EXIT_OK;

out:
    er_buf_fini(&table);
    return exit_code;
}
