/* test_ews_stream — the EWS back end's watch: its requests against Microsoft's schema,
 * the reading of streamed envelopes (split anywhere, both namespaces real servers and
 * the schema use, garbage), the grouping of mailboxes, and the whole against
 * tests/sim/ews_sim.py when Python and lxml are there (else that test is skipped):
 * an edit in Outlook reaches changed() within two seconds, 300 mailboxes take two
 * connections. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "ews/ews_stream.h"
#include "ews/ews_stream_internal.h"
#include "ews/ews_stream_xml.h"
#include "xsd_check.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"
#define BODY "/soap:Envelope/soap:Body"

static const ews_request_options impersonating = {
    .server_version = "Exchange2013_SP1", .mailbox = "user@example.com", .impersonation = true};
static const ews_request_options delegating = {
    .server_version = "Exchange2016", .mailbox = "boss@example.com", .impersonation = false};

/* ---- requests ---------------------------------------------------------------------- */

/* len by address: the builder, an argument too, sets it. */
static xmlDocPtr check_request(char *xml, const size_t *len)
{
    char err[1024];
    if (!xml)
        fail_msg("builder returned NULL");
    assert_int_equal(strlen(xml), *len);
    if (xsd_check_validate(xml, *len, err, sizeof err) != 0)
        fail_msg("request does not validate: %s\n%.2000s", err, xml);
    xmlDocPtr doc = xmlReadMemory(xml, (int)*len, "request.xml", NULL, XML_PARSE_NONET);
    assert_non_null(doc);
    free(xml);
    return doc;
}

static char *xpath_string(xmlDocPtr doc, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    assert_non_null(ctx);
    xmlXPathRegisterNs(ctx, BAD_CAST "soap", BAD_CAST NS_SOAP);
    xmlXPathRegisterNs(ctx, BAD_CAST "t", BAD_CAST NS_TYPES);
    xmlXPathRegisterNs(ctx, BAD_CAST "m", BAD_CAST NS_MESSAGES);
    xmlXPathObjectPtr obj = xmlXPathEvalExpression(BAD_CAST expr, ctx);
    xmlXPathFreeContext(ctx);
    assert_non_null(obj);
    xmlChar *value = xmlXPathCastToString(obj);
    xmlXPathFreeObject(obj);
    char *out = strdup((const char *)value);
    xmlFree(value);
    return out;
}

static void check_xpath(xmlDocPtr doc, const char *expr, const char *expected)
{
    char *value = xpath_string(doc, expr);
    if (strcmp(value, expected) != 0)
        fail_msg("%s: got \"%s\", expected \"%s\"", expr, value, expected);
    free(value);
}

static void test_subscribe_request(void **state)
{
    (void)state;
    size_t len = 0;
    xmlDocPtr doc = check_request(ews_stream_request_subscribe(&impersonating, &len), &len);
#define SUB BODY "/m:Subscribe/m:StreamingSubscriptionRequest"
    check_xpath(doc, "string(/soap:Envelope/soap:Header/t:ExchangeImpersonation/t:ConnectingSID/"
                     "t:SmtpAddress)", "user@example.com");
    check_xpath(doc, "count(" SUB "/t:FolderIds/t:DistinguishedFolderId)", "2");
    check_xpath(doc, "string(" SUB "/t:FolderIds/t:DistinguishedFolderId[1]/@Id)", "calendar");
    check_xpath(doc, "string(" SUB "/t:FolderIds/t:DistinguishedFolderId[2]/@Id)", "tasks");
    check_xpath(doc, "count(" SUB "/t:FolderIds//t:Mailbox)", "0");
    check_xpath(doc, "count(" SUB "/t:EventTypes/t:EventType)", "4");
    for (const char *const *type = (const char *const[]){"CreatedEvent", "ModifiedEvent",
                                                          "DeletedEvent", "MovedEvent", NULL};
         *type; type++) {
        char expr[256];
        snprintf(expr, sizeof expr, "count(" SUB "/t:EventTypes/t:EventType[. = '%s'])", *type);
        check_xpath(doc, expr, "1");
    }
    xmlFreeDoc(doc);

    doc = check_request(ews_stream_request_subscribe(&delegating, &len), &len);
    check_xpath(doc, "count(//t:ExchangeImpersonation)", "0");
    check_xpath(doc, "string(" SUB "/t:FolderIds/t:DistinguishedFolderId[2]/t:Mailbox/"
                     "t:EmailAddress)", "boss@example.com");
    xmlFreeDoc(doc);
#undef SUB
    ews_request_options bad = impersonating;
    bad.mailbox = "a\nb@example.com";
    assert_null(ews_stream_request_subscribe(&bad, &len));
    bad.mailbox = "";
    assert_null(ews_stream_request_subscribe(&bad, &len));
}

