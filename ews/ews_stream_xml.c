/* ews_stream_xml — see ews_stream_xml.h. Requests are built with the libxml2 tree API
 * (ews_soap); server XML is read with the hardened parse of ews_xml, by namespace URI
 * and local name. Real servers put m:Notification and m:SubscriptionId where the schema
 * says t: (ews_sync.py's docstring), so both are accepted there. */
#include "ews/ews_stream_xml.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/xmlstring.h>

#include "daemon/text.h"
#include "ews/ews_response.h"
#include "ews/ews_soap.h"
#include "ews/ews_xml.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"

/* As ews_response: a code from the server is one line of at most this. */
#define SERVER_CODE_MAX_BYTES 63
/* A hostile envelope cannot make us keep more entries than this. */
#define ENVELOPE_ENTRIES_MAX 10000

/* ---- requests ------------------------------------------------------------------ */

/* Valid UTF-8 without control characters: text libxml2 writes as it is. */
static bool is_plain_text(const char *s)
{
    if (s == NULL || s[0] == '\0' || !xmlCheckUTF8((const xmlChar *)s))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p == 0x7F)
            return false;
    return true;
}

static bool options_ok(const ews_request_options *opt)
{
    return opt != NULL && is_plain_text(opt->server_version) &&
           (!opt->impersonation || is_plain_text(opt->mailbox));
}

char *ews_stream_request_subscribe(const ews_request_options *opt, size_t *len)
{
    static const char *const event_types[] = {"CreatedEvent", "ModifiedEvent",
                                              "DeletedEvent", "MovedEvent"};
    ews_soap b;

    if (!options_ok(opt) || !is_plain_text(opt->mailbox))
        return NULL;
    if (!ews_soap_start(&b, opt, NULL)) {
        ews_soap_abandon(&b);
        return NULL;
    }
    xmlNodePtr subscribe = ews_soap_element(&b, b.body, b.ns_m, "Subscribe");
    xmlNodePtr request = ews_soap_element(&b, subscribe, b.ns_m, "StreamingSubscriptionRequest");
    xmlNodePtr folders = ews_soap_element(&b, request, b.ns_t, "FolderIds");
    ews_soap_folder_id(&b, folders, opt, "calendar");
    ews_soap_folder_id(&b, folders, opt, "tasks");
    xmlNodePtr types = ews_soap_element(&b, request, b.ns_t, "EventTypes");
    for (size_t i = 0; i < sizeof event_types / sizeof event_types[0]; i++)
        ews_soap_text(&b, types, b.ns_t, "EventType", event_types[i]);
    return ews_soap_finish(&b, len);
}

char *ews_stream_request_unsubscribe(const ews_request_options *opt,
                                     const char *subscription_id, size_t *len)
{
    ews_soap b;

    if (!options_ok(opt) || subscription_id == NULL ||
        !ews_stream_token_ok(subscription_id, strlen(subscription_id)))
        return NULL;
    if (!ews_soap_start(&b, opt, NULL)) {
        ews_soap_abandon(&b);
        return NULL;
    }
    xmlNodePtr unsubscribe = ews_soap_element(&b, b.body, b.ns_m, "Unsubscribe");
    ews_soap_text(&b, unsubscribe, b.ns_m, "SubscriptionId", subscription_id);
    return ews_soap_finish(&b, len);
}

char *ews_stream_request_get_events(const ews_request_options *opt,
                                    const char *const *subscription_ids, size_t n,
                                    int timeout_minutes, size_t *len)
{
    ews_soap b;
    char minutes[16];

    if (!options_ok(opt) || n == 0 || timeout_minutes < 1 ||
        timeout_minutes > EWS_STREAM_CONNECTION_TIMEOUT_MAX)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (subscription_ids[i] == NULL ||
            !ews_stream_token_ok(subscription_ids[i], strlen(subscription_ids[i])))
            return NULL;
    if (!ews_soap_start(&b, opt, NULL)) {
        ews_soap_abandon(&b);
        return NULL;
    }
    xmlNodePtr get = ews_soap_element(&b, b.body, b.ns_m, "GetStreamingEvents");
    xmlNodePtr ids = ews_soap_element(&b, get, b.ns_m, "SubscriptionIds");
    for (size_t i = 0; i < n; i++)
        ews_soap_text(&b, ids, b.ns_t, "SubscriptionId", subscription_ids[i]);
    snprintf(minutes, sizeof minutes, "%d", timeout_minutes);
    ews_soap_text(&b, get, b.ns_m, "ConnectionTimeout", minutes);
    return ews_soap_finish(&b, len);
}

