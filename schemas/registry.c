/* registry: a client of a Confluent-compatible schema registry (its REST
 * API, through libcurl) and the Confluent wire format of contract.md 4:
 * byte 0x00, the schema id as 4 bytes big-endian, then the Avro binary.
 *
 * The codec speaks single-object encoding only. This file converts between
 * the two framings: the Avro body is the same bytes in both, only the
 * header differs (0xC3 0x01 + fingerprint, or 0x00 + id), so a value is
 * reframed, never re-encoded. Ids of envrun's own schemas come from
 * registering them (er_registry_register); an id read from a message is
 * fetched once (GET /schemas/ids/{id}), its fingerprint computed from the
 * schema's canonical form and kept.
 *
 * Thread-safe: one mutex guards the libcurl handle (so one connection is
 * reused for every call) and the caches. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

#define REC_CNT      4
#define CACHE_MAX    256        /* ids read from messages */
#define RESP_MAX     (1u << 20) /* bytes of a registry answer kept */
#define CONNECT_MS   5000
#define CALL_MS      10000
#define CF_HDR_LEN   ER_REGISTRY_HDR_LEN
#define SO_MAGIC0    0xC3
#define SO_MAGIC1    0x01
#define CONTENT_TYPE "application/vnd.schemaregistry.v1+json"

struct id_fp {
    int32_t id;
    uint64_t fp;
};

struct er_registry {
    pthread_mutex_t mu;
    CURL *curl;
    char *base;      /* the URL, userinfo included; never logged */
    char shown[512]; /* the URL without userinfo, for messages */
    char errbuf[CURL_ERROR_SIZE];
    struct er_buf resp;
    /* Ids of envrun's records, -1 until registered. */
    int32_t own_id[REC_CNT];
    uint64_t own_fp[REC_CNT];
    struct id_fp cache[CACHE_MAX];
    size_t cache_cnt;
    uint64_t fetch_cnt; /* GET /schemas/ids calls made */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct er_buf *resp = arg;

    if (er_buf_append(resp, p, size * n) != 0)
        return 0; /* over RESP_MAX: libcurl fails the transfer */
    return size * n;
}

/* The URL without "user:password@", for messages: everything up to the
 * last '@' goes. A password pasted unescaped may hold '@', '/', '?' or '#',
 * so no delimiter is trusted to end it; an '@' in the path costs only a
 * shorter message, never a password. */
static void url_shown(const char *url, char *out, size_t out_len)
{
    const char *scheme_end = strstr(url, "://");
    const char *host = scheme_end != NULL ? scheme_end + 3 : url;
    const char *at = strrchr(host, '@');

    if (at != NULL)
        snprintf(out, out_len, "%.*s%s", (int)(host - url), url, at + 1);
    else
        snprintf(out, out_len, "%s", url);
}

int er_registry_new(const char *url, const char *ca_file,
                    struct er_registry **out, struct er_err *err)
{
    struct er_registry *reg;
    size_t len = strlen(url);
    int i;

    *out = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "libcurl cannot start: %s",
                          curl_easy_strerror(curl_init_rc));
    reg = er_calloc(1, sizeof(*reg));
    if (reg == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
    pthread_mutex_init(&reg->mu, NULL);
    er_buf_init(&reg->resp, RESP_MAX);
    while (len > 0 && url[len - 1] == '/')
        len--;
    reg->base = er_strndup(url, len);
    reg->curl = curl_easy_init();
    if (reg->base == NULL || reg->curl == NULL) {
        er_registry_destroy(reg);
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL,
                          "cannot make a libcurl handle");
    }
    url_shown(reg->base, reg->shown, sizeof(reg->shown));
    for (i = 0; i < REC_CNT; i++)
        reg->own_id[i] = -1;
    /* Each option is one this libcurl must take: a refused one (an old
     * libcurl, a TLS backend without CAINFO) stops the start. */
    if (curl_easy_setopt(reg->curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_PROTOCOLS_STR, "http,https") !=
            CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)CONNECT_MS) != CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_TIMEOUT_MS, (long)CALL_MS) !=
            CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_ERRORBUFFER, reg->errbuf) !=
            CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_WRITEFUNCTION, on_body) !=
            CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_WRITEDATA, &reg->resp) !=
            CURLE_OK ||
        curl_easy_setopt(reg->curl, CURLOPT_USERAGENT, "envrun/" ER_VERSION) !=
            CURLE_OK) {
        er_registry_destroy(reg);
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "libcurl refused an option the schema registry "
                          "client needs (libcurl 7.85 or later with http and "
                          "https)");
    }
    if (ca_file != NULL && ca_file[0] != '\0' &&
        curl_easy_setopt(reg->curl, CURLOPT_CAINFO, ca_file) != CURLE_OK) {
        er_registry_destroy(reg);
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "libcurl cannot use a CA file "
                          "(ENVRUN_SCHEMA_REGISTRY_CA_FILE) with its TLS "
                          "backend");
    }
    *out = reg;
    return 0;
}

