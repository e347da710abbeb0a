/* worker — see worker.h.
 *
 * The worker claims due logs in batches (contactlog.followupd_claim), reads the
 * attributes, and starts one job per claimed log (job.c). It keeps the jobs'
 * leases alive with one batched heartbeat, re-adopts them after a reconnect, and
 * at start-up takes over the claims of an earlier process on this host that is
 * gone. The claim protocol is described in docs/architecture.md, "Claiming". */
#include "daemon/worker.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "daemon/job.h"
#include "daemon/log.h"
#include "daemon/text.h"
#include "http/loop_timer.h"

#define SAFETY_POLL_SECONDS 30.0
#define MIN_LEASE_SECONDS 30

static const char sql_attributes[] =
    "SELECT name, effective_value, problem FROM contactlog.effective_attribute";
static const char sql_claim[] = "SELECT * FROM contactlog.followupd_claim($1, $2, $3, $4)";
static const char sql_next_due[] = "SELECT contactlog.followupd_next_due($1)";
static const char sql_claimants[] = "SELECT * FROM contactlog.followupd_claimants($1)";
static const char sql_take_over[] = "SELECT contactlog.followupd_take_over($1)";

struct worker {
    sd_event *event;
    db *database;
    loop_timer *due_timer;
    loop_timer *heartbeat_timer;
    char worker_id[160];         /* host:pid:nonce — who holds our claims */
    char host_prefix[96];        /* host: — claims of earlier processes here */
    int max_jobs;                /* logs worked on at once */
    char *time_zone;
    char *link_template;
    char *attribute_problems;    /* last reported, so each problem is logged once */
    bool claiming;
    bool attributes_wanted;      /* the batch waits for a reconnect to read them */
    bool rescan_wanted;
    bool draining;
    void (*drained)(void *userdata);
    void *drained_userdata;
    job **jobs;                  /* alive, each holding a claim */
    size_t n_jobs, cap_jobs;
    job **batch;                 /* claimed, waiting for the attributes to be read */
    size_t n_batch;
    int64_t batch_claimed_at_ms;
    int requested;               /* size of the claim in flight */
    job_env env;
    worker_stats stats;
    void (*state_changed)(void *userdata);
    void *state_userdata;
};

static void kick(worker *w);
static void on_attributes(PGresult *result, void *userdata);

static void settle_text(const worker *w, char *buf, size_t size)
{
    snprintf(buf, size, "%d", w->env.settle_ms);
}

/* ---- the job list ---------------------------------------------------------- */

static job *find_job(worker *w, int64_t log_id)
{
    for (size_t i = 0; i < w->n_jobs; i++)
        if (job_log_id(w->jobs[i]) == log_id)
            return w->jobs[i];
    return NULL;
}

static bool add_job(worker *w, job *j)
{
    if (w->n_jobs == w->cap_jobs) {
        size_t cap = w->cap_jobs ? w->cap_jobs * 2 : 64;
        job **grown = realloc(w->jobs, cap * sizeof *grown);
        if (!grown)
            return false;
        w->jobs = grown;
        w->cap_jobs = cap;
    }
    w->jobs[w->n_jobs++] = j;
    w->env.stats.active = w->n_jobs;
    return true;
}

/* job_env.state_changed: passed on to whoever reports the daemon's state. */
static void on_state_changed(void *userdata)
{
    worker *w = userdata;
    if (w->state_changed)
        w->state_changed(w->state_userdata);
}

void worker_on_state_change(worker *w, void (*fn)(void *userdata), void *userdata)
{
    w->state_changed = fn;
    w->state_userdata = userdata;
}

/* job_env.ended: a job is over (finished, released, fenced out or abandoned). */
static void on_job_ended(job *j, void *userdata)
{
    worker *w = userdata;
    for (size_t i = 0; i < w->n_jobs; i++) {
        if (w->jobs[i] == j) {
            w->jobs[i] = w->jobs[--w->n_jobs];
            break;
        }
    }
    w->env.stats.active = w->n_jobs;
    if (w->draining) {
        if (w->n_jobs == 0 && w->drained) {
            void (*drained)(void *) = w->drained;
            w->drained = NULL;
            drained(w->drained_userdata);
        }
        return;
    }
    kick(w);
}

static void free_batch(worker *w)
{
    for (size_t i = 0; i < w->n_batch; i++)
        job_free(w->batch[i]);
    free(w->batch);
    w->batch = NULL;
    w->n_batch = 0;
}

/* ---- heartbeat and take-over ------------------------------------------------ */

