/* job — see job.h.
 *
 * A job holds a claim token. Before every request it checks that its lease is
 * still known to be valid (renewed by the heartbeat) and that the daemon is not
 * stopping; every database write names the token and comes back "accepted" or
 * "fenced out". A fenced-out job stops at once: the database has already queued
 * the redo pass that repairs whatever it may have sent. */
#include "daemon/job.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/item_content.h"
#include "daemon/log.h"
#include "daemon/timezone.h"

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

/* Column order of contactlog.followupd_claim(). */
enum claim_column {
    COL_LOG_ID, COL_TOKEN, COL_VERSION, COL_REDO, COL_FORCED, COL_ATTEMPTS,
    COL_INSERTED_WITH_FOLLOW_UP, COL_EVER_SYNCED, COL_LOG_EXISTS, COL_STATUS,
    COL_NEXT_CONTACT_AT, COL_REASON, COL_CONTACT_NAME, COL_PRIORITY, COL_CREATOR_EMAIL,
    COL_CREATOR_TIME_ZONE, COL_ASSIGNED_NAME, COL_FORWARD_NAME,
    COL_ITEM_FIRST,   /* then per kind: mailbox, item_id, change_key, hash, pending */
    COL_PROBLEM = COL_ITEM_FIRST + 5 * RECONCILE_KINDS,   /* what the row cannot do */
    COL_COUNT,
};

struct job {
    job_env *env;
    reconcile_log log;
    char *owned[COL_COUNT];          /* text of every column, kept for log's pointers */
    bool forced;                     /* resync or redo: recorded hashes are not trusted */
    int64_t valid_until_ms;          /* monotonic: the lease is known to hold until then */
    int64_t renew_sent_ms;           /* when the last heartbeat for it was queued */
    bool busy;                       /* a request or a write is outstanding */
    bool lost;                       /* the claim is gone: stop at the next step */
    bool stopping;                   /* the daemon is stopping: send nothing new */
    bool ended;                      /* off the worker's list: free when idle */
    reconcile_plan plan;
    item_content content[RECONCILE_KINDS];
    bool content_built[RECONCILE_KINDS];
    int kind;                        /* the kind being worked on */
    bool looked_up[RECONCILE_KINDS];
    /* What Outlook holds for each kind as far as this job knows (owned). */
    char *item_id[RECONCILE_KINDS];
    char *change_key[RECONCILE_KINDS];
    char *transaction_id;            /* of the create being sent */
    char **extra_ids;                /* duplicates found by a lookup, to delete */
    size_t n_extra;
};

static void job_run_step(job *j);
static void job_advance(job *j);
static void job_release_because(job *j, int64_t delay_ms, const char *why);

/* ---- helpers -------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void replace_string(char **slot, const char *value)
{
    free(*slot);
    *slot = dup_or_null(value);
}

static const char *kind_name(int kind)
{
    return outlook_item_kind_name((outlook_item_kind)kind);
}

static const char *job_mailbox(const job *j)
{
    int kind = j->kind >= 0 && j->kind < RECONCILE_KINDS ? j->kind : 0;
    const reconcile_current *cur = &j->log.current[kind];
    /* An existing item lives where it was made, even if the creator's address changed. */
    if (cur->present && cur->mailbox)
        return cur->mailbox;
    return j->log.creator_email ? j->log.creator_email : "";
}

static void set_last_error(job_env *env, const char *text)
{
    snprintf(env->stats.last_error, sizeof env->stats.last_error, "%s", text);
}

static void number_text(char *buf, size_t size, int64_t value)
{
    snprintf(buf, size, "%" PRId64, value);
}

int job_claim_columns(void)
{
    return COL_COUNT;
}

int64_t job_log_id(const job *j)
{
    return j->log.log_id;
}

bool job_is_busy(const job *j)
{
    return j->busy;
}

/* ---- life ----------------------------------------------------------------- */

