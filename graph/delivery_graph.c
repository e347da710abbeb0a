/* delivery_graph — the delivery interface spoken as Microsoft Graph (see
 * delivery_graph.h, docs/graph.md).
 *
 * Every operation becomes a call on a queue; nothing is sent from inside an
 * operation. A deferred event source of idle priority flushes the queue once the
 * loop has dispatched everything else that was pending, so calls made in one
 * wake-up travel together: one ready call goes as a plain request, several share a
 * JSON $batch (at most GRAPH_BATCH_MAX). Exchange Online runs at most four requests
 * per mailbox and application at once, so at most MAILBOX_CONCURRENCY calls per
 * mailbox are in flight and at most MAX_REQUESTS HTTP requests; calls beyond that
 * wait on the queue and leave in the next batch — under load, creates and lookups
 * of many logs are batched without any added delay.
 *
 * Per call: an access token (oauth2), for To Do calls the mailbox's default list
 * (looked up once per mailbox and cached), a 401 answered by dropping the token and
 * sending once more with a fresh one, 429/503 with Retry-After answered by holding
 * back the mailbox's calls until then, and every answer classified into a
 * delivery_result on its own (a failing member of a batch fails only its item).
 *
 * Creates are not idempotent, and libcurl silently sends a request again when a
 * reused keep-alive connection dies before any answer — after the server may have
 * acted on it. So every request that carries a create goes on a connection of its
 * own (http_fresh: CURLOPT_FRESH_CONNECT and FORBID_REUSE, never reused), and an
 * event create carries the transactionId the queue gave it — the same for every
 * retry of one create — which Graph uses to drop a repeated create. */
#include "graph/delivery_graph.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "daemon/log.h"
#include "graph/graph_json.h"
#include "http/http_client.h"
#include "http/oauth2.h"

#define MAX_REQUESTS 4             /* HTTP requests to Graph in flight */
#define MAILBOX_CONCURRENCY 4      /* calls per mailbox in flight (Exchange Online's limit) */
#define PREFER_HEADER "IdType=\"ImmutableId\""

typedef enum graph_op { OP_FIND, OP_CREATE, OP_UPDATE, OP_REMOVE, OP_LIST } graph_op;

typedef struct graph_backend graph_backend;
typedef struct graph_call graph_call;

/* What we know about one mailbox. */
typedef struct graph_mailbox {
    struct graph_mailbox *next;
    char *address;             /* lower case: the key */
    char *escaped;             /* for URLs */
    char *list_id;             /* default To Do list, percent-encoded; NULL = not known */
    bool list_pending;         /* an OP_LIST call is under way */
    graph_call *waiting;       /* To Do calls waiting for list_id */
    uint64_t throttled_until;  /* CLOCK_MONOTONIC usec: Retry-After of a 429/503 */
    unsigned active;           /* calls in flight */
} graph_mailbox;

struct graph_call {
    graph_backend *b;
    graph_call *next;
    graph_op op;
    outlook_item_kind kind;
    graph_mailbox *box;
    const char *method;
    char *path;                /* "/users/..." below base_url, query included */
    char *suffix;              /* To Do calls: what follows "/todo/lists/{id}" */
    char *list_id;             /* To Do calls: the list the path names (percent-encoded) */
    char *ref_id;              /* update: the item id we were given */
    json_object *body;
    bool auth_retried;
    uint64_t token_generation;
    delivery_done_fn done;     /* NULL for OP_LIST (internal) */
    void *userdata;
};

/* One HTTP request in flight: a single call or a $batch of several. */
typedef struct graph_request {
    graph_backend *b;
    struct graph_request *prev, *next;
    bool batch;
    size_t n;
    graph_call *calls[GRAPH_BATCH_MAX];
} graph_request;

