/* test_ews_request — every EWS request builder against Microsoft's schema, plus the
 * values Exchange acts on, read back with XPath by namespace URI (not by prefix).
 *
 * FOLLOWUPD_EWS_SCHEMA names a copy of ../shared/ews-schema (make check sets it);
 * without it the schema step is skipped and everything else still asserts.
 * EWS_REQUEST_DUMP_DIR, when set, receives every built request as NN-name.xml, for
 * a second opinion from ../shared/ews-schema/validate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "daemon/outlook_item.h"
#include "ews/ews_request.h"
#include "xsd_check.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"

#define HEADER "/soap:Envelope/soap:Header"
#define BODY "/soap:Envelope/soap:Body"
#define CREATE BODY "/m:CreateItem"
#define CAL CREATE "/m:Items/t:CalendarItem"
#define TASK CREATE "/m:Items/t:Task"
#define UPDATE BODY "/m:UpdateItem"
#define CHANGE UPDATE "/m:ItemChanges/t:ItemChange"
#define SET CHANGE "/t:Updates/t:SetItemField"
#define DELETE BODY "/m:DeleteItem"
#define FIND BODY "/m:FindItem"
#define GETFOLDER BODY "/m:GetFolder"
#define IMPERSONATED HEADER "/t:ExchangeImpersonation/t:ConnectingSID/t:SmtpAddress"

/* 2025-03-01T09:00:00Z and 09:30. */
#define T_START INT64_C(1740819600)
#define T_END INT64_C(1740821400)

static const ews_request_options impersonating = {
    .server_version = "Exchange2013_SP1",
    .mailbox = "user@example.com",
    .impersonation = true,
};

static const ews_request_options delegating = {
    .server_version = "Exchange2016",
    .mailbox = "delegate.target@example.com",
    .impersonation = false,
};

static const outlook_item_ref ref_with_key = { "AAMkADk0=", "DwAAABYA" };
static const outlook_item_ref ref_without_key = { "AAMkADk1=", NULL };

static outlook_item appointment(int64_t log_id)
{
    outlook_item item = {
        .kind = OUTLOOK_APPOINTMENT,
        .log_id = log_id,
        .subject = "Call back Mrs Example",
        .body_html = "<p>Call back <b>Mrs Example</b></p>"
                     "<p><a href=\"https://crm.example.org/contact-logs/42\">Open</a></p>",
        .start = T_START,
        .end = T_END,
        .reminder_minutes = 15,
        .importance = OUTLOOK_IMPORTANCE_HIGH,
        .task_completed = false,
        .time_zone = NULL,
    };
    return item;
}

static outlook_item task(int64_t log_id)
{
    outlook_item item = appointment(log_id);
    item.kind = OUTLOOK_TASK;
    item.importance = OUTLOOK_IMPORTANCE_LOW;
    item.end = 0;
    item.reminder_minutes = 0;
    return item;
}

/* ---- helpers ----------------------------------------------------------------- */

typedef struct built {
    char *xml;
    size_t len;
    xmlDocPtr doc;
} built;

static void dump_request(const built *b)
{
    static int counter;
    const char *dir = getenv("EWS_REQUEST_DUMP_DIR");
    char path[4096];

    if (dir == NULL || dir[0] == '\0')
        return;
    snprintf(path, sizeof path, "%s/%02d-request.xml", dir, ++counter);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(b->xml, 1, b->len, f), b->len);
    assert_int_equal(fclose(f), 0);
}

/* The request exists, is NUL-terminated at len, validates, and is parsed for XPath. */
static void check_built(built *b)
{
    char err[1024];

    if (b->xml == NULL)
        fail_msg("builder returned NULL");
    assert_true(b->len > 0);
    assert_int_equal(strlen(b->xml), b->len);
    dump_request(b);
    if (xsd_check_validate(b->xml, b->len, err, sizeof err) != 0)
        fail_msg("request does not validate: %s\n%.2000s", err, b->xml);
    b->doc = xmlReadMemory(b->xml, (int)b->len, "request.xml", NULL, XML_PARSE_NONET);
    assert_non_null(b->doc);
    /* soap/t/m prefixes, declared once on the envelope, as in the schema examples. */
    assert_non_null(strstr(b->xml, "<soap:Envelope xmlns:soap=\"" NS_SOAP "\" xmlns:t=\""
                                    NS_TYPES "\" xmlns:m=\"" NS_MESSAGES "\">"));
}

static void built_free(built *b)
{
    xmlFreeDoc(b->doc);
    free(b->xml);
    b->doc = NULL;
    b->xml = NULL;
}

static xmlXPathObjectPtr evaluate(xmlDocPtr doc, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    assert_non_null(ctx);
    assert_int_equal(xmlXPathRegisterNs(ctx, BAD_CAST "soap", BAD_CAST NS_SOAP), 0);
    assert_int_equal(xmlXPathRegisterNs(ctx, BAD_CAST "t", BAD_CAST NS_TYPES), 0);
    assert_int_equal(xmlXPathRegisterNs(ctx, BAD_CAST "m", BAD_CAST NS_MESSAGES), 0);
    xmlXPathObjectPtr obj = xmlXPathEvalExpression(BAD_CAST expr, ctx);
    xmlXPathFreeContext(ctx);
    if (obj == NULL)
        fail_msg("XPath does not evaluate: %s", expr);
    return obj;
}

/* String value of expr (first node of a node set), malloc'd. */
static char *xpath_string(xmlDocPtr doc, const char *expr)
{
    xmlXPathObjectPtr obj = evaluate(doc, expr);
    xmlChar *value = xmlXPathCastToString(obj);
    xmlXPathFreeObject(obj);
    assert_non_null(value);
    char *out = strdup((const char *)value);
    xmlFree(value);
    assert_non_null(out);
    return out;
}

