/* delivery — what the daemon asks of a mail back end (EWS today, Graph next):
 * find, create, update and remove the appointment or task of one contact log in one
 * mailbox. Results come back asynchronously, already classified, so the queue and
 * policy code never sees SOAP, JSON or HTTP. */
#ifndef FOLLOWUPD_DELIVERY_H
#define FOLLOWUPD_DELIVERY_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/outlook_item.h"

typedef enum delivery_outcome {
    DELIVERY_OK,
    DELIVERY_NOT_FOUND,      /* the item is gone (deleted by the user in Outlook) */
    DELIVERY_TRANSIENT,      /* try again later */
    DELIVERY_PERMANENT,      /* retrying will not help: park the log */
} delivery_outcome;

/* Who a server's "wait" applies to. */
typedef enum delivery_throttle {
    DELIVERY_THROTTLE_NONE,
    DELIVERY_THROTTLE_MAILBOX,   /* this mailbox's budget (EWS ErrorServerBusy) */
    DELIVERY_THROTTLE_SERVER,    /* every request (HTTP 503/429 with Retry-After) */
} delivery_throttle;

typedef struct delivery_result {
    delivery_outcome outcome;
    int64_t retry_after_ms;  /* the server asked us to wait at least this long; -1 none */
    delivery_throttle throttle;
    const char *reason;      /* readable, for logs and followupctl status */
    const char *code;        /* "NoError", "ErrorServerBusy", "HTTP 503", "timeout", ... */
    /* The request may have reached the server and may still be performed (timeout,
     * connection lost after sending, a gateway's 502/504): the next attempt waits
     * the settle time so that it sees what this one did. */
    bool outcome_unknown;
    /* The service account itself was refused (HTTP 401/403 for it): a state of the
     * whole back end, never a verdict on this log. */
    bool auth_failed;
    /* The request never left (the back end stopped sending): nothing happened. */
    bool not_sent;
    outlook_item_ref item;       /* create/update: the item as it is now */
    size_t n_found;          /* find: items carrying the log's naming property */
    const outlook_item_ref *found;
} delivery_result;

typedef void (*delivery_done_fn)(const delivery_result *result, void *userdata);

/* Whether a failed HTTP exchange may still have been performed by the server:
 * the request went out (timeout, broken transfer, an answer too large to read) or
 * a gateway gave up waiting for the server (502, 504). DNS, connect and TLS
 * failures happen before anything is sent. */
static inline bool delivery_outcome_unknown(bool transfer_ok, const char *failure, long status)
{
    if (!transfer_ok)
        return !failure || strcmp(failure, "timeout") == 0 ||
               strcmp(failure, "transfer") == 0 || strcmp(failure, "too-large") == 0;
    return status == 502 || status == 504;
}

/* Outlook -> CRM (SPEC section 7): one change read back from a mailbox folder. The
 * back end reports what the item says now; the database tells ours from theirs (change
 * keys), changes from no-ops, and applies or refuses. */
typedef struct delivery_change {
    const char *item_id;
    const char *change_key;  /* the item's version now; NULL for a deletion */
    const char *what;        /* "moved", "completed" or "deleted" */
    /* "moved": an appointment's new start as UTC "YYYY-MM-DDTHH:MM:SSZ"; a task's
     * due date as "YYYY-MM-DD" (the database keeps the log's time of day). */
    const char *new_value;
} delivery_change;

typedef struct delivery_sync_result {
    delivery_result result;        /* outcome, reason, code, retry_after_ms, throttle */
    /* The stored position cannot be resumed from (EWS ErrorInvalidSyncStateData,
     * Graph 410 Gone): the folder is to be read afresh. */
    bool position_invalid;
    size_t n_changes;
    const delivery_change *changes;
    /* The position after these changes, to store with them (opaque text: an EWS
     * SyncState, a Graph nextLink/deltaLink); NULL keeps the old one. */
    const char *new_position;
    bool more;                     /* more changes wait: sync again from new_position */
    /* Read afresh, the pages list every item of the folder (EWS; Graph's To Do list),
     * so an item of ours they do not list is gone. false: a window only (Graph's
     * calendarView), which says nothing of the items outside it. */
    bool whole_folder;
    /* Not whole_folder: a read afresh lists every item whose time lies in this window
     * (Unix seconds), told on the page of the request that opened it; 0 and 0 on the
     * other pages. */
    int64_t window_from, window_to;
} delivery_sync_result;

typedef void (*delivery_sync_done_fn)(const delivery_sync_result *result, void *userdata);

