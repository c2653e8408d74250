/* canonical_test: Parsing Canonical Form and CRC-64-AVRO against the Avro
 * project's published vectors (share/test/data/schema-tests.txt) and our
 * own schemas. Single-threaded; owns nothing between cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

struct vector {
    const char *input;
    const char *canonical;
    int64_t fingerprint; /* 0: the file gives none */
};

/* The Avro project's schema-tests.txt, cases 000 to 033. */
static const struct vector vectors[] = {
    { "\"null\"", "\"null\"", 7195948357588979594 },
    { "{\"type\":\"null\"}", "\"null\"", 0 },
    { "\"boolean\"", "\"boolean\"", -6970731678124411036 },
    { "{\"type\":\"boolean\"}", "\"boolean\"", 0 },
    { "\"int\"", "\"int\"", 8247732601305521295 },
    { "{\"type\":\"int\"}", "\"int\"", 0 },
    { "\"long\"", "\"long\"", -3434872931120570953 },
    { "{\"type\":\"long\"}", "\"long\"", 0 },
    { "\"float\"", "\"float\"", 5583340709985441680 },
    { "{\"type\":\"float\"}", "\"float\"", 0 },
    { "\"double\"", "\"double\"", -8181574048448539266 },
    { "{\"type\":\"double\"}", "\"double\"", 0 },
    { "\"bytes\"", "\"bytes\"", 5746618253357095269 },
    { "{\"type\":\"bytes\"}", "\"bytes\"", 0 },
    { "\"string\"", "\"string\"", -8142146995180207161 },
    { "{\"type\":\"string\"}", "\"string\"", 0 },
    { "[  ]", "[]", -1241056759729112623 },
    { "[ \"int\"  ]", "[\"int\"]", -5232228896498058493 },
    { "[ \"int\" , {\"type\":\"boolean\"} ]", "[\"int\",\"boolean\"]",
      5392556393470105090 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"foo\"}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[]}",
      -4824392279771201922 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"foo\", "
      "\"namespace\":\"x.y\"}",
      "{\"name\":\"x.y.foo\",\"type\":\"record\",\"fields\":[]}",
      5916914534497305771 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"a.b.foo\", "
      "\"namespace\":\"x.y\"}",
      "{\"name\":\"a.b.foo\",\"type\":\"record\",\"fields\":[]}",
      -4616218487480524110 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"foo\", "
      "\"doc\":\"Useful info\"}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[]}",
      -4824392279771201922 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"foo\", "
      "\"aliases\":[\"foo\",\"bar\"]}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[]}",
      -4824392279771201922 },
    { "{\"fields\":[], \"type\":\"record\", \"name\":\"foo\", \"doc\":\"foo\", "
      "\"aliases\":[\"foo\",\"bar\"]}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[]}",
      -4824392279771201922 },
    { "{\"fields\":[{\"type\":{\"type\":\"boolean\"}, \"name\":\"f1\"}], "
      "\"type\":\"record\", \"name\":\"foo\"}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[{\"name\":\"f1\","
      "\"type\":\"boolean\"}]}",
      7843277075252814651 },
    { "{ \"fields\":[{\"type\":\"boolean\", \"aliases\":[], \"name\":\"f1\", "
      "\"default\":\"true\"},\n"
      "            {\"order\":\"descending\",\"name\":\"f2\",\"doc\":\"Hello\","
      "\"type\":\"int\"}],\n"
      "  \"type\":\"record\", \"name\":\"foo\"\n}",
      "{\"name\":\"foo\",\"type\":\"record\",\"fields\":[{\"name\":\"f1\","
      "\"type\":\"boolean\"},{\"name\":\"f2\",\"type\":\"int\"}]}",
      -4860222112080293046 },
    { "{\"type\":\"enum\", \"name\":\"foo\", \"symbols\":[\"A1\"]}",
      "{\"name\":\"foo\",\"type\":\"enum\",\"symbols\":[\"A1\"]}",
      -6342190197741309591 },
    { "{\"namespace\":\"x.y.z\", \"type\":\"enum\", \"name\":\"foo\", "
      "\"doc\":\"foo bar\", \"symbols\":[\"A1\", \"A2\"]}",
      "{\"name\":\"x.y.z.foo\",\"type\":\"enum\",\"symbols\":[\"A1\",\"A2\"]}",
      -4448647247586288245 },
    { "{\"name\":\"foo\",\"type\":\"fixed\",\"size\":15}",
      "{\"name\":\"foo\",\"type\":\"fixed\",\"size\":15}",
      1756455273707447556 },
    { "{\"namespace\":\"x.y.z\", \"type\":\"fixed\", \"name\":\"foo\", "
      "\"doc\":\"foo bar\", \"size\":32}",
      "{\"name\":\"x.y.z.foo\",\"type\":\"fixed\",\"size\":32}",
      -3064184465700546786 },
    { "{ \"items\":{\"type\":\"null\"}, \"type\":\"array\"}",
      "{\"type\":\"array\",\"items\":\"null\"}", -589620603366471059 },
    { "{ \"values\":\"string\", \"type\":\"map\"}",
      "{\"type\":\"map\",\"values\":\"string\"}", -8732877298790414990 },
    { "  {\"name\":\"PigValue\",\"type\":\"record\",\n"
      "   \"fields\":[{\"name\":\"value\", \"type\":[\"null\", \"int\", "
      "\"long\", \"PigValue\"]}]}",
      "{\"name\":\"PigValue\",\"type\":\"record\",\"fields\":[{\"name\":"
      "\"value\",\"type\":[\"null\",\"int\",\"long\",\"PigValue\"]}]}",
      -1759257747318642341 },
};

