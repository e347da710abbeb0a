/* test_graph_json — the Microsoft Graph JSON builders and parsers (graph/graph_json.c),
 * plus the IANA → Windows time-zone table (daemon/timezone.c) both back ends use.
 * Bodies are read back with json-c, so the assertions are about JSON values, not
 * about spelling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cmocka.h>

#include "daemon/timezone.h"
#include "graph/graph_json.h"
#include "http/http_client.h"

/* 2025-03-01T09:00:00Z and 09:30. */
#define T_START INT64_C(1740819600)
#define T_END INT64_C(1740821400)

static const outlook_item appointment = {
    .kind = OUTLOOK_APPOINTMENT,
    .log_id = 42,
    .subject = "Call back \"soon\" / <today>",
    .body_html = "<p>Ada &amp; Grace</p><a href=\"https://crm.example.org/contact-logs/42\">x</a>",
    .start = T_START,
    .end = T_END,
    .reminder_minutes = 15,
    .importance = OUTLOOK_IMPORTANCE_HIGH,
    .time_zone = "W. Europe Standard Time",
    .link = "https://crm.example.org/contact-logs/42",
};

static const outlook_item task = {
    .kind = OUTLOOK_TASK,
    .log_id = 7,
    .subject = "Ring back",
    .body_html = "<p>Body</p>",
    .start = T_START,
    .importance = OUTLOOK_IMPORTANCE_LOW,
    .task_completed = true,
    .link = "https://crm.example.org/contact-logs/7",
};

