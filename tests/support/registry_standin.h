/* registry_standin: a stand-in for a Confluent-compatible schema registry
 * (the real one is a Java service that cannot run here), for the tests of
 * the worker's registry client. A small HTTP/1.1 server on 127.0.0.1 in a
 * thread of the test, with keep-alive, speaking the part of the REST API
 * envrun uses:
 *   POST /subjects/{subject}/versions  {"schema": "..."}  -> {"id": N}
 *   GET  /schemas/ids/{id}                                -> {"schema": "..."}
 * The same schema text gets the same id under any subject, as in the real
 * registry. Errors have its shape: {"error_code": 40403, "message": ...}.
 * It can require basic auth, can be "down" (answering 503) and "lost"
 * (answering a bare 404). */
#ifndef ER_TESTS_SUPPORT_REGISTRY_STANDIN_H
#define ER_TESTS_SUPPORT_REGISTRY_STANDIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct er_registry_standin;

/* Listen on an ephemeral loopback port. user_info "user:password" makes
 * every request need that basic auth (NULL: none). NULL after printing
 * why. */
struct er_registry_standin *er_registry_standin_start(const char *user_info);
void er_registry_standin_stop(struct er_registry_standin *reg);
int er_registry_standin_port(const struct er_registry_standin *reg);
/* From now on answer every request 503 (is_down) or serve again. */
void er_registry_standin_set_down(struct er_registry_standin *reg,
                                  bool is_down);
/* From now on answer every request 404 without the registry's error body
 * (as a proxy in front of a registry that moved would), or serve again. */
void er_registry_standin_set_lost(struct er_registry_standin *reg,
                                  bool is_lost);
/* Register schema (JSON text) under subject as a client would; its id. */
int er_registry_standin_add(struct er_registry_standin *reg,
                            const char *subject, const char *schema);
/* The latest id registered under subject; -1 when none. */
int er_registry_standin_subject_id(struct er_registry_standin *reg,
                                   const char *subject);
/* Counters since start: GET /schemas/ids/{id} for that id, connections
 * accepted, requests refused for want of credentials, all requests. */
int er_registry_standin_fetches(struct er_registry_standin *reg, int id);
int er_registry_standin_connections(struct er_registry_standin *reg);
int er_registry_standin_unauthorized(struct er_registry_standin *reg);
int er_registry_standin_requests(struct er_registry_standin *reg);

#endif
