/* ews_response — safe parser for EWS SOAP responses.
 * No network access, no entity expansion, no DTD loading, size capped: server input
 * never crashes us or grows memory without bound. */
#ifndef FOLLOWUPD_EWS_RESPONSE_H
#define FOLLOWUPD_EWS_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libxml/tree.h>

#include "ews/ews_errors.h"

#define EWS_RESPONSE_MAX_BYTES (4u * 1024u * 1024u)

/* BackOffMilliseconds larger than this (one day) are reported as this, so a hostile
 * or broken hint cannot overflow the caller's time arithmetic. */
#define EWS_RESPONSE_MAX_BACK_OFF_MS INT64_C(86400000)

typedef enum ews_response_class {
    EWS_CLASS_SUCCESS,
    EWS_CLASS_WARNING,
    EWS_CLASS_ERROR,
} ews_response_class;

typedef struct ews_found_item {
    char *item_id;
    char *change_key;    /* may be NULL */
    char *tag;           /* value of our naming property when returned, else NULL */
} ews_found_item;

/* One m:*ResponseMessage, in document order (one per item sent). */
typedef struct ews_response_message {
    ews_response_class response_class;
    char *response_code;          /* "NoError", "ErrorServerBusy", ... (never NULL) */
    char *inner_response_code;    /* MessageXml InnerErrorResponseCode, NULL when absent */
    ews_code code;                /* what it means: inner_response_code's entry when the
                                     table has one, else response_code's */
    char *message_text;           /* may be NULL */
    int64_t back_off_ms;          /* MessageXml BackOffMilliseconds, -1 when absent */
    size_t n_items;               /* items returned: CreateItem/UpdateItem 0..1, FindItem 0..n */
    ews_found_item *items;
} ews_response_message;

typedef struct ews_response {
    /* A SOAP Fault instead of response messages: fault_code is set (e.g. "ErrorServerBusy",
     * the part after the prefix), code mapped from it (or from the detail's
     * InnerErrorResponseCode, as for messages), back_off_ms from the detail. */
    char *fault_code;
    char *fault_inner_code;       /* NULL when absent */
    char *fault_string;
    ews_code fault_ews_code;
    int64_t fault_back_off_ms;
    size_t n_messages;
    ews_response_message *messages;
} ews_response;

/* Parses body[0..len). On success returns 0 and *out (free with ews_response_free).
 * On failure returns -1 and writes a one-line reason into err (e.g. "response is not
 * XML: ...", "response larger than 4194304 bytes", "DOCTYPE not allowed",
 * "no SOAP Body", "unexpected namespace ..."). */
int ews_response_parse(const char *body, size_t len, ews_response **out,
                       char *err, size_t errlen)
    __attribute__((warn_unused_result));

void ews_response_free(ews_response *response);

/* The value of our naming property among an item's t:ExtendedProperty children
 * (malloc'd), NULL when it has none (*oom: out of memory). */
char *ews_response_item_tag(const xmlNode *item, bool *oom);

#endif
