/* watch_read — one mailbox read back (see watch.h): the calendar, then the tasks,
 * each page by page; every page and the position after it go to the database in one
 * call (followupd_apply_outlook_changes), so a crash reads the page again and the
 * database applies it once. A folder read afresh to its end also judges what it did
 * not list (followupd_apply_outlook_absent). */
#include "daemon/watch_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/text.h"

static void read_next(read_chain *c);

/* ---- reading one mailbox ---------------------------------------------------------- */

static void forget_afresh(read_chain *c)
{
    for (size_t i = 0; i < c->n_seen; i++)
        free(c->seen[i]);
    free(c->seen);
    c->seen = NULL;
    c->n_seen = c->seen_cap = 0;
    free(c->read_started);
    c->read_started = NULL;
    c->window_from = c->window_to = 0;
}

static void chain_free(read_chain *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->whats[i]);
    free(c->whats);
    free(c->new_position);
    forget_afresh(c);
    free(c);
}

/* Keeps the ids a page read afresh listed; false when out of memory (the check for
 * what went is then skipped: it would take unseen items for gone). */
static bool remember_seen(read_chain *c, const delivery_sync_result *r)
{
    for (size_t i = 0; i < r->n_changes; i++) {
        if (!r->changes[i].item_id)
            continue;
        if (c->n_seen == c->seen_cap) {
            size_t cap = c->seen_cap ? 2 * c->seen_cap : 64;
            char **grown = realloc(c->seen, cap * sizeof *grown);
            if (!grown)
                return false;
            c->seen = grown;
            c->seen_cap = cap;
        }
        if (!(c->seen[c->n_seen] = text_dup(r->changes[i].item_id)))
            return false;
        c->n_seen++;
    }
    return true;
}

/* The chain is over (done, or failed with why != NULL). */
static void chain_end(read_chain *c, const char *why)
{
    watch *w = c->w;
    mailbox_watch *box = c->box;
    for (size_t i = 0; i < MAX_READS; i++)
        if (w->chains[i] == c)
            w->chains[i] = NULL;
    w->reads--;
    box->busy = false;
    box->last_read_ms = loop_timer_now_ms();
    if (why) {
        int64_t delay = RETRY_FIRST_MS;
        for (int i = 0; i < box->failures && delay < RETRY_MAX_MS; i++)
            delay *= 2;
        box->failures++;
        box->not_before_ms = box->last_read_ms + (delay < RETRY_MAX_MS ? delay : RETRY_MAX_MS);
        box->due = true;
    } else {
        box->failures = 0;
        box->not_before_ms = c->read_again_at_ms;
        box->due = box->again || c->pages >= MAX_PAGES || c->read_again_at_ms > 0;
    }
    box->again = false;
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
    if (!db_result_ok(result)) {
        chain_end(c, "cannot reset the position");
        return;
    }
    watch_replace_text(&c->box->position[0], NULL);
    watch_replace_text(&c->box->position[1], NULL);
    c->kind = OUTLOOK_APPOINTMENT;   /* both folders afresh */
    c->folder_pages = 0;
    forget_afresh(c);
    read_next(c);
}

/* Logs and counts the database's verdicts on the changes sent; returns how many
 * were put off (a pass over their log under way). */