void job_free(job *j)
{
    if (!j)
        return;
    for (int w = 0; w < JOB_WRITES; w++)
        if (j->env->writes[w])
            db_batch_cancel(j->env->writes[w], j);
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        if (j->content_built[k])
            item_content_clear(&j->content[k]);
        free(j->item_id[k]);
        free(j->change_key[k]);
    }
    for (size_t i = 0; i < j->n_extra; i++)
        free(j->extra_ids[i]);
    free(j->extra_ids);
    free(j->transaction_id);
    for (int c = 0; c < COL_COUNT; c++)
        free(j->owned[c]);
    free(j);
}

void job_free_when_idle(job *j)
{
    if (!j->ended || j->busy)
        return;
    db_batch_cancel(j->env->writes[JOB_WRITE_RENEW], j);
    if (db_batch_has(j->env->writes[JOB_WRITE_RENEW], j))
        return;   /* a heartbeat is out: freed when it is answered */
    job_free(j);
}

/* The pass over this log is over for this daemon, one way or another. */
static void job_end(job *j)
{
    if (j->ended)
        return;
    j->ended = true;
    j->env->ended(j, j->env->userdata);
    job_free_when_idle(j);
}

/* The claim is gone: nothing more is sent or recorded by this job. */
static void job_lose(job *j, const char *why)
{
    j->env->stats.fenced++;
    log_item(LOG_NOTICE, j->log.log_id, NULL, NULL,
             "contact log %" PRId64 ": %s; this daemon stops working on it (another pass "
             "repairs what this one may have sent)", j->log.log_id, why);
    j->lost = true;
    if (!j->busy)
        job_end(j);
}

/* Called first by every completion: false when the job must not go on. */
static bool job_resume(job *j)
{
    j->busy = false;
    if (j->ended) {
        job_free_when_idle(j);
        return false;
    }
    if (j->lost) {
        job_end(j);   /* frees it once idle */
        return false;
    }
    return true;
}

/* Whether a request may be sent now (lease known valid, not stopping). */
static bool job_may_send(job *j)
{
    if (j->lost)
        return false;
    if (j->stopping || j->env->draining) {
        job_release(j, 0);
        return false;
    }
    if (monotonic_ms() >= j->valid_until_ms) {
        /* The lease could not be renewed in time (database unreachable): another
         * daemon may take the log after the lease plus the settle time, so nothing
         * more may be sent from here. */
        log_item(LOG_WARNING, j->log.log_id, NULL, NULL,
                 "contact log %" PRId64 ": its lease could not be renewed; leaving it",
                 j->log.log_id);
        j->lost = true;
        job_end(j);
        return false;
    }
    return true;
}

/* ---- fenced writes -------------------------------------------------------- */

typedef void (*write_done_fn)(job *j, PGresult *result, int row);

typedef struct write_ctx {
    job *job;
    enum job_write kind;
    write_done_fn then;
} write_ctx;

/* The per-row answer: the first column says whether the token still held. */
static void on_written(PGresult *result, int row, const char *why, void *owner)
{
    write_ctx *ctx = owner;
    job *j = ctx->job;
    enum job_write kind = ctx->kind;
    write_done_fn then = ctx->then;
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

/* Queues one fenced write for this job; then runs once it is accepted. The log id
 * and the token are the first two arrays of every write. */
static void write_row(job *j, enum job_write kind, const char *const *more,
                      const char *const *scalars, write_done_fn then)
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
    j->renew_sent_ms = monotonic_ms();
    if (db_batch_add(renew, values, scalars, on_renewed, j) < 0)
        log_error("out of memory renewing the lease of contact log %" PRId64, j->log.log_id);
}

/* ---- ending a pass -------------------------------------------------------- */

static int64_t backoff_ms(const job_env *env, int attempts)
{
    int64_t delay = env->backoff_initial_ms;
    for (int i = 1; i < attempts && delay < env->backoff_max_ms; i++)
        delay *= 2;
    if (delay > env->backoff_max_ms)
        delay = env->backoff_max_ms;
    /* ±20 % jitter spreads retries of a whole batch over time. */
    int64_t jitter = delay / 5;
    return delay - jitter + (jitter > 0 ? (int64_t)(rand() % (2 * jitter + 1)) : 0);
}

