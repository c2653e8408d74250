/* ctl_view: how envrunctl shows records: the filters of tail (on the
 * decoded value's fields) and the aligned table of each topic. Pure
 * functions over jansson values and buffers; no state. */
#include <string.h>

#include "ctl/ctl_int.h"

/* One table column: a header and where its cell comes from in the JSON
 * line of a record (er_ctl_util_record_json), as a path of object keys
 * separated by '/' (header names hold dots). A time column holds ms since
 * the epoch, shown as ISO 8601. width 0: the last column, unpadded. */
struct column {
    const char *head;
    const char *path;
    int width;
    bool is_time;
};

#define UUID_W 36
#define TIME_W 24

static const struct column results_cols[] = {
    { "TIME", "value/completedAt", TIME_W, true },
    { "KIND", "value/kind", 8, false },
    { "OUTCOME", "value/outcome", 8, false },
    { "ERROR_CODE", "value/errorCode", 31, false },
    { "RUN", "value/heartbeatRunId", UUID_W, false },
    { "LEASE", "value/leaseId", UUID_W, false },
    { "COMMAND", "value/commandId", 0, false },
    { NULL, NULL, 0, false },
};

static const struct column commands_cols[] = {
    { "TIME", "value/issuedAt", TIME_W, true },
    { "TYPE", "value/command/type", 14, false },
    { "COMPANY", "value/companyId", UUID_W, false },
    { "RUN", "value/heartbeatRunId", UUID_W, false },
    { "LEASE", "value/command/leaseId", UUID_W, false },
    { "COMMAND", "value/commandId", 0, false },
    { NULL, NULL, 0, false },
};

static const struct column lease_events_cols[] = {
    { "TIME", "value/occurredAt", TIME_W, true },
    { "STATUS", "value/status", 9, false },
    { "LEASE", "value/leaseId", UUID_W, false },
    { "RUN", "value/heartbeatRunId", UUID_W, false },
    { "ENVIRONMENT", "value/environmentId", 0, false },
    { NULL, NULL, 0, false },
};

static const struct column activity_cols[] = {
    { "TIME", "value/createdAt", TIME_W, true },
    { "ACTION", "value/action", 24, false },
    { "ENTITY_TYPE", "value/entityType", 18, false },
    { "ENTITY", "value/entityId", UUID_W, false },
    { "RUN", "value/runId", 0, false },
    { NULL, NULL, 0, false },
};

static const struct column dlq_cols[] = {
    { "PARTITION", "partition", 9, false },
    { "OFFSET", "offset", 8, false },
    { "CODE", "headers/envrun.error.code", 15, false },
    { "KEY", "key", UUID_W, false },
    { "ERROR", "headers/envrun.error", 0, false },
    { NULL, NULL, 0, false },
};

static const struct column other_cols[] = {
    { "PARTITION", "partition", 9, false },
    { "OFFSET", "offset", 8, false },
    { "KEY", "key", 0, false },
    { NULL, NULL, 0, false },
};

int er_ctl_view_format_parse(const char *s, enum er_ctl_format *format)
{
    if (s == NULL || strcmp(s, "json") == 0)
        *format = ER_CTL_FORMAT_JSON;
    else if (strcmp(s, "table") == 0)
        *format = ER_CTL_FORMAT_TABLE;
    else
        return ER_EINVAL;
    return 0;
}

bool er_ctl_view_filter_is_set(const struct er_ctl_filter *filter)
{
    return filter->run != NULL || filter->lease != NULL ||
           filter->company != NULL || filter->outcome != NULL;
}

/* Whether obj's field name (or, when obj lacks it, alt's field alt_name)
 * is the string want. */
static bool field_is(const json_t *obj, const char *name, const json_t *alt,
                     const char *alt_name, const char *want)
{
    const json_t *v = json_object_get(obj, name);

    if (v == NULL && alt != NULL)
        v = json_object_get(alt, alt_name);
    /* The length too: a value with a NUL in it is not want. */
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           memcmp(json_string_value(v), want, strlen(want)) == 0;
}

bool er_ctl_view_filter_match(const struct er_ctl_filter *filter,
                              const json_t *value)
{
    const json_t *command;

    if (!er_ctl_view_filter_is_set(filter))
        return true;
    if (!json_is_object(value))
        return false;
    command = json_object_get(value, "command");
    if (!json_is_object(command))
        command = NULL;
    if (filter->run != NULL &&
        !field_is(value, "heartbeatRunId", value, "runId", filter->run))
        return false;
    if (filter->lease != NULL &&
        !field_is(value, "leaseId", command, "leaseId", filter->lease))
        return false;
    if (filter->company != NULL &&
        !field_is(value, "companyId", NULL, NULL, filter->company))
        return false;
    if (filter->outcome != NULL &&
        !field_is(value, "outcome", NULL, NULL, filter->outcome))
        return false;
    return true;
}

