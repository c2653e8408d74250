/* plugin_manifest: finds the sandbox-provider plugins under
 * ENVRUN_PLUGINS_DIR, reads and checks their manifests (upstream.md A1,
 * A9), resolves their worker entry points inside their directories and
 * finds node. Runs in er_plugin_host_setup only (not thread-safe); the
 * plugins it loads are the caller's (er_plugin__plugins_free). */
#define _GNU_SOURCE /* pipe2 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "drivers/plugin_host_int.h"

/* ================================================================
 * Small helpers
 * ================================================================ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s);
    size_t m = strlen(suffix);

    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* s for a message: at most 80 bytes, control bytes as '?'. */
const char *er_plugin__shown(const char *s, char *out, size_t out_len)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i < 80 && i + 4 < out_len; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i] != '\0' && i + 4 <= out_len) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/* ================================================================
 * Manifest validation (A9)
 * ================================================================ */

static bool is_lower_or_digit(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ^[a-z0-9][a-z0-9._-]*$ (plugin ids and driver keys). */
static bool is_key(const char *s)
{
    size_t i;

    if (!is_lower_or_digit(s[0]))
        return false;
    for (i = 1; s[i] != '\0'; i++) {
        if (!is_lower_or_digit(s[i]) && s[i] != '.' && s[i] != '_' &&
            s[i] != '-')
            return false;
    }
    return true;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ident_char(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '-';
}

/* [0-9A-Za-z-]+(\.[0-9A-Za-z-]+)* at *p; advances *p. */
static bool take_idents(const char **p)
{
    const char *s = *p;

    for (;;) {
        if (!is_ident_char(*s))
            return false;
        while (is_ident_char(*s))
            s++;
        if (*s != '.')
            break;
        s++;
    }
    *p = s;
    return true;
}

/* ^\d+\.\d+\.\d+(-idents)?(\+idents)?$, upstream's semver rule. */
static bool is_semver(const char *s)
{
    int part;

    for (part = 0; part < 3; part++) {
        if (part > 0) {
            if (*s != '.')
                return false;
            s++;
        }
        if (!is_digit(*s))
            return false;
        while (is_digit(*s))
            s++;
    }
    if (*s == '-') {
        s++;
        if (!take_idents(&s))
            return false;
    }
    if (*s == '+') {
        s++;
        if (!take_idents(&s))
            return false;
    }
    return *s == '\0';
}

/* A string of min..max characters (code points, as upstream counts). */
static bool is_text(const json_t *v, size_t min, size_t max)
{
    const unsigned char *s;
    size_t n = 0;

    if (!json_is_string(v))
        return false;
    for (s = (const unsigned char *)json_string_value(v); *s != '\0'; s++) {
        if ((*s & 0xc0) != 0x80)
            n++;
    }
    return n >= min && n <= max;
}

static bool is_in(const char *s, const char *const *list)
{
    for (; *list != NULL; list++) {
        if (strcmp(s, *list) == 0)
            return true;
    }
    return false;
}

bool er_plugin__is_string_array(const json_t *v, size_t max_cnt)
{
    size_t i;
    json_t *item;

    if (!json_is_array(v) || json_array_size(v) > max_cnt)
        return false;
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item))
            return false;
    }
    return true;
}

/* upstream's permissive JSON Schema check: {} or an object with a string
 * type, $ref or a composition keyword. */
static bool is_json_schema(const json_t *v)
{
    if (!json_is_object(v))
        return false;
    return json_object_size(v) == 0 ||
           json_is_string(json_object_get(v, "type")) ||
           json_object_get(v, "$ref") != NULL ||
           json_object_get(v, "oneOf") != NULL ||
           json_object_get(v, "anyOf") != NULL ||
           json_object_get(v, "allOf") != NULL;
}

static int bad(char *problem, size_t len, const char *fmt, ...) ER_PRINTF(3, 4);

static int bad(char *problem, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(problem, len, fmt, ap);
    va_end(ap);
    return -1;
}

