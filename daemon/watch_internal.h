/* watch_internal.h — what watch.c (which mailboxes, when) and watch_read.c (reading
 * one mailbox, page by page, into the database) share. Not for other modules. */
#ifndef FOLLOWUPD_WATCH_INTERNAL_H
#define FOLLOWUPD_WATCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/watch.h"
#include "http/loop_timer.h"

/* How often the list of watched mailboxes is read again (new mailboxes get watched,
 * SyncFromOutlook switched on or off is seen). */
#define LIST_INTERVAL_MS 10000
/* With notifications, every mailbox is still read this often: a lost hint. */
#define BACKSTOP_INTERVAL_MS (15 * 60 * 1000)
/* EWS without notifications (streaming refused): read every mailbox this often. */
#define EWS_POLL_INTERVAL_MS 10000
/* Mailboxes read at once. */
#define MAX_READS 4
/* After a failed read: 5 s, doubling, at most 5 minutes. */
#define RETRY_FIRST_MS 5000
#define RETRY_MAX_MS (5 * 60 * 1000)
/* Pages of one folder in one chain; more wait for the next turn (never spin). */
#define MAX_PAGES 50
/* A page with a change put off (a pass over its log under way) is read again then. */
#define IN_FLIGHT_RETRY_MS 2000

typedef struct mailbox_watch {
    char *mailbox;
    char *position[2];           /* by outlook_item_kind; NULL: read afresh */
    bool listed;                 /* in the database's latest list */
    bool due;                    /* to be read as soon as a slot is free */
    bool busy;                   /* a chain is reading it */
    bool again;                  /* a hint came while busy */
    bool told;                   /* the back end told of a change: read before others */
    int64_t last_read_ms;        /* monotonic; 0: never read by this daemon */
    int64_t not_before_ms;       /* after a failure */
    int failures;
} mailbox_watch;

/* One chain: the reading of one mailbox. */
typedef struct read_chain {
    watch *w;
    mailbox_watch *box;          /* kept by the watch while busy */
    outlook_item_kind kind;
    int pages;
    bool reset_done;             /* read afresh once after an invalid position */
    int64_t read_again_at_ms;    /* > 0: read the mailbox again then (a change put off) */
    /* A folder read afresh from its first page in this chain: when it started (the
     * database's clock) and the ids it listed, to find what went meanwhile. */
    char *read_started;
    int folder_pages;            /* pages of the folder read in this chain */
    bool whole_folder;
    int64_t window_from, window_to;   /* not whole_folder: the window read (Unix s) */
    char **seen;
    size_t n_seen, seen_cap;
    char *new_position;          /* of the page on its way to the database */
    bool more;
    size_t n;                    /* the page's changes, for the log lines */
    char **whats;
} read_chain;

struct watch {
    sd_event *event;
    db *database;
    delivery *backend;
    bool graph;
    int poll_interval_ms;
    bool connected;
    bool stopped;
    bool listing;                /* a list query is on its way */
    bool notifications;          /* watch() accepted by the back end */
    bool notifications_tried;
    mailbox_watch **boxes;
    size_t n_boxes;
    size_t reads;                /* chains running */
    read_chain *chains[MAX_READS];
    loop_timer *list_timer;
    loop_timer *pump_timer;
    watch_stats stats;
    int64_t listed_at_ms;        /* when the last list query was sent */
};

static inline const char *watch_folder_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "tasks" : "calendar";
}

static inline const char *watch_kind_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "task" : "appointment";
}

/* Replaces *slot by a copy of value (NULL: none); keeps the old on out of memory. */
void watch_replace_text(char **slot, const char *value);

/* Starts reading box (both folders, page by page); the chain ends by itself. */
void watch_read_start(watch *w, mailbox_watch *box);

/* watch_free, after the event loop ended: every chain goes now, whether it waits
 * for the database or the back end (db_free and delivery_free drop what they hold
 * without calling back, and nothing is answered once the loop ended). */
void watch_read_release_all(watch *w);

#endif