static void on_retry_recorded(job *j, PGresult *result, int row)
{
    if (strcmp(PQgetvalue(result, row, 1), "t") == 0) {
        j->env->stats.parked++;
        log_item(LOG_ERR, j->log.log_id, job_mailbox(j), NULL,
                 "contact log %" PRId64 " parked as failed: %s (followupctl retry %" PRId64
                 " queues it again)",
                 j->log.log_id, j->env->stats.last_error, j->log.log_id);
    }
    job_end(j);
}

/* Ends the pass over this log with "not yet": back off, or park when permanent.
 * A request whose outcome is unknown may still be performed by Exchange: the next
 * pass waits at least the settle time, so that it sees what that request did. */
static void job_fail(job *j, bool permanent, int64_t server_wait_ms, bool outcome_unknown,
                     const char *code, const char *reason)
{
    job_env *env = j->env;
    int64_t delay = backoff_ms(env, j->log.attempts + 1);
    char delay_text[32], attempts_text[16], error[1024];

    if (server_wait_ms > delay)
        delay = server_wait_ms;   /* the server's wait is a floor, never shortened */
    if (outcome_unknown && delay < env->settle_ms)
        delay = env->settle_ms;
    snprintf(error, sizeof error, "%s %s: %s", kind_name(j->kind < 0 ? 0 : j->kind),
             code ? code : "", reason);
    set_last_error(env, error);
    env->stats.retries++;
    log_item(permanent ? LOG_ERR : LOG_WARNING, j->log.log_id, job_mailbox(j), code,
             "contact log %" PRId64 " (%s, mailbox %s): %s%s", j->log.log_id,
             kind_name(j->kind < 0 ? 0 : j->kind), job_mailbox(j), reason,
             permanent ? "; not retrying" : "; will retry");
    number_text(delay_text, sizeof delay_text, delay);
    snprintf(attempts_text, sizeof attempts_text, "%d", env->max_attempts);
    char settle[16];
    snprintf(settle, sizeof settle, "%d", env->settle_ms);
    const char *more[] = {j->owned[COL_VERSION], j->owned[COL_REDO], delay_text, error,
                          permanent ? "true" : "false"};
    const char *scalars[] = {attempts_text, settle};
    write_row(j, JOB_WRITE_RETRY_LATER, more, scalars, on_retry_recorded);
}

#define AUTH_WAIT_MIN_MS 5000
#define AUTH_WAIT_MAX_MS 300000

/* A request went through: the back end is fine, whatever it said before. */
static void note_success(job *j)
{
    job_stats *stats = &j->env->stats;
    if (!stats->auth_failing)
        return;
    stats->auth_failing = false;
    stats->auth_wait_ms = 0;
    log_notice("Exchange accepts the service account again; delivery goes on");
    j->env->state_changed(j->env->userdata);
}

/* The service account was refused: every request waits (growing, up to 5 minutes),
 * this log keeps its attempts and goes again with everyone else. */
static void pause_for_credentials(job *j, const delivery_result *r)
{
    job_stats *stats = &j->env->stats;
    if (!stats->auth_failing || stats->auth_wait_ms <= 0)
        stats->auth_wait_ms = AUTH_WAIT_MIN_MS;
    else if (stats->auth_wait_ms < AUTH_WAIT_MAX_MS &&
             holdoff_remaining(j->env->holdoffs, NULL) == 0)
        stats->auth_wait_ms = stats->auth_wait_ms * 2 > AUTH_WAIT_MAX_MS
                                  ? AUTH_WAIT_MAX_MS : stats->auth_wait_ms * 2;
    if (!stats->auth_failing || strcmp(stats->auth_error, r->reason) != 0)
        log_error("%s; delivery pauses, retrying in %" PRId64 " s (no contact log is "
                  "parked for it)", r->reason, stats->auth_wait_ms / 1000);
    bool changed = !stats->auth_failing;
    stats->auth_failing = true;
    snprintf(stats->auth_error, sizeof stats->auth_error, "%s", r->reason);
    if (changed)
        j->env->state_changed(j->env->userdata);
    holdoff_add(j->env->holdoffs, DELIVERY_THROTTLE_SERVER, NULL, stats->auth_wait_ms);
    job_release_because(j, stats->auth_wait_ms, r->reason);
}