struct graph_backend {
    sd_event *event;
    http_client *http;
    http_client *http_fresh;   /* requests with a create: one connection each */
    oauth2_client *oauth;
    sd_event_source *flush;
    char *base_url;            /* without a trailing '/' */
    graph_mailbox *mailboxes;
    graph_call *ready, **ready_tail;
    bool stopped;              /* nothing more goes on the wire */
    graph_request *requests;
    size_t n_requests;         /* HTTP requests in flight */
    bool token_wanted;
};

/* The answer to one call, from a plain response or a $batch member. */
typedef struct graph_reply {
    bool transfer_ok;
    const char *failure;         /* transfer failures: "dns", "tls", "timeout", ... */
    const char *error;
    long status;
    const char *body;
    size_t body_len;
    int64_t retry_after_ms;
} graph_reply;

static void flush(graph_backend *b);
static void finish(graph_call *call, const delivery_result *r);

/* ---- small things ------------------------------------------------------------ */

static uint64_t now_usec(graph_backend *b)
{
    uint64_t now = 0;
    sd_event_now(b->event, CLOCK_MONOTONIC, &now);
    return now;
}

static void call_free(graph_call *call)
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

static void schedule_flush(graph_backend *b)
{
    sd_event_source_set_enabled(b->flush, SD_EVENT_ONESHOT);
}

static void enqueue(graph_backend *b, graph_call *call)
{
    call->next = NULL;
    *b->ready_tail = call;
    b->ready_tail = &call->next;
    schedule_flush(b);
}

static void fail_result(graph_call *call, delivery_result r)
{
    finish(call, &r);
}

static void fail_maybe_done(graph_call *call, delivery_outcome outcome, const char *code,
                            const char *reason, int64_t retry_after_ms, bool outcome_unknown)
{
    fail_result(call, (delivery_result){.outcome = outcome, .code = code, .reason = reason,
                                        .retry_after_ms = retry_after_ms,
                                        .outcome_unknown = outcome_unknown});
}

static void fail(graph_call *call, delivery_outcome outcome, const char *code,
                 const char *reason, int64_t retry_after_ms)
{
    fail_maybe_done(call, outcome, code, reason, retry_after_ms, false);
}

static graph_mailbox *mailbox_get(graph_backend *b, const char *address)
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
static void list_resolved(graph_mailbox *box, const char *list_id, const delivery_result *failure)
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
                finish(call, failure);
            else
                fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            continue;
        }
        free(call->list_id);
        call->list_id = strdup(box->list_id);
        if (!call->list_id || asprintf(&call->path, "/users/%s/todo/lists/%s%s", box->escaped,
                                       box->list_id, call->suffix) < 0) {
            call->path = NULL;
            fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            continue;
        }
        enqueue(call->b, call);
    }
}

static void finish(graph_call *call, const delivery_result *r)
{
    if (call->op == OP_LIST) {
        list_resolved(call->box, NULL, r);
        call_free(call);
        return;
    }
    call->done(r, call->userdata);
    call_free(call);
}

/* ---- answers ------------------------------------------------------------------ */

static const char *op_name(const graph_call *call)
{
    static const char *const names[] = {"lookup", "create", "update", "delete",
                                        "To Do list lookup"};
    return names[call->op];
}

