/* stream_fuzz: arbitrary bytes as the gateway's stdout in stream_v1
 * (untrusted: the gateway runs in the sandbox), cut into frames as the
 * host's reader cuts them: a 4-byte big-endian length, then that many
 * bytes; a length of 0 or over the envelope limit (small max body here)
 * ends the stream, and so does a short read. Each frame is classified: a
 * ready frame has a port in 1..65535, an abandon has an id, an id is
 * bounded, NUL-terminated and can be answered (a full queue's 503); a
 * request with an id goes on as the forwarder takes it, through the
 * envelope parser (whose id must be the frame's), and its answer (the
 * bridge's 400 for a bad envelope, else its body back) must come out as
 * one JSON line. Stateless. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bridge/bridge.h"

#define MAX_BODY      256
#define FRAME_HDR_LEN 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The answer to id: one JSON object on one line, as respond() frames it. */
static void answer(const char *id, const struct er_bridge_res *res)
{
    struct er_buf json;
    struct er_err err;

    er_buf_init(&json, er_bridge_envelope_limit(MAX_BODY) * 2);
    er_err_clear(&err);
    ER_ASSERT(er_bridge_response_json(id, res, &json, &err) == 0);
    ER_ASSERT(json.len > 2 && json.data[0] == '{' &&
              json.data[json.len - 2] == '}' &&
              json.data[json.len - 1] == '\n' &&
              memchr(json.data, '\n', json.len) == json.data + json.len - 1);
    er_buf_fini(&json);
}

/* What the forwarder does with a request frame (stream.c handle), the
 * API's answer being the request's own body. */
static void fuzz_request(const char *text, size_t len,
                         const struct er_bridge_frame *frame)
{
    struct er_bridge_envelope env;
    struct er_bridge_res res;
    struct er_err err;

    if (frame->id[0] == '\0')
        return; /* nobody to answer */
    memset(&res, 0, sizeof(res));
    er_err_clear(&err);
    if (er_bridge_envelope_parse(text, len, MAX_BODY, &env, &err) != 0) {
        ER_ASSERT(err.msg[0] != '\0' && env.id == NULL && env.body == NULL);
        er_bridge_res_error(&res, 400, "Invalid bridge request payload.",
                            false);
    } else {
        /* The envelope's id is the one the frame gave the forwarder. */
        ER_ASSERT(strcmp(env.id, frame->id) == 0);
        ER_ASSERT(env.path[0] == '/' && env.body_len <= MAX_BODY);
        res.status = 200;
        er_buf_init(&res.body, MAX_BODY + 1);
        ER_ASSERT(er_buf_append(&res.body, env.body, env.body_len) == 0);
    }
    answer(frame->id, &res);
    er_bridge_res_fini(&res);
    er_bridge_envelope_fini(&env);
}

static void fuzz_frame(const char *text, size_t len)
{
    struct er_bridge_frame frame;
    enum er_bridge_frame_type type;

    type = er_bridge_stream_frame_parse(text, len, &frame);
    ER_ASSERT(memchr(frame.id, '\0', sizeof(frame.id)) != NULL);
    ER_ASSERT(frame.has_id || frame.id[0] == '\0');
    if (frame.has_id) {
        /* Answerable: a full queue answers a request with its id (503). */
        struct er_bridge_res res;

        memset(&res, 0, sizeof(res));
        er_bridge_res_error(&res, 503, "busy", false);
        answer(frame.id, &res);
        er_bridge_res_fini(&res);
    }
    switch (type) {
    case ER_BRIDGE_FRAME_READY:
        ER_ASSERT(frame.port >= 1 && frame.port <= 65535);
        return;
    case ER_BRIDGE_FRAME_READY_BAD:
    case ER_BRIDGE_FRAME_BAD:
        ER_ASSERT(frame.port == 0 && frame.pid == 0);
        return;
    case ER_BRIDGE_FRAME_ABANDON:
        ER_ASSERT(frame.has_id && frame.port == 0 && frame.pid == 0);
        return;
    case ER_BRIDGE_FRAME_REQUEST:
        ER_ASSERT(frame.port == 0 && frame.pid == 0);
        fuzz_request(text, len, &frame);
        return;
    }
    ER_ASSERT(!"unknown frame type");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t limit = er_bridge_envelope_limit(MAX_BODY);
    size_t at = 0;

    while (size - at >= FRAME_HDR_LEN) {
        const uint8_t *hdr = data + at;
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
                       (uint32_t)hdr[2] << 8 | hdr[3];
        char *text;

        at += FRAME_HDR_LEN;
        if (len == 0 || len > limit || len > size - at)
            break;
        /* Its own NUL-terminated copy, as the reader makes: a read past
         * the frame is a read past the allocation. */
        text = er_malloc((size_t)len + 1);
        ER_ASSERT(text != NULL);
        memcpy(text, data + at, len);
        text[len] = '\0';
        fuzz_frame(text, len);
        er_free(text);
        at += len;
    }
    return 0;
}
