/* reaper: the TTL sweep thread (see reaper_int.h). It wakes every
 * min(ttl/4, 30 s), expires stale leases 100 at a time through the journal
 * (er_lifecycle_reap), which also releases up to 100 acquisitions whose
 * lease was never recorded and nobody else will finish, and sweeps what
 * crashes left on this host. Every worker runs one; Postgres keeps two from
 * reaping one lease or one acquisition. */
#include <pthread.h>
#include <time.h>

#include "worker/lifecycle_int.h"
#include "worker/reaper_int.h"

#define PASS_LIMIT 100

struct er_reaper {
    pthread_t tid;
    bool is_started;
    bool is_stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct er_lifecycle *lc;
    int64_t ttl_s;
    int64_t interval_ms;
};

static void *reaper_main(void *arg)
{
    struct er_reaper *r = arg;
    int64_t last_warn = 0;

    /* What a crash of this or another worker on this host left behind. */
    er_lifecycle_sweep_host(r->lc);
    pthread_mutex_lock(&r->mu);
    while (!r->is_stopping) {
        struct timespec ts;
        struct er_err err;
        int reaped = 0;
        int rc;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(r->interval_ms / 1000);
        ts.tv_nsec += (long)(r->interval_ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        while (!r->is_stopping &&
               pthread_cond_timedwait(&r->cv, &r->mu, &ts) == 0)
            ;
        if (r->is_stopping)
            break;
        pthread_mutex_unlock(&r->mu);
        do {
            er_err_clear(&err);
            rc = er_lifecycle_reap(r->lc, r->ttl_s, PASS_LIMIT, &reaped, &err);
        } while (rc == 0 && reaped == PASS_LIMIT);
        er_lifecycle_sweep_host(r->lc);
        if (rc != 0 && er_time_mono_ms() - last_warn >= 60000) {
            ER_LOG_WARN("reaper", "sweep failed: %s", err.msg);
            last_warn = er_time_mono_ms();
        }
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

struct er_reaper *er_reaper_new(const struct er_config *cfg, struct er_err *err)
{
    struct er_reaper *r = er_calloc(1, sizeof(*r));
    int64_t quarter_ms;

    if (r == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->ttl_s = cfg->lease_ttl_s;
    quarter_ms = cfg->lease_ttl_s * 250;
    r->interval_ms = quarter_ms < 30000 ? quarter_ms : 30000;
    if (r->interval_ms < 250)
        r->interval_ms = 250;
    r->lc = er_lifecycle_new(cfg, err);
    if (r->lc == NULL)
        goto fail;
    if (pthread_create(&r->tid, NULL, reaper_main, r) != 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "cannot start reaper");
        goto fail;
    }
    r->is_started = true;
    return r;
fail:
    er_reaper_destroy(r);
    return NULL;
}

void er_reaper_destroy(struct er_reaper *r)
{
    if (r == NULL)
        return;
    if (r->is_started) {
        pthread_mutex_lock(&r->mu);
        r->is_stopping = true;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->tid, NULL);
    }
    er_lifecycle_destroy(r->lc);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    er_free(r);
}
