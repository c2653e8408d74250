/* hostile_workspace_test: a workspace, and the worker's own dotfiles, are
 * untrusted (issue 7, STYLE.md 7a). Through a real worker and the real sshd
 * of scripts/test-services.sh, each case plants something that would run
 * code on the worker (a git fsmonitor, hooks, filters, an external diff, a
 * global git config, an ssh config) or delete what envrun did not create,
 * and proves it never happens. The test runs in a mount namespace of its
 * own with a tmpfs on the worker user's home, so the planted dotfiles are
 * this test's alone. One worker serves every case. */
#define _GNU_SOURCE /* unshare(2), CLONE_NEWNS */
#include <errno.h>
#include <pwd.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/harness.h"

/* ssh round trips on 2 busy cores: generous, still bounded. */
#define SSH_WAIT_MS 60000

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;
/* The worker user's home (a tmpfs here): where ssh and git look for the
 * worker's own config. */
static char home[ER_HARNESS_PATH_MAX];
/* Where the wrappers of git, tar and ssh append the environment they were
 * started with (child_env_has_no_database_url). */
static char env_dump[ER_HARNESS_PATH_MAX + 32];
static char path_env[8192];
static const char *worker_env[8];

/* ----------------------------------------------------------------
 * Set-up: a private home, wrappers that record each child's environment
 * ---------------------------------------------------------------- */

/* Before any thread exists: a mount namespace of the test's own (the
 * worker inherits it), with a fresh tmpfs on the home directory of this
 * user, which ssh finds through the password database (not $HOME). */
static int isolate_home(void)
{
    struct passwd *pw = getpwuid(geteuid());

    if (pw == NULL || pw->pw_dir == NULL || pw->pw_dir[0] != '/') {
        fprintf(stderr, "hostile: no home directory for uid %lu\n",
                (unsigned long)geteuid());
        return -1;
    }
    snprintf(home, sizeof(home), "%s", pw->pw_dir);
    if (unshare(CLONE_NEWNS) != 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") != 0) {
        perror("hostile: a private home needs root (unshare, mount)");
        return -1;
    }
    return setenv("HOME", home, 1);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        er_harness_fail(__FILE__, __LINE__, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
    if (chmod(path, mode) != 0)
        er_harness_fail(__FILE__, __LINE__, "cannot chmod %s", path);
}

/* Run a printf-formatted local sh script; fail the test unless it exits
 * 0. */
static void local_ok(const char *fmt, ...) ER_PRINTF(1, 2);

static void local_ok(const char *fmt, ...)
{
    char script[8192];
    char *out = NULL;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(script, sizeof(script), fmt, ap);
    va_end(ap);
    rc = er_harness_ssh_local(script, &out);
    if (rc != 0)
        er_harness_fail(__FILE__, __LINE__, "`%s` exited %d: %s", script, rc,
                        out != NULL ? out : "");
    er_free(out);
}

/* A wrapper named prog in dir that appends its environment to env_dump,
 * then runs the real prog (found on the test's PATH). */
static int write_wrapper(const char *dir, const char *prog)
{
    char script[ER_HARNESS_PATH_MAX * 4];
    char path[ER_HARNESS_PATH_MAX + 32];
    char cmd[64];
    char *real = NULL;
    size_t n;

    snprintf(cmd, sizeof(cmd), "command -v %s", prog);
    if (er_harness_ssh_local(cmd, &real) != 0 || real == NULL) {
        fprintf(stderr, "hostile: no %s on PATH\n", prog);
        er_free(real);
        return -1;
    }
    n = strlen(real);
    while (n > 0 && real[n - 1] == '\n')
        real[--n] = '\0';
    snprintf(script, sizeof(script),
             "#!/bin/sh\n{ echo '--- %s'; env; } >> '%s'\nexec '%s' \"$@\"\n",
             prog, env_dump, real);
    snprintf(path, sizeof(path), "%s/%s", dir, prog);
    er_free(real);
    write_file(path, script, 0755);
    return 0;
}

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };
    char bin[ER_HARNESS_PATH_MAX + 16];
    const char *path = getenv("PATH");
    size_t i;

    (void)state;
    h = er_harness_new("hostile_workspace", 2, NULL);
    if (h == NULL)
        return -1;
    ssh = er_harness_ssh_new(h);
    if (ssh == NULL)
        return -1;
    /* Every git, tar and ssh the worker runs goes through a wrapper that
     * records its environment. */
    snprintf(bin, sizeof(bin), "%s/bin", h->dir);
    snprintf(env_dump, sizeof(env_dump), "%s/child-env.txt", h->dir);
    if ((mkdir(bin, 0755) != 0 && errno != EEXIST) ||
        write_wrapper(bin, "git") != 0 || write_wrapper(bin, "tar") != 0 ||
        write_wrapper(bin, "ssh") != 0) {
        fprintf(stderr, "hostile: cannot make the wrappers in %s\n", bin);
        return -1;
    }
    snprintf(path_env, sizeof(path_env), "PATH=%s:%s", bin,
             path != NULL ? path : "/usr/bin:/bin");
    for (i = 0; ssh->worker_env[i] != NULL && i < 6; i++)
        worker_env[i] = ssh->worker_env[i];
    worker_env[i++] = path_env;
    worker_env[i] = NULL;
    opts.env = worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_ssh_destroy(ssh);
    ssh = NULL;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* ----------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------- */

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    return er_harness_roundtrip(h, worker, c, SSH_WAIT_MS);
}