/* ---- answers ------------------------------------------------------------------- */

bool ews_stream_token_ok(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > EWS_STREAM_TOKEN_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7F || c == ';' || c == ',' || c == '"' || c == '\\')
            return false;
    }
    return true;
}

static bool is_ews_element(const xmlNode *node, const char *local)
{
    return ews_xml_is_element(node, NS_MESSAGES, local) ||
           ews_xml_is_element(node, NS_TYPES, local);
}

/* The child of Body after checking the envelope around it, or NULL with err set. */
static xmlNode *body_payload(xmlDoc *doc, char *err, size_t errlen)
{
    xmlNode *root = xmlDocGetRootElement(doc);
    if (!ews_xml_is_element(root, NS_SOAP, "Envelope")) {
        text_set_error(err, errlen, "not a SOAP 1.1 Envelope");
        return NULL;
    }
    xmlNode *payload = ews_xml_first_child(ews_xml_find_child(root, NS_SOAP, "Body"));
    if (payload == NULL)
        text_set_error(err, errlen, "no SOAP Body, or an empty one");
    return payload;
}

/* A subscription id from the server text of node (NULL when unusable). */
static char *token_of(const xmlNode *node, bool *oom)
{
    char *text = ews_xml_text(node, oom);
    if (text != NULL && !ews_stream_token_ok(text, strlen(text))) {
        free(text);
        return NULL;
    }
    return text;
}

char *ews_stream_subscription_id(const char *xml, size_t len, char *err, size_t errlen)
{
    char *id = NULL;
    bool oom = false;

    if (xml == NULL || len == 0 || len > EWS_RESPONSE_MAX_BYTES) {
        text_set_error(err, errlen, "empty or oversized Subscribe answer");
        return NULL;
    }
    xmlDoc *doc = ews_xml_parse(xml, len, err, errlen);
    if (doc == NULL)
        return NULL;
    xmlNode *payload = body_payload(doc, err, errlen);
    if (payload != NULL && !ews_xml_is_element(payload, NS_MESSAGES, "SubscribeResponse")) {
        text_set_error(err, errlen, "not a SubscribeResponse");
        payload = NULL;
    }
    xmlNode *list = ews_xml_find_child(payload, NS_MESSAGES, "ResponseMessages");
    xmlNode *message = ews_xml_find_child(list, NS_MESSAGES, "SubscribeResponseMessage");
    if (payload != NULL) {
        id = token_of(ews_xml_find_child(message, NS_MESSAGES, "SubscriptionId"), &oom);
        if (id == NULL)
            text_set_error(err, errlen, oom ? "out of memory"
                                            : "the Subscribe answer has no usable SubscriptionId");
    }
    xmlFreeDoc(doc);
    return id;
}

void ews_stream_envelope_free(ews_stream_envelope *envelope)
{
    if (envelope == NULL)
        return;
    for (size_t i = 0; i < envelope->n_changed; i++)
        free(envelope->changed[i]);
    free(envelope->changed);
    for (size_t i = 0; i < envelope->n_failed; i++) {
        free(envelope->failed[i].subscription_id);
        free(envelope->failed[i].code);
    }
    free(envelope->failed);
    free(envelope->error_code);
    free(envelope);
}

/* Does an event element concern an item (t:ItemId, or t:OldItemId of a move)? Folder
 * events (the folder's item count changed) carry t:FolderId instead. */
static bool is_item_event(const xmlNode *event)
{
    static const char *const item_events[] = {"CreatedEvent", "ModifiedEvent", "DeletedEvent",
                                              "MovedEvent", "CopiedEvent", "NewMailEvent",
                                              "FreeBusyChangedEvent"};
    bool known = false;
    for (size_t i = 0; i < sizeof item_events / sizeof item_events[0]; i++)
        known = known || is_ews_element(event, item_events[i]);
    return known && (ews_xml_find_child(event, NS_TYPES, "ItemId") != NULL ||
                     ews_xml_find_child(event, NS_TYPES, "OldItemId") != NULL);
}

static int add_changed(ews_stream_envelope *e, char *id)
{
    if (e->n_changed >= ENVELOPE_ENTRIES_MAX)
        return -E2BIG;
    char **grown = realloc(e->changed, (e->n_changed + 1) * sizeof *grown);
    if (grown == NULL)
        return -ENOMEM;
    e->changed = grown;
    e->changed[e->n_changed++] = id;
    return 0;
}

