/* ews_stream_call — the watch's Subscribe and Unsubscribe requests (see ews_stream.c):
 * their affinity headers, the answers (a subscription, or a failure of Exchange as a
 * whole, which pauses everything, or of one mailbox, which backs off alone), logged
 * when the reason changes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/log.h"
#include "ews/ews_errors.h"
#include "ews/ews_response.h"
#include "ews/ews_stream_internal.h"

/* ---- requests ------------------------------------------------------------------ */

/* The value of "Set-Cookie: X-BackEndOverrideCookie=<value>; ...", else NULL. */
char *ews_stream_affinity_cookie(const char *line, size_t len)
{
    static const char header[] = "set-cookie:", name[] = "X-BackEndOverrideCookie=";
    if (len < sizeof header - 1 || strncasecmp(line, header, sizeof header - 1) != 0)
        return NULL;
    size_t i = sizeof header - 1;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (len - i < sizeof name - 1 || memcmp(line + i, name, sizeof name - 1) != 0)
        return NULL;
    i += sizeof name - 1;
    size_t end = i;
    while (end < len && line[end] != ';')
        end++;
    return ews_stream_token_ok(line + i, end - i) ? strndup(line + i, end - i) : NULL;
}

/* "HTTP/1.1 200 OK", "HTTP/2 200" → 200; 0 for other lines. */
long ews_stream_http_status(const char *line, size_t len)
{
    const char *blank = len > 5 && strncmp(line, "HTTP/", 5) == 0 ? memchr(line, ' ', len) : NULL;
    long status = 0;
    for (size_t i = blank ? (size_t)(blank - line) + 1 : len, digits = 0; i < len && digits < 3;
         i++, digits++) {
        if (line[i] < '0' || line[i] > '9')
            return 0;
        status = status * 10 + (line[i] - '0');
    }
    return status >= 100 ? status : 0;
}

typedef struct request_headers {
    char *lines[5];
    const char *list[5];
} request_headers;

static void headers_free(request_headers *h)
{
    for (size_t i = 0; i < 4; i++) {
        if (h->lines[i])
            explicit_bzero(h->lines[i], strlen(h->lines[i]));   /* may hold the token */
        free(h->lines[i]);
    }
}

static char *header_line(const char *name, const char *prefix, const char *value)
{
    char *line = NULL;
    return asprintf(&line, "%s: %s%s", name, prefix, value) < 0 ? NULL : line;
}

/* A group's affinity headers (Microsoft's guidance), and the bearer token if any. */
static bool headers_build(request_headers *h, const char *anchor, const char *cookie,
                          const char *token)
{
    size_t n = 0;

    memset(h, 0, sizeof *h);
    h->lines[n++] = header_line("X-AnchorMailbox", "", anchor);
    h->lines[n++] = header_line("X-PreferServerAffinity", "", "true");
    if (cookie)
        h->lines[n++] = header_line("Cookie", "X-BackEndOverrideCookie=", cookie);
    if (token[0])
        h->lines[n++] = header_line("Authorization", "Bearer ", token);
    for (size_t i = 0; i < n; i++) {
        if (!h->lines[i]) {
            headers_free(h);
            return false;
        }
        h->list[i] = h->lines[i];
    }
    return true;
}

int ews_stream_post(ews_stream *s, char *body, size_t len, const char *anchor,
                    const char *cookie, const char *token, const http_stream_request *shape,
                    http_request **handle)
{
    request_headers h;
    if (!headers_build(&h, anchor, cookie, token)) {
        free(body);
        return -ENOMEM;
    }
    http_stream_request request = *shape;
    request.method = "POST";
    request.url = s->backend->url;
    request.content_type = "text/xml; charset=utf-8";
    request.body = body;
    request.body_len = len;
    request.extra_headers = h.list;
    int r = http_client_stream(s->backend->http_client_handle, &request, handle);
    headers_free(&h);
    return r;
}

static void on_token(const char *token, const char *error, void *userdata);
static void server_failed(ews_stream *s, const char *code, const char *reason, int64_t wait_ms);

const char *ews_stream_token(ews_stream *s, uint64_t *generation)
{
    *generation = 0;
    if (!s->backend->use_oauth)
        return "";
    const char *token = oauth2_cached_token(s->backend->oauth, generation);
    if (token || s->waiting_for_token)
        return token;
    /* s itself waits: only ews_free frees it, and the OAuth2 client it frees next drops
     * its waiters without calling them back. */
    if (oauth2_with_token(s->backend->oauth, on_token, s) < 0) {
        server_failed(s, "oauth2", "cannot ask for an OAuth2 token", -1);
        return NULL;
    }
    log_debug("watching mailboxes: waiting for an OAuth2 token");
    s->waiting_for_token = true;
    return NULL;
}

