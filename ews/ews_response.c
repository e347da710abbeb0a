/* ews_response — turns what Exchange (or something pretending to be it) sent back into
 * plain data, without trusting a byte of it.
 *
 * Safety, in the order the input meets it:
 *   1. size capped at EWS_RESPONSE_MAX_BYTES before anything is parsed;
 *   2. an HTML page (proxy error, login form, wrong URL) is named as such;
 *   3. libxml2 runs with XML_PARSE_NONET and without NOENT, DTDLOAD, HUGE or RECOVER,
 *      so no entity is substituted, nothing is fetched, the default depth and size
 *      limits hold and malformed input is an error, not a guess;
 *   4. a DOCTYPE stops the parser at once, from the SAX internalSubset callback,
 *      before a single declaration of the internal subset is read: no XXE, no
 *      billion laughs, whatever the encoding;
 *   5. libxml2's messages go to per-parse handlers that keep the first one for the
 *      caller instead of printing to stderr (the daemon logs the reason itself);
 *   6. the server's codes and texts handed back are one line, without control
 *      characters, and bounded (63 and 512 bytes, cut between characters).
 * Elements are matched by namespace URI and local name, never by prefix. */
#include "ews/ews_response.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/outlook_item.h"
#include "daemon/text.h"
#include "ews/ews_xml.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_SOAP12 "http://www.w3.org/2003/05/soap-envelope"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"
#define NS_ERRORS "http://schemas.microsoft.com/exchange/services/2006/errors"

/* Server text that callers put into log lines, error reasons and the database
 * (ResponseCode, faultcode, MessageText, faultstring) is kept to one line and cut to
 * these sizes on a character boundary (see text_one_line()). Real EWS codes are ASCII
 * names under 60 bytes and real texts one sentence; a 4 MiB "code" is an attack. */
#define SERVER_CODE_MAX_BYTES 63
#define SERVER_TEXT_MAX_BYTES 512

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* BackOffMilliseconds: a non-negative decimal integer, anything else counts as
 * absent; absurdly large values are still a request to wait, capped. */
static int64_t parse_back_off(const char *text)
{
    char *end = NULL;

    if (text == NULL || !isdigit((unsigned char)text[0]))
        return -1;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (end == text || *end != '\0')
        return -1;
    if (errno == ERANGE || value > EWS_RESPONSE_MAX_BACK_OFF_MS)
        return EWS_RESPONSE_MAX_BACK_OFF_MS;
    return (int64_t)value;
}

/* The text of the t:Value Name=name among the children of a MessageXml element
 * (trimmed, malloc'd), NULL when there is none. Exchange puts its details there:
 * BackOffMilliseconds, Policy, InnerErrorResponseCode, InnerErrorMessageText, ... */
static char *message_xml_value(const xmlNode *message_xml, const char *name, bool *oom)
{
    for (xmlNode *c = ews_xml_first_child(message_xml); c != NULL; c = ews_xml_next_element(c)) {
        if (!ews_xml_is_element(c, NS_TYPES, "Value"))
            continue;
        char *value_name = ews_xml_attribute(c, "Name", oom);
        bool wanted = value_name != NULL && strcmp(value_name, name) == 0;
        free(value_name);
        if (wanted)
            return ews_xml_text(c, oom);
    }
    return NULL;
}

/* What a MessageXml adds to a message or fault: the server's requested wait and the
 * code Exchange had to hide behind ErrorInternalServerError (one the request's
 * RequestServerVersion predates, e.g. ErrorServerBusy for throttling). The first
 * MessageXml that says something wins. */
static void read_message_xml(const xmlNode *message_xml, int64_t *back_off_ms,
                             char **inner_code, bool *oom)
{
    if (*back_off_ms < 0) {
        char *text = message_xml_value(message_xml, "BackOffMilliseconds", oom);
        *back_off_ms = parse_back_off(text);
        free(text);
    }
    if (*inner_code == NULL) {
        *inner_code = message_xml_value(message_xml, "InnerErrorResponseCode", oom);
        if (*inner_code != NULL && (*inner_code)[0] == '\0') {
            free(*inner_code);
            *inner_code = NULL;
        }
    }
}

