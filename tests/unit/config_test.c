/* config_test: defaults, every variable's bad values, flags over variables,
 * both flag forms, unknown and valueless flags, secrets kept out of errline,
 * --help and --version. Single-threaded; changes the environment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "worker/worker.h"

#define DB_URL   "postgresql://envrun:hunter2pw@db.example:5432/envrun"
#define ARGV_MAX 16

static const char *const all_vars[] = {
    "ENVRUN_KAFKA_BROKERS",     "ENVRUN_KAFKA_GROUP",
    "ENVRUN_KAFKA_PROPS",       "ENVRUN_TOPIC_PREFIX",
    "ENVRUN_DATABASE_URL",      "ENVRUN_SCHEMA_REGISTRY_URL",
    "ENVRUN_CONCURRENCY",       "ENVRUN_HTTP_ADDR",
    "ENVRUN_LOG_FORMAT",        "ENVRUN_LOG_LEVEL",
    "ENVRUN_LEASE_TTL_S",       "ENVRUN_SECRETS_DIR",
    "ENVRUN_PAPERCLIP_API_URL", "ENVRUN_WORKSPACE_ROOTS",
    "ENVRUN_BRIDGE_ALLOWLIST",
};

static int setup(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++)
        unsetenv(all_vars[i]);
    setenv("ENVRUN_DATABASE_URL", DB_URL, 1);
    setenv("ENVRUN_KAFKA_BROKERS", "localhost:9092", 1);
    return 0;
}

#define ARGS(...) ((char *[]){ __VA_ARGS__, NULL })

/* Load with argv = { "envrun-worker", args..., NULL }; args may be NULL. */
static enum er_config_status load(struct er_config *cfg, char *errline,
                                  size_t errline_len, char **args)
{
    char *argv[ARGV_MAX + 2];
    int argc = 0;

    argv[argc++] = "envrun-worker";
    for (; args != NULL && *args != NULL; args++) {
        assert_true(argc <= ARGV_MAX);
        argv[argc++] = *args;
    }
    argv[argc] = NULL;
    memset(errline, 'Z', errline_len);
    errline[errline_len - 1] = '\0';
    return er_config_load(cfg, argc, argv, errline, errline_len);
}

/* errline is one line that starts with name and contains what. */
static void assert_errline(const char *errline, const char *name,
                           const char *what)
{
    assert_non_null(errline);
    assert_null(strchr(errline, '\n'));
    assert_int_equal(strncmp(errline, name, strlen(name)), 0);
    assert_true(errline[strlen(name)] == ':');
    if (what != NULL && strstr(errline, what) == NULL)
        fail_msg("errline \"%s\" lacks \"%s\"", errline, what);
}

static void env_is_bad(const char *var, const char *val, const char *what)
{
    struct er_config cfg;
    char errline[512];

    setup(NULL);
    setenv(var, val, 1);
    if (load(&cfg, errline, sizeof(errline), NULL) != ER_CONFIG_INVALID)
        fail_msg("%s=\"%s\" was accepted", var, val);
    assert_errline(errline, var, what);
}

static void flag_is_bad(const char *flag, const char *val, const char *what)
{
    struct er_config cfg;
    char errline[512];
    char arg[2048];

    setup(NULL);
    snprintf(arg, sizeof(arg), "%s=%s", flag, val);
    if (load(&cfg, errline, sizeof(errline), ARGS(arg)) != ER_CONFIG_INVALID)
        fail_msg("%s was accepted", arg);
    assert_errline(errline, flag, what);
}

static void config_defaults(void **state)
{
    struct er_config cfg;
    char errline[256];
    char topic[256];

    (void)state;
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL), ER_CONFIG_OK);
    assert_string_equal(errline, "");
    assert_string_equal(cfg.kafka_brokers, "localhost:9092");
    assert_string_equal(cfg.kafka_group, "envrun-workers");
    assert_string_equal(cfg.kafka_props, "");
    assert_string_equal(cfg.topic_prefix, "envrun.");
    assert_string_equal(cfg.database_url, DB_URL);
    assert_string_equal(cfg.schema_registry_url, "");
    assert_int_equal(cfg.concurrency, 16);
    assert_string_equal(cfg.http_addr, "127.0.0.1:9464");
    assert_true(cfg.log_is_json);
    assert_int_equal(cfg.log_level, ER_LOG_INFO);
    assert_int_equal(cfg.lease_ttl_s, 21600);
    assert_string_equal(cfg.secrets_dir, "");
    assert_string_equal(cfg.workspace_roots, "");
    assert_string_equal(cfg.paperclip_api_url, "");
    er_config_topic(&cfg, "commands", topic, sizeof(topic));
    assert_string_equal(topic, "envrun.commands");
}

