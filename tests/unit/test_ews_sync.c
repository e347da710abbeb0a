/* test_ews_sync — the SyncFolderItems request against Microsoft's schema, and its
 * answers (as Exchange and tests/sim/ews_sync.py send them) read into changes:
 * creates, updates and deletes of both kinds, items not ours, task dates in any
 * zone, paging, the errors that matter (ErrorInvalidSyncStateData, ErrorServerBusy)
 * and hostile or broken answers.
 *
 * FOLLOWUPD_EWS_SCHEMA names a copy of ../shared/ews-schema (make check sets it);
 * without it the schema step is skipped and everything else still asserts. */
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
#include "ews/ews_response.h"
#include "ews/ews_sync.h"
#include "xsd_check.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"

#define SYNC "/soap:Envelope/soap:Body/m:SyncFolderItems"
#define PROPS SYNC "/m:ItemShape/t:AdditionalProperties"
#define FOLDER SYNC "/m:SyncFolderId/t:DistinguishedFolderId"

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

static const char *const STATE = "H4sIAAAAAAAEAO29B2AcSZYlJi9tynt/SvVK1+B0oQiAYBMk2JBAEOzBiM3mkuzdk";

/* ---- helpers ----------------------------------------------------------------- */

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;

    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    return out;
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

static void check_xpath(xmlDocPtr doc, const char *expr, const char *expected)
{
    xmlXPathObjectPtr obj = evaluate(doc, expr);
    xmlChar *value = xmlXPathCastToString(obj);
    xmlXPathFreeObject(obj);
    assert_non_null(value);
    if (strcmp((const char *)value, expected) != 0)
        fail_msg("%s: got \"%s\", expected \"%s\"", expr, value, expected);
    xmlFree(value);
}

static void check_count(xmlDocPtr doc, const char *expr, int expected)
{
    xmlXPathObjectPtr obj = evaluate(doc, expr);
    int n = obj->nodesetval != NULL ? obj->nodesetval->nodeNr : 0;
    xmlXPathFreeObject(obj);
    if (n != expected)
        fail_msg("%s: %d nodes, expected %d", expr, n, expected);
}

/* Builds, validates against the schema and checks what every sync request says. */
static xmlDocPtr built_request(const ews_request_options *opt, outlook_item_kind kind,
                               const char *state)
{
    size_t len = 0;
    char err[1024];
    char *xml = ews_sync_request(opt, kind, state, &len);

    if (xml == NULL)
        fail_msg("builder returned NULL");
    assert_int_equal(strlen(xml), len);
    if (xsd_check_validate(xml, len, err, sizeof err) != 0)
        fail_msg("request does not validate: %s\n%.2000s", err, xml);
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, "request.xml", NULL, XML_PARSE_NONET);
    free(xml);
    assert_non_null(doc);

    check_xpath(doc, "/soap:Envelope/soap:Header/t:RequestServerVersion/@Version",
                opt->server_version);
    check_xpath(doc, SYNC "/m:ItemShape/t:BaseShape", "IdOnly");
    check_xpath(doc, SYNC "/m:MaxChangesReturned", "100");
    check_xpath(doc, FOLDER "/@Id", kind == OUTLOOK_TASK ? "tasks" : "calendar");
    check_count(doc, PROPS "/t:ExtendedFieldURI", 1);
    check_xpath(doc, PROPS "/t:ExtendedFieldURI/@PropertySetId", OUTLOOK_TAG_PROPERTY_SET_ID);
    check_xpath(doc, PROPS "/t:ExtendedFieldURI/@PropertyName", OUTLOOK_TAG_PROPERTY_NAME);
    check_xpath(doc, PROPS "/t:ExtendedFieldURI/@PropertyType", "String");
    if (kind == OUTLOOK_APPOINTMENT) {
        check_count(doc, PROPS "/t:FieldURI", 1);
        check_count(doc, PROPS "/t:FieldURI[@FieldURI='calendar:Start']", 1);
    } else {
        check_count(doc, PROPS "/t:FieldURI", 2);
        check_count(doc, PROPS "/t:FieldURI[@FieldURI='task:DueDate']", 1);
        check_count(doc, PROPS "/t:FieldURI[@FieldURI='task:Status']", 1);
    }
    if (opt->impersonation) {
        check_xpath(doc, "/soap:Envelope/soap:Header/t:ExchangeImpersonation/t:ConnectingSID/"
                         "t:SmtpAddress", opt->mailbox);
        check_count(doc, FOLDER "/t:Mailbox", 0);
    } else {
        check_count(doc, "/soap:Envelope/soap:Header/t:ExchangeImpersonation", 0);
        check_xpath(doc, FOLDER "/t:Mailbox/t:EmailAddress", opt->mailbox);
    }
    if (state != NULL)
        check_xpath(doc, SYNC "/m:SyncState", state);
    else
        check_count(doc, SYNC "/m:SyncState", 0);
    return doc;
}

