/* ews_item — what one Outlook item should look like, as the EWS builders take it.
 * Plain data: the daemon fills it from the contact log, ews/ turns it into SOAP.
 * All strings are UTF-8, already cleaned of characters XML 1.0 forbids. */
#ifndef FOLLOWUPD_EWS_ITEM_H
#define FOLLOWUPD_EWS_ITEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The fixed MAPI property set under which every item names its contact log.
 * Documented in docs/architecture.md; never change it (items in the field carry it). */
#define EWS_PROPERTY_SET_ID "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86"
#define EWS_PROPERTY_NAME "FollowupdContactLog"

typedef enum ews_item_kind {
    EWS_ITEM_APPOINTMENT = 0,
    EWS_ITEM_TASK = 1,
} ews_item_kind;

typedef enum ews_importance {
    EWS_IMPORTANCE_LOW = 0,
    EWS_IMPORTANCE_NORMAL = 1,
    EWS_IMPORTANCE_HIGH = 2,
} ews_importance;

typedef struct ews_item {
    ews_item_kind kind;
    int64_t log_id;            /* names the item: "contactlog:<id>:appointment|task" */
    const char *subject;       /* at most 255 characters */
    const char *body_html;     /* full HTML body */
    int64_t start;             /* Unix seconds, UTC: appointment start, task due date */
    int64_t end;               /* appointment end (Unix seconds); ignored for tasks */
    int reminder_minutes;      /* appointment reminder lead time */
    ews_importance importance;
    bool task_completed;       /* task only: Status Completed instead of NotStarted */
    const char *time_zone;     /* Windows time-zone id: StartTimeZone/EndTimeZone of an
                                  appointment; a task's due date is a date in it (EWS
                                  TimeZoneContext, Graph dueDateTime.timeZone); NULL = none */
    /* Task only: the due date (SPEC section 3: the calendar date of start in time_zone)
     * as the Unix time its day begins there (local midnight) and the UTC offset in
     * seconds at that moment. has_due_day false: the UTC date of start. */
    bool has_due_day;
    int64_t due_day_start;
    int due_utc_offset;
    const char *link;          /* the deep link back to the log (also in body_html); NULL = none */
    /* Graph: the event create's transactionId (the same for every retry of one
     * create, so Graph drops a repeat); NULL = none. Ignored by EWS. */
    const char *transaction_id;
} ews_item;

/* An item as Exchange knows it. change_key may be NULL. */
typedef struct ews_item_ref {
    const char *item_id;
    const char *change_key;
} ews_item_ref;

/* "contactlog:42:appointment": the value of the naming property. Returns the
 * length written (snprintf semantics). */
int ews_item_tag(char *buf, size_t size, int64_t log_id, ews_item_kind kind);

const char *ews_item_kind_name(ews_item_kind kind);   /* "appointment" / "task" */

#endif
