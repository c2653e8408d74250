/* envrunctl: the operator CLI of contract.md 1: send commands, tail topics
 * decoded to JSON, list leases, run the dev stack. main() picks the
 * subcommand; each lives in its own ctl_*.c file. Exit codes: 0 success,
 * 1 runtime failure, 2 usage error (one line on stderr). */
#include <stdio.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "schemas/schemas.h"

static const char usage[] =
    "usage: envrunctl [--help] [--version] COMMAND [options]\n"
    "\n"
    "Commands:\n"
    "  dev [--demo] [--partitions N] [--workers N]\n"
    "        run a throwaway Kafka mock cluster and PostgreSQL; --demo runs\n"
    "        a worker through acquire, realize and release\n"
    "  send --kind acquire|realize|release --company ID --agent ID ...\n"
    "        encode a RunCommand and produce it to <prefix>commands\n"
    "  send --file FILE|-\n"
    "        produce a RunCommand written as JSON (validated first)\n"
    "  tail TOPIC [--from-beginning] [--follow] [--max N] [--timeout-ms T]\n"
    "       [--run ID] [--lease ID] [--company ID] [--outcome O]\n"
    "       [--format json|table]\n"
    "        print a topic's records decoded, as JSON lines or a table\n"
    "  leases [--company ID] [--run ID] [--status S] [--limit N]\n"
    "       [--format json|table]\n"
    "        list environment leases from Postgres\n"
    "  dlq list [--format json|table] [--max N] [--timeout-ms T]\n"
    "       [--partition P] [--error-code C]\n"
    "        show the dead letters of <prefix>commands.dlq with their reasons\n"
    "  dlq replay (--all | --partition P [--offset N ...] | --error-code C)\n"
    "       [--dry-run] [--force] [--format json|table] [--timeout-ms T]\n"
    "        publish chosen dead letters to <prefix>commands again\n"
    "\n"
    "`envrunctl COMMAND --help` describes each command's options.\n"
    "Environment: ENVRUN_KAFKA_BROKERS, ENVRUN_KAFKA_PROPS,\n"
    "ENVRUN_TOPIC_PREFIX, ENVRUN_DATABASE_URL (flags override them),\n"
    "ENVRUN_SCHEMA_REGISTRY_URL (records in the Confluent wire format are\n"
    "read through it and send frames commands),\n"
    "ENVRUN_SCHEMA_REGISTRY_CA_FILE, ENVRUN_LOG_LEVEL.\n"
    "Exit status: 0 success, 1 runtime failure, 2 usage error.\n";

struct subcommand {
    const char *name;
    int (*main_fn)(int argc, char **argv);
    bool needs_codec;
};

static const struct subcommand subcommands[] = {
    { "dev", er_ctl_dev_main, true },   { "send", er_ctl_send_main, true },
    { "tail", er_ctl_tail_main, true }, { "leases", er_ctl_leases_main, false },
    { "dlq", er_ctl_dlq_main, true },
};

int main(int argc, char **argv)
{
    const struct subcommand *sub = NULL;
    struct er_registry *registry = NULL;
    const char *registry_url;
    struct er_err err;
    size_t i;
    int level;
    int rc;

    if (argc < 2) {
        fputs("envrunctl: missing command (try envrunctl --help)\n", stderr);
        return ER_CTL_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, stdout);
        return ER_CTL_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("envrunctl %s\n", ER_VERSION);
        return ER_CTL_EXIT_OK;
    }
    for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
        if (strcmp(argv[1], subcommands[i].name) == 0)
            sub = &subcommands[i];
    }
    if (sub == NULL) {
        if (argv[1][0] == '-')
            fprintf(stderr, "envrunctl: unknown option %s\n", argv[1]);
        else
            fprintf(stderr, "envrunctl: unknown command %s\n", argv[1]);
        return ER_CTL_EXIT_USAGE;
    }

    level = er_log_level_parse(er_ctl_util_env("ENVRUN_LOG_LEVEL", "warn"));
    er_log_setup(false, level < 0 ? ER_LOG_WARN : (enum er_log_level)level);
    er_err_clear(&err);
    if (sub->needs_codec && er_codec_init(&err) != 0) {
        fprintf(stderr, "envrunctl: %s\n", err.msg);
        return ER_CTL_EXIT_FAIL;
    }
    /* With a schema registry, records are read in the Confluent wire
     * format too, and send frames what it produces. */
    registry_url = er_ctl_util_env("ENVRUN_SCHEMA_REGISTRY_URL", "");
    if (sub->needs_codec && registry_url[0] != '\0') {
        if (er_registry_new(
                registry_url,
                er_ctl_util_env("ENVRUN_SCHEMA_REGISTRY_CA_FILE", ""),
                &registry, &err) != 0) {
            fprintf(stderr, "envrunctl: ENVRUN_SCHEMA_REGISTRY_URL: %s\n",
                    err.msg);
            er_codec_shutdown();
            return ER_CTL_EXIT_FAIL;
        }
        er_registry_install(registry);
    }
    rc = sub->main_fn(argc - 2, argv + 2);
    er_registry_install(NULL);
    er_registry_destroy(registry);
    if (sub->needs_codec)
        er_codec_shutdown();
    return rc;
}