static int xpath_count(xmlDocPtr doc, const char *path)
{
    xmlXPathObjectPtr obj = evaluate(doc, path);
    int n = (obj->type == XPATH_NODESET && obj->nodesetval != NULL) ? obj->nodesetval->nodeNr : -1;
    xmlXPathFreeObject(obj);
    return n;
}

static void check_xpath(xmlDocPtr doc, const char *expr, const char *expected)
{
    char *value = xpath_string(doc, expr);
    if (strcmp(value, expected) != 0) {
        /* Long values (the 1 MB body) are cut in the message, not in the comparison. */
        fail_msg("%s: got \"%.200s\" (%zu bytes), expected \"%.200s\" (%zu bytes)", expr,
                 value, strlen(value), expected, strlen(expected));
    }
    free(value);
}

static void check_count(xmlDocPtr doc, const char *path, int expected)
{
    int n = xpath_count(doc, path);
    if (n != expected)
        fail_msg("%s: %d nodes, expected %d", path, n, expected);
}

/* Header as opt says: version always; impersonation header xor t:Mailbox in the
 * folder id. Requests without a folder (folder_id_path NULL: the item id names the
 * mailbox) carry no t:Mailbox at all. */
static void check_addressing(xmlDocPtr doc, const ews_request_options *opt,
                             const char *folder_id_path)
{
    char path[512];

    check_xpath(doc, HEADER "/t:RequestServerVersion/@Version", opt->server_version);
    /* A task's TimeZoneContext comes on top (check_due_zone). */
    check_count(doc, HEADER "/*[not(self::t:TimeZoneContext)]", opt->impersonation ? 2 : 1);
    check_count(doc, HEADER "/*[1][self::t:RequestServerVersion]", 1);
    if (opt->impersonation) {
        check_xpath(doc, IMPERSONATED, opt->mailbox);
        /* SPEC section 4: SmtpAddress (any of the mailbox's addresses), the only child. */
        check_count(doc, HEADER "/t:ExchangeImpersonation/t:ConnectingSID/*", 1);
        check_count(doc, "//t:PrimarySmtpAddress", 0);
        check_count(doc, "//t:Mailbox", 0);
    } else {
        check_count(doc, HEADER "/t:ExchangeImpersonation", 0);
        if (folder_id_path == NULL) {
            check_count(doc, "//t:Mailbox", 0);
            return;
        }
        snprintf(path, sizeof path, "%s/t:Mailbox/t:EmailAddress", folder_id_path);
        check_xpath(doc, path, opt->mailbox);
        check_count(doc, path, 1);
        check_count(doc, "//t:Mailbox", 1);
    }
}

/* The TimeZoneContext a task's due date is read in: zone, or none (UTC). Last in the
 * header, as the EWS Managed API writes it. */
static void check_due_zone(xmlDocPtr doc, const char *zone)
{
    if (zone == NULL) {
        check_count(doc, "//t:TimeZoneContext", 0);
        return;
    }
    check_count(doc, HEADER "/t:TimeZoneContext", 1);
    check_count(doc, HEADER "/*[last()][self::t:TimeZoneContext]", 1);
    check_count(doc, HEADER "/t:TimeZoneContext/*", 1);
    check_xpath(doc, HEADER "/t:TimeZoneContext/t:TimeZoneDefinition/@Id", zone);
    check_count(doc, HEADER "/t:TimeZoneContext/t:TimeZoneDefinition/*", 0);
}

static void check_naming_uri(xmlDocPtr doc, const char *uri_path)
{
    char path[512];

    snprintf(path, sizeof path, "%s/@PropertySetId", uri_path);
    check_xpath(doc, path, OUTLOOK_TAG_PROPERTY_SET_ID);
    snprintf(path, sizeof path, "%s/@PropertyName", uri_path);
    check_xpath(doc, path, OUTLOOK_TAG_PROPERTY_NAME);
    snprintf(path, sizeof path, "%s/@PropertyType", uri_path);
    check_xpath(doc, path, "String");
}

/* ---- outlook_item ----------------------------------------------------------------- */

static void test_item_tag(void **state)
{
    char buf[64];

    (void)state;
    assert_int_equal(outlook_item_tag(buf, sizeof buf, 42, OUTLOOK_APPOINTMENT), 25);
    assert_string_equal(buf, "contactlog:42:appointment");
    assert_int_equal(outlook_item_tag(buf, sizeof buf, INT64_MAX, OUTLOOK_TASK), 35);
    assert_string_equal(buf, "contactlog:9223372036854775807:task");
    /* snprintf semantics: the full length even when cut. */
    assert_int_equal(outlook_item_tag(buf, 8, 42, OUTLOOK_TASK), 18);
    assert_string_equal(buf, "contact");
    assert_true(outlook_item_tag(buf, sizeof buf, 42, (outlook_item_kind)7) < 0);
    assert_string_equal(buf, "");
    assert_string_equal(outlook_item_kind_name(OUTLOOK_APPOINTMENT), "appointment");
    assert_string_equal(outlook_item_kind_name(OUTLOOK_TASK), "task");
}

/* ---- CreateItem --------------------------------------------------------------- */