static bool has_capability(const json_t *manifest, const char *cap)
{
    const json_t *caps = json_object_get(manifest, "capabilities");
    size_t i;
    json_t *item;

    json_array_foreach(caps, i, item)
    {
        if (json_is_string(item) && strcmp(json_string_value(item), cap) == 0)
            return true;
    }
    return false;
}

static const char *const driver_fields[] = {
    "driverKey",
    "kind",
    "displayName",
    "description",
    "configSchema",
    "supportsReusableLeases",
    "sandboxCapabilities",
    "supportsLoginPty",
    "supportsSetupTokenLogin",
    "supportsInteractiveSetup",
    "interactiveSetupConnectionTypes",
    "supportsTemplateCapture",
    "templateRefKind",
    "templateConfigBinding",
    "templateIdentityPaths",
    "supportsTemplateDelete",
    NULL,
};

static const char *const driver_bools[] = {
    "supportsReusableLeases",
    "supportsLoginPty",
    "supportsSetupTokenLogin",
    "supportsInteractiveSetup",
    "supportsTemplateCapture",
    "supportsTemplateDelete",
    NULL,
};

static const char *const sandbox_capabilities[] = {
    "reusableLeases",
    "nativeSyncIn",
    "nativeSyncOut",
    "persistentProcessSessions",
    "independentControlCommands",
    "incrementalSessionOutput",
    "concurrentSyncOperations",
    "duplexCommandStream",
    "runnerWebSocketIngress",
    NULL,
};

static const char *const driver_kinds[] = { "sandbox_provider",
                                            "environment_driver", NULL };

static int sandbox_caps_check(const json_t *caps, size_t i, char *problem,
                              size_t len)
{
    const char *name;
    json_t *v;
    char sbuf[96];

    if (!json_is_object(caps))
        return bad(problem, len,
                   "environmentDrivers[%zu].sandboxCapabilities is not an "
                   "object",
                   i);
    json_object_foreach((json_t *)(uintptr_t)caps, name, v)
    {
        if (!is_in(name, sandbox_capabilities))
            return bad(problem, len,
                       "environmentDrivers[%zu].sandboxCapabilities has "
                       "unknown key \"%s\"",
                       i, er_plugin__shown(name, sbuf, sizeof(sbuf)));
        if (!json_is_boolean(v))
            return bad(problem, len,
                       "environmentDrivers[%zu].sandboxCapabilities.%s is "
                       "not a boolean",
                       i, name);
    }
    return 0;
}

static int template_binding_check(const json_t *b, size_t i, char *problem,
                                  size_t len)
{
    const json_t *field = json_object_get(b, "field");
    const json_t *unset = json_object_get(b, "unsetFields");
    size_t k;
    json_t *item;

    if (!json_is_object(b) || !is_text(field, 1, SIZE_MAX) ||
        strcmp(json_string_value(field), "provider") == 0 ||
        (unset != NULL && !er_plugin__is_string_array(unset, SIZE_MAX)))
        return bad(problem, len,
                   "environmentDrivers[%zu].templateConfigBinding is not "
                   "{field, unsetFields?} naming config keys other than "
                   "provider",
                   i);
    json_array_foreach(unset, k, item)
    {
        if (strcmp(json_string_value(item), "provider") == 0)
            return bad(problem, len,
                       "environmentDrivers[%zu].templateConfigBinding may "
                       "not unset provider",
                       i);
    }
    return 0;
}