static size_t judge_rows(read_chain *c, PGresult *result, const char *mailbox)
{
    watch *w = c->w;
    int rows = PQntuples(result);
    size_t put_off = 0;
    for (int row = 0; row < rows; row++) {
        const char *item = PQgetvalue(result, row, 0);
        const char *what = (size_t)row < c->n && c->whats[row] ? c->whats[row] : "deleted";
        bool applied = strcmp(PQgetvalue(result, row, 1), "t") == 0;
        const char *reason = PQgetisnull(result, row, 2) ? NULL : PQgetvalue(result, row, 2);
        if (reason && strcmp(reason, "in flight") == 0) {
            put_off++;
            log_debug("Outlook -> CRM: %s: item %s %s: put off, a pass over its log is "
                      "under way", mailbox, item, what);
        } else if (applied) {
            w->stats.applied++;
            log_info("Outlook -> CRM: %s: %s %s in Outlook: applied", mailbox,
                     watch_kind_name(c->kind), what);
        } else if (reason && (strcmp(reason, "not ours") == 0 ||
                              strcmp(reason, "own change") == 0 ||
                              strcmp(reason, "no change") == 0 ||
                              strcmp(reason, "already recorded") == 0 ||
                              strncmp(reason, "SyncFromOutlook", 15) == 0)) {
            log_debug("Outlook -> CRM: %s: item %s %s: %s", mailbox, item, what, reason);
        } else {
            w->stats.refused++;
            log_info("Outlook -> CRM: %s: %s %s in Outlook: refused (%s); Outlook is put "
                     "back", mailbox, watch_kind_name(c->kind), what, reason ? reason : "no reason");
        }
    }
    return put_off;
}

static void clear_page(read_chain *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->whats[i]);
    free(c->whats);
    c->whats = NULL;
    c->n = 0;
}

/* The folder is done: on to the next (or the end of the chain). */
static void next_folder(read_chain *c)
{
    forget_afresh(c);
    c->folder_pages = 0;
    c->kind++;
    read_next(c);
}

static const char *seen_at(const void *ctx, size_t i)
{
    return ((const read_chain *)ctx)->seen[i];
}

static void on_absent_judged(PGresult *result, void *userdata)
{
    read_chain *c = userdata;
    if (!db_result_ok(result)) {
        log_warning("Outlook -> CRM: %s: cannot judge the items gone from the %s: %s",
                    c->box->mailbox, watch_folder_name(c->kind),
                    result ? PQresultErrorMessage(result) : "connection lost");
        chain_end(c, "database");
        return;
    }
    if (judge_rows(c, result, c->box->mailbox) > 0)
        c->read_again_at_ms = loop_timer_now_ms() + IN_FLIGHT_RETRY_MS;
    next_folder(c);
}

/* A folder read afresh to its last page: what it did not list went meanwhile (of a
 * window read, only what lies in the window). */
static void judge_absent(read_chain *c)
{
    char *seen = db_array_literal(c->n_seen, seen_at, c);
    char from[32], to[32];
    bool window = !c->whole_folder;
    snprintf(from, sizeof from, "%" PRId64, c->window_from);
    snprintf(to, sizeof to, "%" PRId64, c->window_to);
    const char *params[6] = {c->box->mailbox, watch_kind_name(c->kind), seen, c->read_started,
                             window ? from : NULL, window ? to : NULL};
    int q = seen ? db_query(c->w->database,
                            "SELECT item_id, applied, reason FROM "
                            "contactlog.followupd_apply_outlook_absent($1, $2, $3::text[], "
                            "$4::timestamptz, to_timestamp($5::bigint), "
                            "to_timestamp($6::bigint))", 6, params, on_absent_judged, c)
                 : -ENOMEM;
    free(seen);
    if (q < 0)
        chain_end(c, "database");
}

