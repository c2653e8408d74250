/* run: placeholder until the consumer lands (replaced in this issue). */
#include "worker/worker.h"

volatile sig_atomic_t er_worker_stop;

int er_worker_run(const struct er_config *cfg)
{
    (void)cfg;
    return 1;
}