/* One environmentDrivers[] entry: a strict object. */
static int driver_check(const json_t *d, size_t i, char *problem, size_t len)
{
    const json_t *key = json_object_get(d, "driverKey");
    const json_t *kind = json_object_get(d, "kind");
    const json_t *desc = json_object_get(d, "description");
    const json_t *pty = json_object_get(d, "supportsLoginPty");
    const json_t *token = json_object_get(d, "supportsSetupTokenLogin");
    const json_t *v;
    const char *name;
    json_t *item;
    char sbuf[96];
    size_t k;

    if (!json_is_object(d))
        return bad(problem, len, "environmentDrivers[%zu] is not an object", i);
    json_object_foreach((json_t *)(uintptr_t)d, name, item)
    {
        if (!is_in(name, driver_fields))
            return bad(problem, len,
                       "environmentDrivers[%zu] has unknown key \"%s\"", i,
                       er_plugin__shown(name, sbuf, sizeof(sbuf)));
    }
    if (!json_is_string(key) || !is_key(json_string_value(key)))
        return bad(problem, len,
                   "environmentDrivers[%zu].driverKey must match "
                   "^[a-z0-9][a-z0-9._-]*$",
                   i);
    if (kind != NULL && (!json_is_string(kind) ||
                         !is_in(json_string_value(kind), driver_kinds)))
        return bad(problem, len,
                   "environmentDrivers[%zu].kind must be sandbox_provider or "
                   "environment_driver",
                   i);
    if (!is_text(json_object_get(d, "displayName"), 1, 100))
        return bad(problem, len,
                   "environmentDrivers[%zu].displayName must be 1-100 "
                   "characters",
                   i);
    if (desc != NULL && !is_text(desc, 0, 500))
        return bad(problem, len,
                   "environmentDrivers[%zu].description must be at most 500 "
                   "characters",
                   i);
    if (!is_json_schema(json_object_get(d, "configSchema")))
        return bad(problem, len,
                   "environmentDrivers[%zu].configSchema must be a JSON "
                   "Schema object",
                   i);
    for (k = 0; driver_bools[k] != NULL; k++) {
        v = json_object_get(d, driver_bools[k]);
        if (v != NULL && !json_is_boolean(v))
            return bad(problem, len,
                       "environmentDrivers[%zu].%s is not a boolean", i,
                       driver_bools[k]);
    }
    if (pty != NULL && token != NULL &&
        json_is_true(pty) != json_is_true(token))
        return bad(problem, len,
                   "environmentDrivers[%zu]: supportsLoginPty and "
                   "supportsSetupTokenLogin disagree",
                   i);
    v = json_object_get(d, "sandboxCapabilities");
    if (v != NULL && sandbox_caps_check(v, i, problem, len) != 0)
        return -1;
    v = json_object_get(d, "interactiveSetupConnectionTypes");
    if (v != NULL && !er_plugin__is_string_array(v, 10))
        return bad(problem, len,
                   "environmentDrivers[%zu].interactiveSetupConnectionTypes "
                   "must be at most 10 strings",
                   i);
    v = json_object_get(d, "templateIdentityPaths");
    if (v != NULL && !er_plugin__is_string_array(v, 20))
        return bad(problem, len,
                   "environmentDrivers[%zu].templateIdentityPaths must be at "
                   "most 20 strings",
                   i);
    v = json_object_get(d, "templateRefKind");
    if (v != NULL && !json_is_string(v))
        return bad(problem, len,
                   "environmentDrivers[%zu].templateRefKind is not a string",
                   i);
    v = json_object_get(d, "templateConfigBinding");
    if (v != NULL && template_binding_check(v, i, problem, len) != 0)
        return -1;
    return 0;
}

static int drivers_check(const json_t *manifest, char *problem, size_t len)
{
    const json_t *drivers = json_object_get(manifest, "environmentDrivers");
    size_t i;
    size_t j;
    json_t *d;

    if (drivers == NULL)
        return 0;
    if (!json_is_array(drivers))
        return bad(problem, len, "environmentDrivers is not an array");
    if (!has_capability(manifest, "environment.drivers.register"))
        return bad(problem, len,
                   "environmentDrivers needs capability "
                   "environment.drivers.register");
    json_array_foreach(drivers, i, d)
    {
        if (driver_check(d, i, problem, len) != 0)
            return -1;
        for (j = 0; j < i; j++) {
            const json_t *e = json_array_get(drivers, j);

            if (strcmp(json_string_value(json_object_get(d, "driverKey")),
                       json_string_value(json_object_get(e, "driverKey"))) == 0)
                return bad(problem, len, "driverKey \"%s\" is declared twice",
                           json_string_value(json_object_get(d, "driverKey")));
        }
    }
    return 0;
}

static const char *const categories[] = { "connector", "workspace",
                                          "automation", "ui", NULL };

