/* ews_soap — an EWS SOAP 1.1 envelope under construction with the libxml2 tree API:
 * soap:Envelope (xmlns:soap, xmlns:t, xmlns:m declared once, on the root), a
 * soap:Header with t:RequestServerVersion, [t:ExchangeImpersonation] and
 * [t:TimeZoneContext], and an empty soap:Body for the request to fill.
 *
 * Failures are sticky: the first failed libxml2 call (out of memory) sets failed, the
 * helpers do nothing once a parent is NULL, and ews_soap_finish gives NULL then, so
 * a builder checks only at the end. */
#ifndef FOLLOWUPD_EWS_SOAP_H
#define FOLLOWUPD_EWS_SOAP_H

#include <stdbool.h>
#include <stddef.h>

#include <libxml/tree.h>

#include "daemon/outlook_item.h"
#include "ews/ews_request.h"

typedef struct ews_soap {
    xmlDocPtr doc;
    xmlNodePtr body;
    xmlNsPtr ns_soap;
    xmlNsPtr ns_t;
    xmlNsPtr ns_m;
    bool failed;        /* set by the first failed libxml2 call: sticky */
} ews_soap;

/* The envelope, header and empty body shared by every request. time_zone: the
 * Windows id of the request's TimeZoneContext, NULL for none. False: out of memory
 * (then ews_soap_abandon). */
bool ews_soap_start(ews_soap *b, const ews_request_options *opt, const char *time_zone);

/* Serialises the document into a malloc'd buffer (free(), not xmlFree) and releases
 * the tree; NULL when anything failed. */
char *ews_soap_finish(ews_soap *b, size_t *len);
void ews_soap_abandon(ews_soap *b);

/* A child element of parent, in namespace ns. */
xmlNodePtr ews_soap_element(ews_soap *b, xmlNodePtr parent, xmlNsPtr ns, const char *name);
/* A child element holding text, escaped on output. */
xmlNodePtr ews_soap_text(ews_soap *b, xmlNodePtr parent, xmlNsPtr ns, const char *name,
                         const char *text);
void ews_soap_attribute(ews_soap *b, xmlNodePtr node, const char *name, const char *value);

/* t:DistinguishedFolderId Id=folder (calendar, tasks, ...), with t:Mailbox when no
 * impersonation header already names the mailbox (delegate access). */
void ews_soap_folder_id(ews_soap *b, xmlNodePtr parent, const ews_request_options *opt,
                        const char *folder);
/* t:ExtendedFieldURI of our naming property: as CreateItem writes it, FindItem and
 * SyncFolderItems ask for it. */
void ews_soap_naming_field_uri(ews_soap *b, xmlNodePtr parent);
/* The distinguished folder of a kind of item: "calendar" or "tasks". */
const char *ews_soap_folder_name(outlook_item_kind kind);

#endif