static int add_failed(ews_stream_envelope *e, char *id, const char *code)
{
    if (e->n_failed >= ENVELOPE_ENTRIES_MAX)
        return -E2BIG;
    ews_stream_failure *grown = realloc(e->failed, (e->n_failed + 1) * sizeof *grown);
    if (grown == NULL)
        return -ENOMEM;
    e->failed = grown;
    char *copy = strdup(code);
    if (copy == NULL)
        return -ENOMEM;
    e->failed[e->n_failed++] = (ews_stream_failure){.subscription_id = id, .code = copy};
    return 0;
}

static int read_notifications(const xmlNode *list, ews_stream_envelope *e, bool *oom)
{
    for (xmlNode *n = ews_xml_first_child(list); n != NULL; n = ews_xml_next_element(n)) {
        if (!is_ews_element(n, "Notification"))
            continue;
        bool items = false;
        const xmlNode *id_node = NULL;
        for (xmlNode *c = ews_xml_first_child(n); c != NULL; c = ews_xml_next_element(c)) {
            if (is_ews_element(c, "SubscriptionId"))
                id_node = id_node != NULL ? id_node : c;
            else
                items = items || is_item_event(c);
        }
        char *id = items ? token_of(id_node, oom) : NULL;
        if (id == NULL)
            continue;
        int r = add_changed(e, id);
        if (r < 0) {
            free(id);
            return r;
        }
    }
    return 0;
}

/* BackOffMilliseconds among a MessageXml's t:Value children, -1 when absent. */
static int64_t back_off_of(const xmlNode *message_xml, bool *oom)
{
    for (xmlNode *c = ews_xml_first_child(message_xml); c != NULL; c = ews_xml_next_element(c)) {
        char *name = ews_xml_is_element(c, NS_TYPES, "Value") ? ews_xml_attribute(c, "Name", oom)
                                                              : NULL;
        bool wanted = name != NULL && strcmp(name, "BackOffMilliseconds") == 0;
        free(name);
        if (!wanted)
            continue;
        char *text = ews_xml_text(c, oom);
        char *end = NULL;
        long long ms = text != NULL && isdigit((unsigned char)text[0]) ? strtoll(text, &end, 10)
                                                                       : -1;
        bool ok = ms >= 0 && end != NULL && *end == '\0';
        free(text);
        if (ok)
            return ms > EWS_RESPONSE_MAX_BACK_OFF_MS ? EWS_RESPONSE_MAX_BACK_OFF_MS : ms;
    }
    return -1;
}

/* One m:GetStreamingEventsResponseMessage into e. */
static int read_message(const xmlNode *message, ews_stream_envelope *e, bool *oom)
{
    char *response_class = ews_xml_attribute(message, "ResponseClass", oom);
    bool error = response_class != NULL && strcmp(response_class, "Error") == 0;
    char *code = ews_xml_text(ews_xml_find_child(message, NS_MESSAGES, "ResponseCode"), oom);
    const xmlNode *error_ids = NULL;
    int64_t back_off = -1;
    int r = 0;

    free(response_class);
    if (code == NULL || code[0] == '\0') {
        free(code);
        code = strdup(error ? "ErrorUnknown" : "NoError");
        if (code == NULL)
            return -ENOMEM;
    }
    text_one_line(code, SERVER_CODE_MAX_BYTES);
    for (xmlNode *c = ews_xml_first_child(message); c != NULL && r == 0;
         c = ews_xml_next_element(c)) {
        if (ews_xml_is_element(c, NS_MESSAGES, "Notifications")) {
            r = read_notifications(c, e, oom);
        } else if (ews_xml_is_element(c, NS_MESSAGES, "ErrorSubscriptionIds")) {
            error_ids = c;
        } else if (ews_xml_is_element(c, NS_MESSAGES, "MessageXml")) {
            back_off = back_off_of(c, oom);
        } else if (ews_xml_is_element(c, NS_MESSAGES, "ConnectionStatus")) {
            char *status = ews_xml_text(c, oom);
            if (status != NULL && strcmp(status, "OK") == 0)
                e->status = EWS_STREAM_STATUS_OK;
            else if (status != NULL && strcmp(status, "Closed") == 0)
                e->status = EWS_STREAM_STATUS_CLOSED;
            free(status);
        }
    }
    for (xmlNode *c = ews_xml_first_child(error_ids); c != NULL && r == 0;
         c = ews_xml_next_element(c)) {
        char *id = is_ews_element(c, "SubscriptionId") ? token_of(c, oom) : NULL;
        if (id != NULL && (r = add_failed(e, id, code)) < 0)
            free(id);
    }
    if (r == 0 && error && error_ids == NULL && e->error_code == NULL) {
        e->error_code = code;
        e->back_off_ms = back_off;
        code = NULL;
    }
    free(code);
    return r;
}