static void on_success(graph_call *call, const graph_reply *rep, const char *code)
{
    graph_backend *b = call->b;
    delivery_result r = {.outcome = DELIVERY_OK, .retry_after_ms = -1, .code = code,
                         .reason = "ok"};
    char err[256], reason[512];
    char *id = NULL, *change_key = NULL, *task_ref = NULL;
    graph_id_list list = {0};
    outlook_item_ref *found = NULL;
    char **task_refs = NULL;

    switch (call->op) {
    case OP_REMOVE:
        break;
    case OP_LIST:
        if (graph_json_parse_collection(rep->body, rep->body_len, &list, err, sizeof err) < 0) {
            snprintf(reason, sizeof reason, "Microsoft Graph sent an unusable answer to the To Do "
                     "list lookup of %s: %s", call->box->address, err);
            fail(call, DELIVERY_TRANSIENT, code, reason, -1);
            return;
        }
        if (list.n == 0) {
            snprintf(reason, sizeof reason, "mailbox %s has no default Microsoft To Do list "
                     "(yet); will look again", call->box->address);
            graph_id_list_clear(&list);
            fail(call, DELIVERY_TRANSIENT, "NoDefaultList", reason, -1);
            return;
        }
        id = graph_url_escape(list.ids[0], false);
        graph_id_list_clear(&list);
        if (!id) {
            fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            return;
        }
        list_resolved(call->box, id, NULL);
        free(id);
        call_free(call);
        return;
    case OP_FIND:
        if (graph_json_parse_collection(rep->body, rep->body_len, &list, err, sizeof err) < 0)
            goto unusable;
        if (list.n > 0) {
            found = calloc(list.n, sizeof *found);
            task_refs = calloc(list.n, sizeof *task_refs);
            if (!found || !task_refs)
                goto oom;
        }
        for (size_t i = 0; i < list.n; i++) {
            if (call->kind == OUTLOOK_TASK) {
                char *task = graph_url_escape(list.ids[i], false);
                if (!task || asprintf(&task_refs[i], "%s/%s", call->list_id, task) < 0) {
                    free(task);
                    task_refs[i] = NULL;
                    goto oom;
                }
                free(task);
                found[i].item_id = task_refs[i];
            } else {
                found[i].item_id = list.ids[i];
                found[i].change_key = list.change_keys[i];
            }
        }
        r.found = found;
        r.n_found = list.n;
        break;
    case OP_CREATE:
    case OP_UPDATE:
        if (graph_json_parse_entity(rep->body, rep->body_len, &id, &change_key, err,
                                    sizeof err) < 0) {
            if (call->op == OP_CREATE)
                goto unusable;
            /* An update names the item we sent it to, whatever came back. */
            r.item.item_id = call->ref_id;
            break;
        }
        if (call->kind == OUTLOOK_TASK) {
            char *task = graph_url_escape(id, false);
            if (!task || asprintf(&task_ref, "%s/%s", call->list_id, task) < 0) {
                free(task);
                task_ref = NULL;
                goto oom;
            }
            free(task);
            r.item.item_id = task_ref;
        } else {
            r.item.item_id = id;
            r.item.change_key = change_key;
        }
        break;
    }
    finish(call, &r);
    goto out;
unusable:
    snprintf(reason, sizeof reason, "Microsoft Graph sent an unusable answer to the %s in %s "
             "(HTTP %ld): %s", op_name(call), call->box->address, rep->status, err);
    fail(call, DELIVERY_TRANSIENT, code, reason, -1);
    goto out;
oom:
    fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
out:
    for (size_t i = 0; task_refs && i < list.n; i++)
        free(task_refs[i]);
    free(task_refs);
    free(found);
    graph_id_list_clear(&list);
    free(id);
    free(change_key);
    free(task_ref);
    (void)b;
}