/* A program that records that it ran: appends its arguments to the file
 * canary (and its environment to canary.env), then copies stdin to stdout
 * (so a filter would still "work"). Written to <h->dir>/evil-<name>; its
 * path goes to prog and the canary's to canary. */
static void plant_program(const char *name, char *prog, size_t prog_len,
                          char *canary, size_t canary_len)
{
    char script[ER_HARNESS_PATH_MAX * 3];

    snprintf(prog, prog_len, "%s/evil-%s", h->dir, name);
    snprintf(canary, canary_len, "%s/canary-%s", h->dir, name);
    unlink(canary);
    snprintf(script, sizeof(script),
             "#!/bin/sh\necho \"ran: $0 $*\" >> '%s'\nenv >> '%s.env'\n"
             "exec cat\n",
             canary, canary);
    write_file(prog, script, 0755);
}

static void assert_never_ran(const char *canary)
{
    char script[2 * ER_HARNESS_PATH_MAX];
    char *text = NULL;

    if (access(canary, F_OK) != 0)
        return;
    snprintf(script, sizeof(script), "cat '%s'", canary);
    (void)er_harness_ssh_local(script, &text);
    er_harness_fail(__FILE__, __LINE__,
                    "a planted program ran on the worker (%s): %s", canary,
                    text != NULL ? text : "");
}

/* An ssh environment of the test's company on the test server. */
static void make_env(const char *company_id, const char *name,
                     const char *remote_path, const char *isolation,
                     char env_id[37])
{
    json_t *config = er_harness_ssh_config(ssh, remote_path, isolation);

    assert_int_equal(
        er_harness_ssh_env_insert(h, company_id, name, config, env_id), 0);
    json_decref(config);
}

static void acquire(struct er_harness_run *run, const char *env_id,
                    char lease_id[37], char *remote_cwd, size_t remote_cwd_len)
{
    struct er_harness_cmd c;
    const json_t *res;
    json_t *body;
    const char *cwd;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
    cwd = er_harness_json_str(body, "lease.metadata.remoteCwd");
    ER_HARNESS_NON_NULL(cwd);
    snprintf(remote_cwd, remote_cwd_len, "%s", cwd);
    json_decref(body);
}

