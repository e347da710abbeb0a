/* ews_xml — see ews_xml.h.
 *
 * libxml2 runs with XML_PARSE_NONET and without NOENT, DTDLOAD, HUGE or RECOVER, so
 * no entity is substituted, nothing is fetched, the default depth and size limits
 * hold and malformed input is an error, not a guess. A DOCTYPE stops the parser from
 * the SAX internalSubset callback, before a single declaration of the internal
 * subset is read: no XXE, no billion laughs, whatever the encoding. libxml2's
 * messages go to per-parse handlers that keep the first one for the caller. */
#include "ews/ews_xml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/xmlerror.h>

#include "daemon/text.h"

/* Long enough for any libxml2 message; what goes into err is cut to errlen anyway. */
#define PARSE_ERROR_SIZE 256

/* State shared with the libxml2 callbacks through ctxt->_private. */
typedef struct parse_state {
    bool doctype_seen;
    bool have_error;
    char first_error[PARSE_ERROR_SIZE];
} parse_state;

/* A copy of s cut to outlen for quoting in an error message: white space becomes a
 * blank, other control characters and anything non-ASCII '?', trailing blanks go.
 * Server text must not forge log lines. */
void ews_xml_quote(const char *s, char *out, size_t outlen)
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

bool ews_xml_is_element(const xmlNode *node, const char *ns_uri, const char *local)
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

bool ews_xml_in_namespace(const xmlNode *node, const char *ns_uri)
{
    return node != NULL && node->type == XML_ELEMENT_NODE && node->ns != NULL &&
           node->ns->href != NULL && strcmp((const char *)node->ns->href, ns_uri) == 0;
}

/* For messages: the namespace URI, or a note that there is none. */
const char *ews_xml_namespace_of(const xmlNode *node)
{
    return node->ns != NULL && node->ns->href != NULL ? (const char *)node->ns->href
                                                      : "(none)";
}

xmlNode *ews_xml_first_child(const xmlNode *parent)
{
    for (xmlNode *c = parent != NULL ? parent->children : NULL; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return c;
    return NULL;
}

xmlNode *ews_xml_next_element(const xmlNode *node)
{
    for (xmlNode *c = node->next; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return c;
    return NULL;
}

xmlNode *ews_xml_find_child(const xmlNode *parent, const char *ns_uri, const char *local)
{
    for (xmlNode *c = ews_xml_first_child(parent); c != NULL; c = ews_xml_next_element(c))
        if (ews_xml_is_element(c, ns_uri, local))
            return c;
    return NULL;
}

/* A trimmed, malloc'd copy of a string libxml2 handed over, which is freed. */
static char *take_trimmed(xmlChar *value, bool *oom)
{
    char *out = text_dup_trimmed((const char *)value);
    xmlFree(value);
    if (out == NULL)
        *oom = true;
    return out;
}

/* The element's text content, trimmed, malloc'd; NULL on out of memory.
 * *oom tells that case apart from a NULL node. */
char *ews_xml_text(const xmlNode *node, bool *oom)
{
    if (node == NULL)
        return NULL;
    xmlChar *content = xmlNodeGetContent(node);
    if (content == NULL) {
        /* An element with no text at all also yields NULL. */
        char *empty = text_dup_trimmed("");
        if (empty == NULL)
            *oom = true;
        return empty;
    }
    return take_trimmed(content, oom);
}

char *ews_xml_attribute(const xmlNode *node, const char *name, bool *oom)
{
    /* Unqualified attributes only: EWS never qualifies its own. */
    xmlChar *value = xmlGetNoNsProp(node, BAD_CAST name);
    if (value == NULL)
        return NULL;
    return take_trimmed(value, oom);
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
    ews_xml_quote(error->message != NULL ? error->message : "unknown error",
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

/* ---- the parse ------------------------------------------------------------- */

xmlDoc *ews_xml_parse(const char *body, size_t len, char *err, size_t errlen)
{
    parse_state state = { 0 };
    xmlDoc *doc = NULL;

    xmlParserCtxtPtr ctxt = xmlCreateMemoryParserCtxt(body, (int)len);
    if (ctxt == NULL) {
        text_set_error(err, errlen, "out of memory creating the XML parser");
        return NULL;
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

    if (state.doctype_seen ||
        (ctxt->myDoc != NULL &&
         (ctxt->myDoc->intSubset != NULL || ctxt->myDoc->extSubset != NULL))) {
        text_set_error(err, errlen, "DOCTYPE not allowed");
        goto done;
    }
    /* An unbound prefix is only a namespace error to libxml2; for us it is as broken
     * as a syntax error, since elements are told apart by namespace. */
    if (parse_rc != 0 || !ctxt->wellFormed || !ctxt->nsWellFormed || ctxt->myDoc == NULL) {
        text_set_error(err, errlen, "response is not XML: %s",
                       state.have_error ? state.first_error : "not well-formed");
        goto done;
    }

    doc = ctxt->myDoc;
    ctxt->myDoc = NULL;

done:
    xmlFreeDoc(ctxt->myDoc);
    ctxt->myDoc = NULL;
    xmlFreeParserCtxt(ctxt);
    return doc;
}
