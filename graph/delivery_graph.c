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
 * retry of one create — which Graph uses to drop a repeated create.
 *
 * sync reads one page of a delta query (graph_delta.h) as a plain GET through the
 * same queue — token, throttling, stop — and follows a stored nextLink/deltaLink only
 * when it points into the configured base URL: our bearer token goes nowhere else. */
#include "graph/delivery_graph.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "daemon/log.h"
#include "graph/graph_backend.h"
#include "graph/graph_delta.h"

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
    call->box = graph_mailbox_get(b, mailbox);
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
        graph_queue_call(b, call);
        return 0;
    }
    if (box->list_id) {
        call->list_id = strdup(box->list_id);
        if (!call->list_id || asprintf(&call->path, "/users/%s/todo/lists/%s%s", box->escaped,
                                       box->list_id, call->suffix) < 0) {
            call->path = NULL;
            graph_call_free(call);
            return -ENOMEM;
        }
        graph_queue_call(b, call);
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
        graph_call_free(call);
        return -ENOMEM;
    }
    free(filter);
    lookup->b = b;
    lookup->op = OP_LIST;
    lookup->kind = OUTLOOK_TASK;
    lookup->box = box;
    lookup->method = "GET";
    box->list_pending = true;
    graph_queue_call(b, lookup);
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
        graph_call_free(call);
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
                graph_call_free(call);
                return -EIO;
            }
            graph_json_uuid(transaction, sizeof transaction, random);
            transaction_id = transaction;
        }
        if (call->body && json_object_object_add(call->body, "transactionId",
                                                 json_object_new_string(transaction_id)) < 0) {
            graph_call_free(call);
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
        graph_call_free(call);
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
        graph_call_free(call);
        return error;
    }
    call->ref_id = strdup(ref->item_id);
    call->body = item->kind == OUTLOOK_APPOINTMENT ? graph_json_event(item)
                                                    : graph_json_task(item, false);
    if (!call->ref_id || !call->body) {
        graph_call_free(call);
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
        graph_call_free(call);
        return error;
    }
    return submit(b, call);
}

/* ---- sync: Outlook -> CRM --------------------------------------------------------- */

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
/* One Prefer header with every preference: a second header line may go unread. Starts
 * in UTC, so that no time zone needs converting. */
#define DELTA_PREFER_TASKS \
    "Prefer: " PREFER_HEADER ", odata.maxpagesize=" STRINGIFY(GRAPH_DELTA_PAGE_SIZE)
#define DELTA_PREFER_EVENTS DELTA_PREFER_TASKS ", outlook.timezone=\"UTC\""

static const char *folder_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "To Do list" : "calendar";
}

static int graph_sync(void *impl, const char *mailbox, outlook_item_kind kind,
                      const char *position, delivery_sync_done_fn done, void *userdata)
{
    graph_backend *b = impl;
    int error;
    if (!done)
        return -EINVAL;
    graph_call *call = new_call(b, OP_FIND, kind, mailbox, NULL, userdata, &error);
    if (!call)
        return error;
    call->sync_done = done;
    call->method = "GET";
    call->prefer_header = kind == OUTLOOK_APPOINTMENT ? DELTA_PREFER_EVENTS : DELTA_PREFER_TASKS;
    if (position) {
        const char *why;
        error = graph_delta_link_path(b->base_url, position, kind, call->box->address,
                                      &call->path, &call->list_id, &why);
        if (error == -ENOMEM) {
            graph_call_free(call);
            return error;
        }
        if (error < 0) {
            /* Answered from the queue (never from inside the call) as position_invalid. */
            log_warning("Microsoft Graph: the stored delta position of the %s of %s is not "
                        "used: %s; the folder will be read afresh", folder_name(kind),
                        call->box->address, why);
            call->refused = why;
        }
        graph_queue_call(b, call);
        return 0;
    }
    if (kind == OUTLOOK_APPOINTMENT) {
        /* The window asked for is the one told with the first page. */
        if (graph_delta_calendar_window((int64_t)time(NULL), &call->window_from,
                                        &call->window_to))
            call->path = graph_delta_calendar_path(call->box->escaped, call->window_from,
                                                   call->window_to);
        error = call->path ? 0 : -ENOMEM;
    } else {
        error = (call->suffix = strdup(GRAPH_DELTA_TASKS_SUFFIX)) ? 0 : -ENOMEM;
    }
    if (error < 0) {
        graph_call_free(call);
        return error;
    }
    return submit(b, call);   /* tasks: once the default To Do list is known */
}

