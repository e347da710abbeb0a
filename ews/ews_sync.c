/* ews_sync — SyncFolderItems for Outlook → CRM (SPEC section 7).
 *
 * The request: IdOnly plus the few fields a change is read from and our naming
 * property, from the stored SyncState (none: every item now, a read afresh), at most
 * EWS_SYNC_CHANGES_PER_PAGE changes. Built with ews_soap like every other request, so
 * it carries the same RequestServerVersion and impersonation header.
 *
 * The answer is read twice: ews_response_parse (the hardened parse, SOAP faults,
 * ResponseClass, ResponseCode, MessageXml) classifies it exactly as every other
 * answer; only a successful one is walked again for its m:Changes, which that generic
 * reader does not know. What comes back is what each item says now; the database
 * tells ours from theirs by item id and change key (delivery.h). */
#include "ews/ews_sync.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libxml/tree.h>

#include "daemon/text.h"
#include "ews/ews_errors.h"
#include "ews/ews_response.h"
#include "ews/ews_soap.h"
#include "ews/ews_xml.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"

/* Exchange's ids are about 150 bytes of base64 and change keys about 40; anything far
 * longer cannot be an item we created, so its change is not reported. */
#define ITEM_ID_MAX_BYTES 1024
#define CHANGE_KEY_MAX_BYTES 512

/* "YYYY-MM-DDTHH:MM:SSZ" plus NUL, with room to spare. */
#define UTC_TIME_SIZE 32

/* A task's DueDate is a date, which Exchange may write as local midnight with its
 * offset, or as that instant in UTC (or in another zone). A midnight is taken as the
 * date it names; any other instant is rounded to the nearest UTC midnight, which
 * recovers the date for every zone within 12 hours of UTC. */
#define DUE_DATE_ROUNDING_SECONDS (12 * 3600)

static bool kind_ok(outlook_item_kind kind)
{
    return kind == OUTLOOK_APPOINTMENT || kind == OUTLOOK_TASK;
}

/* ---- the request ------------------------------------------------------------- */

/* Non-empty and free of control characters: what a header value and a folder's
 * mailbox address must be (ews_request checks the full UTF-8 rule when items are
 * written; the mailboxes synced are those items were written to). */
static bool is_plain_text(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p == 0x7F)
            return false;
    return true;
}

bool ews_sync_state_ok(const char *sync_state)
{
    if (sync_state == NULL || sync_state[0] == '\0')
        return false;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)sync_state; *p != '\0'; p++, n++)
        if (*p <= 0x20 || *p >= 0x7F || n >= EWS_SYNC_STATE_MAX_BYTES)
            return false;
    return true;
}

static void add_field_uri(ews_soap *b, xmlNodePtr parent, const char *field)
{
    xmlNodePtr uri = ews_soap_element(b, parent, b->ns_t, "FieldURI");
    ews_soap_attribute(b, uri, "FieldURI", field);
}

char *ews_sync_request(const ews_request_options *opt, outlook_item_kind kind,
                       const char *sync_state, size_t *len)
{
    ews_soap b;
    char max_changes[16];

    if (opt == NULL || !is_plain_text(opt->server_version) || !is_plain_text(opt->mailbox) ||
        !kind_ok(kind) || len == NULL || (sync_state != NULL && !ews_sync_state_ok(sync_state)))
        return NULL;
    if (!ews_soap_start(&b, opt, NULL))
        goto fail;

    /* messages.xsd order: ItemShape, SyncFolderId, SyncState, MaxChangesReturned. */
    xmlNodePtr sync = ews_soap_element(&b, b.body, b.ns_m, "SyncFolderItems");
    xmlNodePtr shape = ews_soap_element(&b, sync, b.ns_m, "ItemShape");
    ews_soap_text(&b, shape, b.ns_t, "BaseShape", "IdOnly");
    xmlNodePtr properties = ews_soap_element(&b, shape, b.ns_t, "AdditionalProperties");
    if (kind == OUTLOOK_APPOINTMENT) {
        add_field_uri(&b, properties, "calendar:Start");
    } else {
        add_field_uri(&b, properties, "task:DueDate");
        add_field_uri(&b, properties, "task:Status");
    }
    ews_soap_naming_field_uri(&b, properties);

    ews_soap_folder_id(&b, ews_soap_element(&b, sync, b.ns_m, "SyncFolderId"), opt,
                       ews_soap_folder_name(kind));
    if (sync_state != NULL)
        ews_soap_text(&b, sync, b.ns_m, "SyncState", sync_state);
    snprintf(max_changes, sizeof max_changes, "%d", EWS_SYNC_CHANGES_PER_PAGE);
    ews_soap_text(&b, sync, b.ns_m, "MaxChangesReturned", max_changes);
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}

