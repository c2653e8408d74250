/* token_relay: a realize's bridge token from its step to its published
 * result, never through the database (see token_relay_int.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "schemas/schemas.h"
#include "worker/token_relay_int.h"

/* At most SLOT_CNT tokens wait in memory, each at most KEEP_MS: a relay
 * that is not this process's, or far behind, reads Kafka instead. */
#define SLOT_CNT      1024
#define KEEP_MS       ((int64_t)5 * 60 * 1000)
#define FROM_MAX      512
#define FETCH_MAX_LEN ER_CMD_VALUE_MAX_BYTES

struct slot {
    int64_t put_ms; /* monotonic; 0: free */
    char key[FROM_MAX];
    char token[ER_BRIDGE_TOKEN_LEN + 1];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot *slots; /* SLOT_CNT, allocated at the first put */
static char writer[37];    /* this process's mark in every note */

static void slot_free(struct slot *s)
{
    er_wipe(s->token, sizeof(s->token));
    s->key[0] = '\0';
    s->put_ms = 0;
}

/* The key of the note from in memory: its writer, partition, offset and
 * command id, however its JSON is spaced or ordered (the outbox column is
 * jsonb, which rewrites it). false when from is not such a note. */
static bool note_key(const char *from, char key[FROM_MAX])
{
    json_t *note = json_loads(from, 0, NULL);
    const char *writer_id = json_string_value(json_object_get(note, "writer"));
    const char *command_id =
        json_string_value(json_object_get(note, "commandId"));
    const json_t *partition = json_object_get(note, "partition");
    const json_t *offset = json_object_get(note, "offset");
    bool is_ok = false;

    if (writer_id != NULL && command_id != NULL && json_is_integer(partition) &&
        json_is_integer(offset)) {
        int n = snprintf(key, FROM_MAX, "%s|%lld|%lld|%s", writer_id,
                         (long long)json_integer_value(partition),
                         (long long)json_integer_value(offset), command_id);

        is_ok = n > 0 && n < FROM_MAX;
    }
    json_decref(note);
    return is_ok;
}

ptrdiff_t er_token_relay_find(const uint8_t *p, size_t len, const char *value)
{
    static const char key[] = "\"PAPERCLIP_API_KEY\":\"";
    size_t key_len = sizeof(key) - 1;
    size_t value_len = strlen(value);
    size_t i;

    for (i = 0; i + key_len + value_len + 1 <= len; i++) {
        if (memcmp(p + i, key, key_len) == 0 &&
            memcmp(p + i + key_len, value, value_len) == 0 &&
            p[i + key_len + value_len] == '"')
            return (ptrdiff_t)(i + key_len);
    }
    return -1;
}

char *er_token_relay_from(struct er_arena *arena, const char *topic,
                          int32_t partition, int64_t offset,
                          const char *command_id, const char *company_id)
{
    json_t *note;
    char *text;
    char *out = NULL;

    pthread_mutex_lock(&mu);
    if (writer[0] == '\0' && er_uuid_v4(writer) != 0)
        writer[0] = '\0';
    pthread_mutex_unlock(&mu);
    if (writer[0] == '\0')
        return NULL;
    note =
        json_pack("{s:s, s:i, s:I, s:s, s:s, s:s}", "topic", topic, "partition",
                  (int)partition, "offset", (json_int_t)offset, "commandId",
                  command_id, "companyId", company_id, "writer", writer);
    text =
        note != NULL ? json_dumps(note, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (text != NULL && strlen(text) < FROM_MAX)
        out = er_arena_strdup(arena, text);
    free(text);
    json_decref(note);
    return out;
}

void er_token_relay_put(const char *from, const char *token)
{
    int64_t now = er_time_mono_ms();
    struct slot *pick = NULL;
    char key[FROM_MAX];
    size_t i;

    if (strlen(token) != ER_BRIDGE_TOKEN_LEN || !note_key(from, key))
        return;
    pthread_mutex_lock(&mu);
    if (slots == NULL)
        slots = er_calloc(SLOT_CNT, sizeof(*slots));
    for (i = 0; slots != NULL && i < SLOT_CNT; i++) {
        struct slot *s = &slots[i];

        if (s->put_ms != 0 && now - s->put_ms >= KEEP_MS)
            slot_free(s);
        /* A free slot, else the oldest: its relay reads Kafka. */
        if (pick == NULL || s->put_ms < pick->put_ms)
            pick = s;
    }
    if (pick != NULL) {
        slot_free(pick);
        memcpy(pick->key, key, sizeof(key));
        memcpy(pick->token, token, ER_BRIDGE_TOKEN_LEN + 1);
        pick->put_ms = now;
    }
    pthread_mutex_unlock(&mu);
}

bool er_token_relay_take(const char *from, char token[ER_BRIDGE_TOKEN_LEN + 1])
{
    int64_t now = er_time_mono_ms();
    bool is_found = false;
    char key[FROM_MAX];
    size_t i;

    if (!note_key(from, key))
        return false;
    pthread_mutex_lock(&mu);
    for (i = 0; slots != NULL && i < SLOT_CNT; i++) {
        struct slot *s = &slots[i];

        if (s->put_ms == 0 || strcmp(s->key, key) != 0)
            continue;
        if (now - s->put_ms < KEEP_MS) {
            memcpy(token, s->token, ER_BRIDGE_TOKEN_LEN + 1);
            is_found = true;
        }
        slot_free(s);
        break;
    }
    pthread_mutex_unlock(&mu);
    return is_found;
}

void er_token_relay_clear(void)
{
    size_t i;

    pthread_mutex_lock(&mu);
    for (i = 0; slots != NULL && i < SLOT_CNT; i++)
        slot_free(&slots[i]);
    er_free(slots);
    slots = NULL;
    pthread_mutex_unlock(&mu);
}

/* The token of the realize command the note names, read back through
 * fetch and checked to be that command. */
static int derive_from_kafka(const json_t *note, er_token_relay_fetch_fn *fetch,
                             void *fetch_arg,
                             char token[ER_BRIDGE_TOKEN_LEN + 1],
                             struct er_err *err)
{
    const char *topic = json_string_value(json_object_get(note, "topic"));
    const char *command_id =
        json_string_value(json_object_get(note, "commandId"));
    const char *company_id =
        json_string_value(json_object_get(note, "companyId"));
    json_int_t partition =
        json_integer_value(json_object_get(note, "partition"));
    json_int_t offset = json_integer_value(json_object_get(note, "offset"));
    struct er_run_command cmd;
    struct er_buf value;
    const char *why = NULL;
    int rc;

    if (topic == NULL || command_id == NULL || company_id == NULL ||
        !json_is_integer(json_object_get(note, "partition")) ||
        !json_is_integer(json_object_get(note, "offset")) ||
        partition > INT32_MAX)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "bridge token cannot be restored: malformed note");
    if (partition < 0 || offset < 0)
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_SKIP,
                          "bridge token cannot be restored: its command "
                          "%s was not read from Kafka and its worker is gone",
                          command_id);
    memset(&cmd, 0, sizeof(cmd));
    er_buf_init(&value, FETCH_MAX_LEN);
    rc = fetch(fetch_arg, topic, (int32_t)partition, (int64_t)offset, &value,
               err);
    if (rc != 0) {
        char fetch_msg[sizeof(err->msg)];

        /* Gone (retention) or too large is for good; the rest (a broker
         * that does not answer, a reader that cannot be made) is about
         * this worker or the cluster, not the row: for now. */
        snprintf(fetch_msg, sizeof(fetch_msg), "%s",
                 err != NULL ? err->msg : "");
        if (rc == ER_ENOTFOUND || rc == ER_E2BIG)
            er_err_set(err, rc, ER_ERRCLASS_SKIP,
                       "bridge token cannot be restored: realize command %s "
                       "at %s [%d] offset %lld cannot be read: %s",
                       command_id, topic, (int)partition, (long long)offset,
                       fetch_msg);
        else
            er_err_set(err, rc, ER_ERRCLASS_RETRY,
                       "bridge token not restored yet: realize command %s "
                       "at %s [%d] offset %lld cannot be read now: %s",
                       command_id, topic, (int)partition, (long long)offset,
                       fetch_msg);
        goto out;
    }
    rc = er_registry_command_decode(value.data, value.len, &cmd, err);
    if (rc != 0 && err != NULL && err->cls == ER_ERRCLASS_RETRY)
        goto out; /* the schema registry cannot be asked now */
    rc = 0;
    if (cmd.command_id == NULL)
        why = "no longer decodes";
    else if (cmd.kind != ER_CMD_REALIZE ||
             strcmp(cmd.command_id, command_id) != 0 ||
             strcmp(cmd.company_id, company_id) != 0)
        why = "holds another command";
    else if (er_bridge_token_derive(&cmd.host_api_token, cmd.heartbeat_run_id,
                                    token) != 0)
        why = "carries no hostApiToken or run id";
    if (why != NULL)
        rc = er_err_set(err, ER_EBADMSG, ER_ERRCLASS_SKIP,
                        "bridge token cannot be restored: %s [%d] offset "
                        "%lld %s (realize command %s)",
                        topic, (int)partition, (long long)offset, why,
                        command_id);
out:
    er_codec_command_fini(&cmd);
    if (value.len > 0)
        er_wipe(value.data, value.len);
    er_buf_fini(&value);
    return rc;
}

int er_token_relay_fill(const char *from, uint8_t *value, size_t len,
                        er_token_relay_fetch_fn *fetch, void *fetch_arg,
                        struct er_err *err)
{
    char token[ER_BRIDGE_TOKEN_LEN + 1];
    ptrdiff_t at = er_token_relay_find(value, len, ER_TOKEN_RELAY_MASK);
    int rc = 0;

    if (at < 0)
        return 0;
    if (!er_token_relay_take(from, token)) {
        json_t *note = json_loads(from, 0, NULL);

        if (!json_is_object(note))
            rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                            "bridge token cannot be restored: malformed "
                            "note");
        else
            rc = derive_from_kafka(note, fetch, fetch_arg, token, err);
        if (rc == 0)
            er_log_kv(ER_LOG_INFO, "outbox",
                      "bridge token restored from its realize command",
                      "commandId",
                      json_string_value(json_object_get(note, "commandId")),
                      (const char *)NULL);
        json_decref(note);
    }
    if (rc == 0)
        memcpy(value + at, token, ER_BRIDGE_TOKEN_LEN);
    er_wipe(token, sizeof(token));
    return rc;
}
