/* ews_request — builds EWS SOAP 1.1 request envelopes with the libxml2 tree API.
 * Every envelope validates against Microsoft's messages.xsd/types.xsd.
 * Each builder returns a malloc'd, NUL-terminated UTF-8 document (free with free())
 * and stores its length in *len, or returns NULL (out of memory, bad argument). */
#ifndef FOLLOWUPD_EWS_REQUEST_H
#define FOLLOWUPD_EWS_REQUEST_H

#include <stddef.h>
#include "daemon/outlook_item.h"

typedef struct ews_request_options {
    const char *server_version;  /* t:RequestServerVersion/@Version, e.g. "Exchange2013_SP1" */
    const char *mailbox;         /* SMTP address of the mailbox worked on */
    bool impersonation;          /* true: t:ExchangeImpersonation header;
                                    false: t:DistinguishedFolderId/t:Mailbox (delegate access) */
} ews_request_options;

/* CreateItem of n items, all of the same kind, into the mailbox's calendar or tasks
 * folder. Calendar items: SendMeetingInvitations="SendToNone". */
char *ews_request_create_items(const ews_request_options *opt, const outlook_item *items,
                               size_t n, size_t *len)
    __attribute__((warn_unused_result));

/* UpdateItem: overwrite every field we own (SetItemField per field) on an existing item. */
char *ews_request_update_item(const ews_request_options *opt, const outlook_item_ref *ref,
                              const outlook_item *item, size_t *len)
    __attribute__((warn_unused_result));

/* DeleteItem, moved to Deleted Items, no cancellations sent. */
char *ews_request_delete_item(const ews_request_options *opt, outlook_item_kind kind,
                              const outlook_item_ref *ref, size_t *len)
    __attribute__((warn_unused_result));

/* FindItem in the kind's folder, restricted to items whose naming property equals
 * outlook_item_tag(log_id, kind). */
char *ews_request_find_item(const ews_request_options *opt, outlook_item_kind kind,
                            int64_t log_id, size_t *len)
    __attribute__((warn_unused_result));

/* GetFolder of the mailbox's calendar (a harmless call for test-connection). */
char *ews_request_get_folder(const ews_request_options *opt, size_t *len)
    __attribute__((warn_unused_result));

#endif
