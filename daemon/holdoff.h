/* holdoff — waits Exchange asked for: a mailbox's (EWS ErrorServerBusy, a Graph
 * 429 for one user) or the whole server's (HTTP 503/429 with Retry-After).
 * Logs for a held mailbox wait without spending an attempt; others go ahead. */
#ifndef FOLLOWUPD_HOLDOFF_H
#define FOLLOWUPD_HOLDOFF_H

#include <stdint.h>

#include "daemon/delivery.h"

typedef struct holdoff holdoff;

holdoff *holdoff_new(void) __attribute__((warn_unused_result));
void holdoff_free(holdoff *h);

/* Records a wait of wait_ms for scope (mailbox, or every request). */
void holdoff_add(holdoff *h, delivery_throttle scope, const char *mailbox, int64_t wait_ms);

/* How long a request to mailbox must still wait (0: go ahead). */
int64_t holdoff_remaining(holdoff *h, const char *mailbox);

/* CLOCK_MONOTONIC in milliseconds. */
int64_t monotonic_ms(void);

#endif
