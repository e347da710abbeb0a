/* watch — see watch.h. One mailbox is read by one chain of calls at a time: the
 * calendar, then the tasks, each page by page (sync, then the page and its new
 * position in one database call, then the next page). */
#include "daemon/watch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/text.h"
#include "http/loop_timer.h"

/* How often the list of watched mailboxes is read again (new mailboxes get watched,
 * SyncFromOutlook switched on or off is seen). */
#define LIST_INTERVAL_MS 10000
/* With notifications, every mailbox is still read this often: a lost hint. */
#define BACKSTOP_INTERVAL_MS (15 * 60 * 1000)
/* EWS without notifications (streaming refused): read every mailbox this often. */
#define EWS_POLL_INTERVAL_MS 10000
/* Mailboxes read at once. */
#define MAX_READS 4
/* After a failed read: 5 s, doubling, at most 5 minutes. */
#define RETRY_FIRST_MS 5000
#define RETRY_MAX_MS (5 * 60 * 1000)
/* Pages of one folder in one chain; more wait for the next turn (never spin). */
#define MAX_PAGES 50
/* A page with a change put off (a pass over its log under way) is read again then. */
#define IN_FLIGHT_RETRY_MS 2000

typedef struct mailbox_watch {
    char *mailbox;
    char *position[2];           /* by outlook_item_kind; NULL: read afresh */
    bool listed;                 /* in the database's latest list */
    bool due;                    /* to be read as soon as a slot is free */
    bool busy;                   /* a chain is reading it */
    bool again;                  /* a hint came while busy */
    int64_t last_read_ms;        /* monotonic; 0: never read by this daemon */
    int64_t not_before_ms;       /* after a failure */
    int failures;
} mailbox_watch;

/* One chain: the reading of one mailbox. */
typedef struct read_chain {
    watch *w;
    mailbox_watch *box;          /* NULL once the mailbox was dropped meanwhile */
    outlook_item_kind kind;
    int pages;
    bool reset_done;             /* read afresh once after an invalid position */
    bool at_database;            /* waiting for the database (else for the back end) */
    int64_t read_again_at_ms;    /* > 0: read the mailbox again then (a change put off) */
    char *new_position;          /* of the page on its way to the database */
    bool more;
    size_t n;                    /* the page's changes, for the log lines */
    char **whats;
} read_chain;

struct watch {
    sd_event *event;
    db *database;
    delivery *backend;
    bool graph;
    int poll_interval_ms;
    bool connected;
    bool stopped;
    bool listing;                /* a list query is on its way */
    bool notifications;          /* watch() accepted by the back end */
    bool notifications_tried;
    mailbox_watch **boxes;
    size_t n_boxes;
    size_t reads;                /* chains running */
    read_chain *chains[MAX_READS];
    loop_timer *list_timer;
    loop_timer *pump_timer;
    watch_stats stats;
};

static void pump(watch *w);
static void read_next(read_chain *c);

static const char *folder_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "tasks" : "calendar";
}

static const char *kind_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "task" : "appointment";
}

static int64_t read_interval_ms(const watch *w)
{
    if (w->notifications)
        return BACKSTOP_INTERVAL_MS;
    return w->graph ? w->poll_interval_ms : EWS_POLL_INTERVAL_MS;
}

/* ---- the list of mailboxes ------------------------------------------------------ */

static mailbox_watch *find_box(watch *w, const char *mailbox)
{
    for (size_t i = 0; i < w->n_boxes; i++)
        if (strcmp(w->boxes[i]->mailbox, mailbox) == 0)
            return w->boxes[i];
    return NULL;
}

static void free_box(mailbox_watch *box)
{
    free(box->mailbox);
    free(box->position[0]);
    free(box->position[1]);
    free(box);
}

static void replace_text(char **slot, const char *value)
{
    char *copy = value ? text_dup(value) : NULL;
    if (value && !copy)
        return;   /* out of memory: keep the old one, the next list brings it again */
    free(*slot);
    *slot = copy;
}

static void on_changed(const char *mailbox, void *userdata)
{
    watch *w = userdata;
    mailbox_watch *box = find_box(w, mailbox);
    if (!box)
        return;
    log_debug("Outlook: news of mailbox %s", mailbox);
    if (box->busy)
        box->again = true;
    else
        box->due = true;
    loop_timer_arm(w->pump_timer, 0);
}

