/* allowlist_fuzz: arbitrary bytes as an allow-list file, and as a method and
 * path (what an agent sends) matched against the default list and against
 * whatever list the bytes made. Nothing may crash, leak or read out of
 * bounds; a path that does not start with '/' is never allowed. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/bridge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct er_bridge_allow *def;
    struct er_bridge_allow *mine = NULL;
    struct er_err err;
    const uint8_t *sp = memchr(data, ' ', size);
    char method[32] = "";
    char *path;
    size_t path_len;

    if (def == NULL)
        ER_ASSERT(er_bridge_allow_load(NULL, &def, &err) == 0);
    if (er_bridge_allow_parse((const char *)data, size, "fuzz", &mine, &err) ==
        0)
        ER_ASSERT(mine != NULL && er_bridge_allow_route_count(mine) > 0);
    else
        ER_ASSERT(mine == NULL && err.msg[0] != '\0');

    /* "<method> <path>": the method is what precedes the first space. */
    if (sp != NULL && (size_t)(sp - data) < sizeof(method))
        memcpy(method, data, (size_t)(sp - data));
    path_len = sp != NULL ? size - (size_t)(sp - data) - 1 : size;
    path = er_strndup(sp != NULL ? (const char *)sp + 1 : (const char *)data,
                      path_len);
    ER_ASSERT(path != NULL);
    if (path[0] != '/') {
        ER_ASSERT(!er_bridge_allow_route(def, method, path));
    } else {
        (void)er_bridge_allow_route(def, method, path);
    }
    if (mine != NULL)
        (void)er_bridge_allow_route(mine, method, path);
    (void)er_bridge_allow_request_header(def, path);
    er_free(path);
    er_bridge_allow_free(mine);
    return 0;
}
