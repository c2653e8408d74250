/* config_fuzz: splits the input at newlines into flags and loads the
 * configuration from them, with ENVRUN_DATABASE_URL set to a URL holding a
 * password that must never show up in errline. Not thread-safe (setenv). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/worker.h"

#define ARGV_MAX 32
#define PASSWORD "Pw9secretZ"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool has_password(const uint8_t *data, size_t size)
{
    size_t n = strlen(PASSWORD);
    size_t i;

    for (i = 0; i + n <= size; i++) {
        if (memcmp(data + i, PASSWORD, n) == 0)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool is_env_set;
    struct er_config cfg;
    char *argv[ARGV_MAX + 2];
    char errline[256];
    char *copy;
    int argc = 0;
    size_t i;
    enum er_config_status st;

    if (!is_env_set) {
        /* The contract's variables other than the database URL stay as
         * the environment has them: normally unset. */
        setenv("ENVRUN_DATABASE_URL",
               "postgresql://envrun:" PASSWORD "@db:5432/envrun", 1);
        is_env_set = true;
    }
    copy = malloc(size + 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    argv[argc++] = (char *)"envrun-worker";
    argv[argc++] = copy;
    for (i = 0; i < size && argc <= ARGV_MAX; i++) {
        if (copy[i] == '\n') {
            copy[i] = '\0';
            argv[argc++] = copy + i + 1;
        }
    }
    if (size == 0)
        argc = 1;
    argv[argc] = NULL;

    st = er_config_load(&cfg, argc, argv, errline, sizeof(errline));
    switch (st) {
    case ER_CONFIG_OK:
        ER_ASSERT(cfg.concurrency >= 1 && cfg.concurrency <= 1024);
        ER_ASSERT(cfg.lease_ttl_s >= 1 && cfg.lease_ttl_s <= 31536000);
        ER_ASSERT(cfg.database_url[0] != '\0');
        ER_ASSERT(cfg.kafka_group[0] != '\0');
        break;
    case ER_CONFIG_HELP:
    case ER_CONFIG_VERSION:
        break;
    case ER_CONFIG_INVALID:
        ER_ASSERT(errline[0] != '\0');
        ER_ASSERT(strchr(errline, '\n') == NULL);
        if (!has_password(data, size))
            ER_ASSERT(strstr(errline, PASSWORD) == NULL);
        break;
    }
    free(copy);
    return 0;
}
