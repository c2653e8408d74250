/* bridge_lifecycle_test: the callback bridge through a real worker process
 * (Kafka mock cluster over TCP, PostgreSQL) on a real bwrap sandbox and
 * over ssh to the test sshd, forwarding to a stand-in for the Paperclip API
 * (tests/support/api_standin.c: the real API is a Node server that cannot
 * run here). A realize carrying hostApiToken starts the gateway and
 * hands the agent bridge.env; an agent process (a provision command, run
 * with bash where the gateway runs) reaches the API only through it, with
 * the host credential put in place of the bridge token; the token is the
 * same on a second realize and on a replayed one; release stops the
 * gateway; neither the credential nor the token is left in the database,
 * the log or any topic but the result's bridge.env. */
#include <ctype.h>
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "bridge/bridge.h"
#include "tests/support/api_standin.h"
#include "tests/support/harness.h"

#define WAIT_MS 60000
/* The gateway's program in a bwrap sandbox (the tests' adapter type). */
#define SANDBOX_GATEWAY                                            \
    "/workspace/.paperclip-runtime/claude_local/paperclip-bridge/" \
    "server/envrun-gateway"
#define API_OK                                                    \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"       \
    "ETag: \"v1\"\r\nContent-Length: 23\r\nConnection: close\r\n" \
    "\r\n{\"id\":\"agent-1\",\"ok\":1}"
#define API_BODY "{\"id\":\"agent-1\",\"ok\":1}"

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;
static struct er_api_standin *api;
static char sandbox_dir[ER_HARNESS_PATH_MAX + 32];
static char env_text[2][ER_HARNESS_PATH_MAX + 64];
static const char *worker_env[8];

static int group_setup(void **state)
{
    struct er_harness_worker_opts opts = { 0 };
    size_t n = 0;
    size_t i;

    (void)state;
    h = er_harness_new("bridge_lifecycle", 2, NULL);
    if (h == NULL)
        return -1;
    ssh = er_harness_ssh_new(h);
    api = er_api_standin_start();
    if (ssh == NULL || api == NULL)
        return -1;
    snprintf(sandbox_dir, sizeof(sandbox_dir), "/tmp/envrun-sandboxes-XXXXXX");
    if (mkdtemp(sandbox_dir) == NULL)
        return -1;
    snprintf(env_text[0], sizeof(env_text[0]), "ENVRUN_SANDBOX_DIR=%s",
             sandbox_dir);
    snprintf(env_text[1], sizeof(env_text[1]),
             "ENVRUN_PAPERCLIP_API_URL=http://127.0.0.1:%d",
             er_api_standin_port(api));
    for (i = 0; ssh->worker_env[i] != NULL; i++)
        worker_env[n++] = ssh->worker_env[i];
    worker_env[n++] = env_text[0];
    worker_env[n++] = env_text[1];
    worker_env[n] = NULL;
    opts.env = worker_env;
    worker = er_harness_worker_start_warm(h, &opts);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;
    char cmd[ER_HARNESS_PATH_MAX + 64];

    (void)state;
    er_api_standin_stop(api);
    er_harness_ssh_destroy(ssh);
    er_harness_destroy(h);
    h = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sandbox_dir);
    if (system(cmd) != 0)
        rc = -1;
    return rc;
}

/* ----------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------- */

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    const json_t *res = er_harness_roundtrip(h, worker, c, WAIT_MS);

    ER_HARNESS_NON_NULL(res);
    return res;
}