static void handle_reply(graph_call *call, const graph_reply *rep)
{
    graph_backend *b = call->b;
    graph_mailbox *box = call->box;
    char reason[1024], code[80], gcode[64], message[256];
    delivery_outcome outcome;

    if (!rep->transfer_ok) {
        snprintf(reason, sizeof reason, "cannot reach Microsoft Graph at %s: %s", b->base_url,
                 rep->error ? rep->error : "transfer failed");
        fail_maybe_done(call, DELIVERY_TRANSIENT, rep->failure ? rep->failure : "connection",
                        reason, rep->retry_after_ms,
                        delivery_outcome_unknown(false, rep->failure, 0));
        return;
    }
    snprintf(code, sizeof code, "HTTP %ld", rep->status);
    if (delivery_outcome_unknown(true, NULL, rep->status)) {
        snprintf(reason, sizeof reason, "a gateway in front of Microsoft Graph gave up waiting "
                 "(HTTP %ld)", rep->status);
        fail_maybe_done(call, DELIVERY_TRANSIENT, code, reason, rep->retry_after_ms, true);
        return;
    }
    gcode[0] = message[0] = '\0';
    if (rep->status >= 400 &&
        graph_json_parse_error(rep->body, rep->body_len, gcode, sizeof gcode, message,
                               sizeof message) == 0 && gcode[0])
        snprintf(code, sizeof code, "%s", gcode);
    if (rep->status >= 200 && rep->status < 300) {
        on_success(call, rep, code);
        return;
    }
    if (rep->status == 401) {
        if (!call->auth_retried) {
            /* The token expired early or was revoked: a fresh one, this call once more. */
            call->auth_retried = true;
            oauth2_invalidate(b->oauth, call->token_generation);
            log_debug("Microsoft Graph refused the access token (HTTP 401); fetching a new one");
            enqueue(b, call);
            return;
        }
        snprintf(reason, sizeof reason, "Microsoft Graph refused a freshly fetched access token "
                 "(HTTP 401%s%s%s%s): check the app registration's application permissions "
                 "(Calendars.ReadWrite, Tasks.ReadWrite.All), admin consent and [oauth2] scope",
                 gcode[0] ? " " : "", gcode, message[0] ? ": " : "", message);
        fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT, .code = code,
                                            .reason = reason,
                                            .retry_after_ms = rep->retry_after_ms,
                                            .auth_failed = true});
        return;
    }
    if ((rep->status == 429 || rep->status == 503) && rep->retry_after_ms > 0) {
        /* Throttling is per mailbox and application: hold back the mailbox's calls,
         * and the worker waits it out without spending an attempt (as for EWS). */
        uint64_t until = now_usec(b) + (uint64_t)rep->retry_after_ms * 1000;
        if (until > box->throttled_until)
            box->throttled_until = until;
        snprintf(reason, sizeof reason, "Microsoft Graph throttles %s (HTTP %ld%s%s%s); "
                 "waiting %" PRId64 " ms (Retry-After)",
                 rep->status == 429 ? box->address : "the service", rep->status,
                 gcode[0] ? " " : "", gcode, message[0] ? ": " : "", rep->retry_after_ms);
        fail_result(call, (delivery_result){
            .outcome = DELIVERY_TRANSIENT, .code = code, .reason = reason,
            .retry_after_ms = rep->retry_after_ms,
            .throttle = rep->status == 429 ? DELIVERY_THROTTLE_MAILBOX
                                           : DELIVERY_THROTTLE_SERVER});
        return;
    }
    if (rep->status == 404) {
        switch (call->op) {
        case OP_UPDATE:
        case OP_REMOVE:
            snprintf(reason, sizeof reason, "the %s is gone from %s (HTTP 404 %s)",
                     outlook_item_kind_name(call->kind), box->address, code);
            fail(call, DELIVERY_NOT_FOUND, code, reason, -1);
            return;
        case OP_FIND:
        case OP_CREATE:
            if (call->kind == OUTLOOK_TASK) {
                /* The list itself went away: look it up again next time. */
                if (box->list_id && call->list_id && strcmp(box->list_id, call->list_id) == 0) {
                    free(box->list_id);
                    box->list_id = NULL;
                }
                snprintf(reason, sizeof reason, "the default To Do list of %s is gone (HTTP "
                         "404 %s); it will be looked up again", box->address, code);
                fail(call, DELIVERY_TRANSIENT, code, reason, -1);
                return;
            }
            break;
        case OP_LIST:
            break;
        }
        snprintf(reason, sizeof reason, "Microsoft Graph knows no mailbox %s (HTTP 404 %s%s%s): "
                 "check the employee's email address", box->address, code,
                 message[0] ? ": " : "", message);
        fail(call, DELIVERY_PERMANENT, code, reason, -1);
        return;
    }
    if (rep->status == 400 || rep->status == 403 || rep->status == 405 || rep->status == 501)
        outcome = DELIVERY_PERMANENT;   /* asking again will not help */
    else
        outcome = DELIVERY_TRANSIENT;   /* 408, 409, 412, 423, 429, 5xx, ... */
    snprintf(reason, sizeof reason, "Microsoft Graph answered HTTP %ld%s%s%s%s to the %s in %s%s",
             rep->status, gcode[0] ? " " : "", gcode, message[0] ? ": " : "", message,
             op_name(call), box->address,
             rep->status == 403 ? " (is the mailbox within the app's access policy?)" : "");
    fail(call, outcome, code, reason, rep->retry_after_ms);
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
    schedule_flush(b);
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
    const char *headers[] = {authorization, "Accept: application/json",
                             "Prefer: " PREFER_HEADER, NULL};
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
        fail(calls[i], DELIVERY_TRANSIENT, "request", r == -ENOMEM ? "out of memory" :
             "cannot start the request to Microsoft Graph", -1);
}

