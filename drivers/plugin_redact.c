/* plugin_redact: the secret values handed to each plugin's worker (the
 * resolved secret_ref members of the configs it was sent), and the
 * scrubbing of everything that comes back out of it: error messages, log
 * notifications, stderr as a stream, and for callers any text or JSON it
 * returned. Thread-safe: the list is under plugin->mu. */
#define _GNU_SOURCE /* memmem */

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "drivers/plugin_host_int.h"

/* ================================================================
 * Secrets handed to the worker (under plugin->mu), and scrubbing what it
 * says of them
 * ================================================================ */

static void secret_entry_wipe(struct er_plugin_secret *entry)
{
    size_t i;

    for (i = 0; i < entry->form_cnt; i++)
        er_secret_fini(&entry->form[i]);
    entry->form_cnt = 0;
}

/* Wipe entry i and close the gap, keeping the order of the rest. */
static void secret_drop(struct er_plugin *plugin, size_t i)
{
    secret_entry_wipe(&plugin->secrets[i]);
    memmove(&plugin->secrets[i], &plugin->secrets[i + 1],
            (plugin->secret_cnt - i - 1) * sizeof(plugin->secrets[0]));
    plugin->secret_cnt--;
    memset(&plugin->secrets[plugin->secret_cnt], 0, sizeof(plugin->secrets[0]));
}

void er_plugin__secrets_wipe(struct er_plugin *plugin, bool is_all)
{
    size_t i = 0;

    while (i < plugin->secret_cnt) {
        if (is_all || plugin->secrets[i].is_sent)
            secret_drop(plugin, i);
        else
            i++;
    }
}

/* The calling thread's next call has just been queued for the worker (or
 * could not be): the secrets it noted for it now go when that worker
 * exits. Those still waiting for another thread's call stay: the worker
 * that exits never had them from that call. */
void er_plugin__secrets_hand_over(struct er_plugin *plugin)
{
    pthread_t self = pthread_self();
    size_t i;

    for (i = 0; i < plugin->secret_cnt; i++) {
        if (!plugin->secrets[i].is_sent &&
            pthread_equal(plugin->secrets[i].owner, self))
            plugin->secrets[i].is_sent = true;
    }
}

static bool form_is_known(const struct er_plugin_secret *entry, const char *s,
                          size_t len)
{
    size_t i;

    for (i = 0; i < entry->form_cnt; i++) {
        if (entry->form[i].len == len &&
            memcmp(entry->form[i].value, s, len) == 0)
            return true;
    }
    return false;
}

/* The letter of c's short escape inside a JSON string, or 0. */
static char short_escape(unsigned char c)
{
    switch (c) {
    case '"':
        return '"';
    case '\\':
        return '\\';
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    default:
        return 0;
    }
}

/* s inside a JSON string as JSON.stringify writes it (ECMA-262
 * QuoteJSONString): the short escapes, other bytes below 0x20 as \u00xx,
 * everything else (UTF-8 included) as is. A new string (er_free; wipe it),
 * or NULL when out of memory. */
static char *json_escaped(const char *s, size_t len, size_t *out_len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    size_t i;
    char *out;
    char *o;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (short_escape(c) != 0)
            n += 2;
        else if (c < 0x20)
            n += 6;
        else
            n++;
    }
    out = er_malloc(n + 1);
    if (out == NULL)
        return NULL;
    for (o = out, i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char letter = short_escape(c);

        if (letter != 0) {
            *o++ = '\\';
            *o++ = letter;
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 0xf];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o = '\0';
    *out_len = n;
    return out;
}

/* Add s (len bytes, copied) and its JSON-escaped form as forms of entry,
 * each unless it is too short or already there. */
static int forms_add(struct er_plugin_secret *entry, const char *s, size_t len)
{
    struct er_secret esc = { NULL, 0 };
    int rc;

    if (len >= ER_PLUGIN_SECRET_MIN_BYTES && !form_is_known(entry, s, len)) {
        ER_ASSERT(entry->form_cnt < ER_PLUGIN_SECRET_FORM_MAX);
        rc = er_secret_set(&entry->form[entry->form_cnt], s, len);
        if (rc != 0)
            return rc;
        entry->form_cnt++;
    }
    esc.value = json_escaped(s, len, &esc.len);
    if (esc.value == NULL)
        return ER_ENOMEM;
    if (esc.len >= ER_PLUGIN_SECRET_MIN_BYTES &&
        !form_is_known(entry, esc.value, esc.len)) {
        ER_ASSERT(entry->form_cnt < ER_PLUGIN_SECRET_FORM_MAX);
        entry->form[entry->form_cnt++] = esc; /* moved */
        return 0;
    }
    er_secret_fini(&esc);
    return 0;
}

