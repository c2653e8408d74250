/* gateway_main: envrun-gateway's entry point. Reads the environment of
 * upstream.md B4, prints a startup error as one line and exits 1, or runs
 * the gateway until it stops. */
#include <stdio.h>

#include "bridge/gateway/gateway.h"

int main(void)
{
    static struct er_gateway_config cfg;
    char msg[256];

    if (er_gateway_config_load(&cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "[paperclip-bridge] %s\n", msg);
        return 1;
    }
    return er_gateway_run(&cfg);
}
