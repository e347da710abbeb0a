/* delivery_ews — the delivery interface spoken as Exchange Web Services: builds the
 * SOAP request (ews_request), posts it (http_client), parses the answer
 * (ews_response) and classifies it (ews_errors) into a delivery_result. */
#include "ews/delivery_ews.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/sha.h>

#include "daemon/log.h"
#include "ews/ews_request.h"
#include "ews/ews_response.h"
#include "http/http_client.h"
#include "http/loop_timer.h"
#include "http/oauth2.h"

struct ews_backend;

typedef enum ews_call_kind {
    CALL_FIND, CALL_CREATE, CALL_UPDATE, CALL_REMOVE, CALL_PROBE
} ews_call_kind;

/* One operation the worker asked for. Creates wait in the queue as items, so that
 * those for the same mailbox and kind can share one CreateItem request. */
typedef struct ews_call {
    ews_call_kind kind;
    delivery_done_fn done;
    void *userdata;
    char *mailbox;
    const outlook_item *item;        /* create: owned by the caller until done */
    char *body;                  /* other kinds: the request, built when asked */
    size_t len;
    struct ews_call *next;       /* in the waiting queue */
} ews_call;

/* One HTTP request: one call, or a batch of creates. */
typedef struct ews_post {
    struct ews_backend *backend;
    ews_call **calls;
    size_t n_calls;
    bool is_create;
    char *body;                  /* kept for auth = oauth2: re-sent once after a 401 */
    size_t len;
    char anchor[512];
    uint64_t token_generation;
    bool token_retried;
} ews_post;

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
    /* Requests wait here until one of max_in_flight slots is free. */
    ews_call *waiting_head, *waiting_tail;
    size_t in_flight;
    size_t max_in_flight;        /* [delivery] concurrency */
    size_t batch_size;           /* [delivery] batch_size: items per CreateItem */
    loop_timer *flush;           /* sends what a loop turn queued, batched */
    uint64_t flush_due_usec;     /* CLOCK_MONOTONIC when the flush fires; 0 = not armed */
    bool stopped;                /* nothing more goes on the wire */
} ews_backend;


static void dispatch(struct ews_backend *b);
static void ews_free(void *impl);
static void on_flush(void *userdata);
static void call_free(ews_call *call);

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
    b->flush = loop_timer_new(event, on_flush, b);
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
    /* In-flight posts are dropped with their HTTP client; waiting calls here. */
    while (b->waiting_head) {
        ews_call *next = b->waiting_head->next;
        call_free(b->waiting_head);
        b->waiting_head = next;
    }
    loop_timer_free(b->flush);
    http_client_free(b->http_client_handle);
    http_client_free(b->create_client);
    oauth2_client_free(b->oauth);
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
    b->max_in_flight = (size_t)cfg->concurrency;
    b->batch_size = (size_t)cfg->batch_size;
    dispatch(b);   /* a larger concurrency may let waiting requests go now */
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

static void call_free(ews_call *call)
{
    free(call->mailbox);
    free(call->body);
    free(call);
}

static void post_free(ews_post *post)
{
    for (size_t i = 0; i < post->n_calls; i++)
        call_free(post->calls[i]);
    free(post->calls);
    free(post->body);
    free(post);
}

/* What one response message says about the call it answers. */
static void classify_message(const ews_response_message *m, ews_call_kind kind,
                             delivery_result *r, char *reason, size_t reason_size, char *code,
                             size_t code_size, outlook_item_ref **found)
{
    snprintf(code, code_size, "%s", m->response_code);
    if (m->response_class == EWS_CLASS_ERROR) {
        snprintf(reason, reason_size, "Exchange answered %s: %s", m->response_code,
                 m->message_text ? m->message_text : "(no text)");
        set_result(r, outcome_for_code(m->code), code, reason);
        if (r->outcome == DELIVERY_OK)
            r->outcome = DELIVERY_TRANSIENT;
        if (m->back_off_ms > r->retry_after_ms)
            r->retry_after_ms = m->back_off_ms;
        if (m->code == EWS_ERROR_SERVER_BUSY)
            r->throttle = DELIVERY_THROTTLE_MAILBOX;
        return;
    }
    set_result(r, DELIVERY_OK, code, "ok");
    if (kind == CALL_FIND && m->n_items > 0) {
        *found = calloc(m->n_items, sizeof **found);
        if (!*found) {
            set_result(r, DELIVERY_TRANSIENT, "ENOMEM", "out of memory");
            return;
        }
        for (size_t i = 0; i < m->n_items; i++) {
            (*found)[i].item_id = m->items[i].item_id;
            (*found)[i].change_key = m->items[i].change_key;
        }
        r->found = *found;
        r->n_found = m->n_items;
    } else if (m->n_items > 0) {
        r->item.item_id = m->items[0].item_id;
        r->item.change_key = m->items[0].change_key;
    } else if (kind == CALL_CREATE) {
        set_result(r, DELIVERY_TRANSIENT, code,
                   "Exchange reported success but returned no item id");
    }
}

