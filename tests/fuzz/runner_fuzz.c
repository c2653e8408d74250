/* runner_fuzz: arbitrary bytes as what queue_v1's command runner wrote
 * (it runs where the agent does: untrusted), read frame after frame as
 * the host reads them. A header taken is at most 32 bytes and ends its
 * line; its kind is O, E or R; a chunk is at most 64 KiB; an exit code is
 * -1 to 255; nothing is read past the input. Stateless. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bridge/bridge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t off = 0;

    while (off <= size) {
        struct er_bridge_runner_frame f;
        int n = er_bridge_runner_frame_parse(s + off, size - off, &f);

        ER_ASSERT(n >= -1 && n <= 32);
        if (n <= 0)
            break;
        ER_ASSERT((size_t)n <= size - off && s[off + (size_t)n - 1] == '\n');
        ER_ASSERT(memchr(s + off, '\n', (size_t)n - 1) == NULL);
        ER_ASSERT(f.kind == 'O' || f.kind == 'E' || f.kind == 'R');
        ER_ASSERT(f.kind == s[off]);
        if (f.kind == 'R') {
            ER_ASSERT(f.code >= -1 && f.code <= 255 && f.len == 0);
            off += (size_t)n;
            continue;
        }
        ER_ASSERT(f.len <= 65536);
        off += (size_t)n;
        if (f.len > size - off)
            break;
        off += f.len;
    }
    return 0;
}
