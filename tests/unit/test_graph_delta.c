/* test_graph_delta — Microsoft Graph delta queries (graph/graph_delta.c): the first
 * request of a round, the check of a stored link before our token follows it, and
 * delta pages of events and To Do tasks read into changes, hostile ones included. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/timezone.h"
#include "graph/graph_delta.h"

#define BASE "https://graph.microsoft.com/v1.0"
#define MAILBOX "ada@example.org"
#define LIST "AAMkAD%3D"   /* a list id as graph_url_escape spells it ("AAMkAD=") */

/* ---- helpers ------------------------------------------------------------------- */

static int parse(outlook_item_kind kind, const char *body, graph_delta_page *page)
{
    char err[256];
    return graph_delta_parse(kind, kind == OUTLOOK_TASK ? LIST : NULL, body, strlen(body), page,
                             err, sizeof err);
}

static void assert_change(const delivery_change *c, const char *id, const char *key,
                          const char *what, const char *value)
{
    assert_string_equal(c->item_id, id);
    if (key)
        assert_string_equal(c->change_key, key);
    else
        assert_null(c->change_key);
    assert_string_equal(c->what, what);
    if (value)
        assert_string_equal(c->new_value, value);
    else
        assert_null(c->new_value);
}

/* The link's path below BASE, or NULL with *error set. */
static char *link_path(const char *link, outlook_item_kind kind, int *error, char **list_id)
{
    char *path = NULL, *list = NULL;
    const char *why = NULL;
    *error = graph_delta_link_path(BASE, link, kind, MAILBOX, &path, &list, &why);
    assert_non_null(why);
    if (*error < 0) {
        assert_null(path);
        assert_null(list);
    }
    if (list_id)
        *list_id = list;
    else
        free(list);
    return path;
}

static void assert_refused(const char *link, outlook_item_kind kind, int expected)
{
    int error;
    char *path = link_path(link, kind, &error, NULL);
    if (error != expected)
        fail_msg("%s: %d, expected %d", link, error, expected);
    free(path);
}

/* ---- the first request ------------------------------------------------------------ */

/* The path of the window around now (the window the watcher judges deletions in). */
static char *calendar_path_at(const char *mailbox, int64_t now)
{
    int64_t from = 0, to = 0;
    assert_true(graph_delta_calendar_window(now, &from, &to));
    return graph_delta_calendar_path(mailbox, from, to);
}

static void test_calendar_path(void **state)
{
    (void)state;
    /* 2025-03-01T09:00:00Z: 30 days back, ten years on. */
    char *path = calendar_path_at("ada@example.org", INT64_C(1740819600));
    assert_non_null(path);
    assert_string_equal(path, "/users/ada@example.org/calendarView/delta?"
                              "startDateTime=2025-01-30T09:00:00Z&endDateTime=2035-03-01T09:00:00Z");
    free(path);
    /* 2024-02-29T12:00:00Z: 2034 has no 29 February. */
    path = calendar_path_at("x%2By@example.org", INT64_C(1709208000));
    assert_non_null(path);
    assert_string_equal(path, "/users/x%2By@example.org/calendarView/delta?"
                              "startDateTime=2024-01-30T12:00:00Z&endDateTime=2034-03-01T12:00:00Z");
    free(path);
    int64_t from = 0, to = 0;
    assert_true(graph_delta_calendar_window(INT64_C(1709208000), &from, &to));
    assert_int_equal(from, INT64_C(1706616000));   /* 2024-01-30T12:00:00Z */
    assert_int_equal(to, INT64_C(2024827200));     /* 2034-03-01T12:00:00Z */
}

/* ---- stored links ----------------------------------------------------------------- */