static void test_unsubscribe_and_get_events_requests(void **state)
{
    (void)state;
    size_t len = 0;
    xmlDocPtr doc = check_request(ews_stream_request_unsubscribe(&impersonating, "SUB+1/==",
                                                                 &len), &len);
    check_xpath(doc, "string(" BODY "/m:Unsubscribe/m:SubscriptionId)", "SUB+1/==");
    xmlFreeDoc(doc);

    const char *ids[] = {"SUB1", "SUB2", "SUB3"};
    doc = check_request(ews_stream_request_get_events(&impersonating, ids, 3, 30, &len), &len);
    check_xpath(doc, "count(" BODY "/m:GetStreamingEvents/m:SubscriptionIds/t:SubscriptionId)",
                "3");
    check_xpath(doc, "string(" BODY "/m:GetStreamingEvents/m:SubscriptionIds/t:SubscriptionId[3])",
                "SUB3");
    check_xpath(doc, "string(" BODY "/m:GetStreamingEvents/m:ConnectionTimeout)", "30");
    xmlFreeDoc(doc);
    doc = check_request(ews_stream_request_get_events(&delegating, ids, 1, 1, &len), &len);
    xmlFreeDoc(doc);

    assert_null(ews_stream_request_get_events(&impersonating, ids, 0, 30, &len));
    assert_null(ews_stream_request_get_events(&impersonating, ids, 3, 0, &len));
    assert_null(ews_stream_request_get_events(&impersonating, ids, 3, 31, &len));
    const char *bad_ids[] = {"SUB1", "with blank"};
    assert_null(ews_stream_request_get_events(&impersonating, bad_ids, 2, 30, &len));
    assert_null(ews_stream_request_unsubscribe(&impersonating, "a;b", &len));
}

/* ---- answers ----------------------------------------------------------------------- */

#define ENVELOPE(messages)                                                                     \
    "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Header><h:ServerVersionInfo "                      \
    "xmlns:h=\"" NS_TYPES "\" MajorVersion=\"15\"/></s:Header><s:Body>"                         \
    "<m:GetStreamingEventsResponse xmlns:m=\"" NS_MESSAGES "\" xmlns:t=\"" NS_TYPES "\">"       \
    "<m:ResponseMessages>" messages "</m:ResponseMessages></m:GetStreamingEventsResponse>"     \
    "</s:Body></s:Envelope>"
#define OK_MESSAGE(inner)                                                                      \
    "<m:GetStreamingEventsResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError"   \
    "</m:ResponseCode>" inner "</m:GetStreamingEventsResponseMessage>"
#define ITEM_EVENT(type)                                                                       \
    "<t:" type "><t:TimeStamp>2026-11-30T10:00:00Z</t:TimeStamp><t:ItemId Id=\"AAMk=\" "        \
    "ChangeKey=\"DwAA\"/><t:ParentFolderId Id=\"AQMk=\" ChangeKey=\"AQAAAA==\"/></t:" type ">"