static void arm_heartbeat(worker *w)
{
    loop_timer_arm(w->heartbeat_timer, (uint64_t)w->env.lease_seconds * 1000000ULL / 4);
}

static void heartbeat(worker *w)
{
    for (size_t i = 0; i < w->n_jobs; i++)
        job_renew(w->jobs[i]);
}

static void on_heartbeat(void *userdata)
{
    worker *w = userdata;
    heartbeat(w);
    arm_heartbeat(w);
}

/* Whether the process pid on this host may still be sending requests. A zombie
 * sends nothing; EPERM means it exists under another user. */
static bool process_alive(pid_t pid)
{
    char path[64], state = 0;
    if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
        return false;
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        /* "pid (comm) S ...": the state follows the last ')'. */
        char line[512];
        if (fgets(line, sizeof line, f)) {
            char *close = strrchr(line, ')');
            if (close && close[1] == ' ')
                state = close[2];
        }
        fclose(f);
    }
    return state != 'Z';
}

static void on_taken_over(PGresult *result, void *userdata)
{
    (void)userdata;
    if (db_result_ok(result) && PQntuples(result) == 1 && atoi(PQgetvalue(result, 0, 0)) > 0)
        log_notice("took over %s claims of an earlier followupd on this host; they are "
                   "worked on once anything it sent can have landed", PQgetvalue(result, 0, 0));
}

/* Claims held by processes on this host that are gone (kill -9, crash) lapse now
 * instead of at the end of their lease. */