static void dispatch(ews_backend *b);
static void on_token(const char *token, const char *error, void *userdata);

/* Tells every call of the post its outcome, frees the post, lets the next one go. */
static void finish_post(ews_post *post, const delivery_result *common,
                        const ews_response *parsed)
{
    ews_backend *b = post->backend;

    b->in_flight--;
    for (size_t i = 0; i < post->n_calls; i++) {
        ews_call *call = post->calls[i];
        delivery_result r = common ? *common : (delivery_result){.retry_after_ms = -1};
        outlook_item_ref *found = NULL;
        char reason[1024], code[64];
        if (!common) {
            /* Response messages come in the order of the items sent. */
            if (i < parsed->n_messages) {
                classify_message(&parsed->messages[i], call->kind, &r, reason, sizeof reason,
                                 code, sizeof code, &found);
            } else {
                set_result(&r, DELIVERY_TRANSIENT, "NoResponseMessage",
                           "Exchange sent fewer response messages than items");
            }
        }
        call->done(&r, call->userdata);
        free(found);
    }
    post_free(post);
    dispatch(b);
}

static void on_http_done(const http_response *hr, void *userdata)
{
    ews_post *post = userdata;
    ews_backend *b = post->backend;
    delivery_result r = {.retry_after_ms = hr->retry_after_ms};
    ews_response *parsed = NULL;
    char reason[1024], code[64], parse_error[256];

    if (!hr->transfer_ok) {
        if (hr->too_large)
            snprintf(reason, sizeof reason, "Exchange's answer from %s was larger than %u "
                     "bytes and was dropped", b->url, EWS_RESPONSE_MAX_BYTES);
        else
            snprintf(reason, sizeof reason, "cannot reach Exchange at %s: %s", b->url,
                     hr->error);
        set_result(&r, DELIVERY_TRANSIENT, hr->failure ? hr->failure : "connection", reason);
        r.outcome_unknown = delivery_outcome_unknown(false, hr->failure, 0);
        goto common;
    }
    snprintf(code, sizeof code, "HTTP %ld", hr->status);
    r.outcome_unknown = delivery_outcome_unknown(true, NULL, hr->status);
    if (hr->status == 401 && b->use_oauth) {
        if (!post->token_retried) {
            /* The token was refused (revoked, or expired early): a fresh one, once. */
            post->token_retried = true;
            oauth2_invalidate(b->oauth, post->token_generation);
            if (oauth2_with_token(b->oauth, on_token, post) == 0)
                return;
        }
        snprintf(reason, sizeof reason, "Exchange refused the OAuth2 token (HTTP 401) twice: "
                 "check the app registration's EWS permission (full_access_as_app) and "
                 "[oauth2] scope");
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.auth_failed = true;
        goto common;
    }
    if (hr->status == 401) {
        /* The password may have been changed in its file since: read it again and
         * retry. Refused again with the same password: retrying cannot help. */
        bool changed = reload_password(b);
        snprintf(reason, sizeof reason, "Exchange refused the credentials (HTTP 401)%s: check "
                 "[exchange] username, auth and the password file",
                 changed ? "; the password file changed, retrying with it" : "");
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.auth_failed = true;   /* a KDC hiccup or a lock-out ends by itself: retry */
        goto common;
    }
    if (hr->status == 429 || hr->status == 503)
        r.throttle = DELIVERY_THROTTLE_SERVER;
    if (hr->status != 200 && hr->status != 500) {
        if (hr->status == 403) {
            snprintf(reason, sizeof reason, "Exchange refused the service account (HTTP 403): "
                     "check that [exchange] username may use EWS");
            r.auth_failed = true;
        } else {
            snprintf(reason, sizeof reason, "Exchange answered HTTP %ld", hr->status);
        }
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto common;
    }
    if (ews_response_parse(hr->body, hr->body_len, &parsed, parse_error, sizeof parse_error) < 0) {
        snprintf(reason, sizeof reason, "Exchange sent an unusable answer (HTTP %ld): %s",
                 hr->status, parse_error);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.outcome_unknown = hr->status == 200;   /* it may have done what we asked */
        goto common;
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
        goto common;
    }
    if (parsed->n_messages == 0) {
        snprintf(reason, sizeof reason, "Exchange answered without a response message "
                                        "(HTTP %ld)", hr->status);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto common;
    }
    /* Each item its own verdict: one bad item does not fail its batch-mates. */
    finish_post(post, NULL, parsed);
    ews_response_free(parsed);
    return;
common:
    finish_post(post, &r, NULL);
    ews_response_free(parsed);
}

