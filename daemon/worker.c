/* worker — see worker.h.
 *
 * One job per claimed log. A job walks the item kinds in order (appointment, then
 * task); each step is an optional lookup, then create / update / delete, each
 * followed by a database write that records what Outlook now holds. Everything is
 * a callback on the event loop: no step blocks. */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "item_content.h"
#include "loop_timer.h"
#include "timezone.h"
#include "log.h"
#include "reconcile.h"

#define SAFETY_POLL_SECONDS 30.0

static const char sql_attributes[] =
    "SELECT name, effective_value, problem FROM contactlog.effective_attribute";
static const char sql_claim[] = "SELECT * FROM contactlog.followupd_claim($1, $2, $3)";
static const char sql_next_due[] = "SELECT contactlog.followupd_next_due()";
static const char sql_forget_item[] = "SELECT contactlog.followupd_forget_item($1, $2)";
static const char sql_defer[] = "SELECT contactlog.followupd_defer($1, $2)";
static const char sql_retry_later[] =
    "SELECT contactlog.followupd_retry_later($1, $2, $3, $4, $5)";

typedef struct job job;

/* The writes every log makes, collected over one turn of the loop and sent as one
 * statement with an array per parameter: one round trip for many logs. */
enum write_kind { WRITE_BEGIN_CREATE, WRITE_RECORD_ITEM, WRITE_FINISH, WRITE_KINDS };

#define WRITE_MAX_PARAMS 6

typedef struct pending_write {
    job *job;
    db_result_fn then;
    char *params[WRITE_MAX_PARAMS];
} pending_write;

typedef struct write_batch {
    pending_write *items;
    size_t n, cap;
} write_batch;

typedef struct sent_batch {
    struct worker *w;
    enum write_kind kind;
    pending_write *items;
    size_t n;
} sent_batch;

static const struct {
    const char *sql;
    int n_params;
    const char *what;
} write_kinds[WRITE_KINDS] = {
    [WRITE_BEGIN_CREATE] = {"SELECT contactlog.followupd_begin_creates($1, $2, $3)", 3,
                            "the start of a create"},
    [WRITE_RECORD_ITEM] = {"SELECT contactlog.followupd_record_items($1, $2, $3, $4, $5, $6)",
                           6, "the Outlook item"},
    [WRITE_FINISH] = {"SELECT contactlog.followupd_finish_many($1, $2)", 2,
                      "the finished pass"},
};

/* A mailbox Exchange asked us to leave alone for a while (ErrorServerBusy). */
typedef struct mailbox_holdoff {
    char *mailbox;
    int64_t until_ms;            /* CLOCK_MONOTONIC */
    struct mailbox_holdoff *next;
} mailbox_holdoff;

struct worker {
    sd_event *event;
    db *database;
    delivery *backend;
    loop_timer *due_timer;
    char worker_id[128];
    int max_jobs;                /* logs worked on at once */
    int max_attempts;
    int backoff_initial_ms;
    int backoff_max_ms;
    int lease_seconds;
    char *time_zone;
    /* Settings from the attribute table, read afresh before every claim. */
    reconcile_settings settings;
    char *link_template;
    char *attribute_problems;   /* last reported, so each problem is logged once */
    bool claiming;
    bool rescan_wanted;
    bool draining;
    void (*drained)(void *userdata);
    void *drained_userdata;
    job *jobs;
    job *batch;                  /* claimed, waiting for the attributes to be read */
    int requested;               /* size of the claim in flight */
    bool batch_was_full;
    mailbox_holdoff *holdoffs;
    write_batch writes[WRITE_KINDS];
    loop_timer *write_timer;     /* sends the collected writes on the next loop turn */
    int64_t server_holdoff_until_ms;   /* HTTP 503/429: every request waits */
    worker_stats stats;
};

/* Column order of contactlog.followupd_claim(). */
enum claim_column {
    COL_LOG_ID, COL_VERSION, COL_ATTEMPTS, COL_INSERTED_WITH_FOLLOW_UP, COL_EVER_SYNCED,
    COL_LOG_EXISTS, COL_STATUS, COL_NEXT_CONTACT_AT, COL_REASON, COL_CONTACT_NAME,
    COL_PRIORITY, COL_CREATOR_EMAIL, COL_CREATOR_TIME_ZONE, COL_ASSIGNED_NAME,
    COL_FORWARD_NAME,
    COL_ITEM_FIRST,   /* then per kind: mailbox, item_id, change_key, hash, pending */
    COL_COUNT = COL_ITEM_FIRST + 5 * RECONCILE_KINDS,
};

