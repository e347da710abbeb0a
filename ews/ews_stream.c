/* ews_stream — see ews_stream.h.
 *
 * State: the watched mailboxes, sorted by address (watch() compares the daemon's set
 * with them in O(n log n) and allocates only for news); groups of at most GROUP_SIZE
 * in joining order, the first member being the anchor. Work is done by one pass,
 * service(), run from a loop timer whenever something changed: it hands changed()
 * its mailboxes, sends Unsubscribe and Subscribe requests (CALLS_MAX at once, a group
 * after another, so a group's connection opens once its members are in), and (re)opens
 * each group's connection once its new members settled (JOIN_DEBOUNCE_USEC, at most
 * JOIN_WAIT_MAX_USEC). HTTP callbacks only record and arm that timer: libcurl may not
 * be re-entered from them, and changed() runs outside them.
 *
 * A connection replaced by a newer one (members joined) is "retired": read until the
 * server closes it (it reports its subscriptions taken over), so that nothing in
 * flight is lost; cancelled after RETIRE_GRACE_USEC. A connection that broke may have
 * lost events: once the next one is up, every mailbox on it is reported changed. */
#include "ews/ews_stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/log.h"
#include "ews/ews_stream_internal.h"

static ews_stream *registry;   /* one watcher per back end; one back end in practice */

void ews_stream_schedule(ews_stream *s, uint64_t at)
{
    uint64_t now = ews_stream_now_usec();
    if (s->stopped || (s->kick_due != 0 && s->kick_due <= at))
        return;
    s->kick_due = at;
    if (loop_timer_arm(s->kick, at > now ? at - now : 0) < 0)
        log_error("watching mailboxes: cannot arm a timer; changes are noticed late");
}

void ews_stream_queue_changed(ews_stream *s, watch_mailbox *mb)
{
    if (mb->changed_pending)
        return;
    mb->changed_pending = true;
    mb->next_changed = NULL;
    if (s->changed_tail)
        s->changed_tail->next_changed = mb;
    else
        s->changed_head = mb;
    s->changed_tail = mb;
    ews_stream_schedule(s, ews_stream_now_usec());
}

static void unqueue_changed(ews_stream *s, watch_mailbox *mb)
{
    watch_mailbox *prev = NULL;
    if (!mb->changed_pending)
        return;
    for (watch_mailbox *m = s->changed_head; m; prev = m, m = m->next_changed) {
        if (m != mb)
            continue;
        if (prev)
            prev->next_changed = m->next_changed;
        else
            s->changed_head = m->next_changed;
        if (s->changed_tail == m)
            s->changed_tail = prev;
        break;
    }
    mb->changed_pending = false;
}

/* ---- the pass ------------------------------------------------------------------ */

static void deliver_changes(ews_stream *s)
{
    char address[ADDRESS_MAX + 1];
    while (s->changed_head && !s->stopped) {
        watch_mailbox *mb = s->changed_head;
        s->changed_head = mb->next_changed;
        if (!s->changed_head)
            s->changed_tail = NULL;
        mb->changed_pending = false;
        /* A copy: changed() may call watch(), which may drop this mailbox. */
        snprintf(address, sizeof address, "%s", mb->address);
        if (s->changed)
            s->changed(address, s->userdata);
    }
}

static void service(void *userdata)
{
    ews_stream *s = userdata;
    uint64_t next = UINT64_MAX, generation = 0;

    s->kick_due = 0;
    deliver_changes(s);
    if (s->stopped || s->backend->stopped || !s->backend->url)
        return;
    uint64_t now = ews_stream_now_usec();
    for (watch_stream **link = &s->retired; *link;) {
        watch_stream *ws = *link;
        if (ws->retire_at > now) {
            next = ws->retire_at < next ? ws->retire_at : next;
            link = &ws->next;
            continue;
        }
        *link = ws->next;
        ews_stream_cancel(s, ws);
    }
    if (now < s->pause_until) {
        ews_stream_schedule(s, s->pause_until);
        return;
    }
    const char *token = ews_stream_token(s, &generation);
    if (!token) {   /* on_token runs this again, or the pause ends */
        if (!s->waiting_for_token)
            ews_stream_schedule(s, s->pause_until);
        return;
    }
    ews_stream_start_unsubscribes(s, token);
    uint64_t due = ews_stream_start_subscribes(s, token, generation, now);
    next = due < next ? due : next;
    for (size_t i = 0; i < s->n_groups; i++) {
        watch_group *g = s->groups[i];
        /* Members still subscribing join first, unless that takes too long. */
        uint64_t settled_at = g->subscribing == 0 ? 0 : g->stale_since + JOIN_WAIT_MAX_USEC;
        if (g->reopen_at && g->reopen_at <= now && settled_at <= now)
            ews_stream_open(s, g, token);
        if (g->reopen_at) {
            uint64_t at = g->reopen_at > now ? g->reopen_at : settled_at;
            next = at < next ? at : next;
        }
    }
    if (next != UINT64_MAX)
        ews_stream_schedule(s, next);
}

/* ---- the set of mailboxes ----------------------------------------------------- */