/* The top level (not strict: unknown keys are tolerated, A9). */
static int manifest_check(const json_t *m, char *problem, size_t len)
{
    const json_t *id = json_object_get(m, "id");
    const json_t *api = json_object_get(m, "apiVersion");
    const json_t *version = json_object_get(m, "version");
    const json_t *cats = json_object_get(m, "categories");
    const json_t *caps = json_object_get(m, "capabilities");
    const json_t *entry = json_object_get(m, "entrypoints");
    const json_t *worker = json_object_get(entry, "worker");
    const json_t *ui = json_object_get(entry, "ui");
    const json_t *min_host = json_object_get(m, "minimumHostVersion");
    const json_t *min_pc = json_object_get(m, "minimumPaperclipVersion");
    char sbuf[96];
    size_t i;
    json_t *item;

    if (!json_is_object(m))
        return bad(problem, len, "the manifest is not a JSON object");
    if (!json_is_string(id) || !is_key(json_string_value(id)))
        return bad(problem, len,
                   "manifest id %s%s%s must match ^[a-z0-9][a-z0-9._-]*$",
                   json_is_string(id) ? "\"" : "",
                   json_is_string(id) ? er_plugin__shown(json_string_value(id),
                                                         sbuf, sizeof(sbuf))
                                      : "(missing)",
                   json_is_string(id) ? "\"" : "");
    if (!json_is_integer(api) || json_integer_value(api) != 1)
        return bad(problem, len, "manifest apiVersion must be 1");
    if (!json_is_string(version) || !is_semver(json_string_value(version)))
        return bad(problem, len, "manifest version must be a semver");
    if (!is_text(json_object_get(m, "displayName"), 1, 100))
        return bad(problem, len,
                   "manifest displayName must be 1-100 characters");
    if (!is_text(json_object_get(m, "description"), 1, 500))
        return bad(problem, len,
                   "manifest description must be 1-500 characters");
    if (!is_text(json_object_get(m, "author"), 1, 200))
        return bad(problem, len, "manifest author must be 1-200 characters");
    if (!er_plugin__is_string_array(cats, SIZE_MAX) ||
        json_array_size(cats) == 0)
        return bad(problem, len,
                   "manifest categories must be a non-empty "
                   "array");
    json_array_foreach(cats, i, item)
    {
        if (!is_in(json_string_value(item), categories))
            return bad(
                problem, len,
                "manifest category \"%s\" is not one of connector, "
                "workspace, automation, ui",
                er_plugin__shown(json_string_value(item), sbuf, sizeof(sbuf)));
    }
    if (!er_plugin__is_string_array(caps, SIZE_MAX) ||
        json_array_size(caps) == 0)
        return bad(problem, len,
                   "manifest capabilities must be a non-empty array of "
                   "strings");
    if (!json_is_object(entry) || !is_text(worker, 1, SIZE_MAX))
        return bad(problem, len, "manifest entrypoints.worker is missing");
    if (ui != NULL && !is_text(ui, 1, SIZE_MAX))
        return bad(problem, len, "manifest entrypoints.ui is empty");
    if ((min_host != NULL && (!json_is_string(min_host) ||
                              !is_semver(json_string_value(min_host)))) ||
        (min_pc != NULL &&
         (!json_is_string(min_pc) || !is_semver(json_string_value(min_pc)))))
        return bad(problem, len,
                   "manifest minimumHostVersion and minimumPaperclipVersion "
                   "must be semvers");
    if (min_host != NULL && min_pc != NULL &&
        strcmp(json_string_value(min_host), json_string_value(min_pc)) != 0)
        return bad(problem, len,
                   "manifest minimumHostVersion and minimumPaperclipVersion "
                   "differ");
    return drivers_check(m, problem, len);
}

/* ================================================================
 * Loading the plugins (A1)
 * ================================================================ */

/* Resolve rel (a relative path) against dir (a real path) into out
 * (PATH_MAX bytes): it must exist, be a regular file and lie inside dir. */
