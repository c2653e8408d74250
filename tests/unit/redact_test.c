/* redact_test: secrets never survive into events or activity details. */
#include "worker/redact.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

static void redact_names_secret_keys(void **state)
{
    (void)state;
    assert_true(er_redact_key_is_secret("privateKey"));
    assert_true(er_redact_key_is_secret("PAPERCLIP_API_KEY"));
    assert_true(er_redact_key_is_secret("hostApiToken"));
    assert_true(er_redact_key_is_secret("apiKey"));
    assert_true(er_redact_key_is_secret("password"));
    assert_true(er_redact_key_is_secret("Authorization"));
    assert_true(er_redact_key_is_secret("clientSecret"));
    assert_false(er_redact_key_is_secret("privateKeySecretRef"));
    assert_false(er_redact_key_is_secret("secretId"));
    assert_false(er_redact_key_is_secret("host"));
    assert_false(er_redact_key_is_secret("remoteCwd"));
    assert_false(er_redact_key_is_secret("driver"));
}

static void redact_removes_nested_secrets(void **state)
{
    json_t *v = json_loads(
        "{\"host\":\"h\",\"privateKey\":\"-----BEGIN\",\"nested\":{\"list\":"
        "[{\"token\":\"t\",\"ok\":1}]},\"privateKeySecretRef\":{\"type\":"
        "\"secret_ref\",\"secretId\":\"s\"}}",
        0, NULL);
    char *text;

    (void)state;
    er_redact_json(v, false);
    text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"host\":\"h\",\"nested\":{\"list\":[{\"ok\":1}"
                              "]},\"privateKeySecretRef\":{\"secretId\":\"s\","
                              "\"type\":\"secret_ref\"}}");
    free(text);
    json_decref(v);
}

static void redact_masks_for_activity(void **state)
{
    json_t *v = json_loads("{\"apiKey\":\"k\",\"n\":null}", 0, NULL);

    (void)state;
    er_redact_json(v, true);
    assert_string_equal(json_string_value(json_object_get(v, "apiKey")),
                        ER_REDACT_MASK);
    assert_true(json_is_null(json_object_get(v, "n")));
    json_decref(v);
    er_redact_json(NULL, true); /* NULL is a no-op */
}

/* The text form: removed or masked, untouched text left alone (0, no
 * copy), and text that is not JSON judged to hold no keys. */
static void redact_json_text_removes_or_masks(void **state)
{
    const char *ws = "{\"cwd\":\"/w\",\"env\":{\"apiKey\":\"k-123\"}}";
    char *out = NULL;

    (void)state;
    assert_int_equal(er_redact_json_text(ws, strlen(ws), false, &out), 1);
    assert_string_equal(out, "{\"cwd\":\"/w\",\"env\":{}}");
    free(out);
    assert_int_equal(er_redact_json_text(ws, strlen(ws), true, &out), 1);
    assert_string_equal(
        out, "{\"cwd\":\"/w\",\"env\":{\"apiKey\":\"" ER_REDACT_MASK "\"}}");
    free(out);
    assert_int_equal(er_redact_json_text("{\"cwd\":\"/w\"}", 12, false, &out),
                     0);
    assert_null(out);
    assert_int_equal(er_redact_json_text("not json", 8, true, &out), 0);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(redact_names_secret_keys),
        cmocka_unit_test(redact_removes_nested_secrets),
        cmocka_unit_test(redact_masks_for_activity),
        cmocka_unit_test(redact_json_text_removes_or_masks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
