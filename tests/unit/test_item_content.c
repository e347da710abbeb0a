/* Unit tests for item_content: subject, body, link and hostile text. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/item_content.h"
#include "daemon/timezone.h"

static reconcile_settings default_settings(void)
{
    return (reconcile_settings){
        .outlook_enabled = true, .add_to_calendar = true, .sync_updates = true,
        .duration_minutes = 30, .reminder_minutes = 15,
        .link_template = "https://crm.example.org/contact-logs/{id}",
        .time_zone = "W. Europe Standard Time",
    };
}

static reconcile_log sample_log(void)
{
    return (reconcile_log){
        .log_id = 42, .exists = true, .has_follow_up = true,
        .next_contact_at = 1900000000, .reason = "Call back\nabout the offer",
        .contact_name = "Ada Lovelace", .priority = "high", .creator_email = "a@example.org",
        .assigned_name = "Bob Baker", .forward_name = "Carol <Clerk>",
    };
}

static void appointment_fields(void **state)
{
    (void)state;
    reconcile_settings s = default_settings();
    reconcile_log log = sample_log();
    item_content c;

    assert_int_equal(item_content_build(&log, &s, OUTLOOK_APPOINTMENT, false, &c), 0);
    assert_string_equal(c.item.subject, "Call back");
    assert_int_equal(c.item.start, 1900000000);
    assert_int_equal(c.item.end, 1900000000 + 30 * 60);
    assert_int_equal(c.item.reminder_minutes, 15);
    assert_int_equal(c.item.importance, OUTLOOK_IMPORTANCE_HIGH);
    assert_string_equal(c.item.time_zone, "W. Europe Standard Time");
    assert_non_null(strstr(c.body_html, "href=\"https://crm.example.org/contact-logs/42\""));
    assert_non_null(strstr(c.body_html, "Ada Lovelace"));
    assert_non_null(strstr(c.body_html, "Call back<br>\nabout the offer"));
    assert_non_null(strstr(c.body_html, "Bob Baker"));
    /* HTML in a name is shown as text, never markup. */
    assert_non_null(strstr(c.body_html, "Carol &lt;Clerk&gt;"));
    assert_int_equal(strlen(c.hash), ITEM_HASH_HEX_LEN);
    item_content_clear(&c);
}

static void hash_follows_content(void **state)
{
    (void)state;
    reconcile_settings s = default_settings();
    reconcile_log log = sample_log();
    item_content a, b;

    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, false, &a), 0);
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, false, &b), 0);
    assert_string_equal(a.hash, b.hash);
    item_content_clear(&b);
    log.next_contact_at += 60;
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, false, &b), 0);
    assert_string_not_equal(a.hash, b.hash);
    item_content_clear(&b);
    log.next_contact_at -= 60;
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, true, &b), 0);
    assert_string_not_equal(a.hash, b.hash);
    assert_true(b.item.task_completed);
    item_content_clear(&b);
    item_content_clear(&a);
}

static void empty_reason_subject(void **state)
{
    (void)state;
    char *s = item_subject_from_reason("  \n ", "Ada");
    assert_string_equal(s, "Follow up: Ada");
    free(s);
    s = item_subject_from_reason(NULL, "Line1\nLine2");
    assert_string_equal(s, "Follow up: Line1");
    free(s);
}

static size_t utf16_units(const char *s)
{
    size_t units = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            units += (*p >= 0xF0) ? 2 : 1;
    }
    return units;
}

static void subject_truncated_on_character_boundary(void **state)
{
    (void)state;
    /* 300 emoji: 4 bytes and 2 UTF-16 units each. */
    char reason[300 * 4 + 1];
    for (int i = 0; i < 300; i++)
        memcpy(reason + i * 4, "\xF0\x9F\x98\x80", 4);
    reason[sizeof reason - 1] = '\0';
    char *s = item_subject_from_reason(reason, "x");
    assert_true(utf16_units(s) <= ITEM_SUBJECT_MAX_UTF16);
    assert_int_equal(strlen(s) % 4, 0);   /* whole characters only */
    assert_int_equal(strlen(s), 127 * 4);
    free(s);

    char plain[400];
    memset(plain, 'a', sizeof plain - 1);
    plain[sizeof plain - 1] = '\0';
    s = item_subject_from_reason(plain, "x");
    assert_int_equal(strlen(s), ITEM_SUBJECT_MAX_UTF16);
    free(s);
}