static bool is_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

/* The forms of value looked for (struct er_plugin_secret): the value,
 * then trimmed, as a secret file written with a final newline is often
 * used (and echoed) without it. */
static int entry_forms(struct er_plugin_secret *entry, const char *value,
                       size_t len)
{
    size_t start = 0;
    size_t end = len;
    int rc;

    /* form[0] is the value itself, whatever its length: it identifies the
     * entry when the value is noted again. */
    rc = er_secret_set(&entry->form[0], value, len);
    if (rc != 0)
        return rc;
    entry->form_cnt = 1;
    rc = forms_add(entry, value, len);
    while (start < end && is_ascii_space(value[start]))
        start++;
    while (end > start && is_ascii_space(value[end - 1]))
        end--;
    if (rc == 0 && end - start != len)
        rc = forms_add(entry, value + start, end - start);
    return rc;
}

/* Put entry (moved out of *entry) in the list as the newest, waiting for
 * the calling thread's next call; the same value noted before is
 * replaced. When the list is full the oldest entry already sent goes
 * first, else the oldest waiting for another thread's call; never one
 * waiting for this thread's (its call would then carry a value not
 * redacted): ER_E2BIG. mu held. */
static int secret_insert(struct er_plugin *plugin,
                         struct er_plugin_secret *entry)
{
    pthread_t self = pthread_self();
    size_t i;

    for (i = 0; i < plugin->secret_cnt; i++) {
        const struct er_secret *f = &plugin->secrets[i].form[0];

        if (f->len == entry->form[0].len &&
            memcmp(f->value, entry->form[0].value, f->len) == 0) {
            secret_drop(plugin, i);
            break;
        }
    }
    if (plugin->secret_cnt == ER_PLUGIN_SECRET_MAX_CNT) {
        size_t victim = ER_PLUGIN_SECRET_MAX_CNT;

        for (i = 0; i < plugin->secret_cnt && victim == plugin->secret_cnt;
             i++) {
            if (plugin->secrets[i].is_sent)
                victim = i;
        }
        for (i = 0; i < plugin->secret_cnt && victim == plugin->secret_cnt;
             i++) {
            if (!pthread_equal(plugin->secrets[i].owner, self))
                victim = i;
        }
        if (victim == plugin->secret_cnt)
            return ER_E2BIG;
        secret_drop(plugin, victim);
    }
    plugin->secrets[plugin->secret_cnt] = *entry;
    memset(entry, 0, sizeof(*entry));
    plugin->secrets[plugin->secret_cnt].is_sent = false;
    plugin->secrets[plugin->secret_cnt].owner = self;
    plugin->secret_cnt++;
    return 0;
}

int er_plugin_note_secret(const char *provider, const char *value, size_t len)
{
    struct er_plugin_secret entry;
    struct er_plugin *plugin;
    int rc;

    ER_ASSERT(provider != NULL && (value != NULL || len == 0));
    if (len > ER_PLUGIN_SECRET_MAX_BYTES)
        return ER_E2BIG;
    /* A value of one to three bytes would match ordinary text everywhere:
     * redacting it would garble every message and, by where the marks
     * fall, show the value all the same. Such a value is no secret worth
     * the name (a reference's value is a token, a password, a key). */
    if (len < ER_PLUGIN_SECRET_MIN_BYTES)
        return 0;
    memset(&entry, 0, sizeof(entry));
    /* Copied and escaped before the lock is taken. */
    rc = entry_forms(&entry, value, len);
    if (rc != 0 || !er_plugin__host_enter())
        goto out;
    plugin = er_plugin__for(provider);
    if (plugin != NULL) {
        pthread_mutex_lock(&plugin->mu);
        rc = secret_insert(plugin, &entry);
        pthread_mutex_unlock(&plugin->mu);
    }
    er_plugin__host_leave();
out:
    secret_entry_wipe(&entry); /* what did not move into the list */
    return rc;
}

/* Set mask[i] (one byte per byte of text) for every byte of text that
 * belongs to an occurrence of a form of the plugin's secrets, overlapping
 * occurrences included, so that no part of any of them is left. mu
 * held. */