void er_registry_destroy(struct er_registry *reg)
{
    if (reg == NULL)
        return;
    if (reg->curl != NULL)
        curl_easy_cleanup(reg->curl);
    pthread_mutex_destroy(&reg->mu);
    er_buf_fini(&reg->resp);
    if (reg->base != NULL)
        er_wipe(reg->base, strlen(reg->base)); /* may hold a password */
    er_free(reg->base);
    er_free(reg);
}

const char *er_registry_url_shown(const struct er_registry *reg)
{
    return reg->shown;
}

/* One call; the answer's JSON in *body (caller decrefs; NULL when it is
 * not JSON). Transport failures and 5xx are class RETRY. Caller holds mu. */
static int call_locked(struct er_registry *reg, const char *path,
                       const char *post_body, long *status, json_t **body,
                       struct er_err *err)
{
    struct curl_slist *hdrs = NULL;
    struct curl_slist *more;
    char url[2048];
    CURLcode cc;

    *status = 0;
    *body = NULL;
    if ((size_t)snprintf(url, sizeof(url), "%s%s", reg->base, path) >=
        sizeof(url))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "schema registry URL too long");
    er_buf_reset(&reg->resp);
    reg->errbuf[0] = '\0';
    hdrs =
        curl_slist_append(hdrs, "Accept: " CONTENT_TYPE ", application/json");
    if (hdrs != NULL && post_body != NULL) {
        more = curl_slist_append(hdrs, "Content-Type: " CONTENT_TYPE);
        if (more == NULL) {
            curl_slist_free_all(hdrs);
            hdrs = NULL;
        }
    }
    if (hdrs == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    curl_easy_setopt(reg->curl, CURLOPT_URL, url);
    curl_easy_setopt(reg->curl, CURLOPT_HTTPHEADER, hdrs);
    if (post_body != NULL)
        curl_easy_setopt(reg->curl, CURLOPT_POSTFIELDS, post_body);
    else
        curl_easy_setopt(reg->curl, CURLOPT_HTTPGET, 1L);
    cc = curl_easy_perform(reg->curl);
    curl_easy_setopt(reg->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    if (cc != CURLE_OK)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "schema registry %s not reachable: %s", reg->shown,
                          reg->errbuf[0] != '\0' ? reg->errbuf
                                                 : curl_easy_strerror(cc));
    if (curl_easy_getinfo(reg->curl, CURLINFO_RESPONSE_CODE, status) !=
        CURLE_OK)
        *status = 0;
    *body = json_loadb((const char *)reg->resp.data, reg->resp.len, 0, NULL);
    /* 5xx, and 408/429 (the registry or a proxy asks to come back). */
    if (*status >= 500 || *status == 408 || *status == 429 || *status == 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                          "schema registry %s answered HTTP %ld", reg->shown,
                          *status);
    return 0;
}

/* The registry's error_code, 0 when the answer has none. */
static json_int_t error_code(const json_t *body)
{
    return json_integer_value(json_object_get(body, "error_code"));
}

/* The registry's own words for a refusal: {"error_code":..,"message":..}. */
static const char *refusal(const json_t *body)
{
    const char *msg = json_string_value(json_object_get(body, "message"));

    return msg != NULL ? msg : "no message";
}