static void acquire(struct er_harness_run *run, const char *env_id)
{
    struct er_harness_cmd c;

    er_harness_cmd_acquire(&c, run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    ER_HARNESS_ASSERT_OK(roundtrip(&c));
}

/* A realize of run's lease from host workspace ws carrying token as
 * hostApiToken, with a provision command (NULL: none); c keeps the
 * command for a resend. */
static const json_t *realize(struct er_harness_cmd *c,
                             struct er_harness_run *run, const char *ws,
                             const char *token, const char *provision)
{
    static char overlay[8192];
    const json_t *res;

    er_harness_cmd_realize(c, run, ws);
    if (provision != NULL) {
        json_t *o = json_pack("{s:s}", "provisionCommand", provision);
        char *text = json_dumps(o, JSON_COMPACT);

        ER_HARNESS_NON_NULL(text);
        snprintf(overlay, sizeof(overlay), "%s", text);
        free(text);
        json_decref(o);
        c->cmd.runtime_overlay_json = overlay;
    }
    assert_int_equal(
        er_secret_set(&c->cmd.host_api_token, token, strlen(token)), 0);
    res = roundtrip(c);
    return res;
}

static void random_token(char *out, size_t len)
{
    char uuid[37];

    er_uuid_v4(uuid);
    snprintf(out, len, "run-jwt-%s", uuid);
}

/* The agent's side of a bridged call, as a script for bash where the
 * gateway runs: reads PAPERCLIP_API_URL and PAPERCLIP_API_KEY from
 * ./agent.env (the workspace brought it, so the token is in no command),
 * checks that the API's own port cannot be reached directly, then asks
 * GET /api/agents/me?view=compact through the bridge and checks the
 * API's body and ETag came back, that a wrong token gets 401, a refused
 * route 403 and a text body 415 (domain.md 5.10 cases 2, 3, 7), that a
 * `//host/...` target is served by the configured API (its path only, as
 * a URL parser reads it: the API's second hit), and that an encoded slash
 * and a dot-dot path are refused (4xx; they never reach the API). */
static void agent_script(char *out, size_t len, bool expect_no_direct)
{
    snprintf(
        out, len,
        "set -u; . ./agent.env; port=${PAPERCLIP_API_URL##*:}; "
        "%s"
        "call() { exec 3<>/dev/tcp/127.0.0.1/$port || return 1; "
        "printf 'GET /api/agents/me?view=compact HTTP/1.1\\r\\nHost: x\\r\\n"
        "Authorization: Bearer %%s\\r\\nAccept: application/json\\r\\n"
        "X-Paperclip-Run-Id: forged\\r\\nConnection: close\\r\\n\\r\\n' "
        "\"$1\" >&3; cat <&3; exec 3<&-; }; "
        "r=$(call \"$PAPERCLIP_API_KEY\"); "
        "case \"$r\" in *'HTTP/1.1 200'*'%s'*) ;; "
        "*) echo \"bridged call failed: $r\" | tr '\\r\\n' '  ' >&2; exit 1;; "
        "esac; "
        "case \"$r\" in *'\"v1\"'*) ;; *) echo 'etag lost' >&2; exit 1;; esac; "
        "r=$(call wrong-token); "
        "case \"$r\" in *'HTTP/1.1 401'*'Invalid bridge token.'*) ;; "
        "*) echo \"wrong token not refused: $r\" | tr '\\r\\n' '  ' >&2; "
        "exit 1;; esac; "
        "ask() { exec 3<>/dev/tcp/127.0.0.1/$port || return 1; "
        "printf '%%s %%s HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer "
        "%%s\\r\\nContent-Type: %%s\\r\\nContent-Length: %%s\\r\\n"
        "Connection: close\\r\\n\\r\\n%%s' \"$1\" \"$2\" "
        "\"$PAPERCLIP_API_KEY\" \"$3\" \"${#4}\" \"$4\" >&3; cat <&3; "
        "exec 3<&-; }; "
        "want() { case \"$1\" in *\"HTTP/1.1 $2\"*\"$3\"*) ;; "
        "*) echo \"$4: $1\" | tr '\\r\\n' '  ' >&2; exit 1;; esac; }; "
        "want \"$(ask PATCH /api/issues/issue-1/labels application/json "
        "'{}')\" 403 'Route not allowed: PATCH /api/issues/issue-1/labels' "
        "'route not refused'; "
        "want \"$(ask POST /api/issues/i1/comments text/plain hi)\" 415 "
        "'Bridge only accepts JSON request bodies.' 'text body not refused'; "
        "want \"$(ask GET //evil.example/api/agents/me application/json "
        "'')\" 200 '%s' 'authority target not kept at the origin'; "
        "want \"$(ask GET /api/agents/%%2F..%%2Fsecrets application/json "
        "'')\" 4 '' 'encoded slash not refused'; "
        "want \"$(ask GET /api/agents/../../api/secrets application/json "
        "'')\" 4 '' 'dot-dot path not refused'",
        expect_no_direct
            ? "if (exec 3<>/dev/tcp/127.0.0.1/$API_PORT) 2>/dev/null; then "
              "echo 'reached the API directly' >&2; exit 1; fi; "
            : "",
        API_BODY, API_BODY);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[ER_HARNESS_PATH_MAX + 64];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    ER_HARNESS_NON_NULL(f);
    fputs(text, f);
    fclose(f);
}

/* ./agent.env for the agent from bridge.env (and the API's port, to
 * prove it is unreachable). */
static void write_agent_env(const char *ws, const json_t *body)
{
    char text[1024];

    snprintf(text, sizeof(text),
             "PAPERCLIP_API_URL='%s'\nPAPERCLIP_API_KEY='%s'\nAPI_PORT=%d\n",
             er_harness_json_str(body, "bridge.env.PAPERCLIP_API_URL"),
             er_harness_json_str(body, "bridge.env.PAPERCLIP_API_KEY"),
             er_api_standin_port(api));
    write_file(ws, "agent.env", text);
}

/* bridge.env as contract.md 4 and upstream.md B11 give it. */
static void check_bridge_env(const json_t *body, const char *host_token,
                             const char *mode)
{
    const char *url = er_harness_json_str(body, "bridge.env.PAPERCLIP_API_URL");
    const char *key = er_harness_json_str(body, "bridge.env.PAPERCLIP_API_KEY");
    const char *p;
    size_t i;

    ER_HARNESS_NON_NULL(url);
    ER_HARNESS_NON_NULL(key);
    ER_HARNESS_ASSERT_STR(body, "bridge.env.PAPERCLIP_API_BRIDGE_MODE", mode);
    /* queue_v1 also names its queue (upstream.md B11). */
    if (strcmp(mode, "queue_v1") == 0)
        ER_HARNESS_NON_NULL(
            er_harness_json_str(body, "bridge.env.PAPERCLIP_BRIDGE_QUEUE_DIR"));
    else
        assert_null(
            er_harness_json_at(body, "bridge.env.PAPERCLIP_BRIDGE_QUEUE_DIR"));
    assert_memory_equal(url, "http://127.0.0.1:", 17);
    for (p = url + 17; *p != '\0'; p++)
        assert_true(isdigit((unsigned char)*p));
    assert_true(atoi(url + 17) > 0 && atoi(url + 17) < 65536);
    assert_int_equal(strlen(key), 32);
    for (i = 0; key[i] != '\0'; i++)
        assert_true(isalnum((unsigned char)key[i]) || key[i] == '-' ||
                    key[i] == '_');
    assert_null(strstr(key, host_token));
    assert_null(strstr(host_token, key));
}

/* What the API saw of the agent script's calls: the host credential, the
 * run id, no bridge token. */
static void check_api_saw(const char *host_token, const char *run_id,
                          const char *bridge_token, int hits)
{
    char seen[16384];
    char want[256];
    char *p;

    assert_int_equal(er_api_standin_hits(api, seen, sizeof(seen)), hits);
    for (p = seen; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    snprintf(want, sizeof(want), "get /api/agents/me?view=compact http/1.1");
    ER_HARNESS_ASSERT_CONTAINS(seen, want);
    snprintf(want, sizeof(want), "authorization: bearer %s", host_token);
    for (p = want; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    ER_HARNESS_ASSERT_CONTAINS(seen, want);
    snprintf(want, sizeof(want), "x-paperclip-run-id: %s", run_id);
    ER_HARNESS_ASSERT_CONTAINS(seen, want);
    assert_null(strstr(seen, "forged"));
    /* The agent's `//evil.example/...` call came here, as a path. */
    ER_HARNESS_ASSERT_CONTAINS(seen, "get /api/agents/me http/1.1");
    assert_null(strstr(seen, "evil.example"));
    snprintf(want, sizeof(want), "%s", bridge_token);
    for (p = want; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    assert_null(strstr(seen, want));
}

/* Rows of the bytea columns that hold encoded records (results, outbox)
 * with needle in their bytes. */
static long long bytea_rows_containing(const char *needle)
{
    const char *params[] = { needle };

    return er_harness_pg_count(
        h->db_url,
        "SELECT (SELECT count(*) FROM envrun.processed_commands "
        "WHERE position(convert_to($1, 'UTF8') IN result) > 0) + "
        "(SELECT count(*) FROM envrun.outbox "
        "WHERE position(convert_to($1, 'UTF8') IN msg_value) > 0)",
        1, params);
}

/* Neither the host credential nor the bridge token is kept or published
 * anywhere but where it belongs: the credential only in the commands
 * the test sent, the token only in realize results' bridge.env. */
static void check_no_leak(const char *host_token, const char *bridge_token)
{
    int t;

    er_harness_poll(h, 500);
    for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++) {
        if (t != ER_HARNESS_COMMANDS &&
            er_harness_topic_contains(h, (enum er_harness_topic)t, host_token))
            er_harness_fail(__FILE__, __LINE__,
                            "host credential published on topic %d", t);
        if (t != ER_HARNESS_COMMANDS && t != ER_HARNESS_RESULTS &&
            er_harness_topic_contains(h, (enum er_harness_topic)t,
                                      bridge_token))
            er_harness_fail(__FILE__, __LINE__,
                            "bridge token published on topic %d", t);
    }
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, host_token), 0);
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, bridge_token), 0);
    assert_int_equal(bytea_rows_containing(host_token), 0);
    assert_int_equal(bytea_rows_containing(bridge_token), 0);
    assert_false(er_harness_worker_log_contains(worker, host_token));
    assert_false(er_harness_worker_log_contains(worker, bridge_token));
}

