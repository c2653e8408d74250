/* envelope_fuzz: arbitrary bytes as a bridge request envelope (a file the
 * sandbox wrote: untrusted), with a small body limit. A parse either fails
 * with a message or gives checked fields: an id, an upper-case method, a
 * path starting with '/', a query that is empty or starts with '?', and a
 * body within the limit; its answer envelope is then made and must come
 * out as one JSON line. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bridge/bridge.h"

#define MAX_BODY 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct er_bridge_envelope env;
    struct er_bridge_res res;
    struct er_buf json;
    struct er_err err;
    size_t i;

    er_err_clear(&err);
    if (er_bridge_envelope_parse((const char *)data, size, MAX_BODY, &env,
                                 &err) != 0) {
        ER_ASSERT(err.msg[0] != '\0' && env.id == NULL && env.body == NULL);
        return 0;
    }
    ER_ASSERT(env.id != NULL && env.id[0] != '\0');
    ER_ASSERT(env.path != NULL && env.path[0] == '/');
    ER_ASSERT(env.query != NULL &&
              (env.query[0] == '\0' || env.query[0] == '?'));
    ER_ASSERT(env.body_len <= MAX_BODY);
    for (i = 0; env.method[i] != '\0'; i++)
        ER_ASSERT(env.method[i] >= 'A' && env.method[i] <= 'Z');
    /* The body back as an answer: text or base64, one line. */
    memset(&res, 0, sizeof(res));
    res.status = 200;
    er_buf_init(&res.body, MAX_BODY + 1);
    ER_ASSERT(er_buf_append(&res.body, env.body, env.body_len) == 0);
    er_buf_init(&json, er_bridge_envelope_limit(MAX_BODY) * 2);
    ER_ASSERT(er_bridge_response_json(env.id, &res, &json, &err) == 0);
    ER_ASSERT(json.len > 0 && json.data[json.len - 1] == '\n' &&
              memchr(json.data, '\n', json.len) == json.data + json.len - 1);
    er_buf_fini(&json);
    er_bridge_res_fini(&res);
    er_bridge_envelope_fini(&env);
    return 0;
}