/* Canonicalise text into a fresh buffer; returns the code. */
static int canon(const char *text, struct er_buf *out, struct er_err *err)
{
    er_buf_init(out, 1 << 20);
    er_err_clear(err);
    return er_canonical_form(text, out, err);
}

static void crc64_matches_spec_vector_for_null(void **state)
{
    (void)state;
    assert_true(er_canonical_crc64("\"null\"", 6) == 7195948357588979594ULL);
    /* The empty input leaves the initial value. */
    assert_true(er_canonical_crc64("", 0) == 0xc15d213aa4d7a795ULL);
}

static void canonical_form_matches_spec_vectors(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        struct er_buf out;
        struct er_err err;

        assert_int_equal(canon(vectors[i].input, &out, &err), 0);
        assert_string_equal((const char *)out.data, vectors[i].canonical);
        if (vectors[i].fingerprint != 0)
            assert_true(er_canonical_crc64(out.data, out.len) ==
                        (uint64_t)vectors[i].fingerprint);
        er_buf_fini(&out);
    }
}

static void canonical_form_drops_logical_type(void **state)
{
    struct er_buf out;
    struct er_err err;

    (void)state;
    assert_int_equal(
        canon("{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}", &out,
              &err),
        0);
    assert_string_equal((const char *)out.data, "\"long\"");
    er_buf_fini(&out);
}

static void canonical_form_resolves_nested_names_and_repeats(void **state)
{
    struct er_buf out;
    struct er_err err;
    const char *in =
        "{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"envrun\","
        "\"doc\":\"x\",\"fields\":["
        "{\"name\":\"a\",\"type\":{\"type\":\"enum\",\"name\":\"E\","
        "\"symbols\":[\"x\",\"y\"]},\"default\":\"x\"},"
        "{\"name\":\"b\",\"type\":[\"null\",\"E\"]},"
        "{\"name\":\"c\",\"type\":{\"type\":\"record\",\"name\":\"o.S\","
        "\"fields\":[{\"name\":\"d\",\"type\":{\"type\":\"fixed\","
        "\"name\":\"F\",\"size\":4}}]}},"
        "{\"name\":\"e\",\"type\":\"o.F\"},"
        "{\"name\":\"f\",\"type\":{\"type\":\"map\",\"values\":"
        "{\"type\":\"array\",\"items\":\"envrun.E\"}}}]}";

    (void)state;
    assert_int_equal(canon(in, &out, &err), 0);
    assert_string_equal(
        (const char *)out.data,
        "{\"name\":\"envrun.R\",\"type\":\"record\",\"fields\":["
        "{\"name\":\"a\",\"type\":{\"name\":\"envrun.E\",\"type\":\"enum\","
        "\"symbols\":[\"x\",\"y\"]}},"
        "{\"name\":\"b\",\"type\":[\"null\",\"envrun.E\"]},"
        "{\"name\":\"c\",\"type\":{\"name\":\"o.S\",\"type\":\"record\","
        "\"fields\":[{\"name\":\"d\",\"type\":{\"name\":\"o.F\","
        "\"type\":\"fixed\",\"size\":4}}]}},"
        "{\"name\":\"e\",\"type\":\"o.F\"},"
        "{\"name\":\"f\",\"type\":{\"type\":\"map\",\"values\":"
        "{\"type\":\"array\",\"items\":\"envrun.E\"}}}]}");
    er_buf_fini(&out);
}

