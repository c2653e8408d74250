/* plugin_host_int: what the plugin host's files share (the host itself is
 * described in sandbox_int.h). plugin_manifest.c finds the plugins and
 * checks their manifests; plugin_host.c holds the host (the plugin table,
 * setup, shutdown, the workers' environment) and each plugin's supervisor
 * thread (spawn, initialize, stop, restart); plugin_call.c the JSON-RPC
 * traffic with a worker, the secrets handed to it and redacted from what
 * it says, and the callers' API. Private to drivers/plugin_*.c. */
#ifndef ER_DRIVERS_PLUGIN_HOST_INT_H
#define ER_DRIVERS_PLUGIN_HOST_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "common/common.h"
#include "drivers/sandbox_int.h"

/* A stdout line longer than this is dropped unparsed (upstream drops past
 * 128 Mi characters; 64 MiB is plenty for any environment* answer). */
#define ER_PLUGIN_MAX_LINE_BYTES    (64u * 1024u * 1024u)
/* Kept for failure messages (A2). */
#define ER_PLUGIN_STDERR_TAIL_BYTES 8000
/* A longer stderr line is logged in parts. */
#define ER_PLUGIN_STDERR_LINE_BYTES 4000
#define ER_PLUGIN_READ_CHUNK        65536
/* The stop sequence (A4, the rest in plugin_host.c): how long a worker
 * that answered shutdown has to exit before SIGTERM. */
#define ER_PLUGIN_EXIT_GRACE_MS     500

/* The redaction list (er_plugin_note_secret): at most this many secrets
 * per plugin; when full, the least recently noted already sent go
 * first. */
#define ER_PLUGIN_SECRET_MAX_CNT        32
/* Shorter values are not redacted: see er_plugin_note_secret. */
#define ER_PLUGIN_SECRET_MIN_BYTES      4
/* The longest value noted: the largest secret a reference resolves to. */
#define ER_PLUGIN_SECRET_MAX_BYTES      ER_SECRETREF_MAX_BYTES
/* The forms of a value looked for: as sent, without surrounding ASCII
 * white space, and both as JSON.stringify escapes them inside a string. */
#define ER_PLUGIN_SECRET_FORM_MAX       4
/* The longest form: a value of control bytes, each escaped as \u00XX. */
#define ER_PLUGIN_SECRET_FORM_MAX_BYTES (6u * ER_PLUGIN_SECRET_MAX_BYTES)
/* What replaces each occurrence of a form. */
#define ER_PLUGIN_REDACTED              "[REDACTED]"

/* Where a plugin's worker is (struct er_plugin's status). */
enum er_plugin_status {
    ER_PLUGIN_STOPPED,
    ER_PLUGIN_STARTING,
    ER_PLUGIN_RUNNING,
    ER_PLUGIN_STOPPING,
    ER_PLUGIN_CRASHED,
    ER_PLUGIN_BACKOFF,
};

/* One caller's request, on the caller's stack; linked into plugin->calls
 * while it waits. All fields under plugin->mu. */
struct er_plugin_call {
    struct er_plugin_call *next;
    int64_t id;
    struct er_plugin_outmsg *out; /* its line while still queued, else NULL */
    bool is_done;
    json_t *result; /* owned, on success */
    int rpc_code;   /* 0 on success */
    char *message;  /* owned, on failure */
    char *excerpt;  /* owned: the worker's stderr when it exited */
};

/* One line queued for the worker's stdin (under plugin->mu). */
struct er_plugin_outmsg {
    struct er_plugin_outmsg *next;
    /* The call it carries; NULL for host messages. */
    struct er_plugin_call *call;
    size_t len;
    size_t off; /* bytes written so far */
    char data[];
};

/* A secret handed to a plugin's worker (er_plugin_note_secret), under
 * plugin->mu. */
struct er_plugin_secret {
    /* form[0] is the value as sent; the others its other forms, each
     * stored only when it differs from those before it and is long
     * enough. */
    struct er_secret form[ER_PLUGIN_SECRET_FORM_MAX];
    size_t form_cnt;
    /* Whether a call carrying it has been queued for the worker (by
     * er_plugin_call); until then owner is the thread whose next call
     * carries it. */
    bool is_sent;
    pthread_t owner;
};