static void on_token(const char *token, const char *error, void *userdata)
{
    graph_backend *b = userdata;
    b->token_wanted = false;
    if (token) {
        flush(b);
        return;
    }
    /* Everything waiting for a token fails alike; the worker backs off and retries. */
    graph_call *list = b->ready;
    b->ready = NULL;
    b->ready_tail = &b->ready;
    while (list) {
        graph_call *call = list;
        list = call->next;
        fail(call, DELIVERY_TRANSIENT, "OAuth2", error, -1);
    }
}

/* Takes the calls that may go now off the queue (at most GRAPH_BATCH_MAX, at most
 * MAILBOX_CONCURRENCY per mailbox in flight); calls of a throttled mailbox fail. */
static size_t take_ready(graph_backend *b, graph_call **out)
{
    uint64_t now = now_usec(b);
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
            fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT,
                                                .code = "throttled", .reason = reason,
                                                .retry_after_ms = wait_ms,
                                                .throttle = DELIVERY_THROTTLE_MAILBOX});
            p = &b->ready;   /* fail may have queued or removed calls: start over */
            continue;
        }
        unsigned planned = 0;
        for (size_t i = 0; i < n; i++)
            planned += out[i]->box == box;
        if (box->active + planned >= MAILBOX_CONCURRENCY) {
            p = &call->next;   /* stays queued until the mailbox has room */
            continue;
        }
        *p = call->next;
        if (!*p)
            b->ready_tail = p;
        call->next = NULL;
        out[n++] = call;
    }
    return n;
}

static void flush(graph_backend *b)
{
    while (b->stopped && b->ready) {
        graph_call *call = b->ready;
        b->ready = call->next;
        if (!b->ready)
            b->ready_tail = &b->ready;
        fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT, .code = "stopping",
                                            .reason = "followupd is stopping; not sent",
                                            .retry_after_ms = -1, .not_sent = true});
    }
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

static int on_flush(sd_event_source *source, void *userdata)
{
    (void)source;
    flush(userdata);
    return 0;
}

/* ---- the operations ------------------------------------------------------------- */

static graph_call *new_call(graph_backend *b, graph_op op, outlook_item_kind kind,
                            const char *mailbox, delivery_done_fn done, void *userdata, int *error)
{
    *error = -EINVAL;
    if (!mailbox || !*mailbox || (kind != OUTLOOK_APPOINTMENT && kind != OUTLOOK_TASK))
        return NULL;
    for (const unsigned char *p = (const unsigned char *)mailbox; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '/')
            return NULL;
    *error = -ENOMEM;
    graph_call *call = calloc(1, sizeof *call);
    if (!call)
        return NULL;
    call->box = mailbox_get(b, mailbox);
    if (!call->box) {
        free(call);
        return NULL;
    }
    call->b = b;
    call->op = op;
    call->kind = kind;
    call->done = done;
    call->userdata = userdata;
    return call;
}

