/* graph queue — the Graph back end's calls on their way (see delivery_graph.c): the
 * ready queue and its flush, the mailboxes (their default To Do list, their
 * throttling, their calls in flight), and sending: one plain request, or a $batch. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "graph/graph_backend.h"

/* ---- small things ------------------------------------------------------------ */

uint64_t graph_now_usec(graph_backend *b)
{
    uint64_t now = 0;
    sd_event_now(b->event, CLOCK_MONOTONIC, &now);
    return now;
}

void graph_call_free(graph_call *call)
{
    if (!call)
        return;
    free(call->path);
    free(call->suffix);
    free(call->list_id);
    free(call->ref_id);
    json_object_put(call->body);
    free(call);
}

void graph_queue_schedule(graph_backend *b)
{
    sd_event_source_set_enabled(b->flush, SD_EVENT_ONESHOT);
}

void graph_queue_call(graph_backend *b, graph_call *call)
{
    call->next = NULL;
    *b->ready_tail = call;
    b->ready_tail = &call->next;
    graph_queue_schedule(b);
}

void graph_call_fail_result(graph_call *call, delivery_result r)
{
    graph_call_finish(call, &r);
}

void graph_call_fail_maybe_done(graph_call *call, delivery_outcome outcome, const char *code,
                                const char *reason, int64_t retry_after_ms, bool outcome_unknown)
{
    graph_call_fail_result(call, (delivery_result){.outcome = outcome, .code = code,
                                                   .reason = reason,
                                                   .retry_after_ms = retry_after_ms,
                                                   .outcome_unknown = outcome_unknown});
}

void graph_call_fail(graph_call *call, delivery_outcome outcome, const char *code,
                     const char *reason, int64_t retry_after_ms)
{
    graph_call_fail_maybe_done(call, outcome, code, reason, retry_after_ms, false);
}