/* ---- failures ------------------------------------------------------------------- */

/* Exchange itself failed (unreachable, HTTP error, credentials, busy): nothing more is
 * sent for a while. Logged when the reason changes. */
static void server_failed(ews_stream *s, const char *code, const char *reason, int64_t wait_ms)
{
    uint64_t now = ews_stream_now_usec();
    uint64_t wait_usec = wait_ms > 0 ? (uint64_t)wait_ms * 1000 : 0;
    if (now < s->pause_until) {   /* another answer of the same round: one back-off step */
        s->pause_until = ews_stream_later(s->pause_until, now + wait_usec);
        return;
    }
    uint64_t delay = ews_stream_backoff_ms(++s->pause_failures, RETRY_FIRST_MS, RETRY_MAX_MS);
    delay = ews_stream_later(delay, wait_usec / 1000);
    s->pause_until = now + delay * 1000;
    if (strcmp(s->pause_problem, code) != 0)
        log_warning("watching mailboxes for changes: %s; trying again in %llu s "
                    "(meanwhile mailboxes are synced on schedule)", reason,
                    (unsigned long long)(delay / 1000));
    snprintf(s->pause_problem, sizeof s->pause_problem, "%s", code);
}

static void server_ok(ews_stream *s)
{
    if (s->pause_problem[0])
        log_info("watching mailboxes for changes: Exchange answers again");
    s->pause_problem[0] = '\0';
    s->pause_failures = 0;
}

static void mailbox_failed(watch_mailbox *mb, const char *code, const char *reason,
                           bool permanent, int64_t wait_ms)
{
    uint64_t delay = ews_stream_backoff_ms(++mb->failures, RETRY_FIRST_MS, RETRY_MAX_MS);
    delay = ews_stream_later(ews_stream_later(delay, permanent ? RETRY_PERMANENT_MS : 0),
                             wait_ms > 0 ? (uint64_t)wait_ms : 0);
    mb->retry_at = ews_stream_now_usec() + delay * 1000;
    if (strcmp(mb->problem, code) != 0)
        log_warning("cannot watch mailbox %s for changes: %s; trying again in %llu s "
                    "(it is synced on schedule meanwhile)", mb->address, reason,
                    (unsigned long long)(delay / 1000));
    snprintf(mb->problem, sizeof mb->problem, "%s", code);
}

/* ---- Subscribe and Unsubscribe ---------------------------------------------------- */

static void call_on_header(const char *line, size_t len, void *userdata)
{
    watch_call *call = userdata;
    char *cookie = ews_stream_affinity_cookie(line, len);
    if (cookie) {
        free(call->set_cookie);
        call->set_cookie = cookie;
    }
}

static bool call_on_data(const char *block, size_t len, void *userdata)
{
    watch_call *call = userdata;
    if (call->answer_len + len > ANSWER_MAX_BYTES) {
        call->too_large = true;
        return false;
    }
    char *grown = realloc(call->answer, call->answer_len + len + 1);
    if (!grown)
        return false;
    memcpy(grown + call->answer_len, block, len);
    call->answer = grown;
    call->answer_len += len;
    grown[call->answer_len] = '\0';
    return true;
}

void ews_stream_call_free(watch_call *call)
{
    free(call->address);
    free(call->subscription_id);
    free(call->anchor);
    free(call->cookie);
    free(call->answer);
    free(call->set_cookie);
    free(call);
}

void ews_stream_call_unlink(ews_stream *s, watch_call *call)
{
    if (call->prev)
        call->prev->next = call->next;
    else
        s->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    s->n_calls--;
}

static void on_call_done(const http_response *hr, void *userdata);

static int send_call(ews_stream *s, watch_call *call, char *body, size_t len,
                     const char *anchor, const char *cookie, const char *token)
{
    http_stream_request shape = {.header = call_on_header, .data = call_on_data,
                                 .done = on_call_done, .userdata = call};
    int r = ews_stream_post(s, body, len, anchor, cookie, token, &shape, &call->request);
    if (r < 0)
        return r;
    call->next = s->calls;
    if (call->next)
        call->next->prev = call;
    s->calls = call;
    s->n_calls++;
    return 0;
}