/* Accepts a new call: counts it and queues it, or parks it until the mailbox's
 * default To Do list is known (call->suffix set, call->path NULL). */
static int submit(graph_backend *b, graph_call *call)
{
    graph_mailbox *box = call->box;
    if (call->path) {
        enqueue(b, call);
        return 0;
    }
    if (box->list_id) {
        call->list_id = strdup(box->list_id);
        if (!call->list_id || asprintf(&call->path, "/users/%s/todo/lists/%s%s", box->escaped,
                                       box->list_id, call->suffix) < 0) {
            call->path = NULL;
            call_free(call);
            return -ENOMEM;
        }
        enqueue(b, call);
        return 0;
    }
    call->next = box->waiting;   /* order among waiters does not matter */
    box->waiting = call;
    if (box->list_pending)
        return 0;
    graph_call *lookup = calloc(1, sizeof *lookup);
    char *filter = graph_url_escape("wellknownListName eq 'defaultList'", false);
    if (!lookup || !filter ||
        asprintf(&lookup->path, "/users/%s/todo/lists?$filter=%s", box->escaped, filter) < 0) {
        free(filter);
        if (lookup)
            lookup->path = NULL;
        free(lookup);
        box->waiting = call->next;
        call_free(call);
        return -ENOMEM;
    }
    free(filter);
    lookup->b = b;
    lookup->op = OP_LIST;
    lookup->kind = OUTLOOK_TASK;
    lookup->box = box;
    lookup->method = "GET";
    box->list_pending = true;
    enqueue(b, lookup);
    return 0;
}