struct job {
    worker *w;
    job *next;
    reconcile_log log;
    char *owned[COL_COUNT];          /* text of every column, kept for log's pointers */
    reconcile_plan plan;
    item_content content[RECONCILE_KINDS];
    bool content_built[RECONCILE_KINDS];
    int kind;                        /* the kind being worked on */
    bool looked_up[RECONCILE_KINDS];
    /* What Outlook holds for each kind as far as this job knows (owned). */
    char *item_id[RECONCILE_KINDS];
    char *change_key[RECONCILE_KINDS];
    char **extra_ids;                /* duplicates found by a lookup, to delete */
    size_t n_extra;
};

static void kick(worker *w);
static void job_run_step(job *j);
static void job_advance(job *j);
static void job_defer(job *j, int64_t wait_ms);
static void on_attributes(PGresult *result, void *userdata);

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
    return ews_item_kind_name((ews_item_kind)kind);
}

static const char *job_mailbox(const job *j)
{
    const reconcile_current *cur = &j->log.current[j->kind];
    /* An existing item lives where it was made, even if the creator's address changed. */
    if (cur->present && cur->mailbox)
        return cur->mailbox;
    return j->log.creator_email ? j->log.creator_email : "";
}

static void set_last_error(worker *w, const char *text)
{
    snprintf(w->stats.last_error, sizeof w->stats.last_error, "%s", text);
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* How long requests to mailbox must still wait (0: go ahead). Expired entries go. */
static int64_t holdoff_remaining(worker *w, const char *mailbox)
{
    int64_t now = monotonic_ms(), wait = w->server_holdoff_until_ms - now;

    for (mailbox_holdoff **p = &w->holdoffs; *p;) {
        mailbox_holdoff *h = *p;
        if (h->until_ms <= now) {
            *p = h->next;
            free(h->mailbox);
            free(h);
            continue;
        }
        if (mailbox && strcasecmp(h->mailbox, mailbox) == 0 && h->until_ms - now > wait)
            wait = h->until_ms - now;
        p = &h->next;
    }
    return wait > 0 ? wait : 0;
}

static void hold_off(worker *w, delivery_throttle scope, const char *mailbox, int64_t wait_ms)
{
    int64_t until = monotonic_ms() + wait_ms;

    if (wait_ms <= 0 || scope == DELIVERY_THROTTLE_NONE)
        return;
    if (scope == DELIVERY_THROTTLE_SERVER) {
        if (until > w->server_holdoff_until_ms)
            w->server_holdoff_until_ms = until;
        return;
    }
    for (mailbox_holdoff *h = w->holdoffs; h; h = h->next) {
        if (strcasecmp(h->mailbox, mailbox) == 0) {
            if (until > h->until_ms)
                h->until_ms = until;
            return;
        }
    }
    mailbox_holdoff *h = calloc(1, sizeof *h);
    if (!h || !(h->mailbox = strdup(mailbox))) {
        free(h);
        return;   /* the log's own retry delay still honours the wait */
    }
    h->until_ms = until;
    h->next = w->holdoffs;
    w->holdoffs = h;
}

/* ---- job life ------------------------------------------------------------- */

static void job_free(job *j)
{
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        if (j->content_built[k])
            item_content_clear(&j->content[k]);
        free(j->item_id[k]);
        free(j->change_key[k]);
    }
    for (size_t i = 0; i < j->n_extra; i++)
        free(j->extra_ids[i]);
    free(j->extra_ids);
    for (int c = 0; c < COL_COUNT; c++)
        free(j->owned[c]);
    free(j);
}

static void job_done(job *j)
{
    worker *w = j->w;
    for (job **p = &w->jobs; *p; p = &(*p)->next) {
        if (*p == j) {
            *p = j->next;
            break;
        }
    }
    w->stats.active--;
    job_free(j);
    if (w->draining && !w->jobs) {
        if (w->drained)
            w->drained(w->drained_userdata);
        return;
    }
    kick(w);
}

/* A database write failed: nothing more can be recorded for this log now. Its claim
 * lapses with our session or its lease, and the next pass starts it afresh. */
static void job_abandon(job *j, PGresult *result, const char *what)
{
    log_item(LOG_WARNING, j->log.log_id, NULL, NULL,
             "contact log %" PRId64 ": could not record %s: %s; it will be retried",
             j->log.log_id, what,
             result ? PQresultErrorMessage(result) : "database connection lost");
    job_done(j);
}

