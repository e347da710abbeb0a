/* job internals — shared by the files of the job module only (job.c: life, claim
 * and start; job_steps.c: the steps per item kind; job_writes.c: the fenced writes
 * and the heartbeat; job_outcome.c: how a pass ends). Nothing else includes it. */
#ifndef FOLLOWUPD_JOB_INTERNAL_H
#define FOLLOWUPD_JOB_INTERNAL_H

#include "daemon/item_content.h"
#include "daemon/job.h"

/* Column order of contactlog.followupd_claim(). */
enum claim_column {
    COL_LOG_ID, COL_TOKEN, COL_VERSION, COL_REDO, COL_FORCED, COL_ATTEMPTS,
    COL_INSERTED_WITH_FOLLOW_UP, COL_EVER_SYNCED, COL_LOG_EXISTS, COL_STATUS,
    COL_NEXT_CONTACT_AT, COL_REASON, COL_CONTACT_NAME, COL_PRIORITY, COL_CREATOR_EMAIL,
    COL_CREATOR_TIME_ZONE, COL_ASSIGNED_NAME, COL_FORWARD_NAME,
    COL_ITEM_FIRST,   /* then per kind: mailbox, item_id, change_key, hash, pending */
    COL_PROBLEM = COL_ITEM_FIRST + 5 * RECONCILE_KINDS,   /* what the row cannot do */
    COL_OWNER_EMAIL, COL_OWNER_TIME_ZONE,   /* NULL: nobody who can hold the items */
    COL_DELETED_FIRST,                      /* then per kind: deleted in Outlook */
    COL_AFTER_DELETED = COL_DELETED_FIRST + RECONCILE_KINDS,
    COL_COUNT = COL_AFTER_DELETED,
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
    /* A lost create in the old mailbox is sent there once more (same transaction),
     * then moved: never a second create elsewhere while the first may still show up. */
    bool move_after[RECONCILE_KINDS];
    /* What Outlook holds for each kind as far as this job knows (owned). */
    char *item_id[RECONCILE_KINDS];
    char *change_key[RECONCILE_KINDS];
    char *transaction_id;            /* of the create being sent */
    char **extra_ids;                /* duplicates found by a lookup, to delete */
    size_t n_extra;
};

/* ---- job.c ---------------------------------------------------------------- */

const char *job_kind_name(int kind);
/* The mailbox of the kind being worked on: where its item is, or the log's home. */
const char *job_mailbox(const job *j);
/* The pass over this log is over for this daemon, one way or another. */
void job_end(job *j);
/* The claim is gone: nothing more is sent or recorded by this job. */
void job_lose(job *j, const char *why);
/* Called first by every completion: false when the job must not go on. */
bool job_resume(job *j);
/* Whether a request may be sent now (lease known valid, not stopping). */
bool job_may_send(job *j);

/* ---- job_writes.c --------------------------------------------------------- */

typedef void (*job_write_done_fn)(job *j, PGresult *result, int row);

/* Queues one fenced write for this job; then runs once it is accepted. The log id
 * and the token are the first two arrays of every write; more holds the rest, and
 * scalars (NULL: the settle time) the kind's scalar parameters. */
void job_write_row(job *j, enum job_write kind, const char *const *more,
                   const char *const *scalars, job_write_done_fn then);

/* ---- job_outcome.c -------------------------------------------------------- */

/* Ends the pass with "not yet": back off, or park when permanent. */
void job_fail(job *j, bool permanent, int64_t server_wait_ms, bool outcome_unknown,
              const char *code, const char *reason);
/* A request failed: wait as asked, pause for credentials, or job_fail. */
void job_fail_from_result(job *j, const delivery_result *r);
/* A request went through: the back end is fine, whatever it said before. */
void job_note_success(job *j);
/* Gives the claim back; why (may be NULL) is kept as the log's last error. */
void job_release_because(job *j, int64_t delay_ms, const char *why);
/* Every kind is done: records the pass as finished (or parks a log it cannot do). */
void job_finish(job *j);

/* ---- job_steps.c ---------------------------------------------------------- */

/* Goes on with the next kind that has something to do, or finishes the pass. */
void job_advance(job *j);
/* Runs the current kind's next step: lookup, create, update, delete. */
void job_run_step(job *j);

#endif
