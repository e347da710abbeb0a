/* Unit tests for reconcile: the rules of SPEC §3 as a table of cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/reconcile.h"

#define NOW 1800000000
#define APPT OUTLOOK_APPOINTMENT
#define TASK OUTLOOK_TASK

static reconcile_settings settings(bool calendar, bool tasks, bool sync)
{
    return (reconcile_settings){.outlook_enabled = true, .add_to_calendar = calendar,
                                .add_to_tasks = tasks, .sync_updates = sync,
                                .duration_minutes = 30, .reminder_minutes = 15,
                                .link_template = "https://x/{id}"};
}

static reconcile_log new_log(void)
{
    return (reconcile_log){.log_id = 1, .version = 1, .exists = true,
                           .inserted_with_follow_up = true, .has_follow_up = true,
                           .next_contact_at = NOW + 3600, .creator_email = "a@x"};
}

static const char *const hashes[RECONCILE_KINDS] = {"hA", "hT"};

static void have(reconcile_log *log, outlook_item_kind kind, const char *hash)
{
    log->current[kind] = (reconcile_current){.present = true, .mailbox = "a@x",
                                             .item_id = "ID", .content_hash = hash};
}

static reconcile_plan plan_for(const reconcile_log *log, reconcile_settings s)
{
    reconcile_plan p;
    reconcile_plan_log(log, &s, NOW, hashes, &p);
    return p;
}

static void new_log_gets_what_attributes_ask(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    reconcile_plan p = plan_for(&log, settings(true, false, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
    p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_CREATE);
    p = plan_for(&log, settings(false, true, false));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_CREATE);
    p = plan_for(&log, settings(false, false, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
}

static void completed_or_no_follow_up_gets_nothing(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    log.completed = true;
    reconcile_plan p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
    log = new_log();
    log.has_follow_up = false;
    p = plan_for(&log, settings(true, true, false));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
}

static void other_message_system_sends_nothing(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    have(&log, APPT, "old");
    reconcile_settings s = settings(true, true, true);
    s.outlook_enabled = false;
    reconcile_plan p = plan_for(&log, s);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
}

static void changed_content_updates_unchanged_does_not(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    have(&log, APPT, "old");
    have(&log, TASK, "hT");
    reconcile_plan p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_UPDATE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
}

static void cleared_follow_up_or_deleted_log_deletes(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    have(&log, APPT, "hA");
    have(&log, TASK, "hT");
    log.has_follow_up = false;
    reconcile_plan p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_DELETE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_DELETE);
    log.exists = false;
    p = plan_for(&log, settings(false, false, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_DELETE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_DELETE);
}

static void completion_completes_task_and_drops_future_appointment(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    have(&log, APPT, "hA");
    have(&log, TASK, "before-completion");
    log.completed = true;
    reconcile_plan p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_DELETE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_UPDATE);
    assert_true(p.steps[TASK].task_completed);
    /* An appointment that already began stays as history. */
    log.next_contact_at = NOW - 60;
    p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
}

static void classic_mode_creates_once_then_ignores_edits(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    reconcile_plan p = plan_for(&log, settings(true, true, false));
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_CREATE);
    log.ever_synced = true;
    have(&log, APPT, "old");
    log.has_follow_up = false;
    p = plan_for(&log, settings(true, true, false));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
    /* A follow-up added later to a log inserted without one: classic sends nothing. */
    log = new_log();
    log.inserted_with_follow_up = false;
    p = plan_for(&log, settings(true, true, false));
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    p = plan_for(&log, settings(true, true, true));
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);
}

static void lost_create_is_looked_up_first(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    log.current[APPT] = (reconcile_current){.present = true, .pending = true, .mailbox = "a@x"};
    reconcile_plan p = plan_for(&log, settings(true, false, true));
    assert_true(p.steps[APPT].lookup_first);
    assert_int_equal(p.steps[APPT].action, RECONCILE_UPDATE);
    p = plan_for(&log, settings(true, false, false));
    assert_true(p.steps[APPT].lookup_first);
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);
    log.has_follow_up = false;
    p = plan_for(&log, settings(true, false, true));
    assert_true(p.steps[APPT].lookup_first);
    assert_int_equal(p.steps[APPT].action, RECONCILE_DELETE);
}

static void creator_without_email_is_a_permanent_error(void **state)
{
    (void)state;
    reconcile_log log = new_log();
    log.creator_email = NULL;
    reconcile_plan p = plan_for(&log, settings(true, false, true));
    assert_non_null(p.permanent_error);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    p = plan_for(&log, settings(false, false, true));
    assert_null(p.permanent_error);
}