static void canonical_form_unescapes_and_reescapes_strings(void **state)
{
    struct er_buf out;
    struct er_err err;

    (void)state;
    /* [STRINGS]: \u escapes become UTF-8; a quote stays escaped. */
    assert_int_equal(canon("{\"type\":\"enum\",\"name\":\"n\",\"symbols\":"
                           "[\"\\u00e9\",\"a\\\"b\"]}",
                           &out, &err),
                     0);
    assert_string_equal((const char *)out.data,
                        "{\"name\":\"n\",\"type\":\"enum\",\"symbols\":"
                        "[\"\xc3\xa9\",\"a\\\"b\"]}");
    er_buf_fini(&out);
}

static void canonical_form_of_our_schemas_is_pinned(void **state)
{
    /* Cross-checked with an independent implementation (the avsc npm
     * package). A change here is a new major version of a record
     * (contract.md, "change it only additively"). */
    static const struct {
        enum er_record_type type;
        uint64_t fp;
    } pins[] = {
        { ER_REC_RUN_COMMAND, 0xc30704ff87f3749bULL },
        { ER_REC_COMMAND_RESULT, 0x0f92f5f15f9a7c22ULL },
        { ER_REC_LEASE_EVENT, 0x7b281b8f2bb84da5ULL },
        { ER_REC_ACTIVITY_EVENT, 0x4d35fe7fd244b146ULL },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(pins) / sizeof(pins[0]); i++) {
        struct er_buf out;
        struct er_err err;

        assert_int_equal(canon(er_codec_schema_json(pins[i].type), &out, &err),
                         0);
        assert_true(er_canonical_crc64(out.data, out.len) == pins[i].fp);
        er_buf_fini(&out);
    }
    /* The versions still read keep theirs (RunCommand_1: before
     * AcquireCommand.requestedExpiresAt). */
    assert_string_equal(er_embed_avsc_history_names[0], "RunCommand_1");
    {
        struct er_buf out;
        struct er_err err;

        assert_int_equal(canon(er_embed_avsc_history_texts[0], &out, &err), 0);
        assert_true(er_canonical_crc64(out.data, out.len) ==
                    0x100bc3923c277fbfULL);
        er_buf_fini(&out);
    }
}

