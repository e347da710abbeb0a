/* ews_xml — server XML read without trusting a byte of it: a hardened libxml2
 * parse (no network, no entities, no DTD; a DOCTYPE stops the parser at once;
 * libxml2's messages kept for the caller, not printed), and the walk over the tree
 * by namespace URI and local name, never by prefix. */
#ifndef FOLLOWUPD_EWS_XML_H
#define FOLLOWUPD_EWS_XML_H

#include <stdbool.h>
#include <stddef.h>

#include <libxml/tree.h>

/* Parses body[0..len) (the caller caps its size) into a document (xmlFreeDoc), or
 * NULL with a one-line reason in err: "DOCTYPE not allowed", "response is not XML:
 * line N: ...", out of memory. */
xmlDoc *ews_xml_parse(const char *body, size_t len, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* A copy of s cut to outlen for quoting in an error message: white space becomes a
 * blank, other control characters and anything non-ASCII '?', trailing blanks go.
 * Server text must not forge log lines. */
void ews_xml_quote(const char *s, char *out, size_t outlen);

/* Is node the element local in namespace ns_uri (NULL: in no namespace)? */
bool ews_xml_is_element(const xmlNode *node, const char *ns_uri, const char *local);
bool ews_xml_in_namespace(const xmlNode *node, const char *ns_uri);
/* For messages: the namespace URI, or a note that there is none. */
const char *ews_xml_namespace_of(const xmlNode *node);

xmlNode *ews_xml_first_child(const xmlNode *parent);
xmlNode *ews_xml_next_element(const xmlNode *node);
xmlNode *ews_xml_find_child(const xmlNode *parent, const char *ns_uri, const char *local);

/* The element's text content, trimmed, malloc'd; NULL for a NULL node, or on out of
 * memory, which *oom tells apart. */
char *ews_xml_text(const xmlNode *node, bool *oom);
/* An unqualified attribute's value, trimmed, malloc'd; NULL when absent, or on out
 * of memory (*oom). */
char *ews_xml_attribute(const xmlNode *node, const char *name, bool *oom);

#endif
