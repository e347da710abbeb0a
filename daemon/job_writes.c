/* job writes — the fenced writes of a job (see job.h, job_internal.h): each names
 * the claim's token and comes back "accepted" or "fenced out"; and the heartbeat
 * that renews the lease. Each kind is batched over every job (db_batch). */
#include "daemon/job_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "http/loop_timer.h"

const db_batch_kind job_write_kinds[JOB_WRITES] = {
    [JOB_WRITE_BEGIN_CREATE] = {"contactlog.followupd_begin_creates", 4, 1,
                                "the start of a create"},
    [JOB_WRITE_RECORD_ITEM] = {"contactlog.followupd_record_items", 7, 1, "the Outlook item"},
    [JOB_WRITE_FORGET_ITEM] = {"contactlog.followupd_forget_items", 3, 1,
                               "the removed Outlook item"},
    [JOB_WRITE_FINISH] = {"contactlog.followupd_finish", 4, 1, "the finished pass"},
    [JOB_WRITE_RETRY_LATER] = {"contactlog.followupd_retry_later", 7, 2, "the retry"},
    [JOB_WRITE_RELEASE] = {"contactlog.followupd_release", 4, 1, "the released claim"},
    [JOB_WRITE_RENEW] = {"contactlog.followupd_renew", 2, 2, "the lease"},
};

typedef struct write_ctx {
    job *job;
    enum job_write kind;
    job_write_done_fn then;
} write_ctx;

/* The per-row answer: the first column says whether the token still held. */
static void on_written(PGresult *result, int row, const char *why, void *owner)
{
    write_ctx *ctx = owner;
    job *j = ctx->job;
    enum job_write kind = ctx->kind;
    job_write_done_fn then = ctx->then;
    free(ctx);

    if (!job_resume(j))
        return;
    if (!result) {
        log_item(LOG_WARNING, j->log.log_id, NULL, NULL,
                 "contact log %" PRId64 ": could not record %s: %s; it will be retried",
                 j->log.log_id, job_write_kinds[kind].what, why ? why : "unknown error");
        job_end(j);   /* the claim lapses with its lease; the next pass starts afresh */
        return;
    }
    if (strcmp(PQgetvalue(result, row, 0), "t") != 0) {
        job_lose(j, "its claim was taken over (lease lapsed)");
        return;
    }
    then(j, result, row);
}

/* The log id and the token are the first two arrays of every write. */
void job_write_row(job *j, enum job_write kind, const char *const *more,
                   const char *const *scalars, job_write_done_fn then)
{
    const char *values[DB_BATCH_MAX_ARRAYS] = {j->owned[COL_LOG_ID], j->owned[COL_TOKEN]};
    char settle[16];
    const char *settle_only[] = {settle};
    write_ctx *ctx = malloc(sizeof *ctx);

    for (int p = 2; p < job_write_kinds[kind].n_arrays; p++)
        values[p] = more[p - 2];
    snprintf(settle, sizeof settle, "%d", j->env->settle_ms);
    if (!ctx) {
        log_error("out of memory recording contact log %" PRId64, j->log.log_id);
        job_end(j);
        return;
    }
    *ctx = (write_ctx){j, kind, then};
    j->busy = true;
    if (db_batch_add(j->env->writes[kind], values, scalars ? scalars : settle_only,
                     on_written, ctx) < 0) {
        free(ctx);
        j->busy = false;
        log_error("out of memory recording contact log %" PRId64, j->log.log_id);
        job_end(j);
    }
}

static void on_renewed(PGresult *result, int row, const char *why, void *owner)
{
    job *j = owner;
    (void)why;
    if (j->ended) {
        job_free_when_idle(j);
        return;
    }
    if (!result)
        return;   /* the next heartbeat tries again; validity runs out meanwhile */
    if (strcmp(PQgetvalue(result, row, 0), "t") != 0) {
        job_lose(j, "its lease could not be renewed (taken over)");
        return;
    }
    int64_t valid_until = j->renew_sent_ms + (int64_t)j->env->lease_seconds * 750;
    if (valid_until > j->valid_until_ms)
        j->valid_until_ms = valid_until;
}

void job_renew(job *j)
{
    char lease[16], settle[16];
    const char *scalars[] = {lease, settle};
    const char *values[] = {j->owned[COL_LOG_ID], j->owned[COL_TOKEN]};
    db_batch *renew = j->env->writes[JOB_WRITE_RENEW];

    if (j->ended || j->lost)
        return;
    snprintf(lease, sizeof lease, "%d", j->env->lease_seconds);
    snprintf(settle, sizeof settle, "%d", j->env->settle_ms);
    db_batch_cancel(renew, j);   /* one heartbeat queued per job, also while offline */
    if (db_batch_has(renew, j))
        return;                  /* the last one is still out */
    /* Counted from the moment it is sent: the database starts its lease later. */
    j->renew_sent_ms = loop_timer_now_ms();
    if (db_batch_add(renew, values, scalars, on_renewed, j) < 0)
        log_error("out of memory renewing the lease of contact log %" PRId64, j->log.log_id);
}