static void test_create_appointment_impersonated(void **state)
{
    outlook_item item = appointment(42);
    built b = { 0 };

    (void)state;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);

    check_addressing(b.doc, &impersonating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, CREATE "/@SendMeetingInvitations", "SendToNone");
    check_count(b.doc, CREATE "/@MessageDisposition", 0);
    check_xpath(b.doc, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId/@Id", "calendar");
    check_count(b.doc, CAL, 1);
    check_xpath(b.doc, CAL "/t:Subject", item.subject);
    check_xpath(b.doc, CAL "/t:Body", item.body_html);
    check_xpath(b.doc, CAL "/t:Body/@BodyType", "HTML");
    check_xpath(b.doc, CAL "/t:Importance", "High");
    check_xpath(b.doc, CAL "/t:ReminderIsSet", "true");
    check_xpath(b.doc, CAL "/t:ReminderMinutesBeforeStart", "15");
    check_naming_uri(b.doc, CAL "/t:ExtendedProperty/t:ExtendedFieldURI");
    check_xpath(b.doc, CAL "/t:ExtendedProperty/t:Value", "contactlog:42:appointment");
    check_xpath(b.doc, CAL "/t:Start", "2025-03-01T09:00:00Z");
    check_xpath(b.doc, CAL "/t:End", "2025-03-01T09:30:00Z");
    check_xpath(b.doc, CAL "/t:LegacyFreeBusyStatus", "Busy");
    check_count(b.doc, CAL "/t:StartTimeZone", 0);
    check_count(b.doc, CAL "/t:EndTimeZone", 0);
    /* Never a meeting: no attendees of any kind. */
    check_count(b.doc, "//t:RequiredAttendees | //t:OptionalAttendees | //t:Resources", 0);
    built_free(&b);
}