/* ---- times ------------------------------------------------------------------- */

static bool read_digits(const char **p, int count, int *out)
{
    int value = 0;
    for (int i = 0; i < count; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        value = value * 10 + ((*p)[i] - '0');
    }
    *p += count;
    *out = value;
    return true;
}

static bool expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t year, int month, int day)
{
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* An xs:dateTime as Exchange writes one ("2025-03-01T09:00:00Z", "...T00:00:00+01:00";
 * fractions of a second dropped). Without a zone the time is UTC, as EWS means it. */
typedef struct date_time {
    int64_t instant;                /* Unix seconds */
    int year, month, day;           /* as written, in the zone written */
    bool midnight;                  /* 00:00:00 as written */
} date_time;

static bool parse_date_time(const char *text, date_time *out)
{
    const char *p = text;
    int year, month, day, hour, minute, second, offset_hours = 0, offset_minutes = 0;
    int sign = 0;
    bool fraction = false;

    if (!read_digits(&p, 4, &year) || !expect(&p, '-') || !read_digits(&p, 2, &month) ||
        !expect(&p, '-') || !read_digits(&p, 2, &day) || !expect(&p, 'T') ||
        !read_digits(&p, 2, &hour) || !expect(&p, ':') || !read_digits(&p, 2, &minute) ||
        !expect(&p, ':') || !read_digits(&p, 2, &second))
        return false;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        for (; isdigit((unsigned char)*p); p++)
            fraction = fraction || *p != '0';
    }
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '-' ? -1 : 1;
        p++;
        if (!read_digits(&p, 2, &offset_hours) || !expect(&p, ':') ||
            !read_digits(&p, 2, &offset_minutes))
            return false;
        if (offset_minutes > 59 || offset_hours * 60 + offset_minutes > 14 * 60)
            return false;
    }
    if (*p != '\0' || year < 1 || month < 1 || month > 12 || day < 1 ||
        day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59)
        return false;
    int64_t local = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 +
                    second;
    out->instant = local - sign * (offset_hours * 3600 + offset_minutes * 60);
    out->year = year;
    out->month = month;
    out->day = day;
    out->midnight = hour == 0 && minute == 0 && second == 0 && !fraction;
    return true;
}

static bool utc_fields(int64_t seconds, struct tm *tm)
{
    time_t t = (time_t)seconds;
    return (int64_t)t == seconds && gmtime_r(&t, tm) != NULL && tm->tm_year >= 1 - 1900 &&
           tm->tm_year <= 9999 - 1900;
}