static void config_reads_every_variable(void **state)
{
    struct er_config cfg;
    char errline[256];
    char topic[64];

    (void)state;
    setenv("ENVRUN_KAFKA_BROKERS", "k1:9092,k2:9092", 1);
    setenv("ENVRUN_KAFKA_GROUP", "g1", 1);
    setenv("ENVRUN_KAFKA_PROPS",
           "security.protocol=SASL_SSL,sasl.password=", 1);
    setenv("ENVRUN_TOPIC_PREFIX", "", 1);
    setenv("ENVRUN_SCHEMA_REGISTRY_URL", "http://registry:8081", 1);
    setenv("ENVRUN_CONCURRENCY", "1024", 1);
    setenv("ENVRUN_HTTP_ADDR", "[::1]:0", 1);
    setenv("ENVRUN_LOG_FORMAT", "text", 1);
    setenv("ENVRUN_LOG_LEVEL", "debug", 1);
    setenv("ENVRUN_LEASE_TTL_S", "31536000", 1);
    setenv("ENVRUN_SECRETS_DIR", "/run/secrets", 1);
    setenv("ENVRUN_PAPERCLIP_API_URL", "https://paperclip.example:8443", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL), ER_CONFIG_OK);
    assert_string_equal(cfg.kafka_brokers, "k1:9092,k2:9092");
    assert_string_equal(cfg.kafka_group, "g1");
    assert_string_equal(cfg.kafka_props,
                        "security.protocol=SASL_SSL,sasl.password=");
    assert_string_equal(cfg.topic_prefix, "");
    assert_string_equal(cfg.schema_registry_url, "http://registry:8081");
    assert_int_equal(cfg.concurrency, 1024);
    assert_string_equal(cfg.http_addr, "[::1]:0");
    assert_false(cfg.log_is_json);
    assert_int_equal(cfg.log_level, ER_LOG_DEBUG);
    assert_int_equal(cfg.lease_ttl_s, 31536000);
    assert_string_equal(cfg.secrets_dir, "/run/secrets");
    assert_string_equal(cfg.paperclip_api_url,
                        "https://paperclip.example:8443");
    er_config_topic(&cfg, "commands.dlq", topic, sizeof(topic));
    assert_string_equal(topic, "commands.dlq");

    /* Empty variables count as unset, so the defaults come back. */
    setenv("ENVRUN_CONCURRENCY", "", 1);
    setenv("ENVRUN_HTTP_ADDR", "", 1);
    setenv("ENVRUN_KAFKA_GROUP", "", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL), ER_CONFIG_OK);
    assert_int_equal(cfg.concurrency, 16);
    assert_string_equal(cfg.http_addr, "127.0.0.1:9464");
    assert_string_equal(cfg.kafka_group, "envrun-workers");

    setenv("ENVRUN_HTTP_ADDR", "off", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL), ER_CONFIG_OK);
    assert_string_equal(cfg.http_addr, "");
}