#define ENVELOPE_OPEN \
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>" \
    "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Header><h:ServerVersionInfo " \
    "xmlns:h=\"" NS_TYPES "\" MajorVersion=\"15\" MinorVersion=\"1\"/></s:Header><s:Body>" \
    "<m:SyncFolderItemsResponse xmlns:m=\"" NS_MESSAGES "\" xmlns:t=\"" NS_TYPES "\">" \
    "<m:ResponseMessages>"
#define ENVELOPE_CLOSE "</m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"

/* A successful answer; last NULL leaves IncludesLastItemInRange out. */
static char *success(const char *state, const char *last, const char *changes)
{
    char *last_element = last ? format("<m:IncludesLastItemInRange>%s"
                                       "</m:IncludesLastItemInRange>", last)
                              : format("%s", "");
    char *out = format(ENVELOPE_OPEN "<m:SyncFolderItemsResponseMessage ResponseClass=\"Success\">"
                       "<m:ResponseCode>NoError</m:ResponseCode><m:SyncState>%s</m:SyncState>"
                       "%s<m:Changes>%s</m:Changes></m:SyncFolderItemsResponseMessage>"
                       ENVELOPE_CLOSE, state, last_element, changes);
    free(last_element);
    return out;
}

static char *error_answer(const char *code, const char *extra)
{
    return format(ENVELOPE_OPEN "<m:SyncFolderItemsResponseMessage ResponseClass=\"Error\">"
                  "<m:MessageText>Something about %s.</m:MessageText>"
                  "<m:ResponseCode>%s</m:ResponseCode><m:DescriptiveLinkKey>0"
                  "</m:DescriptiveLinkKey>%s</m:SyncFolderItemsResponseMessage>" ENVELOPE_CLOSE,
                  code, code, extra);
}

static char *tag(const char *value)
{
    return format("<t:ExtendedProperty><t:ExtendedFieldURI PropertySetId=\"%s\" "
                  "PropertyName=\"%s\" PropertyType=\"String\"/><t:Value>%s</t:Value>"
                  "</t:ExtendedProperty>", OUTLOOK_TAG_PROPERTY_SET_ID,
                  OUTLOOK_TAG_PROPERTY_NAME, value);
}

/* <t:Create|Update><t:CalendarItem> with our tag when tagged, Start when given. */
static char *appointment(const char *change, const char *id, bool tagged, const char *start)
{
    char *naming = tagged ? tag("contactlog:42:appointment") : format("%s", "");
    char *when = start ? format("<t:Start>%s</t:Start>", start) : format("%s", "");
    char *out = format("<t:%s><t:CalendarItem><t:ItemId Id=\"%s\" ChangeKey=\"CK-%s\"/>%s%s"
                       "</t:CalendarItem></t:%s>", change, id, id, naming, when, change);
    free(naming);
    free(when);
    return out;
}

static char *task(const char *change, const char *id, bool tagged, const char *due,
                  const char *status)
{
    char *naming = tagged ? tag("contactlog:43:task") : format("%s", "");
    char *date = due ? format("<t:DueDate>%s</t:DueDate>", due) : format("%s", "");
    char *state = status ? format("<t:Status>%s</t:Status>", status) : format("%s", "");
    char *out = format("<t:%s><t:Task><t:ItemId Id=\"%s\" ChangeKey=\"CK-%s\"/>%s%s%s"
                       "</t:Task></t:%s>", change, id, id, naming, date, state, change);
    free(naming);
    free(date);
    free(state);
    return out;
}

static char *deleted(const char *id)
{
    return format("<t:Delete><t:ItemId Id=\"%s\" ChangeKey=\"gone\"/></t:Delete>", id);
}