/* The JSON text of obj, parsed back (so we test what goes on the wire). */
static json_object *round_trip(json_object *obj)
{
    size_t len = 0;
    assert_non_null(obj);
    char *text = graph_json_text(obj, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_null(strstr(text, "\\/"));   /* '/' is not escaped */
    json_object *back = json_tokener_parse(text);
    assert_non_null(back);
    free(text);
    json_object_put(obj);
    return back;
}

static const char *str_at(json_object *obj, const char *path)
{
    char copy[256];
    snprintf(copy, sizeof copy, "%s", path);
    json_object *cur = obj;
    for (char *save = NULL, *key = strtok_r(copy, ".", &save); key;
         key = strtok_r(NULL, ".", &save)) {
        json_object *next;
        if (json_object_is_type(cur, json_type_array))
            next = json_object_array_get_idx(cur, (size_t)atoi(key));
        else if (!json_object_object_get_ex(cur, key, &next))
            return NULL;
        cur = next;
    }
    return cur ? json_object_get_string(cur) : NULL;
}

static void has(json_object *obj, const char *path, const char *want)
{
    const char *got = str_at(obj, path);
    if (!got || strcmp(got, want) != 0)
        fail_msg("%s: got %s, want %s", path, got ? got : "(missing)", want);
}

static void test_event_body(void **state)
{
    (void)state;
    json_object *e = round_trip(graph_json_event(&appointment));
    has(e, "subject", appointment.subject);
    has(e, "body.contentType", "html");
    has(e, "body.content", appointment.body_html);
    has(e, "start.dateTime", "2025-03-01T09:00:00");
    has(e, "start.timeZone", "UTC");
    has(e, "end.dateTime", "2025-03-01T09:30:00");
    has(e, "end.timeZone", "UTC");
    has(e, "originalStartTimeZone", "W. Europe Standard Time");
    has(e, "originalEndTimeZone", "W. Europe Standard Time");
    has(e, "isReminderOn", "true");
    has(e, "reminderMinutesBeforeStart", "15");
    has(e, "importance", "high");
    has(e, "showAs", "busy");
    has(e, "singleValueExtendedProperties.0.id",
        "String {6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86} Name FollowupdContactLog");
    has(e, "singleValueExtendedProperties.0.value", "contactlog:42:appointment");
    json_object *unused;
    assert_false(json_object_object_get_ex(e, "attendees", &unused));
    json_object_put(e);

    outlook_item no_zone = appointment;
    no_zone.time_zone = NULL;
    no_zone.importance = OUTLOOK_IMPORTANCE_NORMAL;
    e = round_trip(graph_json_event(&no_zone));
    assert_false(json_object_object_get_ex(e, "originalStartTimeZone", &unused));
    has(e, "importance", "normal");
    json_object_put(e);
}

static void test_task_body(void **state)
{
    (void)state;
    json_object *t = round_trip(graph_json_task(&task, true));
    has(t, "title", "Ring back");
    has(t, "body.contentType", "html");
    has(t, "importance", "low");
    /* No due day from the caller: the UTC date, at midnight. */
    has(t, "dueDateTime.dateTime", "2025-03-01T00:00:00.0000000");
    has(t, "dueDateTime.timeZone", "UTC");
    has(t, "reminderDateTime.dateTime", "2025-03-01T09:00:00");
    has(t, "reminderDateTime.timeZone", "UTC");
    has(t, "isReminderOn", "true");
    has(t, "status", "completed");
    has(t, "linkedResources.0.webUrl", "https://crm.example.org/contact-logs/7");
    has(t, "linkedResources.0.applicationName", "CRM");
    has(t, "linkedResources.0.displayName", "Contact log 7");
    has(t, "linkedResources.0.externalId", "contactlog:7:task");
    json_object_put(t);

    outlook_item open_task = task;
    open_task.task_completed = false;
    t = round_trip(graph_json_task(&open_task, false));   /* PATCH: no linkedResources */
    has(t, "status", "notStarted");
    json_object *unused;
    assert_false(json_object_object_get_ex(t, "linkedResources", &unused));
    json_object_put(t);

    /* SPEC section 3 on Graph: the due day at midnight in the employee's zone (here a
     * follow-up at 2030-05-04 00:30 in Berlin, 22:30 UTC the day before); the reminder
     * stays the follow-up's UTC instant. */
    outlook_item berlin = task;
    berlin.start = INT64_C(1904077800);
    berlin.time_zone = "W. Europe Standard Time";
    berlin.has_due_day = true;
    berlin.due_day_start = INT64_C(1904076000);
    berlin.due_utc_offset = 7200;
    t = round_trip(graph_json_task(&berlin, true));
    has(t, "dueDateTime.dateTime", "2030-05-04T00:00:00.0000000");
    has(t, "dueDateTime.timeZone", "W. Europe Standard Time");
    has(t, "reminderDateTime.dateTime", "2030-05-03T22:30:00");
    has(t, "reminderDateTime.timeZone", "UTC");
    json_object_put(t);

    /* West of Greenwich the date can be the day before the UTC one. */
    berlin.start = INT64_C(1904101200);               /* 2030-05-04T05:00:00Z */
    berlin.time_zone = "Pacific Standard Time";
    berlin.due_day_start = INT64_C(1904022000);       /* 2030-05-03 00:00-07:00 */
    berlin.due_utc_offset = -7 * 3600;
    t = round_trip(graph_json_task(&berlin, false));
    has(t, "dueDateTime.dateTime", "2030-05-03T00:00:00.0000000");
    has(t, "dueDateTime.timeZone", "Pacific Standard Time");
    json_object_put(t);

    /* A day computed in UTC (the zone was unknown) says UTC. */
    berlin.time_zone = NULL;
    berlin.due_day_start = INT64_C(1904083200);
    berlin.due_utc_offset = 0;
    t = round_trip(graph_json_task(&berlin, false));
    has(t, "dueDateTime.dateTime", "2030-05-04T00:00:00.0000000");
    has(t, "dueDateTime.timeZone", "UTC");
    json_object_put(t);
}

static void test_filters_and_escaping(void **state)
{
    (void)state;
    char *f = graph_json_event_filter(42);
    assert_string_equal(f, "singleValueExtendedProperties/Any(ep: ep/id eq 'String "
                           "{6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86} Name FollowupdContactLog' "
                           "and ep/value eq 'contactlog:42:appointment')");
    free(f);
    f = graph_json_task_filter(9);
    assert_string_equal(f, "linkedResources/any(r: r/externalId eq 'contactlog:9:task')");
    char *e = graph_url_escape(f, false);
    assert_string_equal(e, "linkedResources%2Fany%28r%3A%20r%2FexternalId%20eq%20%27"
                           "contactlog%3A9%3Atask%27%29");
    free(e);
    free(f);
    e = graph_url_escape("AAMk+a/b=c~d.e_f-g", false);
    assert_string_equal(e, "AAMk%2Ba%2Fb%3Dc~d.e_f-g");
    free(e);
    e = graph_url_escape("Ada.Lovelace+crm@example.org", true);
    assert_string_equal(e, "Ada.Lovelace%2Bcrm@example.org");
    free(e);
    e = graph_url_escape("a\r\nb\xc3\xa9", true);
    assert_string_equal(e, "a%0D%0Ab%C3%A9");
    free(e);
}

static void test_datetime_and_uuid(void **state)
{
    (void)state;
    char buf[40];
    graph_json_datetime(buf, sizeof buf, 0);
    assert_string_equal(buf, "1970-01-01T00:00:00");
    graph_json_datetime(buf, sizeof buf, INT64_C(1893456000));
    assert_string_equal(buf, "2030-01-01T00:00:00");
    unsigned char random[16];
    memset(random, 0xff, sizeof random);
    graph_json_uuid(buf, sizeof buf, random);
    assert_string_equal(buf, "ffffffff-ffff-4fff-bfff-ffffffffffff");
}

#define PARSE(text, ...) graph_json_parse_entity(text, strlen(text), __VA_ARGS__)

static void test_parse_entity(void **state)
{
    (void)state;
    char *id, *key, err[128];
    assert_int_equal(PARSE("{\"@odata.etag\":\"W/\\\"x\\\"\",\"id\":\"AAMk=\",\"changeKey\":"
                           "\"DwAA\",\"subject\":\"s\"}", &id, &key, err, sizeof err), 0);
    assert_string_equal(id, "AAMk=");
    assert_string_equal(key, "DwAA");
    free(id);
    free(key);
    assert_int_equal(PARSE("{\"id\":\"T1\"}", &id, &key, err, sizeof err), 0);
    assert_string_equal(id, "T1");
    assert_null(key);
    free(id);
    /* Hostile or broken answers fail cleanly. */
    assert_int_equal(PARSE("{\"subject\":\"no id\"}", &id, &key, err, sizeof err), -1);
    assert_non_null(strstr(err, "id"));
    assert_int_equal(PARSE("{\"id\":42}", &id, &key, err, sizeof err), -1);
    assert_int_equal(PARSE("<html>502</html>", &id, &key, err, sizeof err), -1);
    assert_non_null(strstr(err, "not JSON"));
    assert_int_equal(PARSE("[\"id\"]", &id, &key, err, sizeof err), -1);
    assert_int_equal(PARSE("{\"id\":\"x\"", &id, &key, err, sizeof err), -1);
    assert_int_equal(graph_json_parse_entity("", 0, &id, &key, err, sizeof err), -1);
    assert_null(id);
    /* Nesting deeper than the tokener allows is refused, not recursed into. */
    char deep[2000];
    memset(deep, '[', 1000);
    memset(deep + 1000, ']', 999);
    deep[1999] = '\0';
    assert_int_equal(PARSE(deep, &id, &key, err, sizeof err), -1);
}

static void test_parse_collection(void **state)
{
    (void)state;
    graph_id_list list;
    char err[128];
    const char *body = "{\"@odata.context\":\"x\",\"value\":[{\"id\":\"A\",\"changeKey\":\"k\"},"
                       "{\"noid\":1},\"junk\",{\"id\":\"B\"}]}";
    assert_int_equal(graph_json_parse_collection(body, strlen(body), &list, err, sizeof err), 0);
    assert_int_equal(list.n, 2);
    assert_string_equal(list.ids[0], "A");
    assert_string_equal(list.change_keys[0], "k");
    assert_string_equal(list.ids[1], "B");
    assert_null(list.change_keys[1]);
    graph_id_list_clear(&list);
    body = "{\"value\":[]}";
    assert_int_equal(graph_json_parse_collection(body, strlen(body), &list, err, sizeof err), 0);
    assert_int_equal(list.n, 0);
    graph_id_list_clear(&list);
    body = "{\"value\":{}}";
    assert_int_equal(graph_json_parse_collection(body, strlen(body), &list, err, sizeof err), -1);
}

static void test_parse_error(void **state)
{
    (void)state;
    char code[64], message[64];
    const char *body = "{\"error\":{\"code\":\"ErrorItemNotFound\",\"message\":\"The specified "
                       "object was not found\\nin the store.\",\"innerError\":{}}}";
    assert_int_equal(graph_json_parse_error(body, strlen(body), code, sizeof code, message,
                                            sizeof message), 0);
    assert_string_equal(code, "ErrorItemNotFound");
    assert_null(strchr(message, '\n'));   /* control characters never reach the logs */
    assert_int_equal(strncmp(message, "The specified object", 20), 0);
    body = "{\"value\":[]}";
    assert_int_equal(graph_json_parse_error(body, strlen(body), code, sizeof code, message,
                                            sizeof message), -1);
    assert_string_equal(code, "");
}

static void test_batch(void **state)
{
    (void)state;
    json_object *event = graph_json_event(&appointment);
    graph_batch_request requests[] = {
        {.id = "1", .method = "POST", .url = "/users/a%40x/events", .body = event},
        {.id = "2", .method = "GET", .url = "/users/b@x/events?$filter=x"},
    };
    size_t len;
    char *text = graph_json_batch(requests, 2, "IdType=\"ImmutableId\"", &len);
    assert_non_null(text);
    json_object *b = json_tokener_parse(text);
    free(text);
    has(b, "requests.0.id", "1");
    has(b, "requests.0.method", "POST");
    has(b, "requests.0.url", "/users/a%40x/events");
    has(b, "requests.0.headers.Content-Type", "application/json");
    has(b, "requests.0.headers.Prefer", "IdType=\"ImmutableId\"");
    has(b, "requests.0.body.singleValueExtendedProperties.0.value", "contactlog:42:appointment");
    has(b, "requests.1.method", "GET");
    json_object *member = json_object_array_get_idx(
        json_object_object_get(b, "requests"), 1), *unused;
    assert_false(json_object_object_get_ex(member, "body", &unused));
    json_object_put(b);
    json_object_put(event);

    const char *answer =
        "{\"responses\":[{\"id\":\"2\",\"status\":429,\"headers\":{\"retry-after\":\"7\"},"
        "\"body\":{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"slow down\"}}},"
        "{\"id\":\"1\",\"status\":201,\"headers\":{\"Content-Type\":\"application/json\"},"
        "\"body\":{\"id\":\"E1\",\"changeKey\":\"K1\"}},{\"id\":\"3\",\"status\":204},"
        "{\"status\":200},{\"id\":\"4\",\"status\":\"200\"}]}";
    graph_batch_response *r;
    size_t n;
    char err[128];
    assert_int_equal(graph_json_parse_batch(answer, strlen(answer), &r, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);   /* members without id or with a non-numeric status are dropped */
    assert_string_equal(r[0].id, "2");
    assert_int_equal(r[0].status, 429);
    assert_int_equal(r[0].retry_after_ms, 7000);
    char code[64], message[64];
    assert_int_equal(graph_json_parse_error(r[0].body, r[0].body_len, code, sizeof code,
                                            message, sizeof message), 0);
    assert_string_equal(code, "TooManyRequests");
    assert_string_equal(r[1].id, "1");
    assert_int_equal(r[1].retry_after_ms, -1);
    char *id, *key;
    assert_int_equal(graph_json_parse_entity(r[1].body, r[1].body_len, &id, &key, err,
                                             sizeof err), 0);
    assert_string_equal(id, "E1");
    free(id);
    free(key);
    assert_int_equal(r[2].status, 204);
    assert_string_equal(r[2].body, "");
    graph_batch_responses_free(r, n);
    assert_int_equal(graph_json_parse_batch("{}", 2, &r, &n, err, sizeof err), -1);
}

/* The one Retry-After parser (http/http_client.c), as the HTTP header of an answer and
 * a $batch member's header both use it: delay-seconds and all three HTTP-date forms. */
static void test_retry_after(void **state)
{
    (void)state;
    const time_t now = 1445412390;   /* Wed, 21 Oct 2015 07:26:30 GMT */

    assert_int_equal(http_retry_after_ms("120", now), 120000);
    assert_int_equal(http_retry_after_ms(" 7 \r\n", now), 7000);
    assert_int_equal(http_retry_after_ms("0", now), 0);
    assert_int_equal(http_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now), 90000);
    assert_int_equal(http_retry_after_ms("Wednesday, 21-Oct-15 07:28:00 GMT", now), 90000);
    assert_int_equal(http_retry_after_ms("Wed Oct 21 07:28:00 2015", now), 90000);
    /* Already past: go now. */
    assert_int_equal(http_retry_after_ms("Tue, 20 Oct 2015 07:28:00 GMT", now), 0);
    /* Not a hint: absent, malformed, negative, fractional, a week or more away. */
    assert_int_equal(http_retry_after_ms(NULL, now), -1);
    assert_int_equal(http_retry_after_ms("", now), -1);
    assert_int_equal(http_retry_after_ms("soon", now), -1);
    assert_int_equal(http_retry_after_ms("120abc", now), -1);
    assert_int_equal(http_retry_after_ms("-5", now), -1);
    assert_int_equal(http_retry_after_ms("1.5", now), -1);
    assert_int_equal(http_retry_after_ms("604800", now), -1);
    assert_int_equal(http_retry_after_ms("604799", now), INT64_C(604799000));
    assert_int_equal(http_retry_after_ms("99999999999999999999", now), -1);
    assert_int_equal(http_retry_after_ms("Thu, 29 Oct 2015 07:28:00 GMT", now), -1);
}

/* A throttled $batch member as Graph sends it, Retry-After as an HTTP date (and as
 * seconds, and as a bare number) — each read like the HTTP header would be. */
static void test_batch_retry_after_date(void **state)
{
    (void)state;
    char when[64], answer[2048];
    time_t now = time(NULL), later = now + 30;
    struct tm tm;
    assert_non_null(gmtime_r(&later, &tm));
    assert_true(strftime(when, sizeof when, "%a, %d %b %Y %H:%M:%S GMT", &tm) > 0);
    snprintf(answer, sizeof answer,
             "{\"responses\":["
             "{\"id\":\"1\",\"status\":429,\"headers\":{\"Retry-After\":\"%s\","
             "\"Cache-Control\":\"private\",\"Content-Type\":\"application/json\"},"
             "\"body\":{\"error\":{\"code\":\"ApplicationThrottled\",\"message\":\"Application "
             "is over its MailboxConcurrency limit.\",\"innerError\":{\"date\":"
             "\"2015-10-21T07:26:30\",\"request-id\":\"0b4f7c1e-3d2a-4e8b-9f61-7a5c2d9e1b30\","
             "\"client-request-id\":\"0b4f7c1e-3d2a-4e8b-9f61-7a5c2d9e1b30\"}}}},"
             "{\"id\":\"2\",\"status\":503,\"headers\":{\"Retry-After\":\"12\"},"
             "\"body\":{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"busy\"}}},"
             "{\"id\":\"3\",\"status\":429,\"headers\":{\"retry-after\":3},"
             "\"body\":{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"slow\"}}}]}",
             when);
    graph_batch_response *r;
    size_t n;
    char err[128];
    assert_int_equal(graph_json_parse_batch(answer, strlen(answer), &r, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(r[0].status, 429);
    /* A second may pass between building and parsing. */
    assert_in_range(r[0].retry_after_ms, 28000, 30000);
    assert_int_equal(http_retry_after_ms(when, now), 30000);
    assert_int_equal(r[1].retry_after_ms, 12000);
    assert_int_equal(r[2].retry_after_ms, 3000);
    graph_batch_responses_free(r, n);
}

static void test_timezones(void **state)
{
    (void)state;
    assert_string_equal(timezone_windows_id("Europe/Berlin"), "W. Europe Standard Time");
    assert_string_equal(timezone_windows_id("europe/berlin"), "W. Europe Standard Time");
    assert_string_equal(timezone_windows_id("America/New_York"), "Eastern Standard Time");
    assert_string_equal(timezone_windows_id("Asia/Kolkata"), "India Standard Time");
    assert_string_equal(timezone_windows_id("Asia/Calcutta"), "India Standard Time");
    assert_string_equal(timezone_windows_id("Etc/UTC"), "UTC");
    assert_string_equal(timezone_windows_id("UTC"), "UTC");
    /* Already a Windows id: passed through. */
    assert_string_equal(timezone_windows_id("W. Europe Standard Time"), "W. Europe Standard Time");
    assert_string_equal(timezone_windows_id("tokyo standard time"), "Tokyo Standard Time");
    assert_null(timezone_windows_id("Mars/Olympus_Mons"));
    assert_null(timezone_windows_id(""));
    assert_null(timezone_windows_id(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_body),
        cmocka_unit_test(test_task_body),
        cmocka_unit_test(test_filters_and_escaping),
        cmocka_unit_test(test_datetime_and_uuid),
        cmocka_unit_test(test_parse_entity),
        cmocka_unit_test(test_parse_collection),
        cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_batch_retry_after_date),
        cmocka_unit_test(test_timezones),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