/* A hint from Exchange (EWS streaming notifications): something changed in mailbox,
 * sync it soon. mailbox is lower case. A lost hint costs latency, never a change: the
 * daemon also syncs every watched mailbox now and then. */
typedef void (*delivery_changed_fn)(const char *mailbox, void *userdata);

typedef struct delivery_ops {
    int (*find)(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                delivery_done_fn done, void *userdata);
    int (*create)(void *impl, const char *mailbox, const outlook_item *item,
                  delivery_done_fn done, void *userdata);
    int (*update)(void *impl, const char *mailbox, const outlook_item_ref *ref,
                  const outlook_item *item, delivery_done_fn done, void *userdata);
    int (*remove)(void *impl, const char *mailbox, outlook_item_kind kind,
                  const outlook_item_ref *ref, delivery_done_fn done, void *userdata);
    /* One harmless call that proves URL, TLS, credentials and access to mailbox. */
    int (*probe)(void *impl, const char *mailbox, delivery_done_fn done, void *userdata);
    /* One page of the changes in mailbox's folder of kind (calendar, tasks) since
     * position (NULL: every item there now, as a read afresh). NULL when the back end
     * cannot read changes. */
    int (*sync)(void *impl, const char *mailbox, outlook_item_kind kind, const char *position,
                delivery_sync_done_fn done, void *userdata);
    /* The mailboxes to watch for changes, all of them each call (the back end
     * subscribes the new, drops the gone); changed() is called for a mailbox with news
     * and for every mailbox whose subscription was (re)made, since events may have
     * been missed meanwhile. n == 0 stops watching. NULL when the back end has no
     * notifications (Graph: the daemon polls). */
    int (*watch)(void *impl, const char *const *mailboxes, size_t n,
                 delivery_changed_fn changed, void *userdata);
    int (*configure)(void *impl, const config *cfg, char *err, size_t errlen);
    /* The daemon is stopping: nothing more goes on the wire. Calls still waiting
     * are answered now with not_sent; requests already sent are answered as usual. */
    void (*stop)(void *impl);
    void (*free)(void *impl);
} delivery_ops;

typedef struct delivery {
    const delivery_ops *ops;
    void *impl;
} delivery;

/* The back end chosen by [exchange] api. Returns NULL with the reason in err. */
delivery *delivery_new(sd_event *event, const config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void delivery_free(delivery *d);

/* Each call returns 0 (done will be called exactly once, later) or -errno. */
static inline int delivery_find(delivery *d, const char *mailbox, outlook_item_kind kind,
                                int64_t log_id, delivery_done_fn done, void *userdata)
{
    return d->ops->find(d->impl, mailbox, kind, log_id, done, userdata);
}

static inline int delivery_create(delivery *d, const char *mailbox, const outlook_item *item,
                                  delivery_done_fn done, void *userdata)
{
    return d->ops->create(d->impl, mailbox, item, done, userdata);
}

static inline int delivery_update(delivery *d, const char *mailbox, const outlook_item_ref *ref,
                                  const outlook_item *item, delivery_done_fn done, void *userdata)
{
    return d->ops->update(d->impl, mailbox, ref, item, done, userdata);
}

static inline int delivery_remove(delivery *d, const char *mailbox, outlook_item_kind kind,
                                  const outlook_item_ref *ref, delivery_done_fn done,
                                  void *userdata)
{
    return d->ops->remove(d->impl, mailbox, kind, ref, done, userdata);
}

static inline int delivery_probe(delivery *d, const char *mailbox, delivery_done_fn done,
                                 void *userdata)
{
    if (!d->ops->probe)
        return -EOPNOTSUPP;
    return d->ops->probe(d->impl, mailbox, done, userdata);
}

static inline int delivery_sync(delivery *d, const char *mailbox, outlook_item_kind kind,
                                const char *position, delivery_sync_done_fn done,
                                void *userdata)
{
    if (!d->ops->sync)
        return -EOPNOTSUPP;
    return d->ops->sync(d->impl, mailbox, kind, position, done, userdata);
}

static inline int delivery_watch(delivery *d, const char *const *mailboxes, size_t n,
                                 delivery_changed_fn changed, void *userdata)
{
    if (!d->ops->watch)
        return -EOPNOTSUPP;
    return d->ops->watch(d->impl, mailboxes, n, changed, userdata);
}

static inline int delivery_configure(delivery *d, const config *cfg, char *err, size_t errlen)
{
    return d->ops->configure(d->impl, cfg, err, errlen);
}

static inline void delivery_stop(delivery *d)
{
    d->ops->stop(d->impl);
}

#endif
