/* bwrap_exec: running a command inside a bwrap sandbox (er_bwrap_exec,
 * er_bwrap_exec_fd) through nsenter, setpriv and unshare under the
 * sandbox's limits (sandbox_bwrap.c says why the chain is built this way).
 * Thread-safe: no state; each call reads the sandbox's state file. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "drivers/bwrap_int.h"

/* What follows `nsenter -t <pid>` (see the header comment of
 * sandbox_bwrap.c): the namespaces and root of the sandbox's pid 1 as its
 * uid 0 and death with nsenter (enter_head); a PID namespace and /proc of
 * the command's own, so that everything it starts dies with it
 * (enter_pidns, left out for a detached command, whose background
 * processes live on under the sandbox's init); no capabilities and
 * no_new_privs, a session of its own, exactly the requested environment
 * (enter_tail; the NAME=VALUE and the command follow).
 *
 * The worker's own tools (the bridge's scripts, er_driver_exec's
 * is_worker_tool) start nothing that must die with them and hold no
 * terminal: the process helper enters the sandbox itself
 * (er_proc_enter: the same namespaces, root, ids, limits, dropping and
 * death signal, through a pidfd so that a reused pid is never entered),
 * with no PID namespace and no session of their own and no program
 * between it and the tool's shell. A process start costs milliseconds
 * here, and a queue_v1 request costs one such exec. */
static const char *const enter_head[] = {
    "--user",      "--mount",
    "--uts",       "--ipc",
    "--net",       "--cgroup",
    "--pid",       "--root",
    "-S",          "0",
    "-G",          "0",
    "--",          ER_BWRAP_IN_SETPRIV,
    "--pdeathsig", "KILL",
    "--",          NULL,
};
static const char *const enter_pidns[] = {
    ER_BWRAP_IN_UNSHARE, "--pid", "--fork", "--kill-child",
    "--mount-proc",      "--",    NULL,
};
static const char *const enter_tail[] = {
    ER_BWRAP_IN_SETPRIV,
    "--no-new-privs",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--",
    ER_BWRAP_IN_SETSID,
    ER_BWRAP_IN_ENV,
    "-i",
    "-C",
    NULL,
};

/* How a command is started in the sandbox. */
enum enter_kind {
    ENTER_OWN_PIDNS = 0, /* everything it starts dies with it */
    ENTER_DETACHED,      /* what it starts in the background lives on */
    ENTER_TOOL,          /* the worker's own: entered by the helper */
};

/* Run cmd with args inside sandbox id (see er_bwrap_exec). */
static int run_in(const char *id, const char *cmd, const char *const *args,
                  const char *cwd, const char *const *env, enum enter_kind kind,
                  const char *stdin_data, size_t stdin_len, int stdin_fd,
                  int stdout_fd, int64_t timeout_ms, size_t max_output,
                  struct er_driver_exec_result *out, struct er_err *err)
{
    struct er_bwrap_limit_args la;
    struct er_bwrap_state st;
    struct er_bwrap_argv a = { .n = 0 };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_proc_enter enter = { .pidfd = -1 };
    const char **argv = NULL;
    const char **envp = NULL;
    char pid_text[24];
    bool has_path = false;
    size_t env_cnt = 0;
    size_t args_cnt = 0;
    size_t n;
    size_t i;
    int rc;

