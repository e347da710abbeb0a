/* oauth2 — see oauth2.h.
 * POST token_url (application/x-www-form-urlencoded): grant_type=client_credentials,
 * client_id, client_secret, scope. The answer's access_token is kept until
 * expires_in minus a tenth of it (at most 5 minutes early). */
#include "http/oauth2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "daemon/log.h"
#include "daemon/text.h"
#include "http/http_client.h"

#define TOKEN_RESPONSE_MAX_BYTES (256u * 1024u)
#define EARLY_RENEWAL_MAX_SECONDS 300

typedef struct waiter {
    struct waiter *next;
    oauth2_token_fn fn;
    void *userdata;
} waiter;

typedef struct fetch {
    oauth2_client *client;
    uint64_t settings_generation;
} fetch;

struct oauth2_client {
    sd_event *event;
    http_client *http;
    sd_event_source *deliver;     /* hands the cached token to waiters from the loop */
    char *token_url;
    char *client_id;
    char *client_secret;
    char *scope;
    uint64_t settings_generation; /* bumped when the above change */
    char *token;
    uint64_t token_generation;
    uint64_t expires_usec;        /* CLOCK_MONOTONIC */
    fetch *fetching;              /* the token request on its way (NULL: none) */
    waiter *waiters, **waiters_tail;
};

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static uint64_t now_usec(oauth2_client *c)
{
    uint64_t now = 0;
    sd_event_now(c->event, CLOCK_MONOTONIC, &now);
    return now;
}

static void drop_token(oauth2_client *c)
{
    wipe_free(c->token);
    c->token = NULL;
}

const char *oauth2_cached_token(oauth2_client *c, uint64_t *generation)
{
    if (c->token && now_usec(c) >= c->expires_usec)
        drop_token(c);
    if (generation)
        *generation = c->token_generation;
    return c->token;
}

void oauth2_invalidate(oauth2_client *c, uint64_t generation)
{
    if (generation == 0 || generation == c->token_generation)
        drop_token(c);
}

/* Calls every waiter queued so far; waiters added by the callbacks wait for the next round. */
static void call_waiters(oauth2_client *c, const char *token, const char *error)
{
    waiter *list = c->waiters;
    c->waiters = NULL;
    c->waiters_tail = &c->waiters;
    while (list) {
        waiter *w = list;
        list = w->next;
        w->fn(token, error, w->userdata);
        free(w);
    }
}

static void start_fetch(oauth2_client *c);

static int on_deliver(sd_event_source *source, void *userdata)
{
    oauth2_client *c = userdata;
    (void)source;
    const char *token = oauth2_cached_token(c, NULL);
    if (token) {
        char *copy = strdup(token);   /* a callback may invalidate the cached one */
        if (!copy) {
            call_waiters(c, NULL, "out of memory");
            return 0;
        }
        call_waiters(c, copy, NULL);
        wipe_free(copy);
    } else if (c->waiters) {
        start_fetch(c);
    }
    return 0;
}

static char *form_value(const char *text)
{
    return curl_easy_escape(NULL, text ? text : "", 0);
}

/* The readable reason of a refused token request: error and error_description. */
static void token_error(const http_response *hr, const char *url, char *reason, size_t size)
{
    const char *code = NULL, *description = NULL;
    json_object *root = NULL, *value;
    if (hr->body_len > 0 && hr->body_len < TOKEN_RESPONSE_MAX_BYTES)
        root = json_tokener_parse(hr->body);
    if (root && json_object_is_type(root, json_type_object)) {
        if (json_object_object_get_ex(root, "error", &value) &&
            json_object_is_type(value, json_type_string))
            code = json_object_get_string(value);
        if (json_object_object_get_ex(root, "error_description", &value) &&
            json_object_is_type(value, json_type_string))
            description = json_object_get_string(value);
    }
    snprintf(reason, size, "the OAuth2 token endpoint %s answered HTTP %ld%s%s%s%.200s%s", url,
             hr->status, code ? " " : "", code ? code : "", description ? " (" : "",
             description ? description : "", description ? ")" : "");
    if (code && (strcmp(code, "invalid_client") == 0 || strcmp(code, "unauthorized_client") == 0))
        snprintf(reason + strlen(reason), size - strlen(reason),
                 ": check [oauth2] client_id and the secret in client_secret_file");
    else if (code && strcmp(code, "invalid_scope") == 0)
        snprintf(reason + strlen(reason), size - strlen(reason), ": check [oauth2] scope");
    json_object_put(root);
    text_one_line(reason, size);
}