static bool query_or_abandon(job *j, const char *sql, int n, const char *const *params,
                             db_result_fn done, const char *what)
{
    if (db_query(j->w->database, sql, n, params, done, j) < 0) {
        job_abandon(j, NULL, what);
        return false;
    }
    return true;
}

/* {"a","b",NULL}: a PostgreSQL array literal of text values. */
static char *array_literal(const pending_write *items, size_t n, int param)
{
    size_t size = 3;
    for (size_t i = 0; i < n; i++) {
        const char *v = items[i].params[param];
        size += v ? 2 * strlen(v) + 3 : 5;
    }
    char *out = malloc(size), *p = out;
    if (!out)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        const char *v = items[i].params[param];
        if (i)
            *p++ = ',';
        if (!v) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (; *v; v++) {
            if (*v == '"' || *v == '\\')
                *p++ = '\\';
            *p++ = *v;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

static void free_pending(pending_write *item)
{
    for (int i = 0; i < WRITE_MAX_PARAMS; i++)
        free(item->params[i]);
}

static void on_batch_written(PGresult *result, void *userdata)
{
    sent_batch *sent = userdata;
    for (size_t i = 0; i < sent->n; i++) {
        pending_write *item = &sent->items[i];
        /* Each job goes on (or is abandoned) as if it had written alone. */
        if (!db_result_ok(result))
            job_abandon(item->job, result, write_kinds[sent->kind].what);
        else
            item->then(result, item->job);
        free_pending(item);
    }
    free(sent->items);
    free(sent);
}

static void flush_writes(void *userdata)
{
    worker *w = userdata;

    for (int k = 0; k < WRITE_KINDS; k++) {
        write_batch *batch = &w->writes[k];
        if (batch->n == 0)
            continue;
        sent_batch *sent = calloc(1, sizeof *sent);
        char *arrays[WRITE_MAX_PARAMS] = {0};
        bool ok = sent != NULL;
        for (int p = 0; ok && p < write_kinds[k].n_params; p++)
            ok = (arrays[p] = array_literal(batch->items, batch->n, p)) != NULL;
        if (ok) {
            *sent = (sent_batch){w, (enum write_kind)k, batch->items, batch->n};
            batch->items = NULL;
            batch->n = batch->cap = 0;
            ok = db_query(w->database, write_kinds[k].sql, write_kinds[k].n_params,
                          (const char *const *)arrays, on_batch_written, sent) == 0;
            if (!ok) {
                on_batch_written(NULL, sent);   /* every job abandons: no connection */
                sent = NULL;
            }
        }
        for (int p = 0; p < WRITE_MAX_PARAMS; p++)
            free(arrays[p]);
        if (!ok && sent) {
            free(sent);
            log_error("out of memory sending %s; retrying on the next turn",
                      write_kinds[k].what);
            loop_timer_arm(w->write_timer, 100000);
        }
    }
}

/* Queues one log's write for the next batch; then runs when it is recorded. */
static void batched_write(job *j, enum write_kind kind, const char *const *params,
                          db_result_fn then)
{
    worker *w = j->w;
    write_batch *batch = &w->writes[kind];

    if (!db_is_ready(w->database)) {
        job_abandon(j, NULL, write_kinds[kind].what);
        return;
    }
    if (batch->n == batch->cap) {
        size_t cap = batch->cap ? batch->cap * 2 : 16;
        pending_write *grown = realloc(batch->items, cap * sizeof *grown);
        if (!grown) {
            job_abandon(j, NULL, write_kinds[kind].what);
            return;
        }
        batch->items = grown;
        batch->cap = cap;
    }
    pending_write *item = &batch->items[batch->n];
    memset(item, 0, sizeof *item);
    item->job = j;
    item->then = then;
    for (int p = 0; p < write_kinds[kind].n_params; p++) {
        if (params[p] && !(item->params[p] = strdup(params[p]))) {
            free_pending(item);
            job_abandon(j, NULL, write_kinds[kind].what);
            return;
        }
    }
    batch->n++;
    loop_timer_arm(w->write_timer, 0);
}

static int64_t backoff_ms(const worker *w, int attempts)
{
    int64_t delay = w->backoff_initial_ms;
    for (int i = 1; i < attempts && delay < w->backoff_max_ms; i++)
        delay *= 2;
    if (delay > w->backoff_max_ms)
        delay = w->backoff_max_ms;
    /* ±20 % jitter spreads retries of a whole batch over time. */
    int64_t jitter = delay / 5;
    return delay - jitter + (jitter > 0 ? (int64_t)(rand() % (2 * jitter + 1)) : 0);
}

static void on_retry_recorded(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the retry");
        return;
    }
    if (PQntuples(result) == 1 && strcmp(PQgetvalue(result, 0, 0), "t") == 0) {
        j->w->stats.parked++;
        log_item(LOG_ERR, j->log.log_id, job_mailbox(j), NULL,
                 "contact log %" PRId64 " parked as failed: %s (followupctl retry %" PRId64
                 " queues it again)",
                 j->log.log_id, j->w->stats.last_error, j->log.log_id);
    }
    job_done(j);
}

/* Ends the pass over this log with "not yet": back off, or park when permanent. */
static void job_fail(job *j, bool permanent, int64_t server_wait_ms, const char *code,
                     const char *reason)
{
    worker *w = j->w;
    int64_t delay = backoff_ms(w, j->log.attempts + 1);
    char delay_text[32], attempts_text[16], error[1024];

    if (server_wait_ms > delay)
        delay = server_wait_ms;   /* the server's wait is a floor, never shortened */
    snprintf(error, sizeof error, "%s %s: %s", kind_name(j->kind), code ? code : "", reason);
    set_last_error(w, error);
    w->stats.retries++;
    log_item(permanent ? LOG_ERR : LOG_WARNING, j->log.log_id, job_mailbox(j), code,
             "contact log %" PRId64 " (%s, mailbox %s): %s%s", j->log.log_id,
             kind_name(j->kind), job_mailbox(j), reason,
             permanent ? "; not retrying" : "; will retry");
    snprintf(delay_text, sizeof delay_text, "%" PRId64, delay);
    snprintf(attempts_text, sizeof attempts_text, "%d", w->max_attempts);
    const char *params[] = {j->owned[COL_LOG_ID], delay_text, error, attempts_text,
                            permanent ? "true" : "false"};
    query_or_abandon(j, sql_retry_later, 5, params, on_retry_recorded, "the retry");
}

static void fail_from_result(job *j, const delivery_result *r)
{
    hold_off(j->w, r->throttle, job_mailbox(j), r->retry_after_ms);
    job_fail(j, r->outcome == DELIVERY_PERMANENT, r->retry_after_ms, r->code, r->reason);
}

/* ---- the steps ------------------------------------------------------------ */

static void on_finished(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the finished pass");
        return;
    }
    j->w->stats.delivered++;
    job_done(j);
}

