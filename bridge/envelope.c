/* envelope: the bridge's request and response files (upstream.md B3). A
 * request comes from inside the sandbox, so it is untrusted: every field
 * is checked, the body is decoded within its limit, and anything off is
 * "Invalid bridge request payload." Pure functions; thread-safe. */
#include <string.h>

#include <jansson.h>

#include "bridge/bridge.h"

#define PATH_MAX_LEN 8192
#define HEADERS_MAX  64
#define HEADER_MAX   8192

size_t er_bridge_envelope_limit(size_t max_body)
{
    return 6 * max_body + 65536;
}

void er_bridge_envelope_fini(struct er_bridge_envelope *env)
{
    size_t i;

    er_free(env->id);
    er_free(env->method);
    er_free(env->path);
    er_free(env->query);
    for (i = 0; i < env->header_cnt * 2; i++)
        er_free(env->headers[i]);
    er_free(env->headers);
    er_free(env->body);
    memset(env, 0, sizeof(*env));
}

static int invalid(struct er_err *err, const char *why)
{
    return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_NONE,
                      "Invalid bridge request payload. (%s)", why);
}

/* A string member without NUL bytes, at most max bytes; NULL when absent
 * or null. */
static int opt_str(const json_t *obj, const char *key, size_t max,
                   const char **out, struct er_err *err)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return invalid(err, key);
    *out = json_string_value(v);
    return 0;
}

static int take_headers(const json_t *h, struct er_bridge_envelope *env,
                        struct er_err *err)
{
    const char *name;
    json_t *v;
    size_t i = 0;

    if (h == NULL || json_is_null(h))
        return 0;
    if (!json_is_object(h) || json_object_size(h) > HEADERS_MAX)
        return invalid(err, "headers");
    env->headers = er_calloc(json_object_size(h) * 2 + 1, sizeof(char *));
    if (env->headers == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    json_object_foreach((json_t *)(uintptr_t)h, name, v)
    {
        size_t k;

        if (!json_is_string(v) || json_string_length(v) > HEADER_MAX ||
            strlen(json_string_value(v)) != json_string_length(v) ||
            strlen(name) == 0 || strlen(name) > 64)
            return invalid(err, "headers");
        env->headers[2 * i] = er_strdup(name);
        env->headers[2 * i + 1] = er_strdup(json_string_value(v));
        if (env->headers[2 * i] == NULL || env->headers[2 * i + 1] == NULL)
            return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE,
                              "out of memory");
        for (k = 0; env->headers[2 * i][k] != '\0'; k++) {
            char *c = &env->headers[2 * i][k];

            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        }
        env->header_cnt = ++i;
    }
    return 0;
}

static int take_body(const json_t *root, size_t max_body,
                     struct er_bridge_envelope *env, struct er_err *err)
{
    const json_t *b = json_object_get(root, "body");
    const char *enc = NULL;
    const char *text;
    size_t len;
    int rc;

    rc = opt_str(root, "bodyEncoding", 16, &enc, err);
    if (rc != 0)
        return rc;
    if (b == NULL || json_is_null(b)) {
        text = "";
        len = 0;
    } else if (json_is_string(b)) {
        text = json_string_value(b);
        len = json_string_length(b);
    } else {
        return invalid(err, "body");
    }
    if (enc != NULL && strcmp(enc, "utf8") != 0 && strcmp(enc, "base64") != 0)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_NONE,
                          "Unsupported bridge body encoding.");
    env->body = er_malloc(len + 1);
    if (env->body == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
    if (enc == NULL || strcmp(enc, "utf8") == 0) {
        if (len > max_body)
            return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_NONE,
                              "Bridge body exceeded the configured size "
                              "limit.");
        memcpy(env->body, text, len);
        env->body_len = len;
        return 0;
    }
    rc = er_base64_decode(text, len, env->body, max_body, &env->body_len);
    if (rc == ER_E2BIG)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_NONE,
                          "Bridge body exceeded the configured size limit.");
    if (rc != 0)
        return er_err_set(err, ER_EBADMSG, ER_ERRCLASS_NONE,
                          "Invalid bridge base64 body.");
    return 0;
}