static void config_rejects_every_bad_variable(void **state)
{
    char long_val[ER_CONFIG_STR_MAX + 8];

    (void)state;
    memset(long_val, 'a', sizeof(long_val) - 1);
    long_val[sizeof(long_val) - 1] = '\0';

    env_is_bad("ENVRUN_KAFKA_BROKERS", long_val, "too long");
    env_is_bad("ENVRUN_KAFKA_BROKERS", "k1:9092\nX", "control");
    env_is_bad("ENVRUN_KAFKA_GROUP", long_val, NULL);
    env_is_bad("ENVRUN_KAFKA_GROUP", "g\t1", NULL);
    env_is_bad("ENVRUN_KAFKA_PROPS", "novalue", "'='");
    env_is_bad("ENVRUN_KAFKA_PROPS", "=v", "empty key");
    env_is_bad("ENVRUN_KAFKA_PROPS", "a=b,,c=d", "item 2 is empty");
    env_is_bad("ENVRUN_KAFKA_PROPS", "a=b,", "item 2 is empty");
    env_is_bad("ENVRUN_KAFKA_PROPS", "a=b, c=d", "key character");
    env_is_bad("ENVRUN_KAFKA_PROPS", long_val, "too long");
    env_is_bad("ENVRUN_TOPIC_PREFIX", "env run", "[A-Za-z0-9._-]");
    env_is_bad("ENVRUN_TOPIC_PREFIX", "envrun/", "[A-Za-z0-9._-]");
    env_is_bad("ENVRUN_TOPIC_PREFIX", long_val, "too long");
    env_is_bad("ENVRUN_DATABASE_URL", "", "required");
    env_is_bad("ENVRUN_DATABASE_URL", "just-a-word", "libpq");
    env_is_bad("ENVRUN_DATABASE_URL", long_val, "too long");
    env_is_bad("ENVRUN_SCHEMA_REGISTRY_URL", "ftp://r", "http");
    env_is_bad("ENVRUN_SCHEMA_REGISTRY_URL", "http://", "http");
    env_is_bad("ENVRUN_SCHEMA_REGISTRY_URL", "registry:8081", "http");
    env_is_bad("ENVRUN_CONCURRENCY", "abc", "1..1024 (got \"abc\")");
    env_is_bad("ENVRUN_CONCURRENCY", "0", "1..1024");
    env_is_bad("ENVRUN_CONCURRENCY", "1025", "1..1024");
    env_is_bad("ENVRUN_CONCURRENCY", "-1", "1..1024");
    env_is_bad("ENVRUN_CONCURRENCY", " 16", "1..1024");
    env_is_bad("ENVRUN_CONCURRENCY", "16x", "1..1024");
    env_is_bad("ENVRUN_CONCURRENCY", "99999999999999999999999", "1..1024");
    env_is_bad("ENVRUN_HTTP_ADDR", "localhost", "host:port");
    env_is_bad("ENVRUN_HTTP_ADDR", ":9464", "host:port");
    env_is_bad("ENVRUN_HTTP_ADDR", "h:65536", "0..65535");
    env_is_bad("ENVRUN_HTTP_ADDR", "h:", "0..65535");
    env_is_bad("ENVRUN_HTTP_ADDR", "h:+80", "0..65535");
    env_is_bad("ENVRUN_HTTP_ADDR", "::1:80", "[v6]");
    env_is_bad("ENVRUN_HTTP_ADDR", "[::1]80", "host:port");
    env_is_bad("ENVRUN_HTTP_ADDR", "[]:80", "host:port");
    env_is_bad("ENVRUN_LOG_FORMAT", "xml", "json or text");
    env_is_bad("ENVRUN_LOG_LEVEL", "trace", "debug, info, warn or error");
    env_is_bad("ENVRUN_LEASE_TTL_S", "0", "1..31536000");
    env_is_bad("ENVRUN_LEASE_TTL_S", "31536001", "1..31536000");
    env_is_bad("ENVRUN_LEASE_TTL_S", "1h", "1..31536000");
    env_is_bad("ENVRUN_SECRETS_DIR", "relative/dir", "absolute");
    env_is_bad("ENVRUN_WORKSPACE_ROOTS", "/srv/ws:relative", "absolute");
    env_is_bad("ENVRUN_WORKSPACE_ROOTS", "work", "absolute");
    env_is_bad("ENVRUN_WORKSPACE_ROOTS", "/tmp:/no/such/dir/here", "exist");
    env_is_bad("ENVRUN_PAPERCLIP_API_URL", "paperclip", "http");
    env_is_bad("ENVRUN_PAPERCLIP_API_URL", "https://paperclip.example/api",
               "the origin only");
    env_is_bad("ENVRUN_BRIDGE_ALLOWLIST", "allow.txt", "absolute");
    env_is_bad("ENVRUN_BRIDGE_ALLOWLIST", "/no/such/allowlist.txt",
               "ENVRUN_BRIDGE_ALLOWLIST: /no/such/allowlist.txt: ");
}

static void config_rejects_bad_flags(void **state)
{
    (void)state;
    flag_is_bad("--kafka-group", "", "non-empty");
    flag_is_bad("--kafka-props", "x", "'='");
    flag_is_bad("--topic-prefix", "a b", "[A-Za-z0-9._-]");
    flag_is_bad("--database-url", "", "required");
    flag_is_bad("--schema-registry-url", "x", "http");
    flag_is_bad("--concurrency", "abc",
                "must be an integer 1..1024 (got \"abc\")");
    flag_is_bad("--concurrency", "", "1..1024");
    flag_is_bad("--http-addr", "nope", "host:port");
    flag_is_bad("--log-format", "JSON", "json or text");
    flag_is_bad("--log-level", "", "debug");
    flag_is_bad("--lease-ttl-s", "-5", "1..31536000");
    flag_is_bad("--secrets-dir", "x", "absolute");
    flag_is_bad("--workspace-roots", "/a:b", "absolute");
    flag_is_bad("--paperclip-api-url", "x", "http");
}

