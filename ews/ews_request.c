/* ews_request — EWS SOAP 1.1 request envelopes, built with the libxml2 tree API.
 *
 * Every envelope has the shape
 *
 *   soap:Envelope (xmlns:soap, xmlns:t, xmlns:m declared once, on the root)
 *     soap:Header  t:RequestServerVersion, [t:ExchangeImpersonation], [t:TimeZoneContext]
 *     soap:Body    m:CreateItem | m:UpdateItem | m:DeleteItem | m:FindItem | m:GetFolder
 *
 * and validates against Microsoft's messages.xsd/types.xsd (tests/unit/test_ews_request
 * checks every builder against the schema). The schema's item types are strict
 * xs:sequences, so the order of the add_* calls below is the order of the schema:
 * ItemType fields (Subject ... ExtendedProperty) first, then CalendarItemType or
 * TaskType fields.
 *
 * The tree API escapes text and attribute values itself; this file never pastes
 * strings together. What it does check is that every string is valid UTF-8 made of
 * characters XML 1.0 allows: libxml2 would otherwise serialise a control character as
 * "&#1;", which no XML parser (Exchange's included) accepts. */
#include "ews/ews_request.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxml/tree.h>

#include "ews/ews_soap.h"

/* types.xsd, ReminderMinutesBeforeStartType: 0 .. 2629800 (five years). */
#define REMINDER_MINUTES_MAX 2629800

/* "YYYY-MM-DDTHH:MM:SSZ" plus NUL, with room to spare. */
#define UTC_TIME_SIZE 32

/* The tag is "contactlog:<int64>:appointment": well under this. */
#define TAG_SIZE 64

/* ---- input checks ---------------------------------------------------------- */

/* Is s valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF) consisting only of
 * XML 1.0 Chars (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF])? */
static bool is_xml_text(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != '\0') {
        uint32_t cp;
        int extra;

        if (p[0] < 0x80) {
            cp = p[0];
            extra = 0;
        } else if ((p[0] & 0xE0) == 0xC0) {
            cp = p[0] & 0x1Fu;
            extra = 1;
        } else if ((p[0] & 0xF0) == 0xE0) {
            cp = p[0] & 0x0Fu;
            extra = 2;
        } else if ((p[0] & 0xF8) == 0xF0) {
            cp = p[0] & 0x07u;
            extra = 3;
        } else {
            return false;
        }
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xC0) != 0x80)      /* also stops at the NUL terminator */
                return false;
            cp = (cp << 6) | (p[i] & 0x3Fu);
        }
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
            (extra == 3 && cp < 0x10000))
            return false;                   /* overlong encoding */
        if (cp < 0x20 && cp != 0x9 && cp != 0xA && cp != 0xD)
            return false;
        if ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF || cp > 0x10FFFF)
            return false;
        p += extra + 1;
    }
    return true;
}

static bool is_nonempty_xml_text(const char *s)
{
    return s != NULL && s[0] != '\0' && is_xml_text(s);
}

/* NULL strings in an item mean "empty". */
static const char *or_empty(const char *s)
{
    return s != NULL ? s : "";
}

static bool options_ok(const ews_request_options *opt)
{
    return opt != NULL && is_nonempty_xml_text(opt->server_version) &&
           is_nonempty_xml_text(opt->mailbox);
}

static bool kind_ok(outlook_item_kind kind)
{
    return kind == OUTLOOK_APPOINTMENT || kind == OUTLOOK_TASK;
}

/* xs:dateTime in UTC from Unix seconds. Years outside 1..9999 have no four-digit
 * form, so they are refused rather than sent malformed. */