int er_bridge_envelope_parse(const char *text, size_t len, size_t max_body,
                             struct er_bridge_envelope *env, struct er_err *err)
{
    const char *id;
    const char *method;
    const char *path;
    const char *query;
    json_error_t jerr;
    json_t *root;
    size_t i;
    int rc;

    memset(env, 0, sizeof(*env));
    if (len > er_bridge_envelope_limit(max_body))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_NONE,
                          "Bridge request envelope exceeded the configured "
                          "size limit.");
    root =
        json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return invalid(err, "not a JSON object");
    }
    rc = opt_str(root, "id", ER_BRIDGE_ENVELOPE_ID_MAX, &id, err);
    if (rc == 0 && (id == NULL || id[0] == '\0'))
        rc = invalid(err, "id");
    if (rc == 0)
        rc = opt_str(root, "method", 16, &method, err);
    if (rc == 0)
        rc = opt_str(root, "path", PATH_MAX_LEN, &path, err);
    if (rc == 0 && (path == NULL || path[0] != '/'))
        rc = invalid(err, "path");
    if (rc == 0)
        rc = opt_str(root, "query", PATH_MAX_LEN, &query, err);
    if (rc == 0 && query != NULL && query[0] != '\0' && query[0] != '?')
        rc = invalid(err, "query");
    if (rc != 0)
        goto out;
    env->id = er_strdup(id);
    env->method =
        er_strdup(method != NULL && method[0] != '\0' ? method : "GET");
    env->path = er_strdup(path);
    env->query = er_strdup(query != NULL ? query : "");
    if (env->id == NULL || env->method == NULL || env->path == NULL ||
        env->query == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE, "out of memory");
        goto out;
    }
    for (i = 0; env->method[i] != '\0'; i++) {
        char *c = &env->method[i];

        if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 32);
        if (*c < 'A' || *c > 'Z') {
            rc = invalid(err, "method");
            goto out;
        }
    }
    rc = take_headers(json_object_get(root, "headers"), env, err);
    if (rc == 0)
        rc = take_body(root, max_body, env, err);
out:
    json_decref(root);
    if (rc != 0)
        er_bridge_envelope_fini(env);
    return rc;
}

void er_bridge_envelope_req(const struct er_bridge_envelope *env,
                            struct er_bridge_req *req)
{
    req->method = env->method;
    req->path = env->path;
    req->query = env->query;
    req->headers = (const char *const *)env->headers;
    req->header_cnt = env->header_cnt;
    req->body = env->body;
    req->body_len = env->body_len;
}

int er_bridge_response_json(const char *id, const struct er_bridge_res *res,
                            struct er_buf *out, struct er_err *err)
{
    json_t *headers = json_object();
    json_t *body = json_stringn((const char *)res->body.data, res->body.len);
    json_t *root = NULL;
    char when[32];
    char *text = NULL;
    size_t i;
    int rc = 0;

    er_time_iso(er_time_now_ms(), when);
    for (i = 0; headers != NULL && i < res->header_cnt; i++) {
        if (json_object_set_new(headers, res->headers[2 * i],
                                json_string(res->headers[2 * i + 1])) != 0)
            goto nomem;
    }
    if (body == NULL && res->body.len > 0) {
        /* Not UTF-8 text (or holding NUL bytes): as base64. */
        char *b64 = er_base64_dup(res->body.data, res->body.len);

        body = b64 != NULL ? json_string(b64) : NULL;
        er_free(b64);
        if (body == NULL)
            goto nomem;
        root = json_pack("{s:s, s:i, s:O, s:O, s:s, s:s}", "id", id, "status",
                         res->status, "headers", headers, "body", body,
                         "bodyEncoding", "base64", "completedAt", when);
    } else {
        if (body == NULL)
            body = json_string("");
        root = json_pack("{s:s, s:i, s:O, s:O, s:s}", "id", id, "status",
                         res->status, "headers", headers, "body", body,
                         "completedAt", when);
    }
    if (root == NULL)
        goto nomem;
    text = json_dumps(root, JSON_COMPACT);
    if (text == NULL || er_buf_append(out, text, strlen(text)) != 0 ||
        er_buf_append(out, "\n", 1) != 0)
        goto nomem;
    goto out;
nomem:
    rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_NONE,
                    "Bridge host response body capacity is busy.");
out:
    free(text);
    json_decref(root);
    json_decref(body);
    json_decref(headers);
    return rc;
}