/* FollowUpMailbox = owner (docs/architecture.md "Moves between mailboxes"). */
static void items_follow_the_owner(void **state)
{
    (void)state;
    reconcile_settings owner = settings(true, true, true);
    owner.follow_owner = true;
    reconcile_log log = new_log();
    log.owner_email = "b@x";

    reconcile_plan p = plan_for(&log, owner);
    assert_string_equal(p.home, "b@x");
    assert_true(p.home_is_owner);
    assert_int_equal(p.steps[APPT].action, RECONCILE_CREATE);

    /* In the creator's mailbox, owned by Bob: moved, content change or not. */
    have(&log, APPT, hashes[APPT]);
    have(&log, TASK, "old");
    p = plan_for(&log, owner);
    assert_int_equal(p.steps[APPT].action, RECONCILE_MOVE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_MOVE);
    assert_false(p.steps[APPT].lookup_first);

    /* Mailboxes compare without case. */
    log.owner_email = "A@X";
    p = plan_for(&log, owner);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_UPDATE);

    /* With creator, the owner does not matter. */
    log.owner_email = "b@x";
    p = plan_for(&log, settings(true, true, true));
    assert_string_equal(p.home, "a@x");
    assert_false(p.home_is_owner);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
}

static void open_log_or_unreachable_owner_goes_to_the_creator(void **state)
{
    (void)state;
    reconcile_settings owner = settings(true, true, true);
    owner.follow_owner = true;
    reconcile_log log = new_log();
    log.owner_email = NULL;   /* open, inactive owner, or an owner without email */
    log.current[APPT] = (reconcile_current){.present = true, .mailbox = "b@x",
                                            .item_id = "ID", .content_hash = hashes[APPT]};
    reconcile_plan p = plan_for(&log, owner);
    assert_string_equal(p.home, "a@x");
    assert_int_equal(p.steps[APPT].action, RECONCILE_MOVE);
    assert_int_equal(p.steps[TASK].action, RECONCILE_CREATE);
}

static void completed_or_classic_items_stay_where_they_are(void **state)
{
    (void)state;
    reconcile_settings owner = settings(true, true, true);
    owner.follow_owner = true;
    reconcile_log log = new_log();
    log.owner_email = "b@x";
    have(&log, TASK, "old");
    log.current[APPT] = (reconcile_current){.present = true, .mailbox = "a@x",
                                            .item_id = "ID", .content_hash = hashes[APPT]};
    log.completed = true;
    reconcile_plan p = plan_for(&log, owner);
    assert_int_equal(p.steps[TASK].action, RECONCILE_UPDATE);    /* completed where it is */
    assert_int_equal(p.steps[APPT].action, RECONCILE_DELETE);    /* future: removed there */

    log.completed = false;
    log.ever_synced = true;
    owner.sync_updates = false;
    p = plan_for(&log, owner);
    assert_int_equal(p.steps[TASK].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
}

static void lost_create_in_the_old_mailbox_is_looked_up_then_moved(void **state)
{
    (void)state;
    reconcile_settings owner = settings(true, false, true);
    owner.follow_owner = true;
    reconcile_log log = new_log();
    log.owner_email = "b@x";
    log.current[APPT] = (reconcile_current){.present = true, .pending = true, .mailbox = "a@x"};
    reconcile_plan p = plan_for(&log, owner);
    assert_int_equal(p.steps[APPT].action, RECONCILE_MOVE);
    assert_true(p.steps[APPT].lookup_first);
}

/* Deleted by a person in Outlook (SPEC §7): left alone; only our record goes when
 * the item would go anyway. */
static void item_deleted_in_outlook_is_left_alone(void **state)
{
    (void)state;
    reconcile_settings s = settings(true, true, true);
    s.follow_owner = true;
    reconcile_log log = new_log();
    log.owner_email = "b@x";   /* would move */
    have(&log, APPT, "old");   /* would update */
    log.current[APPT].deleted_in_outlook = true;
    reconcile_plan p = plan_for(&log, s);
    assert_int_equal(p.steps[APPT].action, RECONCILE_NOTHING);
    assert_int_equal(p.steps[TASK].action, RECONCILE_CREATE);

    log.has_follow_up = false;
    p = plan_for(&log, s);
    assert_int_equal(p.steps[APPT].action, RECONCILE_FORGET);
    assert_false(p.steps[APPT].lookup_first);
    log.exists = false;
    p = plan_for(&log, s);
    assert_int_equal(p.steps[APPT].action, RECONCILE_FORGET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(new_log_gets_what_attributes_ask),
        cmocka_unit_test(completed_or_no_follow_up_gets_nothing),
        cmocka_unit_test(other_message_system_sends_nothing),
        cmocka_unit_test(changed_content_updates_unchanged_does_not),
        cmocka_unit_test(cleared_follow_up_or_deleted_log_deletes),
        cmocka_unit_test(completion_completes_task_and_drops_future_appointment),
        cmocka_unit_test(classic_mode_creates_once_then_ignores_edits),
        cmocka_unit_test(lost_create_is_looked_up_first),
        cmocka_unit_test(creator_without_email_is_a_permanent_error),
        cmocka_unit_test(items_follow_the_owner),
        cmocka_unit_test(open_log_or_unreachable_owner_goes_to_the_creator),
        cmocka_unit_test(completed_or_classic_items_stay_where_they_are),
        cmocka_unit_test(lost_create_in_the_old_mailbox_is_looked_up_then_moved),
        cmocka_unit_test(item_deleted_in_outlook_is_left_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
