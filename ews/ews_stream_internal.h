/* ews_stream internals — shared by the files of the EWS back end's watch only:
 * ews_stream.c (the set of mailboxes, its groups, the pass that acts, life),
 * ews_stream_call.c (Subscribe, Unsubscribe, headers, failures) and ews_stream_conn.c
 * (the GetStreamingEvents connections). See ews_stream.c for how they work together. */
#ifndef FOLLOWUPD_EWS_STREAM_INTERNAL_H
#define FOLLOWUPD_EWS_STREAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ews/ews_backend.h"
#include "ews/ews_stream.h"
#include "ews/ews_stream_xml.h"
#include "http/http_client.h"
#include "http/loop_timer.h"

#define USEC_PER_SEC UINT64_C(1000000)
#define GROUP_SIZE 200                    /* Microsoft: at most 200 per connection */
#define CALLS_MAX 4                       /* Subscribe/Unsubscribe requests at once */
#define CONNECTION_MINUTES 30
#define CONNECTION_SLACK_SECONDS 120
#define STREAM_IDLE_SECONDS 180           /* heartbeats come every 30 s or so */
#define JOIN_DEBOUNCE_USEC (1 * USEC_PER_SEC)
#define JOIN_WAIT_MAX_USEC (10 * USEC_PER_SEC)
#define RETIRE_GRACE_USEC (60 * USEC_PER_SEC)
#define SHORT_LIFE_USEC (10 * USEC_PER_SEC)     /* a connection closed sooner failed */
#define SUBSCRIPTION_SHORT_LIFE_USEC (60 * USEC_PER_SEC)   /* lost sooner: back off */
#define RETRY_FIRST_MS 5000
#define RETRY_MAX_MS (30 * 60 * 1000)
#define RETRY_PERMANENT_MS (15 * 60 * 1000)  /* no such mailbox, access denied, ... */
#define STREAM_RETRY_FIRST_MS 1000
#define STREAM_RETRY_MAX_MS (5 * 60 * 1000)
#define ANSWER_MAX_BYTES (256u * 1024u)
#define ADDRESS_MAX 320

struct watch_group;
struct watch_call;

typedef struct watch_mailbox {
    char *address;                   /* lower case */
    struct watch_group *group;
    char *subscription_id;           /* NULL: to subscribe (at retry_at) */
    struct watch_call *call;         /* its Subscribe on the way */
    struct watch_mailbox *next_changed;
    uint64_t retry_at, subscribed_at;
    unsigned failures;               /* Subscribe failed in a row */
    unsigned losses;                 /* subscriptions lost soon after being made */
    size_t order;                    /* watch(): its place in the daemon's list */
    bool wanted, duplicate, on_stream, changed_pending;
    char problem[64];                /* the code last logged; "" when fine */
} watch_mailbox;

typedef struct watch_stream {
    struct ews_stream *owner;
    struct watch_group *group;       /* NULL once the group is gone */
    bool retired;
    http_request *request;
    ews_stream_splitter splitter;
    long status;
    char *error_body;                /* the answer when status is not 200 */
    size_t error_len;
    bool ok_seen, closed_seen, broken, lost_subscriptions;
    char error_code[64];             /* an error of the connection as a whole */
    int64_t back_off_ms;
    uint64_t opened_at, retire_at;
    struct watch_stream *next;       /* in owner->retired */
    char problem[256];
} watch_stream;

typedef struct watch_group {
    unsigned number;                 /* for logs */
    watch_mailbox *members[GROUP_SIZE];
    size_t n;
    char *cookie;                    /* X-BackEndOverrideCookie */
    bool affinity_known;             /* a Subscribe was answered: the rest may go at once */
    size_t subscribing;
    watch_stream *stream;
    uint64_t stale_since, reopen_at; /* members not on the connection; 0: none */
    unsigned stream_failures;
    bool gap;                        /* events may have been lost: report all once up */
    char problem[64];
} watch_group;