/* The pids (at most max) of the processes whose program (argv[0]) is
 * path; how many. */
static size_t program_pids(const char *path, pid_t *out, size_t max)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t cnt = 0;

    ER_HARNESS_NON_NULL(d);
    while ((e = readdir(d)) != NULL && cnt < max) {
        char file[300];
        char argv0[4096];
        size_t n;
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(file, sizeof(file), "/proc/%s/cmdline", e->d_name);
        f = fopen(file, "r");
        if (f == NULL)
            continue;
        n = fread(argv0, 1, sizeof(argv0) - 1, f);
        fclose(f);
        argv0[n] = '\0'; /* the first NUL ends argv[0] */
        if (strcmp(argv0, path) == 0)
            out[cnt++] = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return cnt;
}

/* SIGKILL every process whose program is path; how many. */
static int kill_program(const char *path)
{
    pid_t pids[64];
    size_t cnt = program_pids(path, pids, 64);
    size_t i;
    int killed = 0;

    for (i = 0; i < cnt; i++)
        killed += kill(pids[i], SIGKILL) == 0;
    return killed;
}

/* Whether a process runs program path that is not one of the cnt pids in
 * before. */
static bool program_runs_besides(const char *path, const pid_t *before,
                                 size_t cnt)
{
    pid_t now[64];
    size_t now_cnt = program_pids(path, now, 64);
    size_t i;
    size_t j;

    for (i = 0; i < now_cnt; i++) {
        for (j = 0; j < cnt && before[j] != now[i]; j++)
            ;
        if (j == cnt)
            return true;
    }
    return false;
}