static void forbidden_characters_replaced(void **state)
{
    (void)state;
    const char input[] = "a\x01" "b\x1f" "c\t\n\r" "d\xEF\xBF\xBE" "e\xC0\xAF" "f\xED\xA0\x80" "g\xFF";
    char *clean = item_text_clean(input, sizeof input - 1);
    assert_string_equal(clean, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\t\n\r" "d\xEF\xBF\xBD"
                               "e\xEF\xBF\xBD\xEF\xBF\xBD" "f\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
                               "g\xEF\xBF\xBD");
    free(clean);
    /* Right-to-left and astral characters pass unchanged. */
    const char rtl[] = "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xF0\x9F\x98\x80";
    clean = item_text_clean(rtl, sizeof rtl - 1);
    assert_string_equal(clean, rtl);
    free(clean);
}

static void link_only_http(void **state)
{
    (void)state;
    char *link = item_link("https://crm/x/{id}?again={id}", 7);
    assert_string_equal(link, "https://crm/x/7?again=7");
    free(link);
    assert_null(item_link("javascript:alert({id})", 7));
    assert_null(item_link("ftp://x/{id}", 7));
    assert_null(item_link(NULL, 7));

    /* A hostile template never reaches the body: the default is used instead. */
    reconcile_settings s = default_settings();
    s.link_template = "javascript:alert(1)//{id}";
    reconcile_log log = sample_log();
    item_content c;
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_APPOINTMENT, false, &c), 0);
    assert_null(strstr(c.body_html, "javascript"));
    assert_non_null(strstr(c.body_html, "https://crm.example.org/contact-logs/42"));
    item_content_clear(&c);

    /* Quotes in a template cannot break out of the href attribute. */
    s.link_template = "https://crm/{id}\"onmouseover=\"x";
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_APPOINTMENT, false, &c), 0);
    assert_null(strstr(c.body_html, "\"onmouseover"));
    assert_non_null(strstr(c.body_html, "&quot;onmouseover=&quot;x"));
    item_content_clear(&c);
}

static void large_reason(void **state)
{
    (void)state;
    size_t n = 1024 * 1024;
    char *reason = malloc(n + 1);
    memset(reason, 'x', n);
    reason[n] = '\0';
    reconcile_settings s = default_settings();
    reconcile_log log = sample_log();
    log.reason = reason;
    item_content c;
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, false, &c), 0);
    assert_int_equal(strlen(c.item.subject), ITEM_SUBJECT_MAX_UTF16);
    assert_true(strlen(c.body_html) > n);
    item_content_clear(&c);
    free(reason);
}

/* ---- the task's due date (SPEC section 3) ----------------------------------------- */

/* A task for a follow-up at `at` for an employee whose zone (the Windows id the worker
 * passes: employee.time_zone mapped, else [exchange] time_zone) is zone. */
static void build_task(const char *zone, int64_t at, item_content *c)
{
    reconcile_settings s = default_settings();
    reconcile_log log = sample_log();

    s.time_zone = zone;
    log.next_contact_at = at;
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_TASK, false, c), 0);
    assert_true(c->item.has_due_day);
    /* The reminder stays at the follow-up itself. */
    assert_int_equal(c->item.start, at);
}

static void due_date_in_employee_zone(void **state)
{
    (void)state;
    item_content c;

    /* 2030-05-04 00:30 in Berlin (22:30 UTC the day before) is due on the 4th. */
    build_task("W. Europe Standard Time", INT64_C(1904077800), &c);
    assert_string_equal(c.item.time_zone, "W. Europe Standard Time");
    assert_int_equal(c.item.due_day_start, INT64_C(1904076000));   /* 05-04 00:00+02:00 */
    assert_int_equal(c.item.due_utc_offset, 7200);
    item_content_clear(&c);

    /* The same in winter (+01:00). */
    build_task("W. Europe Standard Time", INT64_C(1894663800), &c);
    assert_int_equal(c.item.due_day_start, INT64_C(1894662000));   /* 01-15 00:00+01:00 */
    assert_int_equal(c.item.due_utc_offset, 3600);
    item_content_clear(&c);

    /* The day the clocks go forward: midnight still has the winter offset. */
    build_task("W. Europe Standard Time", INT64_C(1901170800), &c); /* 03-31 09:00+02:00 */
    assert_int_equal(c.item.due_day_start, INT64_C(1901142000));   /* 03-31 00:00+01:00 */
    assert_int_equal(c.item.due_utc_offset, 3600);
    item_content_clear(&c);

    /* Chile skips midnight on 2024-09-08 (00:00 -04 becomes 01:00 -03): the day
     * begins at that instant. */
    build_task("Pacific SA Standard Time", INT64_C(1725807600), &c); /* 12:00-03:00 */
    assert_int_equal(c.item.due_day_start, INT64_C(1725768000));
    assert_int_equal(c.item.due_utc_offset, -3 * 3600);
    item_content_clear(&c);

    /* An IANA name is understood as well as a Windows id. */
    build_task("Europe/Berlin", INT64_C(1904077800), &c);
    assert_int_equal(c.item.due_day_start, INT64_C(1904076000));
    item_content_clear(&c);
}

