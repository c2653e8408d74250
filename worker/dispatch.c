/* dispatch: per-run FIFO queues and the thread pool that serves them (see
 * dispatch_int.h). One mutex guards the run table, the ready list and the
 * done list; steps run outside it. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "drivers/driver.h"
#include "worker/dispatch_int.h"
#include "worker/lifecycle_int.h"

#define RUN_BUCKETS    1024
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* How long a revoke or a drain waits for cancelled steps to let go: a
 * cancelled driver command gets SIGTERM, then SIGKILL 5 s later. */
#define CANCEL_WAIT_MS 8000
/* A thread with no step for this long lets its step's memory go; the
 * consumer's malloc_trim follows at 1 s (consumer.c TRIM_IDLE_MS). */
#define IDLE_TRIM_MS   500

struct job {
    struct job *next;
    int32_t partition;
    int64_t offset;
    /* The fence of the partition's assignment; a handover moves it on. */
    _Atomic int64_t generation;
    atomic_bool cancel; /* set by a revoke or a drain */
    /* Under the dispatcher's mutex: its partition was revoked while it
     * ran, and the next assignment decides (parked); the partition came
     * back and the job was handed over, its redelivered message not seen
     * yet (adopted). */
    bool is_parked;
    bool is_adopted;
    uint8_t *key; /* NULL when the message had none */
    size_t key_len;
    uint8_t *value;
    size_t value_len;
};

/* The queue of one run; exists while it has jobs or one is running, and
 * is on the ready list exactly when it has jobs and none is running. */
struct run {
    struct run *next_bucket;
    struct run *next_ready;
    char *key;
    struct job *head;
    struct job *tail;
    bool is_running;
    struct job *running; /* the job a thread works on, or NULL */
};

struct done_node {
    struct done_node *next;
    struct er_done done;
};

struct worker_thread {
    struct er_dispatch *d;
    pthread_t tid;
    struct er_lifecycle *lc;
    bool is_started;
};

struct er_dispatch {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* jobs became ready, or stopping */
    pthread_cond_t idle_cv; /* a running job finished, or was unparked */
    struct run *buckets[RUN_BUCKETS];
    struct run *ready_head;
    struct run *ready_tail;
    struct done_node *done_head;
    struct done_node *done_tail;
    size_t inflight; /* queued + running */
    size_t running;
    size_t parked;  /* running jobs with is_parked */
    size_t adopted; /* running jobs with is_adopted */
    bool is_stopping;
    bool is_draining; /* SIGTERM: steps that would retry give up instead */
    bool has_failed;
    char fail_msg[ER_ERR_MSG_MAX];
    void (*on_commit)(void *);
    void *on_commit_arg;
    struct worker_thread *threads;
    int thread_cnt;
};

static bool part_in(int32_t p, const int32_t *parts, size_t cnt);

static size_t hash_key(const char *s)
{
    size_t h = 1469598103934665603u; /* FNV-1a */

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h % RUN_BUCKETS;
}

static void job_free(struct job *j)
{
    if (j == NULL)
        return;
    er_free(j->key);
    er_free(j->value);
    er_free(j);
}

static struct run *run_find(struct er_dispatch *d, const char *key,
                            bool is_create)
{
    size_t b = hash_key(key);
    struct run *r;

    for (r = d->buckets[b]; r != NULL; r = r->next_bucket) {
        if (strcmp(r->key, key) == 0)
            return r;
    }
    if (!is_create)
        return NULL;
    r = er_calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->key = er_strdup(key);
    if (r->key == NULL) {
        er_free(r);
        return NULL;
    }
    r->next_bucket = d->buckets[b];
    d->buckets[b] = r;
    return r;
}

static void run_remove(struct er_dispatch *d, struct run *r)
{
    struct run **pp = &d->buckets[hash_key(r->key)];

    while (*pp != r)
        pp = &(*pp)->next_bucket;
    *pp = r->next_bucket;
    er_free(r->key);
    er_free(r);
}

