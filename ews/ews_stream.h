/* ews_stream — the EWS back end's watch (daemon/delivery.h): Exchange streaming
 * notifications as hints that a mailbox changed. One streaming subscription per
 * mailbox (calendar and tasks folders), grouped by up to 200 as Microsoft advises
 * for many mailboxes with impersonation (X-AnchorMailbox of the group's first
 * mailbox, X-PreferServerAffinity, the X-BackEndOverrideCookie the server sets), one
 * GetStreamingEvents connection per group, read as it arrives.
 *
 * The watcher of a back end is made by its first watch() and found by the back end
 * (ews_backend has no slot for it). */
#ifndef FOLLOWUPD_EWS_STREAM_H
#define FOLLOWUPD_EWS_STREAM_H

#include <stddef.h>

#include "daemon/delivery.h"
#include "ews/ews_backend.h"

/* delivery_ops.watch; impl is the ews_backend. Cheap when the set did not change
 * (no request, no allocation). changed() is called from the event loop, never from
 * inside this call; it may call watch() again, but must not free the back end. */
int ews_stream_watch(void *impl, const char *const *mailboxes, size_t n,
                     delivery_changed_fn changed, void *userdata)
    __attribute__((warn_unused_result));

/* The daemon is stopping: streams closed, requests dropped, no more callbacks. */
void ews_stream_stop(ews_backend *b);

/* Before b's HTTP client goes: cancels everything of b's watcher and frees it. */
void ews_stream_free(ews_backend *b);

#endif