/* One plugin: what plugin_manifest.c loaded, and its worker. */
struct er_plugin {
    /* Read-only from setup to shutdown. */
    char *dir;           /* real path of the plugin's directory */
    char *key;           /* manifest id (the plugin key) */
    json_t *manifest;    /* never changed after setup */
    char *manifest_text; /* the manifest as compact JSON, for initialize */
    char *entry;         /* real path of the worker entry point */
    bool is_script;      /* run with node */
    bool has_register_cap;

    pthread_mutex_t mu;
    pthread_cond_t cond; /* status changes and finished calls */
    int wake[2];         /* self-pipe into the supervisor's poll */
    /* Under mu. */
    enum er_plugin_status status;
    bool has_thread;
    bool is_closing;
    bool is_given_up; /* stays crashed: too many consecutive crashes */
    pthread_t thread;
    int64_t next_id; /* host request ids: from 1, never reset (A3) */
    struct er_plugin_call *calls;
    struct er_plugin_outmsg *out_head;
    struct er_plugin_outmsg *out_tail;
    json_t *supported; /* supportedMethods of the running worker */
    int crash_cnt;     /* consecutive crashes */
    bool has_crashed;
    int64_t last_crash_ms; /* monotonic */
    pid_t pid;             /* the current worker, 0 when none */
    /* What is redacted from everything the worker says, oldest first. */
    struct er_plugin_secret secrets[ER_PLUGIN_SECRET_MAX_CNT];
    size_t secret_cnt;
};

/* The stop sequence's phases (A4). */
enum er_plugin_stop {
    ER_PLUGIN_STOP_NONE,
    ER_PLUGIN_STOP_DRAIN, /* shutdown sent, waiting for its answer */
    ER_PLUGIN_STOP_GRACE, /* answered, waiting for the exit */
    ER_PLUGIN_STOP_TERM,  /* SIGTERM sent */
    ER_PLUGIN_STOP_KILL,  /* SIGKILL sent */
};

/* One worker process, owned by the supervisor thread. */
struct er_plugin_proc {
    pid_t pid;
    int in_fd; /* the worker's stdin (non-blocking) */
    int out_fd;
    int err_fd;
    bool is_out_eof;
    bool is_err_eof;
    bool is_in_broken;
    int64_t out_eof_ms;
    /* How it ended. */
    int exit_code; /* -1: none (signal, or unknown) */
    int exit_sig;
    /* stdout framing. */
    struct er_buf line;
    bool is_skipping; /* inside an over-long line */
    /* stderr as read and not yet scrubbed for good: the bytes that may
     * still be the start of a secret, and which of them (one byte each,
     * non-zero) already belong to one. Wiped before they are freed. */
    struct er_buf err_pend;
    struct er_buf err_mask;
    bool is_err_redacting; /* the last byte passed on was redacted */
    /* stderr after scrubbing: the current line and the last
     * ER_PLUGIN_STDERR_TAIL_BYTES. */
    char err_line[ER_PLUGIN_STDERR_LINE_BYTES];
    size_t err_line_len;
    char tail[ER_PLUGIN_STDERR_TAIL_BYTES];
    size_t tail_len;
    /* Lifecycle. */
    int64_t init_id; /* the pending initialize; 0 when none */
    int64_t init_deadline_ms;
    int64_t shutdown_id;
    enum er_plugin_stop stop;
    int64_t stop_deadline_ms;
    char buf[ER_PLUGIN_READ_CHUNK];
};

/* ---- plugin_manifest.c ---- */

/* s for a message, in out: at most 80 bytes, control bytes as '?'. */
const char *er_plugin__shown(const char *s, char *out, size_t out_len);

/* Whether v is an array of at most max_cnt strings. */
bool er_plugin__is_string_array(const json_t *v, size_t max_cnt);

/* The sandbox_provider driver key of environmentDrivers[i] ("" for another
 * kind; borrowed from the manifest), for i below er_plugin__driver_cnt. */
const char *er_plugin__provider_at(const struct er_plugin *plugin, size_t i);
size_t er_plugin__driver_cnt(const struct er_plugin *plugin);

/* The real path of node (ENVRUN_NODE, else node in PATH; owned), or NULL. */
char *er_plugin__node_find(void);

/* Load and check every plugin directory under dir into *out (owned, *out_cnt
 * of them; free with er_plugin__plugins_free). 0, or ER_EINVAL naming the
 * first bad directory, ER_ENOMEM. */