graph_mailbox *graph_mailbox_get(graph_backend *b, const char *address)
{
    char *key = strdup(address);
    if (!key)
        return NULL;
    for (char *p = key; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    for (graph_mailbox *box = b->mailboxes; box; box = box->next) {
        if (strcmp(box->address, key) == 0) {
            free(key);
            return box;
        }
    }
    graph_mailbox *box = calloc(1, sizeof *box);
    if (!box || !(box->escaped = graph_url_escape(key, true))) {
        free(box);
        free(key);
        return NULL;
    }
    box->address = key;
    box->next = b->mailboxes;
    b->mailboxes = box;
    return box;
}

/* The default To Do list of box is known (list_id, percent-encoded) or could not be
 * found (failure): the calls waiting for it go on or fail alike. */
void graph_mailbox_list_resolved(graph_mailbox *box, const char *list_id,
                                 const delivery_result *failure)
{
    graph_call *waiting = box->waiting;
    box->waiting = NULL;
    box->list_pending = false;
    if (list_id) {
        free(box->list_id);
        box->list_id = strdup(list_id);
    }
    while (waiting) {
        graph_call *call = waiting;
        waiting = call->next;
        if (!list_id || !box->list_id) {
            if (failure)
                graph_call_finish(call, failure);
            else
                graph_call_fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            continue;
        }
        free(call->list_id);
        call->list_id = strdup(box->list_id);
        if (!call->list_id || asprintf(&call->path, "/users/%s/todo/lists/%s%s", box->escaped,
                                       box->list_id, call->suffix) < 0) {
            call->path = NULL;
            graph_call_fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            continue;
        }
        graph_queue_call(call->b, call);
    }
}

void graph_call_finish(graph_call *call, const delivery_result *r)
{
    if (call->op == OP_LIST) {
        graph_mailbox_list_resolved(call->box, NULL, r);
        graph_call_free(call);
        return;
    }
    if (call->sync_done) {
        delivery_sync_result sync = {.result = *r, .position_invalid = call->position_invalid};
        call->sync_done(&sync, call->userdata);
    } else {
        call->done(r, call->userdata);
    }
    graph_call_free(call);
}
/* ---- sending -------------------------------------------------------------------- */

static void request_unlink(graph_backend *b, graph_request *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else
        b->requests = req->next;
    if (req->next)
        req->next->prev = req->prev;
    b->n_requests--;
    for (size_t i = 0; i < req->n; i++)
        req->calls[i]->box->active--;
}

static void handle_reply(graph_call *call, const graph_reply *rep)
{
    if (call->sync_done)
        graph_sync_reply(call, rep);
    else
        graph_reply_handle(call, rep);
}

static void on_http_done(const http_response *hr, void *userdata)
{
    graph_request *req = userdata;
    graph_backend *b = req->b;
    graph_reply whole = {.transfer_ok = hr->transfer_ok, .failure = hr->failure,
                         .error = hr->error, .status = hr->status, .body = hr->body,
                         .body_len = hr->body_len, .retry_after_ms = hr->retry_after_ms};
    graph_batch_response *members = NULL;
    size_t n_members = 0;
    char err[256];

    request_unlink(b, req);
    if (!req->batch || !hr->transfer_ok || hr->status != 200) {
        /* A plain answer, or the whole batch failed: every call gets the same answer. */
        for (size_t i = 0; i < req->n; i++)
            handle_reply(req->calls[i], &whole);
    } else if (graph_json_parse_batch(hr->body, hr->body_len, &members, &n_members, err,
                                      sizeof err) < 0) {
        whole.transfer_ok = false;
        whole.error = err;
        for (size_t i = 0; i < req->n; i++)
            handle_reply(req->calls[i], &whole);
    } else {
        for (size_t i = 0; i < req->n; i++) {
            char id[16];
            graph_reply member = {.transfer_ok = false,
                                  .error = "no answer for this request in the $batch answer",
                                  .retry_after_ms = -1};
            snprintf(id, sizeof id, "%zu", i + 1);
            for (size_t m = 0; m < n_members; m++) {
                if (strcmp(members[m].id, id) == 0) {
                    member = (graph_reply){.transfer_ok = true, .status = members[m].status,
                                           .body = members[m].body,
                                           .body_len = members[m].body_len,
                                           .retry_after_ms = members[m].retry_after_ms};
                    break;
                }
            }
            handle_reply(req->calls[i], &member);
        }
        graph_batch_responses_free(members, n_members);
    }
    free(req);
    graph_queue_schedule(b);
}

/* Sends calls[0..n) with token: one plain request, or a $batch. */
static void send_calls(graph_backend *b, graph_call **calls, size_t n, const char *token,
                       uint64_t generation)
{
    graph_request *req = calloc(1, sizeof *req);
    char *authorization = NULL, *url = NULL, *body = NULL;
    size_t len = 0;
    const char *method = "POST";
    bool creates = false;
    int r = -ENOMEM;

    if (!req)
        goto fail;
    req->b = b;
    req->n = n;
    req->batch = n > 1;
    for (size_t i = 0; i < n; i++) {
        req->calls[i] = calls[i];
        calls[i]->token_generation = generation;
        creates = creates || calls[i]->op == OP_CREATE;
    }
    if (asprintf(&authorization, "Authorization: Bearer %s", token) < 0) {
        authorization = NULL;
        goto fail;
    }
    if (!req->batch) {
        graph_call *call = calls[0];
        method = call->method;
        if (asprintf(&url, "%s%s", b->base_url, call->path) < 0) {
            url = NULL;
            goto fail;
        }
        if (call->body && !(body = graph_json_text(call->body, &len)))
            goto fail;
    } else {
        graph_batch_request members[GRAPH_BATCH_MAX];
        char ids[GRAPH_BATCH_MAX][16];
        for (size_t i = 0; i < n; i++) {
            snprintf(ids[i], sizeof ids[i], "%zu", i + 1);
            members[i] = (graph_batch_request){.id = ids[i], .method = calls[i]->method,
                                               .url = calls[i]->path, .body = calls[i]->body};
        }
        if (asprintf(&url, "%s/$batch", b->base_url) < 0) {
            url = NULL;
            goto fail;
        }
        if (!(body = graph_json_batch(members, n, PREFER_HEADER, &len)))
            goto fail;
    }
    const char *prefer = !req->batch && calls[0]->prefer_header ? calls[0]->prefer_header
                                                                : "Prefer: " PREFER_HEADER;
    const char *headers[] = {authorization, "Accept: application/json", prefer, NULL};
    if (log_debug_enabled()) {
        if (req->batch)
            log_debug("Microsoft Graph: $batch of %zu requests (%zu bytes)", n, len);
        else
            log_debug("Microsoft Graph: %s %s (%zu bytes)", method, calls[0]->path, len);
    }
    r = http_client_request(creates ? b->http_fresh : b->http, method, url, body ? "application/json" : NULL, body, len,
                            headers, on_http_done, req);
    body = NULL;   /* http_client owns it now, whatever r is */
    if (r < 0)
        goto fail;
    for (size_t i = 0; i < n; i++)
        calls[i]->box->active++;
    req->next = b->requests;
    if (req->next)
        req->next->prev = req;
    b->requests = req;
    b->n_requests++;
    explicit_bzero(authorization, strlen(authorization));
    free(authorization);
    free(url);
    return;
fail:
    if (authorization) {
        explicit_bzero(authorization, strlen(authorization));
        free(authorization);
    }
    free(url);
    free(body);
    free(req);
    for (size_t i = 0; i < n; i++)
        graph_call_fail(calls[i], DELIVERY_TRANSIENT, "request", r == -ENOMEM ? "out of memory" :
                        "cannot start the request to Microsoft Graph", -1);
}

static void on_token(const char *token, const char *error, void *userdata)
{
    graph_backend *b = userdata;
    b->token_wanted = false;
    if (token) {
        graph_queue_flush(b);
        return;
    }
    /* Everything waiting for a token fails alike; the worker backs off and retries. */
    graph_call *list = b->ready;
    b->ready = NULL;
    b->ready_tail = &b->ready;
    while (list) {
        graph_call *call = list;
        list = call->next;
        graph_call_fail(call, DELIVERY_TRANSIENT, "OAuth2", error, -1);
    }
}

/* Takes the calls that may go now off the queue (at most GRAPH_BATCH_MAX, at most
 * MAILBOX_CONCURRENCY per mailbox in flight, a sync call alone); calls of a throttled
 * mailbox fail. */
static size_t take_ready(graph_backend *b, graph_call **out)
{
    uint64_t now = graph_now_usec(b);
    size_t n = 0;
    graph_call **p = &b->ready;

    while (*p && n < GRAPH_BATCH_MAX) {
        graph_call *call = *p;
        graph_mailbox *box = call->box;
        if (box->throttled_until > now) {
            char reason[512];
            int64_t wait_ms = (int64_t)((box->throttled_until - now + 999) / 1000);
            *p = call->next;
            if (!*p)
                b->ready_tail = p;
            snprintf(reason, sizeof reason, "Microsoft Graph throttles mailbox %s for another "
                     "%" PRId64 " ms (Retry-After)", box->address, wait_ms);
            graph_call_fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT,
                                                           .code = "throttled", .reason = reason,
                                                           .retry_after_ms = wait_ms,
                                                           .throttle = DELIVERY_THROTTLE_MAILBOX});
            p = &b->ready;   /* fail may have queued or removed calls: start over */
            continue;
        }
        unsigned planned = 0;
        for (size_t i = 0; i < n; i++)
            planned += out[i]->box == box;
        if (box->active + planned >= MAILBOX_CONCURRENCY || (call->sync_done && n > 0)) {
            p = &call->next;   /* stays queued until the mailbox has room (or goes alone) */
            continue;
        }
        *p = call->next;
        if (!*p)
            b->ready_tail = p;
        call->next = NULL;
        out[n++] = call;
        if (call->sync_done)
            break;   /* a delta page is a plain GET, never a $batch member */
    }
    return n;
}

