/* outlook_item — what one Outlook item should look like, as the EWS builders take it.
 * Plain data: the daemon fills it from the contact log, ews/ turns it into SOAP.
 * All strings are UTF-8, already cleaned of characters XML 1.0 forbids. */
#ifndef FOLLOWUPD_OUTLOOK_ITEM_H
#define FOLLOWUPD_OUTLOOK_ITEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The fixed MAPI property set under which every item names its contact log.
 * Documented in docs/architecture.md; never change it (items in the field carry it). */
#define OUTLOOK_TAG_PROPERTY_SET_ID "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86"
#define OUTLOOK_TAG_PROPERTY_NAME "FollowupdContactLog"

typedef enum outlook_item_kind {
    OUTLOOK_APPOINTMENT = 0,
    OUTLOOK_TASK = 1,
} outlook_item_kind;

typedef enum outlook_importance {
    OUTLOOK_IMPORTANCE_LOW = 0,
    OUTLOOK_IMPORTANCE_NORMAL = 1,
    OUTLOOK_IMPORTANCE_HIGH = 2,
} outlook_importance;

typedef struct outlook_item {
    outlook_item_kind kind;
    int64_t log_id;            /* names the item: "contactlog:<id>:appointment|task" */
    const char *subject;       /* at most 255 characters */
    const char *body_html;     /* full HTML body */
    int64_t start;             /* Unix seconds, UTC: appointment start, task due date */
    int64_t end;               /* appointment end (Unix seconds); ignored for tasks */
    int reminder_minutes;      /* appointment reminder lead time */
    outlook_importance importance;
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
} outlook_item;

/* An item as Exchange knows it. change_key may be NULL. */
typedef struct outlook_item_ref {
    const char *item_id;
    const char *change_key;
} outlook_item_ref;

/* "contactlog:42:appointment": the value of the naming property. Returns the
 * length written (snprintf semantics). */
int outlook_item_tag(char *buf, size_t size, int64_t log_id, outlook_item_kind kind);

const char *outlook_item_kind_name(outlook_item_kind kind);   /* "appointment" / "task" */

#endif