static void tell_backend(watch *w)
{
    const char **names = calloc(w->n_boxes ? w->n_boxes : 1, sizeof *names);
    if (!names)
        return;
    for (size_t i = 0; i < w->n_boxes; i++)
        names[i] = w->boxes[i]->mailbox;
    int r = delivery_watch(w->backend, names, w->n_boxes, on_changed, w);
    free(names);
    bool had = w->notifications;
    w->notifications = r >= 0;
    if (!w->notifications_tried || had != w->notifications) {
        if (r == -EOPNOTSUPP)
            log_info("Outlook -> CRM: mailboxes are read every %" PRId64 " s",
                     read_interval_ms(w) / 1000);
        else if (r < 0)
            log_warning("Outlook -> CRM: notifications not available (%s); mailboxes are "
                        "read every %" PRId64 " s", strerror(-r), read_interval_ms(w) / 1000);
    }
    w->notifications_tried = true;
}

static void on_list(PGresult *result, void *userdata)
{
    watch *w = userdata;
    w->listing = false;
    if (!db_result_ok(result)) {
        if (result)
            log_warning("Outlook -> CRM: cannot list the watched mailboxes: %s",
                        PQresultErrorMessage(result));
        return;
    }
    for (size_t i = 0; i < w->n_boxes; i++)
        w->boxes[i]->listed = false;
    int rows = PQntuples(result);
    int c_mailbox = PQfnumber(result, "mailbox");
    int c_calendar = PQfnumber(result, "calendar_position");
    int c_tasks = PQfnumber(result, "tasks_position");
    int c_resync = PQfnumber(result, "resync_needed");
    bool added = false;
    for (int row = 0; row < rows && c_mailbox >= 0; row++) {
        const char *name = PQgetvalue(result, row, c_mailbox);
        mailbox_watch *box = find_box(w, name);
        if (!box) {
            mailbox_watch **grown = realloc(w->boxes, (w->n_boxes + 1) * sizeof *grown);
            if (grown)
                w->boxes = grown;
            box = grown ? calloc(1, sizeof *box) : NULL;
            if (box && !(box->mailbox = text_dup(name))) {
                free(box);
                box = NULL;
            }
            if (!box)
                continue;
            w->boxes[w->n_boxes++] = box;
            box->due = true;
            added = true;
        }
        box->listed = true;
        if (!box->busy) {   /* a chain in flight knows better */
            replace_text(&box->position[OUTLOOK_APPOINTMENT],
                         PQgetisnull(result, row, c_calendar) ? NULL
                             : PQgetvalue(result, row, c_calendar));
            replace_text(&box->position[OUTLOOK_TASK],
                         PQgetisnull(result, row, c_tasks) ? NULL
                             : PQgetvalue(result, row, c_tasks));
            if (c_resync >= 0 && strcmp(PQgetvalue(result, row, c_resync), "t") == 0)
                box->due = true;
        }
    }
    /* Mailboxes no longer listed (no item of ours left, or SyncFromOutlook = 0). */
    size_t kept = 0;
    bool removed = false;
    for (size_t i = 0; i < w->n_boxes; i++) {
        mailbox_watch *box = w->boxes[i];
        if (box->listed || box->busy) {
            w->boxes[kept++] = box;
        } else {
            free_box(box);
            removed = true;
        }
    }
    if (w->n_boxes > 0 && kept == 0)
        log_info("Outlook -> CRM: no mailbox to watch");
    if (w->stats.mailboxes == 0 && kept > 0)
        log_info("Outlook -> CRM: watching %zu mailbox%s", kept, kept == 1 ? "" : "es");
    w->n_boxes = kept;
    w->stats.mailboxes = kept;
    log_debug("Outlook -> CRM: %zu mailboxes to watch", kept);
    if (added || removed || !w->notifications_tried)
        tell_backend(w);
    w->stats.notifications = w->notifications;
    pump(w);
}

static void list_mailboxes(watch *w)
{
    if (!w->connected || w->stopped || w->listing)
        return;
    if (db_query(w->database,
                 "SELECT mailbox, calendar_position, tasks_position, resync_needed "
                 "FROM contactlog.followupd_watched_mailboxes()",
                 0, NULL, on_list, w) == 0)
        w->listing = true;
}

static void on_list_timer(void *userdata)
{
    watch *w = userdata;
    list_mailboxes(w);
    loop_timer_arm(w->list_timer, (uint64_t)LIST_INTERVAL_MS * 1000);
}

/* ---- reading one mailbox ---------------------------------------------------------- */

static void chain_free(read_chain *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->whats[i]);
    free(c->whats);
    free(c->new_position);
    free(c);
}

