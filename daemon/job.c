/* job — see job.h.
 *
 * A job holds a claim token. Before every request it checks that its lease is
 * still known to be valid (renewed by the heartbeat) and that the daemon is not
 * stopping; every database write names the token and comes back "accepted" or
 * "fenced out". A fenced-out job stops at once: the database has already queued
 * the redo pass that repairs whatever it may have sent. */
#include "daemon/job_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/item_content.h"
#include "daemon/log.h"
#include "daemon/text.h"
#include "daemon/timezone.h"
#include "http/loop_timer.h"

const char *job_kind_name(int kind)
{
    return outlook_item_kind_name((outlook_item_kind)kind);
}

const char *job_mailbox(const job *j)
{
    int kind = j->kind >= 0 && j->kind < RECONCILE_KINDS ? j->kind : 0;
    const reconcile_current *cur = &j->log.current[kind];
    /* An existing item is addressed where it is (a move deletes it there first). */
    if (cur->present && cur->mailbox)
        return cur->mailbox;
    return j->plan.home ? j->plan.home : "";
}

int job_claim_columns(void)
{
    return COL_COUNT;
}

int64_t job_log_id(const job *j)
{
    return j->log.log_id;
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
void job_end(job *j)
{
    if (j->ended)
        return;
    j->ended = true;
    j->env->ended(j, j->env->userdata);
    job_free_when_idle(j);
}

/* The claim is gone: nothing more is sent or recorded by this job. */
void job_lose(job *j, const char *why)
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
bool job_resume(job *j)
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
bool job_may_send(job *j)
{
    if (j->lost)
        return false;
    if (j->stopping || j->env->draining) {
        job_release(j, 0);
        return false;
    }
    if (loop_timer_now_ms() >= j->valid_until_ms) {
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
    log->owner_email = o[COL_OWNER_EMAIL];
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
        cur->deleted_in_outlook = is_true(o[COL_DELETED_FIRST + k]);
        j->item_id[k] = text_dup(cur->item_id);
        j->change_key[k] = text_dup(cur->change_key);
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
    /* The time zone of the employee whose mailbox holds the items (the log's home),
     * when set and known, over [exchange] time_zone. */
    reconcile_settings settings = env->settings;
    bool home_is_owner = false;
    reconcile_home(&j->log, &settings, &home_is_owner);
    const char *iana = j->owned[home_is_owner ? COL_OWNER_TIME_ZONE : COL_CREATOR_TIME_ZONE];
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
            log_debug("contact log %" PRId64 ": %s: %s%s%s", j->log.log_id, job_kind_name(k),
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