#define FOLDER_EVENT                                                                           \
    "<t:ModifiedEvent><t:TimeStamp>2026-11-30T10:00:00Z</t:TimeStamp><t:FolderId Id=\"AQMk=\" " \
    "ChangeKey=\"AQAAAA==\"/><t:ParentFolderId Id=\"AQMr=\" ChangeKey=\"AQAAAA==\"/>"           \
    "</t:ModifiedEvent>"

static const char events_envelope[] = ENVELOPE(OK_MESSAGE(
    "<m:Notifications>"
    "<m:Notification><t:SubscriptionId>SUB1</t:SubscriptionId>" ITEM_EVENT("CreatedEvent")
    FOLDER_EVENT "</m:Notification>"
    "<m:Notification><t:SubscriptionId>SUB2</t:SubscriptionId>" FOLDER_EVENT "</m:Notification>"
    "<t:Notification><t:SubscriptionId>SUB3</t:SubscriptionId>"
    "<t:MovedEvent><t:TimeStamp>2026-11-30T10:00:00Z</t:TimeStamp><t:ItemId Id=\"N=\"/>"
    "<t:ParentFolderId Id=\"D=\"/><t:OldItemId Id=\"O=\"/><t:OldParentFolderId Id=\"C=\"/>"
    "</t:MovedEvent></t:Notification>"
    "<m:Notification><m:SubscriptionId>SUB4</m:SubscriptionId>" ITEM_EVENT("DeletedEvent")
    "</m:Notification>"
    "<m:Notification><t:SubscriptionId>SUB5</t:SubscriptionId><t:StatusEvent><t:Watermark>W"
    "</t:Watermark></t:StatusEvent></m:Notification>"
    "</m:Notifications>"));

static ews_stream_envelope *parse_ok(const char *xml)
{
    ews_stream_envelope *e = NULL;
    char err[256];
    if (ews_stream_envelope_parse(xml, strlen(xml), &e, err, sizeof err) != 0)
        fail_msg("parse failed: %s", err);
    return e;
}

static void test_envelope_events(void **state)
{
    (void)state;
    ews_stream_envelope *e = parse_ok(events_envelope);
    assert_int_equal(e->status, EWS_STREAM_STATUS_NONE);
    /* Item events only (folder events and status events say nothing of our items), in
     * m: and t: Notification, with t: or m: SubscriptionId. */
    assert_int_equal(e->n_changed, 3);
    assert_string_equal(e->changed[0], "SUB1");
    assert_string_equal(e->changed[1], "SUB3");
    assert_string_equal(e->changed[2], "SUB4");
    assert_int_equal(e->n_failed, 0);
    assert_null(e->error_code);
    ews_stream_envelope_free(e);
}

static void test_envelope_status(void **state)
{
    (void)state;
    ews_stream_envelope *e = parse_ok(ENVELOPE(OK_MESSAGE(
        "<m:ConnectionStatus>OK</m:ConnectionStatus>")));
    assert_int_equal(e->status, EWS_STREAM_STATUS_OK);
    assert_int_equal(e->n_changed + e->n_failed, 0);
    ews_stream_envelope_free(e);
    e = parse_ok(ENVELOPE(OK_MESSAGE("<m:ConnectionStatus>Closed</m:ConnectionStatus>")));
    assert_int_equal(e->status, EWS_STREAM_STATUS_CLOSED);
    ews_stream_envelope_free(e);
}