static void on_claimants(PGresult *result, void *userdata)
{
    worker *w = userdata;
    if (!db_result_ok(result))
        return;
    size_t size = 3, n = 0;
    for (int row = 0; row < PQntuples(result); row++)
        size += 2 * strlen(PQgetvalue(result, row, 0)) + 3;
    char *list = malloc(size), *p = list;
    if (!list)
        return;
    *p++ = '{';
    for (int row = 0; row < PQntuples(result); row++) {
        const char *id = PQgetvalue(result, row, 0);
        const char *pid_text = id + strlen(w->host_prefix);
        if (strcmp(id, w->worker_id) == 0 || strncmp(id, w->host_prefix, strlen(w->host_prefix)))
            continue;
        if (process_alive((pid_t)strtol(pid_text, NULL, 10)))
            continue;
        p += sprintf(p, "%s\"", n++ ? "," : "");
        for (; *id; id++) {   /* worker ids are host:pid:hex, but quote anyway */
            if (*id == '"' || *id == '\\')
                *p++ = '\\';
            *p++ = *id;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    const char *params[] = {list};
    if (n > 0 && db_query(w->database, sql_take_over, 1, params, on_taken_over, w) < 0)
        log_warning("could not take over the claims of an earlier followupd; they lapse "
                    "with their lease");
    free(list);
}

/* ---- claiming --------------------------------------------------------------- */

static void arm_due_timer(worker *w, double seconds)
{
    if (seconds < 0 || seconds > SAFETY_POLL_SECONDS)
        seconds = SAFETY_POLL_SECONDS;
    log_debug("next queue scan in %.3f s (%zu logs being worked on)", seconds, w->n_jobs);
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
    if (PQnfields(result) != job_claim_columns()) {
        log_error("contactlog.followupd_claim() returned %d columns, expected %d: run "
                  "followupctl migrate", PQnfields(result), job_claim_columns());
        w->claiming = false;
        arm_due_timer(w, SAFETY_POLL_SECONDS);
        return;
    }
    if (rows == 0) {
        char settle[16];
        settle_text(w, settle, sizeof settle);
        const char *params[] = {settle};
        if (db_query(w->database, sql_next_due, 1, params, on_next_due, w) < 0)
            arm_due_timer(w, 1);
        claiming_done(w);
        return;
    }
    free_batch(w);
    w->batch = calloc((size_t)rows, sizeof *w->batch);
    for (int row = 0; w->batch && row < rows; row++) {
        job *j = job_from_claim(&w->env, result, row, w->batch_claimed_at_ms);
        if (!j) {
            log_error("out of memory claiming contact logs");
            break;   /* the rest lapse with their lease */
        }
        w->batch[w->n_batch++] = j;
    }
    if (rows >= w->requested)
        w->rescan_wanted = true;   /* a full batch: more may be waiting */
    /* Attributes are read after the claim, so that a log never meets attributes
     * older than itself (an administrator's change committed before the log). */
    if (db_query(w->database, sql_attributes, 0, NULL, on_attributes, w) < 0) {
        free_batch(w);   /* the claims lapse with their lease */
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
    reconcile_settings *s = &w->env.settings;
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
        else if (strcmp(name, "FollowUpMailbox") == 0)
            s->follow_owner = strcmp(value, "owner") == 0;
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

    if (!result) {
        /* The connection dropped: the claims are still ours (re-adopted on reconnect),
         * so the batch waits for the attributes instead of lapsing. */
        w->attributes_wanted = true;
        return;
    }
    if (!db_result_ok(result)) {
        log_error("reading contactlog.effective_attribute failed: %s (run followupctl "
                  "migrate?)", PQresultErrorMessage(result));
        free_batch(w);
        w->claiming = false;
        arm_due_timer(w, 5);
        return;
    }
    apply_attributes(w, result);
    job **batch = w->batch;
    size_t n = w->n_batch;
    w->batch = NULL;
    w->n_batch = 0;
    for (size_t i = 0; i < n; i++) {
        job *j = batch[i];
        if (find_job(w, job_log_id(j))) {
            /* Its lease lapsed while its job here still ran (a long database outage):
             * never two jobs for one log. The old one is fenced out by this claim;
             * the log comes back once anything it sent can have landed. */
            log_item(LOG_WARNING, job_log_id(j), NULL, NULL,
                     "contact log %" PRId64 " was claimed again while still being worked "
                     "on here; it is released and worked on later", job_log_id(j));
            job_release(j, w->env.settle_ms);
            continue;
        }
        if (!add_job(w, j)) {
            job_free(j);   /* its claim lapses with its lease */
            continue;
        }
        if (w->draining)
            job_stop_sending(j);
        else
            job_start(j);
    }
    free(batch);
    claiming_done(w);
}

static void kick(worker *w)
{
    char batch[16], lease[16], settle[16];

    if (w->claiming) {
        w->rescan_wanted = true;   /* claim again when this one is back */
        return;
    }
    if (w->draining || !db_is_ready(w->database) || (int)w->n_jobs >= w->max_jobs)
        return;
    /* Under load, claim in chunks (a quarter of the slots at least): one claim
     * statement for many logs, not one per log that finishes. */
    if (w->n_jobs > 0 && (int)w->n_jobs > w->max_jobs - (w->max_jobs + 3) / 4) {
        w->rescan_wanted = true;
        return;
    }
    w->claiming = true;
    w->rescan_wanted = false;
    w->requested = w->max_jobs - (int)w->n_jobs;
    w->batch_claimed_at_ms = loop_timer_now_ms();
    snprintf(batch, sizeof batch, "%d", w->requested);
    snprintf(lease, sizeof lease, "%d", w->env.lease_seconds);
    settle_text(w, settle, sizeof settle);
    const char *params[] = {batch, lease, w->worker_id, settle};
    if (db_query(w->database, sql_claim, 4, params, on_claimed, w) < 0)
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
    w->env.max_attempts = cfg->max_attempts;
    w->env.backoff_initial_ms = cfg->backoff_initial_ms;
    w->env.backoff_max_ms = cfg->backoff_max_ms;
    /* Renewed every quarter lease; long enough to ride out a short database outage. */
    if (cfg->lease_seconds > 0)
        w->env.lease_seconds = cfg->lease_seconds;
    else
        w->env.lease_seconds = cfg->timeout_seconds * 3 > MIN_LEASE_SECONDS
                                   ? cfg->timeout_seconds * 3 : MIN_LEASE_SECONDS;
    arm_heartbeat(w);
    /* How long after we gave up on a request Exchange may still perform it. */
    w->env.settle_ms = cfg->settle_ms > 0 ? cfg->settle_ms : 2000 * cfg->timeout_seconds;
    char *time_zone = text_dup(cfg->time_zone);
    if (time_zone || !cfg->time_zone) {
        free(w->time_zone);
        w->time_zone = time_zone;
    }
    w->env.settings.time_zone = w->time_zone;
    w->env.default_time_zone = w->time_zone;
    kick(w);
}

worker *worker_new(sd_event *event, db *database, delivery *backend, const config *cfg)
{
    worker *w = calloc(1, sizeof *w);
    char host[64] = "localhost";
    uint32_t nonce = 0;

    if (!w)
        return NULL;
    w->event = sd_event_ref(event);
    w->database = database;
    gethostname(host, sizeof host - 1);
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce)
        nonce = (uint32_t)getpid() ^ (uint32_t)loop_timer_now_ms();
    snprintf(w->host_prefix, sizeof w->host_prefix, "%s:", host);
    snprintf(w->worker_id, sizeof w->worker_id, "%s%ld:%08x", w->host_prefix, (long)getpid(),
             nonce);
    w->env.backend = backend;
    w->env.ended = on_job_ended;
    w->env.state_changed = on_state_changed;
    w->env.userdata = w;
    /* Safe defaults until the attribute table is read. */
    w->env.settings.outlook_enabled = false;
    w->env.holdoffs = holdoff_new();
    w->due_timer = loop_timer_new(event, on_due, w);
    w->heartbeat_timer = loop_timer_new(event, on_heartbeat, w);
    bool ok = w->env.holdoffs && w->due_timer && w->heartbeat_timer;
    for (int k = 0; ok && k < JOB_WRITES; k++)
        ok = (w->env.writes[k] = db_batch_new(event, database, &job_write_kinds[k])) != NULL;
    if (!ok) {
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
    for (size_t i = 0; i < w->n_jobs; i++)
        job_free(w->jobs[i]);
    free(w->jobs);
    free_batch(w);
    for (int k = 0; k < JOB_WRITES; k++)
        db_batch_free(w->env.writes[k]);
    holdoff_free(w->env.holdoffs);
    loop_timer_free(w->heartbeat_timer);
    loop_timer_free(w->due_timer);
    sd_event_unref(w->event);
    free(w->time_zone);
    free(w->link_template);
    free(w->attribute_problems);
    free(w);
}

void worker_db_connected(worker *w)
{
    const char *params[] = {w->host_prefix};
    /* Re-adopt: our claims outlived the session; renew them and send the writes
     * that waited for the connection. Then anything committed meanwhile. */
    heartbeat(w);
    for (int k = 0; k < JOB_WRITES; k++)
        db_batch_flush(w->env.writes[k]);
    if (db_query(w->database, sql_claimants, 1, params, on_claimants, w) < 0)
        log_warning("could not look for claims of an earlier followupd on this host");
    if (w->attributes_wanted) {
        w->attributes_wanted = false;
        if (db_query(w->database, sql_attributes, 0, NULL, on_attributes, w) < 0) {
            free_batch(w);
            w->claiming = false;
        }
        return;
    }
    kick(w);
}

void worker_db_disconnected(worker *w)
{
    /* Statements in flight come back to their batches. The jobs go on while their
     * leases are known to hold; a claimed batch waits for the attributes. */
    if (!w->attributes_wanted && w->n_batch == 0)
        w->claiming = false;
}

void worker_notified(worker *w)
{
    kick(w);
}

void worker_drain(worker *w, void (*drained)(void *userdata), void *userdata)
{
    w->draining = true;
    w->env.draining = true;
    w->drained = drained;
    w->drained_userdata = userdata;
    loop_timer_disarm(w->due_timer);
    /* What the back end holds but has not sent yet is answered "not sent" (the jobs
     * give their claims back). */
    delivery_stop(w->env.backend);
    if (w->n_jobs == 0) {
        if (w->drained) {   /* (on_job_ended may have called it already) */
            w->drained = NULL;
            drained(userdata);
        }
        return;
    }
    /* No request starts after STOPPING=1: jobs with nothing in flight give their
     * claims back now, the others once their answer is recorded. */
    job **copy = malloc(w->n_jobs * sizeof *copy);
    size_t n = w->n_jobs;
    if (!copy)
        return;   /* each job still stops at its next step (env.draining) */
    memcpy(copy, w->jobs, n * sizeof *copy);
    for (size_t i = 0; i < n; i++)
        job_stop_sending(copy[i]);
    free(copy);
}

const worker_stats *worker_get_stats(const worker *w)
{
    worker *mutable = (worker *)w;
    mutable->stats.delivered = w->env.stats.delivered;
    mutable->stats.retries = w->env.stats.retries;
    mutable->stats.parked = w->env.stats.parked;
    mutable->stats.active = w->n_jobs;
    memcpy(mutable->stats.last_error, w->env.stats.last_error, sizeof mutable->stats.last_error);
    mutable->stats.auth_failing = w->env.stats.auth_failing;
    memcpy(mutable->stats.auth_error, w->env.stats.auth_error, sizeof mutable->stats.auth_error);
    mutable->stats.held_ms = holdoff_remaining(w->env.holdoffs, NULL);
    holdoff_get_stats(w->env.holdoffs, &mutable->stats.holds);
    return &w->stats;
}
