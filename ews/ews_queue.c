/* ews queue — the EWS back end's calls on their way (see delivery_ews.c): calls wait
 * in a FIFO; a flush timer (2 ms for creates, to gather batch-mates) sends them, at
 * most [delivery] concurrency posts at once, every waiting create for one mailbox
 * and kind in one CreateItem. A sync always travels alone. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/log.h"
#include "ews/ews_backend.h"
#include "ews/ews_sync.h"

void ews_call_free(ews_call *call)
{
    ews_sync_page_free(call->sync_page);
    free(call->mailbox);
    free(call->body);
    free(call);
}

void ews_post_free(ews_post *post)
{
    if (post->prev)
        post->prev->next = post->next;
    else if (post->backend->on_their_way == post)
        post->backend->on_their_way = post->next;
    if (post->next)
        post->next->prev = post->prev;
    for (size_t i = 0; i < post->n_calls; i++)
        ews_call_free(post->calls[i]);
    free(post->calls);
    free(post->body);
    free(post);
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
    http_done_fn on_answer = post->calls[0]->kind == CALL_SYNC ? ews_sync_on_answer
                                                                : ews_post_on_answer;
    int r = body ? http_client_post(client, b->url, "text/xml; charset=utf-8", body, post->len,
                                    headers, on_answer, post)
                 : -ENOMEM;
    if (token)
        explicit_bzero(authorization, sizeof authorization);
    if (r < 0) {
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "request", .reason = "cannot start the request"};
        ews_post_finish(post, &failed, NULL);
    }
}

static const delivery_result not_sent_result = {
    .outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1, .code = "stopping",
    .reason = "followupd is stopping; not sent", .not_sent = true};

void ews_post_on_token(const char *token, const char *error, void *userdata)
{
    ews_post *post = userdata;
    char reason[512];

    if (!token) {
        snprintf(reason, sizeof reason, "no OAuth2 token: %s", error ? error : "unknown error");
        delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                  .code = "oauth2", .reason = reason};
        ews_post_finish(post, &failed, NULL);
        return;
    }
    if (post->backend->stopped) {
        ews_post_finish(post, &not_sent_result, NULL);
        return;
    }
    oauth2_cached_token(post->backend->oauth, &post->token_generation);
    send_post(post, token);
}

/* Same time zone (NULL equals NULL): one CreateItem carries one TimeZoneContext. */
static bool same_zone(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Takes the head of the queue and, for a create, every waiting create for the same
 * mailbox, kind and time zone (up to batch_size) into one post. */
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
                      same_zone(call->item->time_zone, head->item->time_zone) &&
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
    ews_request_options opt = ews_backend_options(b, post->calls[0]->mailbox);
    post->body = ews_request_create_items(&opt, items, post->n_calls, &post->len);
    free(items);
    return post->body != NULL;
}

/* Sends waiting requests while fewer than max_in_flight are on their way. */
void ews_queue_dispatch(ews_backend *b)
{
    while (b->stopped && b->waiting_head) {
        ews_call *call = b->waiting_head;
        b->waiting_head = call->next;
        if (!b->waiting_head)
            b->waiting_tail = NULL;
        call->done(&not_sent_result, call->userdata);
        ews_call_free(call);
    }
    while (b->waiting_head && b->in_flight < b->max_in_flight) {
        ews_post *post = next_post(b);
        if (!post)
            return;   /* out of memory: the flush timer or the next answer tries again */
        b->in_flight++;
        post->next = b->on_their_way;
        if (post->next)
            post->next->prev = post;
        b->on_their_way = post;
        if (!build_post_body(b, post)) {
            delivery_result failed = {.outcome = DELIVERY_PERMANENT, .retry_after_ms = -1,
                                      .code = "request",
                                      .reason = "the request could not be built (an item "
                                                "field is not valid XML or out of range)"};
            ews_post_finish(post, &failed, NULL);
            continue;
        }
        if (log_debug_enabled())
            log_debug("EWS request to %s (%s, %zu item%s, %zu bytes)", b->url,
                      post->anchor + strlen("X-AnchorMailbox: "), post->n_calls,
                      post->n_calls == 1 ? "" : "s", post->len);
        if (b->use_oauth) {
            if (oauth2_with_token(b->oauth, ews_post_on_token, post) < 0) {
                delivery_result failed = {.outcome = DELIVERY_TRANSIENT, .retry_after_ms = -1,
                                          .code = "oauth2", .reason = "cannot ask for a token"};
                ews_post_finish(post, &failed, NULL);
            }
            continue;
        }
        send_post(post, NULL);
    }
}

/* Creates wait this long for batch-mates (cf. Nagle): saves requests under load,
 * costs a new follow-up 2 ms. */
#define CREATE_COALESCE_USEC 2000

/* Arms the flush to fire within delay, never later than it is already due. */
static int schedule_flush(ews_backend *b, uint64_t delay_usec)
{
    uint64_t due = loop_timer_now_usec() + delay_usec;
    if (b->flush_due_usec != 0 && b->flush_due_usec <= due)
        return 0;
    b->flush_due_usec = due;
    return loop_timer_arm(b->flush, delay_usec);
}

void ews_queue_on_flush(void *userdata)
{
    ews_backend *b = userdata;
    b->flush_due_usec = 0;
    ews_queue_dispatch(b);
}

/* A call for mailbox, or NULL (-errno in *error): takes body either way. */
static ews_call *new_call(const char *mailbox, char *body, int *error)
{
    /* A mailbox address with a line break would forge headers: refuse it. */
    if (strpbrk(mailbox, "\r\n")) {
        free(body);
        *error = -EINVAL;
        return NULL;
    }
    ews_call *call = calloc(1, sizeof *call);
    if (!call || !(call->mailbox = strdup(mailbox))) {
        free(call);
        free(body);
        *error = -ENOMEM;
        return NULL;
    }
    call->body = body;
    return call;
}

/* Appends the call to the queue; it leaves on a later loop turn. */
static int enqueue(ews_backend *b, ews_call *call)
{
    if (b->waiting_tail)
        b->waiting_tail->next = call;
    else
        b->waiting_head = call;
    b->waiting_tail = call;
    bool coalesce = call->kind == CALL_CREATE && b->batch_size > 1;
    return schedule_flush(b, coalesce ? CREATE_COALESCE_USEC : 0);
}

/* Queues a call. It leaves on a later loop turn, so that creates queued in this one
 * for the same mailbox travel together. */
int ews_queue_call(ews_backend *b, ews_call_kind kind, const char *mailbox, char *body,
                   size_t len, const outlook_item *item, delivery_done_fn done, void *userdata)
{
    int error = 0;
    if (kind != CALL_CREATE && !body)
        return -ENOMEM;
    ews_call *call = new_call(mailbox, body, &error);
    if (!call)
        return error;
    call->kind = kind;
    call->done = done;
    call->userdata = userdata;
    call->len = len;
    call->item = item;
    return enqueue(b, call);
}

int ews_queue_sync(ews_backend *b, const char *mailbox, outlook_item_kind kind, char *body,
                   size_t len, delivery_sync_done_fn done, void *userdata)
{
    int error = 0;
    if (!body)
        return -ENOMEM;
    ews_call *call = new_call(mailbox, body, &error);
    if (!call)
        return error;
    call->kind = CALL_SYNC;
    call->done = ews_sync_call_done;
    call->userdata = call;
    call->sync_done = done;
    call->sync_userdata = userdata;
    call->sync_kind = kind;
    call->len = len;
    return enqueue(b, call);
}
