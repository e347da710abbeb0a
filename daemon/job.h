/* job — one claimed contact log, worked on from claim to finish: for each item
 * kind an optional lookup, then create / update / delete, each followed by a
 * fenced database write under the claim's token (docs/architecture.md, "Claiming").
 * Every step is a callback on the event loop; one job's steps run in order. */
#ifndef FOLLOWUPD_JOB_H
#define FOLLOWUPD_JOB_H

#include <stdbool.h>
#include <stdint.h>
#include <libpq-fe.h>

#include "daemon/db_batch.h"
#include "daemon/delivery.h"
#include "daemon/holdoff.h"
#include "daemon/reconcile.h"

typedef struct job job;

/* The writes a job makes, each batched over all jobs (db_batch). */
enum job_write {
    JOB_WRITE_BEGIN_CREATE,
    JOB_WRITE_RECORD_ITEM,
    JOB_WRITE_FORGET_ITEM,
    JOB_WRITE_FINISH,
    JOB_WRITE_RETRY_LATER,
    JOB_WRITE_RELEASE,
    JOB_WRITE_RENEW,
    JOB_WRITES,
};

extern const db_batch_kind job_write_kinds[JOB_WRITES];

typedef struct job_stats {
    uint64_t delivered;          /* passes finished since start */
    uint64_t retries;            /* passes that ended in "try again later" */
    uint64_t parked;             /* logs parked as failed since start */
    uint64_t fenced;             /* jobs stopped because their claim was lost */
    size_t active;               /* jobs alive */
    char last_error[256];        /* cleared by the next pass that finishes */
    /* The back end's state: the service account refused (HTTP 401/403). Delivery
     * pauses (a server-wide hold, growing) until a request succeeds again. */
    bool auth_failing;
    int64_t auth_wait_ms;
    char auth_error[256];
} job_stats;

/* What every job shares with the worker. */
typedef struct job_env {
    delivery *backend;
    holdoff *holdoffs;
    db_batch *writes[JOB_WRITES];
    reconcile_settings settings;     /* attributes as last read */
    const char *default_time_zone;   /* [exchange] time_zone */
    int max_attempts;
    int backoff_initial_ms;
    int backoff_max_ms;
    int lease_seconds;
    int settle_ms;
    bool draining;                   /* STOPPING=1: no request starts any more */
    job_stats stats;
    /* The job is over: take it off the worker's list (then job_free when idle). */
    void (*ended)(job *j, void *userdata);
    /* The back end's state changed (auth_failing): STATUS= should say so now. */
    void (*state_changed)(void *userdata);
    void *userdata;
} job_env;

/* Number of columns contactlog.followupd_claim() returns. */
int job_claim_columns(void);

/* A job for row of a followupd_claim() result, claimed at claimed_at_ms
 * (monotonic): its lease is known valid until then + ¾ lease. NULL: out of memory. */
job *job_from_claim(job_env *env, PGresult *result, int row, int64_t claimed_at_ms)
    __attribute__((warn_unused_result));

void job_start(job *j);

/* Gives the claim back (not before delay_ms) and ends the job: a second claim of
 * a log this daemon already works on, or a job that must not start (stopping). */
void job_release(job *j, int64_t delay_ms);

/* Heartbeat: renews this job's lease (batched with every other job's). */
void job_renew(job *j);

/* Stops the job at its next step (the daemon is stopping): requests in flight
 * are answered and recorded; nothing new is sent. */
void job_stop_sending(job *j);

int64_t job_log_id(const job *j);

/* Frees the job once nothing outstanding refers to it; safe to call again. */
void job_free_when_idle(job *j);

/* Frees at once (shutdown, or a job that never started). */
void job_free(job *j);

#endif
