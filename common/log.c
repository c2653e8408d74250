/* log: one line per record on stderr, a JSON object or text. The settings
 * are written once before threads start; each line is one write(2), so
 * lines from different threads never interleave. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"

#define LINE_MAX_LEN 4096

static bool log_is_json = true;
static enum er_log_level log_min = ER_LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void er_log_setup(bool is_json, enum er_log_level level)
{
    log_is_json = is_json;
    log_min = level;
}

int er_log_level_parse(const char *s)
{
    size_t i;

    for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

bool er_log_enabled(enum er_log_level level)
{
    return level >= log_min;
}

/* Append s as the inside of a JSON string, escaped, truncating at the cap. */
static void put_json(char *line, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t p = *pos;

    for (; *s != '\0' && p + 8 < LINE_MAX_LEN; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            line[p++] = '\\';
            line[p++] = (char)c;
        } else if (c == '\n') {
            line[p++] = '\\';
            line[p++] = 'n';
        } else if (c < 0x20) {
            line[p++] = '\\';
            line[p++] = 'u';
            line[p++] = '0';
            line[p++] = '0';
            line[p++] = hex[c >> 4];
            line[p++] = hex[c & 0xf];
        } else {
            line[p++] = (char)c;
        }
    }
    *pos = p;
}

static void put_raw(char *line, size_t *pos, const char *s)
{
    size_t p = *pos;

    for (; *s != '\0' && p + 8 < LINE_MAX_LEN; s++)
        line[p++] = *s == '\n' ? ' ' : *s;
    *pos = p;
}

/* The W3C traceparent of the command this thread works on ("" for none):
 * every line the thread writes meanwhile carries it. */
static _Thread_local char log_trace[ER_LOG_TRACE_MAX + 1];

void er_log_set_trace(const char *traceparent)
{
    if (traceparent == NULL || strlen(traceparent) > ER_LOG_TRACE_MAX)
        log_trace[0] = '\0';
    else
        snprintf(log_trace, sizeof(log_trace), "%s", traceparent);
}

static void emit(enum er_log_level level, const char *fac, const char *msg,
                 va_list *kv)
{
    char line[LINE_MAX_LEN];
    char ts[32];
    size_t pos = 0;
    const char *key;
    ssize_t n;

    er_time_iso(er_time_now_ms(), ts);
    if (log_is_json) {
        pos = (size_t)snprintf(line, sizeof(line),
                               "{\"ts\":\"%s\",\"level\":\"%s\",\"fac\":\"", ts,
                               level_names[level]);
        put_json(line, &pos, fac);
        put_raw(line, &pos, "\",\"msg\":\"");
        put_json(line, &pos, msg);
        put_raw(line, &pos, "\"");
        while (kv != NULL && (key = va_arg(*kv, const char *)) != NULL) {
            const char *val = va_arg(*kv, const char *);

            if (val == NULL)
                continue;
            put_raw(line, &pos, ",\"");
            put_json(line, &pos, key);
            put_raw(line, &pos, "\":\"");
            put_json(line, &pos, val);
            put_raw(line, &pos, "\"");
        }
        if (log_trace[0] != '\0') {
            put_raw(line, &pos, ",\"traceparent\":\"");
            put_json(line, &pos, log_trace);
            put_raw(line, &pos, "\"");
        }
        put_raw(line, &pos, "}");
    } else {
        pos = (size_t)snprintf(line, sizeof(line), "%s %-5s [", ts,
                               level_names[level]);
        put_raw(line, &pos, fac);
        put_raw(line, &pos, "] ");
        put_raw(line, &pos, msg);
        while (kv != NULL && (key = va_arg(*kv, const char *)) != NULL) {
            const char *val = va_arg(*kv, const char *);

            if (val == NULL)
                continue;
            put_raw(line, &pos, " ");
            put_raw(line, &pos, key);
            put_raw(line, &pos, "=");
            put_raw(line, &pos, val);
        }
        if (log_trace[0] != '\0') {
            put_raw(line, &pos, " traceparent=");
            put_raw(line, &pos, log_trace);
        }
    }
    line[pos++] = '\n';
    n = write(STDERR_FILENO, line, pos);
    (void)n; /* Nowhere left to report a failed log write. */
}

void er_log(enum er_log_level level, const char *fac, const char *fmt, ...)
{
    char msg[LINE_MAX_LEN / 2];
    va_list ap;

    if (!er_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    emit(level, fac, msg, NULL);
}

void er_log_kv(enum er_log_level level, const char *fac, const char *msg, ...)
{
    va_list ap;

    if (!er_log_enabled(level))
        return;
    va_start(ap, msg);
    emit(level, fac, msg, &ap);
    va_end(ap);
}