/* Posts the request; with a bearer token when auth = oauth2. */
static void send_post(ews_post *post, const char *token)
{
    ews_backend *b = post->backend;
    char authorization[8192];
    const char *headers[] = {post->anchor, NULL, NULL};
    char *body = malloc(post->len + 1);

    if (token) {
        snprintf(authorization, sizeof authorization, "Authorization: Bearer %s", token);
        headers[1] = authorization;
    }
    if (body)
        memcpy(body, post->body, post->len + 1);
    http_client *client = post->is_create ? b->create_client : b->http_client_handle;
    int r = body ? http_client_post(client, b->url, "text/xml; charset=utf-8", body, post->len,
                                    headers, on_http_done, post)
                 : -ENOMEM;
    if (token)
        explicit_bzero(authorization, sizeof authorization);
    if (r < 0) {
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "request", .reason = "cannot start the request"};
        finish_post(post, &failed, NULL);
    }
}

static const delivery_result not_sent_result = {
    .outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1, .code = "stopping",
    .reason = "followupd is stopping; not sent", .not_sent = true};

static void on_token(const char *token, const char *error, void *userdata)
{
    ews_post *post = userdata;
    char reason[512];

    if (!token) {
        snprintf(reason, sizeof reason, "no OAuth2 token: %s", error ? error : "unknown error");
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "oauth2", .reason = reason};
        finish_post(post, &failed, NULL);
        return;
    }
    if (post->backend->stopped) {
        finish_post(post, &not_sent_result, NULL);
        return;
    }
    oauth2_cached_token(post->backend->oauth, &post->token_generation);
    send_post(post, token);
}

static ews_request_options options_for(const ews_backend *b, const char *mailbox);

/* Takes the head of the queue and, for a create, every waiting create for the same
 * mailbox and kind (up to batch_size) into one post. */
static ews_post *next_post(ews_backend *b)
{
    ews_call *head = b->waiting_head;
    ews_post *post = calloc(1, sizeof *post);
    size_t cap = head->kind == CALL_CREATE && b->batch_size > 0 ? b->batch_size : 1;

    if (!post || !(post->calls = calloc(cap, sizeof *post->calls))) {
        free(post);
        return NULL;
    }
    post->backend = b;
    post->is_create = head->kind == CALL_CREATE;
    for (ews_call **link = &b->waiting_head; *link && post->n_calls < cap;) {
        ews_call *call = *link;
        bool joins = call == head ||
                     (post->is_create && call->kind == CALL_CREATE &&
                      call->item->kind == head->item->kind &&
                      strcasecmp(call->mailbox, head->mailbox) == 0);
        if (!joins) {
            link = &call->next;
            continue;
        }
        *link = call->next;
        if (b->waiting_tail == call)
            b->waiting_tail = NULL;
        call->next = NULL;
        post->calls[post->n_calls++] = call;
    }
    if (!b->waiting_tail)   /* recompute the tail after unlinking from the middle */
        for (ews_call *c = b->waiting_head; c; c = c->next)
            b->waiting_tail = c;
    snprintf(post->anchor, sizeof post->anchor, "X-AnchorMailbox: %s", head->mailbox);
    return post;
}

static bool build_post_body(ews_backend *b, ews_post *post)
{
    if (!post->is_create) {
        post->body = post->calls[0]->body;
        post->len = post->calls[0]->len;
        post->calls[0]->body = NULL;
        return post->body != NULL;
    }
    outlook_item *items = calloc(post->n_calls, sizeof *items);
    if (!items)
        return false;
    for (size_t i = 0; i < post->n_calls; i++)
        items[i] = *post->calls[i]->item;
    ews_request_options opt = options_for(b, post->calls[0]->mailbox);
    post->body = ews_request_create_items(&opt, items, post->n_calls, &post->len);
    free(items);
    return post->body != NULL;
}

/* Sends waiting requests while fewer than max_in_flight are on their way. */
static void dispatch(ews_backend *b)
{
    while (b->stopped && b->waiting_head) {
        ews_call *call = b->waiting_head;
        b->waiting_head = call->next;
        if (!b->waiting_head)
            b->waiting_tail = NULL;
        call->done(&not_sent_result, call->userdata);
        call_free(call);
    }
    while (b->waiting_head && b->in_flight < b->max_in_flight) {
        ews_post *post = next_post(b);
        if (!post)
            return;   /* out of memory: the flush timer or the next answer tries again */
        b->in_flight++;
        if (!build_post_body(b, post)) {
            delivery_result failed = {.outcome = DELIVERY_PERMANENT, .retry_after_ms = -1,
                                      .code = "request",
                                      .reason = "the request could not be built (an item "
                                                "field is not valid XML or out of range)"};
            finish_post(post, &failed, NULL);
            continue;
        }
        if (log_debug_enabled())
            log_debug("EWS request to %s (%s, %zu item%s, %zu bytes)", b->url,
                      post->anchor + strlen("X-AnchorMailbox: "), post->n_calls,
                      post->n_calls == 1 ? "" : "s", post->len);
        if (b->use_oauth) {
            if (oauth2_with_token(b->oauth, on_token, post) < 0) {
                delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                          .code = "oauth2", .reason = "cannot ask for a token"};
                finish_post(post, &failed, NULL);
            }
            continue;
        }
        send_post(post, NULL);
    }
}