/* The results of command_id so far (replays included). */
static size_t results_of(const char *command_id,
                         const struct er_harness_record **out, size_t max)
{
    return er_harness_find(h, ER_HARNESS_RESULTS, "commandId", command_id, out,
                           max);
}

/* A bridged run on env_id: acquire, then a realize from a fresh host
 * workspace <h->dir>/<ws_name> (into ws) carrying token, whose bridge.env
 * is checked (transport mode). Returns the realize's body (new reference);
 * first keeps the command, bridge_token the agent's token. */
static json_t *bridged_run(struct er_harness_run *run, const char *env_id,
                           const char *mode, const char *ws_name,
                           const char *token, struct er_harness_cmd *first,
                           char *ws, size_t ws_len, char bridge_token[40])
{
    const json_t *res;
    json_t *body;

    snprintf(ws, ws_len, "%s/%s", h->dir, ws_name);
    er_harness_fresh_dir(ws);
    write_file(ws, "agent.env", "");
    acquire(run, env_id);
    res = realize(first, run, ws, token, NULL);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    check_bridge_env(body, token, mode);
    snprintf(bridge_token, 40, "%s",
             er_harness_json_str(body, "bridge.env.PAPERCLIP_API_KEY"));
    return body;
}

/* ----------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------- */

/* From inside a bwrap sandbox (no network but its own loopback) the agent
 * reaches the API only through the bridge, with the host credential in
 * place of its token (domain.md 5.10 round trip, upstream.md B11). */
static void bwrap_agent_reaches_api_through_bridge(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd first;
    struct er_harness_cmd second;
    const struct er_harness_record *recs[4];
    char env_id[37];
    char token[64];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char script[8192];
    char bridge_token[40];
    char url[64];
    const json_t *res;
    json_t *body;
    json_t *again;

    (void)state;
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    er_harness_env_insert(h, run.company_id, "Bridged bwrap", "sandbox",
                          "active", "{\"provider\": \"bwrap\"}", env_id);
    body = bridged_run(&run, env_id, "stream_v1", "bridge-ws", token, &first,
                       ws, sizeof(ws), bridge_token);
    snprintf(url, sizeof(url), "%s",
             er_harness_json_str(body, "bridge.env.PAPERCLIP_API_URL"));
    /* The relay had the token from its own worker, in memory. */
    assert_false(er_harness_worker_log_contains(
        worker, "bridge token restored from its realize command"));

    /* The same command again (a redelivery): its stored result, the same
     * token (the record kept in the database has it masked). */
    assert_int_equal(er_harness_send(h, &first.cmd), 0);
    assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                      first.command_id, 2, WAIT_MS));
    assert_int_equal(results_of(first.command_id, recs, 4), 2);
    again = er_harness_json_parse_field(recs[1]->json, "resultJson");
    ER_HARNESS_ASSERT_STR(again, "bridge.env.PAPERCLIP_API_KEY", bridge_token);
    json_decref(again);

    /* The agent: a second realize's provision command, bash in the
     * sandbox, with the variables the first result gave. */
    write_agent_env(ws, body);
    er_api_standin_answer(api, API_OK, 0);
    agent_script(script, sizeof(script), true);
    res = realize(&second, &run, ws, token, script);
    ER_HARNESS_ASSERT_OK(res);
    check_api_saw(token, run.run_id, bridge_token, 2);
    json_decref(body);
    /* The gateway kept serving: same URL, same token. */
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "bridge.env.PAPERCLIP_API_KEY", bridge_token);
    ER_HARNESS_ASSERT_STR(body, "bridge.env.PAPERCLIP_API_URL", url);
    assert_true(er_harness_worker_log_contains(worker, "callback bridge kept"));

    ER_HARNESS_ASSERT_OK(
        er_harness_release(h, worker, &run, ER_RELEASE_RELEASED, WAIT_MS));
    assert_true(
        er_harness_worker_log_contains(worker, "callback bridge stopped"));
    check_no_leak(token, bridge_token);
    er_secret_fini(&first.cmd.host_api_token);
    er_secret_fini(&second.cmd.host_api_token);
    json_decref(body);
}