int er_registry_register(struct er_registry *reg, enum er_record_type type,
                         const char *subject, struct er_err *err)
{
    const char *schema = er_codec_schema_json(type);
    json_t *req = NULL;
    json_t *body = NULL;
    char *req_text = NULL;
    char *escaped;
    char path[512];
    json_int_t id;
    long status;
    size_t n;
    int rc;

    if (schema == NULL || (int)type < 0 || (int)type >= REC_CNT)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "no such record type");
    /* The subject is one path segment whatever the topic prefix holds. */
    escaped = curl_easy_escape(reg->curl, subject, 0);
    if (escaped == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    n = (size_t)snprintf(path, sizeof(path), "/subjects/%s/versions", escaped);
    curl_free(escaped);
    if (n >= sizeof(path))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "subject name too long");
    req = json_pack("{ss}", "schema", schema);
    req_text = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (req_text == NULL)
        return er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY, "out of memory");
    pthread_mutex_lock(&reg->mu);
    rc = call_locked(reg, path, req_text, &status, &body, err);
    if (rc == 0 && status == 200 &&
        json_is_integer(json_object_get(body, "id"))) {
        id = json_integer_value(json_object_get(body, "id"));
        if (id < 0 || id > INT32_MAX) {
            rc = er_err_set(err, ER_EBADMSG, ER_ERRCLASS_FATAL,
                            "schema registry %s gave subject %s the id %lld, "
                            "outside 0..2^31-1",
                            reg->shown, subject, (long long)id);
        } else {
            reg->own_id[type] = (int32_t)id;
            reg->own_fp[type] = er_codec_fingerprint(type);
        }
    } else if (rc == 0) {
        /* 401/403 (credentials), 409 (incompatible), 422 (invalid): no
         * retry makes them pass. */
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_FATAL,
                        "schema registry %s refused the schema of subject "
                        "%s: HTTP %ld: %s",
                        reg->shown, subject, status, refusal(body));
    }
    pthread_mutex_unlock(&reg->mu);
    json_decref(body);
    free(req_text);
    return rc;
}

int32_t er_registry_id(const struct er_registry *reg, enum er_record_type type)
{
    if ((int)type < 0 || (int)type >= REC_CNT)
        return -1;
    return reg->own_id[type];
}

uint64_t er_registry_fetch_cnt(struct er_registry *reg)
{
    uint64_t n;

    pthread_mutex_lock(&reg->mu);
    n = reg->fetch_cnt;
    pthread_mutex_unlock(&reg->mu);
    return n;
}

/* The fingerprint of schema id, from the cache or the registry. */
static int fingerprint_locked(struct er_registry *reg, int32_t id, uint64_t *fp,
                              struct er_err *err)
{
    struct er_buf canon;
    json_t *body = NULL;
    const char *schema;
    const char *kind;
    char path[64];
    long status;
    size_t i;
    int rc;

    for (i = 0; i < REC_CNT; i++) {
        if (reg->own_id[i] == id) {
            *fp = reg->own_fp[i];
            return 0;
        }
    }
    for (i = 0; i < reg->cache_cnt; i++) {
        if (reg->cache[i].id == id) {
            *fp = reg->cache[i].fp;
            return 0;
        }
    }
    snprintf(path, sizeof(path), "/schemas/ids/%" PRId32, id);
    reg->fetch_cnt++;
    rc = call_locked(reg, path, NULL, &status, &body, err);
    if (rc != 0)
        goto out;
    /* Only the registry's own "schema not found" (40403) says the id is
     * unknown; a bare 404 may be a wrong path or a proxy, and a replica
     * behind its leader may not have the id yet: those are retried, so
     * no command is dead-lettered for the registry's trouble. */
    if (status == 404 && error_code(body) == 40403) {
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                        "schema id %" PRId32 " is not in the schema registry",
                        id);
        goto out;
    }
    schema = json_string_value(json_object_get(body, "schema"));
    if (status != 200 || schema == NULL) {
        /* 401/403 and the like: the registry may be set right without a
         * restart, and the command must not be lost meanwhile. */
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_RETRY,
                        "schema registry %s answered HTTP %ld for schema id "
                        "%" PRId32 ": %s",
                        reg->shown, status, id, refusal(body));
        goto out;
    }
    kind = json_string_value(json_object_get(body, "schemaType"));
    if (kind != NULL && strcmp(kind, "AVRO") != 0) {
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                        "schema id %" PRId32 " is a %.32s schema, not Avro", id,
                        kind);
        goto out;
    }
    er_buf_init(&canon, RESP_MAX);
    rc = er_canonical_form(schema, &canon, err);
    if (rc == 0) {
        *fp = er_canonical_crc64(canon.data, canon.len);
        if (reg->cache_cnt == CACHE_MAX)
            reg->cache_cnt = 0; /* start over: ids are few in practice */
        reg->cache[reg->cache_cnt].id = id;
        reg->cache[reg->cache_cnt].fp = *fp;
        reg->cache_cnt++;
    } else {
        char why[sizeof(err->msg)];

        snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "");
        rc = er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                        "schema id %" PRId32 " is not a usable Avro schema: "
                        "%s",
                        id, why);
    }
    er_buf_fini(&canon);
out:
    json_decref(body);
    return rc;
}

bool er_registry_is_framed(const uint8_t *buf, size_t len)
{
    return buf != NULL && len >= CF_HDR_LEN && buf[0] == 0x00;
}