static void job_finish(job *j)
{
    if (j->plan.permanent_error) {
        j->kind = 0;
        job_fail(j, true, -1, "NoMailbox", j->plan.permanent_error);
        return;
    }
    const char *params[] = {j->owned[COL_LOG_ID], j->owned[COL_VERSION]};
    batched_write(j, WRITE_FINISH, params, on_finished);
}

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

static void on_recorded(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the Outlook item");
        return;
    }
    job_advance(j);
}

static void record_item(job *j, db_result_fn then, const char *hash)
{
    const char *params[] = {j->owned[COL_LOG_ID], kind_name(j->kind), job_mailbox(j),
                            j->item_id[j->kind], j->change_key[j->kind], hash};
    batched_write(j, WRITE_RECORD_ITEM, params, then);
}

static void forget_item(job *j, db_result_fn then)
{
    const char *params[] = {j->owned[COL_LOG_ID], kind_name(j->kind)};
    query_or_abandon(j, sql_forget_item, 2, params, then, "the removed Outlook item");
}

static void adopt_item(job *j, const ews_item_ref *ref)
{
    replace_string(&j->item_id[j->kind], ref->item_id);
    replace_string(&j->change_key[j->kind], ref->change_key);
}

static void on_saved(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    reconcile_step *step = &j->plan.steps[j->kind];

    if (r->outcome == DELIVERY_NOT_FOUND && step->action == RECONCILE_UPDATE) {
        /* Deleted by the user in Outlook: make it again rather than loop on errors. */
        log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
                 "contact log %" PRId64 ": %s was deleted in Outlook; creating it again",
                 j->log.log_id, kind_name(j->kind));
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
    adopt_item(j, &r->item);
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s %sd in %s", j->log.log_id, kind_name(j->kind),
             reconcile_action_name(step->action), job_mailbox(j));
    record_item(j, on_recorded, j->content[j->kind].hash);
}

static void on_removed(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    if (r->outcome != DELIVERY_OK && r->outcome != DELIVERY_NOT_FOUND) {
        fail_from_result(j, r);
        return;
    }
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), r->code,
             "contact log %" PRId64 ": %s removed from %s", j->log.log_id, kind_name(j->kind),
             job_mailbox(j));
    forget_item(j, on_recorded);
}