static void on_token_answer(const http_response *hr, void *userdata)
{
    fetch *f = userdata;
    oauth2_client *c = f->client;
    char reason[768];
    json_object *root = NULL, *value;
    const char *token = NULL;
    int64_t expires_in = 3600;

    c->fetching = NULL;
    if (f->settings_generation != c->settings_generation) {
        /* Asked with settings that were replaced meanwhile: ask again. */
        free(f);
        start_fetch(c);
        return;
    }
    free(f);
    if (!hr->transfer_ok) {
        snprintf(reason, sizeof reason, "cannot reach the OAuth2 token endpoint %s: %s",
                 c->token_url, hr->error ? hr->error : "transfer failed");
        goto failed;
    }
    if (hr->status != 200) {
        token_error(hr, c->token_url, reason, sizeof reason);
        goto failed;
    }
    root = json_tokener_parse(hr->body);
    if (root && json_object_is_type(root, json_type_object) &&
        json_object_object_get_ex(root, "access_token", &value) &&
        json_object_is_type(value, json_type_string))
        token = json_object_get_string(value);
    if (root && json_object_object_get_ex(root, "expires_in", &value)) {
        /* A number, or a string holding one (both are seen in the wild). */
        int64_t n = json_object_is_type(value, json_type_string)
                        ? strtoll(json_object_get_string(value), NULL, 10)
                        : json_object_get_int64(value);
        if (n > 0)
            expires_in = n;
    }
    if (!token || !*token || strpbrk(token, "\r\n")) {
        snprintf(reason, sizeof reason, "the OAuth2 token endpoint %s answered without a "
                 "usable access_token", c->token_url);
        goto failed;
    }
    drop_token(c);
    c->token = strdup(token);
    json_object_put(root);
    root = NULL;
    if (!c->token) {
        snprintf(reason, sizeof reason, "out of memory");
        goto failed;
    }
    int64_t early = expires_in / 10;
    if (early > EARLY_RENEWAL_MAX_SECONDS)
        early = EARLY_RENEWAL_MAX_SECONDS;
    c->expires_usec = now_usec(c) + (uint64_t)(expires_in - early) * UINT64_C(1000000);
    c->token_generation++;
    log_debug("OAuth2: got an access token from %s, valid for %" PRId64 " s", c->token_url,
              expires_in);
    char *copy = strdup(c->token);
    call_waiters(c, copy, copy ? NULL : "out of memory");
    wipe_free(copy);
    return;
failed:
    json_object_put(root);
    log_warning("%s", reason);
    call_waiters(c, NULL, reason);
}

static void start_fetch(oauth2_client *c)
{
    char *id = NULL, *secret = NULL, *scope = NULL, *body = NULL;
    int n = -1;

    if (c->fetching)
        return;
    if (!c->token_url || !c->client_secret) {
        call_waiters(c, NULL, "OAuth2 is not configured: set [oauth2] token_url, client_id "
                              "and client_secret_file");
        return;
    }
    id = form_value(c->client_id);
    secret = form_value(c->client_secret);
    scope = form_value(c->scope);
    if (id && secret && scope)
        n = asprintf(&body, "grant_type=client_credentials&client_id=%s&client_secret=%s"
                            "&scope=%s", id, secret, scope);
    curl_free(id);
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        curl_free(secret);
    }
    curl_free(scope);
    fetch *f = n >= 0 ? calloc(1, sizeof *f) : NULL;
    if (!f) {
        wipe_free(n >= 0 ? body : NULL);
        call_waiters(c, NULL, "out of memory");
        return;
    }
    f->client = c;
    f->settings_generation = c->settings_generation;
    static const char *const headers[] = {"Accept: application/json", NULL};
    c->fetching = f;
    /* http_client owns body from here and frees it after the transfer. */
    int r = http_client_post(c->http, c->token_url, "application/x-www-form-urlencoded", body,
                             (size_t)n, headers, on_token_answer, f);
    if (r < 0) {
        c->fetching = NULL;
        free(f);
        call_waiters(c, NULL, "cannot start the OAuth2 token request");
    }
}