static int path_inside(const char *dir, const char *rel, const char *what,
                       char *out, char *problem, size_t len)
{
    char joined[PATH_MAX];
    char sbuf[96];
    char ebuf[128];
    size_t dir_len = strlen(dir);
    struct stat st;
    int n;

    er_plugin__shown(rel, sbuf, sizeof(sbuf));
    if (rel[0] == '/')
        return bad(problem, len, "%s %s must be a relative path", what, sbuf);
    n = snprintf(joined, sizeof(joined), "%s/%s", dir, rel);
    if (n < 0 || (size_t)n >= sizeof(joined))
        return bad(problem, len, "%s %s: path too long", what, sbuf);
    if (realpath(joined, out) == NULL)
        return bad(problem, len, "%s %s %s", what, sbuf,
                   errno == ENOENT ? "not found"
                                   : er_strerror(errno, ebuf, sizeof(ebuf)));
    if (strncmp(out, dir, dir_len) != 0 || out[dir_len] != '/')
        return bad(problem, len, "%s %s resolves outside the plugin directory",
                   what, sbuf);
    if (stat(out, &st) != 0 || !S_ISREG(st.st_mode))
        return bad(problem, len, "%s %s is not a regular file", what, sbuf);
    return 0;
}

static json_t *json_file(const char *path, const char *name, char *problem,
                         size_t len)
{
    json_error_t jerr;
    json_t *v = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);

    if (v == NULL)
        bad(problem, len, "%s: %s (line %d)", name, jerr.text, jerr.line);
    return v;
}

/* manifest.json, else the .json file package.json's
 * paperclipPlugin.manifest names (A1; a C host cannot import a JS one). */
static json_t *manifest_load(const char *dir, char *problem, size_t len)
{
    char path[PATH_MAX + 32]; /* dir is a real path, under PATH_MAX */
    char real[PATH_MAX];
    char sbuf[96];
    json_t *pkg = NULL;
    json_t *manifest = NULL;
    const json_t *rel;
    struct stat st;

    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    if (lstat(path, &st) == 0) {
        if (path_inside(dir, "manifest.json", "manifest", real, problem, len) ==
            0)
            manifest = json_file(real, "manifest.json", problem, len);
        return manifest;
    }
    snprintf(path, sizeof(path), "%s/package.json", dir);
    if (lstat(path, &st) != 0) {
        bad(problem, len, "no manifest.json (and no package.json)");
        return NULL;
    }
    pkg = json_file(path, "package.json", problem, len);
    if (pkg == NULL)
        return NULL;
    rel = json_object_get(json_object_get(pkg, "paperclipPlugin"), "manifest");
    if (!json_is_string(rel) || json_string_length(rel) == 0) {
        bad(problem, len,
            "no manifest.json, and package.json has no "
            "paperclipPlugin.manifest");
    } else if (!ends_with(json_string_value(rel), ".json")) {
        bad(problem, len,
            "package.json's paperclipPlugin.manifest %s is a JavaScript "
            "module: place a JSON copy of the manifest at manifest.json",
            er_plugin__shown(json_string_value(rel), sbuf, sizeof(sbuf)));
    } else if (path_inside(dir, json_string_value(rel), "manifest", real,
                           problem, len) == 0) {
        manifest = json_file(real, json_string_value(rel), problem, len);
    }
    json_decref(pkg);
    return manifest;
}

static void plugin_free(struct er_plugin *plugin)
{
    if (plugin == NULL)
        return;
    er_free(plugin->dir);
    er_free(plugin->key);
    json_decref(plugin->manifest);
    free(plugin->manifest_text); /* from json_dumps */
    er_free(plugin->entry);
    json_decref(plugin->supported);
    /* At shutdown: what no worker took yet. */
    er_plugin__secrets_wipe(plugin, true);
    er_plugin__close_fd(&plugin->wake[0]);
    er_plugin__close_fd(&plugin->wake[1]);
    pthread_mutex_destroy(&plugin->mu);
    pthread_cond_destroy(&plugin->cond);
    er_free(plugin);
}

static struct er_plugin *plugin_new(void)
{
    struct er_plugin *plugin = er_calloc(1, sizeof(*plugin));
    pthread_condattr_t attr;

