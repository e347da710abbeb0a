/* ews_stream_conn — the watch's GetStreamingEvents connections (see ews_stream.c): one
 * per group, its answer read as it arrives, envelope by envelope, into changed
 * mailboxes and lost subscriptions; reopened when it ends, with back-off when it
 * failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "ews/ews_response.h"
#include "ews/ews_stream_internal.h"

/* ---- the connections ------------------------------------------------------------ */

static void stream_free(watch_stream *ws)
{
    ews_stream_splitter_reset(&ws->splitter);
    free(ws->error_body);
    free(ws);
}

void ews_stream_cancel(ews_stream *s, watch_stream *ws)
{
    if (ws->request)
        http_client_cancel(s->backend->http_client_handle, ws->request);
    stream_free(ws);
}

static watch_mailbox *member_by_subscription(watch_group *g, const char *id)
{
    for (size_t i = 0; g && i < g->n; i++)
        if (g->members[i]->subscription_id && strcmp(g->members[i]->subscription_id, id) == 0)
            return g->members[i];
    return NULL;
}

/* The server dropped a member's subscription from the connection: subscribe again. */
static void subscription_lost(watch_mailbox *mb, const char *code)
{
    uint64_t now = ews_stream_now_usec();
    log_debug("the subscription of mailbox %s ended (%s); subscribing again", mb->address, code);
    free(mb->subscription_id);
    mb->subscription_id = NULL;
    mb->on_stream = false;
    /* Dropped again and again (another client takes it over, a server that expires it
     * at once): the retries back off. */
    if (now - mb->subscribed_at >= SUBSCRIPTION_SHORT_LIFE_USEC)
        mb->losses = 0;
    else if (++mb->losses > 1)
        mb->retry_at = now + ews_stream_backoff_ms(mb->losses - 1, RETRY_FIRST_MS,
                                                   RETRY_MAX_MS) * 1000;
}

static void apply_envelope(ews_stream *s, watch_stream *ws, const ews_stream_envelope *e)
{
    watch_group *g = ws->group;

    if (e->status == EWS_STREAM_STATUS_OK && !ws->ok_seen) {
        ws->ok_seen = true;
        if (g && !ws->retired && g->problem[0]) {
            log_info("watching mailboxes: the connection of group %u is up again", g->number);
            g->problem[0] = '\0';
        }
        if (g && !ws->retired && g->gap) {
            for (size_t i = 0; i < g->n; i++)
                if (g->members[i]->on_stream)
                    ews_stream_queue_changed(s, g->members[i]);
            g->gap = false;
        }
    }
    if (e->status == EWS_STREAM_STATUS_CLOSED)
        ws->closed_seen = true;
    for (size_t i = 0; i < e->n_changed; i++) {
        watch_mailbox *mb = member_by_subscription(g, e->changed[i]);
        if (mb)
            ews_stream_queue_changed(s, mb);
    }
    /* A retired connection's subscriptions went to its successor, which speaks for them. */
    for (size_t i = 0; !ws->retired && i < e->n_failed; i++) {
        watch_mailbox *mb = member_by_subscription(g, e->failed[i].subscription_id);
        if (mb)
            subscription_lost(mb, e->failed[i].code);
        ws->lost_subscriptions = true;
    }
    if (e->error_code && !ws->error_code[0]) {
        snprintf(ws->error_code, sizeof ws->error_code, "%s", e->error_code);
        ws->back_off_ms = e->back_off_ms;
    }
    ews_stream_schedule(s, ews_stream_now_usec());
}

static void stream_on_header(const char *line, size_t len, void *userdata)
{
    watch_stream *ws = userdata;
    long status = ews_stream_http_status(line, len);
    char *cookie = ews_stream_affinity_cookie(line, len);

    if (status)
        ws->status = status;
    if (cookie && ws->group && !ws->retired) {
        free(ws->group->cookie);
        ws->group->cookie = cookie;
        cookie = NULL;
    }
    free(cookie);
}

