/* fault: named fault points for the fault-matrix tests (see common.h).
 * Compiled to nothing unless the build defines ER_FAULTS, so a production
 * build has no way to be killed or paused through its environment.
 * Thread-safe: the variable is parsed once and hits are counted
 * atomically. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"

#ifdef ER_FAULTS

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char fault_name[128];
static long fault_nth = 1;
static bool is_fault_stop; /* SIGSTOP instead of SIGKILL */
static atomic_long fault_hits;

/* "name", "name:N", "name:stop" or "name:N:stop"; a bad N counts as 1. */
static void parse(void)
{
    const char *v = getenv("ENVRUN_TEST_FAULT");
    const char *colon;
    const char *rest;
    char *end = NULL;
    size_t n;
    long nth;

    if (v == NULL || v[0] == '\0')
        return;
    colon = strchr(v, ':');
    n = colon != NULL ? (size_t)(colon - v) : strlen(v);
    if (n >= sizeof(fault_name))
        return;
    memcpy(fault_name, v, n);
    fault_name[n] = '\0';
    if (colon == NULL)
        return;
    rest = colon + 1;
    if (strcmp(rest, "stop") == 0) {
        is_fault_stop = true;
        return;
    }
    nth = strtol(rest, &end, 10);
    if (end == rest || nth <= 0)
        return;
    if (*end == '\0')
        fault_nth = nth;
    else if (strcmp(end, ":stop") == 0) {
        fault_nth = nth;
        is_fault_stop = true;
    }
}

void er_fault_point(const char *name)
{
    char line[256];
    int len;

    pthread_once(&once, parse);
    if (fault_name[0] == '\0' || strcmp(name, fault_name) != 0)
        return;
    if (atomic_fetch_add(&fault_hits, 1) + 1 != fault_nth)
        return;
    /* One plain write: the logger may hold a lock another thread took. */
    len = snprintf(line, sizeof(line),
                   "{\"level\":\"error\",\"fac\":\"fault\",\"msg\":\"fault "
                   "point %s reached: %s\"}\n",
                   name, is_fault_stop ? "SIGSTOP" : "SIGKILL");
    if (len > 0 && write(STDERR_FILENO, line, (size_t)len) < 0)
        len = 0;
    if (is_fault_stop) {
        /* Sent to this thread, so that it stops before it returns here
         * (the rest of the process follows): a kill() of the process lets
         * another thread take the stop while this one runs on for a few
         * system calls. A SIGCONT resumes it right here. */
        raise(SIGSTOP);
        return;
    }
    kill(getpid(), SIGKILL);
}

#else

void er_fault_point(const char *name)
{
    (void)name;
}

#endif