static void ready_push(struct er_dispatch *d, struct run *r)
{
    r->next_ready = NULL;
    if (d->ready_tail == NULL)
        d->ready_head = r;
    else
        d->ready_tail->next_ready = r;
    d->ready_tail = r;
    pthread_cond_signal(&d->work_cv);
}

static void ready_remove(struct er_dispatch *d, struct run *r)
{
    struct run *prev = NULL;
    struct run *p;

    for (p = d->ready_head; p != NULL; prev = p, p = p->next_ready) {
        if (p != r)
            continue;
        if (prev == NULL)
            d->ready_head = p->next_ready;
        else
            prev->next_ready = p->next_ready;
        if (d->ready_tail == p)
            d->ready_tail = prev;
        return;
    }
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };

    nanosleep(&ts, NULL);
}

/* Wait on cv until pred(d, arg) is false or deadline (monotonic ms). */
static void wait_while(struct er_dispatch *d,
                       bool (*pred)(const struct er_dispatch *, const void *),
                       const void *arg, int64_t deadline_ms)
{
    while (pred(d, arg)) {
        struct timespec ts;
        int64_t left = deadline_ms - er_time_mono_ms();

        if (left <= 0)
            return;
        clock_gettime(CLOCK_REALTIME, &ts);
        left = left < 100 ? left : 100;
        ts.tv_nsec += (long)left * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&d->idle_cv, &d->mu, &ts);
    }
}

/* A fenced step of a parked job: wait until the next assignment decides
 * (the job is handed over or cancelled). True when it was handed over
 * since the step read generation, so the step may run again under the new
 * one: it met the fence in the moment between the new claim and the
 * handover. */
static bool is_handed_over(struct er_dispatch *d, struct job *j,
                           int64_t generation)
{
    bool is_moved;

    pthread_mutex_lock(&d->mu);
    while (j->is_parked && !atomic_load(&j->cancel) && !d->is_stopping) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&d->idle_cv, &d->mu, &ts);
    }
    is_moved = !j->is_parked && !atomic_load(&j->cancel) && !d->is_stopping &&
               atomic_load(&j->generation) != generation;
    pthread_mutex_unlock(&d->mu);
    return is_moved;
}

/* Run one job until it commits, the worker stops, or a fatal error.
 * Returns true when committed. */
