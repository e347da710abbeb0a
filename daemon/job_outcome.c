/* job outcome — how a pass over a log ends (see job.h): finished; "not yet" with
 * back-off, or parked when permanent; the claim given back to wait for a throttled
 * mailbox or server; delivery paused while the service account is refused. */
#include "daemon/job_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"

static void set_last_error(job_env *env, const char *text)
{
    snprintf(env->stats.last_error, sizeof env->stats.last_error, "%s", text);
}

static void number_text(char *buf, size_t size, int64_t value)
{
    snprintf(buf, size, "%" PRId64, value);
}

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
void job_fail(job *j, bool permanent, int64_t server_wait_ms, bool outcome_unknown,
                     const char *code, const char *reason)
{
    job_env *env = j->env;
    int64_t delay = backoff_ms(env, j->log.attempts + 1);
    char delay_text[32], attempts_text[16], error[1024];

    if (server_wait_ms > delay)
        delay = server_wait_ms;   /* the server's wait is a floor, never shortened */
    if (outcome_unknown && delay < env->settle_ms)
        delay = env->settle_ms;
    snprintf(error, sizeof error, "%s %s: %s", job_kind_name(j->kind < 0 ? 0 : j->kind),
             code ? code : "", reason);
    set_last_error(env, error);
    env->stats.retries++;
    log_item(permanent ? LOG_ERR : LOG_WARNING, j->log.log_id, job_mailbox(j), code,
             "contact log %" PRId64 " (%s, mailbox %s): %s%s", j->log.log_id,
             job_kind_name(j->kind < 0 ? 0 : j->kind), job_mailbox(j), reason,
             permanent ? "; not retrying" : "; will retry");
    number_text(delay_text, sizeof delay_text, delay);
    snprintf(attempts_text, sizeof attempts_text, "%d", env->max_attempts);
    char settle[16];
    snprintf(settle, sizeof settle, "%d", env->settle_ms);
    const char *more[] = {j->owned[COL_VERSION], j->owned[COL_REDO], delay_text, error,
                          permanent ? "true" : "false"};
    const char *scalars[] = {attempts_text, settle};
    job_write_row(j, JOB_WRITE_RETRY_LATER, more, scalars, on_retry_recorded);
}

#define AUTH_WAIT_MIN_MS 5000
#define AUTH_WAIT_MAX_MS 300000

/* A request went through: the back end is fine, whatever it said before. */
void job_note_success(job *j)
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
    holdoff_pause(j->env->holdoffs, stats->auth_wait_ms);   /* ours, not a throttling hold */
    job_release_because(j, stats->auth_wait_ms, r->reason);
}

void job_fail_from_result(job *j, const delivery_result *r)
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
        snprintf(why, sizeof why, "%s %s: %s", job_kind_name(j->kind < 0 ? 0 : j->kind),
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
void job_release_because(job *j, int64_t delay_ms, const char *why)
{
    char delay_text[32];
    number_text(delay_text, sizeof delay_text, delay_ms);
    const char *more[] = {delay_text, why};
    j->stopping = true;
    job_write_row(j, JOB_WRITE_RELEASE, more, NULL, on_released);
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

void job_finish(job *j)
{
    if (j->plan.permanent_error) {
        j->kind = 0;
        job_fail(j, true, -1, false, "NoMailbox", j->plan.permanent_error);
        return;
    }
    const char *more[] = {j->owned[COL_VERSION], j->owned[COL_REDO]};
    job_write_row(j, JOB_WRITE_FINISH, more, NULL, on_finished);
}

