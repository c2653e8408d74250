/* envrun-worker: parse the configuration, install signal handlers and run
 * the worker until SIGTERM or SIGINT. Exit codes follow contract.md 1. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "worker/worker.h"

static void on_signal(int sig)
{
    (void)sig;
    er_worker_stop = 1;
}

int main(int argc, char **argv)
{
    struct er_config cfg;
    char errline[512];
    struct sigaction sa;

    switch (er_config_load(&cfg, argc, argv, errline, sizeof(errline))) {
    case ER_CONFIG_OK:
        break;
    case ER_CONFIG_HELP:
        fputs(er_config_usage(), stdout);
        return 0;
    case ER_CONFIG_VERSION:
        printf("envrun-worker %s\n", ER_VERSION);
        return 0;
    case ER_CONFIG_INVALID:
        fprintf(stderr, "envrun-worker: %s\n", errline);
        return 2;
    }
    er_log_setup(cfg.log_is_json, cfg.log_level);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    return er_worker_run(&cfg) == 0 ? 0 : 1;
}