static void config_flags_override_variables(void **state)
{
    struct er_config cfg;
    char errline[256];

    (void)state;
    setenv("ENVRUN_CONCURRENCY", "8", 1);
    setenv("ENVRUN_LOG_LEVEL", "warn", 1);
    setenv("ENVRUN_TOPIC_PREFIX", "prod.", 1);
    assert_int_equal(
        load(&cfg, errline, sizeof(errline),
             ARGS("--concurrency=4", "--log-level", "error",
                  "--topic-prefix=", "--kafka-brokers", "b:9092",
                  "--database-url", "host=db dbname=envrun", "--http-addr=off",
                  "--lease-ttl-s=60", "--kafka-group", "g2")),
        ER_CONFIG_OK);
    assert_int_equal(cfg.concurrency, 4);
    assert_int_equal(cfg.log_level, ER_LOG_ERROR);
    assert_string_equal(cfg.topic_prefix, "");
    assert_string_equal(cfg.kafka_brokers, "b:9092");
    assert_string_equal(cfg.database_url, "host=db dbname=envrun");
    assert_string_equal(cfg.http_addr, "");
    assert_int_equal(cfg.lease_ttl_s, 60);
    assert_string_equal(cfg.kafka_group, "g2");

    /* A bad variable that a flag overrides is never looked at. */
    setenv("ENVRUN_CONCURRENCY", "lots", 1);
    assert_int_equal(
        load(&cfg, errline, sizeof(errline), ARGS("--concurrency", "2")),
        ER_CONFIG_OK);
    assert_int_equal(cfg.concurrency, 2);
    /* Without the flag, the variable is named. */
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_CONCURRENCY", "lots");
    /* The last of repeated flags wins. */
    setenv("ENVRUN_CONCURRENCY", "8", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--concurrency=3", "--concurrency", "5")),
                     ER_CONFIG_OK);
    assert_int_equal(cfg.concurrency, 5);
}

static void config_database_url_from_flag_only(void **state)
{
    struct er_config cfg;
    char errline[256];

    (void)state;
    unsetenv("ENVRUN_DATABASE_URL");
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_string_equal(
        errline,
        "ENVRUN_DATABASE_URL: required (a libpq connection string or URI)");
    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--database-url=postgres://h/db")),
                     ER_CONFIG_OK);
    assert_string_equal(cfg.database_url, "postgres://h/db");
}

static void config_rejects_unknown_and_valueless_flags(void **state)
{
    struct er_config cfg;
    char errline[256];

    (void)state;
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS("--bogus")),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "--bogus", "unknown flag");
    /* Only the name of an unknown flag is shown, never its value. */
    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--databse-url=postgres://u:s3cretpw@h/db")),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "--databse-url", "unknown flag");
    assert_null(strstr(errline, "s3cretpw"));
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS("-h")),
                     ER_CONFIG_INVALID);
    assert_null(strchr(errline, '\n'));
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS("positional")),
                     ER_CONFIG_INVALID);
    assert_non_null(strstr(errline, "unexpected"));
    assert_int_equal(
        load(&cfg, errline, sizeof(errline), ARGS("--concurrency")),
        ER_CONFIG_INVALID);
    assert_string_equal(errline, "--concurrency: missing value");
    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--kafka-group", "--concurrency=3")),
                     ER_CONFIG_INVALID);
    assert_string_equal(errline, "--kafka-group: missing value");
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS("--help=yes")),
                     ER_CONFIG_INVALID);
    assert_null(strchr(errline, '\n'));
}

static void config_rejects_too_long_flag_values(void **state)
{
    struct er_config cfg;
    char errline[256];
    char arg[ER_CONFIG_STR_MAX + 64];
    size_t n = strlen("--kafka-brokers=");

    (void)state;
    memcpy(arg, "--kafka-brokers=", n);
    memset(arg + n, 'b', ER_CONFIG_STR_MAX);
    arg[n + ER_CONFIG_STR_MAX] = '\0';
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS(arg)),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "--kafka-brokers", "too long (max 1023 bytes)");

    /* Exactly at the cap fits. */
    arg[n + ER_CONFIG_STR_MAX - 1] = '\0';
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS(arg)),
                     ER_CONFIG_OK);
    assert_int_equal(strlen(cfg.kafka_brokers), ER_CONFIG_STR_MAX - 1);

    /* A long bad value is shown truncated, on one line. */
    memcpy(arg, "--log-format=", 13);
    memset(arg + 13, 'q', 500);
    arg[513] = '\0';
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS(arg)),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "--log-format", "...");
    assert_true(strlen(errline) < 150);
}