/* The chain is over (done, or failed with why != NULL). */
static void chain_end(read_chain *c, const char *why)
{
    watch *w = c->w;
    mailbox_watch *box = c->box;
    if (!w) {   /* the watch was freed while a call was on its way */
        chain_free(c);
        return;
    }
    for (size_t i = 0; i < MAX_READS; i++)
        if (w->chains[i] == c)
            w->chains[i] = NULL;
    w->reads--;
    if (box) {
        box->busy = false;
        box->last_read_ms = loop_timer_now_ms();
        if (why) {
            int64_t delay = RETRY_FIRST_MS;
            for (int i = 0; i < box->failures && delay < RETRY_MAX_MS; i++)
                delay *= 2;
            box->failures++;
            box->not_before_ms = box->last_read_ms + (delay < RETRY_MAX_MS ? delay
                                                                          : RETRY_MAX_MS);
            box->due = true;
        } else {
            box->failures = 0;
            box->not_before_ms = c->read_again_at_ms;
            box->due = box->again || c->pages >= MAX_PAGES || c->read_again_at_ms > 0;
        }
        box->again = false;
    }
    chain_free(c);
    loop_timer_arm(w->pump_timer, 0);
}

static void on_error_stored(PGresult *result, void *userdata)
{
    (void)result;   /* best effort: the error is in the journal already */
    (void)userdata;
}

static void store_error(watch *w, const char *mailbox, const char *error)
{
    const char *params[3] = {mailbox, NULL, error};
    if (db_query(w->database,
                 "SELECT contactlog.followupd_watch_position($1, $2, NULL, $3)",
                 3, params, on_error_stored, NULL) < 0)
        log_debug("Outlook -> CRM: cannot record the error of %s", mailbox);
}

static void on_reset(PGresult *result, void *userdata)
{
    read_chain *c = userdata;
    c->at_database = false;
    if (!c->w || !db_result_ok(result)) {
        chain_end(c, "cannot reset the position");
        return;
    }
    if (c->box) {
        replace_text(&c->box->position[0], NULL);
        replace_text(&c->box->position[1], NULL);
    }
    c->kind = OUTLOOK_APPOINTMENT;   /* both folders afresh */
    read_next(c);
}

static void on_page_applied(PGresult *result, void *userdata)
{
    read_chain *c = userdata;
    watch *w = c->w;
    const char *mailbox = c->box ? c->box->mailbox : "(dropped)";
    c->at_database = false;

    if (!w || !db_result_ok(result)) {
        /* Nothing of the page was applied: read it again later, from the old position. */
        log_warning("Outlook -> CRM: %s: cannot apply the changes read: %s", mailbox,
                    result ? PQresultErrorMessage(result) : "connection lost");
        chain_end(c, "database");
        return;
    }
    int rows = PQntuples(result);
    size_t put_off = 0;
    for (int row = 0; row < rows && (size_t)row < c->n; row++) {
        const char *item = PQgetvalue(result, row, 0);
        bool applied = strcmp(PQgetvalue(result, row, 1), "t") == 0;
        const char *reason = PQgetisnull(result, row, 2) ? NULL : PQgetvalue(result, row, 2);
        if (reason && strcmp(reason, "in flight") == 0) {
            put_off++;
            log_debug("Outlook -> CRM: %s: item %s %s: put off, a pass over its log is "
                      "under way", mailbox, item, c->whats[row]);
        } else if (applied) {
            w->stats.applied++;
            log_info("Outlook -> CRM: %s: %s %s in Outlook: applied", mailbox,
                     kind_name(c->kind), c->whats[row]);
        } else if (reason && (strcmp(reason, "not ours") == 0 ||
                              strcmp(reason, "own change") == 0 ||
                              strcmp(reason, "no change") == 0 ||
                              strcmp(reason, "already recorded") == 0 ||
                              strncmp(reason, "SyncFromOutlook", 15) == 0)) {
            log_debug("Outlook -> CRM: %s: item %s %s: %s", mailbox, item, c->whats[row],
                      reason);
        } else {
            w->stats.refused++;
            log_info("Outlook -> CRM: %s: %s %s in Outlook: refused (%s); Outlook is put "
                     "back", mailbox, kind_name(c->kind), c->whats[row],
                     reason ? reason : "no reason");
        }
    }
    if (put_off > 0) {
        /* The database kept the old position: read this page again after the pass. */
        c->read_again_at_ms = loop_timer_now_ms() + IN_FLIGHT_RETRY_MS;
        chain_end(c, NULL);
        return;
    }
    if (c->box && c->new_position) {
        free(c->box->position[c->kind]);
        c->box->position[c->kind] = c->new_position;
        c->new_position = NULL;
    }
    for (size_t i = 0; i < c->n; i++)
        free(c->whats[i]);
    free(c->whats);
    c->whats = NULL;
    c->n = 0;
    if (!c->more)
        c->kind++;
    read_next(c);
}

