/* canonical: the Parsing Canonical Form of an Avro schema and its
 * CRC-64-AVRO fingerprint (Avro specification, "Schema Resolution" and
 * "Schema Fingerprints"), which avro-c 1.11 lacks. Pure functions:
 * thread-safe, own nothing past a call. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "schemas/schemas.h"
#include "schemas/schemas_int.h"

#define CRC64_EMPTY 0xc15d213aa4d7a795ULL

/* Named types nest one level per record, so 64 is far more than any real
 * schema needs while keeping the recursion bounded. */
#define MAX_DEPTH 64

/* The fullname of a named type; longer names are refused. */
#define MAX_NAME 512

uint64_t er_canonical_crc64(const void *p, size_t len)
{
    const uint8_t *b = p;
    uint64_t table[256];
    uint64_t fp = CRC64_EMPTY;
    size_t i;
    int j;

    /* Building the table costs about 2k shifts; the function runs a few
     * times at start-up, so a table per call beats shared mutable state. */
    for (i = 0; i < 256; i++) {
        uint64_t t = i;

        for (j = 0; j < 8; j++)
            t = (t >> 1) ^ (CRC64_EMPTY & (0 - (t & 1)));
        table[i] = t;
    }
    for (i = 0; i < len; i++)
        fp = (fp >> 8) ^ table[(fp ^ b[i]) & 0xff];
    return fp;
}

int er_canonical__json_str(struct er_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0;
    int rc;

    rc = er_buf_append(out, "\"", 1);
    while (rc == 0 && i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n;

        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };

            rc = er_buf_append(out, esc, 2);
            i++;
            continue;
        }
        if (c < 0x20) {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf] };

            rc = er_buf_append(out, esc, sizeof(esc));
            i++;
            continue;
        }
        n = er_validate__utf8_seq(s + i, len - i);
        if (n == 0) {
            rc = er_buf_append(out, "\\ufffd", 6);
            i++;
            continue;
        }
        rc = er_buf_append(out, s + i, n);
        i += n;
    }
    if (rc == 0)
        rc = er_buf_append(out, "\"", 1);
    return rc;
}

struct canon {
    struct er_buf *out;
    json_t *names; /* fullnames defined so far, as a set */
    struct er_err *err;
};

static int canon_schema(struct canon *c, json_t *schema, const char *ns,
                        int depth);

static bool is_primitive(const char *s)
{
    static const char *const prims[] = { "null",  "boolean", "int",
                                         "long",  "float",   "double",
                                         "bytes", "string",  NULL };
    size_t i;

    for (i = 0; prims[i] != NULL; i++) {
        if (strcmp(s, prims[i]) == 0)
            return true;
    }
    return false;
}

static int out_err(struct canon *c, int rc)
{
    if (rc == ER_E2BIG)
        return er_err_set(c->err, rc, ER_ERRCLASS_SKIP,
                          "canonical form: longer than %zu bytes",
                          c->out->max_len);
    return er_err_set(c->err, rc, ER_ERRCLASS_RETRY,
                      "canonical form: out of memory");
}

static int put(struct canon *c, const char *s)
{
    int rc = er_buf_append(c->out, s, strlen(s));

    if (rc != 0)
        return out_err(c, rc);
    return 0;
}

static int put_str(struct canon *c, const char *s)
{
    int rc = er_canonical__json_str(c->out, s, strlen(s));

    if (rc != 0)
        return out_err(c, rc);
    return 0;
}

/* Fullname rules of the specification: a name with a dot is already full;
 * otherwise the namespace is the given one (ns_attr, which may be NULL),
 * else the enclosing one. */
static int full_name(struct canon *c, const char *name, const char *ns_attr,
                     const char *ns, char *full, size_t full_len)
{
    const char *space = ns_attr != NULL ? ns_attr : ns;
    int n;

    if (name[0] == '\0')
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: empty name");
    if (strchr(name, '.') != NULL || space[0] == '\0')
        n = snprintf(full, full_len, "%s", name);
    else
        n = snprintf(full, full_len, "%s.%s", space, name);
    if (n < 0 || (size_t)n >= full_len)
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: name longer than %zu bytes", full_len - 1);
    return 0;
}

