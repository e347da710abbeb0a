/* delivery_ews — the delivery interface spoken as Exchange Web Services: builds the
 * SOAP request (ews_request), posts it (http_client), parses the answer
 * (ews_response) and classifies it (ews_errors) into a delivery_result. */
#include "delivery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "ews_request.h"
#include "ews_response.h"
#include "http_client.h"
#include "log.h"
#include "oauth2.h"

typedef struct ews_backend {
    http_client *http_client_handle;
    http_client *create_client;  /* creates only: never over a reused connection */
    sd_event *event;
    oauth2_client *oauth;        /* auth = oauth2: bearer tokens (NULL otherwise) */
    bool use_oauth;
    char *url;
    char *server_version;
    bool impersonation;
    /* Kept to re-read the password after a 401 (it may have been rotated). */
    http_settings http;          /* owned username and ca_file; password NULL */
    char *password_path;         /* NULL: no password (negotiate) */
    unsigned char password_digest[SHA256_DIGEST_LENGTH];
} ews_backend;

typedef enum ews_call_kind {
    CALL_FIND, CALL_CREATE, CALL_UPDATE, CALL_REMOVE, CALL_PROBE
} ews_call_kind;

typedef struct ews_call {
    ews_backend *backend;
    ews_call_kind kind;
    delivery_done_fn done;
    void *userdata;
    /* Kept for auth = oauth2: sent again once with a fresh token after a 401. */
    char *body;
    size_t len;
    char anchor[512];
    uint64_t token_generation;
    bool token_retried;
} ews_call;

static void free_http_template(http_settings *h)
{
    free((char *)h->username);
    free((char *)h->ca_file);
    memset(h, 0, sizeof *h);
}

void *delivery_ews_new(sd_event *event)
{
    ews_backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->http_client_handle = http_client_new(event);
    b->create_client = http_client_new(event);
    if (!b->http_client_handle || !b->create_client) {
        http_client_free(b->http_client_handle);
        http_client_free(b->create_client);
        free(b);
        return NULL;
    }
    b->event = event;
    return b;
}

static void ews_free(void *impl)
{
    ews_backend *b = impl;
    if (!b)
        return;
    http_client_free(b->http_client_handle);
    http_client_free(b->create_client);
    oauth2_client_free(b->oauth);
    free_http_template(&b->http);
    free(b->password_path);
    free(b->url);
    free(b->server_version);
    free(b);
}

static size_t ews_in_flight(void *impl)
{
    ews_backend *b = impl;
    return http_client_in_flight(b->http_client_handle) + http_client_in_flight(b->create_client);
}

static http_auth auth_from_config(config_auth auth)
{
    switch (auth) {
    case CONFIG_AUTH_BASIC: return HTTP_AUTH_BASIC;
    case CONFIG_AUTH_NTLM: return HTTP_AUTH_NTLM;
    case CONFIG_AUTH_NEGOTIATE: return HTTP_AUTH_NEGOTIATE;
    case CONFIG_AUTH_OAUTH2: return HTTP_AUTH_BEARER;
    }
    return HTTP_AUTH_NONE;
}

/* The password lives in a file: password_file, else systemd's credential. */
static char *password_path_for(const config *cfg, char *err, size_t errlen)
{
    char path[4096];
    const char *dir = getenv("CREDENTIALS_DIRECTORY");

    if (cfg->password_file && *cfg->password_file)
        snprintf(path, sizeof path, "%s", cfg->password_file);
    else if (dir)
        snprintf(path, sizeof path, "%s/ews-password", dir);
    else {
        snprintf(err, errlen, "no password: set [exchange] password_file, or pass the "
                              "credential ews-password with LoadCredential=");
        return NULL;
    }
    char *copy = strdup(path);
    if (!copy)
        snprintf(err, errlen, "out of memory");
    return copy;
}

/* Reads the password at b->password_path and hands it to the HTTP client. */
static int apply_password(ews_backend *b, bool *changed, char *err, size_t errlen)
{
    char *password = NULL;
    unsigned char digest[SHA256_DIGEST_LENGTH] = {0};

    if (b->password_path) {
        password = config_read_secret(b->password_path, err, errlen);
        if (!password)
            return -EACCES;
        SHA256((const unsigned char *)password, strlen(password), digest);
    }
    if (changed)
        *changed = memcmp(digest, b->password_digest, sizeof digest) != 0;
    memcpy(b->password_digest, digest, sizeof digest);
    http_settings settings = b->http;
    settings.password = password;
    int r = http_client_configure(b->http_client_handle, &settings);
    settings.fresh_connection_per_request = true;
    if (r == 0)
        r = http_client_configure(b->create_client, &settings);
    if (password) {
        explicit_bzero(password, strlen(password));
        free(password);
    }
    if (r < 0)
        snprintf(err, errlen, "out of memory");
    return r;
}

