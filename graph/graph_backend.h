/* graph back end internals — shared by the files of the Graph back end only:
 * delivery_graph.c (the operations and the back end's life), graph_queue.c (the
 * queue, the mailboxes and sending), graph_reply.c (answers → delivery results);
 * graph_delta.c (delta queries, pure) stands apart. */
#ifndef FOLLOWUPD_GRAPH_BACKEND_H
#define FOLLOWUPD_GRAPH_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "daemon/delivery.h"
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
    delivery_done_fn done;     /* NULL for OP_LIST (internal) and sync calls */
    void *userdata;
    /* A sync call (a delta page, op OP_FIND): answered through sync_done, read by
     * graph_sync_reply, always a plain request (never in a $batch). */
    delivery_sync_done_fn sync_done;
    const char *prefer_header; /* "Prefer: ..." of a plain request; NULL: PREFER_HEADER's */
    const char *refused;       /* answered without sending, for this reason (static text) */
    bool position_invalid;     /* sync: the failure means "read the folder afresh" */
    int64_t window_from, window_to;   /* calendar read afresh: the window asked for */
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

/* ---- graph_queue.c ---------------------------------------------------------- */

/* The loop's time (CLOCK_MONOTONIC, usec) for throttling deadlines. */
uint64_t graph_now_usec(graph_backend *b);
void graph_call_free(graph_call *call);
/* Hands the call's result to its caller (or to the mailbox's waiting To Do calls,
 * for a list lookup) and frees the call. */
void graph_call_finish(graph_call *call, const delivery_result *r);
void graph_call_fail_result(graph_call *call, delivery_result r);
void graph_call_fail_maybe_done(graph_call *call, delivery_outcome outcome, const char *code,
                                const char *reason, int64_t retry_after_ms,
                                bool outcome_unknown);
void graph_call_fail(graph_call *call, delivery_outcome outcome, const char *code,
                     const char *reason, int64_t retry_after_ms);
/* The mailbox of address (case folded), made on first use; NULL: out of memory. */
graph_mailbox *graph_mailbox_get(graph_backend *b, const char *address);
void graph_mailbox_list_resolved(graph_mailbox *box, const char *list_id,
                                 const delivery_result *failure);
/* Puts the call on the ready queue; it leaves with the next flush. */
void graph_queue_call(graph_backend *b, graph_call *call);
void graph_queue_schedule(graph_backend *b);
/* Sends what may go now; with the back end stopped, fails what waits as not sent. */
void graph_queue_flush(graph_backend *b);

/* ---- delivery_graph.c ------------------------------------------------------- */

/* Reads the answer to a sync call (a delta page) and finishes the call; what is not
 * particular to delta queries goes to graph_reply_handle. */
void graph_sync_reply(graph_call *call, const graph_reply *rep);

/* ---- graph_reply.c ---------------------------------------------------------- */

/* Classifies one answer (a plain response or a $batch member) and finishes the call,
 * or queues it once more (a 401 with a stale token). */
void graph_reply_handle(graph_call *call, const graph_reply *rep);

#endif