typedef struct watch_call {
    struct ews_stream *owner;
    watch_mailbox *mailbox;          /* Subscribe: NULL once it left the set */
    watch_group *group;              /* Subscribe: NULL once gone */
    bool unsubscribe;
    char *address;
    char *subscription_id, *anchor, *cookie;   /* Unsubscribe */
    uint64_t token_generation;
    http_request *request;
    char *answer;
    size_t answer_len;
    bool too_large;
    char *set_cookie;
    struct watch_call *prev, *next;
} watch_call;

typedef struct ews_stream {
    ews_backend *backend;
    struct ews_stream *next_registered;
    delivery_changed_fn changed;
    void *userdata;
    watch_mailbox **mailboxes;       /* sorted by address */
    size_t n_mailboxes, cap_mailboxes;
    watch_group **groups;
    size_t n_groups, cursor;
    unsigned next_group_number;
    watch_call *calls;               /* on the way */
    size_t n_calls;
    watch_call *unsubscribes, *unsubscribes_tail;   /* waiting */
    watch_stream *retired;
    watch_mailbox *changed_head, *changed_tail;
    loop_timer *kick;
    uint64_t kick_due;
    uint64_t pause_until;            /* Exchange itself failed: nothing goes before */
    unsigned pause_failures;
    char pause_problem[64];
    bool waiting_for_token;          /* an OAuth2 token is asked for; on_token goes on */
    size_t invalid_logged;
    bool stopped;
} ews_stream;

static inline uint64_t ews_stream_now_usec(void)
{
    return loop_timer_now_usec();
}

static inline uint64_t ews_stream_backoff_ms(unsigned failures, uint64_t first, uint64_t max)
{
    uint64_t ms = first << (failures > 1 ? (failures - 1 > 20 ? 20 : failures - 1) : 0);
    return ms < max ? ms : max;
}

static inline uint64_t ews_stream_later(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Times are CLOCK_MONOTONIC microseconds (loop_timer's clock). */
/* ---- ews_stream.c --------------------------------------------------------------- */

/* The watcher of back end b, NULL before its first watch(). */
ews_stream *ews_stream_of(const ews_backend *b);
/* Runs the pass at `at`, unless it runs sooner already. */
void ews_stream_schedule(ews_stream *s, uint64_t at);
/* changed(mb) on the next pass (once, however often asked meanwhile). */
void ews_stream_queue_changed(ews_stream *s, watch_mailbox *mb);

/* ---- ews_stream_call.c ---------------------------------------------------------- */

/* The bearer token to send ("" without OAuth2), or NULL while one is fetched (the
 * pass runs again when it is there). */
const char *ews_stream_token(ews_stream *s, uint64_t *generation);
/* POSTs body (taken) to Exchange with a group's affinity headers; shape gives the
 * timeouts and callbacks. */
int ews_stream_post(ews_stream *s, char *body, size_t len, const char *anchor,
                    const char *cookie, const char *token, const http_stream_request *shape,
                    http_request **handle);
/* Header lines: the X-BackEndOverrideCookie a Set-Cookie sets (malloc'd), else NULL;
 * the status of a status line, else 0. */
char *ews_stream_affinity_cookie(const char *line, size_t len);
long ews_stream_http_status(const char *line, size_t len);
void ews_stream_queue_unsubscribe(ews_stream *s, const char *address, const char *id,
                                  const char *anchor, const char *cookie);
void ews_stream_start_unsubscribes(ews_stream *s, const char *token);
/* Subscribes the mailboxes due; returns when the next one is due (UINT64_MAX: none, or
 * answers on their way run the pass again). */
uint64_t ews_stream_start_subscribes(ews_stream *s, const char *token, uint64_t generation,
                                     uint64_t now);
void ews_stream_call_unlink(ews_stream *s, watch_call *call);
void ews_stream_call_free(watch_call *call);

/* ---- ews_stream_conn.c ---------------------------------------------------------- */

/* One GetStreamingEvents for the group's subscribed members; the one open before is
 * retired. */
void ews_stream_open(ews_stream *s, watch_group *g, const char *token);
/* Ends a connection without its callbacks and frees it. */
void ews_stream_cancel(ews_stream *s, watch_stream *ws);

#endif