static void send_create(job *j)
{
    int r = delivery_create(j->w->backend, job_mailbox(j), &j->content[j->kind].item,
                            on_saved, j);
    if (r < 0)
        job_fail(j, r == -EINVAL, -1, "request", strerror(-r));
}

static void on_create_begun(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the start of a create");
        return;
    }
    send_create(j);
}

/* Deletes duplicates a lookup found (at most one item per log, ever), one by one. */
static void on_extra_removed(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    if (r->outcome != DELIVERY_OK && r->outcome != DELIVERY_NOT_FOUND) {
        fail_from_result(j, r);
        return;
    }
    j->n_extra--;
    free(j->extra_ids[j->n_extra]);
    job_run_step(j);
}

static void on_adopted(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the adopted Outlook item");
        return;
    }
    job_run_step(j);
}

static void on_lookup_forgotten(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the missing Outlook item");
        return;
    }
    job_run_step(j);
}

static void on_found(const delivery_result *r, void *userdata)
{
    job *j = userdata;
    reconcile_step *step = &j->plan.steps[j->kind];

    if (r->outcome != DELIVERY_OK) {
        fail_from_result(j, r);
        return;
    }
    j->looked_up[j->kind] = true;
    if (r->n_found == 0) {
        /* The lost create never happened. */
        j->log.current[j->kind].present = false;
        if (step->action == RECONCILE_DELETE) {
            step->action = RECONCILE_NOTHING;
            forget_item(j, on_recorded);
            return;
        }
        step->action = RECONCILE_CREATE;
        forget_item(j, on_lookup_forgotten);
        return;
    }
    log_item(LOG_INFO, j->log.log_id, job_mailbox(j), NULL,
             "contact log %" PRId64 ": found the %s of an earlier create; adopting it%s",
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
    record_item(j, on_adopted, NULL);
}

static void job_run_step(job *j)
{
    reconcile_step *step = &j->plan.steps[j->kind];
    worker *w = j->w;
    ews_item_ref ref = {j->item_id[j->kind], j->change_key[j->kind]};
    int r = 0;

    if (step->lookup_first && !j->looked_up[j->kind]) {
        r = delivery_find(w->backend, job_mailbox(j), (ews_item_kind)j->kind, j->log.log_id,
                          on_found, j);
    } else if (j->n_extra > 0) {
        ews_item_ref extra = {j->extra_ids[j->n_extra - 1], NULL};
        r = delivery_remove(w->backend, job_mailbox(j), (ews_item_kind)j->kind, &extra,
                            on_extra_removed, j);
    } else {
        switch (step->action) {
        case RECONCILE_NOTHING:
            job_advance(j);
            return;
        case RECONCILE_CREATE: {
            const char *params[] = {j->owned[COL_LOG_ID], kind_name(j->kind), job_mailbox(j)};
            /* Recorded before sending: a lost answer leads to a lookup, not a duplicate. */
            batched_write(j, WRITE_BEGIN_CREATE, params, on_create_begun);
            return;
        }
        case RECONCILE_UPDATE:
            r = delivery_update(w->backend, job_mailbox(j), &ref, &j->content[j->kind].item,
                                on_saved, j);
            break;
        case RECONCILE_DELETE:
            r = delivery_remove(w->backend, job_mailbox(j), (ews_item_kind)j->kind, &ref,
                                on_removed, j);
            break;
        }
    }
    if (r < 0)
        job_fail(j, r == -EINVAL, -1, "request", strerror(-r));
}

/* ---- claiming --------------------------------------------------------------- */

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

static job *job_from_row(worker *w, PGresult *result, int row)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->w = w;
    reconcile_log *log = &j->log;
    const char *status;

    log->log_id = strtoll(column(result, row, COL_LOG_ID, j), NULL, 10);
    log->version = strtoll(column(result, row, COL_VERSION, j), NULL, 10);
    log->attempts = atoi(column(result, row, COL_ATTEMPTS, j));
    log->inserted_with_follow_up = is_true(column(result, row, COL_INSERTED_WITH_FOLLOW_UP, j));
    log->ever_synced = is_true(column(result, row, COL_EVER_SYNCED, j));
    log->exists = is_true(column(result, row, COL_LOG_EXISTS, j));
    status = column(result, row, COL_STATUS, j);
    log->completed = status && strcmp(status, "completed") == 0;
    const char *next_contact = column(result, row, COL_NEXT_CONTACT_AT, j);
    log->has_follow_up = next_contact != NULL;
    log->next_contact_at = next_contact ? strtoll(next_contact, NULL, 10) : 0;
    log->reason = column(result, row, COL_REASON, j);
    log->contact_name = column(result, row, COL_CONTACT_NAME, j);
    log->priority = column(result, row, COL_PRIORITY, j);
    log->creator_email = column(result, row, COL_CREATOR_EMAIL, j);
    column(result, row, COL_CREATOR_TIME_ZONE, j);
    log->assigned_name = column(result, row, COL_ASSIGNED_NAME, j);
    log->forward_name = column(result, row, COL_FORWARD_NAME, j);
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        int base = COL_ITEM_FIRST + 5 * k;
        reconcile_current *cur = &log->current[k];
        cur->mailbox = column(result, row, base, j);
        cur->item_id = column(result, row, base + 1, j);
        cur->change_key = column(result, row, base + 2, j);
        cur->content_hash = column(result, row, base + 3, j);
        cur->pending = is_true(column(result, row, base + 4, j));
        cur->present = cur->mailbox != NULL;
        j->item_id[k] = dup_or_null(cur->item_id);
        j->change_key[k] = dup_or_null(cur->change_key);
    }
    return j;
}