static void test_envelope_errors(void **state)
{
    (void)state;
    ews_stream_envelope *e = parse_ok(ENVELOPE(
        "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:MessageText>The "
        "subscription has expired.</m:MessageText><m:ResponseCode>ErrorExpiredSubscription"
        "</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:ErrorSubscriptionIds>"
        "<m:SubscriptionId>SUB1</m:SubscriptionId><t:SubscriptionId>SUB2</t:SubscriptionId>"
        "</m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage>"
        "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:ResponseCode>"
        "ErrorNewEventStreamConnectionOpened</m:ResponseCode><m:ErrorSubscriptionIds>"
        "<m:SubscriptionId>SUB3</m:SubscriptionId></m:ErrorSubscriptionIds>"
        "</m:GetStreamingEventsResponseMessage>"
        OK_MESSAGE("<m:ConnectionStatus>Closed</m:ConnectionStatus>")));
    assert_int_equal(e->n_failed, 3);
    assert_string_equal(e->failed[0].subscription_id, "SUB1");
    assert_string_equal(e->failed[0].code, "ErrorExpiredSubscription");
    assert_string_equal(e->failed[1].subscription_id, "SUB2");
    assert_string_equal(e->failed[2].code, "ErrorNewEventStreamConnectionOpened");
    assert_int_equal(e->status, EWS_STREAM_STATUS_CLOSED);
    assert_null(e->error_code);
    ews_stream_envelope_free(e);

    /* An error of the whole connection: code and wait. */
    e = parse_ok(ENVELOPE(
        "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:ResponseCode>"
        "ErrorServerBusy</m:ResponseCode><m:MessageXml><t:Value Name=\"BackOffMilliseconds\">"
        "5000</t:Value></m:MessageXml></m:GetStreamingEventsResponseMessage>"));
    assert_string_equal(e->error_code, "ErrorServerBusy");
    assert_int_equal(e->back_off_ms, 5000);
    ews_stream_envelope_free(e);

    e = parse_ok("<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><s:Fault><faultcode>"
                 "s:Client</faultcode><faultstring>no</faultstring><detail><e:ResponseCode "
                 "xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">"
                 "ErrorInvalidRequest</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>");
    assert_string_equal(e->error_code, "ErrorInvalidRequest");
    ews_stream_envelope_free(e);
}

static void test_envelope_garbage(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "not xml", "<html><body>Login</body></html>",
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>",
        "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body/></s:Envelope>",
        "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><m:GetItemResponse xmlns:m=\"" NS_MESSAGES
        "\"/></s:Body></s:Envelope>",
        "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><x:Y>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ews_stream_envelope *e = (ews_stream_envelope *)1;
        char err[256] = "";
        assert_int_equal(ews_stream_envelope_parse(bad[i], strlen(bad[i]), &e, err, sizeof err),
                         -1);
        assert_null(e);
        assert_true(err[0] != '\0');
    }
    /* Ids that are no ids (blanks, control characters, far too long) are skipped. */
    char *long_id = malloc(EWS_STREAM_TOKEN_MAX + 2);
    memset(long_id, 'A', EWS_STREAM_TOKEN_MAX + 1);
    long_id[EWS_STREAM_TOKEN_MAX + 1] = '\0';
    char *xml = NULL;
    assert_true(asprintf(&xml, ENVELOPE(OK_MESSAGE(
        "<m:Notifications><m:Notification><t:SubscriptionId>%s</t:SubscriptionId>"
        ITEM_EVENT("CreatedEvent") "</m:Notification><m:Notification><t:SubscriptionId>a b"
        "</t:SubscriptionId>" ITEM_EVENT("CreatedEvent") "</m:Notification></m:Notifications>")),
        long_id) > 0);
    ews_stream_envelope *e = parse_ok(xml);
    assert_int_equal(e->n_changed, 0);
    ews_stream_envelope_free(e);
    free(xml);
    free(long_id);
}

static void test_subscription_id(void **state)
{
    (void)state;
    static const char answer[] =
        "<s:Envelope xmlns:s=\"" NS_SOAP "\"><s:Body><m:SubscribeResponse xmlns:m=\"" NS_MESSAGES
        "\" xmlns:t=\"" NS_TYPES "\"><m:ResponseMessages><m:SubscribeResponseMessage "
        "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:SubscriptionId>"
        " JgBFWFNJTTAx+/= </m:SubscriptionId></m:SubscribeResponseMessage></m:ResponseMessages>"
        "</m:SubscribeResponse></s:Body></s:Envelope>";
    char err[256];
    char *id = ews_stream_subscription_id(answer, strlen(answer), err, sizeof err);
    assert_non_null(id);
    assert_string_equal(id, "JgBFWFNJTTAx+/=");
    free(id);
    assert_null(ews_stream_subscription_id(events_envelope, strlen(events_envelope), err,
                                           sizeof err));
    assert_null(ews_stream_subscription_id("junk", 4, err, sizeof err));
}