static ews_sync_page *parsed(const char *xml, outlook_item_kind kind)
{
    ews_sync_page *page = NULL;
    char err[256];

    if (ews_sync_parse(xml, strlen(xml), kind, &page, err, sizeof err) != 0)
        fail_msg("parse failed: %s\n%.1500s", err, xml);
    assert_non_null(page);
    return page;
}

/* The parse fails with a reason that contains expected. */
static void check_unusable(const char *xml, size_t len, outlook_item_kind kind,
                           const char *expected)
{
    ews_sync_page *page = (ews_sync_page *)&page;
    char err[256] = "";

    if (ews_sync_parse(xml, len, kind, &page, err, sizeof err) == 0)
        fail_msg("parse succeeded on %.300s", xml);
    assert_null(page);
    if (strstr(err, expected) == NULL)
        fail_msg("reason \"%s\" does not say \"%s\"", err, expected);
}

static void check_change(const ews_sync_page *page, size_t i, const char *what,
                         const char *id, const char *change_key, const char *new_value)
{
    assert_true(i < page->result.n_changes);
    const delivery_change *c = &page->result.changes[i];
    assert_string_equal(c->what, what);
    assert_string_equal(c->item_id, id);
    if (change_key)
        assert_string_equal(c->change_key, change_key);
    else
        assert_null(c->change_key);
    if (new_value)
        assert_string_equal(c->new_value, new_value);
    else
        assert_null(c->new_value);
}

static void check_ok(const ews_sync_page *page, size_t n_changes, bool more)
{
    assert_int_equal(page->result.result.outcome, DELIVERY_OK);
    assert_string_equal(page->result.result.code, "NoError");
    assert_false(page->result.position_invalid);
    assert_string_equal(page->result.new_position, STATE);
    assert_int_equal(page->result.more, more);
    assert_int_equal(page->result.n_changes, n_changes);
}

/* ---- the request ------------------------------------------------------------- */

static void test_request_both_kinds_with_and_without_state(void **state)
{
    (void)state;
    const ews_request_options *options[] = {&impersonating, &delegating};
    const outlook_item_kind kinds[] = {OUTLOOK_APPOINTMENT, OUTLOOK_TASK};
    const char *states[] = {NULL, STATE};

    for (size_t o = 0; o < 2; o++)
        for (size_t k = 0; k < 2; k++)
            for (size_t s = 0; s < 2; s++)
                xmlFreeDoc(built_request(options[o], kinds[k], states[s]));
}

static void test_request_refuses_bad_arguments(void **state)
{
    (void)state;
    size_t len = 0;
    char *huge = malloc(EWS_SYNC_STATE_MAX_BYTES + 2);
    assert_non_null(huge);
    memset(huge, 'A', EWS_SYNC_STATE_MAX_BYTES + 1);
    huge[EWS_SYNC_STATE_MAX_BYTES + 1] = '\0';
    ews_request_options no_mailbox = impersonating;
    no_mailbox.mailbox = "";
    ews_request_options forged = impersonating;
    forged.mailbox = "user@example.com\r\nX-Evil: 1";

    assert_null(ews_sync_request(NULL, OUTLOOK_TASK, NULL, &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, NULL, NULL));
    assert_null(ews_sync_request(&impersonating, (outlook_item_kind)7, NULL, &len));
    assert_null(ews_sync_request(&no_mailbox, OUTLOOK_TASK, NULL, &len));
    assert_null(ews_sync_request(&forged, OUTLOOK_TASK, NULL, &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, "", &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, "AAA BBB", &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, "AAA\001", &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, "Ab\xc3\xa9", &len));
    assert_null(ews_sync_request(&impersonating, OUTLOOK_TASK, huge, &len));
    huge[EWS_SYNC_STATE_MAX_BYTES] = '\0';      /* exactly the bound: accepted */
    assert_true(ews_sync_state_ok(huge));
    char *xml = ews_sync_request(&impersonating, OUTLOOK_TASK, huge, &len);
    assert_non_null(xml);
    free(xml);
    free(huge);
}

/* ---- answers: appointments --------------------------------------------------- */

