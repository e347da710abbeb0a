/* delivery_ews — the delivery interface spoken as Exchange Web Services: builds the
 * SOAP request (ews_request), posts it (http_client), parses the answer
 * (ews_response) and classifies it (ews_errors) into a delivery_result. */
#include "delivery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ews_request.h"
#include "ews_response.h"
#include "http_client.h"
#include "log.h"

typedef struct ews_backend {
    http_client *http;
    char *url;
    char *server_version;
    bool impersonation;
} ews_backend;

typedef enum ews_call_kind { CALL_FIND, CALL_CREATE, CALL_UPDATE, CALL_REMOVE } ews_call_kind;

typedef struct ews_call {
    ews_backend *backend;
    ews_call_kind kind;
    delivery_done_fn done;
    void *userdata;
} ews_call;

void *delivery_ews_new(sd_event *event)
{
    ews_backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->http = http_client_new(event);
    if (!b->http) {
        free(b);
        return NULL;
    }
    return b;
}

static void ews_free(void *impl)
{
    ews_backend *b = impl;
    if (!b)
        return;
    http_client_free(b->http);
    free(b->url);
    free(b->server_version);
    free(b);
}

static size_t ews_in_flight(void *impl)
{
    return http_client_in_flight(((ews_backend *)impl)->http);
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
static char *read_password(const config *cfg, char *err, size_t errlen)
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
    return config_read_secret(path, err, errlen);
}

static int ews_configure(void *impl, const config *cfg, char *err, size_t errlen)
{
    ews_backend *b = impl;
    char *password = NULL;

    if (cfg->auth == CONFIG_AUTH_OAUTH2) {
        snprintf(err, errlen, "auth = oauth2 is not available yet for api = ews; "
                              "use basic, ntlm or negotiate");
        return -ENOTSUP;
    }
    if (cfg->auth == CONFIG_AUTH_BASIC || cfg->auth == CONFIG_AUTH_NTLM) {
        password = read_password(cfg, err, errlen);
        if (!password)
            return -EACCES;
    }
    http_settings settings = {
        .auth = auth_from_config(cfg->auth),
        .username = cfg->username,
        .password = password,
        .tls_verify = cfg->tls_verify,
        .ca_file = cfg->ca_file,
        .timeout_seconds = cfg->timeout_seconds,
        .max_response_bytes = EWS_RESPONSE_MAX_BYTES,
    };
    int r = http_client_configure(b->http, &settings);
    if (password) {
        explicit_bzero(password, strlen(password));
        free(password);
    }
    char *url = strdup(cfg->exchange_url ? cfg->exchange_url : "");
    char *version = strdup(cfg->server_version);
    if (r < 0 || !url || !version) {
        free(url);
        free(version);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    free(b->url);
    free(b->server_version);
    b->url = url;
    b->server_version = version;
    b->impersonation = cfg->impersonation;
    return 0;
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
        set_result(&r, DELIVERY_TRANSIENT, hr->timed_out ? "timeout" : "connection", reason);
        goto done;
    }
    snprintf(code, sizeof code, "HTTP %ld", hr->status);
    if (hr->status == 401) {
        snprintf(reason, sizeof reason, "Exchange refused the credentials (HTTP 401): check "
                                        "[exchange] username, auth and the password file");
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto done;
    }
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
    free(call);
}

static int send_call(ews_backend *b, ews_call_kind kind, const char *mailbox, char *body,
                     size_t len, delivery_done_fn done, void *userdata)
{
    char anchor[512];
    const char *headers[] = {anchor, NULL};

    if (!body)
        return -ENOMEM;
    /* A mailbox address with a line break would forge headers: refuse it. */
    if (strpbrk(mailbox, "\r\n")) {
        free(body);
        return -EINVAL;
    }
    snprintf(anchor, sizeof anchor, "X-AnchorMailbox: %s", mailbox);
    ews_call *call = calloc(1, sizeof *call);
    if (!call) {
        free(body);
        return -ENOMEM;
    }
    *call = (ews_call){.backend = b, .kind = kind, .done = done, .userdata = userdata};
    if (log_debug_enabled())
        log_debug("EWS request to %s for %s (%zu bytes)", b->url, mailbox, len);
    int r = http_client_post(b->http, b->url, "text/xml; charset=utf-8", body, len, headers,
                             on_http_done, call);
    if (r < 0)
        free(call);
    return r;
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

const delivery_ops delivery_ews_ops = {
    .find = ews_find,
    .create = ews_create,
    .update = ews_update,
    .remove = ews_remove,
    .configure = ews_configure,
    .in_flight = ews_in_flight,
    .free = ews_free,
};

