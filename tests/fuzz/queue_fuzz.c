/* queue_fuzz: arbitrary bytes as what a queue_v1 list exec printed (the
 * sandbox's output: untrusted). Every name kept must look like a request
 * file's (so it can go into a path and a script), at most MAX_NAMES of
 * them, sorted; a first request's bytes, when taken, must be exactly the
 * length they announced, NUL-terminated, and a tail of the input.
 * Stateless. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bridge/bridge.h"

#define MAX_NAMES 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_name(const char *name)
{
    size_t len = strlen(name);
    size_t i;

    ER_ASSERT(len > 5 && len <= 200 && name[0] != '.');
    ER_ASSERT(memcmp(name + len - 5, ".json", 5) == 0);
    for (i = 0; i < len; i++)
        ER_ASSERT((name[i] >= 'a' && name[i] <= 'z') ||
                  (name[i] >= 'A' && name[i] <= 'Z') ||
                  (name[i] >= '0' && name[i] <= '9') || name[i] == '-' ||
                  name[i] == '_' || name[i] == '.');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *names[MAX_NAMES];
    struct er_bridge_preread pre;
    size_t cnt = 0;
    size_t i;
    int rc;

    rc = er_bridge_list_parse((const char *)data, size, names, MAX_NAMES, &cnt,
                              &pre);
    ER_ASSERT(rc == 0 || rc == ER_ENOMEM);
    ER_ASSERT(cnt <= MAX_NAMES);
    for (i = 0; i < cnt; i++) {
        check_name(names[i]);
        ER_ASSERT(i == 0 || strcmp(names[i - 1], names[i]) <= 0);
    }
    if (pre.name != NULL) {
        check_name(pre.name);
        ER_ASSERT(pre.text != NULL && pre.text[pre.len] == '\0');
        ER_ASSERT(pre.len <= size);
        ER_ASSERT(memcmp(pre.text, data + size - pre.len, pre.len) == 0);
    } else {
        ER_ASSERT(pre.text == NULL && pre.len == 0);
    }
    for (i = 0; i < cnt; i++)
        er_free(names[i]);
    er_bridge_preread_fini(&pre);
    return 0;
}