static void job_start(job *j)
{
    worker *w = j->w;
    const char *hashes[RECONCILE_KINDS] = {NULL, NULL};
    /* The creator's own time zone, when set and known, over [exchange] time_zone. */
    reconcile_settings settings = w->settings;
    const char *iana = j->owned[COL_CREATOR_TIME_ZONE];
    if (iana && *iana) {
        const char *windows = timezone_windows_id(iana);
        if (windows)
            settings.time_zone = windows;
        else
            log_item(LOG_WARNING, j->log.log_id, NULL, NULL,
                     "contact log %" PRId64 ": employee time zone '%s' is unknown; using "
                     "[exchange] time_zone %s", j->log.log_id, iana, w->time_zone);
    }

    if (j->log.exists && j->log.has_follow_up) {
        for (int k = 0; k < RECONCILE_KINDS; k++) {
            if (item_content_build(&j->log, &settings, (ews_item_kind)k, j->log.completed,
                                   &j->content[k]) < 0) {
                job_fail(j, false, -1, "ENOMEM", "out of memory building the item");
                return;
            }
            j->content_built[k] = true;
            hashes[k] = j->content[k].hash;
        }
    }
    reconcile_plan_log(&j->log, &settings, (int64_t)time(NULL), hashes, &j->plan);
    for (int k = 0; k < RECONCILE_KINDS; k++)
        if (j->plan.steps[k].action != RECONCILE_NOTHING)
            log_debug("contact log %" PRId64 ": %s: %s%s", j->log.log_id, kind_name(k),
                      reconcile_action_name(j->plan.steps[k].action),
                      j->plan.steps[k].lookup_first ? " after lookup" : "");
    /* A mailbox (or the server) asked for a pause: wait without spending an attempt,
     * while logs for other mailboxes go ahead. */
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        if (j->plan.steps[k].action == RECONCILE_NOTHING)
            continue;
        j->kind = k;
        int64_t wait = holdoff_remaining(w, job_mailbox(j));
        if (wait > 0) {
            job_defer(j, wait);
            return;
        }
        break;
    }
    j->kind = -1;
    job_advance(j);
}

static void on_deferred(PGresult *result, void *userdata)
{
    job *j = userdata;
    if (!db_result_ok(result)) {
        job_abandon(j, result, "the deferral");
        return;
    }
    job_done(j);
}

static void job_defer(job *j, int64_t wait_ms)
{
    char wait_text[32];
    snprintf(wait_text, sizeof wait_text, "%" PRId64, wait_ms);
    log_item(LOG_DEBUG, j->log.log_id, job_mailbox(j), NULL,
             "contact log %" PRId64 ": mailbox %s is throttled; waiting %" PRId64 " ms",
             j->log.log_id, job_mailbox(j), wait_ms);
    const char *params[] = {j->owned[COL_LOG_ID], wait_text};
    query_or_abandon(j, sql_defer, 2, params, on_deferred, "the deferral");
}

static void arm_due_timer(worker *w, double seconds)
{
    if (seconds < 0 || seconds > SAFETY_POLL_SECONDS)
        seconds = SAFETY_POLL_SECONDS;
    log_debug("next queue scan in %.3f s (%zu logs being worked on)", seconds, w->stats.active);
    if (loop_timer_arm(w->due_timer, (uint64_t)(seconds * 1e6) + 1000) < 0)
        log_error("cannot arm the queue timer; new work is picked up on notifications only");
}

