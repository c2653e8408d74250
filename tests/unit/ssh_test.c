/* ssh_test: the ssh driver's pure parts (config validation, quoting, env
 * keys, the remote script run by a local /bin/sh, the ssh argv, the
 * target) and its failure paths that need no sshd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "drivers/driver.h"

#define LEASE_ID "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
#define SECRET   "TOPSECRETKEYMATERIAL"

static char tmp[64];

static int setup(void **state)
{
    char path[128];
    FILE *f;

    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/ssh-test-XXXXXX");
    if (mkdtemp(tmp) == NULL)
        return -1;
    /* Secrets are read from <ENVRUN_SECRETS_DIR>/<companyId>/ only. */
    snprintf(path, sizeof(path), "%s/co-1", tmp);
    if (mkdir(path, 0700) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/co-1/key-1", tmp);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(SECRET "\n", f);
    fclose(f);
    er_driver_setup(tmp);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];

    (void)state;
    er_driver_setup(NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static json_t *jload(const char *text)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);

    assert_non_null(v);
    return v;
}

/* A valid config with one member replaced (value NULL: removed). */
static json_t *config_with(const char *key, const char *value_json)
{
    json_t *cfg = jload("{\"host\":\"example.com\",\"username\":\"agent\","
                        "\"remoteWorkspacePath\":\"/srv/ws\"}");

    if (key != NULL && value_json != NULL)
        json_object_set_new(cfg, key, jload(value_json));
    else if (key != NULL)
        json_object_del(cfg, key);
    return cfg;
}

/* Parsing config_with(key, value) fails with exactly msg. */
static void expect_config_error(const char *key, const char *value_json,
                                const char *msg)
{
    struct er_ssh_config cfg;
    struct er_err err;
    json_t *config = config_with(key, value_json);

    er_err_clear(&err);
    assert_int_equal(er_ssh_config_parse(config, &cfg, &err), ER_EINVAL);
    assert_string_equal(err.msg, msg);
    json_decref(config);
}

static void expect_config_ok(const char *key, const char *value_json,
                             struct er_ssh_config *cfg)
{
    struct er_err err;
    json_t *config = config_with(key, value_json);

    er_err_clear(&err);
    assert_int_equal(er_ssh_config_parse(config, cfg, &err), 0);
    json_decref(config);
}

static void ssh_config_defaults(void **state)
{
    struct er_ssh_config cfg;

    (void)state;
    expect_config_ok(NULL, NULL, &cfg);
    assert_string_equal(cfg.host, "example.com");
    assert_int_equal(cfg.port, 22);
    assert_string_equal(cfg.username, "agent");
    assert_string_equal(cfg.remote_workspace_path, "/srv/ws");
    assert_null(cfg.private_key_ref);
    assert_null(cfg.known_hosts);
    assert_true(cfg.is_strict_host_key_checking);
    assert_false(cfg.is_per_lease);
    assert_int_equal(cfg.connect_timeout_s, 10);
}

static void ssh_config_coerces_and_trims(void **state)
{
    struct er_ssh_config cfg;
    struct er_err err;
    json_t *config;

    (void)state;
    expect_config_ok("port", "\"2222\"", &cfg);
    assert_int_equal(cfg.port, 2222);
    expect_config_ok("port", "\" 2200 \"", &cfg);
    assert_int_equal(cfg.port, 2200);
    expect_config_ok("port", "2201.0", &cfg);
    assert_int_equal(cfg.port, 2201);
    expect_config_ok("port", "null", &cfg);
    assert_int_equal(cfg.port, 22);
    expect_config_ok("port", "65535", &cfg);
    assert_int_equal(cfg.port, 65535);
    expect_config_ok("host", "\"  h.example  \"", &cfg);
    assert_string_equal(cfg.host, "h.example");
    expect_config_ok("username", "\" bob \"", &cfg);
    assert_string_equal(cfg.username, "bob");
    expect_config_ok("remoteWorkspacePath", "\"/srv/ws///\"", &cfg);
    assert_string_equal(cfg.remote_workspace_path, "/srv/ws");
    expect_config_ok("remoteWorkspacePath", "\"/\"", &cfg);
    assert_string_equal(cfg.remote_workspace_path, "/");
    expect_config_ok("knownHosts", "\"   \"", &cfg); /* blank -> null */
    assert_null(cfg.known_hosts);
    /* known_hosts is borrowed from the config: look while it lives. */
    config = config_with("knownHosts", "\"h ssh-ed25519 AAAA\"");
    assert_int_equal(er_ssh_config_parse(config, &cfg, &err), 0);
    assert_string_equal(cfg.known_hosts, "h ssh-ed25519 AAAA");
    json_decref(config);
    expect_config_ok("strictHostKeyChecking", "false", &cfg);
    assert_false(cfg.is_strict_host_key_checking);
    expect_config_ok("workspaceIsolation", "\"per_lease\"", &cfg);
    assert_true(cfg.is_per_lease);
    expect_config_ok("workspaceIsolation", "\"shared\"", &cfg);
    assert_false(cfg.is_per_lease);
    expect_config_ok("connectTimeoutS", "\"30\"", &cfg);
    assert_int_equal(cfg.connect_timeout_s, 30);
    expect_config_ok("privateKey", "null", &cfg);
    expect_config_ok("privateKeySecretRef",
                     "{\"type\":\"secret_ref\",\"secretId\":\"key-1\"}", &cfg);
    assert_non_null(cfg.private_key_ref);
    expect_config_ok("privateKeySecretRef", "\"env:ENVRUN_SECRET_SSH_KEY\"",
                     &cfg);
    assert_non_null(cfg.private_key_ref);
}