static void fail_from_result(job *j, const delivery_result *r)
{
    if (r->not_sent) {   /* stopping: nothing happened, give the claim back */
        job_release(j, 0);
        return;
    }
    if (r->auth_failed) {
        pause_for_credentials(j, r);
        return;
    }
    holdoff_add(j->env->holdoffs, r->throttle, job_mailbox(j), r->retry_after_ms);
    if (r->throttle != DELIVERY_THROTTLE_NONE && r->retry_after_ms > 0 &&
        r->outcome == DELIVERY_TRANSIENT && !r->outcome_unknown) {
        /* Exchange asked us to wait: the log waits without spending an attempt. */
        char why[1024];
        snprintf(why, sizeof why, "%s %s: %s", kind_name(j->kind < 0 ? 0 : j->kind),
                 r->code ? r->code : "", r->reason);
        log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
                 "contact log %" PRId64 ": %s; waiting %" PRId64 " ms", j->log.log_id,
                 r->reason, r->retry_after_ms);
        job_release_because(j, r->retry_after_ms, why);
        return;
    }
    job_fail(j, r->outcome == DELIVERY_PERMANENT, r->retry_after_ms, r->outcome_unknown,
             r->code, r->reason);
}

static void on_released(job *j, PGresult *result, int row)
{
    (void)result;
    (void)row;
    job_end(j);
}

/* Gives the claim back; why (may be NULL) is kept as the log's last error. */
static void job_release_because(job *j, int64_t delay_ms, const char *why)
{
    char delay_text[32];
    number_text(delay_text, sizeof delay_text, delay_ms);
    const char *more[] = {delay_text, why};
    j->stopping = true;
    write_row(j, JOB_WRITE_RELEASE, more, NULL, on_released);
}

void job_release(job *j, int64_t delay_ms)
{
    job_release_because(j, delay_ms, NULL);
}

void job_stop_sending(job *j)
{
    j->stopping = true;
    if (!j->busy && !j->ended && !j->lost)
        job_release(j, 0);
}

static void on_finished(job *j, PGresult *result, int row)
{
    (void)result;
    (void)row;
    j->env->stats.delivered++;
    j->env->stats.last_error[0] = '\0';   /* STATUS= shows no error that is fixed */
    job_end(j);
}

static void job_finish(job *j)
{
    if (j->plan.permanent_error) {
        j->kind = 0;
        job_fail(j, true, -1, false, "NoMailbox", j->plan.permanent_error);
        return;
    }
    const char *more[] = {j->owned[COL_VERSION], j->owned[COL_REDO]};
    write_row(j, JOB_WRITE_FINISH, more, NULL, on_finished);
}

/* ---- the steps ------------------------------------------------------------ */

static void job_advance(job *j)
{
    j->kind++;
    while (j->kind < RECONCILE_KINDS && j->plan.steps[j->kind].action == RECONCILE_NOTHING)
        j->kind++;
    if (j->kind >= RECONCILE_KINDS)
        job_finish(j);
    else
        job_run_step(j);
}

static void on_recorded(job *j, PGresult *result, int row)
{
    (void)result;
    (void)row;
    job_advance(j);
}

static void on_step_recorded(job *j, PGresult *result, int row)
{
    (void)result;
    (void)row;
    job_run_step(j);
}

static void record_item(job *j, write_done_fn then, const char *hash)
{
    const char *more[] = {kind_name(j->kind), job_mailbox(j), j->item_id[j->kind],
                          j->change_key[j->kind], hash};
    write_row(j, JOB_WRITE_RECORD_ITEM, more, NULL, then);
}

static void forget_item(job *j, write_done_fn then)
{
    const char *more[] = {kind_name(j->kind)};
    write_row(j, JOB_WRITE_FORGET_ITEM, more, NULL, then);
}

static void adopt_item(job *j, const outlook_item_ref *ref)
{
    replace_string(&j->item_id[j->kind], ref->item_id);
    replace_string(&j->change_key[j->kind], ref->change_key);
}