/* An ssh environment named name on the test sshd and bridged_run on it;
 * gateway (ER_HARNESS_PATH_MAX + 256 bytes) gets the gateway's path on the
 * host. */
static json_t *ssh_bridged_run(struct er_harness_run *run, const char *name,
                               const char *mode, const char *ws_name,
                               const char *token, struct er_harness_cmd *first,
                               char *ws, size_t ws_len, char *bridge_token,
                               char *gateway)
{
    char env_id[37];
    const char *cwd;
    json_t *config = er_harness_ssh_config(ssh, NULL, "per_lease");
    json_t *body;

    assert_int_equal(
        er_harness_ssh_env_insert(h, run->company_id, name, config, env_id), 0);
    json_decref(config);
    body = bridged_run(run, env_id, mode, ws_name, token, first, ws, ws_len,
                       bridge_token);
    cwd = er_harness_json_str(body, "workspaceRealization.remote.path");
    if (cwd == NULL)
        cwd = er_harness_json_str(body, "lease.metadata.remoteCwd");
    ER_HARNESS_NON_NULL(cwd);
    snprintf(gateway, ER_HARNESS_PATH_MAX + 256,
             "%s/.paperclip-runtime/claude_local/paperclip-bridge/server/"
             "envrun-gateway",
             cwd);
    return body;
}

/* Over ssh (upstream.md B12): the gateway is uploaded once, serves the
 * agent on the ssh host, comes back with the same port and token after it
 * died, and is gone after release. */
static void ssh_agent_reaches_api_through_bridge(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd first;
    struct er_harness_cmd second;
    struct er_harness_cmd third;
    struct er_harness_cmd fourth;
    json_t *later;
    int i;
    char token[64];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char script[8192];
    char gateway[ER_HARNESS_PATH_MAX + 256];
    char bridge_token[40];
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    body =
        ssh_bridged_run(&run, "Bridged ssh", "stream_v1", "bridge-ssh-ws",
                        token, &first, ws, sizeof(ws), bridge_token, gateway);
    assert_true(er_harness_process_with(gateway));

    write_agent_env(ws, body);
    er_api_standin_answer(api, API_OK, 0);
    agent_script(script, sizeof(script), false);
    res = realize(&second, &run, ws, token, script);
    ER_HARNESS_ASSERT_OK(res);
    check_api_saw(token, run.run_id, bridge_token, 2);

    /* The gateway dies (the host was restarted, say): the next realize
     * starts it again, on the same port with the same token, and the
     * agent's variables still hold. */
    assert_true(kill_program(gateway) > 0);
    for (i = 0; i < 100 && er_harness_process_with(gateway); i++)
        nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
    assert_false(er_harness_process_with(gateway));
    res = realize(&third, &run, ws, token, NULL);
    ER_HARNESS_ASSERT_OK(res);
    /* The gateway file was there with its checksum: not sent again. */
    assert_true(
        er_harness_worker_log_contains(worker, "\"uploaded\":\"false\""));
    later = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(later, "bridge.env.PAPERCLIP_API_KEY", bridge_token);
    ER_HARNESS_ASSERT_STR(
        later, "bridge.env.PAPERCLIP_API_URL",
        er_harness_json_str(body, "bridge.env.PAPERCLIP_API_URL"));
    assert_true(er_harness_process_with(gateway));
    er_api_standin_answer(api, API_OK, 0);
    ER_HARNESS_ASSERT_OK(realize(&fourth, &run, ws, token, script));
    check_api_saw(token, run.run_id, bridge_token, 2);

    ER_HARNESS_ASSERT_OK(
        er_harness_release(h, worker, &run, ER_RELEASE_RELEASED, WAIT_MS));
    assert_false(er_harness_process_with(gateway));
    check_no_leak(token, bridge_token);
    er_secret_fini(&first.cmd.host_api_token);
    er_secret_fini(&second.cmd.host_api_token);
    er_secret_fini(&third.cmd.host_api_token);
    er_secret_fini(&fourth.cmd.host_api_token);
    json_decref(later);
    json_decref(body);
}

static struct er_harness_worker *start_worker(bool is_queue);

/* queue_v1 over ssh: the poller's scripts go through one held exec (the
 * gateway's command runner), the agent is served, and release leaves no
 * process of the gateway's binary (server or runner) on the host. */
