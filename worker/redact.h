/* redact: keeps secret values out of events, results, activity details and
 * what envrunctl prints (contract.md 6). Pure functions over jansson
 * values; thread-safe. */
#ifndef ER_WORKER_REDACT_H
#define ER_WORKER_REDACT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define ER_REDACT_MASK "***REDACTED***"

/* Whether an object key names a secret value (password, token, apiKey,
 * privateKey, secret, authorization, ...). A secret *reference*
 * (`privateKeySecretRef`, `{type: "secret_ref"}`) is not a secret value. */
bool er_redact_key_is_secret(const char *key);

/* Walk v (may be NULL) and remove every member whose key names a secret,
 * or with is_mask replace its value by ER_REDACT_MASK (activity details are
 * masked, as Paperclip's sanitiser does; events drop them). Returns how
 * many members it removed or masked. */
size_t er_redact_json(json_t *v, bool is_mask);

/* The same over a JSON text of len bytes (a command's workspaceJson, say):
 * 1 and *out (compact JSON, malloc: free it) when anything was removed or
 * masked; 0 when nothing was or the text is not JSON (no keys to judge);
 * -1 when out of memory. */
int er_redact_json_text(const char *text, size_t len, bool is_mask, char **out);

#endif