static const json_t *realize(struct er_harness_run *run, const char *cwd,
                             const char *overlay_json)
{
    struct er_harness_cmd c;

    er_harness_cmd_realize(&c, run, cwd);
    c.cmd.runtime_overlay_json = (char *)(uintptr_t)overlay_json;
    return roundtrip(&c);
}

static const json_t *release(struct er_harness_run *run)
{
    struct er_harness_cmd c;

    er_harness_cmd_release(&c, run, ER_RELEASE_RELEASED);
    return roundtrip(&c);
}

static void host_dir(const char *leaf, char *out, size_t out_len)
{
    snprintf(out, out_len, "%s/ws-%s", h->dir, leaf);
}

/* A git workspace (er_harness_ssh_git_workspace) whose committed, unchanged
 * README.md is stat-dirty: `git diff` then hashes it (through any clean
 * filter) and refreshes the index (running post-index-change). */
static void git_workspace(const char *leaf, char *local, size_t local_len)
{
    host_dir(leaf, local, local_len);
    assert_int_equal(er_harness_ssh_git_workspace(local, "main"), 0);
    local_ok("touch -d '2001-02-03 04:05:06' '%s/README.md'", local);
}

/* Acquire a shared ssh environment at <root>/<leaf>, realize local there
 * (it must work: the hardening never breaks a sync) and release. */
static void sync_once(const char *leaf, const char *local)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];

    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/%s", ssh->root, leaf);
    make_env(run.company_id, leaf, remote, "shared", env_id);
    acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    ER_HARNESS_ASSERT_OK(realize(&run, local, NULL));
    assert_true(er_harness_ssh_remote_ok(
        ssh,
        "grep -qx hello '%s/README.md' && grep -q uncommitted "
        "'%s/src/app.txt' && test -f '%s/new.txt'",
        cwd, cwd, cwd));
    ER_HARNESS_ASSERT_OK(release(&run));
}

/* ----------------------------------------------------------------
 * Cases
 * ---------------------------------------------------------------- */

/* core.fsmonitor in the workspace's .git/config names a program git runs
 * on every index read (git diff, git ls-files --others). */
static void fsmonitor_in_workspace_never_runs(void **state)
{
    char local[ER_HARNESS_PATH_MAX + 32];
    char prog[ER_HARNESS_PATH_MAX + 32];
    char canary[ER_HARNESS_PATH_MAX + 32];

    (void)state;
    plant_program("fsmonitor", prog, sizeof(prog), canary, sizeof(canary));
    git_workspace("fsmonitor", local, sizeof(local));
    local_ok("git -C '%s' config core.fsmonitor '%s' && "
             "git -C '%s' config core.fsmonitorHookVersion 2",
             local, prog, local);
    sync_once("fsmonitor", local);
    assert_never_ran(canary);
}

/* Hooks in .git/hooks and under a core.hooksPath of the workspace: `git
 * diff` refreshing a stat-dirty index writes it and so runs
 * post-index-change. */
