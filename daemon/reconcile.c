/* reconcile — see reconcile.h. The rules of SPEC §3, stated once. */
#include "daemon/reconcile.h"

#include <string.h>
#include <strings.h>

const char *reconcile_action_name(reconcile_action action)
{
    switch (action) {
    case RECONCILE_NOTHING: return "nothing";
    case RECONCILE_CREATE: return "create";
    case RECONCILE_UPDATE: return "update";
    case RECONCILE_DELETE: return "delete";
    case RECONCILE_MOVE: return "move";
    case RECONCILE_FORGET: return "forget";
    }
    return "?";
}

static bool kind_enabled(const reconcile_settings *s, outlook_item_kind kind)
{
    if (!s->outlook_enabled)
        return false;
    return kind == OUTLOOK_APPOINTMENT ? s->add_to_calendar : s->add_to_tasks;
}

static bool hash_differs(const reconcile_current *cur, const char *hash)
{
    return !cur->content_hash || !hash || strcmp(cur->content_hash, hash) != 0;
}

/* Classic behaviour (SyncUpdates = 0): items only for a log inserted with a
 * follow-up, made on the first pass over it; later edits send nothing. */
static reconcile_action classic_action(const reconcile_log *log, const reconcile_settings *s,
                                       outlook_item_kind kind)
{
    const reconcile_current *cur = &log->current[kind];

    if (log->ever_synced || !log->exists || !log->inserted_with_follow_up)
        return RECONCILE_NOTHING;
    if (log->completed || !log->has_follow_up || !kind_enabled(s, kind))
        return RECONCILE_NOTHING;
    return cur->present && !cur->pending ? RECONCILE_NOTHING : RECONCILE_CREATE;
}

/* Where a log's items belong: the owner's mailbox when they follow the owner and
 * the owner can hold them, else the creator's (an open log's, too). */
const char *reconcile_home(const reconcile_log *log, const reconcile_settings *s, bool *is_owner)
{
    bool owner = s->follow_owner && log->owner_email;
    if (is_owner)
        *is_owner = owner;
    return owner ? log->owner_email : log->creator_email;
}

static bool away_from_home(const reconcile_current *cur, const char *home)
{
    return home && cur->mailbox && strcasecmp(cur->mailbox, home) != 0;
}

/* Outlook follows the log (SyncUpdates = 1). A completed log's items stay where
 * they are; an open or in-progress log's move home first. */
static reconcile_action following_action(const reconcile_log *log, const reconcile_settings *s,
                                         outlook_item_kind kind, int64_t now, const char *hash,
                                         const char *home)
{
    const reconcile_current *cur = &log->current[kind];
    bool have = cur->present;   /* pending counts: it may exist in Outlook */

    if (!log->exists || !log->has_follow_up)
        return have ? RECONCILE_DELETE : RECONCILE_NOTHING;

    if (log->completed) {
        if (!have)
            return RECONCILE_NOTHING;
        if (kind == OUTLOOK_TASK)
            return hash_differs(cur, hash) ? RECONCILE_UPDATE : RECONCILE_NOTHING;
        /* An appointment that has begun is history and stays; a future one goes. */
        return log->next_contact_at > now ? RECONCILE_DELETE : RECONCILE_NOTHING;
    }

    if (!have)
        return kind_enabled(s, kind) ? RECONCILE_CREATE : RECONCILE_NOTHING;
    /* A switched-off kind makes no new items but keeps existing ones current (and
     * moves them with the log). */
    if (away_from_home(cur, home))
        return RECONCILE_MOVE;
    if (cur->pending)
        return RECONCILE_UPDATE;
    return hash_differs(cur, hash) ? RECONCILE_UPDATE : RECONCILE_NOTHING;
}

void reconcile_plan_log(const reconcile_log *log, const reconcile_settings *settings,
                        int64_t now, const char *const content_hash[RECONCILE_KINDS],
                        reconcile_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    if (!settings->outlook_enabled)
        return;   /* another message system: nothing at all goes to Exchange */
    plan->home = reconcile_home(log, settings, &plan->home_is_owner);
    for (int k = 0; k < RECONCILE_KINDS; k++) {
        outlook_item_kind kind = (outlook_item_kind)k;
        reconcile_step *step = &plan->steps[k];
        const reconcile_current *cur = &log->current[k];

        step->action = settings->sync_updates
                           ? following_action(log, settings, kind, now, content_hash[k],
                                              plan->home)
                           : classic_action(log, settings, kind);
        /* An item a person deleted in Outlook stays deleted (SPEC §7): nothing is
         * updated, moved or recreated; where it would go anyway, only our record goes. */
        if (cur->present && cur->deleted_in_outlook)
            step->action = step->action == RECONCILE_DELETE ? RECONCILE_FORGET : RECONCILE_NOTHING;
        step->task_completed = kind == OUTLOOK_TASK && log->completed;
        /* A create whose answer was lost may have made the item: find it first. */
        step->lookup_first = cur->present && cur->pending && step->action != RECONCILE_NOTHING &&
                             step->action != RECONCILE_FORGET;

        if (step->action == RECONCILE_CREATE && !plan->home) {
            plan->permanent_error = "the creator of the log has no email address "
                                    "(set contactlog.employee.email)";
            step->action = RECONCILE_NOTHING;
        }
    }
}