static int canon_ref(struct canon *c, const char *name, const char *ns)
{
    char full[MAX_NAME];
    int rc;

    if (is_primitive(name))
        return put_str(c, name);
    rc = full_name(c, name, NULL, ns, full, sizeof(full));
    if (rc != 0)
        return rc;
    if (json_object_get(c->names, full) == NULL)
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: undefined name %.128s", full);
    return put_str(c, full);
}

static int canon_fields(struct canon *c, json_t *fields, const char *ns,
                        int depth)
{
    size_t i;
    json_t *field;
    int rc = 0;

    if (!json_is_array(fields))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: record without a fields array");
    rc = put(c, ",\"fields\":[");
    json_array_foreach(fields, i, field)
    {
        json_t *name = json_object_get(field, "name");

        if (rc != 0)
            return rc;
        if (!json_is_string(name))
            return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                              "schema: field without a name");
        rc = put(c, i == 0 ? "{\"name\":" : ",{\"name\":");
        if (rc == 0)
            rc = put_str(c, json_string_value(name));
        if (rc == 0)
            rc = put(c, ",\"type\":");
        if (rc == 0)
            rc = canon_schema(c, json_object_get(field, "type"), ns, depth + 1);
        if (rc == 0)
            rc = put(c, "}");
    }
    if (rc == 0)
        rc = put(c, "]");
    return rc;
}

static int canon_symbols(struct canon *c, json_t *symbols)
{
    size_t i;
    json_t *sym;
    int rc;

    if (!json_is_array(symbols))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: enum without a symbols array");
    rc = put(c, ",\"symbols\":[");
    json_array_foreach(symbols, i, sym)
    {
        if (rc != 0)
            return rc;
        if (!json_is_string(sym))
            return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                              "schema: enum symbol is not a string");
        if (i != 0)
            rc = put(c, ",");
        if (rc == 0)
            rc = put_str(c, json_string_value(sym));
    }
    if (rc == 0)
        rc = put(c, "]");
    return rc;
}

static int canon_named(struct canon *c, json_t *schema, const char *type,
                       const char *ns, int depth)
{
    json_t *name = json_object_get(schema, "name");
    json_t *space = json_object_get(schema, "namespace");
    char full[MAX_NAME];
    char inner_ns[MAX_NAME];
    const char *dot;
    int rc;

    if (!json_is_string(name))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: %s without a name", type);
    if (space != NULL && !json_is_string(space) && !json_is_null(space))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: namespace is not a string");
    rc = full_name(c, json_string_value(name),
                   json_is_string(space) ? json_string_value(space) : NULL, ns,
                   full, sizeof(full));
    if (rc != 0)
        return rc;
    if (json_object_get(c->names, full) != NULL)
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: %.128s defined twice", full);
    if (json_object_set_new(c->names, full, json_true()) != 0)
        return er_err_set(c->err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                          "canonical form: out of memory");
    /* Names nested in this type resolve in its namespace. */
    dot = strrchr(full, '.');
    if (dot == NULL) {
        inner_ns[0] = '\0';
    } else {
        memcpy(inner_ns, full, (size_t)(dot - full));
        inner_ns[dot - full] = '\0';
    }

    rc = put(c, "{\"name\":");
    if (rc == 0)
        rc = put_str(c, full);
    if (rc == 0)
        rc = put(c, ",\"type\":");
    if (rc == 0)
        rc = put_str(c, type);
    if (rc != 0)
        return rc;
    if (strcmp(type, "enum") == 0) {
        rc = canon_symbols(c, json_object_get(schema, "symbols"));
    } else if (strcmp(type, "fixed") == 0) {
        json_t *size = json_object_get(schema, "size");
        char num[32];

        if (!json_is_integer(size) || json_integer_value(size) < 0)
            return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                              "schema: fixed without a size");
        snprintf(num, sizeof(num), ",\"size\":%" JSON_INTEGER_FORMAT,
                 json_integer_value(size));
        rc = put(c, num);
    } else {
        rc =
            canon_fields(c, json_object_get(schema, "fields"), inner_ns, depth);
    }
    if (rc == 0)
        rc = put(c, "}");
    return rc;
}