static void git_hooks_in_workspace_never_run(void **state)
{
    static const char *const hooks[] = {
        "post-index-change", "reference-transaction",
        "post-checkout",     "pre-auto-gc",
        "pre-commit",        "post-commit",
        "post-merge",        "post-rewrite",
        "pre-push",          "fsmonitor-watchman",
    };
    char local[ER_HARNESS_PATH_MAX + 32];
    char prog[ER_HARNESS_PATH_MAX + 32];
    char canary[ER_HARNESS_PATH_MAX + 32];
    size_t i;

    (void)state;
    plant_program("hooks", prog, sizeof(prog), canary, sizeof(canary));
    git_workspace("hooks", local, sizeof(local));
    local_ok("mkdir -p '%s/.git/hooks' '%s/.githooks'", local, local);
    for (i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
        local_ok("cp '%s' '%s/.git/hooks/%s' && cp '%s' '%s/.githooks/%s'",
                 prog, local, hooks[i], prog, local, hooks[i]);
    sync_once("hooks", local);
    assert_never_ran(canary);

    /* The same with hooks under core.hooksPath. */
    local_ok("git -C '%s' config core.hooksPath .githooks && "
             "touch -d '2001-02-03 04:05:07' '%s/README.md'",
             local, local);
    sync_once("hooks-path", local);
    assert_never_ran(canary);
}

/* .gitattributes selects a filter, a diff driver with an external command
 * and a textconv; .git/config defines them (the filter required, so a
 * disabled one must not break the sync either) and diff.external. */
static void external_diff_and_filters_in_workspace_never_run(void **state)
{
    char local[ER_HARNESS_PATH_MAX + 32];
    char prog[ER_HARNESS_PATH_MAX + 32];
    char canary[ER_HARNESS_PATH_MAX + 32];

    (void)state;
    plant_program("filters", prog, sizeof(prog), canary, sizeof(canary));
    git_workspace("filters", local, sizeof(local));
    local_ok("cd '%s' && printf '* filter=evil diff=evil\\n' > .gitattributes "
             "&& git config filter.evil.clean '%s clean' && "
             "git config filter.evil.smudge '%s smudge' && "
             "git config filter.evil.required true && "
             "git config filter.dotted.name.clean '%s dotted' && "
             "git config diff.evil.command '%s diff-command' && "
             "git config diff.evil.textconv '%s textconv' && "
             "git config diff.external '%s external'",
             local, prog, prog, prog, prog, prog, prog);
    sync_once("filters", local);
    assert_never_ran(canary);
}

/* The worker's own ~/.gitconfig and ~/.config/git/config (its HOME) are
 * not the workspace's to use: git runs with no global or system config. */
static void global_git_config_is_ignored(void **state)
{
    char local[ER_HARNESS_PATH_MAX + 32];
    char prog[ER_HARNESS_PATH_MAX + 32];
    char canary[ER_HARNESS_PATH_MAX + 32];
    char path[ER_HARNESS_PATH_MAX + 64];
    char text[ER_HARNESS_PATH_MAX * 8];

    (void)state;
    plant_program("global", prog, sizeof(prog), canary, sizeof(canary));
    /* The workspace first: the test's own git reads the same HOME. */
    git_workspace("global", local, sizeof(local));
    snprintf(text, sizeof(text),
             "[core]\n\tfsmonitor = %s\n\thooksPath = %s/global-hooks\n"
             "\tpager = %s\n[filter \"g\"]\n\tclean = %s\n[diff]\n"
             "\texternal = %s\n",
             prog, home, prog, prog, prog);
    snprintf(path, sizeof(path), "%s/.gitconfig", home);
    write_file(path, text, 0644);
    local_ok("mkdir -p '%s/.config/git' '%s/global-hooks' && "
             "cp '%s' '%s/.config/git/config' && "
             "cp '%s' '%s/global-hooks/post-index-change' && "
             "printf '* filter=g\\n' > '%s/.config/git/attributes'",
             home, home, path, home, prog, home, home);
    sync_once("global", local);
    assert_never_ran(canary);
    local_ok("rm -rf '%s/.gitconfig' '%s/.config/git' '%s/global-hooks'", home,
             home, home);
}

/* The worker's ~/.ssh/config: a Match exec runs while ssh reads it, a
 * LocalCommand after it connects. ssh runs with -F none. */
static void worker_ssh_config_is_ignored(void **state)
{
    char local[ER_HARNESS_PATH_MAX + 32];
    char prog[ER_HARNESS_PATH_MAX + 32];
    char canary[ER_HARNESS_PATH_MAX + 32];
    char path[ER_HARNESS_PATH_MAX + 64];
    char text[ER_HARNESS_PATH_MAX * 8];

    (void)state;
    plant_program("sshconfig", prog, sizeof(prog), canary, sizeof(canary));
    snprintf(path, sizeof(path), "%s/.ssh", home);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(text, sizeof(text),
             "Match exec \"%s match-exec </dev/null\"\n"
             "  PermitLocalCommand yes\n"
             "  LocalCommand %s local-command </dev/null\n",
             prog, prog);
    snprintf(path, sizeof(path), "%s/.ssh/config", home);
    write_file(path, text, 0600);
    git_workspace("sshconfig", local, sizeof(local));
    sync_once("sshconfig", local);
    assert_never_ran(canary);
    local_ok("rm -rf '%s/.ssh'", home);
}

/* The worker's environment holds ENVRUN_DATABASE_URL (and the secrets
 * directory): no child gets it. Every git, tar and ssh the worker ran in
 * this test wrote its environment to env_dump; a provision command dumps
 * what the remote side sees. */
static void child_env_has_no_database_url(void **state)
{
    char local[ER_HARNESS_PATH_MAX + 32];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char script[ER_HARNESS_PATH_MAX * 2];
    char env_id[37];
    char lease_id[37];
    struct er_harness_run run;
    json_t *o;
    char *overlay;
    char *dump = NULL;
    char *remote_env = NULL;

    (void)state;
    git_workspace("childenv", local, sizeof(local));
    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/childenv", ssh->root);
    make_env(run.company_id, "childenv", remote, "per_lease", env_id);
    acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    o = json_pack("{s:s}", "provisionCommand", "env > provision-env.txt");
    overlay = er_harness_json_text(o);
    json_decref(o);
    ER_HARNESS_ASSERT_OK(realize(&run, local, overlay));
    free(overlay);
    snprintf(script, sizeof(script), "cat '%s/provision-env.txt'", cwd);
    assert_int_equal(er_harness_ssh_remote(ssh, script, &remote_env), 0);
    ER_HARNESS_ASSERT_OK(release(&run));

    snprintf(script, sizeof(script), "cat '%s'", env_dump);
    assert_int_equal(er_harness_ssh_local(script, &dump), 0);
    ER_HARNESS_NON_NULL(dump);
    ER_HARNESS_NON_NULL(remote_env);
    /* The wrappers did run: git, tar and ssh each at least once. */
    ER_HARNESS_ASSERT_CONTAINS(dump, "--- git");
    ER_HARNESS_ASSERT_CONTAINS(dump, "--- tar");
    ER_HARNESS_ASSERT_CONTAINS(dump, "--- ssh");
    ER_HARNESS_ASSERT_CONTAINS(dump, "PATH=");
    if (strstr(dump, "ENVRUN_") != NULL || strstr(dump, h->db_url) != NULL ||
        strstr(dump, ssh->secrets_dir) != NULL)
        er_harness_fail(
            __FILE__, __LINE__,
            "a child of the worker got the worker's environment "
            "(ENVRUN_*):\n%.3000s",
            strstr(dump, "ENVRUN_") != NULL ? strstr(dump, "ENVRUN_") : dump);
    if (strstr(remote_env, "ENVRUN_DATABASE_URL") != NULL ||
        strstr(remote_env, h->db_url) != NULL)
        er_harness_fail(__FILE__, __LINE__,
                        "the remote command saw the database URL");
    er_free(dump);
    er_free(remote_env);
}

/* remoteWorkspacePath names a directory envrun did not make: someone's
 * home, say (here a stand-in with .ssh/authorized_keys and a .bashrc: the
 * real home of the test user holds the keys every test instance logs in
 * with; the "home" rule itself is proven by ssh_test's
 * ssh_dir_scripts_touch_only_marked_directories). With the default shared
 * isolation realize used to empty it; now it refuses, naming the rule, and
 * nothing is deleted. */
static void realize_refuses_to_empty_unmarked_home_directory(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    char local[ER_HARNESS_PATH_MAX + 32];
    const json_t *res;
    const char *msg;

    (void)state;
    snprintf(remote, sizeof(remote), "%s/someones-home", ssh->root);
    assert_true(er_harness_ssh_remote_ok(
        ssh,
        "mkdir -p '%s/.ssh' && echo canary > '%s/.ssh/authorized_keys' "
        "&& echo canary > '%s/.bashrc'",
        remote, remote, remote));
    er_harness_run_init(&run);
    make_env(run.company_id, "someones home", remote, "shared", env_id);
    acquire(&run, env_id, lease_id, cwd, sizeof(cwd));

    /* Both ways of syncing: tar (a plain directory) and git. */
    host_dir("home-plain", local, sizeof(local));
    assert_int_equal(er_harness_ssh_plain_workspace(local), 0);
    res = realize(&run, local, NULL);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_ASSERT_CONTAINS(msg, "refusing to sync into");
    ER_HARNESS_ASSERT_CONTAINS(msg, "no .envrun-workspace marker");
    git_workspace("home-git", local, sizeof(local));
    res = realize(&run, local, NULL);
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");

    assert_true(er_harness_ssh_remote_ok(
        ssh,
        "grep -qx canary '%s/.ssh/authorized_keys' && "
        "grep -qx canary '%s/.bashrc' && test ! -e '%s/top.txt' && "
        "test ! -e '%s/.git' && test ! -e '%s/.envrun-workspace'",
        remote, remote, remote, remote, remote));
    ER_HARNESS_ASSERT_OK(release(&run));
    assert_true(er_harness_ssh_remote_ok(
        ssh, "grep -qx canary '%s/.ssh/authorized_keys'", remote));
}

/* A per-lease directory whose mark is gone (or was never there): release
 * removes nothing, and says the cleanup failed. */
static void release_refuses_to_remove_unmarked_directory(void **state)
{
    struct er_harness_run run;
    char env_id[37];
    char lease_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char cwd[ER_HARNESS_PATH_MAX + 64];
    bool is_marked;
    json_t *rows;

    (void)state;
    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/unmarked-release", ssh->root);
    make_env(run.company_id, "unmarked release", remote, "per_lease", env_id);
    acquire(&run, env_id, lease_id, cwd, sizeof(cwd));
    /* Made and marked by acquire; then the mark is replaced by someone's
     * files. */
    is_marked = er_harness_ssh_remote_ok(
        ssh, "grep -qx 'lease:%s' '%s/.envrun-workspace'", lease_id, cwd);
    assert_true(er_harness_ssh_remote_ok(
        ssh, "rm -f '%s/.envrun-workspace' && echo canary > '%s/canary.txt'",
        cwd, cwd));
    ER_HARNESS_ASSERT_OK(release(&run));
    /* Nothing was deleted. */
    assert_true(
        er_harness_ssh_remote_ok(ssh, "grep -qx canary '%s/canary.txt'", cwd));
    rows = er_harness_pg_query(
        h->db_url,
        "SELECT status, cleanup_status, failure_reason FROM "
        "environment_leases WHERE id = $1",
        1, (const char *[]){ lease_id });
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 0), "status", "released");
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 0), "cleanup_status", "failed");
    ER_HARNESS_ASSERT_STR(json_array_get(rows, 0), "failure_reason",
                          "removing the per-lease remote workspace failed");
    json_decref(rows);
    assert_true(er_harness_worker_wait_log(worker, "refusing to remove", 5000));
    assert_true(is_marked);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fsmonitor_in_workspace_never_runs),
        cmocka_unit_test(git_hooks_in_workspace_never_run),
        cmocka_unit_test(external_diff_and_filters_in_workspace_never_run),
        cmocka_unit_test(global_git_config_is_ignored),
        cmocka_unit_test(worker_ssh_config_is_ignored),
        cmocka_unit_test(child_env_has_no_database_url),
        cmocka_unit_test(realize_refuses_to_empty_unmarked_home_directory),
        cmocka_unit_test(release_refuses_to_remove_unmarked_directory),
    };

    if (isolate_home() != 0)
        return 1;
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
