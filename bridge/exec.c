/* exec: what every user of a bridge's exec channel shares (queue.c,
 * runtime.c): an output that starts empty, its text, and B7's failure
 * sentences. Pure functions; thread-safe. */
#include "bridge/bridge.h"

void er_bridge_exec_out_init(struct er_bridge_exec_out *out, size_t out_max)
{
    er_buf_init(&out->out, out_max);
    er_buf_init(&out->err, 8192);
    out->exit_code = -1;
}

void er_bridge_exec_out_fini(struct er_bridge_exec_out *out)
{
    er_buf_fini(&out->out);
    er_buf_fini(&out->err);
}

const char *er_bridge_exec_text(const struct er_buf *b)
{
    return b->data != NULL && b->len > 0 ? (const char *)b->data : "";
}

int er_bridge_exec_failed(struct er_err *err, const char *action,
                          const struct er_bridge_exec_out *out)
{
    if (out->exit_code < 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "%s timed out",
                          action);
    return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE,
                      "%s failed with exit code %d: %.300s", action,
                      out->exit_code,
                      out->err.len > 0 ? er_bridge_exec_text(&out->err)
                                       : er_bridge_exec_text(&out->out));
}