static void test_parse_appointments(void **state)
{
    (void)state;
    char *created = appointment("Create", "A1", true, "2025-03-01T09:00:00Z");
    char *moved = appointment("Update", "A2", true, "2025-03-04T10:30:00+01:00");
    char *fraction = appointment("Update", "A3", true, "2025-03-05T08:15:00.123Z");
    char *theirs = appointment("Create", "B1", false, "2025-03-01T09:00:00Z");
    char *no_start = appointment("Update", "A4", true, NULL);
    const char *mail = "<t:Create><t:Message><t:ItemId Id=\"M1\" ChangeKey=\"x\"/></t:Message>"
                       "</t:Create>";
    const char *task_here = "<t:Create><t:Task><t:ItemId Id=\"T9\" ChangeKey=\"x\"/></t:Task>"
                            "</t:Create>";
    const char *read_flag = "<t:ReadFlagChange><t:ItemId Id=\"A1\"/><t:IsRead>true</t:IsRead>"
                            "</t:ReadFlagChange>";
    char *gone = deleted("A5");
    char *changes = format("%s%s%s%s%s%s%s%s%s", created, theirs, mail, moved, read_flag,
                           fraction, task_here, no_start, gone);
    char *xml = success(STATE, "true", changes);
    ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);

    check_ok(page, 4, false);
    check_change(page, 0, "moved", "A1", "CK-A1", "2025-03-01T09:00:00Z");
    check_change(page, 1, "moved", "A2", "CK-A2", "2025-03-04T09:30:00Z");
    check_change(page, 2, "moved", "A3", "CK-A3", "2025-03-05T08:15:00Z");
    check_change(page, 3, "deleted", "A5", NULL, NULL);

    ews_sync_page_free(page);
    free(xml);
    free(changes);
    free(created);
    free(moved);
    free(fraction);
    free(theirs);
    free(no_start);
    free(gone);
}

/* Exchange may echo the property set's GUID in upper case. */
static void test_parse_tag_guid_any_case(void **state)
{
    (void)state;
    char *changes = format("<t:Update><t:CalendarItem><t:ItemId Id=\"A1\" ChangeKey=\"k\"/>"
                           "<t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="
                           "\"6F1C3E2A-8B4D-4F5E-9A7C-2D3B1E0F4A86\" PropertyName=\"%s\" "
                           "PropertyType=\"String\"/><t:Value>contactlog:1:appointment"
                           "</t:Value></t:ExtendedProperty><t:Start>2025-01-01T00:00:00Z"
                           "</t:Start></t:CalendarItem></t:Update>"
                           /* another property of the same name in another set: not ours */
                           "<t:Update><t:CalendarItem><t:ItemId Id=\"A2\" ChangeKey=\"k\"/>"
                           "<t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="
                           "\"00000000-8b4d-4f5e-9a7c-2d3b1e0f4a86\" PropertyName=\"%s\" "
                           "PropertyType=\"String\"/><t:Value>contactlog:1:appointment"
                           "</t:Value></t:ExtendedProperty><t:Start>2025-01-01T00:00:00Z"
                           "</t:Start></t:CalendarItem></t:Update>",
                           OUTLOOK_TAG_PROPERTY_NAME, OUTLOOK_TAG_PROPERTY_NAME);
    char *xml = success(STATE, "true", changes);
    ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);

    check_ok(page, 1, false);
    check_change(page, 0, "moved", "A1", "k", "2025-01-01T00:00:00Z");
    ews_sync_page_free(page);
    free(xml);
    free(changes);
}

/* ---- answers: tasks ---------------------------------------------------------- */

