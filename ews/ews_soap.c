/* ews_soap — see ews_soap.h. The tree API escapes text and attribute values itself;
 * nothing here pastes strings together. */
#include "ews/ews_soap.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/outlook_item.h"

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_MESSAGES "http://schemas.microsoft.com/exchange/services/2006/messages"

xmlNodePtr ews_soap_element(ews_soap *b, xmlNodePtr parent, xmlNsPtr ns,
                            const char *name)
{
    if (parent == NULL) {
        b->failed = true;
        return NULL;
    }
    xmlNodePtr node = xmlNewChild(parent, ns, BAD_CAST name, NULL);
    if (node == NULL)
        b->failed = true;
    return node;
}

/* An element whose text is escaped on output (xmlNewTextChild, unlike xmlNewChild,
 * does not interpret '&' in the content). */
xmlNodePtr ews_soap_text(ews_soap *b, xmlNodePtr parent, xmlNsPtr ns,
                         const char *name, const char *text)
{
    if (parent == NULL) {
        b->failed = true;
        return NULL;
    }
    xmlNodePtr node = xmlNewTextChild(parent, ns, BAD_CAST name, BAD_CAST text);
    /* libxml2 ignores a failed text-node allocation inside xmlNewTextChild. */
    if (node == NULL || (text[0] != '\0' && node->children == NULL))
        b->failed = true;
    return node;
}

void ews_soap_attribute(ews_soap *b, xmlNodePtr node, const char *name,
                        const char *value)
{
    if (node == NULL) {
        b->failed = true;
        return;
    }
    xmlAttrPtr attr = xmlNewProp(node, BAD_CAST name, BAD_CAST value);
    if (attr == NULL || (value[0] != '\0' && attr->children == NULL))
        b->failed = true;
}

/* The envelope, header and empty body shared by every request. time_zone: the
 * Windows id of the request's TimeZoneContext, NULL for none. */
bool ews_soap_start(ews_soap *b, const ews_request_options *opt,
                    const char *time_zone)
{
    memset(b, 0, sizeof *b);
    b->doc = xmlNewDoc(BAD_CAST "1.0");
    if (b->doc == NULL)
        return false;

    xmlNodePtr envelope = xmlNewDocNode(b->doc, NULL, BAD_CAST "Envelope", NULL);
    if (envelope == NULL)
        return false;
    xmlDocSetRootElement(b->doc, envelope);

    b->ns_soap = xmlNewNs(envelope, BAD_CAST NS_SOAP, BAD_CAST "soap");
    b->ns_t = xmlNewNs(envelope, BAD_CAST NS_TYPES, BAD_CAST "t");
    b->ns_m = xmlNewNs(envelope, BAD_CAST NS_MESSAGES, BAD_CAST "m");
    if (b->ns_soap == NULL || b->ns_t == NULL || b->ns_m == NULL)
        return false;
    xmlSetNs(envelope, b->ns_soap);

    xmlNodePtr header = ews_soap_element(b, envelope, b->ns_soap, "Header");
    xmlNodePtr version = ews_soap_element(b, header, b->ns_t, "RequestServerVersion");
    ews_soap_attribute(b, version, "Version", opt->server_version);

    /* Impersonation names the mailbox once, in the header; delegate access names it
     * in every DistinguishedFolderId instead (ews_soap_folder_id). SmtpAddress, not
     * PrimarySmtpAddress: employee.email may be any of the mailbox's addresses, and
     * only SmtpAddress resolves an alias (SPEC section 4). */
    if (opt->impersonation) {
        xmlNodePtr impersonation = ews_soap_element(b, header, b->ns_t, "ExchangeImpersonation");
        xmlNodePtr sid = ews_soap_element(b, impersonation, b->ns_t, "ConnectingSID");
        ews_soap_text(b, sid, b->ns_t, "SmtpAddress", opt->mailbox);
    }

    /* Exchange reads a task's DueDate as a date in this zone; without the header it
     * would take the date in UTC, a day early east of Greenwich before dawn. */
    if (time_zone != NULL) {
        xmlNodePtr context = ews_soap_element(b, header, b->ns_t, "TimeZoneContext");
        xmlNodePtr definition = ews_soap_element(b, context, b->ns_t, "TimeZoneDefinition");
        ews_soap_attribute(b, definition, "Id", time_zone);
    }

    b->body = ews_soap_element(b, envelope, b->ns_soap, "Body");
    return !b->failed;
}

/* Serialises the document into a malloc'd buffer (the header promises free(), and
 * xmlFree need not be free) and releases the tree. */
char *ews_soap_finish(ews_soap *b, size_t *len)
{
    xmlChar *xml = NULL;
    int size = 0;
    char *out = NULL;

    if (b->failed || b->doc == NULL)
        goto done;
    xmlDocDumpMemoryEnc(b->doc, &xml, &size, "UTF-8");
    if (xml == NULL || size <= 0)
        goto done;
    out = malloc((size_t)size + 1);
    if (out == NULL)
        goto done;
    memcpy(out, xml, (size_t)size);
    out[size] = '\0';
    if (len != NULL)
        *len = (size_t)size;
done:
    xmlFree(xml);
    xmlFreeDoc(b->doc);
    b->doc = NULL;
    return out;
}

void ews_soap_abandon(ews_soap *b)
{
    xmlFreeDoc(b->doc);
    b->doc = NULL;
}

void ews_soap_folder_id(ews_soap *b, xmlNodePtr parent, const ews_request_options *opt,
                        const char *folder)
{
    xmlNodePtr id = ews_soap_element(b, parent, b->ns_t, "DistinguishedFolderId");
    ews_soap_attribute(b, id, "Id", folder);
    if (!opt->impersonation) {
        xmlNodePtr mailbox = ews_soap_element(b, id, b->ns_t, "Mailbox");
        ews_soap_text(b, mailbox, b->ns_t, "EmailAddress", opt->mailbox);
    }
}

void ews_soap_naming_field_uri(ews_soap *b, xmlNodePtr parent)
{
    xmlNodePtr uri = ews_soap_element(b, parent, b->ns_t, "ExtendedFieldURI");
    ews_soap_attribute(b, uri, "PropertySetId", OUTLOOK_TAG_PROPERTY_SET_ID);
    ews_soap_attribute(b, uri, "PropertyName", OUTLOOK_TAG_PROPERTY_NAME);
    ews_soap_attribute(b, uri, "PropertyType", "String");
}

const char *ews_soap_folder_name(outlook_item_kind kind)
{
    return kind == OUTLOOK_TASK ? "tasks" : "calendar";
}