/* The code a message or fault is classified by: the inner code when the table knows
 * it (it is the precise one), else the outer. */
static ews_code effective_code(const char *outer, const char *inner)
{
    ews_code code = ews_code_from_string(inner);
    return code != EWS_ERROR_UNKNOWN ? code : ews_code_from_string(outer);
}

/* ---- the result ------------------------------------------------------------ */

static void free_found_items(ews_found_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(items[i].item_id);
        free(items[i].change_key);
        free(items[i].tag);
    }
    free(items);
}

void ews_response_free(ews_response *response)
{
    if (response == NULL)
        return;
    for (size_t i = 0; i < response->n_messages; i++) {
        ews_response_message *m = &response->messages[i];
        free(m->response_code);
        free(m->inner_response_code);
        free(m->message_text);
        free_found_items(m->items, m->n_items);
    }
    free(response->messages);
    free(response->fault_code);
    free(response->fault_inner_code);
    free(response->fault_string);
    free(response);
}

/* ---- items ----------------------------------------------------------------- */

char *ews_response_item_tag(const xmlNode *item, bool *oom)
{
    for (xmlNode *c = ews_xml_first_child(item); c != NULL; c = ews_xml_next_element(c)) {
        if (!ews_xml_is_element(c, NS_TYPES, "ExtendedProperty"))
            continue;
        xmlNode *uri = ews_xml_find_child(c, NS_TYPES, "ExtendedFieldURI");
        if (uri == NULL)
            continue;
        char *set_id = ews_xml_attribute(uri, "PropertySetId", oom);
        char *name = ews_xml_attribute(uri, "PropertyName", oom);
        /* GUIDs compare case-insensitively; Exchange may echo them upper-case. */
        bool ours = set_id != NULL && name != NULL &&
                    strcasecmp(set_id, OUTLOOK_TAG_PROPERTY_SET_ID) == 0 &&
                    strcmp(name, OUTLOOK_TAG_PROPERTY_NAME) == 0;
        free(set_id);
        free(name);
        if (ours)
            return ews_xml_text(ews_xml_find_child(c, NS_TYPES, "Value"), oom);
    }
    return NULL;
}

/* Every child of an Items element (m:Items or t:Items) that carries a t:ItemId.
 * Returns 0, or -1 on out of memory. */
static int collect_items(const xmlNode *items_node, ews_response_message *message)
{
    size_t count = 0;
    bool oom = false;

    for (xmlNode *c = ews_xml_first_child(items_node); c != NULL; c = ews_xml_next_element(c))
        if (ews_xml_find_child(c, NS_TYPES, "ItemId") != NULL)
            count++;
    if (count == 0)
        return 0;

    ews_found_item *grown = realloc(message->items,
                                    (message->n_items + count) * sizeof *grown);
    if (grown == NULL)
        return -1;
    message->items = grown;

    for (xmlNode *c = ews_xml_first_child(items_node); c != NULL; c = ews_xml_next_element(c)) {
        xmlNode *id = ews_xml_find_child(c, NS_TYPES, "ItemId");
        if (id == NULL)
            continue;
        ews_found_item *found = &message->items[message->n_items];
        found->item_id = ews_xml_attribute(id, "Id", &oom);
        found->change_key = ews_xml_attribute(id, "ChangeKey", &oom);
        found->tag = ews_response_item_tag(c, &oom);
        message->n_items++;     /* counted now, so free() releases whatever was set */
        if (oom)
            return -1;
        if (found->item_id == NULL || found->item_id[0] == '\0') {
            /* An ItemId without Id names nothing; forget it rather than fail. */
            message->n_items--;
            free(found->item_id);
            free(found->change_key);
            free(found->tag);
        }
    }
    return 0;
}

/* ---- response messages ----------------------------------------------------- */

static int parse_response_class(const char *text, ews_response_class *out)
{
    if (text == NULL)
        return -1;
    if (strcmp(text, "Success") == 0)
        *out = EWS_CLASS_SUCCESS;
    else if (strcmp(text, "Warning") == 0)
        *out = EWS_CLASS_WARNING;
    else if (strcmp(text, "Error") == 0)
        *out = EWS_CLASS_ERROR;
    else
        return -1;
    return 0;
}