static void on_next_due(PGresult *result, void *userdata)
{
    worker *w = userdata;
    double seconds = SAFETY_POLL_SECONDS;

    if (db_result_ok(result) && PQntuples(result) == 1 && !PQgetisnull(result, 0, 0))
        seconds = atof(PQgetvalue(result, 0, 0));
    arm_due_timer(w, seconds);
}

static void claiming_done(worker *w)
{
    w->claiming = false;
    if (w->rescan_wanted)
        kick(w);
}

static void free_batch(worker *w)
{
    while (w->batch) {
        job *next = w->batch->next;
        job_free(w->batch);
        w->batch = next;
    }
}

static void on_claimed(PGresult *result, void *userdata)
{
    worker *w = userdata;

    if (!db_result_ok(result)) {
        if (result)
            log_error("claiming queued logs failed: %s", PQresultErrorMessage(result));
        w->claiming = false;
        arm_due_timer(w, 5);
        return;
    }
    int rows = PQntuples(result);
    if (PQnfields(result) != COL_COUNT) {
        log_error("contactlog.followupd_claim() returned %d columns, expected %d: run "
                  "followupctl migrate", PQnfields(result), (int)COL_COUNT);
        w->claiming = false;
        arm_due_timer(w, SAFETY_POLL_SECONDS);
        return;
    }
    if (rows == 0) {
        if (db_query(w->database, sql_next_due, 0, NULL, on_next_due, w) < 0)
            arm_due_timer(w, 1);
        claiming_done(w);
        return;
    }
    for (int row = 0; row < rows; row++) {
        job *j = job_from_row(w, result, row);
        if (!j) {
            log_error("out of memory claiming contact logs");
            break;
        }
        j->next = w->batch;
        w->batch = j;
    }
    w->batch_was_full = rows >= w->requested;
    /* Attributes are read after the claim, so that a log never meets attributes
     * older than itself (an administrator's change committed before the log). */
    if (db_query(w->database, sql_attributes, 0, NULL, on_attributes, w) < 0) {
        free_batch(w);   /* the claims lapse with our session or their lease */
        w->claiming = false;
    }
}

static void report_attribute_problems(worker *w, PGresult *result)
{
    size_t total = 1;
    int rows = PQntuples(result);
    for (int row = 0; row < rows; row++)
        if (!PQgetisnull(result, row, 2))
            total += strlen(PQgetvalue(result, row, 2)) + 1;
    char *problems = calloc(1, total);
    if (!problems)
        return;
    for (int row = 0; row < rows; row++) {
        if (PQgetisnull(result, row, 2))
            continue;
        strcat(problems, PQgetvalue(result, row, 2));
        strcat(problems, "\n");
    }
    if (!w->attribute_problems || strcmp(problems, w->attribute_problems) != 0) {
        for (int row = 0; row < rows; row++)
            if (!PQgetisnull(result, row, 2))
                log_warning("%s (fix it with followupctl attr)", PQgetvalue(result, row, 2));
        free(w->attribute_problems);
        w->attribute_problems = problems;
    } else {
        free(problems);
    }
}

static void apply_attributes(worker *w, PGresult *result)
{
    reconcile_settings *s = &w->settings;
    for (int row = 0; row < PQntuples(result); row++) {
        const char *name = PQgetvalue(result, row, 0);
        const char *value = PQgetvalue(result, row, 1);
        if (strcmp(name, "DefaultMessageSystem") == 0)
            s->outlook_enabled = strcmp(value, "Outlook Mail") == 0;
        else if (strcmp(name, "AddToCalendar") == 0)
            s->add_to_calendar = strcmp(value, "1") == 0;
        else if (strcmp(name, "AddToTasks") == 0)
            s->add_to_tasks = strcmp(value, "1") == 0;
        else if (strcmp(name, "SyncUpdates") == 0)
            s->sync_updates = strcmp(value, "1") == 0;
        else if (strcmp(name, "AppointmentDurationInMinutes") == 0)
            s->duration_minutes = atoi(value);
        else if (strcmp(name, "ReminderMinutesBeforeStart") == 0)
            s->reminder_minutes = atoi(value);
        else if (strcmp(name, "LinkUrlTemplate") == 0) {
            char *copy = strdup(value);
            if (copy) {
                free(w->link_template);
                w->link_template = copy;
            }
        }
    }
    s->link_template = w->link_template;
    s->time_zone = w->time_zone;
    report_attribute_problems(w, result);
}