static bool reload_password(ews_backend *b)
{
    char err[512];
    bool changed = false;
    if (apply_password(b, &changed, err, sizeof err) < 0) {
        log_error("re-reading the Exchange password failed: %s", err);
        return false;
    }
    return changed;
}

static int ews_configure(void *impl, const config *cfg, char *err, size_t errlen)
{
    ews_backend *b = impl;
    char *password_path = NULL;

    if (cfg->auth == CONFIG_AUTH_OAUTH2) {
        if (!b->oauth && !(b->oauth = oauth2_client_new(b->event))) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        int r = oauth2_configure(b->oauth, cfg, err, errlen);
        if (r < 0)
            return r;
    }
    if (cfg->auth == CONFIG_AUTH_BASIC || cfg->auth == CONFIG_AUTH_NTLM) {
        password_path = password_path_for(cfg, err, errlen);
        if (!password_path)
            return -EACCES;
    }
    http_settings fresh = {
        /* With OAuth2 the bearer token travels in our own Authorization header. */
        .auth = cfg->auth == CONFIG_AUTH_OAUTH2 ? HTTP_AUTH_NONE : auth_from_config(cfg->auth),
        .username = cfg->username ? strdup(cfg->username) : NULL,
        .tls_verify = cfg->tls_verify,
        .ca_file = cfg->ca_file ? strdup(cfg->ca_file) : NULL,
        .timeout_seconds = cfg->timeout_seconds,
        .max_response_bytes = EWS_RESPONSE_MAX_BYTES,
    };
    char *url = strdup(cfg->exchange_url ? cfg->exchange_url : "");
    char *version = strdup(cfg->server_version);
    if (!url || !version || (cfg->username && !fresh.username) ||
        (cfg->ca_file && !fresh.ca_file)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Swap in only once the password has been read: a bad reload changes nothing. */
    ews_backend trial = *b;
    trial.http = fresh;
    trial.password_path = password_path;
    if (apply_password(&trial, NULL, err, errlen) < 0) {
        /* The client may hold a half-applied configuration: restore the old one. */
        char ignored[64];
        apply_password(b, NULL, ignored, sizeof ignored);
        goto fail;
    }
    free_http_template(&b->http);
    free(b->password_path);
    free(b->url);
    free(b->server_version);
    b->http = fresh;
    b->password_path = password_path;
    memcpy(b->password_digest, trial.password_digest, sizeof b->password_digest);
    b->url = url;
    b->server_version = version;
    b->impersonation = cfg->impersonation;
    b->use_oauth = cfg->auth == CONFIG_AUTH_OAUTH2;
    return 0;
fail:
    free_http_template(&fresh);
    free(password_path);
    free(url);
    free(version);
    return -EINVAL;
}

static void set_result(delivery_result *r, delivery_outcome outcome, const char *code,
                       const char *reason)
{
    r->outcome = outcome;
    r->code = code;
    r->reason = reason;
}

static delivery_outcome outcome_for_code(ews_code code)
{
    if (code == EWS_ERROR_ITEM_NOT_FOUND)
        return DELIVERY_NOT_FOUND;
    switch (ews_code_disposition(code)) {
    case EWS_DISPOSITION_OK: return DELIVERY_OK;
    case EWS_DISPOSITION_PERMANENT: return DELIVERY_PERMANENT;
    case EWS_DISPOSITION_TRANSIENT: break;
    }
    return DELIVERY_TRANSIENT;
}

static void on_token(const char *token, const char *error, void *userdata);
static void call_free(ews_call *call);

static void on_http_done(const http_response *hr, void *userdata)
{
    ews_call *call = userdata;
    ews_backend *b = call->backend;
    delivery_result r = {.retry_after_ms = hr->retry_after_ms};
    ews_response *parsed = NULL;
    ews_item_ref *found = NULL;
    char reason[1024], code[64], parse_error[256];

    if (!hr->transfer_ok) {
        snprintf(reason, sizeof reason, "cannot reach Exchange at %s: %s", b->url, hr->error);
        set_result(&r, DELIVERY_TRANSIENT, hr->failure ? hr->failure : "connection", reason);
        goto done;
    }
    snprintf(code, sizeof code, "HTTP %ld", hr->status);
    if (hr->status == 401 && b->use_oauth) {
        if (!call->token_retried) {
            /* The token was refused (revoked, or expired early): a fresh one, once. */
            call->token_retried = true;
            oauth2_invalidate(b->oauth, call->token_generation);
            if (oauth2_with_token(b->oauth, on_token, call) == 0)
                return;
        }
        snprintf(reason, sizeof reason, "Exchange refused the OAuth2 token (HTTP 401) twice: "
                 "check the app registration's EWS permission (full_access_as_app) and "
                 "[oauth2] scope");
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto done;
    }
    if (hr->status == 401) {
        /* The password may have been changed in its file since: read it again and
         * retry. Refused again with the same password: retrying cannot help. */
        bool changed = reload_password(b);
        snprintf(reason, sizeof reason, "Exchange refused the credentials (HTTP 401)%s: check "
                 "[exchange] username, auth and the password file",
                 changed ? "; the password file changed, retrying with it" : "");
        set_result(&r, changed ? DELIVERY_TRANSIENT : DELIVERY_PERMANENT, code, reason);
        goto done;
    }
    if (hr->status == 429 || hr->status == 503)
        r.throttle = DELIVERY_THROTTLE_SERVER;
    if (hr->status != 200 && hr->status != 500) {
        snprintf(reason, sizeof reason, "Exchange answered HTTP %ld", hr->status);
        set_result(&r, hr->status == 403 ? DELIVERY_PERMANENT : DELIVERY_TRANSIENT, code, reason);
        goto done;
    }
    if (ews_response_parse(hr->body, hr->body_len, &parsed, parse_error, sizeof parse_error) < 0) {
        snprintf(reason, sizeof reason, "Exchange sent an unusable answer (HTTP %ld): %s",
                 hr->status, parse_error);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto done;
    }
    if (parsed->fault_code) {
        snprintf(code, sizeof code, "%s", parsed->fault_code);
        snprintf(reason, sizeof reason, "Exchange fault %s: %s", parsed->fault_code,
                 parsed->fault_string ? parsed->fault_string : "(no text)");
        set_result(&r, outcome_for_code(parsed->fault_ews_code), code, reason);
        if (r.outcome == DELIVERY_OK)
            r.outcome = DELIVERY_TRANSIENT;   /* a fault is never a success */
        if (parsed->fault_back_off_ms > r.retry_after_ms)
            r.retry_after_ms = parsed->fault_back_off_ms;
        if (parsed->fault_ews_code == EWS_ERROR_SERVER_BUSY)
            r.throttle = DELIVERY_THROTTLE_MAILBOX;
        goto done;
    }
    if (parsed->n_messages == 0) {
        snprintf(reason, sizeof reason, "Exchange answered without a response message "
                                        "(HTTP %ld)", hr->status);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto done;
    }
    const ews_response_message *m = &parsed->messages[0];
    snprintf(code, sizeof code, "%s", m->response_code);
    if (m->response_class == EWS_CLASS_ERROR) {
        snprintf(reason, sizeof reason, "Exchange answered %s: %s", m->response_code,
                 m->message_text ? m->message_text : "(no text)");
        set_result(&r, outcome_for_code(m->code), code, reason);
        if (r.outcome == DELIVERY_OK)
            r.outcome = DELIVERY_TRANSIENT;
        if (m->back_off_ms > r.retry_after_ms)
            r.retry_after_ms = m->back_off_ms;
        if (m->code == EWS_ERROR_SERVER_BUSY)
            r.throttle = DELIVERY_THROTTLE_MAILBOX;
        goto done;
    }
    set_result(&r, DELIVERY_OK, code, "ok");
    if (call->kind == CALL_FIND && m->n_items > 0) {
        found = calloc(m->n_items, sizeof *found);
        if (!found) {
            set_result(&r, DELIVERY_TRANSIENT, "ENOMEM", "out of memory");
            goto done;
        }
        for (size_t i = 0; i < m->n_items; i++) {
            found[i].item_id = m->items[i].item_id;
            found[i].change_key = m->items[i].change_key;
        }
        r.found = found;
        r.n_found = m->n_items;
    } else if (m->n_items > 0) {
        r.item.item_id = m->items[0].item_id;
        r.item.change_key = m->items[0].change_key;
    } else if (call->kind == CALL_CREATE) {
        set_result(&r, DELIVERY_TRANSIENT, code, "Exchange reported success but returned no item id");
    }
done:
    call->done(&r, call->userdata);
    free(found);
    ews_response_free(parsed);
    call_free(call);
}

static void call_free(ews_call *call)
{
    free(call->body);
    free(call);
}

static void finish_call(ews_call *call, const delivery_result *r)
{
    call->done(r, call->userdata);
    call_free(call);
}

/* Posts the call's body; with a bearer token when auth = oauth2. */
static void post_call(ews_call *call, const char *token)
{
    ews_backend *b = call->backend;
    char authorization[8192];
    const char *headers[] = {call->anchor, NULL, NULL};
    char *body = malloc(call->len + 1);

    if (token) {
        snprintf(authorization, sizeof authorization, "Authorization: Bearer %s", token);
        headers[1] = authorization;
    }
    if (body)
        memcpy(body, call->body, call->len + 1);
    http_client *client = call->kind == CALL_CREATE ? b->create_client : b->http_client_handle;
    int r = body ? http_client_post(client, b->url, "text/xml; charset=utf-8", body, call->len,
                                    headers, on_http_done, call)
                 : -ENOMEM;
    explicit_bzero(authorization, sizeof authorization);
    if (r < 0) {
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "request", .reason = "cannot start the request"};
        finish_call(call, &failed);
    }
}