static void test_parse_tasks(void **state)
{
    (void)state;
    /* 2025-06-10 as Berlin (summer, +02:00) and New York (-04:00) write their local
     * midnight, and as that Berlin midnight in UTC: all three are that day. */
    char *berlin = task("Create", "T1", true, "2025-06-10T00:00:00+02:00", "NotStarted");
    char *new_york = task("Update", "T2", true, "2025-06-10T00:00:00-04:00", "InProgress");
    char *utc_of_berlin = task("Update", "T3", true, "2025-06-09T22:00:00Z", NULL);
    char *utc_midnight = task("Update", "T4", true, "2025-06-10T00:00:00Z", "NotStarted");
    char *done = task("Update", "T5", true, "2025-06-12T00:00:00+02:00", "Completed");
    char *done_undated = task("Update", "T6", true, NULL, "Completed");
    char *undated = task("Update", "T7", true, NULL, "NotStarted");
    char *theirs = task("Create", "X1", false, "2025-06-10T00:00:00Z", "Completed");
    char *appointment_here = appointment("Create", "A1", true, "2025-03-01T09:00:00Z");
    char *gone = deleted("T8");
    char *changes = format("%s%s%s%s%s%s%s%s%s%s", berlin, new_york, utc_of_berlin,
                           utc_midnight, theirs, done, appointment_here, done_undated,
                           undated, gone);
    char *xml = success(STATE, "false", changes);
    ews_sync_page *page = parsed(xml, OUTLOOK_TASK);

    check_ok(page, 8, true);
    check_change(page, 0, "moved", "T1", "CK-T1", "2025-06-10");
    check_change(page, 1, "moved", "T2", "CK-T2", "2025-06-10");
    check_change(page, 2, "moved", "T3", "CK-T3", "2025-06-10");
    check_change(page, 3, "moved", "T4", "CK-T4", "2025-06-10");
    check_change(page, 4, "moved", "T5", "CK-T5", "2025-06-12");
    check_change(page, 5, "completed", "T5", "CK-T5", NULL);
    check_change(page, 6, "completed", "T6", "CK-T6", NULL);
    check_change(page, 7, "deleted", "T8", NULL, NULL);

    ews_sync_page_free(page);
    free(xml);
    free(changes);
    free(berlin);
    free(new_york);
    free(utc_of_berlin);
    free(utc_midnight);
    free(done);
    free(done_undated);
    free(undated);
    free(theirs);
    free(appointment_here);
    free(gone);
}

/* Zones beyond 12 hours (Kiritimati +14:00, New Zealand's summer +13:00) write a
 * midnight that rounding alone would put on the day before; Baker Island -12:00; and
 * a Berlin midnight as another zone (New York) writes it: rounded. */
static void test_parse_due_dates_far_zones(void **state)
{
    (void)state;
    char *line_islands = task("Update", "T1", true, "2025-01-01T00:00:00+14:00", NULL);
    char *auckland = task("Update", "T2", true, "2025-01-01T00:00:00+13:00", NULL);
    char *baker = task("Update", "T3", true, "2025-01-01T00:00:00-12:00", NULL);
    char *berlin_in_new_york = task("Update", "T4", true, "2025-06-09T18:00:00-04:00", NULL);
    char *almost_midnight = task("Update", "T5", true, "2025-06-10T00:00:00.5+02:00", NULL);
    char *changes = format("%s%s%s%s%s", line_islands, auckland, baker, berlin_in_new_york,
                           almost_midnight);
    char *xml = success(STATE, "true", changes);
    ews_sync_page *page = parsed(xml, OUTLOOK_TASK);

    check_ok(page, 5, false);
    check_change(page, 0, "moved", "T1", "CK-T1", "2025-01-01");
    check_change(page, 1, "moved", "T2", "CK-T2", "2025-01-01");
    check_change(page, 2, "moved", "T3", "CK-T3", "2025-01-01");
    check_change(page, 3, "moved", "T4", "CK-T4", "2025-06-10");
    check_change(page, 4, "moved", "T5", "CK-T5", "2025-06-10");
    ews_sync_page_free(page);
    free(xml);
    free(changes);
    free(line_islands);
    free(auckland);
    free(baker);
    free(berlin_in_new_york);
    free(almost_midnight);
}

/* ---- paging and positions ---------------------------------------------------- */

static void test_parse_paging(void **state)
{
    (void)state;
    const struct { const char *last; bool more; } cases[] = {
        {"true", false}, {"1", false}, {"false", true}, {"0", true}, {NULL, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *xml = success(STATE, cases[i].last, "");
        ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);
        check_ok(page, 0, cases[i].more);
        ews_sync_page_free(page);
        free(xml);
    }
    /* No m:Changes at all, and SyncState padded with white space. */
    char *bare = format(ENVELOPE_OPEN "<m:SyncFolderItemsResponseMessage ResponseClass="
                        "\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>"
                        "\n  %s \n</m:SyncState><m:IncludesLastItemInRange>true"
                        "</m:IncludesLastItemInRange></m:SyncFolderItemsResponseMessage>"
                        ENVELOPE_CLOSE, STATE);
    ews_sync_page *page = parsed(bare, OUTLOOK_TASK);
    check_ok(page, 0, false);
    ews_sync_page_free(page);
    free(bare);
}

