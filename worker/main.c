/* envrun-worker: parse the configuration, install signal handlers and run
 * the worker until SIGTERM or SIGINT. Exit codes follow contract.md 1. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/worker.h"

/* The first SIGTERM (or SIGINT) drains: no new commands, the steps in
 * flight get ENVRUN_DRAIN_S, the outbox is flushed, offsets committed, the
 * group left. A second one exits at once: what was in flight is journaled
 * and its offsets are not committed, so the next owner resumes it. */
static void on_signal(int sig)
{
    (void)sig;
    if (er_worker_stop)
        _exit(1);
    er_worker_stop = 1;
}

/* Undo what a parent may have left us that the worker relies on: an
 * ignored SIGCHLD makes the kernel reap children itself, so waitpid could
 * not report a child's exit status; a blocked SIGTERM would keep the
 * worker from draining. (SIGTERM, SIGINT and SIGPIPE get their actions
 * below; other dispositions, such as nohup's ignored SIGHUP, are kept.) */
static void reset_inherited_signals(void)
{
    struct sigaction sa;
    sigset_t none;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

int main(int argc, char **argv)
{
    struct er_config cfg;
    char errline[512];
    struct sigaction sa;
    int rc;

    reset_inherited_signals();
    /* The step threads share two malloc arenas instead of one each: what
     * a burst freed is reused across threads, not kept per thread (peak
     * and idle RSS, issue [7]). MALLOC_ARENA_MAX in the environment still
     * decides when set. */
    if (getenv("MALLOC_ARENA_MAX") == NULL)
        mallopt(M_ARENA_MAX, 2);
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

    rc = er_worker_run(&cfg);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
