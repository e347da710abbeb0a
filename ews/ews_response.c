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
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include "daemon/outlook_item.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_SOAP12 "http://www.w3.org/2003/05/soap-envelope"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"
#define NS_ERRORS "http://schemas.microsoft.com/exchange/services/2006/errors"

/* Long enough for any libxml2 message; what goes into err is cut to errlen anyway. */
#define PARSE_ERROR_SIZE 256

/* Server text that callers put into log lines, error reasons and the database
 * (ResponseCode, faultcode, MessageText, faultstring) is kept to one line and cut to
 * these sizes on a character boundary (see one_line()). Real EWS codes are ASCII
 * names under 60 bytes and real texts one sentence; a 4 MiB "code" is an attack. */
#define SERVER_CODE_MAX_BYTES 63
#define SERVER_TEXT_MAX_BYTES 512

/* State shared with the libxml2 callbacks through ctxt->_private. */
typedef struct parse_state {
    bool doctype_seen;
    bool have_error;
    char first_error[PARSE_ERROR_SIZE];
} parse_state;

/* ---- small helpers --------------------------------------------------------- */

static void set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A copy of s cut to outlen for quoting in an error message: white space becomes a
 * blank, other control characters and anything non-ASCII '?', trailing blanks go.
 * Server text must not forge log lines. */
static void quote_for_message(const char *s, char *out, size_t outlen)
{
    size_t i = 0;

    if (outlen == 0)
        return;
    for (; s != NULL && s[i] != '\0' && i + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '\r' || c == '\t')
            out[i] = ' ';
        else
            out[i] = (c >= 0x20 && c < 0x7F) ? (char)c : '?';
    }
    while (i > 0 && out[i - 1] == ' ')
        i--;
    out[i] = '\0';
}

/* Makes server text (valid UTF-8: libxml2 converts every document to it) safe to show:
 * C0 controls, DEL and C1 controls become blanks, so a MessageText holding
 * "\n<0>followupd: ..." cannot forge a log line or steer a terminal; and the text is cut
 * to at most max bytes without splitting a character, so a caller's fixed buffer
 * (a code of 64 bytes, a reason of 1024) is never the place where a character breaks
 * and PostgreSQL (which refuses broken UTF-8) can always store the reason. In place. */
static void one_line(char *s, size_t max)
{
    size_t n;

    if (s == NULL)
        return;
    n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;                        /* back to the lead byte of the cut character */
        s[n] = '\0';
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F) {
            s[i] = ' ';
        } else if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                   (unsigned char)s[i + 1] <= 0x9F) {
            s[i] = ' ';                 /* U+0080..U+009F, e.g. U+009B CSI */
            s[i + 1] = ' ';
            i++;
        }
    }
}

static bool is_element(const xmlNode *node, const char *ns_uri, const char *local)
{
    if (node == NULL || node->type != XML_ELEMENT_NODE)
        return false;
    if (strcmp((const char *)node->name, local) != 0)
        return false;
    if (ns_uri == NULL)
        return node->ns == NULL || node->ns->href == NULL;
    return node->ns != NULL && node->ns->href != NULL &&
           strcmp((const char *)node->ns->href, ns_uri) == 0;
}

static bool in_namespace(const xmlNode *node, const char *ns_uri)
{
    return node != NULL && node->type == XML_ELEMENT_NODE && node->ns != NULL &&
           node->ns->href != NULL && strcmp((const char *)node->ns->href, ns_uri) == 0;
}