/* ---- errors ------------------------------------------------------------------ */

static void test_parse_invalid_sync_state(void **state)
{
    (void)state;
    /* As real servers (and the simulator) send it: an empty SyncState still there. */
    char *xml = error_answer("ErrorInvalidSyncStateData",
                             "<m:SyncState/><m:IncludesLastItemInRange>true"
                             "</m:IncludesLastItemInRange>");
    ews_sync_page *page = parsed(xml, OUTLOOK_TASK);

    assert_true(page->result.position_invalid);
    assert_int_equal(page->result.result.outcome, DELIVERY_PERMANENT);
    assert_string_equal(page->result.result.code, "ErrorInvalidSyncStateData");
    assert_non_null(strstr(page->result.result.reason, "ErrorInvalidSyncStateData"));
    assert_null(page->result.new_position);
    assert_int_equal(page->result.n_changes, 0);
    assert_false(page->result.more);
    assert_int_equal(page->result.result.throttle, DELIVERY_THROTTLE_NONE);
    ews_sync_page_free(page);
    free(xml);

    /* Hidden behind ErrorInternalServerError for an older RequestServerVersion. */
    xml = error_answer("ErrorInternalServerError",
                       "<m:MessageXml><t:Value Name=\"InnerErrorResponseCode\">"
                       "ErrorInvalidSyncStateData</t:Value></m:MessageXml>");
    page = parsed(xml, OUTLOOK_APPOINTMENT);
    assert_true(page->result.position_invalid);
    assert_int_equal(page->result.result.outcome, DELIVERY_PERMANENT);
    ews_sync_page_free(page);
    free(xml);
}

static void test_parse_server_busy(void **state)
{
    (void)state;
    char *xml = error_answer("ErrorServerBusy",
                             "<m:MessageXml><t:Value Name=\"BackOffMilliseconds\">30000"
                             "</t:Value></m:MessageXml>");
    ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);

    assert_int_equal(page->result.result.outcome, DELIVERY_TRANSIENT);
    assert_int_equal(page->result.result.throttle, DELIVERY_THROTTLE_MAILBOX);
    assert_int_equal(page->result.result.retry_after_ms, 30000);
    assert_string_equal(page->result.result.code, "ErrorServerBusy");
    assert_false(page->result.position_invalid);
    assert_null(page->result.new_position);
    ews_sync_page_free(page);
    free(xml);

    /* The same as a SOAP fault. */
    xml = format("<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><s:Fault><faultcode "
                 "xmlns:a=\"" NS_TYPES "\">a:ErrorServerBusy</faultcode><faultstring>The "
                 "server cannot service this request right now.</faultstring><detail>"
                 "<e:ResponseCode xmlns:e=\"http://schemas.microsoft.com/exchange/services/"
                 "2006/errors\">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t=\""
                 NS_TYPES "\"><t:Value Name=\"BackOffMilliseconds\">5000</t:Value>"
                 "</t:MessageXml></detail></s:Fault></s:Body></s:Envelope>");
    page = parsed(xml, OUTLOOK_TASK);
    assert_int_equal(page->result.result.outcome, DELIVERY_TRANSIENT);
    assert_int_equal(page->result.result.throttle, DELIVERY_THROTTLE_MAILBOX);
    assert_int_equal(page->result.result.retry_after_ms, 5000);
    assert_non_null(strstr(page->result.result.reason, "fault"));
    ews_sync_page_free(page);
    free(xml);
}

static void test_parse_other_errors(void **state)
{
    (void)state;
    const struct { const char *code; delivery_outcome outcome; } cases[] = {
        {"ErrorAccessDenied", DELIVERY_PERMANENT},
        {"ErrorNonExistentMailbox", DELIVERY_PERMANENT},
        {"ErrorMailboxStoreUnavailable", DELIVERY_TRANSIENT},
        {"ErrorSyncFolderNotFound", DELIVERY_TRANSIENT},   /* not in the table: retried */
        {"NoError", DELIVERY_TRANSIENT},                   /* an Error class is no success */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *xml = error_answer(cases[i].code, "");
        ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);
        assert_int_equal(page->result.result.outcome, cases[i].outcome);
        assert_string_equal(page->result.result.code, cases[i].code);
        assert_false(page->result.position_invalid);
        assert_int_equal(page->result.result.throttle, DELIVERY_THROTTLE_NONE);
        assert_int_equal(page->result.result.retry_after_ms, -1);
        assert_null(page->result.new_position);
        ews_sync_page_free(page);
        free(xml);
    }
    /* A Warning is a request "not processed": no state to go on from. */
    char *xml = format(ENVELOPE_OPEN "<m:SyncFolderItemsResponseMessage ResponseClass="
                       "\"Warning\"><m:MessageText>Store offline</m:MessageText><m:ResponseCode>"
                       "ErrorMailboxStoreUnavailable</m:ResponseCode>"
                       "</m:SyncFolderItemsResponseMessage>" ENVELOPE_CLOSE);
    ews_sync_page *page = parsed(xml, OUTLOOK_TASK);
    assert_int_equal(page->result.result.outcome, DELIVERY_TRANSIENT);
    assert_null(page->result.new_position);
    ews_sync_page_free(page);
    free(xml);
}