/* Answers the calls refused before sending (a sync from an unusable stored link):
 * they need neither a token nor a connection. */
static void answer_refused(graph_backend *b)
{
    graph_call **p = &b->ready;
    while (*p) {
        graph_call *call = *p;
        if (!call->refused) {
            p = &call->next;
            continue;
        }
        *p = call->next;
        if (!*p)
            b->ready_tail = p;
        call->position_invalid = true;   /* only sync calls are refused */
        graph_call_fail(call, DELIVERY_TRANSIENT, "refused", call->refused, -1);
        p = &b->ready;   /* the answer may have queued calls: start over */
    }
}

void graph_queue_flush(graph_backend *b)
{
    while (b->stopped && b->ready) {
        graph_call *call = b->ready;
        b->ready = call->next;
        if (!b->ready)
            b->ready_tail = &b->ready;
        graph_call_fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT,
                                                       .code = "stopping",
                                                       .reason = "followupd is stopping; not sent",
                                                       .retry_after_ms = -1, .not_sent = true});
    }
    answer_refused(b);
    while (b->ready && b->n_requests < MAX_REQUESTS) {
        uint64_t generation = 0;
        if (!oauth2_cached_token(b->oauth, NULL)) {
            if (!b->token_wanted) {
                b->token_wanted = true;
                if (oauth2_with_token(b->oauth, on_token, b) < 0) {
                    b->token_wanted = false;
                    on_token(NULL, "out of memory", b);
                }
            }
            return;
        }
        graph_call *calls[GRAPH_BATCH_MAX];
        size_t n = take_ready(b, calls);
        if (n == 0)
            return;   /* all queued calls wait for room in their mailboxes */
        const char *token = oauth2_cached_token(b->oauth, &generation);
        if (!token) {
            for (size_t i = n; i-- > 0;) {   /* back to the head of the queue, in order */
                calls[i]->next = b->ready;
                if (!b->ready)
                    b->ready_tail = &calls[i]->next;
                b->ready = calls[i];
            }
            continue;
        }
        send_calls(b, calls, n, token, generation);
    }
}