static void test_create_appointment_time_zone_delegate(void **state)
{
    outlook_item item = appointment(43);
    built b = { 0 };

    (void)state;
    item.time_zone = "W. Europe Standard Time";
    item.importance = OUTLOOK_IMPORTANCE_NORMAL;
    item.reminder_minutes = 0;
    b.xml = ews_request_create_items(&delegating, &item, 1, &b.len);
    check_built(&b);

    check_addressing(b.doc, &delegating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId/@Id", "calendar");
    check_xpath(b.doc, CREATE "/@SendMeetingInvitations", "SendToNone");
    check_xpath(b.doc, CAL "/t:Importance", "Normal");
    check_xpath(b.doc, CAL "/t:ReminderMinutesBeforeStart", "0");
    check_xpath(b.doc, CAL "/t:StartTimeZone/@Id", "W. Europe Standard Time");
    check_xpath(b.doc, CAL "/t:EndTimeZone/@Id", "W. Europe Standard Time");
    /* Times stay UTC instants; the zone only tells Outlook how to show them. */
    check_xpath(b.doc, CAL "/t:Start", "2025-03-01T09:00:00Z");
    /* The schema's position: after LegacyFreeBusyStatus, StartTimeZone before EndTimeZone. */
    check_count(b.doc, CAL "/t:LegacyFreeBusyStatus/following-sibling::*[1][self::t:StartTimeZone]", 1);
    check_count(b.doc, CAL "/t:StartTimeZone/following-sibling::*[1][self::t:EndTimeZone]", 1);
    check_xpath(b.doc, CAL "/t:ExtendedProperty/t:Value", "contactlog:43:appointment");
    built_free(&b);

    /* An empty zone name is no zone. */
    item.time_zone = "";
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_count(b.doc, CAL "/t:StartTimeZone", 0);
    built_free(&b);
}

static void test_create_task_impersonated(void **state)
{
    outlook_item item = task(7);
    built b = { 0 };

    (void)state;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);

    check_addressing(b.doc, &impersonating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, CREATE "/@MessageDisposition", "SaveOnly");
    check_count(b.doc, CREATE "/@SendMeetingInvitations", 0);
    check_xpath(b.doc, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId/@Id", "tasks");
    check_count(b.doc, TASK, 1);
    check_count(b.doc, CAL, 0);
    check_xpath(b.doc, TASK "/t:Subject", item.subject);
    check_xpath(b.doc, TASK "/t:Body", item.body_html);
    check_xpath(b.doc, TASK "/t:Body/@BodyType", "HTML");
    check_xpath(b.doc, TASK "/t:Importance", "Low");
    check_xpath(b.doc, TASK "/t:ReminderDueBy", "2025-03-01T09:00:00Z");
    check_xpath(b.doc, TASK "/t:ReminderIsSet", "true");
    check_naming_uri(b.doc, TASK "/t:ExtendedProperty/t:ExtendedFieldURI");
    check_xpath(b.doc, TASK "/t:ExtendedProperty/t:Value", "contactlog:7:task");
    /* No due day from the caller: the UTC date, at midnight, read in UTC. */
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00Z");
    check_due_zone(b.doc, NULL);
    check_xpath(b.doc, TASK "/t:Status", "NotStarted");
    check_count(b.doc, TASK "/t:ReminderMinutesBeforeStart | " TASK "/t:Start | " TASK "/t:End", 0);
    built_free(&b);
}

static void test_create_task_completed_delegate(void **state)
{
    outlook_item item = task(8);
    built b = { 0 };

    (void)state;
    item.task_completed = true;
    /* A zone without a due day taken in it is no context for the date. */
    item.time_zone = "W. Europe Standard Time";
    b.xml = ews_request_create_items(&delegating, &item, 1, &b.len);
    check_built(&b);
    check_addressing(b.doc, &delegating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId/@Id", "tasks");
    check_xpath(b.doc, TASK "/t:Status", "Completed");
    check_count(b.doc, "//t:StartTimeZone", 0);
    check_due_zone(b.doc, NULL);
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00Z");
    built_free(&b);
}

/* A task with a due day in the employee's zone (item_content computes it): SPEC
 * section 3. 2025-03-01 00:00 in Berlin (+01:00) is 2025-02-28T23:00:00Z. */
#define BERLIN_MARCH_1 INT64_C(1740783600)

static outlook_item berlin_task(int64_t log_id)
{
    outlook_item item = task(log_id);
    item.time_zone = "W. Europe Standard Time";
    item.has_due_day = true;
    item.due_day_start = BERLIN_MARCH_1;
    item.due_utc_offset = 3600;
    return item;
}

static void test_create_task_due_day_in_zone(void **state)
{
    outlook_item item = berlin_task(11);
    built b = { 0 };

    (void)state;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_addressing(b.doc, &impersonating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    /* The date at midnight with the zone's offset, read in the zone's context. */
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00+01:00");
    check_due_zone(b.doc, "W. Europe Standard Time");
    /* The reminder stays the follow-up's exact instant. */
    check_xpath(b.doc, TASK "/t:ReminderDueBy", "2025-03-01T09:00:00Z");
    /* Tasks have no StartTimeZone; the zone is in the header only. */
    check_count(b.doc, "//t:StartTimeZone | //t:EndTimeZone", 0);
    built_free(&b);

    /* West of Greenwich, half-hour zones, and the same through delegate access. */
    item.time_zone = "Pacific Standard Time";
    item.due_day_start = INT64_C(1740816000);       /* 2025-03-01T08:00:00Z */
    item.due_utc_offset = -8 * 3600;
    b.xml = ews_request_create_items(&delegating, &item, 1, &b.len);
    check_built(&b);
    check_addressing(b.doc, &delegating, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00-08:00");
    check_due_zone(b.doc, "Pacific Standard Time");
    built_free(&b);

    item.time_zone = "India Standard Time";
    item.due_day_start = INT64_C(1740767400);       /* 2025-02-28T18:30:00Z */
    item.due_utc_offset = 19800;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00+05:30");
    built_free(&b);

    /* Local mean time (before 1900) has offsets in seconds, xs:dateTime only minutes:
     * rounded down, so the instant written stays inside the day. */
    item.time_zone = "W. Europe Standard Time";
    item.due_day_start = INT64_C(1740787200) - 3208;   /* +00:53:28 */
    item.due_utc_offset = 3208;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00+00:53");
    built_free(&b);
    item.due_day_start = INT64_C(1740787200) + 1050;   /* -00:17:30 */
    item.due_utc_offset = -1050;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, TASK "/t:DueDate", "2025-03-01T00:00:00-00:18");
    built_free(&b);

    /* An offset xs:dateTime cannot write is refused, not sent wrong. */
    item.due_utc_offset = 15 * 3600;
    assert_null(ews_request_create_items(&impersonating, &item, 1, &b.len));
    item.due_utc_offset = 3600;
    item.time_zone = "bad\001zone";
    assert_null(ews_request_create_items(&impersonating, &item, 1, &b.len));

    /* Several tasks of one mailbox: one header, each its own date. */
    outlook_item tasks[2] = { berlin_task(12), berlin_task(13) };
    tasks[1].due_day_start += 86400;
    b.xml = ews_request_create_items(&impersonating, tasks, 2, &b.len);
    check_built(&b);
    check_due_zone(b.doc, "W. Europe Standard Time");
    check_xpath(b.doc, TASK "[1]/t:DueDate", "2025-03-01T00:00:00+01:00");
    check_xpath(b.doc, TASK "[2]/t:DueDate", "2025-03-02T00:00:00+01:00");
    built_free(&b);

    /* Appointments never carry the header, zone or not. */
    outlook_item appt = appointment(14);
    appt.time_zone = "W. Europe Standard Time";
    b.xml = ews_request_create_items(&impersonating, &appt, 1, &b.len);
    check_built(&b);
    check_due_zone(b.doc, NULL);
    built_free(&b);
}

/* SPEC section 4: ConnectingSID/SmtpAddress, so an alias in employee.email resolves. */
static void test_impersonation_by_any_address(void **state)
{
    static const ews_request_options alias = {
        .server_version = "Exchange2010_SP1",
        .mailbox = "ada.alias@sales.example.org",
        .impersonation = true,
    };
    outlook_item item = appointment(15);
    built b = { 0 };

    (void)state;
    b.xml = ews_request_create_items(&alias, &item, 1, &b.len);
    check_built(&b);
    check_addressing(b.doc, &alias, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId");
    check_xpath(b.doc, IMPERSONATED, "ada.alias@sales.example.org");
    built_free(&b);

    b.xml = ews_request_delete_item(&alias, OUTLOOK_TASK, &ref_with_key, &b.len);
    check_built(&b);
    check_addressing(b.doc, &alias, NULL);
    built_free(&b);
}

static void test_create_several_items(void **state)
{
    outlook_item items[3] = { appointment(100), appointment(101), appointment(102) };
    built b = { 0 };

    (void)state;
    items[1].subject = "second";
    items[2].start = T_START + 86400;
    items[2].end = T_END + 86400;
    b.xml = ews_request_create_items(&impersonating, items, 3, &b.len);
    check_built(&b);
    check_count(b.doc, CAL, 3);
    /* In the order given: Exchange answers one message per item, in the same order. */
    check_xpath(b.doc, CAL "[1]/t:ExtendedProperty/t:Value", "contactlog:100:appointment");
    check_xpath(b.doc, CAL "[2]/t:ExtendedProperty/t:Value", "contactlog:101:appointment");
    check_xpath(b.doc, CAL "[3]/t:ExtendedProperty/t:Value", "contactlog:102:appointment");
    check_xpath(b.doc, CAL "[2]/t:Subject", "second");
    check_xpath(b.doc, CAL "[3]/t:Start", "2025-03-02T09:00:00Z");
    check_count(b.doc, CREATE "/m:SavedItemFolderId", 1);
    built_free(&b);

    outlook_item tasks[2] = { task(200), task(201) };
    tasks[1].task_completed = true;
    b.xml = ews_request_create_items(&delegating, tasks, 2, &b.len);
    check_built(&b);
    check_count(b.doc, TASK, 2);
    check_xpath(b.doc, TASK "[1]/t:Status", "NotStarted");
    check_xpath(b.doc, TASK "[2]/t:Status", "Completed");
    check_xpath(b.doc, TASK "[2]/t:ExtendedProperty/t:Value", "contactlog:201:task");
    built_free(&b);
}

static void test_create_refuses_mixed_kinds_and_bad_arguments(void **state)
{
    outlook_item mixed[2] = { appointment(1), task(1) };
    outlook_item one = appointment(1);
    outlook_item bad;
    ews_request_options no_mailbox = impersonating;
    ews_request_options no_version = impersonating;
    size_t len = 12345;

    (void)state;
    assert_null(ews_request_create_items(&impersonating, mixed, 2, &len));
    mixed[0] = task(1);
    mixed[1] = appointment(1);
    assert_null(ews_request_create_items(&impersonating, mixed, 2, &len));
    assert_null(ews_request_create_items(&impersonating, &one, 0, &len));
    assert_null(ews_request_create_items(&impersonating, NULL, 1, &len));
    assert_null(ews_request_create_items(NULL, &one, 1, &len));
    assert_null(ews_request_create_items(&impersonating, &one, 1, NULL));
    no_mailbox.mailbox = "";
    assert_null(ews_request_create_items(&no_mailbox, &one, 1, &len));
    no_mailbox.mailbox = NULL;
    assert_null(ews_request_create_items(&no_mailbox, &one, 1, &len));
    no_version.server_version = NULL;
    assert_null(ews_request_create_items(&no_version, &one, 1, &len));

    bad = one;
    bad.kind = (outlook_item_kind)5;
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.importance = (outlook_importance)9;
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.reminder_minutes = -1;
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    /* Characters XML 1.0 forbids and broken UTF-8 cannot be sent at all. */
    bad = one;
    bad.subject = "bell \x07 here";
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.body_html = "truncated \xE2\x82";
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.body_html = "overlong \xC0\xAF slash";
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.subject = "surrogate \xED\xA0\x80";
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    bad = one;
    bad.time_zone = "zone\x01";
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    /* Year 10000 has no xs:dateTime form we could send. */
    bad = one;
    bad.end = INT64_C(253402300800);
    assert_null(ews_request_create_items(&impersonating, &bad, 1, &len));
    assert_int_equal(len, 12345);       /* untouched on failure */

    /* NULL subject and body are sent empty, not refused. */
    bad = one;
    bad.subject = NULL;
    bad.body_html = NULL;
    built b = { 0 };
    b.xml = ews_request_create_items(&impersonating, &bad, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, CAL "/t:Subject", "");
    check_count(b.doc, CAL "/t:Body", 1);
    built_free(&b);
}

/* ---- UpdateItem --------------------------------------------------------------- */

/* The FieldURIs of the SetItemFields, joined by spaces, in order. */
static char *updated_fields(xmlDocPtr doc)
{
    xmlXPathObjectPtr obj = evaluate(doc, SET "/t:FieldURI/@FieldURI");
    char *out = calloc(1, 1024);

    assert_non_null(out);
    assert_int_equal(obj->type, XPATH_NODESET);
    for (int i = 0; obj->nodesetval != NULL && i < obj->nodesetval->nodeNr; i++) {
        xmlChar *v = xmlNodeGetContent(obj->nodesetval->nodeTab[i]);
        if (i > 0)
            strcat(out, " ");
        strcat(out, (const char *)v);
        xmlFree(v);
    }
    xmlXPathFreeObject(obj);
    return out;
}

static void test_update_appointment(void **state)
{
    outlook_item item = appointment(42);
    built b = { 0 };
    char *fields;

    (void)state;
    item.start = T_START + 3600;
    item.end = T_END + 3600;
    item.subject = "moved";
    b.xml = ews_request_update_item(&impersonating, &ref_with_key, &item, &b.len);
    check_built(&b);

    check_addressing(b.doc, &impersonating, NULL);
    check_xpath(b.doc, UPDATE "/@ConflictResolution", "AlwaysOverwrite");
    check_xpath(b.doc, UPDATE "/@SendMeetingInvitationsOrCancellations", "SendToNone");
    check_xpath(b.doc, UPDATE "/@MessageDisposition", "SaveOnly");
    check_count(b.doc, CHANGE, 1);
    check_xpath(b.doc, CHANGE "/t:ItemId/@Id", "AAMkADk0=");
    check_xpath(b.doc, CHANGE "/t:ItemId/@ChangeKey", "DwAAABYA");
    fields = updated_fields(b.doc);
    assert_string_equal(fields, "item:Subject item:Body item:Importance item:ReminderIsSet "
                                "item:ReminderMinutesBeforeStart calendar:Start calendar:End "
                                "calendar:LegacyFreeBusyStatus");
    free(fields);
    /* Each SetItemField carries its one field inside a t:CalendarItem. */
    check_count(b.doc, SET, 8);
    check_count(b.doc, SET "/t:CalendarItem", 8);
    check_count(b.doc, SET "/t:CalendarItem/*", 8);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Subject']/t:CalendarItem/t:Subject", "moved");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Body']/t:CalendarItem/t:Body", item.body_html);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Body']/t:CalendarItem/t:Body/@BodyType", "HTML");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Importance']/t:CalendarItem/t:Importance", "High");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:ReminderMinutesBeforeStart']/t:CalendarItem/t:ReminderMinutesBeforeStart", "15");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='calendar:Start']/t:CalendarItem/t:Start", "2025-03-01T10:00:00Z");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='calendar:End']/t:CalendarItem/t:End", "2025-03-01T10:30:00Z");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='calendar:LegacyFreeBusyStatus']/t:CalendarItem/t:LegacyFreeBusyStatus", "Busy");
    /* The naming property never changes, so it is never sent again. */
    check_count(b.doc, "//t:ExtendedProperty | //t:ExtendedFieldURI", 0);
    check_count(b.doc, "//t:Mailbox | " UPDATE "/m:SavedItemFolderId", 0);
    built_free(&b);
}