/* ---- broken and hostile answers ---------------------------------------------- */

static void test_parse_garbage(void **state)
{
    (void)state;
    char *good = success(STATE, "true", "");
    const char *doctype = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]>"
                          "<s:Envelope xmlns:s=\"" NS_SOAP "\"/>";
    const char *find = "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><m:FindItemResponse "
                       "xmlns:m=\"" NS_MESSAGES "\"><m:ResponseMessages>"
                       "<m:FindItemResponseMessage ResponseClass=\"Success\"><m:ResponseCode>"
                       "NoError</m:ResponseCode></m:FindItemResponseMessage>"
                       "</m:ResponseMessages></m:FindItemResponse></s:Body></s:Envelope>";

    check_unusable("", 0, OUTLOOK_TASK, "empty");
    check_unusable("this is not XML", 15, OUTLOOK_TASK, "not XML");
    check_unusable("<html><body>Login</body></html>", 31, OUTLOOK_TASK, "HTML");
    check_unusable(doctype, strlen(doctype), OUTLOOK_TASK, "DOCTYPE");
    check_unusable(good, strlen(good) / 2, OUTLOOK_TASK, "not XML");
    check_unusable(good, strlen(good) - 3, OUTLOOK_APPOINTMENT, "not XML");
    check_unusable(find, strlen(find), OUTLOOK_TASK, "not a SyncFolderItemsResponse");
    free(good);

    char *no_state = success("", "true", "");
    check_unusable(no_state, strlen(no_state), OUTLOOK_TASK, "no SyncState");
    free(no_state);
    char *bad_state = success("AAA BBB", "true", "");
    check_unusable(bad_state, strlen(bad_state), OUTLOOK_TASK, "unusable");
    free(bad_state);
    char *bad_last = success(STATE, "maybe", "");
    check_unusable(bad_last, strlen(bad_last), OUTLOOK_TASK, "IncludesLastItemInRange");
    free(bad_last);

    ews_sync_page *page = NULL;
    char err[64];
    assert_int_equal(ews_sync_parse("x", 1, (outlook_item_kind)5, &page, err, sizeof err), -1);
    assert_int_equal(ews_sync_parse("x", 1, OUTLOOK_TASK, NULL, err, sizeof err), -1);
}

/* Malformed values in an item of ours: that change is not reported, the rest are. */
static void test_parse_bad_values(void **state)
{
    (void)state;
    const char *bad[] = {
        "soon", "2025-02-30T09:00:00Z", "2025-13-01T09:00:00Z", "2025-03-01T24:00:00Z",
        "2025-03-01T09:00:00+15:00", "2025-03-01T09:00:00+01", "2025-03-01 09:00:00Z",
        "0000-01-01T00:00:00Z", "2025-03-01T09:00:00.Z", "2025-03-01T09:00:00Zjunk",
        "0001-01-01T00:00:00+14:00", "",
    };
    char *changes = format("%s", "");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *item = appointment("Update", "A1", true, bad[i]);
        char *more = format("%s%s", changes, item);
        free(changes);
        free(item);
        changes = more;
    }
    /* Ids: missing, empty, too long. */
    char *long_id = malloc(2001);
    assert_non_null(long_id);
    memset(long_id, 'I', 2000);
    long_id[2000] = '\0';
    char *long_item = appointment("Update", long_id, true, "2025-03-01T09:00:00Z");
    char *long_delete = deleted(long_id);
    char *good = appointment("Update", "A2", true, "2024-02-29T23:59:59-00:30");
    char *all = format("%s%s%s<t:Update><t:CalendarItem>%s<t:Start>2025-03-01T09:00:00Z"
                       "</t:Start></t:CalendarItem></t:Update><t:Delete><t:ItemId Id=\"\"/>"
                       "</t:Delete>%s", changes, long_item, long_delete,
                       "<t:ItemId ChangeKey=\"k\"/>", good);
    char *xml = success(STATE, "true", all);
    ews_sync_page *page = parsed(xml, OUTLOOK_APPOINTMENT);

    check_ok(page, 1, false);
    check_change(page, 0, "moved", "A2", "CK-A2", "2024-03-01T00:29:59Z");
    ews_sync_page_free(page);
    free(xml);
    free(all);
    free(good);
    free(long_item);
    free(long_delete);
    free(long_id);
    free(changes);
}

