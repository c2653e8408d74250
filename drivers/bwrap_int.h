/* bwrap_int: what the bwrap provider's files share (the provider itself is
 * described in sandbox_int.h, how it is built in sandbox_bwrap.c).
 * sandbox_bwrap.c holds the layout under the sandbox directory, the marker
 * and state files, /proc, the lock, destroy and sweep; bwrap_create.c makes
 * a sandbox (and the probe); bwrap_exec.c enters one. Private to
 * drivers/sandbox_bwrap.c and drivers/bwrap_*.c. */
#ifndef ER_DRIVERS_BWRAP_INT_H
#define ER_DRIVERS_BWRAP_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/common.h"
#include "drivers/sandbox_int.h"

#define ER_BWRAP_MARKER     ".envrun-sandbox"
#define ER_BWRAP_NEW_PREFIX ".new-"

/* Programs inside the sandbox (the host's /usr, read-only). */
#define ER_BWRAP_IN_SETPRIV "/usr/bin/setpriv"
#define ER_BWRAP_IN_UNSHARE "/usr/bin/unshare"
#define ER_BWRAP_IN_SETSID  "/usr/bin/setsid"
#define ER_BWRAP_IN_ENV     "/usr/bin/env"
#define ER_BWRAP_IN_SH      "/bin/sh"
#define ER_BWRAP_IN_SLEEP   "/bin/sleep"

/* What <dir>/<id>/state holds. */
struct er_bwrap_state {
    pid_t init_pid; /* the sandbox's pid 1, as the host sees it */
    unsigned long long init_start;
    pid_t mon_pid; /* the bwrap parent on the host */
    unsigned long long mon_start;
    struct er_bwrap_limits lim;
};

struct er_bwrap_proc_stat {
    char state; /* R S D Z X ... */
    pid_t ppid;
    unsigned long long start; /* field 22, clock ticks after boot */
};

/* What is at <dir>/<id>. */
enum er_bwrap_found {
    ER_BWRAP_FOUND_NONE, /* nothing */
    /* a directory with this installation's marker for id */
    ER_BWRAP_FOUND_OURS,
    ER_BWRAP_FOUND_FOREIGN, /* anything else: never touched */
};

/* Room for the argv of bwrap and of an exec's fixed part. */
#define ER_BWRAP_ARGV_MAX 128

struct er_bwrap_argv {
    const char *v[ER_BWRAP_ARGV_MAX];
    size_t n;
};

/* Storage for the prlimit options. */
struct er_bwrap_limit_args {
    char as[48];
    char nproc[48];
    char cpu[48];
};

/* ---- sandbox_bwrap.c (each is described at its definition) ---- */

int er_bwrap__bad_id(struct er_err *err); /* ER_EINVAL */
ER_NODISCARD int er_bwrap__join(char *out, size_t out_len, ...);
ER_NODISCARD int er_bwrap__sb_path(char *out, size_t out_len, const char *id,
                                   const char *leaf);
void er_bwrap__sleep_ms(long ms);
ssize_t er_bwrap__read_small(const char *path, char *buf, size_t buf_len);
ER_NODISCARD int er_bwrap__write_new_at(int dirfd, const char *name,
                                        const char *content, mode_t mode);
int er_bwrap__proc_stat_read(pid_t pid, struct er_bwrap_proc_stat *ps);
bool er_bwrap__proc_is(pid_t pid, unsigned long long start);
void er_bwrap__marker_text(const char *id, char *out, size_t out_len);
int er_bwrap__state_read(int iddir, struct er_bwrap_state *st);
ER_NODISCARD int er_bwrap__state_write(int iddir,
                                       const struct er_bwrap_state *st);
int er_bwrap__open_sandbox(int basefd, const char *id);
bool er_bwrap__sandbox_state(const char *id, struct er_bwrap_state *st);
int er_bwrap__base_lock(struct er_err *err);
int er_bwrap__remove_tree(const char *path);
enum er_bwrap_found er_bwrap__inspect(int basefd, const char *id, int *iddir);
int er_bwrap__foreign(const char *id, struct er_err *err); /* ER_EIO */
int er_bwrap__teardown(const char *id, int iddir, char *del_path,
                       size_t del_len, struct er_err *err);

/* ---- bwrap_create.c (each is described at its definition) ---- */

void er_bwrap__arg(struct er_bwrap_argv *a, const char *s);
void er_bwrap__add_all(struct er_bwrap_argv *a, const char *const *list);
void er_bwrap__add_limits(struct er_bwrap_argv *a,
                          const struct er_bwrap_limits *lim,
                          struct er_bwrap_limit_args *la);

#endif /* ER_DRIVERS_BWRAP_INT_H */
