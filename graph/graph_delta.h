/* graph_delta — Microsoft Graph delta queries (Outlook -> CRM, SPEC section 7), the
 * half without I/O: the first request of a round, the check of a stored
 * @odata.nextLink / @odata.deltaLink before our bearer token follows it, and one
 * delta page read into delivery_changes. delivery_graph.c sends; the unit tests call
 * these directly.
 *
 * Events are read through calendarView/delta (Graph v1.0 tracks event changes only in
 * a window of the default calendar), tasks through todo/lists/{id}/tasks/delta of the
 * mailbox's default To Do list. */
#ifndef FOLLOWUPD_GRAPH_DELTA_H
#define FOLLOWUPD_GRAPH_DELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/delivery.h"
#include "daemon/outlook_item.h"

/* Entries per page we ask for (Prefer: odata.maxpagesize). */
#define GRAPH_DELTA_PAGE_SIZE 100
/* The calendar window of a round: from this many days ago to this many years ahead. */
#define GRAPH_DELTA_WINDOW_PAST_DAYS 30
#define GRAPH_DELTA_WINDOW_FUTURE_YEARS 10
/* Longest link we store and follow, most entries in one page, longest item id. */
#define GRAPH_DELTA_LINK_MAX 16384
#define GRAPH_DELTA_ENTRIES_MAX 5000
#define GRAPH_DELTA_ID_MAX 1024

/* What follows "/users/{m}/todo/lists/{list}" in the first request of a task round. */
#define GRAPH_DELTA_TASKS_SUFFIX "/tasks/delta"

/* The calendar window of a round that starts at now (Unix seconds); false when the
 * time cannot be converted. */
bool graph_delta_calendar_window(int64_t now, int64_t *from, int64_t *to);

/* The first request of a calendar round, below the base URL:
 * "/users/{escaped_mailbox}/calendarView/delta?startDateTime=...Z&endDateTime=...Z",
 * for the window from, to (Unix seconds; graph_delta_calendar_window). malloc'd; NULL
 * when out of memory or a time cannot be written. */
char *graph_delta_calendar_path(const char *escaped_mailbox, int64_t from, int64_t to)
    __attribute__((warn_unused_result));

/* A stored link (position) checked before our token follows it: it must be on the
 * configured Graph — base_url's scheme, host and port, below its path — and be a delta
 * query of kind ("/users/{m}/calendarView/delta" or "/users/{m}/todo/lists/{l}/
 * tasks/delta", where an {m} spelt as an address must be mailbox). Returns 0 with
 * *path, the link below base_url (malloc'd, query included), and for tasks *list_id,
 * the list as graph_url_escape spells it (malloc'd; NULL for events). Else -EPERM (not
 * on base_url: the token must not go there), -EINVAL (not a delta link of this kind
 * and mailbox) or -ENOMEM, with *why saying which (static text). */
int graph_delta_link_path(const char *base_url, const char *link, outlook_item_kind kind,
                          const char *mailbox, char **path, char **list_id, const char **why)
    __attribute__((warn_unused_result));

/* One delta page, read. The changes point into strings owned by the page. */
typedef struct graph_delta_page {
    delivery_change *changes;
    size_t n_changes;
    const char *link;          /* @odata.nextLink (more) or @odata.deltaLink */
    bool more;
    size_t n_unreadable;       /* entries skipped: no id, a start that cannot be read, ... */
    char unreadable[256];      /* why the first of them was skipped (id included) */
    char **strings;
    size_t n_strings;
} graph_delta_page;

/* A 2xx answer's body as a delta page of kind. Each entry: "@removed" -> "deleted"
 * (change_key NULL); an event -> "moved" with its start as UTC "YYYY-MM-DDTHH:MM:SSZ";
 * a task -> "moved" with its due date "YYYY-MM-DD" when it has one, then "completed"
 * when its status is completed. change_key: "changeKey", else @odata.etag without its
 * W/"..." wrapping. Task item ids are "<list_id>/<task id, percent-encoded>", as the
 * back end names tasks (list_id percent-encoded). Returns 0, or -1 with the reason in
 * err (not JSON, no "value" array, no link, too large, out of memory). */
int graph_delta_parse(outlook_item_kind kind, const char *list_id, const char *body, size_t len,
                      graph_delta_page *page, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void graph_delta_page_clear(graph_delta_page *page);

typedef enum graph_delta_verdict {
    GRAPH_DELTA_PAGE,        /* *page filled */
    GRAPH_DELTA_GONE,        /* the position cannot be resumed: read the folder afresh */
    GRAPH_DELTA_UNUSABLE,    /* a 2xx answer that is no delta page: err says why */
    GRAPH_DELTA_OTHER,       /* any other HTTP answer: classified as for every call */
} graph_delta_verdict;

/* What one HTTP answer to a delta request means. Gone: 410 (syncStateNotFound,
 * resyncRequired) and, for tasks, 404 (the To Do list itself went away). */
graph_delta_verdict graph_delta_read(outlook_item_kind kind, const char *list_id, long status,
                                     const char *body, size_t len, graph_delta_page *page,
                                     char *err, size_t errlen);

#endif