int er_plugin__plugins_load(const char *dir, struct er_plugin ***out,
                            size_t *out_cnt, struct er_err *err);
void er_plugin__plugins_free(struct er_plugin **plugins, size_t cnt);

/* ---- plugin_host.c ---- */

int64_t er_plugin__now_ms(void); /* monotonic */
bool er_plugin__is_blank(const char *s);
/* Close *fd when open and set it to -1. */
void er_plugin__close_fd(int *fd);
/* Wait on plugin->cond (mu held) until deadline_ms (monotonic). */
void er_plugin__cond_wait_until(struct er_plugin *plugin, int64_t deadline_ms);
/* Wake the plugin's supervisor out of its poll. */
void er_plugin__wake(struct er_plugin *plugin);

/* Initialize failed (reason): log it and kill the worker. Supervisor
 * thread. */
void er_plugin__init_fail(struct er_plugin *plugin, struct er_plugin_proc *proc,
                          const char *reason);

/* A caller enters the plugin table (false: the host is not set up or is
 * shutting down) and leaves it; the table stays while anyone is in. */
bool er_plugin__host_enter(void);
void er_plugin__host_leave(void);

/* The plugin serving provider, or NULL (between enter and leave). */
struct er_plugin *er_plugin__for(const char *provider);

/* Start the plugin's supervisor if needed and wait for its worker to run
 * (mu held). 0, or ER_EDRIVER with domain.md 4.3 step 3's message. */
int er_plugin__wait_running(struct er_plugin *plugin, const char *provider,
                            struct er_err *err);

/* ---- plugin_call.c ---- */

/* The outbound queue (mu held): a line made of head and body (owned, NULL
 * when out of memory), queued with er_plugin__out_push (which takes it), a
 * complete line of the host's own (text without its newline), and writing
 * what the worker's stdin takes now. */
struct er_plugin_outmsg *er_plugin__outmsg_new(const char *head,
                                               size_t head_len,
                                               const char *body,
                                               size_t body_len);
void er_plugin__out_push(struct er_plugin *plugin,
                         struct er_plugin_outmsg *msg);
void er_plugin__out_push_text(struct er_plugin *plugin, const char *text);
void er_plugin__out_flush(struct er_plugin *plugin,
                          struct er_plugin_proc *proc);

/* Read what fd (the worker's stdout when is_out, else its stderr) has now,
 * at most max_reads chunks, framing and routing it; true at EOF.
 * Supervisor thread. */
bool er_plugin__drain(struct er_plugin *plugin, struct er_plugin_proc *proc,
                      int fd, bool is_out, size_t max_reads);
/* The worker has exited and its pipes are drained: pass on the stderr
 * held back (what is left of a secret cut short is redacted) and log the
 * last line. Supervisor thread. */
void er_plugin__err_finish(struct er_plugin *plugin,
                           struct er_plugin_proc *proc);

/* proc's buffers for stderr, empty (er_plugin__proc_finish frees them). */
void er_plugin__err_init(struct er_plugin_proc *proc);

/* ---- plugin_redact.c (mu held for all of these) ---- */

/* Wipe and forget the plugin's secrets: all of them when is_all, else
 * those gone to a worker (the worker has exited). */
void er_plugin__secrets_wipe(struct er_plugin *plugin, bool is_all);
/* The calling thread's next call has just been queued for the worker (or
 * could not be): the secrets it noted now go when that worker exits. */
void er_plugin__secrets_hand_over(struct er_plugin *plugin);
/* text with the plugin's secrets redacted, as a new string (er_free), or
 * NULL when out of memory. */
char *er_plugin__scrub_dup(const struct er_plugin *plugin, const char *text);
/* Scrub n more bytes p of the worker's stderr into out (what can no longer
 * be the start of a secret; all of it when is_final). */
int er_plugin__err_scrub(struct er_plugin *plugin, struct er_plugin_proc *proc,
                         const char *p, size_t n, bool is_final,
                         struct er_buf *out);
/* Free proc's stderr buffers, wiped. */
void er_plugin__err_pend_fini(struct er_plugin_proc *proc);

/* The worker has exited and been reaped: fail every waiting call at once
 * and close its descriptors. Supervisor thread. */
void er_plugin__proc_finish(struct er_plugin *plugin,
                            struct er_plugin_proc *proc);

#endif