    if (plugin == NULL)
        return NULL;
    plugin->wake[0] = -1;
    plugin->wake[1] = -1;
    plugin->next_id = 1;
    pthread_mutex_init(&plugin->mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&plugin->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (pipe2(plugin->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        plugin->wake[0] = -1;
        plugin->wake[1] = -1;
        plugin_free(plugin);
        return NULL;
    }
    return plugin;
}

/* Load and check the plugin in directory path into *out (owned). 0, or
 * ER_EINVAL with err naming the directory and the problem, ER_ENOMEM. */
static int plugin_load(const char *path, struct er_plugin **out,
                       struct er_err *err)
{
    struct er_plugin *plugin = NULL;
    char real[PATH_MAX];
    char entry[PATH_MAX];
    char problem[200];
    char ebuf[128];
    const char *rel;
    struct stat st;
    int rc = ER_EINVAL;

    if (realpath(path, real) == NULL) {
        snprintf(real, sizeof(real), "%s", path);
        snprintf(problem, sizeof(problem), "%s",
                 er_strerror(errno, ebuf, sizeof(ebuf)));
        goto fail;
    }
    plugin = plugin_new();
    if (plugin == NULL)
        goto oom;
    plugin->dir = er_strdup(real);
    if (plugin->dir == NULL)
        goto oom;
    plugin->manifest = manifest_load(real, problem, sizeof(problem));
    if (plugin->manifest == NULL ||
        manifest_check(plugin->manifest, problem, sizeof(problem)) != 0)
        goto fail;
    rel = json_string_value(json_object_get(
        json_object_get(plugin->manifest, "entrypoints"), "worker"));
    if (path_inside(real, rel, "worker entry point", entry, problem,
                    sizeof(problem)) != 0)
        goto fail;
    plugin->is_script = ends_with(entry, ".js") || ends_with(entry, ".mjs") ||
                        ends_with(entry, ".cjs");
    if (!plugin->is_script &&
        (stat(entry, &st) != 0 || access(entry, X_OK) != 0)) {
        snprintf(problem, sizeof(problem),
                 "worker entry point %s is neither a .js/.mjs/.cjs script "
                 "nor an executable",
                 er_plugin__shown(rel, ebuf, sizeof(ebuf)));
        goto fail;
    }
    plugin->key =
        er_strdup(json_string_value(json_object_get(plugin->manifest, "id")));
    plugin->entry = er_strdup(entry);
    plugin->manifest_text = json_dumps(plugin->manifest, JSON_COMPACT);
    if (plugin->key == NULL || plugin->entry == NULL ||
        plugin->manifest_text == NULL)
        goto oom;
    plugin->has_register_cap =
        has_capability(plugin->manifest, "environment.drivers.register");
    *out = plugin;
    return 0;

oom:
    rc = ER_ENOMEM;
    snprintf(problem, sizeof(problem), "out of memory");
fail:
    er_err_set(err, rc, ER_ERRCLASS_FATAL, "plugin directory %s: %s", real,
               problem);
    plugin_free(plugin);
    return rc;
}

/* The sandbox_provider driver keys of a plugin, one at a time. */
const char *er_plugin__provider_at(const struct er_plugin *plugin, size_t i)
{
    const json_t *d = json_array_get(
        json_object_get(plugin->manifest, "environmentDrivers"), i);
    const json_t *kind = json_object_get(d, "kind");

    if (!json_is_string(kind) ||
        strcmp(json_string_value(kind), "sandbox_provider") != 0)
        return "";
    return json_string_value(json_object_get(d, "driverKey"));
}

size_t er_plugin__driver_cnt(const struct er_plugin *plugin)
{
    return json_array_size(
        json_object_get(plugin->manifest, "environmentDrivers"));
}

/* Two plugins may not share an id or a driverKey (of any kind). */
static int plugins_check_unique(struct er_plugin **plugins, size_t cnt,
                                struct er_err *err)
{
    const json_t *a;
    const json_t *b;
    size_t i;
    size_t j;
    size_t k;
    size_t l;

    for (i = 0; i < cnt; i++) {
        for (j = 0; j < i; j++) {
            if (strcmp(plugins[i]->key, plugins[j]->key) == 0)
                return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                                  "plugin directory %s: plugin id \"%s\" is "
                                  "also the id of %s",
                                  plugins[i]->dir, plugins[i]->key,
                                  plugins[j]->dir);
            a = json_object_get(plugins[i]->manifest, "environmentDrivers");
            b = json_object_get(plugins[j]->manifest, "environmentDrivers");
            for (k = 0; k < json_array_size(a); k++) {
                const char *ka = json_string_value(
                    json_object_get(json_array_get(a, k), "driverKey"));

                for (l = 0; l < json_array_size(b); l++) {
                    const char *kb = json_string_value(
                        json_object_get(json_array_get(b, l), "driverKey"));

                    if (strcmp(ka, kb) == 0)
                        return er_err_set(
                            err, ER_EINVAL, ER_ERRCLASS_FATAL,
                            "plugin directory %s: driverKey \"%s\" is also "
                            "declared by plugin \"%s\" (%s)",
                            plugins[i]->dir, ka, plugins[j]->key,
                            plugins[j]->dir);
                }
            }
        }
    }
    return 0;
}

/* ENVRUN_NODE (a path, or a name looked up in PATH), else node in PATH:
 * its real path, or NULL. */
char *er_plugin__node_find(void)
{
    const char *name = getenv("ENVRUN_NODE");
    const char *dirs = getenv("PATH");
    char path[PATH_MAX];
    char real[PATH_MAX];
    struct stat st;
    const char *p;

    if (name == NULL || name[0] == '\0')
        name = "node";
    if (strchr(name, '/') != NULL) {
        if (realpath(name, real) == NULL || stat(real, &st) != 0 ||
            !S_ISREG(st.st_mode) || access(real, X_OK) != 0)
            return NULL;
        return er_strdup(real);
    }
    if (dirs == NULL || dirs[0] == '\0')
        dirs = ER_PROC_PATH;
    for (p = dirs; p != NULL;) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        int len = snprintf(path, sizeof(path), "%.*s/%s", (int)n, p, name);

        if (n > 0 && len > 0 && (size_t)len < sizeof(path) &&
            realpath(path, real) != NULL && stat(real, &st) == 0 &&
            S_ISREG(st.st_mode) && access(real, X_OK) == 0)
            return er_strdup(real);
        p = end != NULL ? end + 1 : NULL;
    }
    return NULL;
}