static const struct column *columns_of(const char *topic_short)
{
    size_t n = strlen(topic_short);

    if (strcmp(topic_short, "results") == 0)
        return results_cols;
    if (strcmp(topic_short, "commands") == 0)
        return commands_cols;
    if (strcmp(topic_short, "lease-events") == 0)
        return lease_events_cols;
    if (strcmp(topic_short, "activity") == 0)
        return activity_cols;
    if (n >= 4 && strcmp(topic_short + n - 4, ".dlq") == 0)
        return dlq_cols;
    return other_cols;
}

/* Follow path ("a/b/c") from record; NULL when a step is missing. */
static const json_t *lookup(const json_t *record, const char *path)
{
    const json_t *v = record;
    char key[128];

    while (v != NULL && *path != '\0') {
        size_t n = strcspn(path, "/");

        if (n >= sizeof(key))
            return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        v = json_is_object(v) ? json_object_get(v, key) : NULL;
        path += n;
        if (*path == '/')
            path++;
    }
    return v;
}

/* The next character of a cell at s (n > 0 bytes left): *step receives
 * how many bytes it takes; true when it may be shown as it is, false when
 * it is to be shown as '?' (see er_ctl_view_cell). */
static bool next_char(const uint8_t *s, size_t n, size_t *step)
{
    size_t len = er_ctl_util_utf8_len(s, n);

    *step = len != 0 ? len : 1;
    if (len == 0 || s[0] < 0x20 || s[0] == 0x7f)
        return false; /* not UTF-8, C0 controls, DEL */
    if (len == 2 && s[0] == 0xc2 && s[1] < 0xa0)
        return false; /* C1 controls U+0080..U+009F (U+009B: CSI) */
    if (len == 3 && s[0] == 0xe2 && s[1] == 0x80 && s[2] >= 0xa8 &&
        s[2] <= 0xae)
        return false; /* U+2028..U+202E: line breaks, bidi embeddings */
    if (len == 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] >= 0xa6 &&
        s[2] <= 0xa9)
        return false; /* U+2066..U+2069: bidi isolates */
    return true;
}

size_t er_ctl_view_cell_width(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t width = 0;
    size_t i = 0;

    while (i < len) {
        size_t step;

        (void)next_char(p + i, len - i, &step);
        i += step;
        width++;
    }
    return width;
}

int er_ctl_view_cell(struct er_buf *out, const char *s, size_t len, int width,
                     bool is_last)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t shown = 0;
    size_t i = 0;
    int rc = 0;

    while (i < len && rc == 0) {
        size_t step;

        if (next_char(p + i, len - i, &step))
            rc = er_buf_append(out, p + i, step);
        else
            rc = er_buf_append(out, "?", 1);
        i += step;
        shown++;
    }
    if (is_last)
        return rc;
    for (; width > 0 && shown < (size_t)width && rc == 0; shown++)
        rc = er_buf_append(out, " ", 1);
    if (rc == 0)
        rc = er_buf_append(out, "  ", 2);
    return rc;
}

int er_ctl_view_table_head(const char *topic_short, struct er_buf *out)
{
    const struct column *cols = columns_of(topic_short);
    size_t i;
    int rc = 0;

    for (i = 0; cols[i].head != NULL && rc == 0; i++)
        rc = er_ctl_view_cell(out, cols[i].head, strlen(cols[i].head),
                              cols[i].width, cols[i + 1].head == NULL);
    return rc;
}

int er_ctl_view_table_row(const char *topic_short, const json_t *record,
                          struct er_buf *out)
{
    const struct column *cols = columns_of(topic_short);
    size_t i;
    int rc = 0;

    for (i = 0; cols[i].head != NULL && rc == 0; i++) {
        const json_t *v = lookup(record, cols[i].path);
        bool is_last = cols[i + 1].head == NULL;
        char num[32];
        const char *text = "-";
        size_t len = 1;

        if (json_is_string(v)) {
            text = json_string_value(v);
            len = json_string_length(v); /* NULs included: shown as '?' */
        } else if (json_is_integer(v) && cols[i].is_time) {
            er_time_iso((int64_t)json_integer_value(v), num);
            text = num;
            len = strlen(num);
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%lld",
                     (long long)json_integer_value(v));
            text = num;
            len = strlen(num);
        }
        rc = er_ctl_view_cell(out, text, len, cols[i].width, is_last);
    }
    return rc;
}