static void ssh_queue_bridge_serves_through_its_runner(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd first;
    struct er_harness_cmd second;
    char token[64];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char script[8192];
    char gateway[ER_HARNESS_PATH_MAX + 256];
    char bridge_token[40];
    json_t *body;

    (void)state;
    assert_int_equal(er_harness_worker_stop(worker, SIGTERM, 30000), 0);
    worker = start_worker(true);
    ER_HARNESS_NON_NULL(worker);
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    body = ssh_bridged_run(&run, "Bridged ssh queue", "queue_v1",
                           "bridge-ssh-q-ws", token, &first, ws, sizeof(ws),
                           bridge_token, gateway);
    assert_true(
        er_harness_worker_log_contains(worker, "\"commandRunner\":\"true\""));
    write_agent_env(ws, body);
    er_api_standin_answer(api, API_OK, 0);
    agent_script(script, sizeof(script), false);
    ER_HARNESS_ASSERT_OK(realize(&second, &run, ws, token, script));
    check_api_saw(token, run.run_id, bridge_token, 2);
    assert_true(er_harness_process_with(gateway));
    ER_HARNESS_ASSERT_OK(
        er_harness_release(h, worker, &run, ER_RELEASE_RELEASED, WAIT_MS));
    assert_false(er_harness_process_with(gateway));
    check_no_leak(token, bridge_token);
    er_secret_fini(&first.cmd.host_api_token);
    er_secret_fini(&second.cmd.host_api_token);
    json_decref(body);
}

/* A worker with the group's environment and extra (NULL: nothing). */
static struct er_harness_worker *start_worker_with(const char *extra)
{
    static const char *env[10];
    struct er_harness_worker_opts opts = { 0 };
    size_t n;

    for (n = 0; worker_env[n] != NULL; n++)
        env[n] = worker_env[n];
    if (extra != NULL)
        env[n++] = extra;
    env[n] = NULL;
    opts.env = env;
    return er_harness_worker_start_warm(h, &opts);
}

/* Workers with ENVRUN_BRIDGE_TRANSPORT=queue_v1 (is_queue) or the
 * default. */
static struct er_harness_worker *start_worker(bool is_queue)
{
    return start_worker_with(is_queue ? "ENVRUN_BRIDGE_TRANSPORT=queue_v1"
                                      : NULL);
}

/* The bridge follows its run: the worker is SIGKILLed between two of the
 * agent's requests; the run's next owner reads the realize back from
 * Kafka and re-attaches: a queue_v1 gateway still serves in the sandbox
 * and is kept; a stream_v1 one died with its exec and starts again on the
 * same port. The agent's next request is served with the same URL and
 * token. */
static void follow_across_kill(const char *mode)
{
    bool is_queue = strcmp(mode, "queue_v1") == 0;
    struct er_harness_run run;
    struct er_harness_cmd first;
    struct er_harness_cmd second;
    struct er_harness_cmd third;
    char env_id[37];
    char token[64];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char script[8192];
    char bridge_token[40];
    const json_t *res;
    json_t *body;
    json_t *later;

    /* This test's workers use the transport asked for. */
    assert_int_equal(er_harness_worker_stop(worker, SIGTERM, 30000), 0);
    worker = start_worker(is_queue);
    ER_HARNESS_NON_NULL(worker);
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    er_harness_env_insert(h, run.company_id, "Bridged kill", "sandbox",
                          "active", "{\"provider\": \"bwrap\"}", env_id);
    body = bridged_run(&run, env_id, mode,
                       is_queue ? "bridge-kq-ws" : "bridge-ks-ws", token,
                       &first, ws, sizeof(ws), bridge_token);
    write_agent_env(ws, body);
    agent_script(script, sizeof(script), true);
    er_api_standin_answer(api, API_OK, 0);
    ER_HARNESS_ASSERT_OK(realize(&second, &run, ws, token, script));
    check_api_saw(token, run.run_id, bridge_token, 2);

    /* The worker dies mid-conversation; the next one takes the run. */
    assert_int_equal(er_harness_worker_stop(worker, SIGKILL, 5000),
                     128 + SIGKILL);
    worker = start_worker(is_queue);
    ER_HARNESS_NON_NULL(worker);
    if (!er_harness_worker_wait_log(worker, "callback bridges re-attached",
                                    WAIT_MS)) {
        er_harness_worker_dump_log(worker, 4000);
        fail_msg("the next owner did not re-attach the bridge");
    }
    /* queue_v1: the gateway was found serving and kept, its scripts go
     * through a command runner of the new worker's. */
    assert_true(er_harness_worker_log_contains(
                    worker, "callback bridge re-attached") == is_queue);
    assert_true(er_harness_worker_log_contains(
                    worker, "\"commandRunner\":\"true\"") == is_queue);
    er_api_standin_answer(api, API_OK, 0);
    res = realize(&third, &run, ws, token, script);
    ER_HARNESS_ASSERT_OK(res);
    check_api_saw(token, run.run_id, bridge_token, 2);
    later = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(later, "bridge.env.PAPERCLIP_API_KEY", bridge_token);
    ER_HARNESS_ASSERT_STR(
        later, "bridge.env.PAPERCLIP_API_URL",
        er_harness_json_str(body, "bridge.env.PAPERCLIP_API_URL"));
    ER_HARNESS_ASSERT_OK(
        er_harness_release(h, worker, &run, ER_RELEASE_RELEASED, WAIT_MS));
    check_no_leak(token, bridge_token);
    er_secret_fini(&first.cmd.host_api_token);
    er_secret_fini(&second.cmd.host_api_token);
    er_secret_fini(&third.cmd.host_api_token);
    json_decref(later);
    json_decref(body);
}

