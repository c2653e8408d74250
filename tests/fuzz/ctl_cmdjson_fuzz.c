/* ctl_cmdjson_fuzz: envrunctl send --file's parser (er_ctl_cmdjson_parse)
 * on arbitrary bytes. It must never crash or leak, and a command it
 * accepts that also passes er_validate_command (as send checks before
 * producing) must encode and decode back to the same ids, kind and
 * traceparent: what send produces is what the worker reads. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) ||
           (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool is_ready;
    struct er_run_command cmd;
    struct er_run_command back;
    struct er_buf enc;
    struct er_err err;
    json_t *doc = NULL;
    char id_buf[37];

    if (!is_ready) {
        er_err_clear(&err);
        if (er_codec_init(&err) != 0)
            abort();
        is_ready = true;
    }
    er_err_clear(&err);
    if (er_ctl_cmdjson_parse((const char *)data, size, &cmd, &doc, id_buf,
                             &err) == 0 &&
        er_validate_command(&cmd, &err) == 0) {
        er_buf_init(&enc, (size_t)4 * 1024 * 1024);
        memset(&back, 0, sizeof(back));
        if (er_codec_command_encode(&cmd, &enc, &err) != 0 ||
            er_codec_command_decode(enc.data, enc.len, &back, &err) != 0 ||
            !same(back.command_id, cmd.command_id) ||
            !same(back.company_id, cmd.company_id) ||
            !same(back.heartbeat_run_id, cmd.heartbeat_run_id) ||
            !same(back.traceparent, cmd.traceparent) || back.kind != cmd.kind)
            abort();
        er_codec_command_fini(&back);
        er_buf_fini(&enc);
    }
    er_secret_fini(&cmd.host_api_token);
    json_decref(doc);
    return 0;
}