    memset(&res, 0, sizeof(res));
    if (cmd == NULL || cmd[0] == '\0')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the command to run is empty");
    for (i = 0; env != NULL && env[i] != NULL; i++) {
        /* env -i takes every leading NAME=VALUE as an assignment. */
        if (env[i][0] == '=' || strchr(env[i], '=') == NULL)
            return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                              "environment entry %zu is not NAME=VALUE", i);
        if (strncmp(env[i], "PATH=", 5) == 0)
            has_path = true;
        env_cnt++;
    }
    for (i = 0; args != NULL && args[i] != NULL; i++)
        args_cnt++;
    if (!er_bwrap__sandbox_state(id, &st))
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                          "sandbox %s is not running", id);

    /* The tool's program is looked up by the helper outside, so it must be
     * named by a path that is the same file inside. */
    if (kind == ENTER_TOOL && strcmp(cmd, "sh") != 0 && cmd[0] != '/')
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "a worker tool runs sh or a program by its "
                          "absolute path, not \"%s\"",
                          cmd);
    er_proc_opts_init(&opts);
    n = ER_BWRAP_ARGV_MAX + env_cnt + 1 + 3 + 1 + args_cnt + 1;
    argv = er_calloc(n, sizeof(*argv));
    envp = er_calloc(env_cnt + 2, sizeof(*envp));
    if (argv == NULL || envp == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
        goto out;
    }
    n = 0;
    if (kind == ENTER_TOOL) {
        /* No program in between: the tool's own argv and environment. */
        enter.pidfd = er_proc_pidfd_open(st.init_pid);
        if (enter.pidfd < 0 || !er_bwrap__proc_is(st.init_pid, st.init_start)) {
            rc = er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                            "sandbox %s is not running", id);
            goto out;
        }
        enter.memory_bytes = st.lim.memory_bytes;
        enter.processes = st.lim.processes;
        enter.cpu_seconds = st.lim.cpu_seconds;
        opts.enter = &enter;
        for (i = 0; i < env_cnt; i++)
            envp[i] = env[i];
        if (!has_path)
            envp[i++] = "PATH=" ER_PROC_PATH;
        envp[i] = NULL;
        opts.envp = envp;
        opts.cwd = cwd != NULL ? cwd : ER_BWRAP_WORKSPACE;
        argv[n++] = strcmp(cmd, "sh") == 0 ? ER_BWRAP_IN_SH : cmd;
    } else {
        snprintf(pid_text, sizeof(pid_text), "%ld", (long)st.init_pid);
        er_bwrap__add_limits(&a, &st.lim, &la);
        er_bwrap__arg(&a, "nsenter");
        er_bwrap__arg(&a, "-t");
        er_bwrap__arg(&a, pid_text);
        er_bwrap__add_all(&a, enter_head);
        if (kind == ENTER_OWN_PIDNS)
            er_bwrap__add_all(&a, enter_pidns);
        er_bwrap__add_all(&a, enter_tail);
        er_bwrap__arg(&a, cwd != NULL ? cwd : ER_BWRAP_WORKSPACE);
        er_bwrap__arg(&a, "--");
        for (i = 0; i < a.n; i++)
            argv[n++] = a.v[i];
        for (i = 0; i < env_cnt; i++)
            argv[n++] = env[i];
        if (!has_path)
            argv[n++] = "PATH=" ER_PROC_PATH;
        /* env would take a command with '=' for one more assignment. */
        if (strchr(cmd, '=') != NULL) {
            argv[n++] = ER_BWRAP_IN_SH;
            argv[n++] = "-c";
            argv[n++] = "exec \"$0\" \"$@\"";
        }
        argv[n++] = cmd;
        opts.envp = NULL; /* the host's tools get a minimal environment */
    }
    for (i = 0; i < args_cnt; i++)
        argv[n++] = args[i];
    argv[n] = NULL;

    opts.argv = argv;
    opts.stdin_data = stdin_data;
    opts.stdin_len = stdin_len;
    opts.stdin_fd = stdin_fd;
    opts.stdout_fd = stdout_fd;
    opts.timeout_ms = timeout_ms;
    opts.max_output_bytes = max_output;
    rc = er_proc_run(&opts, &res, err);
    if (rc != 0)
        goto out;
    /* nsenter fails (exit 1) when the sandbox ended under it. */
    if (res.exit_code != 0 && !er_bwrap__proc_is(st.init_pid, st.init_start)) {
        er_proc_result_fini(&res);
        rc = er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_NONE,
                        "sandbox %s stopped while the command ran", id);
        goto out;
    }
    out->exit_code = res.exit_code;
    er_proc_signal_name(res.signal, out->signal, sizeof(out->signal));
    out->is_timed_out = res.is_timed_out;
    out->out = res.out;
    out->out_len = res.out_len;
    out->err_text = res.err_text;
    out->err_len = res.err_len;
out:
    if (enter.pidfd >= 0)
        close(enter.pidfd);
    er_free(envp);
    er_free(argv);
    return rc;
}

static void result_init(struct er_driver_exec_result *out)
{
    memset(out, 0, sizeof(*out));
    out->exit_code = -1;
}

int er_bwrap_exec(const char *id, const struct er_driver_exec *req,
                  struct er_driver_exec_result *out, struct er_err *err)
{
    /* A detached command keeps its session of its own: what it leaves
     * running must not share the group this call may kill. */
    enum enter_kind kind = req->is_detached      ? ENTER_DETACHED
                           : req->is_worker_tool ? ENTER_TOOL
                                                 : ENTER_OWN_PIDNS;

    result_init(out);
    if (!er_bwrap_id_is_valid(id))
        return er_bwrap__bad_id(err);
    if (req->stdio != NULL)
        return run_in(id, req->command, req->args, req->cwd, req->env, kind,
                      NULL, 0, req->stdio->in_fd, req->stdio->out_fd,
                      req->timeout_ms, req->max_output_bytes, out, err);
    return run_in(id, req->command, req->args, req->cwd, req->env, kind,
                  req->stdin_data, req->stdin_len, -1, -1, req->timeout_ms,
                  req->max_output_bytes, out, err);
}

int er_bwrap_exec_fd(const char *id, const char *const *argv, const char *cwd,
                     int stdin_fd, int64_t timeout_ms,
                     struct er_driver_exec_result *out, struct er_err *err)
{
    result_init(out);
    if (!er_bwrap_id_is_valid(id))
        return er_bwrap__bad_id(err);
    if (argv == NULL || argv[0] == NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_NONE,
                          "the command to run is empty");
    return run_in(id, argv[0], argv + 1, cwd, NULL, ENTER_OWN_PIDNS, NULL, 0,
                  stdin_fd, -1, timeout_ms, 0, out, err);
}