static void due_date_utc_employee(void **state)
{
    (void)state;
    item_content c;

    /* 23:30 UTC for an employee in UTC: due that day, not the next. */
    build_task("UTC", INT64_C(1904167800), &c);
    assert_string_equal(c.item.time_zone, "UTC");
    assert_int_equal(c.item.due_day_start, INT64_C(1904083200));   /* 05-04 00:00Z */
    assert_int_equal(c.item.due_utc_offset, 0);
    item_content_clear(&c);
}

/* An employee without employee.time_zone gets [exchange] time_zone from the worker
 * (settings.time_zone): the date is taken there, whatever it is. */
static void due_date_default_zone(void **state)
{
    (void)state;
    item_content c;

    /* 2030-05-04 20:00 UTC is the 5th in Tokyo ... */
    build_task("Tokyo Standard Time", INT64_C(1904155200), &c);
    assert_string_equal(c.item.time_zone, "Tokyo Standard Time");
    assert_int_equal(c.item.due_day_start, INT64_C(1904137200));   /* 05-05 00:00+09:00 */
    assert_int_equal(c.item.due_utc_offset, 9 * 3600);
    item_content_clear(&c);

    /* ... and 05:00 UTC is still the 3rd in California. */
    build_task("Pacific Standard Time", INT64_C(1904101200), &c);
    assert_int_equal(c.item.due_day_start, INT64_C(1904022000));   /* 05-03 00:00-07:00 */
    assert_int_equal(c.item.due_utc_offset, -7 * 3600);
    item_content_clear(&c);

    /* A zone the tz database cannot place: the UTC date, and no zone claimed for it. */
    build_task("Mars Standard Time", INT64_C(1904155200), &c);
    assert_null(c.item.time_zone);
    assert_int_equal(c.item.due_day_start, INT64_C(1904083200));
    assert_int_equal(c.item.due_utc_offset, 0);
    item_content_clear(&c);
    build_task(NULL, INT64_C(-1), &c);
    assert_int_equal(c.item.due_day_start, INT64_C(-86400));       /* 1969-12-31 */
    item_content_clear(&c);

    /* Appointments are untouched: their zone is StartTimeZone, no due day. */
    reconcile_settings s = default_settings();
    reconcile_log log = sample_log();
    assert_int_equal(item_content_build(&log, &s, OUTLOOK_APPOINTMENT, false, &c), 0);
    assert_false(c.item.has_due_day);
    item_content_clear(&c);
}

/* The due date is part of what reaches Outlook: another zone, another hash. */
static void due_date_in_hash(void **state)
{
    (void)state;
    item_content a, b;

    build_task("W. Europe Standard Time", INT64_C(1904077800), &a);
    build_task("UTC", INT64_C(1904077800), &b);
    assert_string_not_equal(a.hash, b.hash);
    item_content_clear(&b);
    build_task("W. Europe Standard Time", INT64_C(1904077800), &b);
    assert_string_equal(a.hash, b.hash);
    item_content_clear(&b);
    item_content_clear(&a);
}

/* The zone is looked up through TZ, which is put back as it was. */
static void day_start_restores_tz(void **state)
{
    (void)state;
    int64_t start;
    int offset;

    assert_int_equal(setenv("TZ", "Asia/Kolkata", 1), 0);
    assert_int_equal(timezone_day_start("UTC", INT64_C(1904167800), &start, &offset), 0);
    assert_string_equal(getenv("TZ"), "Asia/Kolkata");
    assert_int_equal(unsetenv("TZ"), 0);
    assert_int_equal(timezone_day_start("Europe/Berlin", INT64_C(1904077800), &start,
                                        &offset), 0);
    assert_null(getenv("TZ"));
    assert_int_equal(start, INT64_C(1904076000));
    assert_int_equal(timezone_day_start("Mars Standard Time", 0, &start, &offset), -ENOENT);
    assert_int_equal(timezone_day_start("", 0, &start, &offset), -ENOENT);
    assert_int_equal(timezone_day_start(NULL, 0, &start, &offset), -ENOENT);
    assert_int_equal(timezone_day_start("UTC", INT64_MAX, &start, &offset), -ERANGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(appointment_fields),
        cmocka_unit_test(hash_follows_content),
        cmocka_unit_test(empty_reason_subject),
        cmocka_unit_test(subject_truncated_on_character_boundary),
        cmocka_unit_test(forbidden_characters_replaced),
        cmocka_unit_test(link_only_http),
        cmocka_unit_test(large_reason),
        cmocka_unit_test(due_date_in_employee_zone),
        cmocka_unit_test(due_date_utc_employee),
        cmocka_unit_test(due_date_default_zone),
        cmocka_unit_test(due_date_in_hash),
        cmocka_unit_test(day_start_restores_tz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