static void test_update_appointment_time_zone_delegate(void **state)
{
    outlook_item item = appointment(42);
    built b = { 0 };
    char *fields;

    (void)state;
    item.time_zone = "Pacific Standard Time";
    b.xml = ews_request_update_item(&delegating, &ref_without_key, &item, &b.len);
    check_built(&b);
    check_addressing(b.doc, &delegating, NULL);
    check_xpath(b.doc, CHANGE "/t:ItemId/@Id", "AAMkADk1=");
    check_count(b.doc, CHANGE "/t:ItemId/@ChangeKey", 0);
    fields = updated_fields(b.doc);
    assert_string_equal(fields, "item:Subject item:Body item:Importance item:ReminderIsSet "
                                "item:ReminderMinutesBeforeStart calendar:StartTimeZone "
                                "calendar:EndTimeZone calendar:Start calendar:End "
                                "calendar:LegacyFreeBusyStatus");
    free(fields);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='calendar:StartTimeZone']/t:CalendarItem/t:StartTimeZone/@Id",
                "Pacific Standard Time");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='calendar:EndTimeZone']/t:CalendarItem/t:EndTimeZone/@Id",
                "Pacific Standard Time");
    built_free(&b);
}

static void test_update_task(void **state)
{
    outlook_item item = task(9);
    built b = { 0 };
    char *fields;

    (void)state;
    item.task_completed = true;
    b.xml = ews_request_update_item(&impersonating, &ref_with_key, &item, &b.len);
    check_built(&b);
    check_xpath(b.doc, IMPERSONATED, "user@example.com");
    check_xpath(b.doc, UPDATE "/@ConflictResolution", "AlwaysOverwrite");
    check_xpath(b.doc, UPDATE "/@MessageDisposition", "SaveOnly");
    check_count(b.doc, UPDATE "/@SendMeetingInvitationsOrCancellations", 0);
    fields = updated_fields(b.doc);
    assert_string_equal(fields, "item:Subject item:Body item:Importance item:ReminderDueBy "
                                "item:ReminderIsSet task:DueDate task:Status");
    free(fields);
    check_count(b.doc, SET "/t:Task", 7);
    check_count(b.doc, SET "/t:CalendarItem", 0);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:ReminderDueBy']/t:Task/t:ReminderDueBy", "2025-03-01T09:00:00Z");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='task:DueDate']/t:Task/t:DueDate", "2025-03-01T00:00:00Z");
    check_due_zone(b.doc, NULL);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='task:Status']/t:Task/t:Status", "Completed");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Importance']/t:Task/t:Importance", "Low");
    check_count(b.doc, "//t:ExtendedProperty", 0);
    built_free(&b);

    item.task_completed = false;
    b.xml = ews_request_update_item(&delegating, &ref_without_key, &item, &b.len);
    check_built(&b);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='task:Status']/t:Task/t:Status", "NotStarted");
    built_free(&b);

    /* With a due day in the employee's zone: the date and its context, as on create. */
    item = berlin_task(9);
    b.xml = ews_request_update_item(&impersonating, &ref_with_key, &item, &b.len);
    check_built(&b);
    check_addressing(b.doc, &impersonating, NULL);
    check_due_zone(b.doc, "W. Europe Standard Time");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='task:DueDate']/t:Task/t:DueDate",
                "2025-03-01T00:00:00+01:00");
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:ReminderDueBy']/t:Task/t:ReminderDueBy",
                "2025-03-01T09:00:00Z");
    built_free(&b);
}