/* The arrays of followupd_apply_outlook_changes, one column of the page each. */
typedef struct page_columns {
    const delivery_sync_result *page;
    const char *kind;
} page_columns;

static const char *field_kind(const void *ctx, size_t i)
{
    (void)i;
    return ((const page_columns *)ctx)->kind;
}

static const char *field_item(const void *ctx, size_t i)
{
    return ((const page_columns *)ctx)->page->changes[i].item_id;
}

static const char *field_key(const void *ctx, size_t i)
{
    return ((const page_columns *)ctx)->page->changes[i].change_key;
}

static const char *field_what(const void *ctx, size_t i)
{
    return ((const page_columns *)ctx)->page->changes[i].what;
}

static const char *field_value(const void *ctx, size_t i)
{
    return ((const page_columns *)ctx)->page->changes[i].new_value;
}

static void on_page(const delivery_sync_result *r, void *userdata)
{
    read_chain *c = userdata;
    watch *w = c->w;
    const char *mailbox = c->box ? c->box->mailbox : NULL;

    if (!w || !mailbox || w->stopped) {
        chain_end(c, NULL);
        return;
    }
    if (r->position_invalid && !c->reset_done) {
        /* Exchange cannot resume from the stored position: read both folders afresh. */
        log_info("Outlook -> CRM: %s: the %s's position is no longer valid (%s); reading "
                 "the mailbox afresh", mailbox, folder_name(c->kind),
                 r->result.reason ? r->result.reason : "expired");
        c->reset_done = true;
        const char *params[2] = {mailbox, r->result.reason};
        if (db_query(w->database, "SELECT contactlog.followupd_watch_reset($1, $2)", 2, params,
                     on_reset, c) < 0)
            chain_end(c, "database");
        else
            c->at_database = true;
        return;
    }
    if (r->result.outcome != DELIVERY_OK || r->position_invalid) {
        char error[300];
        snprintf(error, sizeof error, "reading the %s: %s", folder_name(c->kind),
                 r->result.reason ? r->result.reason : "failed");
        text_one_line(error, sizeof error);
        if (!r->result.not_sent) {
            log_warning("Outlook -> CRM: %s: %s", mailbox, error);
            store_error(w, mailbox, error);
        }
        chain_end(c, error);
        return;
    }

    /* The page and its position, to the database in one call. */
    c->more = r->more && ++c->pages < MAX_PAGES;
    c->n = 0;
    c->whats = calloc(r->n_changes ? r->n_changes : 1, sizeof *c->whats);
    free(c->new_position);
    c->new_position = r->new_position ? text_dup(r->new_position) : NULL;
    bool oom = !c->whats || (r->new_position && !c->new_position);
    for (size_t i = 0; !oom && i < r->n_changes; i++) {
        c->whats[i] = text_dup(r->changes[i].what);
        oom = r->changes[i].what && !c->whats[i];
        c->n = i + 1;
    }
    page_columns cols = {r, kind_name(c->kind)};
    size_t n = r->n_changes;
    char *kinds = oom ? NULL : db_array_literal(n, field_kind, &cols);
    char *items = oom ? NULL : db_array_literal(n, field_item, &cols);
    char *keys = oom ? NULL : db_array_literal(n, field_key, &cols);
    char *whats = oom ? NULL : db_array_literal(n, field_what, &cols);
    char *values = oom ? NULL : db_array_literal(n, field_value, &cols);
    int q = -ENOMEM;
    if (kinds && items && keys && whats && values) {
        const char *params[8] = {mailbox, kinds, items, keys, whats, values,
                                 c->new_position ? folder_name(c->kind) : NULL,
                                 c->new_position};
        q = db_query(w->database,
                     "SELECT item_id, applied, reason FROM "
                     "contactlog.followupd_apply_outlook_changes($1, $2::text[], $3::text[], "
                     "$4::text[], $5::text[], $6::text[], $7, $8)",
                     8, params, on_page_applied, c);
    }
    free(kinds);
    free(items);
    free(keys);
    free(whats);
    free(values);
    if (q < 0)
        chain_end(c, q == -ENOMEM ? "out of memory" : "database");
    else
        c->at_database = true;
}