/* One m:*ResponseMessage into *message (zeroed by the caller). */
static int parse_message(const xmlNode *node, size_t index, ews_response_message *message,
                         char *err, size_t errlen)
{
    bool oom = false;
    char *class_text = ews_xml_attribute(node, "ResponseClass", &oom);
    char quoted[64];

    message->back_off_ms = -1;
    if (oom)
        goto out_of_memory;
    if (parse_response_class(class_text, &message->response_class) != 0) {
        ews_xml_quote(class_text != NULL ? class_text : "(missing)", quoted, sizeof quoted);
        text_set_error(err, errlen, "response message %zu has an invalid ResponseClass \"%s\"",
                       index + 1, quoted);
        free(class_text);
        return -1;
    }
    free(class_text);

    for (xmlNode *c = ews_xml_first_child(node); c != NULL; c = ews_xml_next_element(c)) {
        if (ews_xml_is_element(c, NS_MESSAGES, "ResponseCode") && message->response_code == NULL) {
            message->response_code = ews_xml_text(c, &oom);
        } else if (ews_xml_is_element(c, NS_MESSAGES, "MessageText") &&
                   message->message_text == NULL) {
            message->message_text = ews_xml_text(c, &oom);
        } else if (ews_xml_is_element(c, NS_MESSAGES, "MessageXml")) {
            read_message_xml(c, &message->back_off_ms, &message->inner_response_code, &oom);
        } else if (ews_xml_is_element(c, NS_MESSAGES, "Items")) {
            if (collect_items(c, message) != 0)
                goto out_of_memory;
        } else if (ews_xml_is_element(c, NS_MESSAGES, "RootFolder")) {
            /* FindItem: m:RootFolder/t:Items/t:CalendarItem|t:Task/t:ItemId */
            xmlNode *items = ews_xml_find_child(c, NS_TYPES, "Items");
            if (items != NULL && collect_items(items, message) != 0)
                goto out_of_memory;
        }
        if (oom)
            goto out_of_memory;
    }

    text_one_line(message->response_code, SERVER_CODE_MAX_BYTES);
    text_one_line(message->inner_response_code, SERVER_CODE_MAX_BYTES);
    text_one_line(message->message_text, SERVER_TEXT_MAX_BYTES);
    if (message->response_code == NULL || message->response_code[0] == '\0') {
        if (message->response_class != EWS_CLASS_SUCCESS) {
            text_set_error(err, errlen,
                           "response message %zu reports %s without a ResponseCode",
                           index + 1,
                           message->response_class == EWS_CLASS_ERROR ? "an error"
                                                                      : "a warning");
            return -1;
        }
        /* Success needs no code; say so the way Exchange would. */
        free(message->response_code);
        message->response_code = text_dup_trimmed("NoError");
        if (message->response_code == NULL)
            goto out_of_memory;
    }
    message->code = effective_code(message->response_code, message->inner_response_code);
    return 0;

out_of_memory:
    text_set_error(err, errlen, "out of memory while reading the response");
    return -1;
}

/* m:CreateItemResponseMessage, m:FindItemResponseMessage, ... */
static bool is_response_message(const xmlNode *node)
{
    return ews_xml_in_namespace(node, NS_MESSAGES) &&
           ends_with((const char *)node->name, "ResponseMessage");
}