static void test_update_refuses_bad_arguments(void **state)
{
    outlook_item item = appointment(1);
    outlook_item_ref no_id = { NULL, "ck" };
    outlook_item_ref empty_id = { "", NULL };
    size_t len;

    (void)state;
    assert_null(ews_request_update_item(&impersonating, NULL, &item, &len));
    assert_null(ews_request_update_item(&impersonating, &no_id, &item, &len));
    assert_null(ews_request_update_item(&impersonating, &empty_id, &item, &len));
    assert_null(ews_request_update_item(&impersonating, &ref_with_key, NULL, &len));
    assert_null(ews_request_update_item(NULL, &ref_with_key, &item, &len));
}

/* ---- DeleteItem --------------------------------------------------------------- */

static void check_delete(const ews_request_options *opt, outlook_item_kind kind,
                         const outlook_item_ref *ref)
{
    built b = { 0 };

    b.xml = ews_request_delete_item(opt, kind, ref, &b.len);
    check_built(&b);
    check_addressing(b.doc, opt, NULL);
    check_xpath(b.doc, DELETE "/@DeleteType", "MoveToDeletedItems");
    /* Each attribute is what Exchange demands for one kind and ignores for the other. */
    check_xpath(b.doc, DELETE "/@SendMeetingCancellations", "SendToNone");
    check_xpath(b.doc, DELETE "/@AffectedTaskOccurrences", "AllOccurrences");
    check_count(b.doc, DELETE "/m:ItemIds/t:ItemId", 1);
    check_xpath(b.doc, DELETE "/m:ItemIds/t:ItemId/@Id", ref->item_id);
    check_count(b.doc, DELETE "/m:ItemIds/t:ItemId/@ChangeKey", ref->change_key != NULL);
    if (ref->change_key != NULL)
        check_xpath(b.doc, DELETE "/m:ItemIds/t:ItemId/@ChangeKey", ref->change_key);
    built_free(&b);
}

static void test_delete(void **state)
{
    size_t len;

    (void)state;
    check_delete(&impersonating, OUTLOOK_APPOINTMENT, &ref_with_key);
    check_delete(&delegating, OUTLOOK_APPOINTMENT, &ref_without_key);
    check_delete(&impersonating, OUTLOOK_TASK, &ref_without_key);
    check_delete(&delegating, OUTLOOK_TASK, &ref_with_key);
    assert_null(ews_request_delete_item(&impersonating, (outlook_item_kind)3, &ref_with_key, &len));
    assert_null(ews_request_delete_item(&impersonating, OUTLOOK_TASK, NULL, &len));
}

/* ---- FindItem ----------------------------------------------------------------- */

