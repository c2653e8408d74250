/* redact: secret-looking keys are removed or masked (see redact.h). */
#include "worker/redact.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

bool er_redact_key_is_secret(const char *key)
{
    static const char *const words[] = {
        "password", "passwd",     "secret",      "token",     "apikey",
        "api_key",  "privatekey", "private_key", "credential"
    };
    char low[128];
    size_t i;

    for (i = 0; key[i] != '\0' && i < sizeof(low) - 1; i++)
        low[i] = (char)tolower((unsigned char)key[i]);
    low[i] = '\0';
    if (key[i] != '\0')
        return true; /* a key too long to judge is treated as secret */
    /* A secret reference names a secret; it holds no value. */
    if (strstr(low, "secretref") != NULL || strstr(low, "secret_ref") != NULL ||
        strcmp(low, "secretid") == 0 || strcmp(low, "secret_id") == 0)
        return false;
    if (strcmp(low, "authorization") == 0)
        return true;
    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strstr(low, words[i]) != NULL)
            return true;
    }
    return false;
}

size_t er_redact_json(json_t *v, bool is_mask)
{
    const char *k;
    json_t *child;
    void *tmp;
    size_t i;
    size_t cnt = 0;

    /* Recursion depth is bounded by jansson's parser (2048 levels). */
    if (json_is_object(v)) {
        json_object_foreach_safe(v, tmp, k, child)
        {
            if (!er_redact_key_is_secret(k)) {
                cnt += er_redact_json(child, is_mask);
                continue;
            }
            if (is_mask)
                json_object_set_new(v, k, json_string(ER_REDACT_MASK));
            else
                json_object_del(v, k);
            cnt++;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            cnt += er_redact_json(child, is_mask);
        }
    }
    return cnt;
}

int er_redact_json_text(const char *text, size_t len, bool is_mask, char **out)
{
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    int rc = 0;

    *out = NULL;
    if (v != NULL && er_redact_json(v, is_mask) > 0) {
        *out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        rc = *out != NULL ? 1 : -1;
    }
    json_decref(v);
    return rc;
}