void ews_stream_queue_unsubscribe(ews_stream *s, const char *address, const char *id,
                                  const char *anchor, const char *cookie)
{
    watch_call *call = calloc(1, sizeof *call);
    if (call) {
        call->owner = s;
        call->unsubscribe = true;
        call->address = strdup(address);
        call->subscription_id = strdup(id);
        call->anchor = strdup(anchor);
        call->cookie = cookie ? strdup(cookie) : NULL;
    }
    if (!call || !call->address || !call->subscription_id || !call->anchor ||
        (cookie && !call->cookie)) {
        if (call)
            ews_stream_call_free(call);
        return;   /* best effort: the subscription expires without a connection */
    }
    if (s->unsubscribes_tail)
        s->unsubscribes_tail->next = call;
    else
        s->unsubscribes = call;
    s->unsubscribes_tail = call;
}

void ews_stream_start_unsubscribes(ews_stream *s, const char *token)
{
    while (s->unsubscribes && s->n_calls < CALLS_MAX) {
        watch_call *call = s->unsubscribes;
        s->unsubscribes = call->next;
        if (!s->unsubscribes)
            s->unsubscribes_tail = NULL;
        call->next = NULL;
        ews_request_options opt = ews_backend_options(s->backend, call->address);
        size_t len = 0;
        char *body = ews_stream_request_unsubscribe(&opt, call->subscription_id, &len);
        if (!body || send_call(s, call, body, len, call->anchor, call->cookie, token) < 0)
            ews_stream_call_free(call);
    }
}

static void group_joined(watch_group *g, uint64_t now)
{
    if (!g->stale_since)
        g->stale_since = now;
    g->reopen_at = now + JOIN_DEBOUNCE_USEC;
    if (g->reopen_at > g->stale_since + JOIN_WAIT_MAX_USEC)
        g->reopen_at = g->stale_since + JOIN_WAIT_MAX_USEC;
}

/* What Exchange answered a Subscribe. */
static void subscribe_answered(ews_stream *s, watch_call *call, const http_response *hr)
{
    ews_backend *b = s->backend;
    watch_mailbox *mb = call->mailbox;
    char reason[1024], code[64], error[256];
    ews_response *parsed = NULL;

    if (mb) {
        mb->call = NULL;
        mb->retry_at = 0;
    }
    if (call->group) {
        call->group->subscribing--;
        if (call->set_cookie) {
            free(call->group->cookie);
            call->group->cookie = call->set_cookie;
            call->set_cookie = NULL;
        }
    }
    if (!hr->transfer_ok) {
        snprintf(reason, sizeof reason, "cannot reach Exchange at %s: %s", b->url,
                 call->too_large ? "the Subscribe answer is too large" : hr->error);
        server_failed(s, hr->failure ? hr->failure : "transfer", reason, hr->retry_after_ms);
        goto wait_for_server;
    }
    snprintf(code, sizeof code, "HTTP %ld", hr->status);
    if (hr->status == 401) {
        bool changed = false;
        if (b->use_oauth)
            oauth2_invalidate(b->oauth, call->token_generation);
        else
            changed = ews_backend_reload_password(b);
        ews_refused_credentials_reason(b, hr, changed, reason, sizeof reason);
        server_failed(s, code, reason, -1);
        goto wait_for_server;
    }
    if (call->group)
        call->group->affinity_known = true;
    if (hr->status != 200 && hr->status != 500) {
        snprintf(reason, sizeof reason, "Exchange answered Subscribe with HTTP %ld", hr->status);
        server_failed(s, code, reason, hr->retry_after_ms);
        goto wait_for_server;
    }
    if (ews_response_parse(call->answer, call->answer_len, &parsed, error, sizeof error) < 0) {
        snprintf(reason, sizeof reason, "unusable Subscribe answer (HTTP %ld): %s", hr->status,
                 error);
        server_failed(s, "unusable", reason, -1);
        goto wait_for_server;
    }
    server_ok(s);
    const char *failed = parsed->fault_code;
    const char *text = parsed->fault_string;
    ews_code ews = parsed->fault_ews_code;
    int64_t wait_ms = parsed->fault_back_off_ms;
    if (!failed && parsed->n_messages > 0 &&
        parsed->messages[0].response_class == EWS_CLASS_ERROR) {
        failed = parsed->messages[0].response_code;
        text = parsed->messages[0].message_text;
        ews = parsed->messages[0].code;
        wait_ms = parsed->messages[0].back_off_ms;
    }
    char *id = failed ? NULL : ews_stream_subscription_id(call->answer, call->answer_len,
                                                          error, sizeof error);
    if (!failed && !id) {
        failed = "NoSubscriptionId";
        text = error;
        ews = EWS_ERROR_UNKNOWN;
    }
    if (failed && parsed->fault_code && ews == EWS_ERROR_SERVER_BUSY) {
        snprintf(reason, sizeof reason, "Exchange is busy (%s)", failed);
        server_failed(s, failed, reason, wait_ms);
    } else if (failed && mb) {
        snprintf(reason, sizeof reason, "Subscribe answered %s: %s", failed,
                 text ? text : "(no text)");
        mailbox_failed(mb, failed, reason, ews_code_disposition(ews) == EWS_DISPOSITION_PERMANENT,
                       wait_ms);
    } else if (id && !mb) {
        /* The mailbox left the set meanwhile. */
        watch_group *g = call->group;
        const char *anchor = g && g->n ? g->members[0]->address : call->address;
        ews_stream_queue_unsubscribe(s, call->address, id, anchor, g ? g->cookie : NULL);
    } else if (id) {
        if (mb->problem[0])
            log_info("watching mailbox %s for changes again", mb->address);
        mb->problem[0] = '\0';
        mb->failures = 0;
        mb->subscription_id = id;
        mb->subscribed_at = ews_stream_now_usec();
        id = NULL;
        ews_stream_queue_changed(s, mb);   /* what happened before it is read by a sync */
        group_joined(mb->group, mb->subscribed_at);
    }
    free(id);
    ews_response_free(parsed);
    return;
wait_for_server:
    if (mb)
        mb->retry_at = s->pause_until;
}