/* Creates wait this long for batch-mates (cf. Nagle): saves requests under load,
 * costs a new follow-up 2 ms. */
#define CREATE_COALESCE_USEC 2000

static uint64_t monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Arms the flush to fire within delay, never later than it is already due. */
static int schedule_flush(ews_backend *b, uint64_t delay_usec)
{
    uint64_t due = monotonic_usec() + delay_usec;
    if (b->flush_due_usec != 0 && b->flush_due_usec <= due)
        return 0;
    b->flush_due_usec = due;
    return loop_timer_arm(b->flush, delay_usec);
}

static void on_flush(void *userdata)
{
    ews_backend *b = userdata;
    b->flush_due_usec = 0;
    dispatch(b);
}

/* Queues a call. It leaves on a later loop turn, so that creates queued in this one
 * for the same mailbox travel together. */
static int queue_call(ews_backend *b, ews_call_kind kind, const char *mailbox, char *body,
                      size_t len, const outlook_item *item, delivery_done_fn done, void *userdata)
{
    if (kind != CALL_CREATE && !body)
        return -ENOMEM;
    /* A mailbox address with a line break would forge headers: refuse it. */
    if (strpbrk(mailbox, "\r\n")) {
        free(body);
        return -EINVAL;
    }
    ews_call *call = calloc(1, sizeof *call);
    if (!call || !(call->mailbox = strdup(mailbox))) {
        free(call);
        free(body);
        return -ENOMEM;
    }
    call->kind = kind;
    call->done = done;
    call->userdata = userdata;
    call->body = body;
    call->len = len;
    call->item = item;
    if (b->waiting_tail)
        b->waiting_tail->next = call;
    else
        b->waiting_head = call;
    b->waiting_tail = call;
    return schedule_flush(b, kind == CALL_CREATE && b->batch_size > 1 ? CREATE_COALESCE_USEC : 0);
}

static ews_request_options options_for(const ews_backend *b, const char *mailbox)
{
    return (ews_request_options){.server_version = b->server_version,
                                 .mailbox = mailbox,
                                 .impersonation = b->impersonation};
}

static int ews_find(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                    delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_find_item(&opt, kind, log_id, &len);
    return queue_call(b, CALL_FIND, mailbox, body, len, NULL, done, userdata);
}

static int ews_create(void *impl, const char *mailbox, const outlook_item *item,
                      delivery_done_fn done, void *userdata)
{
    return queue_call(impl, CALL_CREATE, mailbox, NULL, 0, item, done, userdata);
}

static int ews_update(void *impl, const char *mailbox, const outlook_item_ref *ref,
                      const outlook_item *item, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_update_item(&opt, ref, item, &len);
    return queue_call(b, CALL_UPDATE, mailbox, body, len, NULL, done, userdata);
}

static int ews_remove(void *impl, const char *mailbox, outlook_item_kind kind,
                      const outlook_item_ref *ref, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_delete_item(&opt, kind, ref, &len);
    return queue_call(b, CALL_REMOVE, mailbox, body, len, NULL, done, userdata);
}

/* GetFolder of the calendar: proves URL, TLS, credentials and mailbox access. An
 * empty mailbox means the service account's own (delegate addressing of itself). */
static int ews_probe(void *impl, const char *mailbox, delivery_done_fn done, void *userdata)
{
    ews_backend *b = impl;
    ews_request_options opt = options_for(b, mailbox);
    size_t len = 0;
    char *body = ews_request_get_folder(&opt, &len);
    return queue_call(b, CALL_PROBE, mailbox, body, len, NULL, done, userdata);
}

static void ews_stop(void *impl)
{
    ews_backend *b = impl;
    b->stopped = true;
    dispatch(b);
}

const delivery_ops delivery_ews_ops = {
    .stop = ews_stop,
    .probe = ews_probe,
    .find = ews_find,
    .create = ews_create,
    .update = ews_update,
    .remove = ews_remove,
    .configure = ews_configure,
    .free = ews_free,
};

