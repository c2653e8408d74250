/* codec_fuzz: arbitrary bytes through identify, decode, validate, peek_ids
 * and to_json, as the consumer and envrunctl tail would see them. The codec
 * is initialised once and shut down at exit; every per-input allocation is
 * freed. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "schemas/schemas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whatever decodes, validated or not, encodes again and renders the same
 * JSON as the input (the bytes may differ: a varint may be written longer
 * than it needs to be). A value of an earlier version of the schema is
 * written in the current one, which has more fields: its encoding must
 * then come back the same through a second round. */
static void round_trip(const uint8_t *data, size_t size,
                       const struct er_run_command *cmd)
{
    uint8_t hdr[ER_CODEC_HDR_LEN] = { 0xc3, 0x01 };
    uint64_t fp = er_codec_fingerprint(ER_REC_RUN_COMMAND);
    struct er_run_command first_cmd;
    struct er_buf first;
    struct er_buf again;
    struct er_buf json_in;
    struct er_buf json_out;
    struct er_err err;
    int i;

    for (i = 0; i < 8; i++)
        hdr[2 + i] = (uint8_t)(fp >> (8 * i));
    er_buf_init(&first, ER_CMD_VALUE_MAX_BYTES * 2);
    er_buf_init(&again, ER_CMD_VALUE_MAX_BYTES * 2);
    er_buf_init(&json_in, ER_CMD_VALUE_MAX_BYTES * 8);
    er_buf_init(&json_out, ER_CMD_VALUE_MAX_BYTES * 8);
    if (memcmp(data, hdr, sizeof(hdr)) == 0) {
        ER_ASSERT(er_codec_command_encode(cmd, &again, &err) == 0);
    } else {
        ER_ASSERT(er_codec_command_encode(cmd, &first, &err) == 0);
        ER_ASSERT(er_codec_command_decode(first.data, first.len, &first_cmd,
                                          &err) == 0);
        ER_ASSERT(er_codec_command_encode(&first_cmd, &again, &err) == 0);
        er_codec_command_fini(&first_cmd);
        data = first.data;
        size = first.len;
    }
    ER_ASSERT(er_codec_to_json(data, size, &json_in, &err) == 0);
    ER_ASSERT(er_codec_to_json(again.data, again.len, &json_out, &err) == 0);
    ER_ASSERT(json_in.len == json_out.len &&
              memcmp(json_in.data, json_out.data, json_in.len) == 0);
    er_buf_fini(&json_out);
    er_buf_fini(&json_in);
    er_buf_fini(&again);
    er_buf_fini(&first);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool is_ready;
    struct er_run_command cmd;
    enum er_record_type type = ER_REC_UNKNOWN;
    struct er_buf json;
    struct er_err err;
    char *command_id = NULL;
    char *company_id = NULL;
    int rc;

    if (!is_ready) {
        ER_ASSERT(er_codec_init(&err) == 0);
        /* LeakSanitizer cannot follow avro-c's pointers inside a generic
         * value (stored 4 bytes off alignment), so free before it looks. */
        ER_ASSERT(atexit(er_codec_shutdown) == 0);
        is_ready = true;
    }
    er_err_clear(&err);
    er_buf_init(&json, ER_CMD_VALUE_MAX_BYTES);

    rc = er_codec_identify(data, size, &type, &err);
    ER_ASSERT(rc == 0 || err.cls == ER_ERRCLASS_SKIP);
    ER_ASSERT(rc != 0 || type != ER_REC_UNKNOWN);

    rc = er_codec_command_decode(data, size, &cmd, &err);
    if (rc == 0) {
        if (er_validate_command(&cmd, &err) != 0)
            ER_ASSERT(err.code == ER_EINVAL && err.cls == ER_ERRCLASS_SKIP);
        round_trip(data, size, &cmd);
        er_codec_command_fini(&cmd);
    } else {
        ER_ASSERT(err.cls == ER_ERRCLASS_SKIP || rc == ER_ENOMEM);
        ER_ASSERT(cmd.command_id == NULL && cmd.workspace_json == NULL);
    }

    if (er_codec_command_peek_ids(data, size, &command_id, &company_id) == 0)
        ER_ASSERT(command_id != NULL && company_id != NULL);
    er_free(command_id);
    er_free(company_id);

    rc = er_codec_to_json(data, size, &json, &err);
    ER_ASSERT(rc != 0 || json.len > 0);
    er_buf_fini(&json);
    return 0;
}
