/* reconcile — SPEC §3 in one place: given a contact log as it is now, the settings
 * (attributes) and what followupd already put into Outlook, decide per item kind
 * whether to create, update, delete or leave it. Pure: no I/O, unit-tested. */
#ifndef FOLLOWUPD_RECONCILE_H
#define FOLLOWUPD_RECONCILE_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/outlook_item.h"

#define RECONCILE_KINDS 2   /* indexed by outlook_item_kind */

typedef struct reconcile_settings {
    bool outlook_enabled;        /* DefaultMessageSystem = 'Outlook Mail' */
    bool add_to_calendar;
    bool add_to_tasks;
    bool sync_updates;
    bool follow_owner;           /* FollowUpMailbox = owner (else creator) */
    int duration_minutes;
    int reminder_minutes;
    const char *link_template;   /* validated: http(s), contains {id} */
    const char *time_zone;       /* Windows time-zone id for appointments */
} reconcile_settings;

/* An item followupd put into Outlook (a row of contactlog.outlook_item). */
typedef struct reconcile_current {
    bool present;                /* a row exists */
    bool pending;                /* row without item id: a create's outcome is unknown */
    bool deleted_in_outlook;     /* a person deleted it in Outlook: left alone */
    const char *mailbox;
    const char *item_id;
    const char *change_key;
    const char *content_hash;
} reconcile_current;

typedef struct reconcile_log {
    int64_t log_id;
    int64_t version;
    int attempts;
    bool exists;                 /* false: the log was deleted */
    bool inserted_with_follow_up;
    bool ever_synced;            /* a pass over this log has completed before */
    bool completed;
    bool has_follow_up;
    int64_t next_contact_at;     /* Unix seconds, when has_follow_up */
    const char *reason;
    const char *contact_name;
    const char *priority;        /* low / normal / high */
    const char *creator_email;   /* NULL: the creator has no mailbox */
    const char *owner_email;     /* the owner's mailbox; NULL: open log, or an owner
                                    who cannot hold items (inactive, no email) */
    const char *assigned_name;
    const char *forward_name;
    reconcile_current current[RECONCILE_KINDS];
} reconcile_log;

typedef enum reconcile_action {
    RECONCILE_NOTHING = 0,
    RECONCILE_CREATE,            /* make the item (want it, have none) */
    RECONCILE_UPDATE,            /* overwrite the item's fields (content changed) */
    RECONCILE_DELETE,            /* remove the item */
    RECONCILE_MOVE,              /* delete it where it is, then create it in the home */
    RECONCILE_FORGET,            /* drop our record of it, send nothing (deleted in Outlook) */
} reconcile_action;

typedef struct reconcile_step {
    reconcile_action action;
    bool lookup_first;           /* FindItem by the naming property before acting */
    bool task_completed;         /* for task create/update */
} reconcile_step;

typedef struct reconcile_plan {
    reconcile_step steps[RECONCILE_KINDS];
    /* The log's home (docs/architecture.md "Moves between mailboxes"): where creates
     * and moves go. Points into the log; NULL when nobody's mailbox can hold items. */
    const char *home;
    bool home_is_owner;          /* the owner's mailbox (the owner's time zone applies) */
    const char *permanent_error; /* set when an item is wanted but cannot be delivered */
} reconcile_plan;

/* Where the log's items belong (docs/architecture.md "Moves between mailboxes"):
 * the owner's mailbox when they follow the owner and the owner can hold them, else
 * the creator's. NULL when neither has one. *is_owner tells which. */
const char *reconcile_home(const reconcile_log *log, const reconcile_settings *settings,
                           bool *is_owner);

/* now: Unix seconds (a completed log keeps an appointment that already began). */
void reconcile_plan_log(const reconcile_log *log, const reconcile_settings *settings,
                        int64_t now, const char *const content_hash[RECONCILE_KINDS],
                        reconcile_plan *plan);

const char *reconcile_action_name(reconcile_action action);

#endif