void er_plugin__plugins_free(struct er_plugin **plugins, size_t cnt)
{
    size_t i;

    if (plugins == NULL)
        return;
    for (i = 0; i < cnt; i++)
        plugin_free(plugins[i]);
    er_free(plugins);
}

/* Load every plugin directory under dir (sorted, so the first bad one is
 * always the same). */
int er_plugin__plugins_load(const char *dir, struct er_plugin ***out,
                            size_t *out_cnt, struct er_err *err)
{
    struct dirent **names = NULL;
    struct er_plugin **plugins = NULL;
    char path[PATH_MAX];
    char ebuf[128];
    size_t cnt = 0;
    struct stat st;
    int name_cnt;
    int rc = 0;
    int i;

    name_cnt = scandir(dir, &names, NULL, alphasort);
    if (name_cnt < 0)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "ENVRUN_PLUGINS_DIR %s: %s", dir,
                          er_strerror(errno, ebuf, sizeof(ebuf)));
    plugins = er_calloc((size_t)name_cnt + 1, sizeof(*plugins));
    if (plugins == NULL) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto out;
    }
    for (i = 0; i < name_cnt; i++) {
        const char *name = names[i]->d_name;
        int n;

        if (name[0] == '.')
            continue;
        n = snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (n < 0 || (size_t)n >= sizeof(path) || stat(path, &st) != 0 ||
            !S_ISDIR(st.st_mode))
            continue; /* one directory per plugin; a README is no plugin */
        rc = plugin_load(path, &plugins[cnt], err);
        if (rc != 0)
            goto out;
        cnt++;
    }
    rc = plugins_check_unique(plugins, cnt, err);
out:
    for (i = 0; i < name_cnt; i++)
        free(names[i]); /* from scandir */
    free(names);
    if (rc != 0) {
        er_plugin__plugins_free(plugins, cnt);
        return rc;
    }
    *out = plugins;
    *out_cnt = cnt;
    return 0;
}
