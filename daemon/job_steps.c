/* job steps — one kind at a time (see job.h): an optional lookup by the log's tag,
 * then create / update / delete, each followed by its fenced write. A lookup adopts
 * the item it finds and removes duplicates; "not found" leads to a lookup, never to
 * a blind create. */
#include "daemon/job_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/text.h"

static void replace_string(char **slot, const char *value)
{
    free(*slot);
    *slot = text_dup(value);
}

void job_advance(job *j)
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

static void record_item(job *j, job_write_done_fn then, const char *hash)
{
    const char *more[] = {job_kind_name(j->kind), job_mailbox(j), j->item_id[j->kind],
                          j->change_key[j->kind], hash};
    job_write_row(j, JOB_WRITE_RECORD_ITEM, more, NULL, then);
}

static void forget_item(job *j, job_write_done_fn then)
{
    const char *more[] = {job_kind_name(j->kind)};
    job_write_row(j, JOB_WRITE_FORGET_ITEM, more, NULL, then);
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

/* The first half of a move is done (the item is gone from the old mailbox and
 * forgotten): the second half creates it in the home. */
static void on_moved_out(job *j, PGresult *result, int row)
{
    (void)result;
    (void)row;
    reconcile_step *step = &j->plan.steps[j->kind];
    j->log.current[j->kind].present = false;
    j->log.current[j->kind].pending = false;
    replace_string(&j->item_id[j->kind], NULL);
    replace_string(&j->change_key[j->kind], NULL);
    step->action = RECONCILE_CREATE;
    step->lookup_first = false;
    job_run_step(j);
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
                 j->log.log_id, job_kind_name(j->kind));
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
        job_fail_from_result(j, r);
        return;
    }
    job_note_success(j);
    adopt_item(j, &r->item);
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s %sd in %s", j->log.log_id, job_kind_name(j->kind),
             reconcile_action_name(step->action), job_mailbox(j));
    if (j->move_after[j->kind]) {
        /* The repeated create is recorded where it went; now it moves home. */
        j->move_after[j->kind] = false;
        j->log.current[j->kind].present = true;
        j->log.current[j->kind].pending = false;
        step->action = RECONCILE_MOVE;
        record_item(j, on_step_recorded, j->content[j->kind].hash);
        return;
    }
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
        job_fail_from_result(j, r);
        return;
    }
    job_note_success(j);
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s removed from %s%s", j->log.log_id,
             job_kind_name(j->kind), job_mailbox(j),
             j->plan.steps[j->kind].action == RECONCILE_MOVE ? " (moving it home)" : "");
    /* A move records the delete before it creates: a crash between the two leaves
     * no item rather than two (docs/architecture.md "Moves between mailboxes"). */
    forget_item(j, j->plan.steps[j->kind].action == RECONCILE_MOVE ? on_moved_out : on_recorded);
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
        job_fail_from_result(j, r);
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
        job_fail_from_result(j, r);
        return;
    }
    job_note_success(j);
    j->looked_up[j->kind] = true;
    if (r->n_found == 0) {
        /* Nothing carries the log's tag: the create never happened, or the item was
         * deleted in Outlook. */
        bool create_pending = j->log.current[j->kind].pending;
        if (step->action == RECONCILE_MOVE && create_pending) {
            /* Where the lost create went; it may yet show up there (search lag):
             * repeat it there with the same transaction, then move it. */
            j->move_after[j->kind] = true;
            step->action = RECONCILE_CREATE;
            job_run_step(j);
            return;
        }
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
             j->log.log_id, job_kind_name(j->kind),
             r->n_found > 1 ? " and removing duplicates" : "");
    adopt_item(j, &r->found[0]);
    for (size_t i = 1; i < r->n_found; i++) {
        char **grown = realloc(j->extra_ids, (j->n_extra + 1) * sizeof *grown);
        if (!grown)
            break;
        j->extra_ids = grown;
        if ((j->extra_ids[j->n_extra] = text_dup(r->found[i].item_id)))
            j->n_extra++;
    }
    j->log.current[j->kind].present = true;
    j->log.current[j->kind].pending = false;
    /* We do not know what the found item holds: overwrite it unless it must go (or
     * move: it is made afresh in the home). */
    if (step->action != RECONCILE_DELETE && step->action != RECONCILE_MOVE)
        step->action = RECONCILE_UPDATE;
    record_item(j, on_step_recorded, NULL);
}

void job_run_step(job *j)
{
    reconcile_step *step = &j->plan.steps[j->kind];
    job_env *env = j->env;
    outlook_item_ref ref = {j->item_id[j->kind], j->change_key[j->kind]};
    int r = 0;

    if (step->action == RECONCILE_NOTHING && j->n_extra == 0) {
        job_advance(j);
        return;
    }
    if (step->action == RECONCILE_FORGET) {
        /* Deleted in Outlook and no longer wanted: only our record goes. */
        forget_item(j, on_recorded);
        return;
    }
    if (step->action == RECONCILE_CREATE && !(step->lookup_first && !j->looked_up[j->kind]) &&
        j->n_extra == 0) {
        const char *more[] = {job_kind_name(j->kind), job_mailbox(j)};
        /* Recorded before sending: a lost answer leads to a lookup, not a duplicate.
         * The write also proves the claim still holds. */
        if (!job_may_send(j))
            return;
        job_write_row(j, JOB_WRITE_BEGIN_CREATE, more, NULL, on_create_begun);
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

