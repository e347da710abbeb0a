/* delivery_ews — the delivery interface spoken as Exchange Web Services: builds the
 * SOAP request (ews_request), posts it (http_client), parses the answer
 * (ews_response) and classifies it (ews_errors) into a delivery_result. */
#include "ews/delivery_ews.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/text.h"
#include "ews/ews_backend.h"
#include "ews/ews_stream.h"
#include "ews/ews_sync.h"

static void ews_free(void *impl);

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
    b->max_in_flight = 8;
    b->batch_size = 1;
    b->flush = loop_timer_new(event, ews_queue_on_flush, b);
    if (!b->flush) {
        ews_free(b);
        return NULL;
    }
    return b;
}

static void ews_free(void *impl)
{
    ews_backend *b = impl;
    if (!b)
        return;
    ews_stream_free(b);   /* before the HTTP client its streams run on */
    while (b->waiting_head) {
        ews_call *next = b->waiting_head->next;
        ews_call_free(b->waiting_head);
        b->waiting_head = next;
    }
    loop_timer_free(b->flush);
    /* Requests still on their way (a mailbox read at exit: the daemon does not wait
     * for those) are aborted without their callbacks; then their posts are freed. */
    http_client_free(b->http_client_handle);
    http_client_free(b->create_client);
    oauth2_client_free(b->oauth);
    while (b->on_their_way)
        ews_post_free(b->on_their_way);
    free_http_template(&b->http);
    free(b->password_path);
    free(b->url);
    free(b->server_version);
    free(b);
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

bool ews_backend_reload_password(ews_backend *b)
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
        /* password_file, else systemd's credential (config_password_path knows). */
        password_path = config_password_path(cfg, err, errlen);
        if (!password_path)
            return -EACCES;
    }
    http_settings fresh = {
        /* With OAuth2 the bearer token travels in our own Authorization header. */
        .auth = cfg->auth == CONFIG_AUTH_OAUTH2 ? HTTP_AUTH_NONE : auth_from_config(cfg->auth),
        .username = text_dup(cfg->username),
        .tls_verify = cfg->tls_verify,
        .ca_file = text_dup(cfg->ca_file),
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
    b->max_in_flight = (size_t)cfg->concurrency;
    b->batch_size = (size_t)cfg->batch_size;
    ews_queue_dispatch(b);   /* a larger concurrency may let waiting requests go now */
    return 0;
fail:
    free_http_template(&fresh);
    free(password_path);
    free(url);
    free(version);
    return -EINVAL;
}

ews_request_options ews_backend_options(const ews_backend *b, const char *mailbox)
{
    return (ews_request_options){.server_version = b->server_version,
                                 .mailbox = mailbox,
                                 .impersonation = b->impersonation};
}

static int ews_find(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                    delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = ews_backend_options(b, mailbox);
    size_t len = 0;
    char *body = ews_request_find_item(&opt, kind, log_id, &len);
    return ews_queue_call(b, CALL_FIND, mailbox, body, len, NULL, done, userdata);
}

static int ews_create(void *impl, const char *mailbox, const outlook_item *item,
                      delivery_done_fn done, void *userdata)
{
    return ews_queue_call(impl, CALL_CREATE, mailbox, NULL, 0, item, done, userdata);
}

static int ews_update(void *impl, const char *mailbox, const outlook_item_ref *ref,
                      const outlook_item *item, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = ews_backend_options(b, mailbox);
    size_t len = 0;
    char *body = ews_request_update_item(&opt, ref, item, &len);
    return ews_queue_call(b, CALL_UPDATE, mailbox, body, len, NULL, done, userdata);
}

static int ews_remove(void *impl, const char *mailbox, outlook_item_kind kind,
                      const outlook_item_ref *ref, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = ews_backend_options(b, mailbox);
    size_t len = 0;
    char *body = ews_request_delete_item(&opt, kind, ref, &len);
    return ews_queue_call(b, CALL_REMOVE, mailbox, body, len, NULL, done, userdata);
}