/* For messages: the namespace URI, or a note that there is none. */
static const char *namespace_of(const xmlNode *node)
{
    return node->ns != NULL && node->ns->href != NULL ? (const char *)node->ns->href
                                                      : "(none)";
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static xmlNode *first_element_child(const xmlNode *parent)
{
    for (xmlNode *c = parent != NULL ? parent->children : NULL; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return c;
    return NULL;
}

static xmlNode *next_element(const xmlNode *node)
{
    for (xmlNode *c = node->next; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return c;
    return NULL;
}

static xmlNode *find_child(const xmlNode *parent, const char *ns_uri, const char *local)
{
    for (xmlNode *c = first_element_child(parent); c != NULL; c = next_element(c))
        if (is_element(c, ns_uri, local))
            return c;
    return NULL;
}

/* malloc'd copy of s without leading/trailing white space. */
static char *dup_trimmed(const char *s)
{
    while (*s != '\0' && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    char *out = malloc(n + 1);
    if (out != NULL) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

/* The element's text content, trimmed, malloc'd; NULL on out of memory.
 * *oom tells that case apart from a NULL node. */
static char *text_of(const xmlNode *node, bool *oom)
{
    if (node == NULL)
        return NULL;
    xmlChar *content = xmlNodeGetContent(node);
    if (content == NULL) {
        /* An element with no text at all also yields NULL. */
        char *empty = dup_trimmed("");
        if (empty == NULL)
            *oom = true;
        return empty;
    }
    char *out = dup_trimmed((const char *)content);
    xmlFree(content);
    if (out == NULL)
        *oom = true;
    return out;
}

static char *attribute_of(const xmlNode *node, const char *name, bool *oom)
{
    /* Unqualified attributes only: EWS never qualifies its own. */
    xmlChar *value = xmlGetNoNsProp(node, BAD_CAST name);
    if (value == NULL)
        return NULL;
    char *out = dup_trimmed((const char *)value);
    xmlFree(value);
    if (out == NULL)
        *oom = true;
    return out;
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
    for (xmlNode *c = first_element_child(message_xml); c != NULL; c = next_element(c)) {
        if (!is_element(c, NS_TYPES, "Value"))
            continue;
        char *value_name = attribute_of(c, "Name", oom);
        bool wanted = value_name != NULL && strcmp(value_name, name) == 0;
        free(value_name);
        if (wanted)
            return text_of(c, oom);
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

/* ---- libxml2 callbacks ----------------------------------------------------- */

/* SAX internalSubset: called as soon as "<!DOCTYPE name ..." has been read, before
 * the internal subset. Stopping here means no entity is ever declared. */
static void refuse_doctype(void *ctx, const xmlChar *name, const xmlChar *external_id,
                           const xmlChar *system_id)
{
    xmlParserCtxtPtr ctxt = ctx;
    parse_state *state = ctxt->_private;

    (void)name;
    (void)external_id;
    (void)system_id;
    state->doctype_seen = true;
    xmlStopParser(ctxt);
}

static void keep_first_error(parse_state *state, const xmlError *error)
{
    if (state == NULL || error == NULL || state->have_error || error->level < XML_ERR_ERROR)
        return;
    state->have_error = true;

    char message[PARSE_ERROR_SIZE - 32];     /* room for "line N: " */
    quote_for_message(error->message != NULL ? error->message : "unknown error",
                      message, sizeof message);
    if (error->line > 0)
        snprintf(state->first_error, sizeof state->first_error, "line %d: %s",
                 error->line, message);
    else
        snprintf(state->first_error, sizeof state->first_error, "%s", message);
}

/* Parser errors: libxml2 hands over ctxt->userData, which is the context itself. */
static void record_parser_error(void *ctx, xmlErrorPtr error)
{
    xmlParserCtxtPtr ctxt = ctx;

    keep_first_error(ctxt != NULL ? ctxt->_private : NULL, error);
}

/* Errors raised without a parser context (character-set conversion, I/O) go to the
 * thread's structured handler; during a parse that is this one, with our state. */
static void record_stray_error(void *data, xmlErrorPtr error)
{
    keep_first_error(data, error);
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

/* The value of our naming property among an item's t:ExtendedProperty children. */
static char *tag_of_item(const xmlNode *item, bool *oom)
{
    for (xmlNode *c = first_element_child(item); c != NULL; c = next_element(c)) {
        if (!is_element(c, NS_TYPES, "ExtendedProperty"))
            continue;
        xmlNode *uri = find_child(c, NS_TYPES, "ExtendedFieldURI");
        if (uri == NULL)
            continue;
        char *set_id = attribute_of(uri, "PropertySetId", oom);
        char *name = attribute_of(uri, "PropertyName", oom);
        /* GUIDs compare case-insensitively; Exchange may echo them upper-case. */
        bool ours = set_id != NULL && name != NULL &&
                    strcasecmp(set_id, OUTLOOK_TAG_PROPERTY_SET_ID) == 0 &&
                    strcmp(name, OUTLOOK_TAG_PROPERTY_NAME) == 0;
        free(set_id);
        free(name);
        if (ours)
            return text_of(find_child(c, NS_TYPES, "Value"), oom);
    }
    return NULL;
}

/* Every child of an Items element (m:Items or t:Items) that carries a t:ItemId.
 * Returns 0, or -1 on out of memory. */
static int collect_items(const xmlNode *items_node, ews_response_message *message)
{
    size_t count = 0;
    bool oom = false;

    for (xmlNode *c = first_element_child(items_node); c != NULL; c = next_element(c))
        if (find_child(c, NS_TYPES, "ItemId") != NULL)
            count++;
    if (count == 0)
        return 0;

    ews_found_item *grown = realloc(message->items,
                                    (message->n_items + count) * sizeof *grown);
    if (grown == NULL)
        return -1;
    message->items = grown;

    for (xmlNode *c = first_element_child(items_node); c != NULL; c = next_element(c)) {
        xmlNode *id = find_child(c, NS_TYPES, "ItemId");
        if (id == NULL)
            continue;
        ews_found_item *found = &message->items[message->n_items];
        found->item_id = attribute_of(id, "Id", &oom);
        found->change_key = attribute_of(id, "ChangeKey", &oom);
        found->tag = tag_of_item(c, &oom);
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
    char *class_text = attribute_of(node, "ResponseClass", &oom);
    char quoted[64];

    message->back_off_ms = -1;
    if (oom)
        goto out_of_memory;
    if (parse_response_class(class_text, &message->response_class) != 0) {
        quote_for_message(class_text != NULL ? class_text : "(missing)", quoted, sizeof quoted);
        set_error(err, errlen, "response message %zu has an invalid ResponseClass \"%s\"",
                  index + 1, quoted);
        free(class_text);
        return -1;
    }
    free(class_text);

    for (xmlNode *c = first_element_child(node); c != NULL; c = next_element(c)) {
        if (is_element(c, NS_MESSAGES, "ResponseCode") && message->response_code == NULL) {
            message->response_code = text_of(c, &oom);
        } else if (is_element(c, NS_MESSAGES, "MessageText") && message->message_text == NULL) {
            message->message_text = text_of(c, &oom);
        } else if (is_element(c, NS_MESSAGES, "MessageXml")) {
            read_message_xml(c, &message->back_off_ms, &message->inner_response_code, &oom);
        } else if (is_element(c, NS_MESSAGES, "Items")) {
            if (collect_items(c, message) != 0)
                goto out_of_memory;
        } else if (is_element(c, NS_MESSAGES, "RootFolder")) {
            /* FindItem: m:RootFolder/t:Items/t:CalendarItem|t:Task/t:ItemId */
            xmlNode *items = find_child(c, NS_TYPES, "Items");
            if (items != NULL && collect_items(items, message) != 0)
                goto out_of_memory;
        }
        if (oom)
            goto out_of_memory;
    }

    one_line(message->response_code, SERVER_CODE_MAX_BYTES);
    one_line(message->inner_response_code, SERVER_CODE_MAX_BYTES);
    one_line(message->message_text, SERVER_TEXT_MAX_BYTES);
    if (message->response_code == NULL || message->response_code[0] == '\0') {
        if (message->response_class != EWS_CLASS_SUCCESS) {
            set_error(err, errlen, "response message %zu reports %s without a ResponseCode",
                      index + 1,
                      message->response_class == EWS_CLASS_ERROR ? "an error" : "a warning");
            return -1;
        }
        /* Success needs no code; say so the way Exchange would. */
        free(message->response_code);
        message->response_code = dup_trimmed("NoError");
        if (message->response_code == NULL)
            goto out_of_memory;
    }
    message->code = effective_code(message->response_code, message->inner_response_code);
    return 0;

out_of_memory:
    set_error(err, errlen, "out of memory while reading the response");
    return -1;
}

/* m:CreateItemResponseMessage, m:FindItemResponseMessage, ... */
static bool is_response_message(const xmlNode *node)
{
    return in_namespace(node, NS_MESSAGES) && ends_with((const char *)node->name, "ResponseMessage");
}

/* m:<Operation>Response/m:ResponseMessages/m:*ResponseMessage, in document order. */
static int parse_response_messages(const xmlNode *operation, ews_response *response,
                                   char *err, size_t errlen)
{
    xmlNode *list = find_child(operation, NS_MESSAGES, "ResponseMessages");
    char quoted[64];

    if (list == NULL) {
        quote_for_message((const char *)operation->name, quoted, sizeof quoted);
        set_error(err, errlen, "no ResponseMessages in %s", quoted);
        return -1;
    }

    size_t count = 0;
    for (xmlNode *c = first_element_child(list); c != NULL; c = next_element(c))
        if (is_response_message(c))
            count++;
    if (count == 0) {
        set_error(err, errlen, "response contains no ResponseMessage");
        return -1;
    }

    response->messages = calloc(count, sizeof *response->messages);
    if (response->messages == NULL) {
        set_error(err, errlen, "out of memory while reading the response");
        return -1;
    }
    for (xmlNode *c = first_element_child(list); c != NULL; c = next_element(c)) {
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
    xmlNode *c = find_child(fault, NULL, local);
    return c != NULL ? c : find_child(fault, NS_SOAP, local);
}

static int parse_fault(const xmlNode *fault, ews_response *response, char *err, size_t errlen)
{
    bool oom = false;
    char *faultcode = text_of(find_fault_child(fault, "faultcode"), &oom);
    char *detail_code = NULL;
    int rc = -1;

    if (oom)
        goto out_of_memory;
    if (faultcode == NULL || faultcode[0] == '\0') {
        set_error(err, errlen, "SOAP Fault without faultcode");
        goto done;
    }

    response->fault_string = text_of(find_fault_child(fault, "faultstring"), &oom);

    xmlNode *detail = find_fault_child(fault, "detail");
    for (xmlNode *c = first_element_child(detail); c != NULL; c = next_element(c)) {
        if (is_element(c, NS_ERRORS, "ResponseCode") && detail_code == NULL)
            detail_code = text_of(c, &oom);
        else if (is_element(c, NS_TYPES, "MessageXml") || is_element(c, NS_ERRORS, "MessageXml"))
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
        response->fault_code = dup_trimmed(suffix ? colon + 1 : faultcode);
        if (response->fault_code == NULL)
            goto out_of_memory;
    }
    one_line(response->fault_code, SERVER_CODE_MAX_BYTES);
    one_line(response->fault_inner_code, SERVER_CODE_MAX_BYTES);
    one_line(response->fault_string, SERVER_TEXT_MAX_BYTES);
    response->fault_ews_code = effective_code(response->fault_code, response->fault_inner_code);
    rc = 0;
    goto done;

out_of_memory:
    set_error(err, errlen, "out of memory while reading the response");
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
        set_error(err, errlen, "response has no root element");
        return -1;
    }
    if (strcasecmp((const char *)root->name, "html") == 0) {
        set_error(err, errlen, "response is an HTML page, not SOAP (check [exchange] url)");
        return -1;
    }
    if (strcmp((const char *)root->name, "Envelope") != 0) {
        quote_for_message((const char *)root->name, quoted, sizeof quoted);
        set_error(err, errlen, "no SOAP Envelope (root element is <%s>)", quoted);
        return -1;
    }
    if (!is_element(root, NS_SOAP, "Envelope")) {
        quote_for_message(namespace_of(root), quoted, sizeof quoted);
        set_error(err, errlen, "unexpected namespace \"%s\" on Envelope (expected SOAP 1.1%s)",
                  quoted, strcmp(namespace_of(root), NS_SOAP12) == 0 ? ", got SOAP 1.2" : "");
        return -1;
    }

    xmlNode *body = find_child(root, NS_SOAP, "Body");
    if (body == NULL) {
        set_error(err, errlen, "no SOAP Body");
        return -1;
    }
    xmlNode *payload = first_element_child(body);
    if (payload == NULL) {
        set_error(err, errlen, "SOAP Body is empty");
        return -1;
    }
    if (is_element(payload, NS_SOAP, "Fault"))
        return parse_fault(payload, response, err, errlen);

    if (!in_namespace(payload, NS_MESSAGES)) {
        quote_for_message(namespace_of(payload), quoted, sizeof quoted);
        char name[64];
        quote_for_message((const char *)payload->name, name, sizeof name);
        set_error(err, errlen, "unexpected namespace \"%s\" on %s (expected EWS messages)",
                  quoted, name);
        return -1;
    }
    if (!ends_with((const char *)payload->name, "Response")) {
        quote_for_message((const char *)payload->name, quoted, sizeof quoted);
        set_error(err, errlen, "SOAP Body holds %s, not an EWS response", quoted);
        return -1;
    }
    return parse_response_messages(payload, response, err, errlen);
}

int ews_response_parse(const char *body, size_t len, ews_response **out, char *err,
                       size_t errlen)
{
    parse_state state = { 0 };
    xmlParserCtxtPtr ctxt = NULL;
    ews_response *response = NULL;
    int rc = -1;

    set_error(err, errlen, "%s", "");
    if (out == NULL) {
        set_error(err, errlen, "no place for the result");
        return -1;
    }
    *out = NULL;
    if (body == NULL || len == 0) {
        set_error(err, errlen, "empty response");
        return -1;
    }
    if (len > EWS_RESPONSE_MAX_BYTES) {
        set_error(err, errlen, "response larger than %u bytes", EWS_RESPONSE_MAX_BYTES);
        return -1;
    }
    if (looks_like_html(body, len)) {
        set_error(err, errlen, "response is an HTML page, not SOAP (check [exchange] url)");
        return -1;
    }

    ctxt = xmlCreateMemoryParserCtxt(body, (int)len);
    if (ctxt == NULL) {
        set_error(err, errlen, "out of memory creating the XML parser");
        return -1;
    }
    ctxt->_private = &state;
    /* Per-parse handlers on this context (userData is ctxt itself here), so concurrent
     * parses in other threads and other libxml2 users are unaffected. */
    ctxt->sax->internalSubset = refuse_doctype;
    ctxt->sax->serror = record_parser_error;
    ctxt->sax->error = NULL;
    ctxt->sax->warning = NULL;
    xmlCtxtUseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_NOWARNING);
    ctxt->replaceEntities = 0;      /* whatever the process-wide default says */
    ctxt->loadsubset = 0;

    /* libxml2's handler globals are per thread: swapping them here and back affects
     * no other thread and leaves the caller's handler as it was. */
    xmlStructuredErrorFunc saved_handler = xmlStructuredError;
    void *saved_context = xmlStructuredErrorContext;
    xmlSetStructuredErrorFunc(&state, record_stray_error);
    int parse_rc = xmlParseDocument(ctxt);
    xmlSetStructuredErrorFunc(saved_context, saved_handler);

    if (state.doctype_seen || (ctxt->myDoc != NULL &&
                               (ctxt->myDoc->intSubset != NULL || ctxt->myDoc->extSubset != NULL))) {
        set_error(err, errlen, "DOCTYPE not allowed");
        goto done;
    }
    /* An unbound prefix is only a namespace error to libxml2; for us it is as broken
     * as a syntax error, since elements are told apart by namespace. */
    if (parse_rc != 0 || !ctxt->wellFormed || !ctxt->nsWellFormed || ctxt->myDoc == NULL) {
        set_error(err, errlen, "response is not XML: %s",
                  state.have_error ? state.first_error : "not well-formed");
        goto done;
    }

    response = calloc(1, sizeof *response);
    if (response == NULL) {
        set_error(err, errlen, "out of memory while reading the response");
        goto done;
    }
    response->fault_ews_code = EWS_NO_ERROR;
    response->fault_back_off_ms = -1;
    if (interpret_document(ctxt->myDoc, response, err, errlen) != 0)
        goto done;

    *out = response;
    response = NULL;
    rc = 0;

done:
    ews_response_free(response);
    if (ctxt != NULL) {
        xmlFreeDoc(ctxt->myDoc);
        ctxt->myDoc = NULL;
        xmlFreeParserCtxt(ctxt);
    }
    return rc;
}