static void on_page_applied(PGresult *result, void *userdata)
{
    read_chain *c = userdata;
    const char *mailbox = c->box->mailbox;

    if (!db_result_ok(result)) {
        /* Nothing of the page was applied: read it again later, from the old position. */
        log_warning("Outlook -> CRM: %s: cannot apply the changes read: %s", mailbox,
                    result ? PQresultErrorMessage(result) : "connection lost");
        chain_end(c, "database");
        return;
    }
    size_t put_off = judge_rows(c, result, mailbox);
    clear_page(c);
    if (put_off > 0) {
        /* The database kept the old position: read this page again after the pass. */
        c->read_again_at_ms = loop_timer_now_ms() + IN_FLIGHT_RETRY_MS;
        chain_end(c, NULL);
        return;
    }
    if (c->new_position) {
        free(c->box->position[c->kind]);
        c->box->position[c->kind] = c->new_position;
        c->new_position = NULL;
    }
    if (c->more) {
        read_next(c);
    } else if (c->read_started && (c->whole_folder || c->window_to != 0)) {
        judge_absent(c);
    } else {
        next_folder(c);
    }
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
    const char *mailbox = c->box->mailbox;

    if (w->stopped) {
        chain_end(c, NULL);
        return;
    }
    if (r->position_invalid && !c->reset_done) {
        /* Exchange cannot resume from the stored position: read both folders afresh. */
        log_info("Outlook -> CRM: %s: the %s's position is no longer valid (%s); reading "
                 "the mailbox afresh", mailbox, watch_folder_name(c->kind),
                 r->result.reason ? r->result.reason : "expired");
        c->reset_done = true;
        const char *params[2] = {mailbox, r->result.reason};
        if (db_query(w->database, "SELECT contactlog.followupd_watch_reset($1, $2)", 2, params,
                     on_reset, c) < 0)
            chain_end(c, "database");
        return;
    }
    if (r->result.outcome != DELIVERY_OK || r->position_invalid) {
        char error[300];
        snprintf(error, sizeof error, "reading the %s: %s", watch_folder_name(c->kind),
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
    c->folder_pages++;
    if (c->read_started) {
        c->whole_folder = r->whole_folder;
        if (r->window_to != 0) {   /* told on the first page of the read */
            c->window_from = r->window_from;
            c->window_to = r->window_to;
        }
        if (c->more != r->more || !remember_seen(c, r))
            forget_afresh(c);   /* not read to the end here: no judging of what went */
    }
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
    page_columns cols = {r, watch_kind_name(c->kind)};
    size_t n = r->n_changes;
    char *kinds = oom ? NULL : db_array_literal(n, field_kind, &cols);
    char *items = oom ? NULL : db_array_literal(n, field_item, &cols);
    char *keys = oom ? NULL : db_array_literal(n, field_key, &cols);
    char *whats = oom ? NULL : db_array_literal(n, field_what, &cols);
    char *values = oom ? NULL : db_array_literal(n, field_value, &cols);
    int q = -ENOMEM;
    if (kinds && items && keys && whats && values) {
        const char *params[8] = {mailbox, kinds, items, keys, whats, values,
                                 c->new_position ? watch_folder_name(c->kind) : NULL,
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
}

static void on_read_started(PGresult *result, void *userdata)
{
    read_chain *c = userdata;
    if (!db_result_ok(result) || PQntuples(result) != 1) {
        chain_end(c, "database");
        return;
    }
    c->read_started = text_dup(PQgetvalue(result, 0, 0));
    if (!c->read_started) {
        chain_end(c, "out of memory");
        return;
    }
    read_next(c);
}

static void read_next(read_chain *c)
{
    watch *w = c->w;
    if (w->stopped || !w->connected || c->kind > OUTLOOK_TASK) {
        chain_end(c, NULL);
        return;
    }
    if (!c->box->position[c->kind] && !c->read_started && c->folder_pages == 0) {
        /* Read afresh: first the time it starts, to tell what went meanwhile. */
        if (db_query(w->database, "SELECT now()", 0, NULL, on_read_started, c) < 0)
            chain_end(c, "database");
        return;
    }
    int r = delivery_sync(w->backend, c->box->mailbox, c->kind, c->box->position[c->kind],
                          on_page, c);
    if (r < 0) {
        if (r != -EOPNOTSUPP)
            log_warning("Outlook -> CRM: %s: cannot read the %s: %s", c->box->mailbox,
                        watch_folder_name(c->kind), strerror(-r));
        chain_end(c, "cannot read");
    }
}

void watch_read_start(watch *w, mailbox_watch *box)
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
    box->told = false;
    w->reads++;
    read_next(c);
}

void watch_read_release_all(watch *w)
{
    for (size_t i = 0; i < MAX_READS; i++) {
        if (w->chains[i])
            chain_free(w->chains[i]);
        w->chains[i] = NULL;
    }
}