static void test_link_followed(void **state)
{
    (void)state;
    int error;
    char *list = NULL;
    char *path = link_path(BASE "/users/ada@example.org/calendarView/delta?$deltatoken=a.b_c-9",
                           OUTLOOK_APPOINTMENT, &error, &list);
    assert_int_equal(error, 0);
    assert_string_equal(path, "/users/ada@example.org/calendarView/delta?$deltatoken=a.b_c-9");
    assert_null(list);
    free(path);

    /* Host and scheme in another case, the default port spelt out, the user by object
     * id, %40 for '@', the Graph's own spelling of the path. */
    path = link_path("HTTPS://Graph.Microsoft.COM:443/v1.0/users/ADA%40example.org/"
                     "calendarview/delta?$skiptoken=x", OUTLOOK_APPOINTMENT, &error, NULL);
    assert_int_equal(error, 0);
    assert_string_equal(path, "/users/ADA%40example.org/calendarview/delta?$skiptoken=x");
    free(path);
    path = link_path(BASE "/users/6e0c9d1a-3b2f-4a5e-8c7d-112233445566/calendarView/delta"
                     "?$deltatoken=1", OUTLOOK_APPOINTMENT, &error, NULL);
    assert_int_equal(error, 0);
    free(path);

    /* A task list: the list id comes back as the back end spells it. */
    path = link_path(BASE "/users/ada@example.org/todo/lists/AAMkAD=/tasks/delta?$deltatoken=t",
                     OUTLOOK_TASK, &error, &list);
    assert_int_equal(error, 0);
    assert_string_equal(path, "/users/ada@example.org/todo/lists/AAMkAD=/tasks/delta"
                              "?$deltatoken=t");
    assert_string_equal(list, LIST);
    free(path);
    free(list);
    path = link_path(BASE "/users/ada@example.org/todo/lists/AAMkAD%3d/tasks/delta",
                     OUTLOOK_TASK, &error, &list);
    assert_int_equal(error, 0);
    assert_string_equal(list, LIST);
    free(path);
    free(list);

    /* A base URL without a path, and the simulator's. */
    char *why_path = NULL, *why_list = NULL;
    const char *why;
    assert_int_equal(graph_delta_link_path("http://127.0.0.1:8080", "http://127.0.0.1:8080/users/"
                                           "ada@example.org/calendarView/delta?$deltatoken=1",
                                           OUTLOOK_APPOINTMENT, MAILBOX, &why_path, &why_list,
                                           &why), 0);
    assert_string_equal(why_path, "/users/ada@example.org/calendarView/delta?$deltatoken=1");
    assert_null(why_list);
    free(why_path);
}

