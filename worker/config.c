/* config: the worker's configuration (contract.md 2): ENVRUN_* variables,
 * overridden by kebab-case flags, validated into a struct er_config.
 * Reads the environment, so call it before threads start; owns nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "bridge/bridge.h"
#include "drivers/driver.h"
#include "worker/worker.h"

#define SHOW_MAX 64 /* bytes of a bad value echoed into errline */

/* The options in the order they are validated (and reported). */
enum opt_id {
    OPT_KAFKA_BROKERS,
    OPT_KAFKA_GROUP,
    OPT_KAFKA_PROPS,
    OPT_TOPIC_PREFIX,
    OPT_DATABASE_URL,
    OPT_SCHEMA_REGISTRY_URL,
    OPT_SCHEMA_REGISTRY_CA_FILE,
    OPT_CONCURRENCY,
    OPT_HTTP_ADDR,
    OPT_LOG_FORMAT,
    OPT_LOG_LEVEL,
    OPT_LEASE_TTL_S,
    OPT_DRAIN_S,
    OPT_SECRETS_DIR,
    OPT_WORKSPACE_ROOTS,
    OPT_PAPERCLIP_API_URL,
    OPT_BRIDGE_ALLOWLIST,
    OPT_BRIDGE_TRANSPORT,
    OPT_SANDBOX_DIR,
    OPT_PLUGINS_DIR,
    OPT_CNT,
};

struct opt {
    const char *env;   /* ENVRUN_* */
    const char *flag;  /* without the leading "--" */
    const char *def;   /* NULL: unset */
    bool is_empty_set; /* an empty variable is a value, not "unset" */
};

static const struct opt opts[OPT_CNT] = {
    [OPT_KAFKA_BROKERS] = { "ENVRUN_KAFKA_BROKERS", "kafka-brokers", "",
                            false },
    [OPT_KAFKA_GROUP] = { "ENVRUN_KAFKA_GROUP", "kafka-group", "envrun-workers",
                          false },
    [OPT_KAFKA_PROPS] = { "ENVRUN_KAFKA_PROPS", "kafka-props", "", false },
    [OPT_TOPIC_PREFIX] = { "ENVRUN_TOPIC_PREFIX", "topic-prefix", "envrun.",
                           true },
    [OPT_DATABASE_URL] = { "ENVRUN_DATABASE_URL", "database-url", "", false },
    [OPT_SCHEMA_REGISTRY_URL] = { "ENVRUN_SCHEMA_REGISTRY_URL",
                                  "schema-registry-url", "", false },
    [OPT_SCHEMA_REGISTRY_CA_FILE] = { "ENVRUN_SCHEMA_REGISTRY_CA_FILE",
                                      "schema-registry-ca-file", "", false },
    [OPT_CONCURRENCY] = { "ENVRUN_CONCURRENCY", "concurrency", "16", false },
    [OPT_HTTP_ADDR] = { "ENVRUN_HTTP_ADDR", "http-addr", "127.0.0.1:9464",
                        false },
    [OPT_LOG_FORMAT] = { "ENVRUN_LOG_FORMAT", "log-format", "json", false },
    [OPT_LOG_LEVEL] = { "ENVRUN_LOG_LEVEL", "log-level", "info", false },
    [OPT_LEASE_TTL_S] = { "ENVRUN_LEASE_TTL_S", "lease-ttl-s", "21600", false },
    [OPT_DRAIN_S] = { "ENVRUN_DRAIN_S", "drain-s", "30", false },
    [OPT_SECRETS_DIR] = { "ENVRUN_SECRETS_DIR", "secrets-dir", "", false },
    [OPT_WORKSPACE_ROOTS] = { "ENVRUN_WORKSPACE_ROOTS", "workspace-roots", "",
                              false },
    [OPT_PAPERCLIP_API_URL] = { "ENVRUN_PAPERCLIP_API_URL", "paperclip-api-url",
                                "", false },
    [OPT_BRIDGE_ALLOWLIST] = { "ENVRUN_BRIDGE_ALLOWLIST", "bridge-allowlist",
                               "", false },
    [OPT_BRIDGE_TRANSPORT] = { "ENVRUN_BRIDGE_TRANSPORT", "bridge-transport",
                               "auto", false },
    [OPT_SANDBOX_DIR] = { "ENVRUN_SANDBOX_DIR", "sandbox-dir", "", false },
    [OPT_PLUGINS_DIR] = { "ENVRUN_PLUGINS_DIR", "plugins-dir", "", false },
};