static void test_parse_hostile_sizes(void **state)
{
    (void)state;
    /* More entries than Exchange ever sends. */
    size_t n = EWS_SYNC_MAX_ENTRIES + 1;
    char *many = calloc(n, 64);
    assert_non_null(many);
    for (size_t i = 0; i < n; i++)
        strcat(many, "<t:Delete><t:ItemId Id=\"D\"/></t:Delete>");
    char *xml = success(STATE, "true", many);
    check_unusable(xml, strlen(xml), OUTLOOK_TASK, "more than");
    free(xml);
    /* Exactly the maximum is fine. */
    many[strlen(many) - strlen("<t:Delete><t:ItemId Id=\"D\"/></t:Delete>")] = '\0';
    xml = success(STATE, "true", many);
    ews_sync_page *page = parsed(xml, OUTLOOK_TASK);
    check_ok(page, EWS_SYNC_MAX_ENTRIES, false);
    ews_sync_page_free(page);
    free(xml);
    free(many);

    /* A SyncState over its bound. */
    char *huge_state = malloc(EWS_SYNC_STATE_MAX_BYTES + 2);
    assert_non_null(huge_state);
    memset(huge_state, 'Q', EWS_SYNC_STATE_MAX_BYTES + 1);
    huge_state[EWS_SYNC_STATE_MAX_BYTES + 1] = '\0';
    xml = success(huge_state, "true", "");
    check_unusable(xml, strlen(xml), OUTLOOK_APPOINTMENT, "unusable");
    free(xml);
    free(huge_state);

    /* A change key far too long is dropped, the change kept. */
    char *long_key = malloc(4001);
    assert_non_null(long_key);
    memset(long_key, 'K', 4000);
    long_key[4000] = '\0';
    char *naming = tag("contactlog:43:task");
    char *item = format("<t:Update><t:Task><t:ItemId Id=\"T1\" ChangeKey=\"%s\"/>%s<t:Status>"
                        "Completed</t:Status></t:Task></t:Update>", long_key, naming);
    xml = success(STATE, "true", item);
    page = parsed(xml, OUTLOOK_TASK);
    check_ok(page, 1, false);
    check_change(page, 0, "completed", "T1", NULL, NULL);
    ews_sync_page_free(page);
    free(xml);
    free(item);
    free(naming);
    free(long_key);

    /* An answer over the response cap is refused before parsing. */
    size_t big = EWS_RESPONSE_MAX_BYTES + 1;
    char *body = malloc(big + 1);
    assert_non_null(body);
    memset(body, ' ', big);
    body[big] = '\0';
    check_unusable(body, big, OUTLOOK_TASK, "larger than");
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_both_kinds_with_and_without_state),
        cmocka_unit_test(test_request_refuses_bad_arguments),
        cmocka_unit_test(test_parse_appointments),
        cmocka_unit_test(test_parse_tag_guid_any_case),
        cmocka_unit_test(test_parse_tasks),
        cmocka_unit_test(test_parse_due_dates_far_zones),
        cmocka_unit_test(test_parse_paging),
        cmocka_unit_test(test_parse_invalid_sync_state),
        cmocka_unit_test(test_parse_server_busy),
        cmocka_unit_test(test_parse_other_errors),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_parse_bad_values),
        cmocka_unit_test(test_parse_hostile_sizes),
    };
    return cmocka_run_group_tests(tests, xsd_check_group_setup, xsd_check_group_teardown);
}