static void check_find(const ews_request_options *opt, outlook_item_kind kind, int64_t log_id,
                       const char *tag, const char *folder)
{
    built b = { 0 };

    b.xml = ews_request_find_item(opt, kind, log_id, &b.len);
    check_built(&b);
    check_addressing(b.doc, opt, FIND "/m:ParentFolderIds/t:DistinguishedFolderId");
    check_xpath(b.doc, FIND "/@Traversal", "Shallow");
    check_xpath(b.doc, FIND "/m:ItemShape/t:BaseShape", "IdOnly");
    check_naming_uri(b.doc, FIND "/m:ItemShape/t:AdditionalProperties/t:ExtendedFieldURI");
    check_xpath(b.doc, FIND "/m:IndexedPageItemView/@MaxEntriesReturned", "10");
    check_xpath(b.doc, FIND "/m:IndexedPageItemView/@Offset", "0");
    check_xpath(b.doc, FIND "/m:IndexedPageItemView/@BasePoint", "Beginning");
    check_naming_uri(b.doc, FIND "/m:Restriction/t:IsEqualTo/t:ExtendedFieldURI");
    check_xpath(b.doc, FIND "/m:Restriction/t:IsEqualTo/t:FieldURIOrConstant/t:Constant/@Value", tag);
    check_count(b.doc, FIND "/m:ParentFolderIds/t:DistinguishedFolderId", 1);
    check_xpath(b.doc, FIND "/m:ParentFolderIds/t:DistinguishedFolderId/@Id", folder);
    built_free(&b);
}

static void test_find(void **state)
{
    size_t len;

    (void)state;
    check_find(&impersonating, OUTLOOK_APPOINTMENT, 42, "contactlog:42:appointment", "calendar");
    check_find(&delegating, OUTLOOK_APPOINTMENT, 43, "contactlog:43:appointment", "calendar");
    check_find(&impersonating, OUTLOOK_TASK, 44, "contactlog:44:task", "tasks");
    check_find(&delegating, OUTLOOK_TASK, INT64_MAX, "contactlog:9223372036854775807:task", "tasks");
    assert_null(ews_request_find_item(&impersonating, (outlook_item_kind)2, 1, &len));
}

/* ---- GetFolder ---------------------------------------------------------------- */

static void test_get_folder(void **state)
{
    const ews_request_options *options[] = { &impersonating, &delegating };
    size_t len;

    (void)state;
    for (size_t i = 0; i < 2; i++) {
        built b = { 0 };
        b.xml = ews_request_get_folder(options[i], &b.len);
        check_built(&b);
        check_addressing(b.doc, options[i], GETFOLDER "/m:FolderIds/t:DistinguishedFolderId");
        check_xpath(b.doc, GETFOLDER "/m:FolderShape/t:BaseShape", "IdOnly");
        check_count(b.doc, GETFOLDER "/m:FolderIds/t:DistinguishedFolderId", 1);
        check_xpath(b.doc, GETFOLDER "/m:FolderIds/t:DistinguishedFolderId/@Id", "calendar");
        built_free(&b);
    }
    assert_null(ews_request_get_folder(NULL, &len));
}

/* ---- hostile content ---------------------------------------------------------- */

#define HOSTILE_SUBJECT "<>&\"' ]]> <![CDATA[x]]> &amp; &#0; <!-- --> \xF0\x9F\x98\x80 " \
                        "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 " \
                        "\xE2\x80\xAE reversed \xE2\x80\xAC"
#define HOSTILE_BODY "<p onclick=\"x\">a &lt; b & c</p>]]><![CDATA[<script>alert('x')</script>]]>" \
                     "\r\n\ttab and CRLF </soap:Body></soap:Envelope><?pi x?>"

static void test_hostile_strings(void **state)
{
    ews_request_options odd = {
        .server_version = "Exchange2013_SP1",
        .mailbox = "o'brien+<test>&co\"@example.com",
        .impersonation = true,
    };
    outlook_item_ref ref = { "id\"<>&'", "key ]]> \xF0\x9F\x98\x80" };
    built b = { 0 };

    (void)state;
    for (int kind = OUTLOOK_APPOINTMENT; kind <= OUTLOOK_TASK; kind++) {
        outlook_item item = kind == OUTLOOK_TASK ? task(5) : appointment(5);
        item.subject = HOSTILE_SUBJECT;
        item.body_html = HOSTILE_BODY;
        item.time_zone = "Zone \"<&>' \xE2\x80\x8F";
        for (int impersonate = 0; impersonate <= 1; impersonate++) {
            odd.impersonation = impersonate;
            const char *item_path = kind == OUTLOOK_TASK ? TASK : CAL;
            char path[256];

            b.xml = ews_request_create_items(&odd, &item, 1, &b.len);
            check_built(&b);
            /* Exactly one envelope, one body, one item: nothing was injected. */
            check_count(b.doc, "//soap:Envelope | //soap:Body", 2);
            check_count(b.doc, "//t:CalendarItem | //t:Task", 1);
            check_count(b.doc, "//processing-instruction() | //comment()", 0);
            snprintf(path, sizeof path, "%s/t:Subject", item_path);
            check_xpath(b.doc, path, HOSTILE_SUBJECT);
            snprintf(path, sizeof path, "%s/t:Body", item_path);
            check_xpath(b.doc, path, HOSTILE_BODY);
            if (kind == OUTLOOK_APPOINTMENT)
                check_xpath(b.doc, CAL "/t:StartTimeZone/@Id", item.time_zone);
            if (impersonate)
                check_xpath(b.doc, IMPERSONATED, odd.mailbox);
            else
                check_xpath(b.doc, CREATE "/m:SavedItemFolderId/t:DistinguishedFolderId/t:Mailbox/t:EmailAddress",
                            odd.mailbox);
            built_free(&b);

            b.xml = ews_request_update_item(&odd, &ref, &item, &b.len);
            check_built(&b);
            check_xpath(b.doc, CHANGE "/t:ItemId/@Id", ref.item_id);
            check_xpath(b.doc, CHANGE "/t:ItemId/@ChangeKey", ref.change_key);
            check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Subject']/*/t:Subject", HOSTILE_SUBJECT);
            built_free(&b);

            b.xml = ews_request_delete_item(&odd, (outlook_item_kind)kind, &ref, &b.len);
            check_built(&b);
            check_xpath(b.doc, DELETE "/m:ItemIds/t:ItemId/@Id", ref.item_id);
            built_free(&b);

            b.xml = ews_request_find_item(&odd, (outlook_item_kind)kind, 5, &b.len);
            check_built(&b);
            built_free(&b);

            b.xml = ews_request_get_folder(&odd, &b.len);
            check_built(&b);
            built_free(&b);
        }
    }
}