static void secrets_mark(const struct er_plugin *plugin, const char *text,
                         size_t len, uint8_t *mask)
{
    size_t i;
    size_t k;

    for (i = 0; i < plugin->secret_cnt; i++) {
        for (k = 0; k < plugin->secrets[i].form_cnt; k++) {
            const struct er_secret *f = &plugin->secrets[i].form[k];
            size_t off = 0;
            size_t done = 0; /* mask set up to here for this form */

            while (f->len > 0 && off + f->len <= len) {
                const char *p = memmem(text + off, len - off, f->value, f->len);
                size_t at;

                if (p == NULL)
                    break;
                at = (size_t)(p - text);
                off = at + 1;
                if (at < done)
                    at = done;
                memset(mask + at, 1, (size_t)(p - text) + f->len - at);
                done = (size_t)(p - text) + f->len;
            }
        }
    }
}

/* The longest tail of text (len bytes) that is a proper prefix of a form
 * of the plugin's secrets: the start of one that may go on in what the
 * worker writes next. mu held. */
static size_t secrets_open_tail(const struct er_plugin *plugin,
                                const char *text, size_t len)
{
    size_t best = 0;
    size_t i;
    size_t k;

    for (i = 0; i < plugin->secret_cnt; i++) {
        for (k = 0; k < plugin->secrets[i].form_cnt; k++) {
            const struct er_secret *f = &plugin->secrets[i].form[k];
            size_t most = f->len - 1 < len ? f->len - 1 : len;
            size_t at;

            /* Only tails longer than the best so far, from the longest;
             * each starts with the form's first byte. */
            for (at = len - most; at + best < len; at++) {
                const char *p = memchr(text + at, f->value[0], len - best - at);

                if (p == NULL)
                    break;
                at = (size_t)(p - text);
                if (memcmp(p, f->value, len - at) == 0) {
                    best = len - at;
                    break;
                }
            }
        }
    }
    return best;
}

/* Append text (len bytes) to out with every run of marked bytes as one
 * "[REDACTED]"; is_continued: a run at the start goes on from one already
 * replaced. */
static int redact_runs(const char *text, size_t len, const uint8_t *mask,
                       bool is_continued, struct er_buf *out)
{
    size_t i = 0;
    int rc = 0;

    while (i < len && rc == 0) {
        size_t j = i;

        if (mask[i] == 0) {
            while (j < len && mask[j] == 0)
                j++;
            rc = er_buf_append(out, text + i, j - i);
        } else {
            while (j < len && mask[j] != 0)
                j++;
            if (i != 0 || !is_continued)
                rc = er_buf_append(out, ER_PLUGIN_REDACTED,
                                   sizeof(ER_PLUGIN_REDACTED) - 1);
        }
        i = j;
    }
    return rc;
}

/* text with the plugin's secrets redacted, as a new string (er_free), or
 * NULL when out of memory. mu held. */
char *er_plugin__scrub_dup(const struct er_plugin *plugin, const char *text)
{
    size_t len = strlen(text);
    uint8_t *mask = NULL;
    struct er_buf out;
    char *clean = NULL;

    if (plugin->secret_cnt == 0)
        return er_strndup(text, len);
    /* Each run of four bytes or more becomes ten. */
    er_buf_init(&out, 3 * len + sizeof(ER_PLUGIN_REDACTED));
    mask = er_calloc(len + 1, 1);
    if (mask == NULL)
        goto out;
    secrets_mark(plugin, text, len, mask);
    if (redact_runs(text, len, mask, false, &out) == 0)
        clean = (char *)er_buf_take(&out, NULL);
out:
    er_free(mask);
    er_buf_fini(&out);
    return clean;
}

void er_plugin__err_init(struct er_plugin_proc *proc)
{
    /* What is held back is shorter than the longest form. */
    er_buf_init(&proc->err_pend,
                ER_PLUGIN_SECRET_FORM_MAX_BYTES + ER_PLUGIN_READ_CHUNK);
    er_buf_init(&proc->err_mask,
                ER_PLUGIN_SECRET_FORM_MAX_BYTES + ER_PLUGIN_READ_CHUNK);
    proc->is_err_redacting = false;
}

void er_plugin__err_pend_fini(struct er_plugin_proc *proc)
{
    if (proc->err_pend.data != NULL)
        memset(proc->err_pend.data, 0, proc->err_pend.len);
    er_buf_fini(&proc->err_pend);
    er_buf_fini(&proc->err_mask);
}