static void on_token(const char *token, const char *error, void *userdata)
{
    ews_call *call = userdata;
    char reason[512];

    if (!token) {
        snprintf(reason, sizeof reason, "no OAuth2 token: %s", error ? error : "unknown error");
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "oauth2", .reason = reason};
        finish_call(call, &failed);
        return;
    }
    oauth2_cached_token(call->backend->oauth, &call->token_generation);
    post_call(call, token);
}

static int send_call(ews_backend *b, ews_call_kind kind, const char *mailbox, char *body,
                     size_t len, delivery_done_fn done, void *userdata)
{
    if (!body)
        return -ENOMEM;
    /* A mailbox address with a line break would forge headers: refuse it. */
    if (strpbrk(mailbox, "\r\n")) {
        free(body);
        return -EINVAL;
    }
    ews_call *call = calloc(1, sizeof *call);
    if (!call) {
        free(body);
        return -ENOMEM;
    }
    *call = (ews_call){.backend = b, .kind = kind, .done = done, .userdata = userdata,
                       .body = body, .len = len};
    snprintf(call->anchor, sizeof call->anchor, "X-AnchorMailbox: %s", mailbox);
    if (log_debug_enabled())
        log_debug("EWS request to %s for %s (%zu bytes)", b->url, mailbox, len);
    if (b->use_oauth) {
        int r = oauth2_with_token(b->oauth, on_token, call);
        if (r < 0) {
            call->body = NULL;   /* the caller keeps nothing: body freed below */
            free(body);
            free(call);
        }
        return r;
    }
    post_call(call, NULL);
    return 0;
}

