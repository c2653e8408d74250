/* gateway_main: envrun-gateway's entry point. Reads the environment of
 * upstream.md B4, prints a startup error as one line and exits 1, or runs
 * the gateway until it stops; with --wait-requests, the host's list of the
 * queue instead (gateway.h). */
#include <stdio.h>
#include <string.h>

#include "bridge/gateway/gateway.h"

static const char usage[] =
    "usage: envrun-gateway [--wait-requests DIR MS [MAX] | "
    "--write-response QUEUE NAME 0|1 [--wait-requests DIR MS MAX] | "
    "--serve-commands | --help | --version]\n";

int main(int argc, char **argv)
{
    static struct er_gateway_config cfg;
    char msg[256];

    /* Contract.md 1: every program prints --help and --version. */
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        fputs("envrun-gateway " ER_VERSION "\n", stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        fputs(usage, stdout);
        fputs("Without arguments: serve the callback bridge inside the "
              "sandbox,\nconfigured by PAPERCLIP_BRIDGE_* variables "
              "(upstream.md B4).\n",
              stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--serve-commands") == 0)
        return er_gateway_serve_commands();
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "--wait-requests") == 0)
        return er_gateway_wait_requests(argv[2], argv[3],
                                        argc == 5 ? argv[4] : NULL);
    if (argc == 5 && strcmp(argv[1], "--write-response") == 0)
        return er_gateway_write_response(argv[2], argv[3], argv[4]);
    if (argc == 9 && strcmp(argv[1], "--write-response") == 0 &&
        strcmp(argv[5], "--wait-requests") == 0) {
        int rc = er_gateway_write_response(argv[2], argv[3], argv[4]);

        return rc != 0 ? rc
                       : er_gateway_wait_requests(argv[6], argv[7], argv[8]);
    }
    if (argc != 1) {
        fputs(usage, stderr);
        return 2;
    }

    if (er_gateway_config_load(&cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "[paperclip-bridge] %s\n", msg);
        return 1;
    }
    return er_gateway_run(&cfg);
}