/* Part of the answer: envelopes are read as soon as they are complete. */
static bool stream_on_data(const char *block, size_t len, void *userdata)
{
    watch_stream *ws = userdata;
    char err[256];
    const char *doc;
    size_t doc_len;

    if (ws->status != 200) {   /* an error page or fault: kept (bounded) for the log */
        size_t room = ANSWER_MAX_BYTES - ws->error_len, keep = len < room ? len : room;
        char *grown = realloc(ws->error_body, ws->error_len + keep + 1);
        if (!grown)
            return false;
        memcpy(grown + ws->error_len, block, keep);
        ws->error_body = grown;
        ws->error_len += keep;
        grown[ws->error_len] = '\0';
        return true;
    }
    if (ews_stream_splitter_feed(&ws->splitter, block, len) < 0) {
        snprintf(ws->problem, sizeof ws->problem, "an envelope larger than %u bytes",
                 EWS_STREAM_ENVELOPE_MAX_BYTES);
        ws->broken = true;
        return false;
    }
    int r;
    while ((r = ews_stream_splitter_next(&ws->splitter, &doc, &doc_len, err, sizeof err)) > 0) {
        ews_stream_envelope *e = NULL;
        if (ews_stream_envelope_parse(doc, doc_len, &e, err, sizeof err) < 0) {
            snprintf(ws->problem, sizeof ws->problem, "an unusable envelope: %s", err);
            ws->broken = true;
            return false;
        }
        apply_envelope(ws->owner, ws, e);
        ews_stream_envelope_free(e);
    }
    if (r < 0) {
        snprintf(ws->problem, sizeof ws->problem, "not a sequence of envelopes: %s", err);
        ws->broken = true;
        return false;
    }
    return true;
}

/* Why a connection ended, for the log; *code: a short key that changes with it. */
static void describe_end(const watch_stream *ws, const http_response *hr, char *reason,
                         size_t size, char *code, size_t code_size, int64_t *wait_ms)
{
    ews_response *parsed = NULL;
    char error[256];

    *wait_ms = hr->retry_after_ms;
    if (ws->broken) {
        snprintf(code, code_size, "broken");
        snprintf(reason, size, "Exchange sent %s", ws->problem);
    } else if (!hr->transfer_ok) {
        snprintf(code, code_size, "%s", hr->failure ? hr->failure : "transfer");
        snprintf(reason, size, "the connection failed: %s", hr->error);
    } else if (ws->status != 200) {
        snprintf(code, code_size, "HTTP %ld", ws->status);
        if (ews_response_parse(ws->error_body, ws->error_len, &parsed, error, sizeof error) == 0 &&
            parsed->fault_code) {
            snprintf(code, code_size, "%s", parsed->fault_code);
            if (parsed->fault_back_off_ms > *wait_ms)
                *wait_ms = parsed->fault_back_off_ms;
        }
        snprintf(reason, size, "Exchange answered GetStreamingEvents with HTTP %ld (%s)",
                 ws->status, code);
        ews_response_free(parsed);
    } else if (ws->error_code[0]) {
        snprintf(code, code_size, "%s", ws->error_code);
        snprintf(reason, size, "Exchange answered GetStreamingEvents with %s", ws->error_code);
        if (ws->back_off_ms > *wait_ms)
            *wait_ms = ws->back_off_ms;
    } else if (!ws->closed_seen) {
        snprintf(code, code_size, "cut");
        snprintf(reason, size, "the connection ended without ConnectionStatus Closed");
    } else {
        snprintf(code, code_size, "short");
        snprintf(reason, size, "Exchange closed the connection after less than %llu s",
                 (unsigned long long)(SHORT_LIFE_USEC / USEC_PER_SEC));
    }
}

static void unlink_retired(ews_stream *s, watch_stream *ws)
{
    for (watch_stream **link = &s->retired; *link; link = &(*link)->next)
        if (*link == ws) {
            *link = ws->next;
            return;
        }
}