static void test_header_lines(void **state)
{
    (void)state;
    static const char set[] = "Set-Cookie: X-BackEndOverrideCookie=EXSIM01.sim.local~42; path=/; "
                              "HttpOnly";
    char *cookie = ews_stream_affinity_cookie(set, strlen(set));
    assert_non_null(cookie);
    assert_string_equal(cookie, "EXSIM01.sim.local~42");
    free(cookie);
    static const char *const not_ours[] = {
        "Set-Cookie: exchangecookie=abc; path=/", "X-Set-Cookie: X-BackEndOverrideCookie=a",
        "set-cookie:X-BackEndOverrideCookie=bad\"quote", "Set-Cookie: X-BackEndOverrideCookie=;"};
    for (size_t i = 0; i < sizeof not_ours / sizeof not_ours[0]; i++)
        assert_null(ews_stream_affinity_cookie(not_ours[i], strlen(not_ours[i])));
    assert_int_equal(ews_stream_http_status("HTTP/1.1 200 OK", 15), 200);
    assert_int_equal(ews_stream_http_status("HTTP/2 401", 10), 401);
    assert_int_equal(ews_stream_http_status("HTTP/1.1 20", 11), 0);
    assert_int_equal(ews_stream_http_status("Content-Type: text/xml", 22), 0);
}

/* ---- the splitter ------------------------------------------------------------------- */

static void test_splitter(void **state)
{
    (void)state;
    static const char first[] =
        "<s:Envelope xmlns:s=\"x\" a='>' b=\"/>\"><!-- </s:Envelope> --><s:Body><e/>"
        "<![CDATA[</s:Envelope>]]><?pi ?></s:Body></s:Envelope>";
    static const char second[] = "<?xml version=\"1.0\"?><Envelope><x></x></Envelope>";
    char stream[512];
    snprintf(stream, sizeof stream, "\r\n%s\n%s<a/>  ", first, second);
    ews_stream_splitter sp;
    ews_stream_splitter_init(&sp);
    const char *doc;
    size_t len, found = 0;
    char err[128];
    /* A byte at a time: envelopes come whole, whatever the cuts. */
    for (size_t i = 0; stream[i]; i++) {
        assert_int_equal(ews_stream_splitter_feed(&sp, stream + i, 1), 0);
        int r;
        while ((r = ews_stream_splitter_next(&sp, &doc, &len, err, sizeof err)) == 1) {
            const char *want = found == 0 ? first : found == 1 ? second : "<a/>";
            assert_int_equal(len, strlen(want));
            assert_memory_equal(doc, want, len);
            found++;
        }
        assert_int_equal(r, 0);
    }
    assert_int_equal(found, 3);
    /* Text between envelopes is not a stream of envelopes. */
    assert_int_equal(ews_stream_splitter_feed(&sp, "junk", 4), 0);
    assert_int_equal(ews_stream_splitter_next(&sp, &doc, &len, err, sizeof err), -1);
    /* An end tag without start tag neither; nor an envelope without end. */
    assert_int_equal(ews_stream_splitter_feed(&sp, "</a>", 4), 0);
    assert_int_equal(ews_stream_splitter_next(&sp, &doc, &len, err, sizeof err), -1);
    char *big = malloc(1024 * 1024);
    memset(big, ' ', 1024 * 1024);
    big[0] = '<';
    big[1] = 'a';
    big[2] = '>';
    int fed = 0;
    for (int i = 0; i < 5 && fed == 0; i++)
        fed = ews_stream_splitter_feed(&sp, big, 1024 * 1024);
    assert_int_equal(fed, -1);
    free(big);
    ews_stream_splitter_reset(&sp);
}

