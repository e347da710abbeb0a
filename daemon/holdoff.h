/* holdoff — waits Exchange asked for: a mailbox's (EWS ErrorServerBusy, a Graph
 * 429 for one user) or the whole server's (HTTP 503/429 with Retry-After).
 * Logs for a held mailbox wait without spending an attempt; others go ahead. */
#ifndef FOLLOWUPD_HOLDOFF_H
#define FOLLOWUPD_HOLDOFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/delivery.h"

typedef struct holdoff holdoff;

holdoff *holdoff_new(void) __attribute__((warn_unused_result));
void holdoff_free(holdoff *h);

/* Records a wait Exchange asked for: wait_ms for scope (mailbox, or every request). */
void holdoff_add(holdoff *h, delivery_throttle scope, const char *mailbox, int64_t wait_ms);

/* Every request waits wait_ms, by the daemon's own choice (the service account was
 * refused): not a throttling hold. */
void holdoff_pause(holdoff *h, int64_t wait_ms);

/* For the metrics: throttling holds since start, and what is held now. */
typedef struct holdoff_stats {
    uint64_t mailbox_holds;
    uint64_t server_holds;
    size_t mailboxes_held;       /* mailboxes waiting now */
    bool server_throttled;       /* every request waits as Exchange asked */
} holdoff_stats;

void holdoff_get_stats(holdoff *h, holdoff_stats *out);

/* How long a request to mailbox must still wait (0: go ahead). */
int64_t holdoff_remaining(holdoff *h, const char *mailbox);

#endif