static bool format_utc(int64_t seconds, char out[UTC_TIME_SIZE])
{
    time_t t = (time_t)seconds;
    struct tm tm;

    if ((int64_t)t != seconds || gmtime_r(&t, &tm) == NULL)
        return false;
    if (tm.tm_year < 1 - 1900 || tm.tm_year > 9999 - 1900)
        return false;
    int n = snprintf(out, UTC_TIME_SIZE, "%04d-%02d-%02dT%02d:%02d:%02dZ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
    return n > 0 && n < UTC_TIME_SIZE;
}

static const char *importance_name(outlook_importance importance)
{
    switch (importance) {
    case OUTLOOK_IMPORTANCE_LOW: return "Low";
    case OUTLOOK_IMPORTANCE_NORMAL: return "Normal";
    case OUTLOOK_IMPORTANCE_HIGH: return "High";
    }
    return NULL;
}

/* The zone a task's due day was taken in, sent as the request's TimeZoneContext;
 * NULL: UTC, no header. */
static const char *due_zone(const outlook_item *item)
{
    return item->kind == OUTLOOK_TASK && item->has_due_day && item->time_zone != NULL &&
                   item->time_zone[0] != '\0'
               ? item->time_zone : NULL;
}

/* A task's DueDate: the start of its due day in its zone, with that zone's offset
 * ("2025-03-01T00:00:00+01:00"); without a day from the caller, the UTC date of start
 * ("...T00:00:00Z"). Exchange turns a task's DueDate into a date in the request's
 * TimeZoneContext, which is how the EWS Managed API and Outlook send one too: local
 * midnight plus the zone. xs:dateTime offsets are whole minutes within 14 hours; a
 * sub-minute offset (local mean time, before 1900) is rounded down, which puts the
 * written instant less than a minute into the day, never out of it. */
static bool format_due_date(const outlook_item *item, char out[UTC_TIME_SIZE])
{
    int64_t day_start = item->due_day_start, offset = item->due_utc_offset;
    struct tm tm;

    if (!item->has_due_day) {
        day_start = (item->start / 86400 - (item->start % 86400 < 0)) * 86400;
        offset = 0;
    }
    if (offset < -14 * 3600 || offset > 14 * 3600)
        return false;
    int64_t minutes = offset / 60 - (offset % 60 < 0);
    time_t wall = (time_t)(day_start + offset);
    if ((int64_t)wall != day_start + offset || gmtime_r(&wall, &tm) == NULL)
        return false;
    if (tm.tm_year < 1 - 1900 || tm.tm_year > 9999 - 1900)
        return false;
    char zone[8] = "Z";
    if (minutes != 0)
        snprintf(zone, sizeof zone, "%c%02d:%02d", minutes < 0 ? '-' : '+',
                 (int)(llabs(minutes) / 60), (int)(llabs(minutes) % 60));
    int n = snprintf(out, UTC_TIME_SIZE, "%04d-%02d-%02dT%02d:%02d:%02d%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, zone);
    return n > 0 && n < UTC_TIME_SIZE;
}

static bool has_time_zone(const outlook_item *item)
{
    return item->kind == OUTLOOK_APPOINTMENT && item->time_zone != NULL &&
           item->time_zone[0] != '\0';
}

static bool item_ok(const outlook_item *item)
{
    char when[UTC_TIME_SIZE];

    if (item == NULL || !kind_ok(item->kind) || importance_name(item->importance) == NULL)
        return false;
    if (!is_xml_text(or_empty(item->subject)) || !is_xml_text(or_empty(item->body_html)))
        return false;
    if (!format_utc(item->start, when))
        return false;
    if (item->kind == OUTLOOK_APPOINTMENT) {
        if (!format_utc(item->end, when))
            return false;
        if (item->reminder_minutes < 0 || item->reminder_minutes > REMINDER_MINUTES_MAX)
            return false;
        if (has_time_zone(item) && !is_xml_text(item->time_zone))
            return false;
    } else {
        if (!format_due_date(item, when))
            return false;
        if (due_zone(item) != NULL && !is_xml_text(item->time_zone))
            return false;
    }
    return true;
}

static bool ref_ok(const outlook_item_ref *ref)
{
    return ref != NULL && is_nonempty_xml_text(ref->item_id) &&
           (ref->change_key == NULL || is_xml_text(ref->change_key));
}

/* ---- elements -------------------------------------------------------------- */

static void add_naming_property(ews_soap *b, xmlNodePtr item_node, const outlook_item *item)
{
    char tag[TAG_SIZE];
    int n = outlook_item_tag(tag, sizeof tag, item->log_id, item->kind);

    if (n < 0 || (size_t)n >= sizeof tag) {
        b->failed = true;
        return;
    }
    xmlNodePtr property = ews_soap_element(b, item_node, b->ns_t, "ExtendedProperty");
    ews_soap_naming_field_uri(b, property);
    ews_soap_text(b, property, b->ns_t, "Value", tag);
}

static void add_body(ews_soap *b, xmlNodePtr parent, const outlook_item *item)
{
    xmlNodePtr body = ews_soap_text(b, parent, b->ns_t, "Body", or_empty(item->body_html));
    ews_soap_attribute(b, body, "BodyType", "HTML");
}

static void add_time(ews_soap *b, xmlNodePtr parent, const char *name, int64_t seconds)
{
    char when[UTC_TIME_SIZE];

    if (!format_utc(seconds, when)) {       /* item_ok() checked; defensive */
        b->failed = true;
        return;
    }
    ews_soap_text(b, parent, b->ns_t, name, when);
}

static void add_due_date(ews_soap *b, xmlNodePtr parent, const outlook_item *item)
{
    char when[UTC_TIME_SIZE];

    if (!format_due_date(item, when)) {     /* item_ok() checked; defensive */
        b->failed = true;
        return;
    }
    ews_soap_text(b, parent, b->ns_t, "DueDate", when);
}

static void add_reminder_minutes(ews_soap *b, xmlNodePtr parent, int minutes)
{
    char text[16];

    snprintf(text, sizeof text, "%d", minutes);
    ews_soap_text(b, parent, b->ns_t, "ReminderMinutesBeforeStart", text);
}

static void add_time_zone(ews_soap *b, xmlNodePtr parent, const char *name,
                          const char *windows_id)
{
    /* TimeZoneDefinitionType: an Id alone names one of the server's zones. */
    xmlNodePtr zone = ews_soap_element(b, parent, b->ns_t, name);
    ews_soap_attribute(b, zone, "Id", windows_id);
}

static const char *task_status(const outlook_item *item)
{
    return item->task_completed ? "Completed" : "NotStarted";
}

/* t:CalendarItem in types.xsd order: ItemType fields, then CalendarItemType fields
 * (Start, End, LegacyFreeBusyStatus, ... StartTimeZone, EndTimeZone). */
static void add_calendar_item(ews_soap *b, xmlNodePtr items, const outlook_item *item)
{
    xmlNodePtr node = ews_soap_element(b, items, b->ns_t, "CalendarItem");

    ews_soap_text(b, node, b->ns_t, "Subject", or_empty(item->subject));
    add_body(b, node, item);
    ews_soap_text(b, node, b->ns_t, "Importance", importance_name(item->importance));
    ews_soap_text(b, node, b->ns_t, "ReminderIsSet", "true");
    add_reminder_minutes(b, node, item->reminder_minutes);
    add_naming_property(b, node, item);
    add_time(b, node, "Start", item->start);
    add_time(b, node, "End", item->end);
    ews_soap_text(b, node, b->ns_t, "LegacyFreeBusyStatus", "Busy");
    if (has_time_zone(item)) {
        add_time_zone(b, node, "StartTimeZone", item->time_zone);
        add_time_zone(b, node, "EndTimeZone", item->time_zone);
    }
}

/* t:Task in types.xsd order: ItemType fields, then TaskType's DueDate ... Status. */
static void add_task(ews_soap *b, xmlNodePtr items, const outlook_item *item)
{
    xmlNodePtr node = ews_soap_element(b, items, b->ns_t, "Task");

    ews_soap_text(b, node, b->ns_t, "Subject", or_empty(item->subject));
    add_body(b, node, item);
    ews_soap_text(b, node, b->ns_t, "Importance", importance_name(item->importance));
    add_time(b, node, "ReminderDueBy", item->start);
    ews_soap_text(b, node, b->ns_t, "ReminderIsSet", "true");
    add_naming_property(b, node, item);
    add_due_date(b, node, item);
    ews_soap_text(b, node, b->ns_t, "Status", task_status(item));
}

static void add_item_id(ews_soap *b, xmlNodePtr parent, const outlook_item_ref *ref)
{
    xmlNodePtr id = ews_soap_element(b, parent, b->ns_t, "ItemId");
    ews_soap_attribute(b, id, "Id", ref->item_id);
    if (ref->change_key != NULL && ref->change_key[0] != '\0')
        ews_soap_attribute(b, id, "ChangeKey", ref->change_key);
}

/* ---- CreateItem ------------------------------------------------------------ */

char *ews_request_create_items(const ews_request_options *opt, const outlook_item *items,
                               size_t n, size_t *len)
{
    ews_soap b;

    if (!options_ok(opt) || items == NULL || n == 0 || len == NULL)
        return NULL;
    /* One CreateItem goes to one folder, so every item must be of the same kind. */
    for (size_t i = 0; i < n; i++)
        if (!item_ok(&items[i]) || items[i].kind != items[0].kind)
            return NULL;

    /* One header serves the whole request: the first task's zone. Creates are batched
     * per mailbox, so the tasks are normally in one employee's zone; a task in another
     * zone keeps its own midnight and offset, read in the first one's context. */
    outlook_item_kind kind = items[0].kind;
    if (!ews_soap_start(&b, opt, due_zone(&items[0])))
        goto fail;

    xmlNodePtr create = ews_soap_element(&b, b.body, b.ns_m, "CreateItem");
    if (kind == OUTLOOK_APPOINTMENT)
        ews_soap_attribute(&b, create, "SendMeetingInvitations", "SendToNone");
    else
        ews_soap_attribute(&b, create, "MessageDisposition", "SaveOnly");

    xmlNodePtr folder = ews_soap_element(&b, create, b.ns_m, "SavedItemFolderId");
    ews_soap_folder_id(&b, folder, opt, ews_soap_folder_name(kind));

    xmlNodePtr list = ews_soap_element(&b, create, b.ns_m, "Items");
    for (size_t i = 0; i < n && !b.failed; i++) {
        if (kind == OUTLOOK_APPOINTMENT)
            add_calendar_item(&b, list, &items[i]);
        else
            add_task(&b, list, &items[i]);
    }
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}

/* ---- UpdateItem ------------------------------------------------------------ */

/* <t:SetItemField><t:FieldURI FieldURI=uri/><t:CalendarItem|Task>VALUE</...></...>
 * Returns the CalendarItem/Task node for the caller to put the one field into. */
static xmlNodePtr add_set_field(ews_soap *b, xmlNodePtr updates, outlook_item_kind kind,
                                const char *field_uri)
{
    xmlNodePtr set = ews_soap_element(b, updates, b->ns_t, "SetItemField");
    xmlNodePtr uri = ews_soap_element(b, set, b->ns_t, "FieldURI");
    ews_soap_attribute(b, uri, "FieldURI", field_uri);
    return ews_soap_element(b, set, b->ns_t, kind == OUTLOOK_TASK ? "Task" : "CalendarItem");
}

static void add_set_text_field(ews_soap *b, xmlNodePtr updates, outlook_item_kind kind,
                               const char *field_uri, const char *element, const char *text)
{
    xmlNodePtr holder = add_set_field(b, updates, kind, field_uri);
    ews_soap_text(b, holder, b->ns_t, element, text);
}

static void add_set_time_field(ews_soap *b, xmlNodePtr updates, outlook_item_kind kind,
                               const char *field_uri, const char *element, int64_t seconds)
{
    xmlNodePtr holder = add_set_field(b, updates, kind, field_uri);
    add_time(b, holder, element, seconds);
}

/* Every field we own, so that an update makes the item match the log whatever the
 * user did to it in Outlook. The naming property is left alone: it never changes. */
static void add_updates(ews_soap *b, xmlNodePtr updates, const outlook_item *item)
{
    outlook_item_kind kind = item->kind;

    add_set_text_field(b, updates, kind, "item:Subject", "Subject", or_empty(item->subject));
    add_body(b, add_set_field(b, updates, kind, "item:Body"), item);
    add_set_text_field(b, updates, kind, "item:Importance", "Importance",
                       importance_name(item->importance));

    if (kind == OUTLOOK_APPOINTMENT) {
        add_set_text_field(b, updates, kind, "item:ReminderIsSet", "ReminderIsSet", "true");
        add_reminder_minutes(b, add_set_field(b, updates, kind, "item:ReminderMinutesBeforeStart"),
                             item->reminder_minutes);
        /* Time zones first: Exchange applies the updates in order, and Start/End are
         * then interpreted with the zones already in place. */
        if (has_time_zone(item)) {
            add_time_zone(b, add_set_field(b, updates, kind, "calendar:StartTimeZone"),
                          "StartTimeZone", item->time_zone);
            add_time_zone(b, add_set_field(b, updates, kind, "calendar:EndTimeZone"),
                          "EndTimeZone", item->time_zone);
        }
        add_set_time_field(b, updates, kind, "calendar:Start", "Start", item->start);
        add_set_time_field(b, updates, kind, "calendar:End", "End", item->end);
        add_set_text_field(b, updates, kind, "calendar:LegacyFreeBusyStatus",
                           "LegacyFreeBusyStatus", "Busy");
    } else {
        add_set_time_field(b, updates, kind, "item:ReminderDueBy", "ReminderDueBy", item->start);
        add_set_text_field(b, updates, kind, "item:ReminderIsSet", "ReminderIsSet", "true");
        add_due_date(b, add_set_field(b, updates, kind, "task:DueDate"), item);
        add_set_text_field(b, updates, kind, "task:Status", "Status", task_status(item));
    }
}

char *ews_request_update_item(const ews_request_options *opt, const outlook_item_ref *ref,
                              const outlook_item *item, size_t *len)
{
    ews_soap b;

    if (!options_ok(opt) || !ref_ok(ref) || !item_ok(item) || len == NULL)
        return NULL;
    if (!ews_soap_start(&b, opt, due_zone(item)))
        goto fail;

    /* The item id already names the mailbox, so no folder (and no t:Mailbox) here. */
    xmlNodePtr update = ews_soap_element(&b, b.body, b.ns_m, "UpdateItem");
    ews_soap_attribute(&b, update, "ConflictResolution", "AlwaysOverwrite");
    ews_soap_attribute(&b, update, "MessageDisposition", "SaveOnly");
    if (item->kind == OUTLOOK_APPOINTMENT)
        ews_soap_attribute(&b, update, "SendMeetingInvitationsOrCancellations", "SendToNone");

    xmlNodePtr changes = ews_soap_element(&b, update, b.ns_m, "ItemChanges");
    xmlNodePtr change = ews_soap_element(&b, changes, b.ns_t, "ItemChange");
    add_item_id(&b, change, ref);
    add_updates(&b, ews_soap_element(&b, change, b.ns_t, "Updates"), item);
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}

/* ---- DeleteItem ------------------------------------------------------------ */

char *ews_request_delete_item(const ews_request_options *opt, outlook_item_kind kind,
                              const outlook_item_ref *ref, size_t *len)
{
    ews_soap b;

    if (!options_ok(opt) || !kind_ok(kind) || !ref_ok(ref) || len == NULL)
        return NULL;
    if (!ews_soap_start(&b, opt, NULL))
        goto fail;

    /* Exchange demands SendMeetingCancellations for calendar items and
     * AffectedTaskOccurrences for tasks (schema-optional, required at run time);
     * each is ignored for the other kind, so both always go out: a delete never
     * fails because the stored kind and the real item disagree. */
    xmlNodePtr del = ews_soap_element(&b, b.body, b.ns_m, "DeleteItem");
    ews_soap_attribute(&b, del, "DeleteType", "MoveToDeletedItems");
    ews_soap_attribute(&b, del, "SendMeetingCancellations", "SendToNone");
    ews_soap_attribute(&b, del, "AffectedTaskOccurrences", "AllOccurrences");

    xmlNodePtr ids = ews_soap_element(&b, del, b.ns_m, "ItemIds");
    add_item_id(&b, ids, ref);
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}

/* ---- FindItem -------------------------------------------------------------- */

char *ews_request_find_item(const ews_request_options *opt, outlook_item_kind kind,
                            int64_t log_id, size_t *len)
{
    ews_soap b;
    char tag[TAG_SIZE];

    if (!options_ok(opt) || !kind_ok(kind) || len == NULL)
        return NULL;
    int n = outlook_item_tag(tag, sizeof tag, log_id, kind);
    if (n < 0 || (size_t)n >= sizeof tag)
        return NULL;
    if (!ews_soap_start(&b, opt, NULL))
        goto fail;

    xmlNodePtr find = ews_soap_element(&b, b.body, b.ns_m, "FindItem");
    ews_soap_attribute(&b, find, "Traversal", "Shallow");

    /* IdOnly plus our property: the answer carries ids and the tag, nothing else. */
    xmlNodePtr shape = ews_soap_element(&b, find, b.ns_m, "ItemShape");
    ews_soap_text(&b, shape, b.ns_t, "BaseShape", "IdOnly");
    ews_soap_naming_field_uri(&b, ews_soap_element(&b, shape, b.ns_t, "AdditionalProperties"));

    /* More than one hit means an earlier duplicate; ten is plenty to clean those up. */
    xmlNodePtr view = ews_soap_element(&b, find, b.ns_m, "IndexedPageItemView");
    ews_soap_attribute(&b, view, "MaxEntriesReturned", "10");
    ews_soap_attribute(&b, view, "Offset", "0");
    ews_soap_attribute(&b, view, "BasePoint", "Beginning");

    xmlNodePtr restriction = ews_soap_element(&b, find, b.ns_m, "Restriction");
    xmlNodePtr equal = ews_soap_element(&b, restriction, b.ns_t, "IsEqualTo");
    ews_soap_naming_field_uri(&b, equal);
    xmlNodePtr operand = ews_soap_element(&b, equal, b.ns_t, "FieldURIOrConstant");
    xmlNodePtr constant = ews_soap_element(&b, operand, b.ns_t, "Constant");
    ews_soap_attribute(&b, constant, "Value", tag);

    xmlNodePtr parents = ews_soap_element(&b, find, b.ns_m, "ParentFolderIds");
    ews_soap_folder_id(&b, parents, opt, ews_soap_folder_name(kind));
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}

/* ---- GetFolder ------------------------------------------------------------- */

char *ews_request_get_folder(const ews_request_options *opt, size_t *len)
{
    ews_soap b;

    if (!options_ok(opt) || len == NULL)
        return NULL;
    if (!ews_soap_start(&b, opt, NULL))
        goto fail;

    xmlNodePtr get = ews_soap_element(&b, b.body, b.ns_m, "GetFolder");
    xmlNodePtr shape = ews_soap_element(&b, get, b.ns_m, "FolderShape");
    ews_soap_text(&b, shape, b.ns_t, "BaseShape", "IdOnly");
    xmlNodePtr ids = ews_soap_element(&b, get, b.ns_m, "FolderIds");
    ews_soap_folder_id(&b, ids, opt, "calendar");
    return ews_soap_finish(&b, len);

fail:
    ews_soap_abandon(&b);
    return NULL;
}