static const char usage_text[] =
    "usage: envrun-worker [--flag=value | --flag value]...\n"
    "\n"
    "Consumes envrun commands from Kafka, runs the environment lifecycle and\n"
    "publishes results. Every setting is an environment variable; the flag\n"
    "of the same name overrides it. An empty variable counts as unset\n"
    "(except ENVRUN_TOPIC_PREFIX, which may be empty).\n"
    "\n"
    "  --kafka-brokers        ENVRUN_KAFKA_BROKERS        (required)\n"
    "      bootstrap servers, host:port[,host:port]; for a throwaway dev\n"
    "      stack run `envrunctl dev` (or `make demo`)\n"
    "  --kafka-group          ENVRUN_KAFKA_GROUP          (envrun-workers)\n"
    "      consumer group id\n"
    "  --kafka-props          ENVRUN_KAFKA_PROPS          (none)\n"
    "      extra librdkafka properties, k=v,k=v (security, timeouts)\n"
    "  --topic-prefix         ENVRUN_TOPIC_PREFIX         (envrun.)\n"
    "      prefix of the topic names; characters [A-Za-z0-9._-]\n"
    "  --database-url         ENVRUN_DATABASE_URL         (required)\n"
    "      libpq connection string or URI\n"
    "  --schema-registry-url  ENVRUN_SCHEMA_REGISTRY_URL  (none)\n"
    "      Confluent-compatible registry, http(s)://, user:password@ for "
    "basic\n"
    "      auth; unset: single-object encoding\n"
    "  --schema-registry-ca-file ENVRUN_SCHEMA_REGISTRY_CA_FILE (system's)\n"
    "      absolute path of the CA bundle an https registry is verified with\n"
    "  --concurrency          ENVRUN_CONCURRENCY          (16)\n"
    "      runs processed at once, 1..1024\n"
    "  --http-addr            ENVRUN_HTTP_ADDR            (127.0.0.1:9464)\n"
    "      host:port or [v6]:port of /metrics, /healthz, /readyz; off:\n"
    "      no endpoint\n"
    "  --log-format           ENVRUN_LOG_FORMAT           (json)\n"
    "      json (one object per line on stderr) or text\n"
    "  --log-level            ENVRUN_LOG_LEVEL            (info)\n"
    "      debug, info, warn or error\n"
    "  --lease-ttl-s          ENVRUN_LEASE_TTL_S          (21600)\n"
    "      seconds after which the reaper expires an untouched active lease,\n"
    "      1..31536000\n"
    "  --drain-s              ENVRUN_DRAIN_S              (30)\n"
    "      on SIGTERM, seconds the steps in flight may take before they are\n"
    "      cancelled and left to the journal, 0..3600\n"
    "  --secrets-dir          ENVRUN_SECRETS_DIR          (none)\n"
    "      absolute directory for file: secret refs, one subdirectory per\n"
    "      company\n"
    "  --workspace-roots      ENVRUN_WORKSPACE_ROOTS      (none)\n"
    "      colon-separated absolute directories that local workspace paths\n"
    "      must lie under; none: no local workspace path is accepted\n"
    "  --paperclip-api-url    ENVRUN_PAPERCLIP_API_URL    (none)\n"
    "      http(s)://host[:port] of the control-plane API the bridge forwards\n"
    "      to (the origin only)\n"
    "  --bridge-allowlist     ENVRUN_BRIDGE_ALLOWLIST     (built in)\n"
    "      absolute path of the bridge's route and header allow-lists, in\n"
    "      the format of bridge/allowlist.txt\n"
    "  --bridge-transport     ENVRUN_BRIDGE_TRANSPORT     (auto)\n"
    "      auto: stream_v1 where the lease can hold a command open (bwrap,\n"
    "      ssh), else queue_v1; queue_v1: always the file queue\n"
    "  --sandbox-dir          ENVRUN_SANDBOX_DIR          "
    "(/var/lib/envrun/sandboxes)\n"
    "      absolute directory the bwrap sandbox provider keeps sandboxes in\n"
    "  --plugins-dir          ENVRUN_PLUGINS_DIR          (none)\n"
    "      absolute directory of sandbox-provider plugins, one subdirectory\n"
    "      each (manifest.json and the worker entry point it names)\n"
    "  --help                 print this text and exit\n"
    "  --version              print the version and exit\n"
    "\n"
    "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration\n"
    "error.\n";

const char *er_config_usage(void)
{
    return usage_text;
}