/* stderr is scrubbed as a stream, before it is cut into lines (a secret
 * may hold newlines) or kept for excerpts: n more bytes p join what was
 * held back, every occurrence of a form is marked, and what can no longer
 * be part of one goes to out, each marked run as one "[REDACTED]". Held
 * back: the longest tail that begins a form, and nothing once the worker
 * is gone (is_final): such a tail is then a secret cut short, and is
 * redacted too. mu held. */
int er_plugin__err_scrub(struct er_plugin *plugin, struct er_plugin_proc *proc,
                         const char *p, size_t n, bool is_final,
                         struct er_buf *out)
{
    struct er_buf *pend = &proc->err_pend;
    struct er_buf *mask = &proc->err_mask;
    size_t hold = 0;
    size_t done;
    int rc;

    rc = er_buf_append(pend, p, n);
    if (rc == 0)
        rc = er_buf_append(mask, p, n);
    if (rc != 0)
        return rc;
    memset(mask->data + mask->len - n, 0, n);
    if (plugin->secret_cnt > 0) {
        secrets_mark(plugin, (const char *)pend->data, pend->len, mask->data);
        hold = secrets_open_tail(plugin, (const char *)pend->data, pend->len);
    }
    if (is_final) {
        memset(mask->data + pend->len - hold, 1, hold);
        hold = 0;
    }
    done = pend->len - hold;
    rc = redact_runs((const char *)pend->data, done, mask->data,
                     proc->is_err_redacting, out);
    if (rc != 0)
        return rc;
    if (done > 0)
        proc->is_err_redacting = mask->data[done - 1] != 0;
    memmove(pend->data, pend->data + done, hold);
    memset(pend->data + hold, 0, pend->len - hold);
    memmove(mask->data, mask->data + done, hold);
    pend->len = hold;
    mask->len = hold;
    return 0;
}

/* ================================================================
 * For callers: what the plugin returned
 * ================================================================ */

char *er_plugin_scrub(const char *provider, const char *text)
{
    struct er_plugin *plugin;
    char *clean = NULL;

    ER_ASSERT(provider != NULL && text != NULL);
    if (!er_plugin__host_enter())
        return er_strdup(text);
    plugin = er_plugin__for(provider);
    if (plugin == NULL) {
        clean = er_strdup(text);
    } else {
        pthread_mutex_lock(&plugin->mu);
        clean = er_plugin__scrub_dup(plugin, text);
        pthread_mutex_unlock(&plugin->mu);
    }
    er_plugin__host_leave();
    return clean;
}

/* Whether len bytes at s hold a form of one of the plugin's secrets. */
static bool text_holds(const struct er_plugin *plugin, const char *s,
                       size_t len)
{
    size_t i;
    size_t k;

    for (i = 0; i < plugin->secret_cnt; i++) {
        for (k = 0; k < plugin->secrets[i].form_cnt; k++) {
            const struct er_secret *f = &plugin->secrets[i].form[k];

            if (f->len > 0 && memmem(s, len, f->value, f->len) != NULL)
                return true;
        }
    }
    return false;
}

static bool json_holds(const struct er_plugin *plugin, const json_t *v,
                       int depth)
{
    const char *key;
    json_t *member;
    size_t i;

    /* Deeper than any provider answer goes: count it as holding one. */
    if (depth > 64)
        return true;
    if (json_is_string(v))
        return text_holds(plugin, json_string_value(v), json_string_length(v));
    if (json_is_array(v)) {
        for (i = 0; i < json_array_size(v); i++) {
            if (json_holds(plugin, json_array_get(v, i), depth + 1))
                return true;
        }
        return false;
    }
    json_object_foreach((json_t *)(uintptr_t)v, key, member)
    {
        if (text_holds(plugin, key, strlen(key)) ||
            json_holds(plugin, member, depth + 1))
            return true;
    }
    return false;
}

bool er_plugin_json_holds_secret(const char *provider, const json_t *v)
{
    struct er_plugin *plugin;
    bool holds = false;

    ER_ASSERT(provider != NULL);
    if (v == NULL || !er_plugin__host_enter())
        return false;
    plugin = er_plugin__for(provider);
    if (plugin != NULL) {
        pthread_mutex_lock(&plugin->mu);
        holds = plugin->secret_cnt > 0 && json_holds(plugin, v, 0);
        pthread_mutex_unlock(&plugin->mu);
    }
    er_plugin__host_leave();
    return holds;
}