/* GetFolder of the calendar: proves URL, TLS, credentials and mailbox access. An
 * empty mailbox means the service account's own (delegate addressing of itself). */
static int ews_probe(void *impl, const char *mailbox, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = ews_backend_options(b, mailbox);
    size_t len = 0;
    char *body = ews_request_get_folder(&opt, &len);
    return ews_queue_call(b, CALL_PROBE, mailbox, body, len, NULL, done, userdata);
}

/* ---- sync (Outlook → CRM) ------------------------------------------------------ */

/* One page of changes of the folder of kind since position: SyncFolderItems, sent on
 * the queue like every request (auth, timeouts, concurrency, stop), never batched. */
static int ews_sync(void *impl, const char *mailbox, outlook_item_kind kind,
                    const char *position, delivery_sync_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    /* Positions are stored only from answers that pass the same check. */
    if ((kind != OUTLOOK_APPOINTMENT && kind != OUTLOOK_TASK) ||
        (position && !ews_sync_state_ok(position)))
        return -EINVAL;
    ews_request_options opt = ews_backend_options(b, mailbox);
    size_t len = 0;
    char *body = ews_sync_request(&opt, kind, position, &len);
    return ews_queue_sync(b, mailbox, kind, body, len, done, userdata);
}

/* The call's done (through ews_post_finish, or not_sent when stopping): the page read
 * by ews_sync_on_answer when there is one, else the result alone. The page lives
 * until sync_done returns. */
void ews_sync_call_done(const delivery_result *result, void *userdata)
{
    ews_call *call = userdata;
    struct ews_sync_page *page = call->sync_page;
    delivery_sync_result sync = page ? page->result : (delivery_sync_result){0};

    sync.result = *result;
    sync.whole_folder = true;   /* SyncFolderItems lists the whole folder */
    call->sync_done(&sync, call->sync_userdata);
    call->sync_page = NULL;
    ews_sync_page_free(page);
}

void ews_sync_on_answer(const http_response *hr, void *userdata)
{
    ews_post *post = userdata;
    ews_call *call = post->calls[0];
    char reason[512], code[32], parse_error[256];

    /* Exchange answers SOAP with 200, and errors and faults with 500; anything else
     * (and the 401 retries) is what every post's answer handler knows. */
    if (!hr->transfer_ok || (hr->status != 200 && hr->status != 500)) {
        ews_post_on_answer(hr, post);
        return;
    }
    if (ews_sync_parse(hr->body, hr->body_len, call->sync_kind, &call->sync_page, parse_error,
                       sizeof parse_error) < 0) {
        snprintf(code, sizeof code, "HTTP %ld", hr->status);
        snprintf(reason, sizeof reason, "Exchange sent an unusable SyncFolderItems answer "
                 "(HTTP %ld): %s", hr->status, parse_error);
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .code = code, .reason = reason,
                                  .retry_after_ms = hr->retry_after_ms};
        ews_post_finish(post, &failed, NULL);
        return;
    }
    delivery_result common = call->sync_page->result.result;
    if (hr->retry_after_ms > common.retry_after_ms)
        common.retry_after_ms = hr->retry_after_ms;
    log_debug("EWS sync of %s (%s): %s, %zu change%s%s", call->mailbox,
              outlook_item_kind_name(call->sync_kind), common.code,
              call->sync_page->result.n_changes,
              call->sync_page->result.n_changes == 1 ? "" : "s",
              call->sync_page->result.more ? ", more to come" : "");
    ews_post_finish(post, &common, NULL);
}

static void ews_stop(void *impl)
{
    ews_backend *b = impl;
    b->stopped = true;
    ews_stream_stop(b);
    ews_queue_dispatch(b);
}

const delivery_ops delivery_ews_ops = {
    .stop = ews_stop,
    .probe = ews_probe,
    .find = ews_find,
    .create = ews_create,
    .update = ews_update,
    .remove = ews_remove,
    .sync = ews_sync,
    .watch = ews_stream_watch,
    .configure = ews_configure,
    .free = ews_free,
};