static void on_call_done(const http_response *hr, void *userdata)
{
    watch_call *call = userdata;
    ews_stream *s = call->owner;

    call->request = NULL;
    ews_stream_call_unlink(s, call);
    if (call->unsubscribe)
        log_debug("Unsubscribe of a subscription of %s: %s, HTTP %ld", call->address,
                  hr->transfer_ok ? "answered" : hr->error, hr->status);
    else
        subscribe_answered(s, call, hr);
    ews_stream_call_free(call);
    ews_stream_schedule(s, ews_stream_now_usec());
}

static void start_subscribe(ews_stream *s, watch_mailbox *mb, const char *token,
                            uint64_t generation)
{
    watch_group *g = mb->group;
    ews_request_options opt = ews_backend_options(s->backend, mb->address);
    size_t len = 0;
    char *body = ews_stream_request_subscribe(&opt, &len);
    watch_call *call = calloc(1, sizeof *call);

    if (!body || !call || !(call->address = strdup(mb->address))) {
        free(body);
        free(call);
        mailbox_failed(mb, "request", "the Subscribe request cannot be built (is the address "
                       "valid UTF-8?)", true, -1);
        return;
    }
    call->owner = s;
    call->mailbox = mb;
    call->group = g;
    call->token_generation = generation;
    if (send_call(s, call, body, len, g->members[0]->address, g->cookie, token) < 0) {
        ews_stream_call_free(call);
        mailbox_failed(mb, "request", "cannot start the Subscribe request", false, -1);
        return;
    }
    mb->call = call;
    g->subscribing++;
}

/* Subscribes the mailboxes due, group after group; returns when the next one is due
 * (UINT64_MAX: none, or the requests' answers will run this again). */
uint64_t ews_stream_start_subscribes(ews_stream *s, const char *token, uint64_t generation,
                                     uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (size_t k = 0; k < s->n_groups; k++) {
        size_t gi = (s->cursor + k) % s->n_groups;
        watch_group *g = s->groups[gi];
        for (size_t i = 0; i < g->n; i++) {
            watch_mailbox *mb = g->members[i];
            if (mb->subscription_id || mb->call)
                continue;
            if (mb->retry_at > now) {
                next = mb->retry_at < next ? mb->retry_at : next;
                continue;
            }
            if (s->n_calls >= CALLS_MAX) {
                s->cursor = gi;
                return UINT64_MAX;
            }
            /* The group's first Subscribe alone: its answer sets the affinity cookie. */
            if (!g->affinity_known && g->subscribing > 0)
                break;
            start_subscribe(s, mb, token, generation);
        }
    }
    return next;
}

static void on_token(const char *token, const char *error, void *userdata)
{
    ews_stream *s = userdata;

    s->waiting_for_token = false;
    if (!token) {
        char reason[512];
        snprintf(reason, sizeof reason, "no OAuth2 token: %s", error ? error : "unknown error");
        server_failed(s, "oauth2", reason, -1);
    }
    ews_stream_schedule(s, ews_stream_now_usec());
}
