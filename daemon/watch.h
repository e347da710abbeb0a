/* watch — Outlook -> CRM (SPEC section 7; docs/architecture.md "Outlook → CRM"): which
 * mailboxes to read back and when, and the database side of every page read. The
 * position stored in the database (SyncState, delta link) is the truth; notifications
 * from the back end (EWS streaming) only say "read this mailbox now", and every
 * mailbox is also read now and then, so a lost hint costs latency, never a change.
 * Idle while SyncFromOutlook = 0 (the database then lists no mailbox). */
#ifndef FOLLOWUPD_WATCH_H
#define FOLLOWUPD_WATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/db.h"
#include "daemon/delivery.h"

typedef struct watch watch;

typedef struct watch_stats {
    uint64_t applied;      /* changes read back and written to the CRM since start */
    uint64_t refused;      /* changes refused (Outlook is put back) since start */
    size_t mailboxes;      /* mailboxes watched now */
    bool notifications;    /* the back end tells of changes (else: polled) */
} watch_stats;

watch *watch_new(sd_event *event, db *database, delivery *backend, const config *cfg)
    __attribute__((warn_unused_result));
void watch_free(watch *w);

void watch_apply_config(watch *w, const config *cfg);
void watch_db_connected(watch *w);
void watch_db_disconnected(watch *w);
/* Logs were delivered: items may now be in a mailbox not watched yet. Lists the
 * mailboxes again now rather than at the next turn (at most once a second). */
void watch_items_changed(watch *w);

/* The daemon is stopping: no new reads; pages in flight still reach the database. */
void watch_stop(watch *w);

const watch_stats *watch_get_stats(const watch *w);

#endif