static void test_one_megabyte_body(void **state)
{
    static const char chunk[] = "<p>Line with &amp; and \xF0\x9F\x98\x80 and ]]> &</p>\n";
    size_t chunk_len = sizeof chunk - 1;
    size_t total = 1024 * 1024;
    char *body = malloc(total + chunk_len + 1);
    size_t used = 0;
    outlook_item item = appointment(77);
    built b = { 0 };

    (void)state;
    assert_non_null(body);
    while (used < total) {
        memcpy(body + used, chunk, chunk_len);
        used += chunk_len;
    }
    body[used] = '\0';
    item.body_html = body;

    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    assert_true(b.len > used);
    check_xpath(b.doc, CAL "/t:Body", body);
    built_free(&b);

    item = task(77);
    item.body_html = body;
    b.xml = ews_request_update_item(&delegating, &ref_with_key, &item, &b.len);
    check_built(&b);
    check_xpath(b.doc, SET "[t:FieldURI/@FieldURI='item:Body']/t:Task/t:Body", body);
    built_free(&b);
    free(body);
}

static void test_extreme_times(void **state)
{
    outlook_item item = appointment(1);
    built b = { 0 };

    (void)state;
    item.start = 0;
    item.end = INT64_C(253402300799);   /* 9999-12-31T23:59:59Z, the last one we can write */
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, CAL "/t:Start", "1970-01-01T00:00:00Z");
    check_xpath(b.doc, CAL "/t:End", "9999-12-31T23:59:59Z");
    built_free(&b);

    item.start = INT64_C(2147483648);   /* past 2038 */
    item.end = item.start + 1;
    b.xml = ews_request_create_items(&impersonating, &item, 1, &b.len);
    check_built(&b);
    check_xpath(b.doc, CAL "/t:Start", "2038-01-19T03:14:08Z");
    built_free(&b);
}

/* Replaces the first occurrence of from by to (same length) in a copy of xml. */
static char *mutated(const char *xml, const char *from, const char *to)
{
    char *copy = strdup(xml);
    assert_non_null(copy);
    assert_int_equal(strlen(from), strlen(to));
    char *at = strstr(copy, from);
    assert_non_null(at);
    memcpy(at, to, strlen(to));
    return copy;
}

/* The checker itself must be able to say no, or every "validates" above is hollow. */
static void test_validator_rejects_broken_requests(void **state)
{
    outlook_item item = appointment(1);
    char err[512];
    size_t len;
    char *xml, *bad;

    (void)state;
    assert_int_not_equal(xsd_check_validate("<a>", 3, err, sizeof err), 0);
    assert_non_null(strstr(err, "not well-formed"));

    xml = ews_request_create_items(&impersonating, &item, 1, &len);
    assert_non_null(xml);
    assert_int_equal(xsd_check_validate(xml, len, err, sizeof err), 0);
    if (!xsd_check_enabled()) {
        free(xml);
        skip();
    }
    /* An enumeration misspelt. */
    bad = mutated(xml, ">Busy<", ">Bsy!<");
    assert_int_not_equal(xsd_check_validate(bad, len, err, sizeof err), 0);
    assert_non_null(strstr(err, "LegacyFreeBusyStatus"));
    free(bad);
    /* Elements out of the schema's order: End before Start. */
    static const char start_then_end[] = "<t:Start>2025-03-01T09:00:00Z</t:Start>"
                                         "<t:End>2025-03-01T09:30:00Z</t:End>";
    static const char end_then_start[] = "<t:End>2025-03-01T09:30:00Z</t:End>"
                                         "<t:Start>2025-03-01T09:00:00Z</t:Start>";
    bad = mutated(xml, start_then_end, end_then_start);
    assert_int_not_equal(xsd_check_validate(bad, len, err, sizeof err), 0);
    assert_non_null(strstr(err, "Start"));
    free(bad);
    /* The types namespace misspelt. */
    bad = mutated(xml, "services/2006/types", "services/2006/typez");
    assert_int_not_equal(xsd_check_validate(bad, len, err, sizeof err), 0);
    free(bad);
    free(xml);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_tag),
        cmocka_unit_test(test_create_appointment_impersonated),
        cmocka_unit_test(test_create_appointment_time_zone_delegate),
        cmocka_unit_test(test_create_task_impersonated),
        cmocka_unit_test(test_create_task_completed_delegate),
        cmocka_unit_test(test_create_task_due_day_in_zone),
        cmocka_unit_test(test_impersonation_by_any_address),
        cmocka_unit_test(test_create_several_items),
        cmocka_unit_test(test_create_refuses_mixed_kinds_and_bad_arguments),
        cmocka_unit_test(test_update_appointment),
        cmocka_unit_test(test_update_appointment_time_zone_delegate),
        cmocka_unit_test(test_update_task),
        cmocka_unit_test(test_update_refuses_bad_arguments),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_get_folder),
        cmocka_unit_test(test_hostile_strings),
        cmocka_unit_test(test_one_megabyte_body),
        cmocka_unit_test(test_extreme_times),
        cmocka_unit_test(test_validator_rejects_broken_requests),
    };
    return cmocka_run_group_tests(tests, xsd_check_group_setup, xsd_check_group_teardown);
}