static void fail(char *errline, size_t errline_len, const char *fmt, ...)
    ER_PRINTF(3, 4);

static void fail(char *errline, size_t errline_len, const char *fmt, ...)
{
    va_list ap;

    if (errline == NULL || errline_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errline, errline_len, fmt, ap);
    va_end(ap);
}

/* A printable, quotable, one-line copy of at most SHOW_MAX bytes of s, so a
 * hostile value cannot break the errline into two. */
static void show(const char *s, char out[SHOW_MAX + 4])
{
    size_t i;

    for (i = 0; s[i] != '\0' && i < SHOW_MAX; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            out[i] = '?';
        else
            out[i] = (char)c;
    }
    if (s[i] != '\0') {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static bool has_ctl(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9');
}

/* Kafka's topic-name alphabet, also used for property keys. */
static bool is_name_char(char c)
{
    return is_alnum(c) || c == '.' || c == '_' || c == '-';
}

bool er_config_is_topic_text(const char *s)
{
    for (; *s != '\0'; s++) {
        if (!is_name_char(*s))
            return false;
    }
    return true;
}

/* Copy val into dst (dst_size bytes) or complain that it is too long. */
static int put_str(char *dst, size_t dst_size, const char *name,
                   const char *val, char *errline, size_t errline_len)
{
    size_t len = strlen(val);

    if (len >= dst_size) {
        fail(errline, errline_len, "%s: too long (max %zu bytes)", name,
             dst_size - 1);
        return -1;
    }
    memcpy(dst, val, len + 1);
    return 0;
}

/* strtoll with every check: whole string, no sign games, range. */
static bool parse_int(const char *s, long long min, long long max,
                      long long *out)
{
    char *end = NULL;
    long long v;

    if (!(s[0] >= '0' && s[0] <= '9') && s[0] != '-')
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool url_is_valid(const char *s)
{
    size_t skip;

    if (strncasecmp(s, "http://", 7) == 0)
        skip = 7;
    else if (strncasecmp(s, "https://", 8) == 0)
        skip = 8;
    else
        return false;
    if (s[skip] == '\0' || s[skip] == '/')
        return false; /* no host */
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* "host:port", "[v6]:port"; 0 when valid, else a complaint for errline. */
static const char *addr_problem(const char *s)
{
    const char *port;
    const char *p;
    long long v;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');

        if (close == NULL || close == s + 1 || close[1] != ':')
            return "must be host:port, [v6]:port or off";
        for (p = s + 1; p < close; p++) {
            if (!is_alnum(*p) && *p != ':' && *p != '.' && *p != '%')
                return "bad character in the [v6] host";
        }
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');

        if (colon == NULL || colon == s)
            return "must be host:port, [v6]:port or off";
        for (p = s; p < colon; p++) {
            if (!is_name_char(*p))
                return "bad character in the host (IPv6 needs [v6]:port)";
        }
        port = colon + 1;
    }
    for (p = port; *p != '\0'; p++) {
        if (!(*p >= '0' && *p <= '9'))
            return "port must be an integer 0..65535";
    }
    if (p == port || p - port > 5 || !parse_int(port, 0, 65535, &v))
        return "port must be an integer 0..65535";
    return NULL;
}

/* Never echoes the value: props carry SASL passwords. */
static int check_props(const char *name, const char *s, char *errline,
                       size_t errline_len)
{
    size_t item = 1;
    const char *p = s;

    if (s[0] == '\0')
        return 0;
    if (has_ctl(s)) {
        fail(errline, errline_len, "%s: contains a control character", name);
        return -1;
    }
    for (;;) {
        const char *end = strchr(p, ',');
        const char *eq = strchr(p, '=');
        const char *k;

        if (end == NULL)
            end = p + strlen(p);
        if (end == p) {
            fail(errline, errline_len,
                 "%s: item %zu is empty (k=v,k=v expected)", name, item);
            return -1;
        }
        if (eq == NULL || eq > end) {
            fail(errline, errline_len,
                 "%s: item %zu has no '=' (k=v,k=v expected)", name, item);
            return -1;
        }
        if (eq == p) {
            fail(errline, errline_len, "%s: item %zu has an empty key", name,
                 item);
            return -1;
        }
        for (k = p; k < eq; k++) {
            if (!is_name_char(*k)) {
                fail(errline, errline_len,
                     "%s: item %zu has a key character outside "
                     "[A-Za-z0-9._-]",
                     name, item);
                return -1;
            }
        }
        if (*end == '\0')
            break;
        p = end + 1;
        item++;
    }
    return 0;
}

/* Never echoes the value: it may hold a password. */
static int check_database_url(const char *name, const char *s, char *errline,
                              size_t errline_len)
{
    if (s[0] == '\0') {
        fail(errline, errline_len,
             "%s: required (a libpq connection string or URI)", name);
        return -1;
    }
    if (strncmp(s, "postgresql://", 13) != 0 &&
        strncmp(s, "postgres://", 11) != 0 && strchr(s, '=') == NULL) {
        fail(errline, errline_len,
             "%s: must be a libpq URI (postgresql://...) or a key=value "
             "connection string",
             name);
        return -1;
    }
    return 0;
}

/* Validate val (from name: a variable, a flag or the default) and store it
 * into cfg. Returns 0, or -1 with errline filled. */
static int apply(struct er_config *cfg, enum opt_id id, const char *name,
                 const char *val, char *errline, size_t errline_len)
{
    char shown[SHOW_MAX + 4];
    long long v = 0;
    int level;

    ER_ASSERT(val != NULL);
    show(val, shown);
    switch (id) {
    case OPT_KAFKA_BROKERS:
        if (val[0] == '\0') {
            fail(errline, errline_len,
                 "%s: required (bootstrap servers host:port; for a "
                 "throwaway dev stack run `envrunctl dev` or `make demo`)",
                 name);
            return -1;
        }
        if (has_ctl(val)) {
            fail(errline, errline_len,
                 "%s: contains a control character (got \"%s\")", name, shown);
            return -1;
        }
        return put_str(cfg->kafka_brokers, sizeof(cfg->kafka_brokers), name,
                       val, errline, errline_len);
    case OPT_KAFKA_GROUP:
        if (val[0] == '\0' || has_ctl(val)) {
            fail(errline, errline_len,
                 "%s: must be a non-empty group id without control "
                 "characters (got \"%s\")",
                 name, shown);
            return -1;
        }
        return put_str(cfg->kafka_group, sizeof(cfg->kafka_group), name, val,
                       errline, errline_len);
    case OPT_KAFKA_PROPS:
        if (strlen(val) >= sizeof(cfg->kafka_props)) {
            fail(errline, errline_len, "%s: too long (max %zu bytes)", name,
                 sizeof(cfg->kafka_props) - 1);
            return -1;
        }
        if (check_props(name, val, errline, errline_len) != 0)
            return -1;
        return put_str(cfg->kafka_props, sizeof(cfg->kafka_props), name, val,
                       errline, errline_len);
    case OPT_TOPIC_PREFIX:
        if (!er_config_is_topic_text(val)) {
            fail(errline, errline_len,
                 "%s: only [A-Za-z0-9._-] allowed (got \"%s\")", name, shown);
            return -1;
        }
        return put_str(cfg->topic_prefix, sizeof(cfg->topic_prefix), name, val,
                       errline, errline_len);
    case OPT_DATABASE_URL:
        if (strlen(val) >= sizeof(cfg->database_url)) {
            fail(errline, errline_len, "%s: too long (max %zu bytes)", name,
                 sizeof(cfg->database_url) - 1);
            return -1;
        }
        if (check_database_url(name, val, errline, errline_len) != 0)
            return -1;
        return put_str(cfg->database_url, sizeof(cfg->database_url), name, val,
                       errline, errline_len);
    case OPT_SCHEMA_REGISTRY_URL:
        /* URLs are not echoed: they may carry user:password@. */
        if (val[0] != '\0' && !url_is_valid(val)) {
            fail(errline, errline_len, "%s: must be an http:// or https:// URL",
                 name);
            return -1;
        }
        return put_str(cfg->schema_registry_url,
                       sizeof(cfg->schema_registry_url), name, val, errline,
                       errline_len);
    case OPT_SCHEMA_REGISTRY_CA_FILE: {
        struct stat st;

        if (val[0] != '\0' && (val[0] != '/' || has_ctl(val) ||
                               stat(val, &st) != 0 || !S_ISREG(st.st_mode))) {
            fail(errline, errline_len,
                 "%s: must be the absolute path of a readable file (got "
                 "\"%s\")",
                 name, shown);
            return -1;
        }
        return put_str(cfg->schema_registry_ca_file,
                       sizeof(cfg->schema_registry_ca_file), name, val, errline,
                       errline_len);
    }
    case OPT_CONCURRENCY:
        if (!parse_int(val, 1, 1024, &v)) {
            fail(errline, errline_len,
                 "%s: must be an integer 1..1024 (got \"%s\")", name, shown);
            return -1;
        }
        cfg->concurrency = (int)v;
        return 0;
    case OPT_HTTP_ADDR: {
        const char *problem;

        if (strcmp(val, "off") == 0) {
            cfg->http_addr[0] = '\0';
            return 0;
        }
        problem = addr_problem(val);
        if (problem != NULL) {
            fail(errline, errline_len, "%s: %s (got \"%s\")", name, problem,
                 shown);
            return -1;
        }
        return put_str(cfg->http_addr, sizeof(cfg->http_addr), name, val,
                       errline, errline_len);
    }
    case OPT_LOG_FORMAT:
        if (strcmp(val, "json") != 0 && strcmp(val, "text") != 0) {
            fail(errline, errline_len, "%s: must be json or text (got \"%s\")",
                 name, shown);
            return -1;
        }
        cfg->log_is_json = strcmp(val, "json") == 0;
        return 0;
    case OPT_LOG_LEVEL:
        level = er_log_level_parse(val);
        if (level < 0) {
            fail(errline, errline_len,
                 "%s: must be debug, info, warn or error (got \"%s\")", name,
                 shown);
            return -1;
        }
        cfg->log_level = (enum er_log_level)level;
        return 0;
    case OPT_LEASE_TTL_S:
        if (!parse_int(val, 1, 31536000, &v)) {
            fail(errline, errline_len,
                 "%s: must be an integer 1..31536000 (got \"%s\")", name,
                 shown);
            return -1;
        }
        cfg->lease_ttl_s = (int64_t)v;
        return 0;
    case OPT_DRAIN_S:
        if (!parse_int(val, 0, 3600, &v)) {
            fail(errline, errline_len,
                 "%s: must be an integer 0..3600 (got \"%s\")", name, shown);
            return -1;
        }
        cfg->drain_s = (int)v;
        return 0;
    case OPT_SECRETS_DIR:
        if (val[0] != '\0' && (val[0] != '/' || has_ctl(val))) {
            fail(errline, errline_len,
                 "%s: must be an absolute path (got \"%s\")", name, shown);
            return -1;
        }
        return put_str(cfg->secrets_dir, sizeof(cfg->secrets_dir), name, val,
                       errline, errline_len);
    case OPT_WORKSPACE_ROOTS: {
        struct er_err rerr;

        er_err_clear(&rerr);
        if (has_ctl(val) || er_wspath_roots_check(val, &rerr) != 0) {
            fail(errline, errline_len,
                 "%s: must be colon-separated absolute paths of existing "
                 "directories (%s)",
                 name, has_ctl(val) ? "control character" : rerr.msg);
            return -1;
        }
        return put_str(cfg->workspace_roots, sizeof(cfg->workspace_roots), name,
                       val, errline, errline_len);
    }
    case OPT_PAPERCLIP_API_URL: {
        struct er_err uerr;

        if (val[0] != '\0' && !url_is_valid(val)) {
            fail(errline, errline_len, "%s: must be an http:// or https:// URL",
                 name);
            return -1;
        }
        if (val[0] != '\0' && er_bridge_origin_check(val, &uerr) != 0) {
            fail(errline, errline_len, "%s", uerr.msg);
            return -1;
        }
        return put_str(cfg->paperclip_api_url, sizeof(cfg->paperclip_api_url),
                       name, val, errline, errline_len);
    }
    case OPT_BRIDGE_ALLOWLIST: {
        struct er_bridge_allow *allow = NULL;
        struct er_err aerr;

        if (val[0] != '\0' && (val[0] != '/' || has_ctl(val))) {
            fail(errline, errline_len,
                 "%s: must be an absolute path (got \"%s\")", name, shown);
            return -1;
        }
        /* Read now, so a bad list stops the worker at start. */
        if (val[0] != '\0' && er_bridge_allow_load(val, &allow, &aerr) != 0) {
            fail(errline, errline_len, "%s: %s", name, aerr.msg);
            return -1;
        }
        er_bridge_allow_free(allow);
        return put_str(cfg->bridge_allowlist, sizeof(cfg->bridge_allowlist),
                       name, val, errline, errline_len);
    }
    case OPT_BRIDGE_TRANSPORT:
        if (strcmp(val, "auto") != 0 && strcmp(val, "queue_v1") != 0) {
            fail(errline, errline_len,
                 "%s: must be auto or queue_v1 (got \"%s\")", name, shown);
            return -1;
        }
        cfg->bridge_queue_only = strcmp(val, "queue_v1") == 0;
        return 0;
    case OPT_SANDBOX_DIR:
        if (val[0] != '\0' && (val[0] != '/' || has_ctl(val))) {
            fail(errline, errline_len,
                 "%s: must be an absolute path (got \"%s\")", name, shown);
            return -1;
        }
        return put_str(cfg->sandbox_dir, sizeof(cfg->sandbox_dir), name, val,
                       errline, errline_len);
    case OPT_PLUGINS_DIR: {
        struct stat st;

        if (val[0] != '\0' && (val[0] != '/' || has_ctl(val) ||
                               stat(val, &st) != 0 || !S_ISDIR(st.st_mode))) {
            fail(errline, errline_len,
                 "%s: must be the absolute path of a directory (got \"%s\")",
                 name, shown);
            return -1;
        }
        return put_str(cfg->plugins_dir, sizeof(cfg->plugins_dir), name, val,
                       errline, errline_len);
    }
    case OPT_CNT:
        break;
    }
    ER_ASSERT(0 && "unknown option");
    return -1;
}

static int find_flag(const char *name, size_t name_len)
{
    int i;

    for (i = 0; i < OPT_CNT; i++) {
        if (strlen(opts[i].flag) == name_len &&
            memcmp(opts[i].flag, name, name_len) == 0)
            return i;
    }
    return -1;
}

enum er_config_status er_config_load(struct er_config *cfg, int argc,
                                     char **argv, char *errline,
                                     size_t errline_len)
{
    const char *vals[OPT_CNT];
    const char *names[OPT_CNT];
    char flag_names[OPT_CNT][64];
    int i;

    ER_ASSERT(cfg != NULL);
    memset(cfg, 0, sizeof(*cfg));
    if (errline != NULL && errline_len != 0)
        errline[0] = '\0';

    for (i = 0; i < OPT_CNT; i++) {
        const char *env = getenv(opts[i].env);

        vals[i] = opts[i].def;
        names[i] = opts[i].env;
        if (env != NULL && (env[0] != '\0' || opts[i].is_empty_set))
            vals[i] = env;
        snprintf(flag_names[i], sizeof(flag_names[i]), "--%s", opts[i].flag);
    }

    for (i = 1; i < argc && argv != NULL && argv[i] != NULL; i++) {
        const char *arg = argv[i];
        const char *name;
        const char *eq;
        size_t name_len;
        int id;

        if (strncmp(arg, "--", 2) != 0) {
            fail(errline, errline_len,
                 "argument %d: unexpected (flags start with --, see --help)",
                 i);
            return ER_CONFIG_INVALID;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        if (eq == NULL && strcmp(name, "help") == 0)
            return ER_CONFIG_HELP;
        if (eq == NULL && strcmp(name, "version") == 0)
            return ER_CONFIG_VERSION;
        id = find_flag(name, name_len);
        if (id < 0) {
            /* Show only the name: a mistyped flag's value may be secret. */
            char flag[SHOW_MAX + 4];
            char *p;

            show(arg, flag);
            p = strchr(flag, '=');
            if (p != NULL)
                *p = '\0';
            fail(errline, errline_len, "%s: unknown flag (see --help)", flag);
            return ER_CONFIG_INVALID;
        }
        names[id] = flag_names[id];
        if (eq != NULL) {
            vals[id] = eq + 1;
            continue;
        }
        if (i + 1 >= argc || argv[i + 1] == NULL ||
            strncmp(argv[i + 1], "--", 2) == 0) {
            fail(errline, errline_len, "%s: missing value", flag_names[id]);
            return ER_CONFIG_INVALID;
        }
        vals[id] = argv[++i];
    }

    for (i = 0; i < OPT_CNT; i++) {
        if (apply(cfg, (enum opt_id)i, names[i], vals[i], errline,
                  errline_len) != 0)
            return ER_CONFIG_INVALID;
    }
    return ER_CONFIG_OK;
}

void er_config_topic(const struct er_config *cfg, const char *suffix, char *out,
                     size_t out_len)
{
    int n;

    ER_ASSERT(cfg != NULL && suffix != NULL && out != NULL && out_len != 0);
    n = snprintf(out, out_len, "%s%s", cfg->topic_prefix, suffix);
    ER_ASSERT(n >= 0 && (size_t)n < out_len);
}
