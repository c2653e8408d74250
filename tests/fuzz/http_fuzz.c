/* http_fuzz: er_http_parse_request on arbitrary bytes; on success the
 * method and path must lie inside the input and look like what they are.
 * Stateless. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "worker/worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    const char *method = NULL;
    const char *path = NULL;
    size_t method_len = 0;
    size_t path_len = 0;

    if (er_http_parse_request(buf, size, &method, &method_len, &path,
                              &path_len) != 0)
        return 0;
    ER_ASSERT(method == buf);
    ER_ASSERT(method_len > 0 && method_len < size);
    ER_ASSERT(path > method + method_len && path < buf + size);
    ER_ASSERT(path_len > 0 && path_len <= (size_t)(buf + size - path));
    ER_ASSERT(path[0] == '/');
    ER_ASSERT(memchr(path, '?', path_len) == NULL);
    ER_ASSERT(memchr(path, ' ', path_len) == NULL);
    return 0;
}
