/* ews_stream_xml — the SOAP of EWS streaming notifications: the Subscribe,
 * Unsubscribe and GetStreamingEvents requests (built with ews_soap, valid against
 * Microsoft's schema), the SubscriptionId of a Subscribe answer, and the envelopes of
 * a GetStreamingEvents answer: found one by one in the bytes as they arrive
 * (ews_stream_splitter), then read (ews_stream_envelope_parse). */
#ifndef FOLLOWUPD_EWS_STREAM_XML_H
#define FOLLOWUPD_EWS_STREAM_XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ews/ews_request.h"

/* A subscription id or cookie value longer than this is not one Exchange made. */
#define EWS_STREAM_TOKEN_MAX 512
/* One envelope of a stream may not be longer (it is dropped with the connection). */
#define EWS_STREAM_ENVELOPE_MAX_BYTES (4u * 1024u * 1024u)
/* StreamingSubscriptionConnectionTimeoutType: 1..30 minutes. */
#define EWS_STREAM_CONNECTION_TIMEOUT_MAX 30

/* ---- requests (malloc'd documents, *len set; NULL: bad argument or out of memory) */

/* Subscribe: a streaming subscription to opt->mailbox's calendar and tasks folders for
 * items created, modified, deleted and moved. */
char *ews_stream_request_subscribe(const ews_request_options *opt, size_t *len)
    __attribute__((warn_unused_result));

/* Unsubscribe of one subscription (opt->mailbox: its mailbox, impersonated). */
char *ews_stream_request_unsubscribe(const ews_request_options *opt,
                                     const char *subscription_id, size_t *len)
    __attribute__((warn_unused_result));

/* GetStreamingEvents for n >= 1 subscriptions (opt->mailbox: the group's anchor,
 * impersonated), open for timeout_minutes (1..30). */
char *ews_stream_request_get_events(const ews_request_options *opt,
                                    const char *const *subscription_ids, size_t n,
                                    int timeout_minutes, size_t *len)
    __attribute__((warn_unused_result));

/* ---- answers ------------------------------------------------------------------ */

/* Is s a subscription id or cookie value we accept from a server: 1..512 printable
 * ASCII characters, none of them a blank, ';', ',', '"' or '\\'. */
bool ews_stream_token_ok(const char *s, size_t len);

/* The SubscriptionId of a successful Subscribe answer (malloc'd), or NULL with the
 * reason in err. Errors and faults are read with ews_response_parse first. */
char *ews_stream_subscription_id(const char *xml, size_t len, char *err, size_t errlen)
    __attribute__((warn_unused_result));

typedef enum ews_stream_status {
    EWS_STREAM_STATUS_NONE,      /* the envelope says nothing of the connection */
    EWS_STREAM_STATUS_OK,        /* the connection is up (also the heartbeat) */
    EWS_STREAM_STATUS_CLOSED,    /* the server ends the connection now */
} ews_stream_status;

typedef struct ews_stream_failure {
    char *subscription_id;
    char *code;                  /* ErrorExpiredSubscription, ... */
} ews_stream_failure;

/* What one envelope of a GetStreamingEvents answer says. */
typedef struct ews_stream_envelope {
    ews_stream_status status;
    /* Subscriptions with an item event (created, modified, deleted, moved, copied);
     * folder events and status events alone do not count. Each id once. */
    size_t n_changed;
    char **changed;
    /* Subscriptions the server dropped from the connection (ErrorSubscriptionIds). */
    size_t n_failed;
    ews_stream_failure *failed;
    /* An error of the connection as a whole (a response message without subscription
     * ids, or a SOAP fault): its code, NULL when none; the wait asked for, -1 none. */
    char *error_code;
    int64_t back_off_ms;
} ews_stream_envelope;

/* Reads one envelope. Returns 0 with *out (ews_stream_envelope_free), or -1 with a
 * one-line reason in err (not XML, DOCTYPE, not a GetStreamingEvents answer, ...). */
int ews_stream_envelope_parse(const char *xml, size_t len, ews_stream_envelope **out,
                              char *err, size_t errlen)
    __attribute__((warn_unused_result));
void ews_stream_envelope_free(ews_stream_envelope *envelope);

/* ---- the stream's bytes into envelopes ------------------------------------------
 * Exchange sends one envelope per HTTP chunk, without XML declaration; chunks reach
 * us decoded and cut anywhere, so an envelope ends where its root element closes.
 * The scan is incremental (each byte looked at once) and knows enough XML (quoted
 * attributes, comments, CDATA, processing instructions) not to be fooled by a '>'. */
typedef struct ews_stream_splitter {
    char *buf;
    size_t len, cap;
    size_t scanned;              /* bytes of buf already looked at */
    size_t start;                /* where the current document's first '<' is */
    size_t taken;                /* the document handed out last ends here */
    int state;
    int depth;                   /* elements open */
    bool started;                /* start is set */
    bool in_document;            /* the root element has opened */
    char quote;                  /* inside an attribute value: its quote */
    char last;                   /* the character before this one in a tag */
    int match;                   /* progress through "-->", "]]>" or "?>" */
} ews_stream_splitter;

void ews_stream_splitter_init(ews_stream_splitter *splitter);
void ews_stream_splitter_reset(ews_stream_splitter *splitter);   /* frees the buffer */

/* Appends len bytes. -1 when the envelope being read would exceed
 * EWS_STREAM_ENVELOPE_MAX_BYTES or memory runs out (then it is reset). */
int ews_stream_splitter_feed(ews_stream_splitter *splitter, const char *data, size_t len)
    __attribute__((warn_unused_result));

/* The next complete envelope: 1 with doc and doc_len set (valid until the next call), 0 when
 * none is complete yet, -1 with the reason in err when the bytes are not a sequence of
 * XML documents (text outside an element). */
int ews_stream_splitter_next(ews_stream_splitter *splitter, const char **doc,
                             size_t *doc_len, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