static void queue_bridge_follows_its_run_across_a_worker_kill(void **state)
{
    (void)state;
    follow_across_kill("queue_v1");
}

static void stream_bridge_follows_its_run_across_a_worker_kill(void **state)
{
    (void)state;
    follow_across_kill("stream_v1");
}

/* Segments of the server's write-ahead log, the newest few (this test's
 * writes are there), holding needle in their bytes. */
static long long wal_segments_containing(const char *needle)
{
    const char *params[] = { needle };

    return er_harness_pg_count(
        h->db_url,
        "SELECT count(*) FROM (SELECT name FROM pg_ls_waldir() "
        "ORDER BY modification DESC LIMIT 3) w WHERE position("
        "convert_to($1, 'UTF8') IN pg_read_binary_file('pg_wal/' || w.name)) "
        "> 0",
        1, params);
}

/* The realize's result is committed with its bridge token masked and a
 * note of where the token comes from; the worker is killed before its
 * relay publishes it. Neither the outbox row, nor any table, nor the
 * write-ahead log holds the token; the next worker's relay (which never
 * saw it) reads the realize back from Kafka and publishes the result with
 * the token the agent must get. */
static void next_relay_restores_the_token_never_written(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const struct er_harness_record *recs[4];
    char env_id[37];
    char token[64];
    char want[ER_BRIDGE_TOKEN_LEN + 1];
    char ws[ER_HARNESS_PATH_MAX + 32];
    const char *params[1];
    size_t cnt;
    size_t i;

    (void)state;
    assert_int_equal(er_harness_worker_stop(worker, SIGTERM, 30000), 0);
    worker = start_worker_with("ENVRUN_TEST_FAULT=relay.before_fill:1");
    ER_HARNESS_NON_NULL(worker);
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    er_harness_env_insert(h, run.company_id, "Bridged relay", "sandbox",
                          "active", "{\"provider\": \"bwrap\"}", env_id);
    acquire(&run, env_id);
    snprintf(ws, sizeof(ws), "%s/bridge-relay-ws", h->dir);
    er_harness_fresh_dir(ws);
    er_harness_cmd_realize(&c, &run, ws);
    assert_int_equal(er_secret_set(&c.cmd.host_api_token, token, strlen(token)),
                     0);
    assert_int_equal(
        er_bridge_token_derive(&c.cmd.host_api_token, run.run_id, want), 0);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    assert_int_equal(er_harness_worker_wait_exit(worker, WAIT_MS),
                     128 + SIGKILL);
    assert_true(er_harness_worker_log_contains(
        worker, "fault point relay.before_fill reached"));

    /* Committed, not published: masked, noted, nowhere in clear. */
    params[0] = c.command_id;
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM envrun.outbox WHERE "
                            "token_from->>'commandId' = $1 AND position("
                            "convert_to('\"PAPERCLIP_API_KEY\":\"[REDACTED-"
                            "BRIDGE-TOKEN---------]\"', 'UTF8') IN "
                            "msg_value) > 0",
                            1, params),
        1);
    assert_int_equal(bytea_rows_containing(want), 0);
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, want), 0);
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, token), 0);
    assert_int_equal(wal_segments_containing(want), 0);
    assert_int_equal(wal_segments_containing(token), 0);
    /* The scan sees what was written: the command's id is there. */
    assert_true(wal_segments_containing(c.command_id) > 0);

    /* The next worker publishes it with the token restored. */
    worker = start_worker(false);
    ER_HARNESS_NON_NULL(worker);
    assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                      c.command_id, 1, WAIT_MS));
    assert_true(er_harness_worker_wait_log(
        worker, "bridge token restored from its realize command", WAIT_MS));
    er_harness_poll(h, 1000);
    cnt = results_of(c.command_id, recs, 4);
    assert_true(cnt >= 1);
    for (i = 0; i < cnt; i++) {
        json_t *body = er_harness_json_parse_field(recs[i]->json, "resultJson");

        ER_HARNESS_NON_NULL(body);
        ER_HARNESS_ASSERT_STR(body, "bridge.env.PAPERCLIP_API_KEY", want);
        json_decref(body);
    }
    ER_HARNESS_ASSERT_OK(
        er_harness_release(h, worker, &run, ER_RELEASE_RELEASED, WAIT_MS));
    check_no_leak(token, want);
    assert_int_equal(wal_segments_containing(want), 0);
    er_secret_fini(&c.cmd.host_api_token);
}