static int compare_address(const void *a, const void *b)
{
    return strcmp((*(watch_mailbox *const *)a)->address, (*(watch_mailbox *const *)b)->address);
}

static int compare_address_then_order(const void *a, const void *b)
{
    const watch_mailbox *x = *(watch_mailbox *const *)a, *y = *(watch_mailbox *const *)b;
    int c = strcmp(x->address, y->address);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

static watch_mailbox *find_mailbox(const ews_stream *s, const char *address)
{
    size_t lo = 0, hi = s->n_mailboxes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(address, s->mailboxes[mid]->address);
        if (c == 0)
            return s->mailboxes[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* The daemon's address as we key it: trimmed, ASCII lower case; false when it cannot
 * be one (empty, too long, control characters: it would forge a header). */
static bool address_key(const char *address, char key[ADDRESS_MAX + 1])
{
    if (!address)
        return false;
    while (*address == ' ' || *address == '\t')
        address++;
    size_t n = strlen(address);
    while (n > 0 && (address[n - 1] == ' ' || address[n - 1] == '\t'))
        n--;
    if (n == 0 || n > ADDRESS_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)address[i];
        if (c < 0x20 || c == 0x7F)
            return false;
        key[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : (char)c;
    }
    key[n] = '\0';
    return true;
}

static void group_free(ews_stream *s, watch_group *g)
{
    if (g->stream)
        ews_stream_cancel(s, g->stream);
    for (watch_stream *ws = s->retired; ws; ws = ws->next)
        if (ws->group == g)
            ws->group = NULL;
    for (watch_call *c = s->calls; c; c = c->next)
        if (c->group == g)
            c->group = NULL;
    free(g->cookie);
    free(g);
}

static void drop_mailbox(ews_stream *s, watch_mailbox *mb)
{
    watch_group *g = mb->group;
    if (mb->subscription_id)   /* best effort: else it expires without a connection */
        ews_stream_queue_unsubscribe(s, mb->address, mb->subscription_id,
                                     g->members[0]->address, g->cookie);
    if (mb->call)
        mb->call->mailbox = NULL;
    unqueue_changed(s, mb);
    for (size_t i = 0; i < g->n; i++)
        if (g->members[i] == mb) {
            memmove(&g->members[i], &g->members[i + 1], (g->n - i - 1) * sizeof *g->members);
            g->n--;
            break;
        }
    free(mb->subscription_id);
    free(mb->address);
    free(mb);
}

/* A group with room for one more (the first such, so groups fill up), or a new one. */
static watch_group *group_with_room(ews_stream *s)
{
    for (size_t i = 0; i < s->n_groups; i++)
        if (s->groups[i]->n < GROUP_SIZE)
            return s->groups[i];
    watch_group **grown = realloc(s->groups, (s->n_groups + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    s->groups = grown;
    watch_group *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->number = ++s->next_group_number;
    s->groups[s->n_groups++] = g;
    return g;
}

/* Removes what is not wanted; frees groups left empty. */
static bool drop_unwanted(ews_stream *s)
{
    size_t kept = 0;
    bool altered = false;
    for (size_t i = 0; i < s->n_mailboxes; i++) {
        if (s->mailboxes[i]->wanted) {
            s->mailboxes[kept++] = s->mailboxes[i];
        } else {
            drop_mailbox(s, s->mailboxes[i]);
            altered = true;
        }
    }
    s->n_mailboxes = kept;
    kept = 0;
    for (size_t i = 0; i < s->n_groups; i++) {
        if (s->groups[i]->n > 0)
            s->groups[kept++] = s->groups[i];
        else
            group_free(s, s->groups[i]);
    }
    s->n_groups = kept;
    return altered;
}

/* Adds the new mailboxes (fresh[], in the daemon's order), duplicates left out. */
static int add_fresh(ews_stream *s, watch_mailbox **fresh, size_t n_fresh)
{
    watch_mailbox **sorted = malloc(n_fresh * sizeof *sorted);
    if (!sorted)
        return -ENOMEM;
    memcpy(sorted, fresh, n_fresh * sizeof *sorted);
    qsort(sorted, n_fresh, sizeof *sorted, compare_address_then_order);
    for (size_t i = 1; i < n_fresh; i++)
        sorted[i]->duplicate = strcmp(sorted[i]->address, sorted[i - 1]->address) == 0;
    free(sorted);
    if (s->n_mailboxes + n_fresh > s->cap_mailboxes) {
        size_t cap = s->n_mailboxes + n_fresh;
        watch_mailbox **grown = realloc(s->mailboxes, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        s->mailboxes = grown;
        s->cap_mailboxes = cap;
    }
    int r = 0;
    for (size_t i = 0; i < n_fresh; i++) {
        watch_mailbox *mb = fresh[i];
        watch_group *g = mb->duplicate || r < 0 ? NULL : group_with_room(s);
        if (!g) {
            r = mb->duplicate ? r : -ENOMEM;
            free(mb->address);
            free(mb);
            continue;
        }
        mb->group = g;
        g->members[g->n++] = mb;
        s->mailboxes[s->n_mailboxes++] = mb;
    }
    qsort(s->mailboxes, s->n_mailboxes, sizeof *s->mailboxes, compare_address);
    return r;
}

static int set_mailboxes(ews_stream *s, const char *const *mailboxes, size_t n)
{
    watch_mailbox **fresh = NULL;
    size_t n_fresh = 0, cap_fresh = 0, invalid = 0;
    char key[ADDRESS_MAX + 1];
    int r = 0;

    for (size_t i = 0; i < s->n_mailboxes; i++)
        s->mailboxes[i]->wanted = false;
    for (size_t i = 0; i < n && r == 0; i++) {
        if (!address_key(mailboxes[i], key)) {
            invalid++;
            continue;
        }
        watch_mailbox *mb = find_mailbox(s, key);
        if (mb) {
            mb->wanted = true;
            continue;
        }
        if (n_fresh == cap_fresh) {
            cap_fresh = cap_fresh ? 2 * cap_fresh : 64;
            watch_mailbox **grown = realloc(fresh, cap_fresh * sizeof *grown);
            if (!grown) {
                r = -ENOMEM;
                break;
            }
            fresh = grown;
        }
        mb = calloc(1, sizeof *mb);
        if (!mb || !(mb->address = strdup(key))) {
            free(mb);
            r = -ENOMEM;
            break;
        }
        mb->wanted = true;
        mb->order = i;
        fresh[n_fresh++] = mb;
    }
    if (r < 0) {   /* nothing changes: the old set stays watched */
        for (size_t i = 0; i < n_fresh; i++) {
            free(fresh[i]->address);
            free(fresh[i]);
        }
        free(fresh);
        return r;
    }
    if (invalid > 0 && invalid != s->invalid_logged)
        log_warning("watching mailboxes: %zu of the addresses to watch cannot be used (empty, "
                    "longer than %d bytes, or with control characters)", invalid, ADDRESS_MAX);
    s->invalid_logged = invalid;
    bool altered = drop_unwanted(s);
    if (n_fresh > 0) {
        r = add_fresh(s, fresh, n_fresh);
        altered = true;
    }
    free(fresh);
    if (altered)
        ews_stream_schedule(s, ews_stream_now_usec());
    return r;
}

/* ---- life ----------------------------------------------------------------------- */

ews_stream *ews_stream_of(const ews_backend *b)
{
    ews_stream *s = registry;
    while (s && s->backend != b)
        s = s->next_registered;
    return s;
}

static void watcher_stop(ews_stream *s)
{
    s->stopped = true;
    loop_timer_disarm(s->kick);
    while (s->calls) {
        watch_call *call = s->calls;
        ews_stream_call_unlink(s, call);
        http_client_cancel(s->backend->http_client_handle, call->request);
        if (call->mailbox)
            call->mailbox->call = NULL;
        ews_stream_call_free(call);
    }
    while (s->unsubscribes) {
        watch_call *call = s->unsubscribes;
        s->unsubscribes = call->next;
        ews_stream_call_free(call);
    }
    s->unsubscribes_tail = NULL;
    while (s->retired) {
        watch_stream *ws = s->retired;
        s->retired = ws->next;
        ews_stream_cancel(s, ws);
    }
    for (size_t i = 0; i < s->n_groups; i++) {
        if (s->groups[i]->stream)
            ews_stream_cancel(s, s->groups[i]->stream);
        s->groups[i]->stream = NULL;
        s->groups[i]->subscribing = 0;
    }
    while (s->changed_head)
        unqueue_changed(s, s->changed_head);
}

int ews_stream_watch(void *impl, const char *const *mailboxes, size_t n,
                     delivery_changed_fn changed, void *userdata)
{
    ews_backend *b = impl;
    ews_stream *s = ews_stream_of(b);

    if (!s && n == 0)
        return 0;
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -ENOMEM;
        s->backend = b;
        s->kick = loop_timer_new(b->event, service, s);
        if (!s->kick) {
            free(s);
            return -ENOMEM;
        }
        s->next_registered = registry;
        registry = s;
    }
    if (s->stopped || b->stopped)
        return -ESHUTDOWN;
    s->changed = changed;
    s->userdata = userdata;
    return set_mailboxes(s, mailboxes, n);
}

void ews_stream_stop(ews_backend *b)
{
    ews_stream *s = ews_stream_of(b);
    if (s)
        watcher_stop(s);
}

void ews_stream_free(ews_backend *b)
{
    ews_stream *s = ews_stream_of(b);
    if (!s)
        return;
    watcher_stop(s);
    for (ews_stream **link = &registry; *link; link = &(*link)->next_registered)
        if (*link == s) {
            *link = s->next_registered;
            break;
        }
    for (size_t i = 0; i < s->n_mailboxes; i++) {
        free(s->mailboxes[i]->subscription_id);
        free(s->mailboxes[i]->address);
        free(s->mailboxes[i]);
    }
    for (size_t i = 0; i < s->n_groups; i++)
        group_free(s, s->groups[i]);
    loop_timer_free(s->kick);
    free(s->mailboxes);
    free(s->groups);
    free(s);
}