/* An appointment's Start as "YYYY-MM-DDTHH:MM:SSZ". */
static bool start_value(const char *text, char out[UTC_TIME_SIZE])
{
    date_time when;
    struct tm tm;

    if (text == NULL || !parse_date_time(text, &when) || !utc_fields(when.instant, &tm))
        return false;
    snprintf(out, UTC_TIME_SIZE, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return true;
}

/* A task's DueDate as the date "YYYY-MM-DD" (see DUE_DATE_ROUNDING_SECONDS). */
static bool due_value(const char *text, char out[UTC_TIME_SIZE])
{
    date_time when;
    struct tm tm;

    if (text == NULL || !parse_date_time(text, &when))
        return false;
    if (when.midnight) {
        snprintf(out, UTC_TIME_SIZE, "%04d-%02d-%02d", when.year, when.month, when.day);
        return true;
    }
    if (!utc_fields(when.instant + DUE_DATE_ROUNDING_SECONDS, &tm))
        return false;
    snprintf(out, UTC_TIME_SIZE, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
    return true;
}

/* ---- the page ---------------------------------------------------------------- */

void ews_sync_page_free(ews_sync_page *page)
{
    if (page == NULL)
        return;
    for (size_t i = 0; i < page->result.n_changes; i++) {
        free((char *)page->changes[i].item_id);
        free((char *)page->changes[i].change_key);
        free((char *)page->changes[i].new_value);
    }
    free(page->changes);
    free(page->sync_state);
    free(page);
}

/* Appends a change (room was made for two per entry); the strings are copied.
 * Returns 0, or -1 on out of memory. */
static int add_change(ews_sync_page *page, const char *what, const char *item_id,
                      const char *change_key, const char *new_value)
{
    delivery_change *change = &page->changes[page->result.n_changes];

    change->what = what;
    change->item_id = text_dup(item_id);
    change->change_key = text_dup(change_key);
    change->new_value = text_dup(new_value);
    page->result.n_changes++;       /* counted now, so the page's free releases it */
    if (change->item_id == NULL || (change_key != NULL && change->change_key == NULL) ||
        (new_value != NULL && change->new_value == NULL))
        return -1;
    return 0;
}

/* ---- items ------------------------------------------------------------------- */

/* Does the item carry our naming property (with a value)? */
static bool has_naming_property(const xmlNode *item, bool *oom)
{
    char *tag = ews_response_item_tag(item, oom);
    bool tagged = tag != NULL && tag[0] != '\0';
    free(tag);
    return tagged;
}

/* The t:ItemId's Id and ChangeKey; false when the id is missing or over the bound
 * (then nothing is reported for it). A change key over its bound becomes NULL. */
static bool read_item_id(const xmlNode *node, char **id, char **change_key, bool *oom)
{
    xmlNode *item_id = ews_xml_find_child(node, NS_TYPES, "ItemId");

    *id = ews_xml_attribute(item_id, "Id", oom);
    *change_key = ews_xml_attribute(item_id, "ChangeKey", oom);
    if (*change_key != NULL &&
        ((*change_key)[0] == '\0' || strlen(*change_key) > CHANGE_KEY_MAX_BYTES)) {
        free(*change_key);
        *change_key = NULL;
    }
    return *id != NULL && (*id)[0] != '\0' && strlen(*id) <= ITEM_ID_MAX_BYTES;
}

/* A t:Create or t:Update: what the item says now, when it is one of ours of the kind
 * synced. Returns 0, or -1 on out of memory. */
static int read_item_change(const xmlNode *item, outlook_item_kind kind, ews_sync_page *page)
{
    bool oom = false;
    char *id = NULL, *change_key = NULL, *when = NULL, *status = NULL;
    char value[UTC_TIME_SIZE];
    int rc = 0;

    if (!ews_xml_is_element(item, NS_TYPES, kind == OUTLOOK_TASK ? "Task" : "CalendarItem"))
        return 0;                   /* another item type: never one of ours */
    if (!has_naming_property(item, &oom) || !read_item_id(item, &id, &change_key, &oom))
        goto done;
    if (kind == OUTLOOK_APPOINTMENT) {
        when = ews_xml_text(ews_xml_find_child(item, NS_TYPES, "Start"), &oom);
        if (start_value(when, value))
            rc = add_change(page, "moved", id, change_key, value);
    } else {
        when = ews_xml_text(ews_xml_find_child(item, NS_TYPES, "DueDate"), &oom);
        status = ews_xml_text(ews_xml_find_child(item, NS_TYPES, "Status"), &oom);
        if (due_value(when, value))
            rc = add_change(page, "moved", id, change_key, value);
        if (rc == 0 && status != NULL && strcmp(status, "Completed") == 0)
            rc = add_change(page, "completed", id, change_key, NULL);
    }
done:
    free(id);
    free(change_key);
    free(when);
    free(status);
    return oom ? -1 : rc;
}

/* A t:Delete: the item is gone from the folder (deleted, or moved out of it). */
static int read_delete(const xmlNode *entry, ews_sync_page *page)
{
    bool oom = false;
    char *id = NULL, *change_key = NULL;
    int rc = 0;

    if (read_item_id(entry, &id, &change_key, &oom) && !oom)
        rc = add_change(page, "deleted", id, NULL, NULL);
    free(id);
    free(change_key);
    return oom ? -1 : rc;
}

static int read_changes(const xmlNode *changes, outlook_item_kind kind, ews_sync_page *page,
                        char *err, size_t errlen)
{
    size_t entries = 0;

    for (xmlNode *c = ews_xml_first_child(changes); c != NULL; c = ews_xml_next_element(c))
        entries++;
    if (entries > EWS_SYNC_MAX_ENTRIES) {
        text_set_error(err, errlen, "SyncFolderItems answer holds %zu changes, more than "
                       "Exchange ever sends (%d)", entries, EWS_SYNC_MAX_ENTRIES);
        return -1;
    }
    if (entries == 0)
        return 0;
    /* At most two changes an entry: a task moved and completed. */
    page->changes = calloc(2 * entries, sizeof *page->changes);
    if (page->changes == NULL)
        goto out_of_memory;
    page->result.changes = page->changes;

    for (xmlNode *c = ews_xml_first_child(changes); c != NULL; c = ews_xml_next_element(c)) {
        int rc = 0;
        if (ews_xml_is_element(c, NS_TYPES, "Create") || ews_xml_is_element(c, NS_TYPES, "Update"))
            rc = read_item_change(ews_xml_first_child(c), kind, page);
        else if (ews_xml_is_element(c, NS_TYPES, "Delete"))
            rc = read_delete(c, page);
        /* ReadFlagChange, and anything newer: nothing we follow. */
        if (rc != 0)
            goto out_of_memory;
    }
    return 0;

out_of_memory:
    text_set_error(err, errlen, "out of memory while reading the SyncFolderItems answer");
    return -1;
}

/* ---- the answer -------------------------------------------------------------- */

/* soap:Body/m:SyncFolderItemsResponse/m:ResponseMessages/m:SyncFolderItemsResponseMessage */
static xmlNode *find_sync_message(const xmlDoc *doc, char *err, size_t errlen)
{
    xmlNode *body = ews_xml_find_child(xmlDocGetRootElement(doc), NS_SOAP, "Body");
    xmlNode *payload = ews_xml_first_child(body);
    char quoted[64];

    if (!ews_xml_is_element(payload, NS_MESSAGES, "SyncFolderItemsResponse")) {
        ews_xml_quote(payload != NULL ? (const char *)payload->name : "nothing", quoted,
                      sizeof quoted);
        text_set_error(err, errlen, "SOAP Body holds %s, not a SyncFolderItemsResponse", quoted);
        return NULL;
    }
    xmlNode *list = ews_xml_find_child(payload, NS_MESSAGES, "ResponseMessages");
    xmlNode *message = ews_xml_first_child(list);
    if (!ews_xml_is_element(message, NS_MESSAGES, "SyncFolderItemsResponseMessage")) {
        text_set_error(err, errlen, "SyncFolderItemsResponse without a "
                                    "SyncFolderItemsResponseMessage");
        return NULL;
    }
    return message;
}

/* xs:boolean; absent counts as true (the last page), so a terse answer ends paging. */
static int read_last_in_range(const xmlNode *message, bool *last, bool *oom)
{
    char *text = ews_xml_text(ews_xml_find_child(message, NS_MESSAGES,
                                                 "IncludesLastItemInRange"), oom);
    int rc = 0;

    if (text == NULL || strcmp(text, "true") == 0 || strcmp(text, "1") == 0)
        *last = true;
    else if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0)
        *last = false;
    else
        rc = -1;
    free(text);
    return rc;
}

static int read_success(const xmlDoc *doc, outlook_item_kind kind, ews_sync_page *page,
                        char *err, size_t errlen)
{
    xmlNode *message = find_sync_message(doc, err, errlen);
    bool oom = false, last = true;

    if (message == NULL)
        return -1;
    page->sync_state = ews_xml_text(ews_xml_find_child(message, NS_MESSAGES, "SyncState"),
                                    &oom);
    if (oom)
        goto out_of_memory;
    /* Without a state to go on from, the page's changes could never be stored with it. */
    if (!ews_sync_state_ok(page->sync_state)) {
        text_set_error(err, errlen, "SyncFolderItems answer has %s SyncState",
                       page->sync_state == NULL || page->sync_state[0] == '\0'
                           ? "no" : "an unusable (too long, or not base64)");
        return -1;
    }
    if (read_last_in_range(message, &last, &oom) != 0) {
        text_set_error(err, errlen, "SyncFolderItems answer has an invalid "
                                    "IncludesLastItemInRange");
        return -1;
    }
    if (oom)
        goto out_of_memory;
    xmlNode *changes = ews_xml_find_child(message, NS_MESSAGES, "Changes");
    if (changes != NULL && read_changes(changes, kind, page, err, errlen) != 0)
        return -1;

    snprintf(page->code, sizeof page->code, "NoError");
    page->result.result = (delivery_result){.outcome = DELIVERY_OK, .retry_after_ms = -1,
                                            .code = page->code, .reason = "ok"};
    page->result.new_position = page->sync_state;
    page->result.more = !last;
    return 0;

out_of_memory:
    text_set_error(err, errlen, "out of memory while reading the SyncFolderItems answer");
    return -1;
}

static bool is_invalid_sync_state(const char *code)
{
    return code != NULL && strcmp(code, "ErrorInvalidSyncStateData") == 0;
}

/* An error message or fault, classified as ews_outcome classifies every other call's;
 * a SyncState Exchange cannot resume from asks for a read afresh instead. */
static void set_failure(ews_sync_page *page, const char *source, const char *code,
                        const char *inner_code, ews_code meaning, const char *text,
                        int64_t back_off_ms)
{
    delivery_result *r = &page->result.result;

    snprintf(page->code, sizeof page->code, "%s", code);
    snprintf(page->reason, sizeof page->reason, "%s %s: %s", source, code,
             text != NULL ? text : "(no text)");
    r->code = page->code;
    r->reason = page->reason;
    r->outcome = ews_code_disposition(meaning) == EWS_DISPOSITION_PERMANENT
                     ? DELIVERY_PERMANENT : DELIVERY_TRANSIENT;
    r->retry_after_ms = back_off_ms >= 0 ? back_off_ms : -1;
    if (meaning == EWS_ERROR_SERVER_BUSY)
        r->throttle = DELIVERY_THROTTLE_MAILBOX;
    if (is_invalid_sync_state(code) || is_invalid_sync_state(inner_code)) {
        page->result.position_invalid = true;
        r->outcome = DELIVERY_PERMANENT;    /* that position never works again */
    }
}

int ews_sync_parse(const char *body, size_t len, outlook_item_kind kind, ews_sync_page **out,
                   char *err, size_t errlen)
{
    ews_response *response = NULL;
    ews_sync_page *page = NULL;
    xmlDoc *doc = NULL;
    int rc = -1;

    if (out == NULL || !kind_ok(kind)) {
        text_set_error(err, errlen, "bad arguments to ews_sync_parse");
        return -1;
    }
    *out = NULL;
    if (ews_response_parse(body, len, &response, err, errlen) != 0)
        return -1;
    page = calloc(1, sizeof *page);
    if (page == NULL) {
        text_set_error(err, errlen, "out of memory while reading the SyncFolderItems answer");
        goto done;
    }
    if (response->fault_code == NULL && response->n_messages == 0) {
        text_set_error(err, errlen, "SyncFolderItems answer without a response message");
        goto done;
    }
    if (response->fault_code != NULL) {
        set_failure(page, "Exchange fault", response->fault_code, response->fault_inner_code,
                    response->fault_ews_code, response->fault_string,
                    response->fault_back_off_ms);
    } else if (response->messages[0].response_class != EWS_CLASS_SUCCESS) {
        /* A Warning, too, is a request "not processed": no state to go on from. */
        const ews_response_message *m = &response->messages[0];
        set_failure(page, "Exchange answered", m->response_code, m->inner_response_code,
                    m->code, m->message_text, m->back_off_ms);
    } else {
        doc = ews_xml_parse(body, len, err, errlen);
        if (doc == NULL || read_success(doc, kind, page, err, errlen) != 0)
            goto done;
    }
    *out = page;
    page = NULL;
    rc = 0;

done:
    xmlFreeDoc(doc);
    ews_sync_page_free(page);
    ews_response_free(response);
    return rc;
}
