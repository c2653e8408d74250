/* reaper: the TTL sweep thread (see reaper_int.h). It wakes every
 * min(ttl/4, 30 s), or sooner when an active lease's expires_at comes
 * first (at most once a second), expires stale leases 100 at a time
 * through the journal (er_lifecycle_reap), which also releases up to 100
 * acquisitions whose lease was never recorded and nobody else will finish, and
 * sweeps what crashes left on this host. Every worker runs one; Postgres keeps
 * two from reaping one lease or one acquisition. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "worker/kafka_int.h"
#include "worker/lifecycle_int.h"
#include "worker/reaper_int.h"

#define PASS_LIMIT    100
/* The shortest time between two passes, however many expiries are due. */
#define PASS_GAP_MS   1000
/* How long reading one realize command back from Kafka may take. */
#define FETCH_WAIT_MS 10000

struct er_reaper {
    pthread_t tid;
    bool is_started;
    bool is_stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct er_lifecycle *lc;
    int64_t ttl_s;
    int64_t interval_ms;
    int64_t due_ms; /* wall clock of an earlier pass wanted; 0: none */
    /* Bridges (er_reaper_follow_bridges): this worker's owner id, Kafka
     * to read realize commands from. Set before the first assignment. */
    char owner[128];
    char brokers[1024];
    char props[2048];
    struct er_kafka_fetcher *fetcher; /* the thread's, made when needed */
};

void er_reaper_expect(void *arg, int64_t at_ms)
{
    struct er_reaper *r = arg;

    pthread_mutex_lock(&r->mu);
    if (r->due_ms == 0 || at_ms < r->due_ms) {
        r->due_ms = at_ms;
        pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

/* Sleep (r->mu held) until the next pass is due: interval_ms after the
 * last one, or at due_ms if that comes first but never within
 * PASS_GAP_MS of the last. Returns false when the reaper is stopping. */
static bool wait_due_locked(struct er_reaper *r, int64_t last_pass_ms)
{
    for (;;) {
        int64_t due = last_pass_ms + r->interval_ms;
        struct timespec ts;

        if (r->is_stopping)
            return false;
        if (r->due_ms > 0 && r->due_ms < due)
            due = r->due_ms > last_pass_ms + PASS_GAP_MS
                      ? r->due_ms
                      : last_pass_ms + PASS_GAP_MS;
        if (er_time_now_ms() >= due)
            return true;
        /* The condition variable waits on CLOCK_REALTIME, as due is. */
        ts.tv_sec = (time_t)(due / 1000);
        ts.tv_nsec = (long)(due % 1000) * 1000000;
        (void)pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
}

static int fetch(void *arg, const char *topic, int32_t partition,
                 int64_t offset, struct er_buf *value, struct er_err *err)
{
    struct er_reaper *r = arg;

    return er_kafka_fetch_lazy(&r->fetcher, r->brokers, r->props, topic,
                               partition, offset, FETCH_WAIT_MS, value, err);
}

/* Re-attach the bridges of runs whose partition this worker now holds. */
static int follow_bridges(struct er_reaper *r, struct er_err *err)
{
    char owner[sizeof(r->owner)];
    int attached = 0;
    int rc;

    pthread_mutex_lock(&r->mu);
    snprintf(owner, sizeof(owner), "%s", r->owner);
    pthread_mutex_unlock(&r->mu);
    if (owner[0] == '\0')
        return 0;
    rc = er_lifecycle_bridges_follow(r->lc, owner, fetch, r, &attached, err);
    if (rc == 0 && attached > 0)
        ER_LOG_INFO("reaper", "%d callback bridges re-attached", attached);
    return rc;
}

static void *reaper_main(void *arg)
{
    struct er_reaper *r = arg;
    int64_t last_warn = 0;
    int64_t last_pass = er_time_now_ms();

    /* What a crash of this or another worker on this host left behind. */
    er_lifecycle_sweep_host(r->lc);
    pthread_mutex_lock(&r->mu);
    while (wait_due_locked(r, last_pass)) {
        struct er_err err;
        int64_t next = 0;
        int reaped = 0;
        int rc;

        r->due_ms = 0;
        pthread_mutex_unlock(&r->mu);
        last_pass = er_time_now_ms();
        do {
            er_err_clear(&err);
            rc = er_lifecycle_reap(r->lc, r->ttl_s, PASS_LIMIT, &reaped, &err);
        } while (rc == 0 && reaped == PASS_LIMIT);
        er_lifecycle_sweep_host(r->lc);
        if (rc == 0)
            rc = follow_bridges(r, &err);
        if (rc == 0)
            rc = er_lifecycle_next_expiry(r->lc, &next, &err);
        if (rc == 0)
            rc = er_lifecycle_gauges(r->lc, &err);
        er_metrics_reaper_pass(rc == 0);
        if (rc != 0 && er_time_mono_ms() - last_warn >= 60000) {
            ER_LOG_WARN("reaper", "sweep failed: %s", err.msg);
            last_warn = er_time_mono_ms();
        }
        pthread_mutex_lock(&r->mu);
        if (next > 0 && (r->due_ms == 0 || next < r->due_ms))
            r->due_ms = next;
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
    er_kafka_fetcher_destroy(r->fetcher);
    er_lifecycle_destroy(r->lc);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    er_free(r);
}

void er_reaper_follow_bridges(struct er_reaper *r, const char *owner,
                              const char *brokers, const char *props)
{
    pthread_mutex_lock(&r->mu);
    snprintf(r->brokers, sizeof(r->brokers), "%s", brokers);
    snprintf(r->props, sizeof(r->props), "%s", props != NULL ? props : "");
    snprintf(r->owner, sizeof(r->owner), "%s", owner);
    pthread_mutex_unlock(&r->mu);
}