static void config_never_echoes_secrets(void **state)
{
    struct er_config cfg;
    char errline[512];
    char big[ER_CONFIG_STR_MAX + 16];

    (void)state;
    setenv("ENVRUN_DATABASE_URL", "hunter2pw", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_DATABASE_URL", NULL);
    assert_null(strstr(errline, "hunter2pw"));

    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--database-url", "hunter2pw")),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "--database-url", NULL);
    assert_null(strstr(errline, "hunter2pw"));

    memset(big, '0', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "postgresql://u:hunter2pw@h/", 27);
    setenv("ENVRUN_DATABASE_URL", big, 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_DATABASE_URL", "too long");
    assert_null(strstr(errline, "hunter2pw"));

    setenv("ENVRUN_DATABASE_URL", DB_URL, 1);
    setenv("ENVRUN_KAFKA_PROPS", "sasl.username=u,hunter2pw", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_KAFKA_PROPS", "item 2");
    assert_null(strstr(errline, "hunter2pw"));

    setenv("ENVRUN_KAFKA_PROPS", "sasl.password=hunter2pw", 1);
    setenv("ENVRUN_SCHEMA_REGISTRY_URL", "ftp://u:hunter2pw@r", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_SCHEMA_REGISTRY_URL", NULL);
    assert_null(strstr(errline, "hunter2pw"));
}

static void config_help_and_version(void **state)
{
    struct er_config cfg;
    char errline[256];
    const char *usage = er_config_usage();
    size_t i;

    (void)state;
    /* --help works even when the configuration is broken. */
    unsetenv("ENVRUN_DATABASE_URL");
    setenv("ENVRUN_CONCURRENCY", "zero", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), ARGS("--help")),
                     ER_CONFIG_HELP);
    assert_int_equal(load(&cfg, errline, sizeof(errline),
                          ARGS("--concurrency=9", "--version")),
                     ER_CONFIG_VERSION);
    for (i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++) {
        if (strstr(usage, all_vars[i]) == NULL)
            fail_msg("usage lacks %s", all_vars[i]);
    }
    assert_non_null(strstr(usage, "--paperclip-api-url"));
    assert_non_null(strstr(usage, "(21600)"));
    assert_non_null(strstr(usage, "--version"));
}

static void config_tolerates_tiny_errline(void **state)
{
    struct er_config cfg;
    char errline[8];
    char *argv[] = { "w", "--x", NULL };

    (void)state;
    assert_int_equal(er_config_load(&cfg, 2, argv, errline, sizeof(errline)),
                     ER_CONFIG_INVALID);
    assert_int_equal(strlen(errline), sizeof(errline) - 1);
    assert_int_equal(er_config_load(&cfg, 2, argv, NULL, 0), ER_CONFIG_INVALID);
    assert_int_equal(er_config_load(&cfg, 0, NULL, NULL, 0), ER_CONFIG_OK);
}

/* The production binary never starts a mock cluster by itself: without
 * brokers it is a configuration error that says how to run the dev stack;
 * workspace roots are read as given. */
static void config_requires_brokers(void **state)
{
    struct er_config cfg;
    char errline[512];

    (void)state;
    unsetenv("ENVRUN_KAFKA_BROKERS");
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_KAFKA_BROKERS", "envrunctl dev");
    setenv("ENVRUN_KAFKA_BROKERS", "", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL),
                     ER_CONFIG_INVALID);
    assert_errline(errline, "ENVRUN_KAFKA_BROKERS", "required");
    setenv("ENVRUN_KAFKA_BROKERS", "k:9092", 1);
    setenv("ENVRUN_WORKSPACE_ROOTS", "/tmp::/var", 1);
    assert_int_equal(load(&cfg, errline, sizeof(errline), NULL), ER_CONFIG_OK);
    assert_string_equal(cfg.workspace_roots, "/tmp::/var");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(config_defaults, setup),
        cmocka_unit_test_setup(config_requires_brokers, setup),
        cmocka_unit_test_setup(config_reads_every_variable, setup),
        cmocka_unit_test_setup(config_rejects_every_bad_variable, setup),
        cmocka_unit_test_setup(config_rejects_bad_flags, setup),
        cmocka_unit_test_setup(config_flags_override_variables, setup),
        cmocka_unit_test_setup(config_database_url_from_flag_only, setup),
        cmocka_unit_test_setup(config_rejects_unknown_and_valueless_flags,
                               setup),
        cmocka_unit_test_setup(config_rejects_too_long_flag_values, setup),
        cmocka_unit_test_setup(config_never_echoes_secrets, setup),
        cmocka_unit_test_setup(config_help_and_version, setup),
        cmocka_unit_test_setup(config_tolerates_tiny_errline, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