/* m:<Operation>Response/m:ResponseMessages/m:*ResponseMessage, in document order. */
static int parse_response_messages(const xmlNode *operation, ews_response *response,
                                   char *err, size_t errlen)
{
    xmlNode *list = ews_xml_find_child(operation, NS_MESSAGES, "ResponseMessages");
    char quoted[64];

    if (list == NULL) {
        ews_xml_quote((const char *)operation->name, quoted, sizeof quoted);
        text_set_error(err, errlen, "no ResponseMessages in %s", quoted);
        return -1;
    }

    size_t count = 0;
    for (xmlNode *c = ews_xml_first_child(list); c != NULL; c = ews_xml_next_element(c))
        if (is_response_message(c))
            count++;
    if (count == 0) {
        text_set_error(err, errlen, "response contains no ResponseMessage");
        return -1;
    }

    response->messages = calloc(count, sizeof *response->messages);
    if (response->messages == NULL) {
        text_set_error(err, errlen, "out of memory while reading the response");
        return -1;
    }
    for (xmlNode *c = ews_xml_first_child(list); c != NULL; c = ews_xml_next_element(c)) {
        if (!is_response_message(c))
            continue;
        size_t index = response->n_messages;
        /* Counted before parsing so ews_response_free() releases a half-filled one. */
        response->n_messages++;
        if (parse_message(c, index, &response->messages[index], err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* ---- SOAP Fault ------------------------------------------------------------ */

/* SOAP 1.1 Fault children are unqualified; a few stacks qualify them with the
 * envelope namespace, which is accepted too. */
static xmlNode *find_fault_child(const xmlNode *fault, const char *local)
{
    xmlNode *c = ews_xml_find_child(fault, NULL, local);
    return c != NULL ? c : ews_xml_find_child(fault, NS_SOAP, local);
}

static int parse_fault(const xmlNode *fault, ews_response *response, char *err, size_t errlen)
{
    bool oom = false;
    char *faultcode = ews_xml_text(find_fault_child(fault, "faultcode"), &oom);
    char *detail_code = NULL;
    int rc = -1;

    if (oom)
        goto out_of_memory;
    if (faultcode == NULL || faultcode[0] == '\0') {
        text_set_error(err, errlen, "SOAP Fault without faultcode");
        goto done;
    }

    response->fault_string = ews_xml_text(find_fault_child(fault, "faultstring"), &oom);

    xmlNode *detail = find_fault_child(fault, "detail");
    for (xmlNode *c = ews_xml_first_child(detail); c != NULL; c = ews_xml_next_element(c)) {
        if (ews_xml_is_element(c, NS_ERRORS, "ResponseCode") && detail_code == NULL)
            detail_code = ews_xml_text(c, &oom);
        else if (ews_xml_is_element(c, NS_TYPES, "MessageXml") ||
                 ews_xml_is_element(c, NS_ERRORS, "MessageXml"))
            read_message_xml(c, &response->fault_back_off_ms, &response->fault_inner_code,
                             &oom);
    }
    if (oom)
        goto out_of_memory;

    /* Exchange's own code is the precise one ("ErrorSchemaValidation" where faultcode
     * may only say "a:ErrorSchemaValidation" or even "s:Client"); otherwise the part
     * of faultcode after its prefix. */
    if (detail_code != NULL && detail_code[0] != '\0') {
        response->fault_code = detail_code;
        detail_code = NULL;
    } else {
        /* "a:" names nothing after its prefix: then the whole faultcode is the name. */
        const char *colon = strrchr(faultcode, ':');
        bool suffix = colon != NULL && colon[1] != '\0';
        response->fault_code = text_dup_trimmed(suffix ? colon + 1 : faultcode);
        if (response->fault_code == NULL)
            goto out_of_memory;
    }
    text_one_line(response->fault_code, SERVER_CODE_MAX_BYTES);
    text_one_line(response->fault_inner_code, SERVER_CODE_MAX_BYTES);
    text_one_line(response->fault_string, SERVER_TEXT_MAX_BYTES);
    response->fault_ews_code = effective_code(response->fault_code, response->fault_inner_code);
    rc = 0;
    goto done;

out_of_memory:
    text_set_error(err, errlen, "out of memory while reading the response");
done:
    free(faultcode);
    free(detail_code);
    return rc;
}

/* ---- the document ---------------------------------------------------------- */

/* Proxies, load balancers and login portals answer with HTML; say that instead of
 * quoting an XML syntax error about <br>. */
static bool looks_like_html(const char *body, size_t len)
{
    size_t i = 0;

    if (len >= 3 && memcmp(body, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    while (i < len && isspace((unsigned char)body[i]))
        i++;
    static const char *const openings[] = { "<!DOCTYPE html", "<html", "<head", "<body" };
    for (size_t k = 0; k < sizeof openings / sizeof openings[0]; k++) {
        size_t n = strlen(openings[k]);
        if (len - i >= n && strncasecmp(body + i, openings[k], n) == 0)
            return true;
    }
    return false;
}

static int interpret_document(const xmlDoc *doc, ews_response *response, char *err,
                              size_t errlen)
{
    xmlNode *root = xmlDocGetRootElement(doc);
    char quoted[128];

    if (root == NULL) {
        text_set_error(err, errlen, "response has no root element");
        return -1;
    }
    if (strcasecmp((const char *)root->name, "html") == 0) {
        text_set_error(err, errlen, "response is an HTML page, not SOAP (check [exchange] url)");
        return -1;
    }
    if (strcmp((const char *)root->name, "Envelope") != 0) {
        ews_xml_quote((const char *)root->name, quoted, sizeof quoted);
        text_set_error(err, errlen, "no SOAP Envelope (root element is <%s>)", quoted);
        return -1;
    }
    if (!ews_xml_is_element(root, NS_SOAP, "Envelope")) {
        ews_xml_quote(ews_xml_namespace_of(root), quoted, sizeof quoted);
        text_set_error(err, errlen,
                       "unexpected namespace \"%s\" on Envelope (expected SOAP 1.1%s)", quoted,
                       strcmp(ews_xml_namespace_of(root), NS_SOAP12) == 0 ? ", got SOAP 1.2"
                                                                           : "");
        return -1;
    }

    xmlNode *body = ews_xml_find_child(root, NS_SOAP, "Body");
    if (body == NULL) {
        text_set_error(err, errlen, "no SOAP Body");
        return -1;
    }
    xmlNode *payload = ews_xml_first_child(body);
    if (payload == NULL) {
        text_set_error(err, errlen, "SOAP Body is empty");
        return -1;
    }
    if (ews_xml_is_element(payload, NS_SOAP, "Fault"))
        return parse_fault(payload, response, err, errlen);

    if (!ews_xml_in_namespace(payload, NS_MESSAGES)) {
        ews_xml_quote(ews_xml_namespace_of(payload), quoted, sizeof quoted);
        char name[64];
        ews_xml_quote((const char *)payload->name, name, sizeof name);
        text_set_error(err, errlen, "unexpected namespace \"%s\" on %s (expected EWS messages)",
                       quoted, name);
        return -1;
    }
    if (!ends_with((const char *)payload->name, "Response")) {
        ews_xml_quote((const char *)payload->name, quoted, sizeof quoted);
        text_set_error(err, errlen, "SOAP Body holds %s, not an EWS response", quoted);
        return -1;
    }
    return parse_response_messages(payload, response, err, errlen);
}

int ews_response_parse(const char *body, size_t len, ews_response **out, char *err,
                       size_t errlen)
{
    xmlDoc *doc = NULL;
    ews_response *response = NULL;
    int rc = -1;

    text_set_error(err, errlen, "%s", "");
    if (out == NULL) {
        text_set_error(err, errlen, "no place for the result");
        return -1;
    }
    *out = NULL;
    if (body == NULL || len == 0) {
        text_set_error(err, errlen, "empty response");
        return -1;
    }
    if (len > EWS_RESPONSE_MAX_BYTES) {
        text_set_error(err, errlen, "response larger than %u bytes", EWS_RESPONSE_MAX_BYTES);
        return -1;
    }
    if (looks_like_html(body, len)) {
        text_set_error(err, errlen, "response is an HTML page, not SOAP (check [exchange] url)");
        return -1;
    }

    doc = ews_xml_parse(body, len, err, errlen);
    if (doc == NULL)
        return -1;

    response = calloc(1, sizeof *response);
    if (response == NULL) {
        text_set_error(err, errlen, "out of memory while reading the response");
        goto done;
    }
    response->fault_ews_code = EWS_NO_ERROR;
    response->fault_back_off_ms = -1;
    if (interpret_document(doc, response, err, errlen) != 0)
        goto done;

    *out = response;
    response = NULL;
    rc = 0;

done:
    ews_response_free(response);
    xmlFreeDoc(doc);
    return rc;
}