int er_registry_unframe(struct er_registry *reg, const uint8_t *buf, size_t len,
                        struct er_buf *out, struct er_err *err)
{
    uint64_t fp = 0;
    int32_t id;
    uint8_t hdr[ER_CODEC_HDR_LEN];
    int i;
    int rc;

    if (!er_registry_is_framed(buf, len))
        return 0;
    id = (int32_t)(((uint32_t)buf[1] << 24) | ((uint32_t)buf[2] << 16) |
                   ((uint32_t)buf[3] << 8) | buf[4]);
    if (id < 0)
        return er_err_set(err, ER_ESCHEMA, ER_ERRCLASS_SKIP,
                          "schema id %" PRId32 " is negative", id);
    pthread_mutex_lock(&reg->mu);
    rc = fingerprint_locked(reg, id, &fp, err);
    pthread_mutex_unlock(&reg->mu);
    if (rc != 0)
        return rc;
    hdr[0] = SO_MAGIC0;
    hdr[1] = SO_MAGIC1;
    for (i = 0; i < 8; i++)
        hdr[2 + i] = (uint8_t)(fp >> (8 * i));
    er_buf_reset(out);
    if (er_buf_append(out, hdr, sizeof(hdr)) != 0 ||
        er_buf_append(out, buf + CF_HDR_LEN, len - CF_HDR_LEN) != 0)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_SKIP,
                          "value of %zu bytes does not fit", len);
    return 1;
}

int er_registry_frame(struct er_registry *reg, const uint8_t *buf, size_t len,
                      struct er_buf *out, struct er_err *err)
{
    uint8_t hdr[CF_HDR_LEN];
    int32_t id = -1;
    uint64_t fp;
    int i;

    if (buf == NULL || len < ER_CODEC_HDR_LEN || buf[0] != SO_MAGIC0 ||
        buf[1] != SO_MAGIC1)
        return 0;
    fp = er_codec__load_le64(buf + 2);
    /* Written once before the relay starts; read-only after. */
    for (i = 0; i < REC_CNT; i++) {
        if (reg->own_id[i] >= 0 && reg->own_fp[i] == fp)
            id = reg->own_id[i];
    }
    if (id < 0)
        return 0;
    hdr[0] = 0x00;
    hdr[1] = (uint8_t)((uint32_t)id >> 24);
    hdr[2] = (uint8_t)((uint32_t)id >> 16);
    hdr[3] = (uint8_t)((uint32_t)id >> 8);
    hdr[4] = (uint8_t)id;
    er_buf_reset(out);
    if (er_buf_append(out, hdr, sizeof(hdr)) != 0 ||
        er_buf_append(out, buf + ER_CODEC_HDR_LEN, len - ER_CODEC_HDR_LEN) != 0)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "value of %zu bytes does not fit", len);
    return 1;
}

int er_registry_command_decode(const uint8_t *buf, size_t len,
                               struct er_run_command *cmd, struct er_err *err)
{
    struct er_registry *reg = er_registry_installed();
    struct er_buf plain;
    int rc;

    if (reg == NULL || !er_registry_is_framed(buf, len))
        return er_codec_command_decode(buf, len, cmd, err);
    er_buf_init(&plain, len + ER_CODEC_HDR_LEN);
    rc = er_registry_unframe(reg, buf, len, &plain, err);
    if (rc == 1)
        rc = er_codec_command_decode(plain.data, plain.len, cmd, err);
    if (plain.len > 0)
        er_wipe(plain.data, plain.len); /* may hold hostApiToken */
    er_buf_fini(&plain);
    return rc;
}

int er_registry_to_json(const uint8_t *buf, size_t len, struct er_buf *out,
                        struct er_err *err)
{
    struct er_registry *reg = er_registry_installed();
    struct er_buf plain;
    int rc;

    if (reg == NULL || !er_registry_is_framed(buf, len))
        return er_codec_to_json(buf, len, out, err);
    er_buf_init(&plain, len + ER_CODEC_HDR_LEN);
    rc = er_registry_unframe(reg, buf, len, &plain, err);
    if (rc == 1)
        rc = er_codec_to_json(plain.data, plain.len, out, err);
    if (plain.len > 0)
        er_wipe(plain.data, plain.len); /* may hold hostApiToken */
    er_buf_fini(&plain);
    return rc;
}

/* ================================================================
 * The process's registry (NULL: values stay single-object encoded)
 * ================================================================ */

static struct er_registry *_Atomic installed;

void er_registry_install(struct er_registry *reg)
{
    installed = reg;
}

struct er_registry *er_registry_installed(void)
{
    return installed;
}