/* "Not found" for an item we know by id: it may have moved (a new ItemId), so it is
 * looked up by its tag before anything is created. True when a lookup was started. */
static bool look_up_after_not_found(job *j)
{
    reconcile_step *step = &j->plan.steps[j->kind];
    if (j->looked_up[j->kind])
        return false;
    step->lookup_first = true;
    job_run_step(j);
    return true;
}

static void on_saved(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    reconcile_step *step = &j->plan.steps[j->kind];

    if (!job_resume(j))
        return;
    if (r->outcome == DELIVERY_NOT_FOUND && step->action == RECONCILE_UPDATE) {
        log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
                 "contact log %" PRId64 ": %s not found by its id; looking it up by its tag",
                 j->log.log_id, kind_name(j->kind));
        if (look_up_after_not_found(j))
            return;
        /* Looked up already and gone again: make it afresh. */
        step->action = RECONCILE_CREATE;
        step->lookup_first = false;
        j->log.current[j->kind].present = false;
        job_run_step(j);
        return;
    }
    if (r->outcome != DELIVERY_OK) {
        fail_from_result(j, r);
        return;
    }
    note_success(j);
    adopt_item(j, &r->item);
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s %sd in %s", j->log.log_id, kind_name(j->kind),
             reconcile_action_name(step->action), job_mailbox(j));
    record_item(j, on_recorded, j->content[j->kind].hash);
}

static void on_removed(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    if (!job_resume(j))
        return;
    if (r->outcome == DELIVERY_NOT_FOUND && look_up_after_not_found(j))
        return;
    if (r->outcome != DELIVERY_OK && r->outcome != DELIVERY_NOT_FOUND) {
        fail_from_result(j, r);
        return;
    }
    note_success(j);
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s removed from %s", j->log.log_id, kind_name(j->kind),
             job_mailbox(j));
    forget_item(j, on_recorded);
}

static void on_create_begun(job *j, PGresult *result, int row)
{
    replace_string(&j->transaction_id,
                   PQgetisnull(result, row, 1) ? NULL : PQgetvalue(result, row, 1));
    if (!job_may_send(j))
        return;
    j->content[j->kind].item.transaction_id = j->transaction_id;
    j->busy = true;
    int r = delivery_create(j->env->backend, job_mailbox(j), &j->content[j->kind].item,
                            on_saved, j);
    if (r < 0) {
        j->busy = false;
        job_fail(j, r == -EINVAL, -1, false, "request", strerror(-r));
    }
}

/* Deletes duplicates a lookup found (at most one item per log, ever), one by one. */
static void on_extra_removed(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    if (!job_resume(j))
        return;
    if (r->outcome != DELIVERY_OK && r->outcome != DELIVERY_NOT_FOUND) {
        fail_from_result(j, r);
        return;
    }
    j->n_extra--;
    free(j->extra_ids[j->n_extra]);
    job_run_step(j);
}

static void on_found(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    reconcile_step *step = &j->plan.steps[j->kind];

    if (!job_resume(j))
        return;
    if (r->outcome != DELIVERY_OK) {
        fail_from_result(j, r);
        return;
    }
    note_success(j);
    j->looked_up[j->kind] = true;
    if (r->n_found == 0) {
        /* Nothing carries the log's tag: the create never happened, or the item was
         * deleted in Outlook. */
        bool create_pending = j->log.current[j->kind].pending;
        j->log.current[j->kind].present = false;
        if (step->action == RECONCILE_DELETE) {
            step->action = RECONCILE_NOTHING;
            forget_item(j, on_recorded);
            return;
        }
        step->action = RECONCILE_CREATE;
        if (create_pending) {
            /* The same create once more: its row (and Graph transactionId) stays, so
             * a create that did happen but is not searchable yet is not repeated. */
            job_run_step(j);
            return;
        }
        forget_item(j, on_step_recorded);
        return;
    }
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), NULL,
             "contact log %" PRId64 ": found its %s by its tag; adopting it%s",
             j->log.log_id, kind_name(j->kind),
             r->n_found > 1 ? " and removing duplicates" : "");
    adopt_item(j, &r->found[0]);
    for (size_t i = 1; i < r->n_found; i++) {
        char **grown = realloc(j->extra_ids, (j->n_extra + 1) * sizeof *grown);
        if (!grown)
            break;
        j->extra_ids = grown;
        if ((j->extra_ids[j->n_extra] = dup_or_null(r->found[i].item_id)))
            j->n_extra++;
    }
    j->log.current[j->kind].present = true;
    j->log.current[j->kind].pending = false;
    /* We do not know what the found item holds: overwrite it unless it must go. */
    if (step->action != RECONCILE_DELETE)
        step->action = RECONCILE_UPDATE;
    record_item(j, on_step_recorded, NULL);
}