/* A SOAP fault instead of notifications: its code and wait, as ews_response reads them. */
static int read_fault(const char *xml, size_t len, ews_stream_envelope *e, char *err,
                      size_t errlen)
{
    ews_response *response = NULL;
    if (ews_response_parse(xml, len, &response, err, errlen) < 0)
        return -1;
    e->error_code = strdup(response->fault_code != NULL ? response->fault_code : "Fault");
    e->back_off_ms = response->fault_back_off_ms;
    ews_response_free(response);
    if (e->error_code == NULL) {
        text_set_error(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int ews_stream_envelope_parse(const char *xml, size_t len, ews_stream_envelope **out,
                              char *err, size_t errlen)
{
    bool oom = false;
    int rc = -1;

    *out = NULL;
    if (xml == NULL || len == 0 || len > EWS_STREAM_ENVELOPE_MAX_BYTES) {
        text_set_error(err, errlen, "empty or oversized envelope (%zu bytes)", len);
        return -1;
    }
    ews_stream_envelope *e = calloc(1, sizeof *e);
    if (e == NULL) {
        text_set_error(err, errlen, "out of memory");
        return -1;
    }
    e->back_off_ms = -1;
    xmlDoc *doc = ews_xml_parse(xml, len, err, errlen);
    xmlNode *payload = doc != NULL ? body_payload(doc, err, errlen) : NULL;
    if (payload == NULL)
        goto done;
    if (ews_xml_is_element(payload, NS_SOAP, "Fault")) {
        rc = read_fault(xml, len, e, err, errlen);
        goto done;
    }
    if (!ews_xml_is_element(payload, NS_MESSAGES, "GetStreamingEventsResponse")) {
        char name[64];
        ews_xml_quote((const char *)payload->name, name, sizeof name);
        text_set_error(err, errlen, "SOAP Body holds %s, not a GetStreamingEventsResponse", name);
        goto done;
    }
    xmlNode *list = ews_xml_find_child(payload, NS_MESSAGES, "ResponseMessages");
    int r = 0;
    for (xmlNode *c = ews_xml_first_child(list); c != NULL && r == 0 && !oom;
         c = ews_xml_next_element(c))
        if (ews_xml_is_element(c, NS_MESSAGES, "GetStreamingEventsResponseMessage"))
            r = read_message(c, e, &oom);
    if (r == -E2BIG) {
        text_set_error(err, errlen, "more than %d notifications in one envelope",
                       ENVELOPE_ENTRIES_MAX);
        goto done;
    }
    if (r < 0 || oom) {
        text_set_error(err, errlen, "out of memory");
        goto done;
    }
    rc = 0;
done:
    xmlFreeDoc(doc);
    if (rc == 0)
        *out = e;
    else
        ews_stream_envelope_free(e);
    return rc;
}

/* ---- the splitter ------------------------------------------------------------- */

enum {
    SCAN_TEXT,          /* between tags */
    SCAN_LT,            /* after '<' */
    SCAN_START_TAG,     /* <name attr='...' ...> */
    SCAN_QUOTE,         /* inside an attribute value */
    SCAN_END_TAG,       /* </name> */
    SCAN_BANG,          /* after "<!" */
    SCAN_BANG_DASH,     /* after "<!-" */
    SCAN_COMMENT,       /* up to "-->" */
    SCAN_CDATA,         /* up to "]]>" */
    SCAN_PI,            /* up to "?>" */
    SCAN_DECL,          /* <!DOCTYPE ...>: up to '>' (the parser then refuses it) */
};

void ews_stream_splitter_init(ews_stream_splitter *sp)
{
    memset(sp, 0, sizeof *sp);
    sp->state = SCAN_TEXT;
}

void ews_stream_splitter_reset(ews_stream_splitter *sp)
{
    free(sp->buf);
    ews_stream_splitter_init(sp);
}

/* Drops the document handed out last. */
static void compact(ews_stream_splitter *sp)
{
    if (sp->taken == 0)
        return;
    memmove(sp->buf, sp->buf + sp->taken, sp->len - sp->taken);
    sp->len -= sp->taken;
    sp->scanned -= sp->taken;
    if (sp->started)
        sp->start -= sp->taken;
    sp->taken = 0;
}

int ews_stream_splitter_feed(ews_stream_splitter *sp, const char *data, size_t len)
{
    compact(sp);
    if (len > EWS_STREAM_ENVELOPE_MAX_BYTES || sp->len + len > EWS_STREAM_ENVELOPE_MAX_BYTES) {
        ews_stream_splitter_reset(sp);
        return -1;
    }
    if (sp->len + len > sp->cap) {
        size_t cap = sp->cap ? sp->cap : 16384;
        while (cap < sp->len + len)
            cap *= 2;
        char *grown = realloc(sp->buf, cap);
        if (grown == NULL) {
            ews_stream_splitter_reset(sp);
            return -1;
        }
        sp->buf = grown;
        sp->cap = cap;
    }
    memcpy(sp->buf + sp->len, data, len);
    sp->len += len;
    return 0;
}

/* Advances "match" through a terminator ("-->", "]]>": two of c then '>'; "?>": one). */
static bool terminator(ews_stream_splitter *sp, char c, char repeated, int times)
{
    if (c == '>' && sp->match >= times)
        return true;
    sp->match = c == repeated ? (sp->match < times ? sp->match + 1 : times) : 0;
    return false;
}

int ews_stream_splitter_next(ews_stream_splitter *sp, const char **doc, size_t *doc_len,
                             char *err, size_t errlen)
{
    compact(sp);
    for (; sp->scanned < sp->len; sp->scanned++) {
        char c = sp->buf[sp->scanned];
        bool closed = false;    /* the root element ends with this character */
        switch (sp->state) {
        case SCAN_TEXT:
            if (c == '<') {
                if (sp->depth == 0 && !sp->started) {
                    sp->start = sp->scanned;
                    sp->started = true;
                }
                sp->state = SCAN_LT;
            } else if (sp->depth == 0 && !strchr(" \t\r\n", c)) {
                text_set_error(err, errlen, "text outside an envelope (byte 0x%02x)",
                               (unsigned char)c);
                ews_stream_splitter_reset(sp);
                return -1;
            }
            break;
        case SCAN_LT:
            if (c == '/') {
                sp->state = SCAN_END_TAG;
            } else if (c == '?') {
                sp->state = SCAN_PI;
                sp->match = 0;
            } else if (c == '!') {
                sp->state = SCAN_BANG;
            } else {
                sp->state = SCAN_START_TAG;
                sp->in_document = true;
                sp->last = c;
            }
            break;
        case SCAN_START_TAG:
            if (c == '"' || c == '\'') {
                sp->quote = c;
                sp->state = SCAN_QUOTE;
            } else if (c == '>') {
                if (sp->last != '/')
                    sp->depth++;
                else
                    closed = sp->depth == 0;    /* an empty root: <a/> */
                sp->state = SCAN_TEXT;
            }
            sp->last = c;
            break;
        case SCAN_QUOTE:
            if (c == sp->quote)
                sp->state = SCAN_START_TAG;
            sp->last = c;
            break;
        case SCAN_END_TAG:
            if (c == '>') {
                if (sp->depth == 0) {
                    text_set_error(err, errlen, "an end tag without its start");
                    ews_stream_splitter_reset(sp);
                    return -1;
                }
                closed = --sp->depth == 0;
                sp->state = SCAN_TEXT;
            }
            break;
        case SCAN_BANG:
            sp->match = 0;
            sp->state = c == '-' ? SCAN_BANG_DASH : c == '[' ? SCAN_CDATA : SCAN_DECL;
            break;
        case SCAN_BANG_DASH:
            sp->state = c == '-' ? SCAN_COMMENT : SCAN_DECL;
            break;
        case SCAN_COMMENT:
            if (terminator(sp, c, '-', 2))
                sp->state = SCAN_TEXT;
            break;
        case SCAN_CDATA:
            if (terminator(sp, c, ']', 2))
                sp->state = SCAN_TEXT;
            break;
        case SCAN_PI:
            if (terminator(sp, c, '?', 1))
                sp->state = SCAN_TEXT;
            break;
        case SCAN_DECL:
            if (c == '>')
                sp->state = SCAN_TEXT;
            break;
        }
        if (closed) {
            size_t end = ++sp->scanned;
            *doc = sp->buf + sp->start;
            *doc_len = end - sp->start;
            sp->taken = end;
            sp->started = false;
            sp->in_document = false;
            return 1;
        }
    }
    return 0;
}