static void read_next(read_chain *c)
{
    watch *w = c->w;
    if (!c->box || w->stopped || !w->connected || c->kind > OUTLOOK_TASK) {
        chain_end(c, NULL);
        return;
    }
    int r = delivery_sync(w->backend, c->box->mailbox, c->kind, c->box->position[c->kind],
                          on_page, c);
    if (r < 0) {
        if (r != -EOPNOTSUPP)
            log_warning("Outlook -> CRM: %s: cannot read the %s: %s", c->box->mailbox,
                        folder_name(c->kind), strerror(-r));
        chain_end(c, "cannot read");
    }
}

static void start_read(watch *w, mailbox_watch *box)
{
    read_chain *c = calloc(1, sizeof *c);
    if (!c)
        return;
    *c = (read_chain){.w = w, .box = box, .kind = OUTLOOK_APPOINTMENT};
    for (size_t i = 0; i < MAX_READS; i++)
        if (!w->chains[i]) {
            w->chains[i] = c;
            break;
        }
    box->busy = true;
    box->due = false;
    w->reads++;
    read_next(c);
}

static void pump(watch *w)
{
    if (!w->connected || w->stopped)
        return;
    int64_t now = loop_timer_now_ms(), next = -1;
    int64_t interval = read_interval_ms(w);
    for (size_t i = 0; i < w->n_boxes && w->reads < MAX_READS; i++) {
        mailbox_watch *box = w->boxes[i];
        if (box->busy)
            continue;
        if (box->last_read_ms == 0 || now - box->last_read_ms >= interval)
            box->due = true;
        if (!box->due)
            continue;
        if (box->not_before_ms > now) {
            if (next < 0 || box->not_before_ms < next)
                next = box->not_before_ms;
            continue;
        }
        start_read(w, box);
    }
    /* Wake for the next read that falls due by time. */
    for (size_t i = 0; i < w->n_boxes; i++) {
        mailbox_watch *box = w->boxes[i];
        if (box->busy)
            continue;
        int64_t at = box->due ? box->not_before_ms : box->last_read_ms + interval;
        if (next < 0 || at < next)
            next = at;
    }
    if (w->reads < MAX_READS || next >= 0) {
        int64_t delay = next < 0 ? interval : next - now;
        loop_timer_arm(w->pump_timer, (uint64_t)(delay > 0 ? delay : 0) * 1000);
    }
}

static void on_pump_timer(void *userdata)
{
    pump(userdata);
}

/* ---- life ------------------------------------------------------------------------- */

watch *watch_new(sd_event *event, db *database, delivery *backend, const config *cfg)
{
    watch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    *w = (watch){.event = event, .database = database, .backend = backend};
    w->list_timer = loop_timer_new(event, on_list_timer, w);
    w->pump_timer = loop_timer_new(event, on_pump_timer, w);
    if (!w->list_timer || !w->pump_timer) {
        watch_free(w);
        return NULL;
    }
    watch_apply_config(w, cfg);
    return w;
}

void watch_free(watch *w)
{
    if (!w)
        return;
    loop_timer_free(w->list_timer);
    loop_timer_free(w->pump_timer);
    /* db_free (next) drops queued queries without calling back: those chains go now.
     * The back end answers the others when it is freed: they only free themselves. */
    for (size_t i = 0; i < MAX_READS; i++) {
        read_chain *c = w->chains[i];
        if (c && c->at_database) {
            chain_free(c);
        } else if (c) {
            c->w = NULL;
            c->box = NULL;
        }
    }
    for (size_t i = 0; i < w->n_boxes; i++)
        free_box(w->boxes[i]);
    free(w->boxes);
    free(w);
}

void watch_apply_config(watch *w, const config *cfg)
{
    w->graph = cfg->api == CONFIG_API_GRAPH;
    w->poll_interval_ms = cfg->graph_poll_interval * 1000;
    if (w->connected)
        loop_timer_arm(w->pump_timer, 0);
}

void watch_db_connected(watch *w)
{
    w->connected = true;
    w->listing = false;
    loop_timer_arm(w->list_timer, 0);
}

void watch_db_disconnected(watch *w)
{
    w->connected = false;
    w->listing = false;
    loop_timer_disarm(w->list_timer);
}

void watch_stop(watch *w)
{
    w->stopped = true;
    loop_timer_disarm(w->list_timer);
    loop_timer_disarm(w->pump_timer);
    if (w->notifications)
        delivery_watch(w->backend, NULL, 0, on_changed, w);
}

const watch_stats *watch_get_stats(const watch *w)
{
    return &w->stats;
}