/* A provider that cannot run commands cannot carry a bridge: the realize
 * fails with a message that says so. */
static void fake_sandbox_cannot_bridge(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char token[64];
    const json_t *res;
    const char *msg;

    (void)state;
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    er_harness_env_insert(h, run.company_id, "Fake bridged", "sandbox",
                          "active", "{\"provider\": \"fake\"}", env_id);
    acquire(&run, env_id);
    res = realize(&c, &run, h->dir, token, NULL);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_NON_NULL(msg);
    ER_HARNESS_ASSERT_CONTAINS(msg, "Failed to start the callback bridge for "
                                    "environment \"Fake bridged\" (sandbox): ");
    assert_null(strstr(msg, token));
    er_secret_fini(&c.cmd.host_api_token);
}

/* A realize whose bridge started but whose result is a failure keeps no
 * bridge: here the lease stops being active while the provision command
 * runs (another worker's reaper, say), so the realize fails after its
 * bridge came up. The bridge's journal entry is closed failed (no later
 * owner re-attaches it), the result carries no bridge, and the gateway is
 * stopped once the outcome committed. */
static void failed_realize_keeps_no_bridge(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const struct er_harness_record *recs[2];
    char env_id[37];
    char lease_id[37];
    char token[64];
    char ws[ER_HARNESS_PATH_MAX + 32];
    char line[128];
    pid_t before[64];
    size_t before_cnt = 0;
    const char *params[2];
    const json_t *res;
    json_t *body;
    int i;

    (void)state;
    /* Gateways other tests left are not this one's. */
    before_cnt = program_pids(SANDBOX_GATEWAY, before, 64);
    er_harness_run_init(&run);
    random_token(token, sizeof(token));
    er_harness_env_insert(h, run.company_id, "Bridged then failed", "sandbox",
                          "active", "{\"provider\": \"bwrap\"}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_OK(res);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(body, "lease.id"));
    json_decref(body);

    snprintf(ws, sizeof(ws), "%s/bridge-failed-ws", h->dir);
    er_harness_fresh_dir(ws);
    er_harness_cmd_realize(&c, &run, ws);
    c.cmd.runtime_overlay_json =
        (char *)(uintptr_t) "{\"provisionCommand\": \"sleep 2\"}";
    assert_int_equal(er_secret_set(&c.cmd.host_api_token, token, strlen(token)),
                     0);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    params[0] = c.command_id;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "kind = 'provision' AND state = 'started'",
        1, params, 1, WAIT_MS));
    params[0] = lease_id;
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "UPDATE environment_leases SET status = 'released', "
                           "released_at = now() WHERE id = $1",
                           1, params),
        0);

    assert_true(er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId",
                                      c.command_id, 1, WAIT_MS));
    assert_int_equal(results_of(c.command_id, recs, 2), 1);
    res = recs[0]->json;
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "is not active (status: released)");
    assert_null(er_harness_json_str(res, "resultJson"));
    /* The bridge did start, and its entry says it failed. */
    params[0] = c.command_id;
    params[1] = lease_id;
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM envrun.operations WHERE "
                            "command_id = $1 AND lease_id = $2::uuid AND "
                            "kind = 'bridge' AND state = 'failed'",
                            2, params),
        1);
    /* Stopped after the commit: the worker says so, no gateway is left. */
    snprintf(line, sizeof(line),
             "\"callback bridge stopped\",\"leaseId\":\"%s\"", lease_id);
    for (i = 0; i < 100 && !er_harness_worker_log_contains(worker, line); i++)
        nanosleep(&(struct timespec){ 0, 100000000 }, NULL);
    assert_true(er_harness_worker_log_contains(worker, line));
    for (i = 0;
         i < 100 && program_runs_besides(SANDBOX_GATEWAY, before, before_cnt);
         i++)
        nanosleep(&(struct timespec){ 0, 100000000 }, NULL);
    assert_false(program_runs_besides(SANDBOX_GATEWAY, before, before_cnt));
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, token), 0);
    assert_false(er_harness_worker_log_contains(worker, token));
    er_secret_fini(&c.cmd.host_api_token);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bwrap_agent_reaches_api_through_bridge),
        cmocka_unit_test(ssh_agent_reaches_api_through_bridge),
        cmocka_unit_test(fake_sandbox_cannot_bridge),
        cmocka_unit_test(failed_realize_keeps_no_bridge),
        cmocka_unit_test(queue_bridge_follows_its_run_across_a_worker_kill),
        cmocka_unit_test(ssh_queue_bridge_serves_through_its_runner),
        cmocka_unit_test(stream_bridge_follows_its_run_across_a_worker_kill),
        cmocka_unit_test(next_relay_restores_the_token_never_written),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