static void ssh_config_rejects_with_the_spec_messages(void **state)
{
    struct er_ssh_config cfg;
    struct er_err err;
    json_t *not_obj = jload("[]");

    (void)state;
    assert_int_equal(er_ssh_config_parse(not_obj, &cfg, &err), ER_EINVAL);
    assert_string_equal(err.msg, "SSH environment config must be an object.");
    json_decref(not_obj);

    expect_config_error("host", NULL, "SSH environments require a host.");
    expect_config_error("host", "\"   \"", "SSH environments require a host.");
    expect_config_error("host", "7", "SSH environments require a host.");
    expect_config_error("username", NULL,
                        "SSH environments require a username.");
    expect_config_error("username", "\"\"",
                        "SSH environments require a username.");
    expect_config_error("remoteWorkspacePath", "\"relative/ws\"",
                        "SSH remote workspace path must be absolute.");
    expect_config_error("remoteWorkspacePath", "\"~/ws\"",
                        "SSH remote workspace path must be absolute.");
    expect_config_error("remoteWorkspacePath", NULL,
                        "SSH environments require a remote workspace path.");
    expect_config_error("port", "0",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "65536",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "-22",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "\"22x\"",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "\"\"",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "22.5",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("port", "true",
                        "SSH port must be an integer between 1 and 65535.");
    expect_config_error("knownHosts", "5",
                        "SSH knownHosts must be a string or null.");
    expect_config_error("strictHostKeyChecking", "\"yes\"",
                        "SSH strictHostKeyChecking must be a boolean.");
    expect_config_error("workspaceIsolation", "\"private\"",
                        "SSH workspaceIsolation must be \"shared\" or "
                        "\"per_lease\".");
    expect_config_error("connectTimeoutS", "0",
                        "SSH connectTimeoutS must be an integer between 1 "
                        "and 300.");
    expect_config_error("connectTimeoutS", "301",
                        "SSH connectTimeoutS must be an integer between 1 "
                        "and 300.");
    expect_config_error("privateKey", "\"-----BEGIN OPENSSH PRIVATE KEY-----\"",
                        "SSH private keys must be given as "
                        "privateKeySecretRef, not inline.");
    expect_config_error(
        "privateKeySecretRef",
        "{\"type\":\"secret_ref\",\"secretId\":\"../x\"}",
        "privateKeySecretRef: secret id \"../x\" is not valid (it must not "
        "contain '/' or start with '.')");
    expect_config_error("hostname", "\"typo.example\"",
                        "SSH environment config has an unknown key: hostname");
    expect_config_error("bad\nkey", "1",
                        "SSH environment config has an unknown key: bad?key");
}

static void ssh_config_rejects_hostile_hosts(void **state)
{
    static const char *const hosts[] = {
        "\"-oProxyCommand=touch /tmp/x\"",
        "\"a b\"",
        "\"user@host\"",
        "\"host/path\"",
        "\"ho\\nst\"",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++)
        expect_config_error("host", hosts[i],
                            "SSH host must be a host name or address (no "
                            "spaces, '@', '/' or leading '-').");
    expect_config_error("username", "\"a b\"",
                        "SSH username must not contain spaces or control "
                        "characters.");
    expect_config_error("remoteWorkspacePath", "\"/srv/\\nws\"",
                        "SSH remote workspace path must not contain control "
                        "characters.");
}

/* Run `printf '%s' <quoted s>` through /bin/sh; the output must be s. */
static void assert_quote_roundtrip(const char *s)
{
    const char *argv[] = { "sh", "-c", NULL, NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    struct er_buf buf;

    er_buf_init(&buf, 1 << 20);
    assert_int_equal(er_buf_printf(&buf, "printf '%%s' "), 0);
    assert_int_equal(er_sh_quote(&buf, s), 0);
    argv[2] = (const char *)buf.data;
    er_proc_opts_init(&opts);
    opts.argv = argv;
    assert_int_equal(er_proc_run(&opts, &res, &err), 0);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, s);
    er_proc_result_fini(&res);
    er_buf_fini(&buf);
}

static const char *const hostile[] = {
    "it's",
    "'",
    "''",
    "'\"'\"'",
    "\"double\"",
    "$(touch /tmp/envrun-ssh-test-pwned)",
    "`touch /tmp/envrun-ssh-test-pwned`",
    "a\nb",
    "back\\slash\\",
    "; rm -rf /tmp/envrun-ssh-test-pwned",
    "*",
    "",
    "$HOME ${PATH}",
    "--",
    "-n",
    "tab\there",
};

static void ssh_quote_survives_hostile_strings(void **state)
{
    struct er_buf buf;
    size_t i;

    (void)state;
    er_buf_init(&buf, 1024);
    assert_int_equal(er_sh_quote(&buf, "it's"), 0);
    assert_string_equal((const char *)buf.data, "'it'\"'\"'s'");
    er_buf_fini(&buf);
    for (i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++)
        assert_quote_roundtrip(hostile[i]);
    assert_int_equal(access("/tmp/envrun-ssh-test-pwned", F_OK), -1);
}

static void ssh_env_keys_are_checked(void **state)
{
    const char *good[] = { "A=1", "_x=", "PATH_2=a=b", NULL };
    const char *digit[] = { "A=1", "1BAD=x", NULL };
    const char *dash[] = { "BAD-KEY=" SECRET, NULL };
    const char *empty[] = { "=" SECRET, NULL };
    const char *no_eq[] = { "NOVALUE", NULL };
    const char *space[] = { "A B=x", NULL };
    struct er_err err;

    (void)state;
    assert_int_equal(er_ssh_env_check(NULL, &err), 0);
    assert_int_equal(er_ssh_env_check(good, &err), 0);
    assert_int_equal(er_ssh_env_check(digit, &err), ER_EINVAL);
    assert_string_equal(err.msg, "Invalid SSH environment variable key: 1BAD");
    assert_int_equal(er_ssh_env_check(dash, &err), ER_EINVAL);
    assert_string_equal(err.msg,
                        "Invalid SSH environment variable key: BAD-KEY");
    assert_int_equal(er_ssh_env_check(empty, &err), ER_EINVAL);
    assert_string_equal(err.msg, "Invalid SSH environment variable key: ");
    assert_null(strstr(err.msg, SECRET));
    assert_int_equal(er_ssh_env_check(no_eq, &err), ER_EINVAL);
    assert_string_equal(err.msg,
                        "Invalid SSH environment variable key: NOVALUE");
    assert_int_equal(er_ssh_env_check(space, &err), ER_EINVAL);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Run an er_ssh_exec_script script under the local /bin/sh with envp, in
 * "/", as sshd runs the remote command; res filled. */
static void run_exec_script(const struct er_buf *script,
                            const char *const *envp, struct er_proc_result *res)
{
    const char *argv[] = { "sh", "-c", (const char *)script->data, NULL };
    struct er_proc_opts opts;
    struct er_err err;

    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    opts.cwd = "/";
    assert_int_equal(er_proc_run(&opts, res, &err), 0);
}

/* The first line on stderr is the marker and the session's pgid. */
static void assert_pgid_marker_first(const struct er_proc_result *res)
{
    assert_true(strncmp(res->err_text, "MARK-", 5) == 0);
    assert_true(res->err_text[5] >= '1' && res->err_text[5] <= '9');
}

/* The remote script of execute, run by a local /bin/sh: hostile args, env
 * and cwd arrive intact; the profiles are sourced (a bash-only one is
 * skipped, not fatal); the pgid marker comes first on stderr. */
static void ssh_exec_script_runs_under_sh(void **state)
{
    const char *args[32];
    char hostile_env[256];
    const char *env[] = { hostile_env, "EMPTY=", NULL };
    char home[128];
    char cwd[128];
    char env_home[160];
    const char *envp[] = { env_home, "PATH=/usr/bin:/bin", NULL };
    struct er_driver_exec req;
    struct er_proc_result res;
    struct er_err err;
    struct er_buf script;
    struct er_buf want;
    size_t n = 0;
    size_t i;

    (void)state;
    snprintf(home, sizeof(home), "%s/home", tmp);
    snprintf(cwd, sizeof(cwd), "%s/it's a \"dir\"", tmp);
    assert_int_equal(mkdir(home, 0700), 0);
    assert_int_equal(mkdir(cwd, 0700), 0);
    snprintf(env_home, sizeof(env_home), "HOME=%s", home);
    write_text(home, ".profile", "export FROM_PROFILE=yes\n");
    write_text(home, ".bash_profile", "arr=(1 2)\nexport BASH_ONLY=1\n");
    write_text(home, ".zprofile", "echo noise; false\n");
    snprintf(hostile_env, sizeof(hostile_env), "HOSTILE=%s", hostile[0]);

    args[n++] = "-c";
    args[n++] = "printf '[%s]' \"$@\"; printf '\\n%s|%s|%s|%s|%s' "
                "\"$FROM_PROFILE\" \"$BASH_ONLY\" \"$HOSTILE\" \"$EMPTY\" "
                "\"$PWD\"";
    args[n++] = "argv0";
    er_buf_init(&want, 1 << 16);
    for (i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        args[n++] = hostile[i];
        assert_int_equal(er_buf_printf(&want, "[%s]", hostile[i]), 0);
    }
    args[n] = NULL;
    assert_int_equal(er_buf_printf(&want, "\nyes||%s||%s", hostile[0], cwd), 0);

    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.env = env;
    er_buf_init(&script, 1 << 20);
    assert_int_equal(er_ssh_exec_script(&req, cwd, "MARK-", &script, &err), 0);
    assert_non_null(strstr((const char *)script.data, "exec env"));
    run_exec_script(&script, envp, &res);
    assert_int_equal(res.exit_code, 0);
    assert_string_equal(res.out, (const char *)want.data);
    assert_pgid_marker_first(&res);
    assert_int_equal(access("/tmp/envrun-ssh-test-pwned", F_OK), -1);
    er_proc_result_fini(&res);

    /* A cwd that does not exist fails the command, not the shell. */
    er_buf_reset(&script);
    req.args = NULL;
    req.command = "true";
    assert_int_equal(
        er_ssh_exec_script(&req, "/nonexistent/dir", "MARK-", &script, &err),
        0);
    run_exec_script(&script, envp, &res);
    assert_int_equal(res.exit_code, 1);
    er_proc_result_fini(&res);
    er_buf_fini(&script);
    er_buf_fini(&want);
}

/* The worker's own tools (is_worker_tool) skip the login profiles and
 * env(1), and still print the pgid marker first. */
static void ssh_exec_script_for_tools_skips_profiles(void **state)
{
    const char *args[] = { "-c", "printf '%s|%s' \"$FROM_PROFILE\" \"$PWD\"",
                           NULL };
    char home[128];
    char env_home[160];
    char want[80];
    const char *envp[] = { env_home, "PATH=/usr/bin:/bin", NULL };
    struct er_driver_exec req;
    struct er_proc_result res;
    struct er_err err;
    struct er_buf script;

    (void)state;
    snprintf(home, sizeof(home), "%s/home-tool", tmp);
    assert_int_equal(mkdir(home, 0700), 0);
    snprintf(env_home, sizeof(env_home), "HOME=%s", home);
    write_text(home, ".profile", "export FROM_PROFILE=yes\n");
    memset(&req, 0, sizeof(req));
    req.command = "sh";
    req.args = args;
    req.is_worker_tool = true;
    er_buf_init(&script, 1 << 20);
    assert_int_equal(er_ssh_exec_script(&req, tmp, "MARK-", &script, &err), 0);
    assert_null(strstr((const char *)script.data, ".profile"));
    assert_null(strstr((const char *)script.data, "exec env"));
    run_exec_script(&script, envp, &res);
    assert_int_equal(res.exit_code, 0);
    snprintf(want, sizeof(want), "|%s", tmp);
    assert_string_equal(res.out, want);
    assert_pgid_marker_first(&res);
    er_proc_result_fini(&res);
    er_buf_fini(&script);
}

/* Run the er_ssh_dir_script of op on dir for owner under the local
 * /bin/sh with HOME=home; its stdout goes to out (out_len bytes). Returns
 * the exit code. */
static int run_dir_script(enum er_ssh_dir_op op, const char *dir,
                          const char *owner, const char *home, char *out,
                          size_t out_len)
{
    const char *argv[] = { "sh", "-c", NULL, NULL };
    char home_env[300];
    const char *envp[] = { "PATH=" ER_PROC_PATH, home_env, NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_buf script;
    struct er_err err;
    int code;

    snprintf(home_env, sizeof(home_env), "HOME=%s", home);
    er_buf_init(&script, 1u << 20);
    assert_int_equal(er_ssh_dir_script(op, dir, owner, &script), 0);
    assert_int_equal(er_buf_append(&script, "", 1), 0);
    argv[2] = (const char *)script.data;
    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.envp = envp;
    assert_int_equal(er_proc_run(&opts, &res, &err), 0);
    snprintf(out, out_len, "%s", res.out);
    code = res.exit_code;
    er_proc_result_fini(&res);
    er_buf_fini(&script);
    return code;
}

static bool exists(const char *dir, const char *name)
{
    char path[300];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A remote directory is only emptied or removed when envrun made and
 * marked it: the scripts refuse "/", the SSH user's home (however spelled,
 * even marked), a non-empty unmarked directory and another owner's mark,
 * and delete nothing then. */
static void ssh_dir_scripts_touch_only_marked_directories(void **state)
{
    char home[128];
    char home_link[128];
    char fresh[128];
    char used[128];
    char other[128];
    char out[512];
    char want[256];

    (void)state;
    snprintf(home, sizeof(home), "%s/guard-home", tmp);
    snprintf(home_link, sizeof(home_link), "%s/guard-home-link", tmp);
    snprintf(fresh, sizeof(fresh), "%s/dirs/fresh", tmp);
    snprintf(used, sizeof(used), "%s/dirs/used", tmp);
    snprintf(other, sizeof(other), "%s/dirs/other", tmp);
    assert_int_equal(mkdir(home, 0700), 0);
    assert_int_equal(symlink(home, home_link), 0);

    /* A new directory is made and marked; its path comes last. */
    assert_int_equal(run_dir_script(ER_SSH_DIR_ACQUIRE, fresh, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    snprintf(want, sizeof(want), "%s\n", fresh);
    assert_string_equal(out, want);
    assert_true(exists(fresh, ER_SSH_DIR_MARKER));
    assert_int_equal(run_dir_script(ER_SSH_DIR_CLAIM, fresh, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_string_equal(out, "envrun-guard:ok\n");
    /* Another owner's mark is refused. */
    assert_int_equal(run_dir_script(ER_SSH_DIR_CLAIM, fresh, "lease:L2", home,
                                    out, sizeof(out)),
                     0);
    assert_string_equal(out, "envrun-guard:foreign\n");
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, fresh, "lease:L2", home,
                                    out, sizeof(out)),
                     97);
    assert_true(exists(fresh, ER_SSH_DIR_MARKER));
    /* Its owner removes it; a missing directory is no error. */
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, fresh, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_int_equal(access(fresh, F_OK), -1);
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, fresh, "lease:L1", home,
                                    out, sizeof(out)),
                     0);

    /* Someone's directory with files: never marked, emptied or removed. */
    assert_int_equal(mkdir(used, 0700), 0);
    write_text(used, "canary", "keep\n");
    assert_int_equal(run_dir_script(ER_SSH_DIR_ACQUIRE, used, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_false(exists(used, ER_SSH_DIR_MARKER));
    assert_int_equal(run_dir_script(ER_SSH_DIR_CLAIM, used, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_string_equal(out, "envrun-guard:unmarked\n");
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, used, "lease:L1", home,
                                    out, sizeof(out)),
                     97);
    assert_string_equal(out, "envrun-guard:unmarked\n");
    assert_true(exists(used, "canary"));

    /* A mark that is a symlink (to a file that would match) is not one. */
    assert_int_equal(mkdir(other, 0700), 0);
    write_text(tmp, "fake-mark", "lease:L1\n");
    snprintf(want, sizeof(want), "%s/fake-mark", tmp);
    snprintf(out, sizeof(out), "%s/%s", other, ER_SSH_DIR_MARKER);
    assert_int_equal(symlink(want, out), 0);
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, other, "lease:L1", home,
                                    out, sizeof(out)),
                     97);
    assert_string_equal(out, "envrun-guard:foreign\n");
    assert_int_equal(access(other, F_OK), 0);

    /* The home directory: refused even empty or marked, by any spelling. */
    assert_int_equal(run_dir_script(ER_SSH_DIR_CLAIM, home, "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_string_equal(out, "envrun-guard:home\n");
    assert_false(exists(home, ER_SSH_DIR_MARKER));
    write_text(home, ER_SSH_DIR_MARKER, "lease:L1\n");
    write_text(home, "authorized_keys", "keep\n");
    assert_int_equal(run_dir_script(ER_SSH_DIR_REMOVE, home_link, "lease:L1",
                                    home, out, sizeof(out)),
                     97);
    assert_string_equal(out, "envrun-guard:home\n");
    assert_true(exists(home, "authorized_keys"));

    /* And the root directory. */
    assert_int_equal(run_dir_script(ER_SSH_DIR_CLAIM, "/", "lease:L1", home,
                                    out, sizeof(out)),
                     0);
    assert_string_equal(out, "envrun-guard:root\n");
    assert_int_equal(access("/" ER_SSH_DIR_MARKER, F_OK), -1);
}

static void ssh_exec_script_rejects_bad_input(void **state)
{
    const char *bad_env[] = { "OK=1", "NOT-OK=" SECRET, NULL };
    struct er_driver_exec req;
    struct er_buf script;
    struct er_err err;

    (void)state;
    memset(&req, 0, sizeof(req));
    er_buf_init(&script, 1 << 16);
    req.command = "bash";
    req.env = bad_env;
    assert_int_equal(er_ssh_exec_script(&req, NULL, "M", &script, &err),
                     ER_EINVAL);
    assert_string_equal(err.msg,
                        "Invalid SSH environment variable key: NOT-OK");
    req.env = NULL;
    req.command = "A=b";
    assert_int_equal(er_ssh_exec_script(&req, NULL, "M", &script, &err),
                     ER_EINVAL);
    req.command = "-x";
    assert_int_equal(er_ssh_exec_script(&req, NULL, "M", &script, &err),
                     ER_EINVAL);
    req.command = "";
    assert_int_equal(er_ssh_exec_script(&req, NULL, "M", &script, &err),
                     ER_EINVAL);
    er_buf_fini(&script);
}

static bool argv_has(const struct er_ssh_argv *argv, const char *s)
{
    size_t i;

    for (i = 0; i < argv->argc; i++) {
        if (strcmp(argv->argv[i], s) == 0)
            return true;
    }
    return false;
}

static void ssh_argv_multiplexes_one_connection(void **state)
{
    struct er_ssh_config cfg;
    struct er_ssh_argv argv;
    char ctl_dir[ER_SSH_CONTROL_DIR_MAX];
    char want[160];
    json_t *config;
    struct er_err err;

    (void)state;
    config = jload("{\"host\":\"h.example\",\"port\":2222,\"username\":"
                   "\"agent\",\"remoteWorkspacePath\":\"/srv/ws\","
                   "\"privateKeySecretRef\":{\"type\":\"secret_ref\","
                   "\"secretId\":\"key-1\"},\"knownHosts\":\"h ssh-ed25519 "
                   "AAAA\",\"connectTimeoutS\":7}");
    assert_int_equal(er_ssh_config_parse(config, &cfg, &err), 0);
    er_ssh_control_dir(LEASE_ID, ctl_dir);
    snprintf(want, sizeof(want), "/tmp/envrun-ssh-%lu/0f1e2d3c4b5a4978",
             (unsigned long)geteuid());
    assert_string_equal(ctl_dir, want);
    /* Room for ssh's temporary socket name within the 108-byte limit. */
    assert_true(strlen(ctl_dir) + strlen("/m") + 20 < 108);

    er_ssh_argv_build(&cfg, ctl_dir, ER_SSH_ARGV_RUN, NULL, "sh -lc 'true'",
                      &argv);
    assert_string_equal(argv.argv[0], "ssh");
    assert_true(argv_has(&argv, "BatchMode=yes"));
    assert_true(argv_has(&argv, "ConnectTimeout=7"));
    assert_true(argv_has(&argv, "ControlMaster=auto"));
    assert_true(argv_has(&argv, "ControlPersist=600"));
    snprintf(want, sizeof(want), "ControlPath=%s/m", ctl_dir);
    assert_true(argv_has(&argv, want));
    assert_true(argv_has(&argv, "StrictHostKeyChecking=yes"));
    snprintf(want, sizeof(want), "UserKnownHostsFile=%s/known_hosts", ctl_dir);
    assert_true(argv_has(&argv, want));
    assert_true(argv_has(&argv, "IdentitiesOnly=yes"));
    assert_true(argv_has(&argv, "IdentityFile=none"));
    assert_false(argv_has(&argv, "-i"));
    assert_true(argv_has(&argv, "2222"));
    assert_true(argv_has(&argv, "agent"));
    /* The host comes after "--", the remote command last. */
    assert_string_equal(argv.argv[argv.argc - 3], "--");
    assert_string_equal(argv.argv[argv.argc - 2], "h.example");
    assert_string_equal(argv.argv[argv.argc - 1], "sh -lc 'true'");
    assert_null(argv.argv[argv.argc]);

    er_ssh_argv_build(&cfg, ctl_dir, ER_SSH_ARGV_SETUP, "/tmp/k/id", "true",
                      &argv);
    assert_true(argv_has(&argv, "-i"));
    assert_true(argv_has(&argv, "/tmp/k/id"));
    assert_false(argv_has(&argv, "IdentityFile=none"));

    er_ssh_argv_build(&cfg, ctl_dir, ER_SSH_ARGV_CHECK, NULL, NULL, &argv);
    assert_true(argv_has(&argv, "-O"));
    assert_true(argv_has(&argv, "check"));
    assert_string_equal(argv.argv[argv.argc - 1], "h.example");
    er_ssh_argv_build(&cfg, ctl_dir, ER_SSH_ARGV_EXIT, NULL, NULL, &argv);
    assert_true(argv_has(&argv, "exit"));

    /* Non-strict: no host key file at all. */
    cfg.is_strict_host_key_checking = false;
    er_ssh_argv_build(&cfg, ctl_dir, ER_SSH_ARGV_RUN, NULL, "x", &argv);
    assert_true(argv_has(&argv, "StrictHostKeyChecking=no"));
    assert_true(argv_has(&argv, "UserKnownHostsFile=/dev/null"));
    json_decref(config);
}

/* Every ssh the driver runs reads no config file (-F none), so the
 * worker's ~/.ssh/config or /etc/ssh/ssh_config cannot add a
 * ProxyCommand, LocalCommand or Match exec; the options that run local
 * commands are off on the command line as well (first value wins). */
static void ssh_argv_ignores_the_workers_ssh_config(void **state)
{
    static const enum er_ssh_argv_kind kinds[] = {
        ER_SSH_ARGV_SETUP,
        ER_SSH_ARGV_RUN,
        ER_SSH_ARGV_CHECK,
        ER_SSH_ARGV_EXIT,
    };
    struct er_ssh_config cfg;
    struct er_ssh_argv argv;
    char ctl_dir[ER_SSH_CONTROL_DIR_MAX];
    json_t *config;
    struct er_err err;
    size_t i;

    (void)state;
    config = jload("{\"host\":\"h.example\",\"username\":\"agent\","
                   "\"remoteWorkspacePath\":\"/srv/ws\"}");
    assert_int_equal(er_ssh_config_parse(config, &cfg, &err), 0);
    er_ssh_control_dir(LEASE_ID, ctl_dir);
    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        er_ssh_argv_build(&cfg, ctl_dir, kinds[i], "/tmp/k/id", "true", &argv);
        assert_string_equal(argv.argv[0], "ssh");
        assert_string_equal(argv.argv[1], "-F");
        assert_string_equal(argv.argv[2], "none");
        assert_true(argv_has(&argv, "ProxyCommand=none"));
        assert_true(argv_has(&argv, "PermitLocalCommand=no"));
        assert_true(argv_has(&argv, "ForwardAgent=no"));
        assert_null(argv.argv[argv.argc]);
    }
    json_decref(config);
}

static void ssh_control_dir_of_any_lease_id(void **state)
{
    char a[ER_SSH_CONTROL_DIR_MAX];
    char b[ER_SSH_CONTROL_DIR_MAX];
    const char *tag;

    (void)state;
    er_ssh_control_dir("not-a-uuid", a);
    er_ssh_control_dir("not-a-uuid-2", b);
    assert_string_not_equal(a, b);
    tag = strrchr(a, '/') + 1;
    assert_int_equal(strlen(tag), 16);
    assert_int_equal(strspn(tag, "0123456789abcdef"), 16);
    er_ssh_control_dir("0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9", b);
    assert_string_equal(strrchr(b, '/') + 1, "0f1e2d3c4b5a4978");
}

static const char *config_text =
    "{\"host\":\"127.0.0.1\",\"port\":1,\"username\":\"agent\","
    "\"remoteWorkspacePath\":\"/srv/ws\",\"privateKeySecretRef\":"
    "{\"type\":\"secret_ref\",\"secretId\":\"key-1\"},\"knownHosts\":"
    "\"[127.0.0.1]:1 ssh-ed25519 AAAA\",\"connectTimeoutS\":2}";

static void ssh_target_has_no_private_key(void **state)
{
    json_t *config = jload(config_text);
    json_t *meta = jload("{\"driver\":\"ssh\",\"host\":\"127.0.0.1\","
                         "\"port\":1,\"username\":\"agent\","
                         "\"remoteWorkspacePath\":\"/srv/ws\",\"remoteCwd\":"
                         "\"/srv/ws/" LEASE_ID "\"}");
    struct er_driver_env env = { "env-1", "co-1",   "my ssh",
                                 "ssh",   "active", config };
    struct er_driver_lease lease = { LEASE_ID, "active", "ephemeral", "ssh",
                                     NULL,     "run-1",  meta };
    struct er_err err;
    json_t *t;
    char *text;

    (void)state;
    t = er_ssh_driver.target(&env, &lease, "codex_local", &err);
    assert_non_null(t);
    text = json_dumps(t, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(
        text, "{\"environmentId\":\"env-1\",\"kind\":\"remote\",\"leaseId\":"
              "\"" LEASE_ID "\",\"remoteCwd\":\"/srv/ws/" LEASE_ID "\","
              "\"spec\":{\"host\":\"127.0.0.1\",\"knownHosts\":\"[127.0.0.1]:1 "
              "ssh-ed25519 AAAA\",\"port\":1,\"remoteCwd\":\"/srv/ws/" LEASE_ID
              "\",\"remoteWorkspacePath\":\"/srv/ws\",\"strictHostKeyChecking"
              "\":true,\"username\":\"agent\"},\"transport\":\"ssh\"}");
    assert_null(strstr(text, "privateKey"));
    assert_null(strstr(text, SECRET));
    free(text);
    json_decref(t);

    /* At acquire: the spec alone, remoteCwd = remoteWorkspacePath. */
    t = er_ssh_driver.target(&env, NULL, "claude_local", &err);
    text = json_dumps(t, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(
        text, "{\"host\":\"127.0.0.1\",\"knownHosts\":\"[127.0.0.1]:1 "
              "ssh-ed25519 AAAA\",\"port\":1,\"remoteCwd\":\"/srv/"
              "ws\",\"remoteWorkspacePath\":\"/srv/ws\","
              "\"strictHostKeyChecking\":true,\"username\":"
              "\"agent\"}");
    free(text);
    json_decref(t);

    /* Adapters that cannot run remotely get null. */
    t = er_ssh_driver.target(&env, &lease, "process", &err);
    assert_true(json_is_null(t));
    json_decref(t);
    t = er_ssh_driver.target(&env, &lease, NULL, &err);
    assert_true(json_is_null(t));
    json_decref(t);

    /* A broken config is an error with its message. */
    json_object_set_new(config, "port", json_integer(0));
    t = er_ssh_driver.target(&env, &lease, "cursor", &err);
    assert_null(t);
    assert_string_equal(err.msg,
                        "SSH port must be an integer between 1 and 65535.");
    json_decref(config);
    json_decref(meta);
}

/* Connection refused by a closed local port: no sshd needed. */
static void ssh_acquire_reports_an_unreachable_host(void **state)
{
    json_t *config = jload(config_text);
    struct er_driver_env env = { "env-1", "co-1",   "my ssh",
                                 "ssh",   "active", config };
    struct er_driver_lease_ctx ctx = { .lease_id = LEASE_ID,
                                       .company_id = "co-1",
                                       .agent_id = "agent-1",
                                       .heartbeat_run_id = "run-1" };
    struct er_driver_acquired acq;
    char ctl_dir[ER_SSH_CONTROL_DIR_MAX];
    struct er_err err;

    (void)state;
    memset(&acq, 0, sizeof(acq));
    er_err_clear(&err);
    assert_int_equal(er_ssh_driver.acquire(&env, &ctx, &acq, &err), ER_EDRIVER);
    assert_string_equal(err.msg, "ssh to agent@127.0.0.1:1 failed: connect to "
                                 "host 127.0.0.1 port 1: Connection refused");
    assert_null(strstr(err.msg, SECRET));
    assert_null(acq.metadata);
    assert_null(acq.provider_lease_id);
    /* A failed acquire leaves no control directory behind. */
    er_ssh_control_dir(LEASE_ID, ctl_dir);
    assert_int_equal(access(ctl_dir, F_OK), -1);

    /* A config problem is the cause as it is. */
    json_object_set_new(config, "remoteWorkspacePath", json_string("ws"));
    assert_int_equal(er_ssh_driver.acquire(&env, &ctx, &acq, &err), ER_EDRIVER);
    assert_string_equal(err.msg, "SSH remote workspace path must be absolute.");

    /* So is a missing key. */
    json_object_set_new(config, "remoteWorkspacePath", json_string("/srv/ws"));
    json_object_set_new(config, "privateKeySecretRef",
                        json_string("env:ENVRUN_SECRET_SSH_TEST_UNSET"));
    unsetenv("ENVRUN_SECRET_SSH_TEST_UNSET");
    assert_int_equal(er_ssh_driver.acquire(&env, &ctx, &acq, &err), ER_EDRIVER);
    assert_non_null(strstr(err.msg, "privateKeySecretRef: environment "
                                    "variable ENVRUN_SECRET_SSH_TEST_UNSET"));
    assert_non_null(strstr(err.msg, "is not set"));

    /* per_lease needs a usable lease id. */
    json_object_set_new(config, "workspaceIsolation", json_string("per_lease"));
    ctx.lease_id = "../x";
    assert_int_equal(er_ssh_driver.acquire(&env, &ctx, &acq, &err), ER_EDRIVER);
    assert_non_null(strstr(err.msg, "lease id"));
    json_decref(config);
}

static void ssh_execute_checks_env_before_connecting(void **state)
{
    json_t *config = jload(config_text);
    json_t *meta = jload("{\"host\":\"127.0.0.1\",\"port\":1,\"remoteCwd\":"
                         "\"/srv/ws\"}");
    struct er_driver_env env = { "env-1", "co-1",   "my ssh",
                                 "ssh",   "active", config };
    struct er_driver_lease lease = { LEASE_ID, "active", "ephemeral", "ssh",
                                     NULL,     "run-1",  meta };
    const char *args[] = { "-lc", "true", NULL };
    const char *bad_env[] = { "MY-TOKEN=" SECRET, NULL };
    const char *good_env[] = { "SHELL=/bin/bash", NULL };
    struct er_driver_exec req = {
        .command = "bash", .args = args, .env = bad_env, .timeout_ms = 1000
    };
    struct er_driver_exec_result res;
    struct er_err err;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(er_ssh_driver.execute(&env, &lease, &req, &res, &err),
                     ER_EDRIVER);
    assert_string_equal(err.msg,
                        "Invalid SSH environment variable key: MY-TOKEN");
    assert_null(res.out);
    /* With a good env, the closed port is the cause. */
    req.env = good_env;
    assert_int_equal(er_ssh_driver.execute(&env, &lease, &req, &res, &err),
                     ER_EDRIVER);
    assert_non_null(strstr(err.msg, "Connection refused"));
    er_driver_exec_result_fini(&res);
    json_decref(config);
    json_decref(meta);
}

static void ssh_release_reports_cleanup(void **state)
{
    json_t *config = jload(config_text);
    json_t *shared = jload("{\"driver\":\"ssh\",\"host\":\"127.0.0.1\","
                           "\"port\":1,\"remoteCwd\":\"/srv/ws\","
                           "\"workspaceIsolation\":\"shared\"}");
    json_t *per_lease = jload("{\"driver\":\"ssh\",\"host\":\"127.0.0.1\","
                              "\"port\":1,\"remoteWorkspacePath\":\"/srv/ws\","
                              "\"remoteCwd\":\"/srv/ws/" LEASE_ID "\","
                              "\"workspaceIsolation\":\"per_lease\"}");
    json_t *teardown = jload(
        "{\"driver\":\"ssh\",\"host\":\"127.0.0.1\",\"port\":1,\"remoteCwd\":"
        "\"/srv/ws\",\"workspaceRealization\":{\"rebuild\":{\"metadata\":"
        "{\"runtimeOverlay\":{\"teardownCommand\":\"make down\"}}}}}");
    struct er_driver_env env = { "env-1", "co-1",   "my ssh",
                                 "ssh",   "active", config };
    struct er_driver_lease lease = { LEASE_ID, "active", "ephemeral", "ssh",
                                     NULL,     "run-1",  shared };
    struct er_driver_released out;
    struct er_err err;

    (void)state;
    /* Nothing to clean remotely: no connection is even tried. */
    assert_int_equal(
        er_ssh_driver.release(&env, &lease, "released", &out, &err), 0);
    assert_string_equal(out.status, "released");
    assert_string_equal(out.cleanup_status, "success");
    assert_null(out.failure_reason);
    assert_int_equal(er_ssh_driver.release(&env, &lease, "failed", &out, &err),
                     0);
    assert_string_equal(out.status, "failed");
    assert_string_equal(out.failure_reason, "adapter_or_run_failure");

    /* The host is unreachable: cleanup failed, status as requested. */
    lease.metadata = per_lease;
    assert_int_equal(
        er_ssh_driver.release(&env, &lease, "released", &out, &err), 0);
    assert_string_equal(out.status, "released");
    assert_string_equal(out.cleanup_status, "failed");
    assert_string_equal(out.failure_reason,
                        "removing the per-lease remote workspace failed");
    lease.metadata = teardown;
    assert_int_equal(er_ssh_driver.release(&env, &lease, "expired", &out, &err),
                     0);
    assert_string_equal(out.status, "expired");
    assert_string_equal(out.cleanup_status, "failed");
    assert_string_equal(out.failure_reason, "teardown command failed");
    assert_int_equal(er_ssh_driver.release(&env, &lease, "failed", &out, &err),
                     0);
    assert_string_equal(out.cleanup_status, "failed");
    assert_string_equal(out.failure_reason, "adapter_or_run_failure");
    json_decref(config);
    json_decref(shared);
    json_decref(per_lease);
    json_decref(teardown);
}

static void ssh_realize_refuses_unsafe_directories(void **state)
{
    json_t *config = jload(config_text);
    json_t *no_cwd = jload("{\"driver\":\"ssh\"}");
    json_t *root = jload("{\"driver\":\"ssh\",\"remoteCwd\":\"/\"}");
    json_t *dotdot =
        jload("{\"driver\":\"ssh\",\"remoteCwd\":\"/srv/ws/../../root\"}");
    json_t *request = jload("{\"version\":1}");
    struct er_driver_env env = { "env-1", "co-1",   "my ssh",
                                 "ssh",   "active", config };
    struct er_driver_lease lease = { LEASE_ID, "active", "ephemeral", "ssh",
                                     NULL,     "run-1",  no_cwd };
    struct er_driver_workspace ws = { tmp, NULL, NULL, request };
    struct er_driver_realized out;
    struct er_err err;

    (void)state;
    memset(&out, 0, sizeof(out));
    assert_int_equal(er_ssh_driver.realize(&env, &lease, &ws, &out, &err),
                     ER_EDRIVER);
    assert_string_equal(err.msg, "the lease has no remote workspace "
                                 "directory (remoteCwd)");
    lease.metadata = root;
    assert_int_equal(er_ssh_driver.realize(&env, &lease, &ws, &out, &err),
                     ER_EDRIVER);
    assert_string_equal(err.msg,
                        "refusing to sync into the remote directory \"/\"");
    /* ".." could lead anywhere: refused before any connection. */
    lease.metadata = dotdot;
    assert_int_equal(er_ssh_driver.realize(&env, &lease, &ws, &out, &err),
                     ER_EDRIVER);
    assert_string_equal(err.msg, "refusing to sync into the remote directory "
                                 "\"/srv/ws/../../root\"");
    assert_null(out.record);
    assert_null(out.cwd);
    json_decref(config);
    json_decref(no_cwd);
    json_decref(root);
    json_decref(dotdot);
    json_decref(request);
}

static void realization_record_carries_remote_facts(void **state)
{
    json_t *config = json_object();
    json_t *meta = json_object();
    json_t *request = jload("{\"version\":1,\"source\":{\"kind\":"
                            "\"project_primary\"}}");
    struct er_driver_env env = {
        "env-1", "co-1", "e", "ssh", "active", config
    };
    struct er_driver_lease lease = { LEASE_ID, "active",         "ephemeral",
                                     "ssh",    "ssh://a@h:22/w", "run-1",
                                     meta };
    struct er_driver_workspace ws = { "/host/ws", NULL, NULL, request };
    struct er_driver_remote remote = { "h", 22, "a" };
    json_t *rec;
    char *text;

    (void)state;
    rec = er_driver_realization_record_remote(&env, &lease, &ws, "/w", &remote,
                                              "ssh_git_import_export", "p", "b",
                                              "s");
    text = json_dumps(json_object_get(rec, "remote"), JSON_COMPACT);
    assert_string_equal(text, "{\"path\":\"/w\",\"host\":\"h\",\"port\":22,"
                              "\"username\":\"a\"}");
    free(text);
    json_decref(rec);
    /* Without facts (local), remote is just the path, as before. */
    rec = er_driver_realization_record(&env, &lease, &ws, NULL, "none", "p",
                                       "b", "s");
    text = json_dumps(json_object_get(rec, "remote"), JSON_COMPACT);
    assert_string_equal(text, "{\"path\":null}");
    free(text);
    json_decref(rec);
    json_decref(config);
    json_decref(meta);
    json_decref(request);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ssh_config_defaults),
        cmocka_unit_test(ssh_config_coerces_and_trims),
        cmocka_unit_test(ssh_config_rejects_with_the_spec_messages),
        cmocka_unit_test(ssh_config_rejects_hostile_hosts),
        cmocka_unit_test(ssh_quote_survives_hostile_strings),
        cmocka_unit_test(ssh_env_keys_are_checked),
        cmocka_unit_test(ssh_exec_script_runs_under_sh),
        cmocka_unit_test(ssh_exec_script_for_tools_skips_profiles),
        cmocka_unit_test(ssh_exec_script_rejects_bad_input),
        cmocka_unit_test(ssh_dir_scripts_touch_only_marked_directories),
        cmocka_unit_test(ssh_argv_multiplexes_one_connection),
        cmocka_unit_test(ssh_argv_ignores_the_workers_ssh_config),
        cmocka_unit_test(ssh_control_dir_of_any_lease_id),
        cmocka_unit_test(ssh_target_has_no_private_key),
        cmocka_unit_test(ssh_acquire_reports_an_unreachable_host),
        cmocka_unit_test(ssh_execute_checks_env_before_connecting),
        cmocka_unit_test(ssh_release_reports_cleanup),
        cmocka_unit_test(ssh_realize_refuses_unsafe_directories),
        cmocka_unit_test(realization_record_carries_remote_facts),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
