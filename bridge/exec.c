/* exec: what every user of a bridge's exec channel shares (queue.c,
 * runtime.c, stream.c, runner.c): an output that starts empty, its text,
 * B7's failure sentences, and a held exec's pipes. Thread-safe. */
#include <fcntl.h>
#include <unistd.h>

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

void er_bridge_close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

int er_bridge_hold_pipes(int in[2], int out[2], struct er_err *err)
{
    in[0] = in[1] = out[0] = out[1] = -1;
    if (pipe(in) != 0 || pipe(out) != 0 ||
        fcntl(in[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(in[1], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(out[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(out[1], F_SETFD, FD_CLOEXEC) != 0) {
        er_bridge_close_fd(&in[0]);
        er_bridge_close_fd(&in[1]);
        er_bridge_close_fd(&out[0]);
        er_bridge_close_fd(&out[1]);
        return er_err_set(err, ER_EIO, ER_ERRCLASS_NONE, "cannot make pipes");
    }
    return 0;
}