static void test_link_refused(void **state)
{
    (void)state;
    /* Not the configured Graph: our token must not go there. */
    assert_refused("https://evil.example/v1.0/users/ada@example.org/calendarView/delta?$deltatoken=1",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com.evil.example/v1.0/users/ada@example.org/"
                   "calendarView/delta", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com@evil.example/v1.0/users/ada@example.org/"
                   "calendarView/delta", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://user:pw@graph.microsoft.com/v1.0/users/ada@example.org/"
                   "calendarView/delta", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("http://graph.microsoft.com/v1.0/users/ada@example.org/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com:8443/v1.0/users/ada@example.org/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com/beta/users/ada@example.org/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com/v1.0evil/users/ada@example.org/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com\\@evil.example/v1.0/users/a/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com/v1.0/users/ada@example.org/calendarView/delta"
                   "?$deltatoken=1#frag", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com/v1.0/users/ada@example.org/calendarView/delta"
                   "?$deltatoken=1 2", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("https://graph.microsoft.com/v1.0/users/ada@example.org/calendarView/delta"
                   "?$deltatoken=%zz", OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("//graph.microsoft.com/v1.0/users/ada@example.org/calendarView/delta",
                   OUTLOOK_APPOINTMENT, -EPERM);
    assert_refused("/v1.0/users/ada@example.org/calendarView/delta", OUTLOOK_APPOINTMENT, -EPERM);

    /* Ours, but not a delta query of this kind and mailbox. */
    assert_refused(BASE "/users/ada@example.org/calendarView/delta?$deltatoken=1", OUTLOOK_TASK,
                   -EINVAL);
    assert_refused(BASE "/users/ada@example.org/todo/lists/L/tasks/delta", OUTLOOK_APPOINTMENT,
                   -EINVAL);
    assert_refused(BASE "/users/bob@example.org/calendarView/delta?$deltatoken=1",
                   OUTLOOK_APPOINTMENT, -EINVAL);
    assert_refused(BASE "/users/ada@example.org/events?$filter=x", OUTLOOK_APPOINTMENT, -EINVAL);
    assert_refused(BASE "/users/ada@example.org/calendarView/delta/x", OUTLOOK_APPOINTMENT,
                   -EINVAL);
    assert_refused(BASE "/users/../calendarView/delta", OUTLOOK_APPOINTMENT, -EINVAL);
    assert_refused(BASE "/users/%2e%2E/calendarView/delta", OUTLOOK_APPOINTMENT, -EINVAL);
    assert_refused(BASE "/users//calendarView/delta", OUTLOOK_APPOINTMENT, -EINVAL);
    assert_refused(BASE "/users/ada%00@example.org/calendarView/delta", OUTLOOK_APPOINTMENT,
                   -EINVAL);
    assert_refused(BASE "/users/ada@example.org/todo/lists/../tasks/delta", OUTLOOK_TASK,
                   -EINVAL);
    assert_refused(BASE "/users/ada@example.org/todo/lists/L/tasks/delta/../../x/tasks/delta",
                   OUTLOOK_TASK, -EINVAL);

    /* Too long, or none. */
    size_t n = GRAPH_DELTA_LINK_MAX + 64;
    char *huge = malloc(n + 1);
    assert_non_null(huge);
    int len = snprintf(huge, n + 1, "%s/users/ada@example.org/calendarView/delta?$deltatoken=",
                       BASE);
    memset(huge + len, 'a', n - (size_t)len);
    huge[n] = '\0';
    assert_refused(huge, OUTLOOK_APPOINTMENT, -EINVAL);
    free(huge);
    char *path = NULL, *list = NULL;
    const char *why;
    assert_int_equal(graph_delta_link_path(BASE, NULL, OUTLOOK_APPOINTMENT, MAILBOX, &path, &list,
                                           &why), -EINVAL);
}

/* ---- pages ------------------------------------------------------------------------- */

static void test_event_page(void **state)
{
    (void)state;
    graph_delta_page page;
    const char *body =
        "{\"@odata.context\":\"https://graph.microsoft.com/v1.0/$metadata#Collection(event)\","
        "\"value\":["
        "{\"@odata.type\":\"#microsoft.graph.event\",\"@odata.etag\":\"W/\\\"CK1\\\"\","
        " \"id\":\"AAMkE1=\",\"changeKey\":\"CK1\",\"subject\":\"Call back\","
        " \"start\":{\"dateTime\":\"2030-03-01T09:00:00.0000000\",\"timeZone\":\"UTC\"},"
        " \"end\":{\"dateTime\":\"2030-03-01T09:30:00.0000000\",\"timeZone\":\"UTC\"}},"
        "{\"@odata.type\":\"#microsoft.graph.event\",\"id\":\"AAMkE2\","
        " \"@removed\":{\"reason\":\"deleted\"}},"
        "{\"@odata.etag\":\"W/\\\"DwAAABYA\\\"\",\"id\":\"AAMkE3\","
        " \"start\":{\"dateTime\":\"2030-12-31T23:59:59Z\",\"timeZone\":\"Etc/UTC\"}}"
        "],\"@odata.nextLink\":\"" BASE "/users/ada@example.org/calendarView/delta?$skiptoken=s1\"}";
    assert_int_equal(parse(OUTLOOK_APPOINTMENT, body, &page), 0);
    assert_true(page.more);
    assert_string_equal(page.link, BASE "/users/ada@example.org/calendarView/delta?$skiptoken=s1");
    assert_int_equal(page.n_unreadable, 0);
    assert_int_equal(page.n_changes, 3);
    assert_change(&page.changes[0], "AAMkE1=", "CK1", "moved", "2030-03-01T09:00:00Z");
    assert_change(&page.changes[1], "AAMkE2", NULL, "deleted", NULL);
    assert_change(&page.changes[2], "AAMkE3", "DwAAABYA", "moved", "2030-12-31T23:59:59Z");
    graph_delta_page_clear(&page);

    /* The last page of a round; an empty one too. */
    assert_int_equal(parse(OUTLOOK_APPOINTMENT, "{\"value\":[],\"@odata.deltaLink\":\""
                           BASE "/users/ada@example.org/calendarView/delta?$deltatoken=d1\"}",
                           &page), 0);
    assert_false(page.more);
    assert_int_equal(page.n_changes, 0);
    assert_string_equal(page.link, BASE "/users/ada@example.org/calendarView/delta?$deltatoken=d1");
    graph_delta_page_clear(&page);
}

static void test_event_zones(void **state)
{
    (void)state;
    graph_delta_page page;
    int64_t day_start;
    int offset;
    const char *body =
        "{\"value\":["
        "{\"id\":\"E1\",\"changeKey\":\"K\",\"start\":{\"dateTime\":\"2030-01-15T10:00:00.0000000\","
        " \"timeZone\":\"W. Europe Standard Time\"}},"
        "{\"id\":\"E2\",\"changeKey\":\"K\",\"start\":{\"dateTime\":\"2030-07-15T10:00:00\","
        " \"timeZone\":\"Europe/Berlin\"}},"
        "{\"id\":\"E3\",\"changeKey\":\"K\",\"start\":{\"dateTime\":\"2030-01-15T10:00:00\","
        " \"timeZone\":\"Olympus Mons Standard Time\"}},"
        "{\"id\":\"E4\",\"changeKey\":\"K\",\"start\":{\"dateTime\":\"2030-01-15T10:00:00\","
        " \"timeZone\":\"tzone://Microsoft/Utc\"}}"
        "],\"@odata.deltaLink\":\"" BASE "/x\"}";
    assert_int_equal(parse(OUTLOOK_APPOINTMENT, body, &page), 0);
    /* The unknown zone is skipped and said why; the rest comes through. */
    assert_int_equal(page.n_unreadable, 1);
    assert_non_null(strstr(page.unreadable, "E3"));
    if (timezone_day_start("Europe/Berlin", 0, &day_start, &offset) == 0) {
        assert_int_equal(page.n_changes, 3);
        assert_change(&page.changes[0], "E1", "K", "moved", "2030-01-15T09:00:00Z");
        assert_change(&page.changes[1], "E2", "K", "moved", "2030-07-15T08:00:00Z");
        assert_change(&page.changes[2], "E4", "K", "moved", "2030-01-15T10:00:00Z");
    } else {
        print_message("tz database without Europe/Berlin: zone conversion not checked\n");
    }
    graph_delta_page_clear(&page);

    /* A day with a clock change cannot be placed from day-start offsets: skipped. */
    if (timezone_day_start("Europe/Berlin", 0, &day_start, &offset) == 0) {
        assert_int_equal(parse(OUTLOOK_APPOINTMENT, "{\"value\":[{\"id\":\"E5\",\"start\":"
                               "{\"dateTime\":\"2030-03-31T12:00:00\",\"timeZone\":"
                               "\"Europe/Berlin\"}}],\"@odata.deltaLink\":\"" BASE "/x\"}",
                               &page), 0);
        assert_int_equal(page.n_changes, 0);
        assert_int_equal(page.n_unreadable, 1);
        graph_delta_page_clear(&page);
    }
}

static void test_task_page(void **state)
{
    (void)state;
    graph_delta_page page;
    const char *body =
        "{\"value\":["
        /* Midnight in Berlin, written in UTC as Graph keeps it. */
        "{\"@odata.type\":\"#microsoft.graph.todoTask\",\"@odata.etag\":\"W/\\\"T1v2\\\"\","
        " \"id\":\"T1=\",\"title\":\"Ring\",\"status\":\"notStarted\","
        " \"dueDateTime\":{\"dateTime\":\"2030-05-03T22:00:00.0000000\",\"timeZone\":\"UTC\"}},"
        /* Midnight in its own zone, completed. */
        "{\"@odata.etag\":\"W/\\\"T2v7\\\"\",\"id\":\"T2\",\"status\":\"completed\","
        " \"dueDateTime\":{\"dateTime\":\"2030-05-04T00:00:00.0000000\","
        "  \"timeZone\":\"W. Europe Standard Time\"},"
        " \"completedDateTime\":{\"dateTime\":\"2030-05-02T08:00:00.0000000\",\"timeZone\":\"UTC\"}},"
        /* Midnight in Tokyo, written in UTC (15:00 the day before). */
        "{\"@odata.etag\":\"W/\\\"T3\\\"\",\"id\":\"T3\",\"status\":\"inProgress\","
        " \"dueDateTime\":{\"dateTime\":\"2030-05-03T15:00:00\",\"timeZone\":\"UTC\"}},"
        /* Midnight in New York, written in UTC (04:00 the same day). */
        "{\"@odata.etag\":\"W/\\\"T4\\\"\",\"id\":\"T4\","
        " \"dueDateTime\":{\"dateTime\":\"2030-05-04T04:00:00Z\",\"timeZone\":\"UTC\"}},"
        /* No due date, completed: one change. No due date, open: none. */
        "{\"@odata.etag\":\"W/\\\"T5\\\"\",\"id\":\"T5\",\"status\":\"Completed\","
        " \"dueDateTime\":null},"
        "{\"@odata.etag\":\"W/\\\"T6\\\"\",\"id\":\"T6\",\"status\":\"notStarted\"},"
        "{\"@odata.type\":\"#microsoft.graph.todoTask\",\"id\":\"T/7\","
        " \"@removed\":{\"reason\":\"deleted\"}}"
        "],\"@odata.deltaLink\":\"" BASE "/users/ada@example.org/todo/lists/" LIST
        "/tasks/delta?$deltatoken=d\"}";
    assert_int_equal(parse(OUTLOOK_TASK, body, &page), 0);
    assert_false(page.more);
    assert_int_equal(page.n_unreadable, 0);
    assert_int_equal(page.n_changes, 7);
    assert_change(&page.changes[0], LIST "/T1%3D", "T1v2", "moved", "2030-05-04");
    assert_change(&page.changes[1], LIST "/T2", "T2v7", "moved", "2030-05-04");
    assert_change(&page.changes[2], LIST "/T2", "T2v7", "completed", NULL);
    assert_change(&page.changes[3], LIST "/T3", "T3", "moved", "2030-05-04");
    assert_change(&page.changes[4], LIST "/T4", "T4", "moved", "2030-05-04");
    assert_change(&page.changes[5], LIST "/T5", "T5", "completed", NULL);
    assert_change(&page.changes[6], LIST "/T%2F7", NULL, "deleted", NULL);
    graph_delta_page_clear(&page);
}

static void test_unreadable_entries(void **state)
{
    (void)state;
    graph_delta_page page;
    const char *body =
        "{\"value\":["
        "42, \"x\", null,"
        "{\"subject\":\"no id\"},"
        "{\"id\":\"\",\"start\":{\"dateTime\":\"2030-01-01T00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"bad\\nid\",\"start\":{\"dateTime\":\"2030-01-01T00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E1\",\"start\":{\"dateTime\":\"2030-02-30T00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E2\",\"start\":{\"dateTime\":\"2030-01-01 00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E3\",\"start\":{\"dateTime\":\"2030-01-01T24:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E4\",\"start\":{\"dateTime\":\"2030-01-01T00:00:00.12345678\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E5\",\"start\":{\"dateTime\":\"2030-01-01T00:00:00\"}},"
        "{\"id\":\"E6\",\"start\":{\"dateTime\":20300101,\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E7\",\"start\":\"2030-01-01T00:00:00Z\"},"
        "{\"id\":\"E8\"},"
        "{\"id\":\"E9\",\"changeKey\":\"a\\u0001b\","
        " \"start\":{\"dateTime\":\"2030-01-01T00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"E10\",\"start\":{\"dateTime\":\"+030-01-01T00:00:00\",\"timeZone\":\"UTC\"}},"
        "{\"id\":\"OK\",\"start\":{\"dateTime\":\"2028-02-29T00:00:00\",\"timeZone\":\"UTC\"}}"
        "],\"@odata.deltaLink\":\"" BASE "/x\"}";
    assert_int_equal(parse(OUTLOOK_APPOINTMENT, body, &page), 0);
    assert_int_equal(page.n_changes, 1);
    assert_change(&page.changes[0], "OK", NULL, "moved", "2028-02-29T00:00:00Z");
    assert_int_equal(page.n_unreadable, 16);
    assert_non_null(strstr(page.unreadable, "entry 1"));
    graph_delta_page_clear(&page);
}

static void test_garbage(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "", "not json", "[]", "{}", "{\"value\":3,\"@odata.deltaLink\":\"" BASE "/x\"}",
        "{\"value\":[]}",
        "{\"value\":[],\"@odata.deltaLink\":42}",
        "{\"value\":[],\"@odata.deltaLink\":\"\"}",
        "{\"value\":[],\"@odata.nextLink\":\"https://x/y z\"}",
        "{\"value\":[],\"@odata.deltaLink\":\"" BASE "/x\"",
        "{\"value\":[{\"id\":\"a\"}],\"@odata.deltaLink\":\"" BASE "/x\"} trailing",
        "{\"error\":{\"code\":\"syncStateNotFound\",\"message\":\"gone\"}}",
    };
    graph_delta_page page;
    char err[256];
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        err[0] = '\0';
        if (graph_delta_parse(OUTLOOK_APPOINTMENT, NULL, bodies[i], strlen(bodies[i]), &page, err,
                              sizeof err) != -1)
            fail_msg("accepted: %s", bodies[i]);
        assert_true(err[0] != '\0');
        assert_int_equal(page.n_changes, 0);
        assert_null(page.changes);
    }

    /* Nested past the parser's depth. */
    char deep[512];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof deep, "{\"value\":[");
    for (int i = 0; i < 100; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    assert_int_equal(graph_delta_parse(OUTLOOK_APPOINTMENT, NULL, deep, strlen(deep), &page, err,
                                       sizeof err), -1);

    /* More entries than a page can hold. */
    size_t cap = 32 + (GRAPH_DELTA_ENTRIES_MAX + 1) * 2 + 64;
    char *many = malloc(cap), *p = many;
    assert_non_null(many);
    p += sprintf(p, "{\"value\":[");
    for (int i = 0; i <= GRAPH_DELTA_ENTRIES_MAX; i++)
        p += sprintf(p, i ? ",0" : "0");
    p += sprintf(p, "],\"@odata.deltaLink\":\"%s/x\"}", BASE);
    assert_true((size_t)(p - many) < cap);
    assert_int_equal(graph_delta_parse(OUTLOOK_APPOINTMENT, NULL, many, strlen(many), &page, err,
                                       sizeof err), -1);
    assert_non_null(strstr(err, "entries"));
    free(many);
}

static void test_verdicts(void **state)
{
    (void)state;
    graph_delta_page page;
    char err[256];
    const char *gone = "{\"error\":{\"code\":\"syncStateNotFound\",\"message\":\"expired\"}}";
    const char *fine = "{\"value\":[],\"@odata.deltaLink\":\"" BASE "/x\"}";

    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 410, gone, strlen(gone), &page,
                                      err, sizeof err), GRAPH_DELTA_GONE);
    assert_int_equal(graph_delta_read(OUTLOOK_TASK, LIST, 410, "", 0, &page, err, sizeof err),
                     GRAPH_DELTA_GONE);
    /* The To Do list went away; for the calendar, a 404 is the mailbox's. */
    assert_int_equal(graph_delta_read(OUTLOOK_TASK, LIST, 404, gone, strlen(gone), &page, err,
                                      sizeof err), GRAPH_DELTA_GONE);
    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 404, gone, strlen(gone), &page,
                                      err, sizeof err), GRAPH_DELTA_OTHER);
    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 429, "", 0, &page, err,
                                      sizeof err), GRAPH_DELTA_OTHER);
    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 401, "", 0, &page, err,
                                      sizeof err), GRAPH_DELTA_OTHER);
    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 200, "<html>", 6, &page, err,
                                      sizeof err), GRAPH_DELTA_UNUSABLE);
    assert_int_equal(graph_delta_read(OUTLOOK_APPOINTMENT, NULL, 200, fine, strlen(fine), &page,
                                      err, sizeof err), GRAPH_DELTA_PAGE);
    assert_false(page.more);
    graph_delta_page_clear(&page);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calendar_path),
        cmocka_unit_test(test_link_followed),
        cmocka_unit_test(test_link_refused),
        cmocka_unit_test(test_event_page),
        cmocka_unit_test(test_event_zones),
        cmocka_unit_test(test_task_page),
        cmocka_unit_test(test_unreadable_entries),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