int oauth2_with_token(oauth2_client *c, oauth2_token_fn fn, void *userdata)
{
    waiter *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->fn = fn;
    w->userdata = userdata;
    *c->waiters_tail = w;
    c->waiters_tail = &w->next;
    /* From the loop in both cases: a fetch answers later anyway, and a cached token
     * goes through the deferred source, so fn never runs inside this call. */
    if (!c->fetching)
        return sd_event_source_set_enabled(c->deliver, SD_EVENT_ONESHOT) < 0 ? -EIO : 0;
    return 0;
}

oauth2_client *oauth2_client_new(sd_event *event)
{
    oauth2_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->event = sd_event_ref(event);
    c->waiters_tail = &c->waiters;
    c->http = http_client_new(event);
    if (!c->http || sd_event_add_defer(event, &c->deliver, on_deliver, c) < 0) {
        oauth2_client_free(c);
        return NULL;
    }
    sd_event_source_set_enabled(c->deliver, SD_EVENT_OFF);
    return c;
}

void oauth2_client_free(oauth2_client *c)
{
    if (!c)
        return;
    http_client_free(c->http);   /* a fetch in flight is aborted without its callback */
    free(c->fetching);
    sd_event_source_disable_unref(c->deliver);
    while (c->waiters) {
        waiter *w = c->waiters;
        c->waiters = w->next;
        free(w);
    }
    free(c->token_url);
    free(c->client_id);
    wipe_free(c->client_secret);
    free(c->scope);
    drop_token(c);
    sd_event_unref(c->event);
    free(c);
}

static bool same(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

int oauth2_configure(oauth2_client *c, const config *cfg, char *err, size_t errlen)
{
    char *url = NULL, *id = NULL, *secret = NULL, *scope = NULL;

    if (!cfg->oauth2_client_secret_file || !*cfg->oauth2_client_secret_file) {
        snprintf(err, errlen, "[oauth2] client_secret_file is not set");
        return -EINVAL;
    }
    secret = config_read_secret(cfg->oauth2_client_secret_file, err, errlen);
    if (!secret)
        return -EACCES;
    url = strdup(cfg->oauth2_token_url ? cfg->oauth2_token_url : "");
    id = strdup(cfg->oauth2_client_id ? cfg->oauth2_client_id : "");
    scope = strdup(cfg->oauth2_scope ? cfg->oauth2_scope : "");
    http_settings settings = {
        .auth = HTTP_AUTH_NONE,
        .tls_verify = cfg->tls_verify,
        .ca_file = cfg->ca_file,
        .timeout_seconds = cfg->timeout_seconds,
        .max_response_bytes = TOKEN_RESPONSE_MAX_BYTES,
    };
    if (!url || !id || !scope || http_client_configure(c->http, &settings) < 0) {
        free(url);
        free(id);
        free(scope);
        wipe_free(secret);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (!same(url, c->token_url) || !same(id, c->client_id) ||
        !same(secret, c->client_secret) || !same(scope, c->scope)) {
        c->settings_generation++;
        drop_token(c);
    }
    free(c->token_url);
    free(c->client_id);
    wipe_free(c->client_secret);
    free(c->scope);
    c->token_url = url;
    c->client_id = id;
    c->client_secret = secret;
    c->scope = scope;
    return 0;
}
