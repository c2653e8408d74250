/* proc_test: the subprocess runner against real /bin/sh children: exit
 * codes, signals, the deadline (SIGTERM, then SIGKILL), caps, stdin, and
 * that every child is reaped. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "drivers/driver.h"

static int run_sh(const char *script, struct er_proc_opts *opts,
                  struct er_proc_result *res, struct er_err *err)
{
    const char *argv[] = { "sh", "-c", script, NULL };

    opts->argv = argv;
    return er_proc_run(opts, res, err);
}

/* No child of this process is left, running or zombie. */
static void assert_no_children(void)
{
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

static void proc_reports_exit_codes(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    er_proc_opts_init(&opts);
    assert_int_equal(run_sh("exit 3", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 3);
    assert_int_equal(res.signal, 0);
    assert_false(res.is_timed_out);
    assert_string_equal(res.out, "");
    assert_string_equal(res.err_text, "");
    er_proc_result_fini(&res);

    er_proc_opts_init(&opts);
    assert_int_equal(run_sh("echo out; echo err >&2", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, "out\n");
    assert_int_equal(res.out_len, 4);
    assert_string_equal(res.err_text, "err\n");
    er_proc_result_fini(&res);
    assert_no_children();
}

static void proc_reports_signals(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    char name[16];

    (void)state;
    er_proc_opts_init(&opts);
    assert_int_equal(run_sh("kill -USR1 $$", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, -1);
    assert_int_equal(res.signal, SIGUSR1);
    er_proc_signal_name(res.signal, name, sizeof(name));
    assert_string_equal(name, "SIGUSR1");
    er_proc_result_fini(&res);

    er_proc_signal_name(SIGKILL, name, sizeof(name));
    assert_string_equal(name, "SIGKILL");
    er_proc_signal_name(0, name, sizeof(name));
    assert_string_equal(name, "");
    er_proc_signal_name(40, name, sizeof(name));
    assert_string_equal(name, "SIG40");
    assert_no_children();
}

static int timeout_calls;
static char timeout_seen[64];

static void on_timeout(void *arg, const char *err_text, size_t err_len)
{
    (void)err_len;
    *(int *)arg += 1;
    timeout_calls++;
    snprintf(timeout_seen, sizeof(timeout_seen), "%s", err_text);
}

static void proc_timeout_sends_term(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    int calls = 0;
    int64_t t0 = er_time_mono_ms();

    (void)state;
    er_proc_opts_init(&opts);
    opts.timeout_ms = 100;
    opts.on_timeout = on_timeout;
    opts.on_timeout_arg = &calls;
    assert_int_equal(run_sh("echo started >&2; sleep 5", &opts, &res, &err), 0);
    assert_true(res.is_timed_out);
    assert_int_equal(res.exit_code, -1);
    assert_int_equal(res.signal, SIGTERM);
    assert_int_equal(calls, 1);
    assert_string_equal(timeout_seen, "started\n");
    assert_true(er_time_mono_ms() - t0 < 2000);
    er_proc_result_fini(&res);
    assert_no_children();
}

static void proc_timeout_kills_a_child_that_traps_term(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    int64_t t0 = er_time_mono_ms();
    int64_t elapsed;

    (void)state;
    er_proc_opts_init(&opts);
    opts.timeout_ms = 100;
    opts.grace_ms = 300;
    /* The shell ignores TERM; its sleep children die at the first signal,
     * the loop starts another, so only SIGKILL ends it. */
    assert_int_equal(run_sh("trap '' TERM; echo ready; "
                            "while :; do sleep 1; done",
                            &opts, &res, &err),
                     0);
    elapsed = er_time_mono_ms() - t0;
    assert_true(res.is_timed_out);
    assert_int_equal(res.signal, SIGKILL);
    assert_string_equal(res.out, "ready\n");
    assert_true(elapsed >= 400);
    assert_true(elapsed < 3000);
    er_proc_result_fini(&res);
    assert_no_children();
}

static void proc_caps_each_stream(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    er_proc_opts_init(&opts);
    opts.max_output_bytes = 1000;
    assert_int_equal(run_sh("head -c 300000 /dev/zero | tr '\\0' a; "
                            "head -c 5000 /dev/zero | tr '\\0' b >&2; exit 4",
                            &opts, &res, &err),
                     0);
    assert_int_equal(res.exit_code, 4);
    assert_int_equal(res.out_len, 1000);
    assert_true(res.is_out_truncated);
    assert_int_equal(strlen(res.out), 1000);
    assert_int_equal(res.out[999], 'a');
    assert_int_equal(res.err_len, 1000);
    assert_true(res.is_err_truncated);
    assert_int_equal(res.err_text[0], 'b');
    er_proc_result_fini(&res);

    /* 0 means the default, 128 KiB. */
    er_proc_opts_init(&opts);
    assert_int_equal(
        run_sh("head -c 200000 /dev/zero | tr '\\0' c", &opts, &res, &err), 0);
    assert_int_equal(res.out_len, ER_PROC_DEFAULT_MAX_OUTPUT);
    assert_true(res.is_out_truncated);
    er_proc_result_fini(&res);
    assert_no_children();
}

static void proc_delivers_stdin(void **state)
{
    const char *argv[] = { "cat", NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    size_t len = 1024 * 1024 + 7; /* more than a pipe buffer */
    char *data = malloc(len);
    size_t i;

    (void)state;
    assert_non_null(data);
    for (i = 0; i < len; i++)
        data[i] = (char)('a' + i % 26);
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.stdin_data = data;
    opts.stdin_len = len;
    opts.max_output_bytes = 2 * 1024 * 1024;
    assert_int_equal(er_proc_run(&opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_int_equal(res.out_len, len);
    assert_memory_equal(res.out, data, len);
    assert_false(res.is_out_truncated);
    er_proc_result_fini(&res);

    /* A child that never reads its stdin: the write fails with EPIPE, and
     * SIGPIPE must not kill this process. */
    er_proc_opts_init(&opts);
    opts.stdin_data = data;
    opts.stdin_len = len;
    assert_int_equal(run_sh("exec 0<&-; echo closed", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, "closed\n");
    er_proc_result_fini(&res);

    /* No stdin at all reads /dev/null. */
    er_proc_opts_init(&opts);
    assert_int_equal(run_sh("wc -c", &opts, &res, &err), 0);
    assert_string_equal(res.out, "0\n");
    er_proc_result_fini(&res);
    free(data);
    assert_no_children();
}

static void proc_passes_env_and_cwd(void **state)
{
    const char *envp[] = { "FOO=bar baz", "PATH=/usr/bin:/bin", NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    er_proc_opts_init(&opts);
    opts.envp = envp;
    opts.cwd = "/tmp";
    assert_int_equal(run_sh("echo \"$FOO\"; pwd", &opts, &res, &err), 0);
    assert_string_equal(res.out, "bar baz\n/tmp\n");
    er_proc_result_fini(&res);
    assert_no_children();
}

static void proc_child_starts_with_default_signals(void **state)
{
    struct sigaction ign;
    struct sigaction old;
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    /* The worker ignores SIGPIPE; its children must not inherit that. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &ign, &old), 0);
    er_proc_opts_init(&opts);
    assert_int_equal(
        run_sh("grep -E '^Sig(Ign|Blk)' /proc/self/status", &opts, &res, &err),
        0);
    assert_non_null(strstr(res.out, "SigBlk:\t0000000000000000"));
    /* SIGPIPE (bit 12 of SigIgn) is not ignored. The whole mask is not
     * compared: a CI job started in the background may have SIGINT and
     * SIGQUIT ignored further up, and a shell may set its own. */
    {
        const char *line = strstr(res.out, "SigIgn:\t");
        unsigned long long mask;

        assert_non_null(line);
        mask = strtoull(line + strlen("SigIgn:\t"), NULL, 16);
        if ((mask & (1ULL << (SIGPIPE - 1))) != 0)
            print_message("child status: %s\n", res.out);
        assert_int_equal(mask & (1ULL << (SIGPIPE - 1)), 0);
    }
    er_proc_result_fini(&res);
    sigaction(SIGPIPE, &old, NULL);
    assert_no_children();
}

static void proc_does_not_wait_for_grandchildren(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    int64_t t0 = er_time_mono_ms();

    (void)state;
    er_proc_opts_init(&opts);
    /* The background sleep keeps stdout open after the shell exits. */
    assert_int_equal(run_sh("sleep 2 & echo done", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, "done\n");
    assert_true(er_time_mono_ms() - t0 < 1500);
    er_proc_result_fini(&res);
}

static void proc_start_failures_are_errors(void **state)
{
    const char *missing[] = { "/nonexistent/envrun-prog", NULL };
    const char *not_in_path[] = { "envrun-no-such-program", NULL };
    const char *argv[] = { "true", NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    er_proc_opts_init(&opts);
    opts.argv = missing;
    assert_int_equal(er_proc_run(&opts, &res, &err), ER_EIO);
    assert_non_null(strstr(err.msg, "cannot run /nonexistent/envrun-prog"));
    assert_null(res.out);

    opts.argv = not_in_path;
    assert_int_equal(er_proc_run(&opts, &res, &err), ER_EIO);
    assert_non_null(strstr(err.msg, "not found in PATH"));

    opts.argv = argv;
    opts.cwd = "/nonexistent-dir";
    assert_int_equal(er_proc_run(&opts, &res, &err), ER_EIO);
    assert_non_null(
        strstr(err.msg, "cannot change directory to /nonexistent-dir"));
    assert_no_children();
}

static void proc_spawn_and_wait(void **state)
{
    const char *argv[] = { "sh", "-c", "echo spawned; exit 7", NULL };
    const char *slow[] = { "sleep", "5", NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    char buf[64];
    int fds[2];
    ssize_t n;
    pid_t pid = -1;

    (void)state;
    assert_int_equal(pipe(fds), 0);
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.stdout_fd = fds[1];
    assert_int_equal(er_proc_spawn(&opts, &pid, &err), 0);
    close(fds[1]);
    n = read(fds[0], buf, sizeof(buf) - 1);
    assert_int_equal(n, 8);
    buf[n] = '\0';
    assert_string_equal(buf, "spawned\n");
    close(fds[0]);
    memset(&res, 0, sizeof(res));
    assert_int_equal(er_proc_wait(pid, 0, &res, &err), 0);
    assert_int_equal(res.exit_code, 7);
    assert_false(res.is_timed_out);

    er_proc_opts_init(&opts);
    opts.argv = slow;
    assert_int_equal(er_proc_spawn(&opts, &pid, &err), 0);
    assert_int_equal(er_proc_wait(pid, 100, &res, &err), 0);
    assert_true(res.is_timed_out);
    assert_int_equal(res.signal, SIGKILL);
    assert_no_children();
}

/* The worker's environment holds ENVRUN_DATABASE_URL and secrets: a child
 * whose caller gives no envp gets a minimal one built for it, never the
 * worker's (STYLE.md 7a). */
static void child_env_is_minimal_not_the_workers(void **state)
{
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;

    (void)state;
    assert_int_equal(setenv("ENVRUN_DATABASE_URL", "postgres://secret", 1), 0);
    assert_int_equal(setenv("ENVRUN_SECRET_TOKEN", "s3cret", 1), 0);
    assert_int_equal(setenv("TAR_OPTIONS", "--to-command=false", 1), 0);
    er_proc_opts_init(&opts);
    assert_int_equal(run_sh("env", &opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_null(strstr(res.out, "ENVRUN_"));
    assert_null(strstr(res.out, "secret"));
    assert_null(strstr(res.out, "TAR_OPTIONS"));
    assert_non_null(strstr(res.out, "PATH=" ER_PROC_PATH "\n"));
    assert_non_null(strstr(res.out, "LANG="));
    er_proc_result_fini(&res);
    unsetenv("ENVRUN_DATABASE_URL");
    unsetenv("ENVRUN_SECRET_TOKEN");
    unsetenv("TAR_OPTIONS");
    assert_no_children();
}

/* A worker started with SIGCHLD ignored: the kernel reaps the child itself
 * and waitpid fails with ECHILD. The exit status is then unknown and must
 * be an error (or the real 3), never an invented 0. */
static void child_exit_status_is_never_invented(void **state)
{
    struct sigaction ign;
    struct sigaction old;
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    const char *argv[] = { "sh", "-c", "exit 3", NULL };
    pid_t pid = -1;
    int rc;

    (void)state;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGCHLD, &ign, &old), 0);

    er_proc_opts_init(&opts);
    er_err_clear(&err);
    rc = run_sh("exit 3", &opts, &res, &err);
    if (rc == 0) {
        assert_int_equal(res.exit_code, 3);
        er_proc_result_fini(&res);
    } else {
        assert_int_equal(rc, ER_EIO);
        assert_int_not_equal(res.exit_code, 0);
        assert_non_null(strstr(err.msg, "waitpid"));
    }

    er_proc_opts_init(&opts);
    opts.argv = argv;
    assert_int_equal(er_proc_spawn(&opts, &pid, &err), 0);
    memset(&res, 0, sizeof(res));
    rc = er_proc_wait(pid, 5000, &res, &err);
    if (rc == 0)
        assert_int_equal(res.exit_code, 3);
    else
        assert_int_not_equal(res.exit_code, 0);

    assert_int_equal(sigaction(SIGCHLD, &old, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(proc_reports_exit_codes),
        cmocka_unit_test(proc_reports_signals),
        cmocka_unit_test(proc_timeout_sends_term),
        cmocka_unit_test(proc_timeout_kills_a_child_that_traps_term),
        cmocka_unit_test(proc_caps_each_stream),
        cmocka_unit_test(proc_delivers_stdin),
        cmocka_unit_test(proc_passes_env_and_cwd),
        cmocka_unit_test(proc_child_starts_with_default_signals),
        cmocka_unit_test(proc_does_not_wait_for_grandchildren),
        cmocka_unit_test(proc_start_failures_are_errors),
        cmocka_unit_test(proc_spawn_and_wait),
        cmocka_unit_test(child_env_is_minimal_not_the_workers),
        cmocka_unit_test(child_exit_status_is_never_invented),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