static bool run_job(struct worker_thread *t, struct job *j)
{
    struct er_dispatch *d = t->d;
    struct er_msg_coords coords = { j->partition, j->offset, &j->generation,
                                    &j->cancel };
    int64_t backoff = BACKOFF_MIN_MS;
    int64_t last_log = 0;

    for (;;) {
        struct er_err err;
        bool is_stopping;
        int64_t generation = atomic_load(&j->generation);
        int rc;

        er_err_clear(&err);
        er_proc_set_cancel(&j->cancel);
        rc = er_lifecycle_step(t->lc, j->key, j->key_len, j->value,
                               j->value_len, &coords, &err);
        er_proc_set_cancel(NULL);
        if (rc == 0)
            return true;
        if (err.code == ER_EFENCED && is_handed_over(d, j, generation)) {
            ER_LOG_INFO("dispatch",
                        "step at partition %d offset %lld was handed over "
                        "while it recorded its outcome: again under the new "
                        "generation",
                        (int)j->partition, (long long)j->offset);
            continue;
        }
        if (err.code == ER_EFENCED || err.code == ER_ECANCELED) {
            /* Not ours to record any more: the next owner of the
             * partition gets the command again (its offset is not
             * committed here) and resumes from the journal. */
            er_log(ER_LOG_WARN, "dispatch",
                   "step at partition %d offset %lld left unrecorded: %s",
                   (int)j->partition, (long long)j->offset, err.msg);
            return false;
        }
        if (err.cls != ER_ERRCLASS_RETRY) {
            pthread_mutex_lock(&d->mu);
            if (!d->has_failed) {
                d->has_failed = true;
                snprintf(d->fail_msg, sizeof(d->fail_msg), "%s", err.msg);
            }
            d->is_stopping = true;
            pthread_cond_broadcast(&d->work_cv);
            pthread_mutex_unlock(&d->mu);
            ER_LOG_ERR("dispatch",
                       "stopping: step at partition %d offset "
                       "%lld failed: %s (%s)",
                       (int)j->partition, (long long)j->offset, err.msg,
                       er_errname(err.code));
            return false;
        }
        er_metrics_retry();
        /* Log a retried failure at most once every 10 s. */
        if (er_time_mono_ms() - last_log >= 10000) {
            ER_LOG_WARN("dispatch",
                        "retrying step at partition %d offset "
                        "%lld in %lld ms: %s",
                        (int)j->partition, (long long)j->offset,
                        (long long)backoff, err.msg);
            last_log = er_time_mono_ms();
        }
        sleep_ms(backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        pthread_mutex_lock(&d->mu);
        is_stopping = d->is_stopping || d->is_draining;
        pthread_mutex_unlock(&d->mu);
        if (is_stopping || atomic_load(&j->cancel))
            return false; /* not committed: it will be delivered again */
    }
}

static void *thread_main(void *arg)
{
    struct worker_thread *t = arg;
    struct er_dispatch *d = t->d;
    bool is_trimmed = false;

    pthread_mutex_lock(&d->mu);
    for (;;) {
        struct run *r;
        struct job *j;
        bool is_committed;
        struct done_node *dn = NULL;

        while (d->ready_head == NULL && !d->is_stopping) {
            struct timespec ts;

            if (is_trimmed) {
                pthread_cond_wait(&d->work_cv, &d->mu);
                continue;
            }
            er_time_deadline_in(IDLE_TRIM_MS, &ts);
            if (pthread_cond_timedwait(&d->work_cv, &d->mu, &ts) == 0 ||
                d->ready_head != NULL || d->is_stopping)
                continue;
            /* Idle: what the last step kept for the next goes, before the
             * consumer's malloc_trim hands free heap back (issue [7]). */
            pthread_mutex_unlock(&d->mu);
            er_lifecycle_idle(t->lc);
            er_stack_trim();
            is_trimmed = true;
            pthread_mutex_lock(&d->mu);
        }
        if (d->is_stopping)
            break;
        r = d->ready_head;
        d->ready_head = r->next_ready;
        if (d->ready_head == NULL)
            d->ready_tail = NULL;
        j = r->head;
        r->head = j->next;
        if (r->head == NULL)
            r->tail = NULL;
        r->is_running = true;
        r->running = j;
        d->running++;
        pthread_mutex_unlock(&d->mu);
        is_trimmed = false;

        is_committed = run_job(t, j);
        if (is_committed) {
            dn = er_calloc(1, sizeof(*dn));
            if (d->on_commit != NULL)
                d->on_commit(d->on_commit_arg);
        }

        pthread_mutex_lock(&d->mu);
        if (dn != NULL) {
            dn->done.partition = j->partition;
            dn->done.offset = j->offset;
            dn->done.generation = atomic_load(&j->generation);
            if (d->done_tail == NULL)
                d->done_head = dn;
            else
                d->done_tail->next = dn;
            d->done_tail = dn;
        }
        /* Without memory for the done record the offset is simply not
         * committed yet; the command is redelivered and replayed. */
        if (j->is_parked)
            d->parked--;
        if (j->is_adopted)
            d->adopted--;
        job_free(j);
        r->is_running = false;
        r->running = NULL;
        d->running--;
        d->inflight--;
        if (r->head != NULL)
            ready_push(d, r);
        else
            run_remove(d, r);
        er_metrics_inflight((int64_t)d->inflight);
        pthread_cond_broadcast(&d->idle_cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

struct er_dispatch *er_dispatch_new(const struct er_config *cfg, int thread_cnt,
                                    struct er_err *err)
{
    struct er_dispatch *d = er_calloc(1, sizeof(*d));
    int i;

    ER_ASSERT(thread_cnt > 0);
    if (d == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->work_cv, NULL);
    pthread_cond_init(&d->idle_cv, NULL);
    d->threads = er_calloc((size_t)thread_cnt, sizeof(*d->threads));
    if (d->threads == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto fail;
    }
    d->thread_cnt = thread_cnt;
    for (i = 0; i < thread_cnt; i++) {
        struct worker_thread *t = &d->threads[i];

        t->d = d;
        t->lc = er_lifecycle_new(cfg, err);
        if (t->lc == NULL)
            goto fail;
        if (pthread_create(&t->tid, NULL, thread_main, t) != 0) {
            er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                       "cannot start dispatcher thread");
            goto fail;
        }
        t->is_started = true;
    }
    return d;
fail:
    er_dispatch_destroy(d);
    return NULL;
}

/* Set the cancel flag of every running job whose partition is in parts
 * (all of them when parts is NULL). */
static void cancel_running(struct er_dispatch *d, const int32_t *parts,
                           size_t cnt)
{
    size_t b;

    for (b = 0; b < RUN_BUCKETS; b++) {
        struct run *r;

        for (r = d->buckets[b]; r != NULL; r = r->next_bucket) {
            if (r->running != NULL &&
                (parts == NULL || part_in(r->running->partition, parts, cnt)))
                atomic_store(&r->running->cancel, true);
        }
    }
}

static bool any_running(const struct er_dispatch *d, const void *arg)
{
    (void)arg;
    return d->running > 0;
}

void er_dispatch_drain(struct er_dispatch *d, int64_t drain_ms)
{
    size_t b;

    pthread_mutex_lock(&d->mu);
    d->is_draining = true;
    for (b = 0; b < RUN_BUCKETS; b++) {
        struct run *r = d->buckets[b];

        while (r != NULL) {
            struct run *next = r->next_bucket;

            while (r->head != NULL) {
                struct job *j = r->head;

                r->head = j->next;
                job_free(j);
                d->inflight--;
            }
            r->tail = NULL;
            if (!r->is_running) {
                ready_remove(d, r);
                run_remove(d, r);
            }
            r = next;
        }
    }
    /* The steps in flight may finish within drain_ms; then they are
     * cancelled (their journal entries stay open for the next owner). */
    wait_while(d, any_running, NULL, er_time_mono_ms() + drain_ms);
    if (d->running > 0) {
        ER_LOG_WARN("dispatch",
                    "%zu steps still running after the drain period: "
                    "cancelling them",
                    d->running);
        cancel_running(d, NULL, 0);
        wait_while(d, any_running, NULL, er_time_mono_ms() + CANCEL_WAIT_MS);
    }
    er_metrics_inflight((int64_t)d->inflight);
    pthread_mutex_unlock(&d->mu);
}

void er_dispatch_destroy(struct er_dispatch *d)
{
    int i;
    struct done_node *dn;

    if (d == NULL)
        return;
    if (d->threads != NULL) {
        er_dispatch_drain(d, 0);
        pthread_mutex_lock(&d->mu);
        d->is_stopping = true;
        pthread_cond_broadcast(&d->work_cv);
        pthread_mutex_unlock(&d->mu);
        for (i = 0; i < d->thread_cnt; i++) {
            if (d->threads[i].is_started)
                pthread_join(d->threads[i].tid, NULL);
            er_lifecycle_destroy(d->threads[i].lc);
        }
        er_free(d->threads);
    }
    while ((dn = d->done_head) != NULL) {
        d->done_head = dn->next;
        er_free(dn);
    }
    pthread_cond_destroy(&d->idle_cv);
    pthread_cond_destroy(&d->work_cv);
    pthread_mutex_destroy(&d->mu);
    er_free(d);
}

int er_dispatch_submit(struct er_dispatch *d, const char *run_key,
                       int32_t partition, int64_t offset, int64_t generation,
                       const void *key, size_t key_len, const void *value,
                       size_t value_len)
{
    struct job *j = er_calloc(1, sizeof(*j));
    struct run *r;

    if (j == NULL)
        return ER_ENOMEM;
    j->partition = partition;
    j->offset = offset;
    atomic_init(&j->generation, generation);
    atomic_init(&j->cancel, false);
    if (key != NULL && key_len > 0) {
        j->key = er_malloc(key_len);
        if (j->key == NULL)
            goto fail;
        memcpy(j->key, key, key_len);
        j->key_len = key_len;
    }
    j->value = er_malloc(value_len > 0 ? value_len : 1);
    if (j->value == NULL)
        goto fail;
    if (value_len > 0)
        memcpy(j->value, value, value_len);
    j->value_len = value_len;

    pthread_mutex_lock(&d->mu);
    r = run_find(d, run_key, true);
    if (r == NULL) {
        pthread_mutex_unlock(&d->mu);
        goto fail;
    }
    if (r->tail == NULL)
        r->head = j;
    else
        r->tail->next = j;
    r->tail = j;
    d->inflight++;
    /* A run is on the ready list exactly when it has queued jobs and none
     * running, so only a run whose queue was empty needs pushing. */
    if (!r->is_running && r->head == j)
        ready_push(d, r);
    er_metrics_inflight((int64_t)d->inflight);
    pthread_mutex_unlock(&d->mu);
    return 0;
fail:
    job_free(j);
    return ER_ENOMEM;
}

size_t er_dispatch_take_done(struct er_dispatch *d, struct er_done *out,
                             size_t cap)
{
    size_t n = 0;

    pthread_mutex_lock(&d->mu);
    while (n < cap && d->done_head != NULL) {
        struct done_node *dn = d->done_head;

        d->done_head = dn->next;
        if (d->done_head == NULL)
            d->done_tail = NULL;
        out[n++] = dn->done;
        er_free(dn);
    }
    pthread_mutex_unlock(&d->mu);
    return n;
}

size_t er_dispatch_inflight(struct er_dispatch *d)
{
    size_t n;

    pthread_mutex_lock(&d->mu);
    n = d->inflight;
    pthread_mutex_unlock(&d->mu);
    return n;
}

static bool part_in(int32_t p, const int32_t *parts, size_t cnt)
{
    size_t i;

    for (i = 0; i < cnt; i++) {
        if (parts[i] == p)
            return true;
    }
    return false;
}

struct part_set {
    const int32_t *parts;
    size_t cnt;
};

static bool any_running_in(const struct er_dispatch *d, const void *arg)
{
    const struct part_set *ps = arg;
    size_t b;

    for (b = 0; b < RUN_BUCKETS; b++) {
        const struct run *r;

        for (r = d->buckets[b]; r != NULL; r = r->next_bucket) {
            if (r->running != NULL &&
                part_in(r->running->partition, ps->parts, ps->cnt))
                return true;
        }
    }
    return false;
}

/* Drop the queued jobs of these partitions (their messages come again). */
static void drop_queued(struct er_dispatch *d, const int32_t *partitions,
                        size_t cnt)
{
    size_t b;

    for (b = 0; b < RUN_BUCKETS; b++) {
        struct run *r = d->buckets[b];

        while (r != NULL) {
            struct run *next = r->next_bucket;
            struct job **pp = &r->head;

            /* A run's jobs all come from one partition (one key), but the
             * filter is per job to stay correct if that ever changes. */
            r->tail = NULL;
            while (*pp != NULL) {
                struct job *j = *pp;

                if (part_in(j->partition, partitions, cnt)) {
                    *pp = j->next;
                    job_free(j);
                    d->inflight--;
                } else {
                    r->tail = j;
                    pp = &j->next;
                }
            }
            if (r->head == NULL && !r->is_running) {
                ready_remove(d, r);
                run_remove(d, r);
            }
            r = next;
        }
    }
}

/* Cancel the running jobs of these partitions and wait a bounded time for
 * them; one that still runs then is fenced off by the next owner's
 * generation. Under d->mu. */
static void cancel_and_wait(struct er_dispatch *d, const int32_t *partitions,
                            size_t cnt)
{
    struct part_set ps = { partitions, cnt };

    cancel_running(d, partitions, cnt);
    pthread_cond_broadcast(&d->idle_cv); /* fenced parked jobs wake */
    wait_while(d, any_running_in, &ps, er_time_mono_ms() + CANCEL_WAIT_MS);
    if (any_running_in(d, &ps))
        ER_LOG_WARN("dispatch", "a cancelled step of a revoked partition "
                                "still runs; its outcome will be fenced");
}

void er_dispatch_drop_partitions(struct er_dispatch *d,
                                 const int32_t *partitions, size_t cnt)
{
    pthread_mutex_lock(&d->mu);
    drop_queued(d, partitions, cnt);
    /* A revoke never waits for a long step: the running ones are
     * cancelled (a driver command is stopped, nothing is recorded). */
    cancel_and_wait(d, partitions, cnt);
    er_metrics_inflight((int64_t)d->inflight);
    pthread_mutex_unlock(&d->mu);
}

/* Call fn on every running job (under d->mu). */
static void each_running(struct er_dispatch *d,
                         void (*fn)(struct er_dispatch *, struct job *, void *),
                         void *arg)
{
    size_t b;

    for (b = 0; b < RUN_BUCKETS; b++) {
        struct run *r;

        for (r = d->buckets[b]; r != NULL; r = r->next_bucket) {
            if (r->running != NULL)
                fn(d, r->running, arg);
        }
    }
}

static void park(struct er_dispatch *d, struct job *j, void *arg)
{
    const struct part_set *ps = arg;

    if (j->is_parked || !part_in(j->partition, ps->parts, ps->cnt))
        return;
    j->is_parked = true;
    d->parked++;
    if (j->is_adopted) { /* parked again before its message came back */
        j->is_adopted = false;
        d->adopted--;
    }
}

void er_dispatch_park_partitions(struct er_dispatch *d,
                                 const int32_t *partitions, size_t cnt)
{
    struct part_set ps = { partitions, cnt };

    pthread_mutex_lock(&d->mu);
    drop_queued(d, partitions, cnt);
    each_running(d, park, &ps);
    er_metrics_inflight((int64_t)d->inflight);
    pthread_mutex_unlock(&d->mu);
}

struct offsets_of {
    int32_t partition;
    int64_t *out;
    size_t cap;
    size_t cnt;
};

static void list_parked(struct er_dispatch *d, struct job *j, void *arg)
{
    struct offsets_of *o = arg;

    (void)d;
    if (j->is_parked && !atomic_load(&j->cancel) &&
        j->partition == o->partition) {
        if (o->cnt < o->cap)
            o->out[o->cnt] = j->offset;
        o->cnt++;
    }
}

size_t er_dispatch_parked_offsets(struct er_dispatch *d, int32_t partition,
                                  int64_t *out, size_t cap)
{
    struct offsets_of o = { partition, out, cap, 0 };

    pthread_mutex_lock(&d->mu);
    if (d->parked > 0)
        each_running(d, list_parked, &o);
    pthread_mutex_unlock(&d->mu);
    return o.cnt;
}

struct handover {
    int32_t partition;
    int64_t generation;
    size_t cnt;
};

static void adopt(struct er_dispatch *d, struct job *j, void *arg)
{
    struct handover *h = arg;

    if (!j->is_parked || atomic_load(&j->cancel) ||
        j->partition != h->partition)
        return;
    atomic_store(&j->generation, h->generation);
    j->is_parked = false;
    d->parked--;
    j->is_adopted = true;
    d->adopted++;
    h->cnt++;
}

size_t er_dispatch_adopt(struct er_dispatch *d, int32_t partition,
                         int64_t generation)
{
    struct handover h = { partition, generation, 0 };

    pthread_mutex_lock(&d->mu);
    if (d->parked > 0)
        each_running(d, adopt, &h);
    pthread_cond_broadcast(&d->idle_cv); /* fenced parked jobs wake */
    pthread_mutex_unlock(&d->mu);
    return h.cnt;
}

struct keep_set {
    const int32_t *keep;
    size_t keep_cnt;
};

static void unpark(struct er_dispatch *d, struct job *j, void *arg)
{
    const struct keep_set *ks = arg;

    if (!j->is_parked || part_in(j->partition, ks->keep, ks->keep_cnt))
        return;
    j->is_parked = false;
    d->parked--;
    atomic_store(&j->cancel, true);
}

static bool any_cancelled_running(const struct er_dispatch *d, const void *arg)
{
    size_t b;

    (void)arg;
    for (b = 0; b < RUN_BUCKETS; b++) {
        const struct run *r;

        for (r = d->buckets[b]; r != NULL; r = r->next_bucket) {
            if (r->running != NULL && atomic_load(&r->running->cancel))
                return true;
        }
    }
    return false;
}

size_t er_dispatch_cancel_parked(struct er_dispatch *d, const int32_t *keep,
                                 size_t keep_cnt)
{
    struct keep_set ks = { keep, keep_cnt };
    size_t cnt;

    pthread_mutex_lock(&d->mu);
    cnt = d->parked;
    if (d->parked > 0)
        each_running(d, unpark, &ks);
    cnt -= d->parked;
    if (cnt > 0) {
        pthread_cond_broadcast(&d->idle_cv); /* fenced parked jobs wake */
        wait_while(d, any_cancelled_running, NULL,
                   er_time_mono_ms() + CANCEL_WAIT_MS);
        if (any_cancelled_running(d, NULL))
            ER_LOG_WARN("dispatch",
                        "a cancelled step of a partition that moved on "
                        "still runs; its outcome will be fenced");
    }
    pthread_mutex_unlock(&d->mu);
    return cnt;
}

struct attach {
    int32_t partition;
    int64_t offset;
    int64_t generation;
    bool is_found;
};

static void attach(struct er_dispatch *d, struct job *j, void *arg)
{
    struct attach *a = arg;

    if (a->is_found || !j->is_adopted || j->partition != a->partition ||
        j->offset != a->offset || atomic_load(&j->generation) != a->generation)
        return;
    j->is_adopted = false;
    d->adopted--;
    a->is_found = true;
}

bool er_dispatch_attach(struct er_dispatch *d, int32_t partition,
                        int64_t offset, int64_t generation)
{
    struct attach a = { partition, offset, generation, false };

    pthread_mutex_lock(&d->mu);
    if (d->adopted > 0)
        each_running(d, attach, &a);
    pthread_mutex_unlock(&d->mu);
    return a.is_found;
}

bool er_dispatch_failed(struct er_dispatch *d, char *msg, size_t msg_len)
{
    bool has_failed;

    pthread_mutex_lock(&d->mu);
    has_failed = d->has_failed;
    if (has_failed && msg != NULL)
        snprintf(msg, msg_len, "%s", d->fail_msg);
    pthread_mutex_unlock(&d->mu);
    return has_failed;
}

void er_dispatch_set_on_commit(struct er_dispatch *d, void (*fn)(void *),
                               void *arg)
{
    d->on_commit = fn;
    d->on_commit_arg = arg;
}

void er_dispatch_set_expiry_hook(struct er_dispatch *d,
                                 er_lifecycle_expiry_fn *fn, void *arg)
{
    int i;

    /* Under the lock the threads take a job with: they see the hook. */
    pthread_mutex_lock(&d->mu);
    for (i = 0; i < d->thread_cnt; i++)
        er_lifecycle_set_expiry_hook(d->threads[i].lc, fn, arg);
    pthread_mutex_unlock(&d->mu);
}