static void stream_on_done(const http_response *hr, void *userdata)
{
    watch_stream *ws = userdata;
    ews_stream *s = ws->owner;
    watch_group *g = ws->group;
    uint64_t now = ews_stream_now_usec();
    char reason[512], code[64];
    int64_t wait_ms = -1;

    ws->request = NULL;
    if (ws->retired) {
        unlink_retired(s, ws);
        stream_free(ws);
        return;
    }
    g->stream = NULL;
    for (size_t i = 0; i < g->n; i++)
        g->members[i]->on_stream = false;
    bool clean = hr->transfer_ok && ws->status == 200 && ws->closed_seen && !ws->broken &&
                 !ws->error_code[0];
    uint64_t delay_ms = 0;
    if (!clean)
        g->gap = true;   /* events on their way may be lost */
    /* Closed early because its subscriptions went (expired...) is no failure: they are
     * made again, each backing off on its own. */
    if (clean && (now - ws->opened_at >= SHORT_LIFE_USEC || ws->lost_subscriptions)) {
        g->stream_failures = 0;
    } else {
        describe_end(ws, hr, reason, sizeof reason, code, sizeof code, &wait_ms);
        delay_ms = ews_stream_backoff_ms(++g->stream_failures, STREAM_RETRY_FIRST_MS,
                                         STREAM_RETRY_MAX_MS);
        delay_ms = ews_stream_later(delay_ms, wait_ms > 0 ? (uint64_t)wait_ms : 0);
        if (strcmp(g->problem, code) != 0)
            log_warning("watching mailboxes: the GetStreamingEvents connection of group %u "
                        "(anchor %s, %zu mailboxes) ended: %s; reopening in %llu s", g->number,
                        g->n ? g->members[0]->address : "-", g->n, reason,
                        (unsigned long long)(delay_ms / 1000));
        snprintf(g->problem, sizeof g->problem, "%s", code);
        if (ws->status == 401 && !s->backend->use_oauth)
            ews_backend_reload_password(s->backend);
        else if (ws->status == 401)
            oauth2_invalidate(s->backend->oauth, 0);
    }
    g->stale_since = now;
    g->reopen_at = now + delay_ms * 1000;
    stream_free(ws);
    ews_stream_schedule(s, g->reopen_at);
}

static void retire(ews_stream *s, watch_stream *ws)
{
    ws->retired = true;
    ws->retire_at = ews_stream_now_usec() + RETIRE_GRACE_USEC;
    ws->next = s->retired;
    s->retired = ws;
}

/* One GetStreamingEvents for every subscribed member; replaces the group's current one. */
void ews_stream_open(ews_stream *s, watch_group *g, const char *token)
{
    const char *ids[GROUP_SIZE];
    size_t n = 0;

    g->reopen_at = 0;
    g->stale_since = 0;
    for (size_t i = 0; i < g->n; i++)
        if (g->members[i]->subscription_id)
            ids[n++] = g->members[i]->subscription_id;
    if (n == 0)
        return;   /* the next Subscribe answered asks again */
    const char *anchor = g->members[0]->address;
    ews_request_options opt = ews_backend_options(s->backend, anchor);
    size_t len = 0;
    char *body = ews_stream_request_get_events(&opt, ids, n, CONNECTION_MINUTES, &len);
    watch_stream *ws = calloc(1, sizeof *ws);
    if (!body || !ws) {
        free(body);
        free(ws);
        g->reopen_at = ews_stream_now_usec() + STREAM_RETRY_MAX_MS * UINT64_C(1000);
        return;
    }
    ws->owner = s;
    ws->group = g;
    ws->opened_at = ews_stream_now_usec();
    ews_stream_splitter_init(&ws->splitter);
    http_stream_request shape = {
        .timeout_seconds = CONNECTION_MINUTES * 60 + CONNECTION_SLACK_SECONDS,
        .idle_seconds = STREAM_IDLE_SECONDS, .header = stream_on_header,
        .data = stream_on_data, .done = stream_on_done, .userdata = ws};
    if (ews_stream_post(s, body, len, anchor, g->cookie, token, &shape, &ws->request) < 0) {
        stream_free(ws);
        g->reopen_at = ews_stream_now_usec() + STREAM_RETRY_FIRST_MS * UINT64_C(1000);
        return;
    }
    log_debug("watching mailboxes: group %u (anchor %s) streams %zu subscriptions", g->number,
              anchor, n);
    if (g->stream)
        retire(s, g->stream);
    g->stream = ws;
    for (size_t i = 0; i < g->n; i++)
        g->members[i]->on_stream = g->members[i]->subscription_id != NULL;
}
