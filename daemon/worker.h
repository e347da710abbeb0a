/* worker — the queue side of the daemon: claims dirty logs in batches, reconciles
 * each with Outlook through the delivery back end (one log's steps in order, many
 * logs at once), and records the outcome: finished, retry later, or parked. */
#ifndef FOLLOWUPD_WORKER_H
#define FOLLOWUPD_WORKER_H

#include <stdint.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/db.h"
#include "daemon/delivery.h"
#include "daemon/holdoff.h"

typedef struct worker worker;

typedef struct worker_stats {
    uint64_t delivered;        /* logs reconciled since start */
    uint64_t retries;          /* passes that ended in "try again later" */
    uint64_t parked;           /* logs parked as failed since start */
    size_t active;             /* logs being worked on now */
    char last_error[256];      /* empty once a later pass finished */
    bool auth_failing;         /* Exchange refuses the service account: delivery pauses */
    char auth_error[256];
    int64_t held_ms;           /* every request waits this much longer (503/429, auth) */
    holdoff_stats holds;       /* throttling: holds since start, what is held now */
} worker_stats;

worker *worker_new(sd_event *event, db *database, delivery *backend, const config *cfg)
    __attribute__((warn_unused_result));
void worker_free(worker *w);

/* Applies reloadable settings (concurrency, max_attempts, time_zone, timeout). */
void worker_apply_config(worker *w, const config *cfg);

/* Events from db. */
void worker_db_connected(worker *w);
void worker_db_disconnected(worker *w);
void worker_notified(worker *w);

/* Stops claiming; drained is called once no log is being worked on any more. */
void worker_drain(worker *w, void (*drained)(void *userdata), void *userdata);

const worker_stats *worker_get_stats(const worker *w);

/* fn runs when the daemon's state changes (e.g. Exchange refuses or accepts the
 * service account again), so that STATUS= can say so at once. */
void worker_on_state_change(worker *w, void (*fn)(void *userdata), void *userdata);

#endif