/* ---- grouping ---------------------------------------------------------------------- */

static void test_grouping(void **state)
{
    (void)state;
    sd_event *event = NULL;
    assert_int_equal(sd_event_new(&event), 0);
    ews_backend backend = {.event = event};   /* no url: nothing goes on the wire */
    char names[452][64];
    const char *list[452];
    for (int i = 0; i < 450; i++) {
        snprintf(names[i], sizeof names[i], "%sUser%03d@Example.com ", i % 2 ? " " : "", i);
        list[i] = names[i];
    }
    list[450] = "user007@example.com";   /* a duplicate */
    list[451] = "bad\naddress@example.com";
    assert_int_equal(ews_stream_watch(&backend, list, 452, NULL, NULL), 0);
    ews_stream *s = ews_stream_of(&backend);
    assert_non_null(s);
    assert_int_equal(s->n_mailboxes, 450);
    assert_int_equal(s->n_groups, 3);
    assert_int_equal(s->groups[0]->n, 200);
    assert_int_equal(s->groups[1]->n, 200);
    assert_int_equal(s->groups[2]->n, 50);
    assert_string_equal(s->groups[0]->members[0]->address, "user000@example.com");
    assert_string_equal(s->groups[1]->members[0]->address, "user200@example.com");
    assert_string_equal(s->groups[2]->members[0]->address, "user400@example.com");

    /* The same set again changes nothing. */
    watch_mailbox *before = s->groups[1]->members[7];
    assert_int_equal(ews_stream_watch(&backend, list, 452, NULL, NULL), 0);
    assert_int_equal(s->n_mailboxes, 450);
    assert_ptr_equal(s->groups[1]->members[7], before);

    /* Group 2 loses its anchor (the next member anchors it) and 20 more; newcomers
     * fill its room before a new group is made. */
    for (int i = 200; i < 221; i++)
        snprintf(names[i], sizeof names[i], "new%03d@example.com", i);
    assert_int_equal(ews_stream_watch(&backend, list, 450, NULL, NULL), 0);
    assert_int_equal(s->n_groups, 3);
    assert_int_equal(s->groups[1]->n, 200);
    assert_string_equal(s->groups[1]->members[0]->address, "user221@example.com");
    assert_string_equal(s->groups[1]->members[179]->address, "new200@example.com");

    /* Fewer mailboxes: groups left empty go. */
    assert_int_equal(ews_stream_watch(&backend, list, 150, NULL, NULL), 0);
    assert_int_equal(s->n_groups, 1);
    assert_int_equal(s->n_mailboxes, 150);
    assert_int_equal(ews_stream_watch(&backend, list, 0, NULL, NULL), 0);
    assert_int_equal(s->n_groups, 0);
    assert_int_equal(s->n_mailboxes, 0);
    ews_stream_free(&backend);
    assert_null(ews_stream_of(&backend));
    sd_event_unref(event);
}

/* test_ews_stream_sim.c */
void test_against_sim(void **state);
int test_against_sim_teardown(void **state);

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subscribe_request),
        cmocka_unit_test(test_unsubscribe_and_get_events_requests),
        cmocka_unit_test(test_envelope_events),
        cmocka_unit_test(test_envelope_status),
        cmocka_unit_test(test_envelope_errors),
        cmocka_unit_test(test_envelope_garbage),
        cmocka_unit_test(test_subscription_id),
        cmocka_unit_test(test_header_lines),
        cmocka_unit_test(test_splitter),
        cmocka_unit_test(test_grouping),
        cmocka_unit_test_teardown(test_against_sim, test_against_sim_teardown),
    };
    return cmocka_run_group_tests(tests, xsd_check_group_setup, xsd_check_group_teardown);
}