static ews_request_options options_for(const ews_backend *b, const char *mailbox)
{
    return (ews_request_options){.server_version = b->server_version,
                                 .mailbox = mailbox,
                                 .impersonation = b->impersonation};
}

static int ews_find(void *impl, const char *mailbox, ews_item_kind kind, int64_t log_id,
                    delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_find_item(&opt, kind, log_id, &len);
    return send_call(b, CALL_FIND, mailbox, body, len, done, userdata);
}

static int ews_create(void *impl, const char *mailbox, const ews_item *item,
                      delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_create_items(&opt, item, 1, &len);
    return send_call(b, CALL_CREATE, mailbox, body, len, done, userdata);
}

static int ews_update(void *impl, const char *mailbox, const ews_item_ref *ref,
                      const ews_item *item, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_update_item(&opt, ref, item, &len);
    return send_call(b, CALL_UPDATE, mailbox, body, len, done, userdata);
}

static int ews_remove(void *impl, const char *mailbox, ews_item_kind kind,
                      const ews_item_ref *ref, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_delete_item(&opt, kind, ref, &len);
    return send_call(b, CALL_REMOVE, mailbox, body, len, done, userdata);
}

/* GetFolder of the calendar: proves URL, TLS, credentials and mailbox access. An
 * empty mailbox means the service account's own (delegate addressing of itself). */
static int ews_probe(void *impl, const char *mailbox, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_get_folder(&opt, &len);
    return send_call(b, CALL_PROBE, mailbox, body, len, done, userdata);
}

const delivery_ops delivery_ews_ops = {
    .probe = ews_probe,
    .find = ews_find,
    .create = ews_create,
    .update = ews_update,
    .remove = ews_remove,
    .configure = ews_configure,
    .in_flight = ews_in_flight,
    .free = ews_free,
};