/* "<list>/<task>" of a task's item id, both percent-encoded; -EINVAL when malformed. */
static int split_task_ref(const char *item_id, char **list, char **task)
{
    const char *slash = item_id ? strchr(item_id, '/') : NULL;
    *list = *task = NULL;
    if (!slash || slash == item_id || !slash[1] || strchr(slash + 1, '/'))
        return -EINVAL;
    for (const char *p = item_id; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-._~%/", *p))
            return -EINVAL;
    *list = strndup(item_id, (size_t)(slash - item_id));
    *task = strdup(slash + 1);
    if (!*list || !*task) {
        free(*list);
        free(*task);
        *list = *task = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* The path of an existing item: its event, or its task in the list it names. */
static int item_path(graph_call *call, const outlook_item_ref *ref)
{
    char *list = NULL, *task = NULL;
    int r;
    if (!ref || !ref->item_id || !*ref->item_id)
        return -EINVAL;
    if (call->kind == OUTLOOK_APPOINTMENT) {
        char *id = graph_url_escape(ref->item_id, false);
        r = id && asprintf(&call->path, "/users/%s/events/%s", call->box->escaped, id) >= 0
                ? 0 : -ENOMEM;
        free(id);
        if (r < 0)
            call->path = NULL;
        return r;
    }
    if ((r = split_task_ref(ref->item_id, &list, &task)) < 0)
        return r;
    if (asprintf(&call->path, "/users/%s/todo/lists/%s/tasks/%s", call->box->escaped, list,
                 task) < 0) {
        call->path = NULL;
        free(list);
        free(task);
        return -ENOMEM;
    }
    call->list_id = list;
    free(task);
    return 0;
}

static int graph_find(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                      delivery_done_fn done, void *userdata)
{
    graph_backend *b = impl;
    int error;
    graph_call *call = new_call(b, OP_FIND, kind, mailbox, done, userdata, &error);
    if (!call)
        return error;
    call->method = "GET";
    char *filter = kind == OUTLOOK_APPOINTMENT ? graph_json_event_filter(log_id)
                                                : graph_json_task_filter(log_id);
    char *escaped = filter ? graph_url_escape(filter, false) : NULL;
    int r;
    if (kind == OUTLOOK_APPOINTMENT)
        r = escaped ? asprintf(&call->path, "/users/%s/events?$filter=%s&$select=id,changeKey",
                               call->box->escaped, escaped) : -1;
    else
        r = escaped ? asprintf(&call->suffix, "/tasks?$filter=%s&$select=id", escaped) : -1;
    free(filter);
    free(escaped);
    if (r < 0) {
        call->path = call->suffix = NULL;
        call_free(call);
        return -ENOMEM;
    }
    return submit(b, call);
}

static int graph_create(void *impl, const char *mailbox, const outlook_item *item,
                        delivery_done_fn done, void *userdata)
{
    graph_backend *b = impl;
    int error, r;
    graph_call *call = new_call(b, OP_CREATE, item->kind, mailbox, done, userdata, &error);
    if (!call)
        return error;
    call->method = "POST";
    if (item->kind == OUTLOOK_APPOINTMENT) {
        unsigned char random[16];
        char transaction[40];
        const char *transaction_id = item->transaction_id;
        call->body = graph_json_event(item);
        if (!transaction_id) {   /* no stable id from the queue: at least not a repeat */
            if (getrandom(random, sizeof random, 0) != (ssize_t)sizeof random) {
                call_free(call);
                return -EIO;
            }
            graph_json_uuid(transaction, sizeof transaction, random);
            transaction_id = transaction;
        }
        if (call->body && json_object_object_add(call->body, "transactionId",
                                                 json_object_new_string(transaction_id)) < 0) {
            call_free(call);
            return -ENOMEM;
        }
        r = asprintf(&call->path, "/users/%s/events", call->box->escaped);
        if (r < 0)
            call->path = NULL;
    } else {
        call->body = graph_json_task(item, true);
        call->suffix = strdup("/tasks");
        r = call->suffix ? 0 : -1;
    }
    if (r < 0 || !call->body) {
        call_free(call);
        return -ENOMEM;
    }
    return submit(b, call);
}

static int graph_update(void *impl, const char *mailbox, const outlook_item_ref *ref,
                        const outlook_item *item, delivery_done_fn done, void *userdata)
{
    graph_backend *b = impl;
    int error;
    graph_call *call = new_call(b, OP_UPDATE, item->kind, mailbox, done, userdata, &error);
    if (!call)
        return error;
    call->method = "PATCH";
    if ((error = item_path(call, ref)) < 0) {
        call_free(call);
        return error;
    }
    call->ref_id = strdup(ref->item_id);
    call->body = item->kind == OUTLOOK_APPOINTMENT ? graph_json_event(item)
                                                    : graph_json_task(item, false);
    if (!call->ref_id || !call->body) {
        call_free(call);
        return -ENOMEM;
    }
    return submit(b, call);
}

static int graph_remove(void *impl, const char *mailbox, outlook_item_kind kind,
                        const outlook_item_ref *ref, delivery_done_fn done, void *userdata)
{
    graph_backend *b = impl;
    int error;
    graph_call *call = new_call(b, OP_REMOVE, kind, mailbox, done, userdata, &error);
    if (!call)
        return error;
    call->method = "DELETE";
    if ((error = item_path(call, ref)) < 0) {
        call_free(call);
        return error;
    }
    return submit(b, call);
}

/* ---- life ----------------------------------------------------------------------- */

void *delivery_graph_new(sd_event *event)
{
    graph_backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->event = sd_event_ref(event);
    b->ready_tail = &b->ready;
    b->http = http_client_new(event);
    b->http_fresh = http_client_new(event);
    b->oauth = oauth2_client_new(event);
    if (!b->http || !b->http_fresh || !b->oauth ||
        sd_event_add_defer(event, &b->flush, on_flush, b) < 0) {
        http_client_free(b->http);
        http_client_free(b->http_fresh);
        oauth2_client_free(b->oauth);
        sd_event_unref(b->event);
        free(b);
        return NULL;
    }
    /* After everything else pending in this wake-up, so its calls share one batch. */
    sd_event_source_set_priority(b->flush, SD_EVENT_PRIORITY_IDLE);
    sd_event_source_set_enabled(b->flush, SD_EVENT_OFF);
    return b;
}

static void graph_free(void *impl)
{
    graph_backend *b = impl;
    if (!b)
        return;
    http_client_free(b->http);   /* aborts requests in flight without their callbacks */
    http_client_free(b->http_fresh);
    while (b->requests) {
        graph_request *req = b->requests;
        b->requests = req->next;
        for (size_t i = 0; i < req->n; i++)
            call_free(req->calls[i]);
        free(req);
    }
    while (b->ready) {
        graph_call *call = b->ready;
        b->ready = call->next;
        call_free(call);
    }
    while (b->mailboxes) {
        graph_mailbox *box = b->mailboxes;
        b->mailboxes = box->next;
        while (box->waiting) {
            graph_call *call = box->waiting;
            box->waiting = call->next;
            call_free(call);
        }
        free(box->address);
        free(box->escaped);
        free(box->list_id);
        free(box);
    }
    oauth2_client_free(b->oauth);
    sd_event_source_disable_unref(b->flush);
    sd_event_unref(b->event);
    free(b->base_url);
    free(b);
}

static int graph_configure(void *impl, const config *cfg, char *err, size_t errlen)
{
    graph_backend *b = impl;
    const char *base = cfg->graph_base_url ? cfg->graph_base_url : "";
    size_t len = strlen(base);

    while (len > 0 && base[len - 1] == '/')
        len--;
    if (len == 0) {
        snprintf(err, errlen, "[graph] base_url is empty; the default is "
                              "https://graph.microsoft.com/v1.0");
        return -EINVAL;
    }
    int r = oauth2_configure(b->oauth, cfg, err, errlen);
    if (r < 0)
        return r;
    http_settings settings = {
        .auth = HTTP_AUTH_NONE,   /* the bearer token goes in a header of each request */
        .tls_verify = cfg->tls_verify,
        .ca_file = cfg->ca_file,
        .timeout_seconds = cfg->timeout_seconds,
        .max_response_bytes = GRAPH_RESPONSE_MAX_BYTES,
    };
    http_settings fresh = settings;
    /* In libcurl, not by a header: over HTTP/2 a "Connection: close" is dropped. */
    fresh.fresh_connection_per_request = true;
    char *url = strndup(base, len);
    if (!url || http_client_configure(b->http, &settings) < 0 ||
        http_client_configure(b->http_fresh, &fresh) < 0) {
        free(url);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (b->base_url && strcmp(b->base_url, url) != 0) {
        /* Another Graph: the cached To Do list ids may mean nothing there. */
        for (graph_mailbox *box = b->mailboxes; box; box = box->next) {
            free(box->list_id);
            box->list_id = NULL;
        }
    }
    free(b->base_url);
    b->base_url = url;
    return 0;
}

/* followupctl test-connection: a lookup in the mailbox's calendar for a log that
 * cannot exist (id 0) proves the token, the permissions and the mailbox. */
static int graph_probe(void *impl, const char *mailbox, delivery_done_fn done, void *userdata)
{
    return graph_find(impl, mailbox, OUTLOOK_APPOINTMENT, 0, done, userdata);
}

static void graph_stop(void *impl)
{
    graph_backend *b = impl;
    b->stopped = true;
    flush(b);
}

const delivery_ops delivery_graph_ops = {
    .stop = graph_stop,
    .probe = graph_probe,
    .find = graph_find,
    .create = graph_create,
    .update = graph_update,
    .remove = graph_remove,
    .configure = graph_configure,
    .free = graph_free,
};