static void job_run_step(job *j)
{
    reconcile_step *step = &j->plan.steps[j->kind];
    job_env *env = j->env;
    outlook_item_ref ref = {j->item_id[j->kind], j->change_key[j->kind]};
    int r = 0;

    if (step->action == RECONCILE_NOTHING && j->n_extra == 0) {
        job_advance(j);
        return;
    }
    if (step->action == RECONCILE_CREATE && !(step->lookup_first && !j->looked_up[j->kind]) &&
        j->n_extra == 0) {
        const char *more[] = {kind_name(j->kind), job_mailbox(j)};
        /* Recorded before sending: a lost answer leads to a lookup, not a duplicate.
         * The write also proves the claim still holds. */
        if (!job_may_send(j))
            return;
        write_row(j, JOB_WRITE_BEGIN_CREATE, more, NULL, on_create_begun);
        return;
    }
    if (!job_may_send(j))
        return;
    j->busy = true;
    if (step->lookup_first && !j->looked_up[j->kind]) {
        r = delivery_find(env->backend, job_mailbox(j), (outlook_item_kind)j->kind, j->log.log_id,
                          on_found, j);
    } else if (j->n_extra > 0) {
        outlook_item_ref extra = {j->extra_ids[j->n_extra - 1], NULL};
        r = delivery_remove(env->backend, job_mailbox(j), (outlook_item_kind)j->kind, &extra,
                            on_extra_removed, j);
    } else if (step->action == RECONCILE_UPDATE) {
        r = delivery_update(env->backend, job_mailbox(j), &ref, &j->content[j->kind].item,
                            on_saved, j);
    } else {
        r = delivery_remove(env->backend, job_mailbox(j), (outlook_item_kind)j->kind, &ref,
                            on_removed, j);
    }
    if (r < 0) {
        j->busy = false;
        job_fail(j, r == -EINVAL, -1, false, "request", strerror(-r));
    }
}

/* ---- claim → job ---------------------------------------------------------- */

static const char *column(PGresult *result, int row, int col, job *j)
{
    if (PQgetisnull(result, row, col))
        return NULL;
    j->owned[col] = strdup(PQgetvalue(result, row, col));
    return j->owned[col];
}

static bool is_true(const char *value)
{
    return value && value[0] == 't';
}