static void on_attributes(PGresult *result, void *userdata)
{
    worker *w = userdata;

    if (!db_result_ok(result)) {
        if (result)
            log_error("reading contactlog.effective_attribute failed: %s (run followupctl "
                      "migrate?)", PQresultErrorMessage(result));
        free_batch(w);
        w->claiming = false;
        arm_due_timer(w, 5);
        return;
    }
    apply_attributes(w, result);
    job *batch = w->batch;
    w->batch = NULL;
    while (batch) {
        job *j = batch;
        batch = j->next;
        j->next = w->jobs;
        w->jobs = j;
        w->stats.active++;
        job_start(j);
    }
    if (w->batch_was_full)
        w->rescan_wanted = true;   /* a full batch: more may be waiting */
    claiming_done(w);
}

static void kick(worker *w)
{
    char batch[16], lease[16];

    if (w->claiming) {
        w->rescan_wanted = true;   /* claim again when this one is back */
        return;
    }
    if (w->draining || !db_is_ready(w->database) || (int)w->stats.active >= w->max_jobs)
        return;
    w->claiming = true;
    w->rescan_wanted = false;
    w->requested = w->max_jobs - (int)w->stats.active;
    snprintf(batch, sizeof batch, "%d", w->requested);
    snprintf(lease, sizeof lease, "%d", w->lease_seconds);
    const char *params[] = {batch, lease, w->worker_id};
    if (db_query(w->database, sql_claim, 3, params, on_claimed, w) < 0)
        w->claiming = false;
}

static void on_due(void *userdata)
{
    kick(userdata);
}

/* ---- public ----------------------------------------------------------------- */

void worker_apply_config(worker *w, const config *cfg)
{
    /* Enough logs in progress to fill every request slot with a full batch; the back
     * end keeps the number of requests in flight at concurrency. */
    w->max_jobs = cfg->concurrency * cfg->batch_size;
    w->max_attempts = cfg->max_attempts;
    w->backoff_initial_ms = cfg->backoff_initial_ms;
    w->backoff_max_ms = cfg->backoff_max_ms;
    /* Long enough for every step of one log, each bounded by the request timeout. */
    w->lease_seconds = cfg->timeout_seconds * 10 + 60;
    replace_string(&w->time_zone, cfg->time_zone);
    w->settings.time_zone = w->time_zone;
    kick(w);
}

worker *worker_new(sd_event *event, db *database, delivery *backend, const config *cfg)
{
    worker *w = calloc(1, sizeof *w);
    char host[64] = "localhost";

    if (!w)
        return NULL;
    w->event = sd_event_ref(event);
    w->database = database;
    w->backend = backend;
    gethostname(host, sizeof host - 1);
    snprintf(w->worker_id, sizeof w->worker_id, "%s:%ld", host, (long)getpid());
    /* Safe defaults until the attribute table is read. */
    w->settings.outlook_enabled = false;
    w->due_timer = loop_timer_new(event, on_due, w);
    w->write_timer = loop_timer_new(event, flush_writes, w);
    if (!w->due_timer || !w->write_timer) {
        worker_free(w);
        return NULL;
    }
    worker_apply_config(w, cfg);
    return w;
}

void worker_free(worker *w)
{
    if (!w)
        return;
    while (w->jobs) {
        job *next = w->jobs->next;
        job_free(w->jobs);
        w->jobs = next;
    }
    free_batch(w);
    while (w->holdoffs) {
        mailbox_holdoff *next = w->holdoffs->next;
        free(w->holdoffs->mailbox);
        free(w->holdoffs);
        w->holdoffs = next;
    }
    for (int k = 0; k < WRITE_KINDS; k++) {
        for (size_t i = 0; i < w->writes[k].n; i++)
            free_pending(&w->writes[k].items[i]);
        free(w->writes[k].items);
    }
    loop_timer_free(w->write_timer);
    loop_timer_free(w->due_timer);
    sd_event_unref(w->event);
    free(w->time_zone);
    free(w->link_template);
    free(w->attribute_problems);
    free(w);
}

void worker_db_connected(worker *w)
{
    /* Anything committed while we were away is in the outbox: scan it now. */
    kick(w);
}

void worker_db_disconnected(worker *w)
{
    /* Queries in flight were failed by db (their jobs are abandoned); claiming stops. */
    w->claiming = false;
}

void worker_notified(worker *w)
{
    kick(w);
}

void worker_drain(worker *w, void (*drained)(void *userdata), void *userdata)
{
    w->draining = true;
    w->drained = drained;
    w->drained_userdata = userdata;
    loop_timer_disarm(w->due_timer);
    if (!w->jobs && drained)
        drained(userdata);
}

const worker_stats *worker_get_stats(const worker *w)
{
    return &w->stats;
}