static int canon_object(struct canon *c, json_t *schema, const char *ns,
                        int depth)
{
    json_t *type = json_object_get(schema, "type");
    const char *t;
    int rc;

    if (json_is_object(type) || json_is_array(type))
        return canon_schema(c, type, ns, depth + 1);
    if (!json_is_string(type))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: object without a type");
    t = json_string_value(type);
    /* [PRIMITIVES] and [STRIP]: {"type":"long","logicalType":...} is
     * "long". */
    if (is_primitive(t))
        return put_str(c, t);
    /* Java's SchemaNormalization writes an error type as a record. */
    if (strcmp(t, "record") == 0 || strcmp(t, "error") == 0)
        return canon_named(c, schema, "record", ns, depth);
    if (strcmp(t, "enum") == 0 || strcmp(t, "fixed") == 0)
        return canon_named(c, schema, t, ns, depth);
    if (strcmp(t, "array") == 0) {
        rc = put(c, "{\"type\":\"array\",\"items\":");
        if (rc == 0)
            rc = canon_schema(c, json_object_get(schema, "items"), ns,
                              depth + 1);
        if (rc == 0)
            rc = put(c, "}");
        return rc;
    }
    if (strcmp(t, "map") == 0) {
        rc = put(c, "{\"type\":\"map\",\"values\":");
        if (rc == 0)
            rc = canon_schema(c, json_object_get(schema, "values"), ns,
                              depth + 1);
        if (rc == 0)
            rc = put(c, "}");
        return rc;
    }
    /* {"type":"SomeName"} refers to a named type. */
    return canon_ref(c, t, ns);
}

static int canon_schema(struct canon *c, json_t *schema, const char *ns,
                        int depth)
{
    size_t i;
    json_t *branch;
    int rc = 0;

    if (depth > MAX_DEPTH)
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: nested deeper than %d", MAX_DEPTH);
    if (json_is_string(schema))
        return canon_ref(c, json_string_value(schema), ns);
    if (json_is_object(schema))
        return canon_object(c, schema, ns, depth);
    if (!json_is_array(schema))
        return er_err_set(c->err, ER_EINVAL, ER_ERRCLASS_SKIP,
                          "schema: not a string, object or array");
    rc = put(c, "[");
    json_array_foreach(schema, i, branch)
    {
        if (rc != 0)
            return rc;
        if (i != 0)
            rc = put(c, ",");
        if (rc == 0)
            rc = canon_schema(c, branch, ns, depth + 1);
    }
    if (rc == 0)
        rc = put(c, "]");
    return rc;
}

int er_canonical_form(const char *schema_json, struct er_buf *out,
                      struct er_err *err)
{
    struct canon c = { .out = out, .names = NULL, .err = err };
    json_t *root = NULL;
    json_error_t jerr;
    size_t old_len = out->len;
    int rc = 0;

    if (schema_json == NULL) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP, "schema: missing");
        goto out;
    }
    root = json_loadb(schema_json, strlen(schema_json), JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        rc = er_err_set(err, ER_EINVAL, ER_ERRCLASS_SKIP,
                        "schema: not JSON (line %d: %s)", jerr.line, jerr.text);
        goto out;
    }
    c.names = json_object();
    if (c.names == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_RETRY,
                        "canonical form: out of memory");
        goto out;
    }
    rc = canon_schema(&c, root, "", 0);

out:
    if (rc != 0 && out->data != NULL) {
        out->len = old_len;
        out->data[old_len] = '\0';
    }
    json_decref(c.names);
    json_decref(root);
    return rc;
}