job *job_from_claim(job_env *env, PGresult *result, int row, int64_t claimed_at_ms)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->env = env;
    j->kind = -1;
    j->valid_until_ms = claimed_at_ms + (int64_t)env->lease_seconds * 750;
    reconcile_log *log = &j->log;
    bool ok = true;

    for (int c = 0; c < COL_COUNT; c++) {
        column(result, row, c, j);
        if (!PQgetisnull(result, row, c) && !j->owned[c])
            ok = false;
    }
    if (!ok || !j->owned[COL_LOG_ID] || !j->owned[COL_TOKEN] || !j->owned[COL_VERSION] ||
        !j->owned[COL_REDO]) {
        job_free(j);
        return NULL;
    }
    const char *const *o = (const char *const *)j->owned;
    log->log_id = strtoll(o[COL_LOG_ID], NULL, 10);
    log->version = strtoll(o[COL_VERSION], NULL, 10);
    log->attempts = o[COL_ATTEMPTS] ? atoi(o[COL_ATTEMPTS]) : 0;
    j->forced = is_true(o[COL_FORCED]);
    log->inserted_with_follow_up = is_true(o[COL_INSERTED_WITH_FOLLOW_UP]);
    log->ever_synced = is_true(o[COL_EVER_SYNCED]);
    log->exists = is_true(o[COL_LOG_EXISTS]);
    log->completed = o[COL_STATUS] && strcmp(o[COL_STATUS], "completed") == 0;
    log->has_follow_up = o[COL_NEXT_CONTACT_AT] != NULL;
    log->next_contact_at = log->has_follow_up ? strtoll(o[COL_NEXT_CONTACT_AT], NULL, 10) : 0;
    log->reason = o[COL_REASON];
    log->contact_name = o[COL_CONTACT_NAME];
    log->priority = o[COL_PRIORITY];
    log->creator_email = o[COL_CREATOR_EMAIL];
    log->assigned_name = o[COL_ASSIGNED_NAME];
    log->forward_name = o[COL_FORWARD_NAME];
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        int base = COL_ITEM_FIRST + 5 * k;
        reconcile_current *cur = &log->current[k];
        cur->mailbox = o[base];
        cur->item_id = o[base + 1];
        cur->change_key = o[base + 2];
        /* A forced pass (resync, redo) does not trust what we recorded it holds. */
        cur->content_hash = j->forced ? NULL : o[base + 3];
        cur->pending = is_true(o[base + 4]);
        cur->present = cur->mailbox != NULL;
        j->item_id[k] = dup_or_null(cur->item_id);
        j->change_key[k] = dup_or_null(cur->change_key);
    }
    return j;
}

void job_start(job *j)
{
    job_env *env = j->env;
    const char *hashes[RECONCILE_KINDS] = {NULL, NULL};

    if (j->owned[COL_PROBLEM]) {   /* bad data in this one log: park it, alone */
        j->kind = 0;
        job_fail(j, true, -1, false, "InvalidLog", j->owned[COL_PROBLEM]);
        return;
    }
    /* The creator's own time zone, when set and known, over [exchange] time_zone. */
    reconcile_settings settings = env->settings;
    const char *iana = j->owned[COL_CREATOR_TIME_ZONE];
    if (iana && *iana) {
        const char *windows = timezone_windows_id(iana);
        if (windows)
            settings.time_zone = windows;
        else
            log_item(LOG_WARNING, j->log.log_id, NULL, NULL,
                     "contact log %" PRId64 ": employee time zone '%s' is unknown; using "
                     "[exchange] time_zone %s", j->log.log_id, iana, env->default_time_zone);
    }

    if (j->log.exists && j->log.has_follow_up) {
        for (int k = 0; k < RECONCILE_KINDS; k++) {
            if (item_content_build(&j->log, &settings, (outlook_item_kind)k, j->log.completed,
                                   &j->content[k]) < 0) {
                job_fail(j, false, -1, false, "ENOMEM", "out of memory building the item");
                return;
            }
            j->content_built[k] = true;
            hashes[k] = j->content[k].hash;
        }
    }
    reconcile_plan_log(&j->log, &settings, (int64_t)time(NULL), hashes, &j->plan);
    for (int k = 0; k < RECONCILE_KINDS; k++)
        if (j->plan.steps[k].action != RECONCILE_NOTHING)
            log_debug("contact log %" PRId64 ": %s: %s%s%s", j->log.log_id, kind_name(k),
                      reconcile_action_name(j->plan.steps[k].action),
                      j->plan.steps[k].lookup_first ? " after lookup" : "",
                      j->forced ? " (forced)" : "");
    /* A mailbox (or the server) asked for a pause: wait without spending an attempt,
     * while logs for other mailboxes go ahead. */
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        if (j->plan.steps[k].action == RECONCILE_NOTHING)
            continue;
        j->kind = k;
        int64_t wait = holdoff_remaining(env->holdoffs, job_mailbox(j));
        if (wait > 0) {
            log_item(LOG_DEBUG, j->log.log_id, job_mailbox(j), NULL,
                     "contact log %" PRId64 ": mailbox %s is throttled; waiting %" PRId64 " ms",
                     j->log.log_id, job_mailbox(j), wait);
            job_release(j, wait);
            return;
        }
        break;
    }
    j->kind = -1;
    job_advance(j);
}
