/* ews_sync — Outlook → CRM over EWS (SPEC section 7): the SyncFolderItems request of
 * a mailbox's calendar or tasks folder, and its answer read into delivery_changes.
 * No I/O here: delivery_ews.c sends the request and hands the answer over. */
#ifndef FOLLOWUPD_EWS_SYNC_H
#define FOLLOWUPD_EWS_SYNC_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/delivery.h"
#include "daemon/outlook_item.h"
#include "ews/ews_request.h"

/* Changes asked for per page (MaxChangesReturned). */
#define EWS_SYNC_CHANGES_PER_PAGE 100
/* An answer with more entries than Exchange's own maximum (512) is refused. */
#define EWS_SYNC_MAX_ENTRIES 512
/* A SyncState longer than this is refused, in an answer and in a request. */
#define EWS_SYNC_STATE_MAX_BYTES (1024u * 1024u)

/* Can sync_state be sent back to Exchange: non-empty, printable ASCII without blanks
 * (a SyncState is base64), at most EWS_SYNC_STATE_MAX_BYTES? Answers are held to the
 * same rule, so a position stored from one always passes. */
bool ews_sync_state_ok(const char *sync_state);

/* SyncFolderItems of the mailbox's calendar (OUTLOOK_APPOINTMENT) or tasks folder:
 * ids, change keys, our naming property and the fields a change is read from
 * (calendar:Start; task:DueDate, task:Status). sync_state NULL: every item there now.
 * Returns a malloc'd document and its length in *len, or NULL (bad argument, out of
 * memory). */
char *ews_sync_request(const ews_request_options *opt, outlook_item_kind kind,
                       const char *sync_state, size_t *len)
    __attribute__((warn_unused_result));

/* One SyncFolderItems answer, read. */
typedef struct ews_sync_page {
    /* What the daemon is told; its pointers lead into this page. On success the
     * changes of items carrying our naming property, new_position the SyncState and
     * more = !IncludesLastItemInRange. On an error the outcome as the other calls
     * classify it (ErrorServerBusy: throttle, BackOffMilliseconds), and for
     * ErrorInvalidSyncStateData position_invalid; never a new position then. */
    delivery_sync_result result;
    delivery_change *changes;      /* owned: result.changes */
    char *sync_state;              /* owned: result.new_position */
    char reason[768];
    char code[64];
} ews_sync_page;

/* Reads the answer body[0..len) to a sync of a folder of kind. Returns 0 and *out
 * (free with ews_sync_page_free), or -1 with a one-line reason in err when the answer
 * is unusable (not SOAP, truncated, not a SyncFolderItems answer, over a bound, out of
 * memory). */
int ews_sync_parse(const char *body, size_t len, outlook_item_kind kind, ews_sync_page **out,
                   char *err, size_t errlen)
    __attribute__((warn_unused_result));

void ews_sync_page_free(ews_sync_page *page);

#endif