static void canonical_form_rejects_what_is_not_a_schema(void **state)
{
    static const char *const bad[] = {
        "",
        "{",
        "42",
        "null",
        "\"nosuchtype\"",
        "{}",
        "{\"type\":7}",
        "{\"type\":\"record\",\"fields\":[]}",
        "{\"type\":\"record\",\"name\":\"r\"}",
        "{\"type\":\"record\",\"name\":\"r\",\"fields\":[{\"type\":\"int\"}]}",
        "{\"type\":\"record\",\"name\":\"r\",\"fields\":[{\"name\":\"a\"}]}",
        "{\"type\":\"enum\",\"name\":\"e\",\"symbols\":[1]}",
        "{\"type\":\"enum\",\"name\":\"e\"}",
        "{\"type\":\"fixed\",\"name\":\"f\",\"size\":\"4\"}",
        "{\"type\":\"fixed\",\"name\":\"f\",\"size\":-1}",
        "{\"type\":\"array\"}",
        /* One literal on purpose: the same enum named twice in a union. */
        ("[\"int\",{\"type\":\"enum\",\"name\":\"e\",\"symbols\":[]},"
         "{\"type\":\"enum\",\"name\":\"e\",\"symbols\":[]}]"),
        "{\"type\":\"record\",\"name\":\"\",\"fields\":[]}",
        "{\"type\":\"record\",\"name\":\"r\",\"namespace\":5,\"fields\":[]}",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct er_buf out;
        struct er_err err;

        er_buf_init(&out, 1 << 20);
        assert_int_equal(er_buf_append(&out, "keep", 4), 0);
        er_err_clear(&err);
        assert_int_equal(er_canonical_form(bad[i], &out, &err), ER_EINVAL);
        assert_int_equal(err.code, ER_EINVAL);
        assert_true(strncmp(err.msg, "schema: ", 8) == 0);
        /* A failure leaves what the buffer held before. */
        assert_int_equal(out.len, 4);
        assert_string_equal((const char *)out.data, "keep");
        er_buf_fini(&out);
    }
}

static void canonical_form_rejects_null_text(void **state)
{
    struct er_buf out;
    struct er_err err;

    (void)state;
    er_buf_init(&out, 64);
    assert_int_equal(er_canonical_form(NULL, &out, &err), ER_EINVAL);
    er_buf_fini(&out);
}

static void canonical_form_refuses_deep_nesting(void **state)
{
    struct er_buf text;
    struct er_buf out;
    struct er_err err;
    int i;

    (void)state;
    er_buf_init(&text, 1 << 20);
    for (i = 0; i < 200; i++)
        assert_int_equal(er_buf_append(&text, "[", 1), 0);
    assert_int_equal(er_buf_append(&text, "\"int\"", 5), 0);
    for (i = 0; i < 200; i++)
        assert_int_equal(er_buf_append(&text, "]", 1), 0);
    assert_int_equal(canon((const char *)text.data, &out, &err), ER_EINVAL);
    assert_non_null(strstr(err.msg, "nested deeper"));
    er_buf_fini(&out);
    er_buf_fini(&text);
}

static void canonical_form_reports_e2big_past_the_cap(void **state)
{
    struct er_buf out;
    struct er_err err;

    (void)state;
    er_buf_init(&out, 8);
    assert_int_equal(
        er_canonical_form(er_codec_schema_json(ER_REC_RUN_COMMAND), &out, &err),
        ER_E2BIG);
    assert_int_equal(out.len, 0);
    er_buf_fini(&out);
}

static void json_str_escapes_controls_and_replaces_bad_utf8(void **state)
{
    struct er_buf out;

    (void)state;
    er_buf_init(&out, 1024);
    assert_int_equal(
        er_canonical__json_str(&out, "a\"\\\n\x01\xff\xc3\xa9\0z", 10), 0);
    assert_string_equal((const char *)out.data,
                        "\"a\\\"\\\\\\u000a\\u0001\\ufffd\xc3\xa9\\u0000z\"");
    er_buf_fini(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crc64_matches_spec_vector_for_null),
        cmocka_unit_test(canonical_form_matches_spec_vectors),
        cmocka_unit_test(canonical_form_drops_logical_type),
        cmocka_unit_test(canonical_form_resolves_nested_names_and_repeats),
        cmocka_unit_test(canonical_form_unescapes_and_reescapes_strings),
        cmocka_unit_test(canonical_form_of_our_schemas_is_pinned),
        cmocka_unit_test(canonical_form_rejects_what_is_not_a_schema),
        cmocka_unit_test(canonical_form_rejects_null_text),
        cmocka_unit_test(canonical_form_refuses_deep_nesting),
        cmocka_unit_test(canonical_form_reports_e2big_past_the_cap),
        cmocka_unit_test(json_str_escapes_controls_and_replaces_bad_utf8),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
