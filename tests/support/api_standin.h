/* api_standin: a stand-in for the Paperclip API, for the bridge's tests
 * (the real API is a Node server that cannot run here). A small HTTP/1.1
 * server on 127.0.0.1 in a thread of the test: it records the last request
 * that reaches it (head and body) and answers each with the raw response
 * the test set, after an optional delay, then closes the connection. */
#ifndef ER_TESTS_SUPPORT_API_STANDIN_H
#define ER_TESTS_SUPPORT_API_STANDIN_H

#include <stddef.h>
#include <stdint.h>

struct er_api_standin;

/* Listen on an ephemeral loopback port; NULL after printing why. */
struct er_api_standin *er_api_standin_start(void);
void er_api_standin_stop(struct er_api_standin *api);
int er_api_standin_port(const struct er_api_standin *api);
/* Answer every request from now on with raw (NULL: close at once, no
 * answer) after delay_ms; forget what was seen. raw is borrowed. */
void er_api_standin_answer(struct er_api_standin *api, const char *raw,
                           int delay_ms);
/* Requests seen since the last er_api_standin_answer; their text, one
 * after another (as much as the stand-in keeps: 64 KiB), into seen (may
 * be NULL). */
int er_api_standin_hits(struct er_api_standin *api, char *seen, size_t len);

struct er_bridge_allow;
struct er_bridge_fwd;
/* The default allow-lists and a forwarder to the stand-in; 0 or -1. */
int er_api_standin_fwd(const struct er_api_standin *api, size_t max_body,
                       int64_t timeout_ms, struct er_bridge_allow **allow,
                       struct er_bridge_fwd **fwd);

#endif