void graph_sync_reply(graph_call *call, const graph_reply *rep)
{
    graph_mailbox *box = call->box;
    graph_delta_page page;
    char err[256], reason[1024], code[80], gcode[64], message[256];

    if (!rep->transfer_ok) {
        graph_reply_handle(call, rep);
        return;
    }
    snprintf(code, sizeof code, "HTTP %ld", rep->status);
    switch (graph_delta_read(call->kind, call->list_id, rep->status, rep->body, rep->body_len,
                             &page, err, sizeof err)) {
    case GRAPH_DELTA_OTHER:
        graph_reply_handle(call, rep);   /* 401, throttling, 5xx, ...: as every call */
        return;
    case GRAPH_DELTA_GONE:
        if (graph_json_parse_error(rep->body, rep->body_len, gcode, sizeof gcode, message,
                                   sizeof message) == 0 && gcode[0])
            snprintf(code, sizeof code, "%s", gcode);
        if (call->kind == OUTLOOK_TASK && rep->status == 404 && box->list_id &&
            call->list_id && strcmp(box->list_id, call->list_id) == 0) {
            free(box->list_id);   /* the list went away: look it up again */
            box->list_id = NULL;
        }
        snprintf(reason, sizeof reason, "Microsoft Graph cannot go on reading the changes of "
                 "the %s of %s from the stored position (HTTP %ld %s); it is to be read afresh",
                 folder_name(call->kind), box->address, rep->status, code);
        call->position_invalid = true;
        graph_call_fail(call, DELIVERY_TRANSIENT, code, reason, -1);
        return;
    case GRAPH_DELTA_UNUSABLE:
        snprintf(reason, sizeof reason, "Microsoft Graph sent an unusable delta page for the %s "
                 "of %s (HTTP %ld): %s", folder_name(call->kind), box->address, rep->status, err);
        graph_call_fail(call, DELIVERY_TRANSIENT, code, reason, -1);
        return;
    case GRAPH_DELTA_PAGE:
        break;
    }
    if (page.n_unreadable > 0)
        log_warning("Microsoft Graph: %zu change(s) in the %s of %s cannot be read and are "
                    "skipped; the first: %s", page.n_unreadable, folder_name(call->kind),
                    box->address, page.unreadable);
    delivery_sync_result sync = {
        .result = {.outcome = DELIVERY_OK, .retry_after_ms = -1, .code = code, .reason = "ok"},
        .n_changes = page.n_changes,
        .changes = page.changes,
        .new_position = page.link,
        .more = page.more,
        /* tasks/delta lists the whole list; calendarView/delta only its window */
        .whole_folder = call->kind == OUTLOOK_TASK,
        .window_from = call->window_from,
        .window_to = call->window_to,
    };
    call->sync_done(&sync, call->userdata);
    graph_delta_page_clear(&page);
    graph_call_free(call);
}

/* ---- life ----------------------------------------------------------------------- */

static int on_flush(sd_event_source *source, void *userdata)
{
    (void)source;
    graph_queue_flush(userdata);
    return 0;
}

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
            graph_call_free(req->calls[i]);
        free(req);
    }
    while (b->ready) {
        graph_call *call = b->ready;
        b->ready = call->next;
        graph_call_free(call);
    }
    while (b->mailboxes) {
        graph_mailbox *box = b->mailboxes;
        b->mailboxes = box->next;
        while (box->waiting) {
            graph_call *call = box->waiting;
            box->waiting = call->next;
            graph_call_free(call);
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
    graph_queue_flush(b);
}

const delivery_ops delivery_graph_ops = {
    .stop = graph_stop,
    .probe = graph_probe,
    .find = graph_find,
    .create = graph_create,
    .update = graph_update,
    .remove = graph_remove,
    .sync = graph_sync,
    .configure = graph_configure,
    .free = graph_free,
};
