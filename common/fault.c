/* fault: named fault points for the fault-matrix tests (see common.h).
 * Compiled to nothing unless the build defines ER_FAULTS, so a production
 * build has no way to be killed through its environment. Thread-safe: the
 * variable is parsed once and hits are counted atomically. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"

#ifdef ER_FAULTS

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char fault_name[128];
static long fault_nth = 1;
static atomic_long fault_hits;

static void parse(void)
{
    const char *v = getenv("ENVRUN_TEST_FAULT");
    const char *colon;
    size_t n;

    if (v == NULL || v[0] == '\0')
        return;
    colon = strchr(v, ':');
    n = colon != NULL ? (size_t)(colon - v) : strlen(v);
    if (n >= sizeof(fault_name))
        return;
    memcpy(fault_name, v, n);
    fault_name[n] = '\0';
    if (colon != NULL) {
        char *end = NULL;
        long nth = strtol(colon + 1, &end, 10);

        if (end != colon + 1 && *end == '\0' && nth > 0)
            fault_nth = nth;
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
                   "point %s reached: SIGKILL\"}\n",
                   name);
    if (len > 0 && write(STDERR_FILENO, line, (size_t)len) < 0)
        len = 0;
    kill(getpid(), SIGKILL);
}

#else

void er_fault_point(const char *name)
{
    (void)name;
}

#endif
