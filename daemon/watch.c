/* watch — see watch.h: which mailboxes are watched, told of, and read when. The
 * reading of one mailbox is watch_read.c; what both share, watch_internal.h. */
#include "daemon/watch.h"
#include "daemon/watch_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/text.h"
#include "http/loop_timer.h"

static void pump(watch *w);

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

void watch_replace_text(char **slot, const char *value)
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
    box->told = true;
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
            watch_replace_text(&box->position[OUTLOOK_APPOINTMENT],
                         PQgetisnull(result, row, c_calendar) ? NULL
                             : PQgetvalue(result, row, c_calendar));
            watch_replace_text(&box->position[OUTLOOK_TASK],
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
                 0, NULL, on_list, w) == 0) {
        w->listing = true;
        w->listed_at_ms = loop_timer_now_ms();
    }
}

void watch_items_changed(watch *w)
{
    if (w->connected && !w->stopped && !w->listing &&
        loop_timer_now_ms() - w->listed_at_ms >= 1000) {
        list_mailboxes(w);
        loop_timer_arm(w->list_timer, (uint64_t)LIST_INTERVAL_MS * 1000);
    }
}

static void on_list_timer(void *userdata)
{
    watch *w = userdata;
    list_mailboxes(w);
    loop_timer_arm(w->list_timer, (uint64_t)LIST_INTERVAL_MS * 1000);
}

/* Starts the reads that are due, told-of mailboxes first (a notification is a person
 * waiting; a periodic read is not), at most MAX_READS at once; then sleeps until the
 * next read falls due by time. A due mailbox waiting only for a free slot sets no
 * timer: the end of a read (chain_end) pumps again. */
static void pump(watch *w)
{
    if (!w->connected || w->stopped)
        return;
    int64_t now = loop_timer_now_ms(), next = -1;
    int64_t interval = read_interval_ms(w);
    for (size_t i = 0; i < w->n_boxes; i++) {
        mailbox_watch *box = w->boxes[i];
        if (!box->busy && (box->last_read_ms == 0 || now - box->last_read_ms >= interval))
            box->due = true;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < w->n_boxes && w->reads < MAX_READS; i++) {
            mailbox_watch *box = w->boxes[i];
            if (!box->busy && box->due && box->not_before_ms <= now &&
                (pass == 1 || box->told))
                watch_read_start(w, box);
        }
    }
    for (size_t i = 0; i < w->n_boxes; i++) {
        mailbox_watch *box = w->boxes[i];
        int64_t at;
        if (box->busy)
            continue;
        if (box->not_before_ms > now)
            at = box->not_before_ms;               /* backing off, or put off */
        else if (box->due)
            continue;                              /* waits for a slot */
        else
            at = box->last_read_ms + interval;     /* the periodic read */
        if (next < 0 || at < next)
            next = at;
    }
    if (next >= 0)
        loop_timer_arm(w->pump_timer, (uint64_t)(next > now ? next - now : 0) * 1000);
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
    watch_read_release_all(w);   /* before db_free, which drops queued queries */
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
