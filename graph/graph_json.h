/* graph_json — Microsoft Graph request bodies and answers as JSON (json-c): the
 * event and To Do task of an outlook_item, the OData $filter that finds an item by the
 * name of its contact log, $batch envelopes, and safe parsers for what Graph sends
 * back. Pure functions: no I/O, no event loop, so the unit tests call them directly. */
#ifndef FOLLOWUPD_GRAPH_JSON_H
#define FOLLOWUPD_GRAPH_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "daemon/outlook_item.h"

/* The same MAPI property as EWS uses (outlook_item.h), spelt as a Graph
 * singleValueExtendedProperty id. */
#define GRAPH_PROPERTY_ID "String {" OUTLOOK_TAG_PROPERTY_SET_ID "} Name " OUTLOOK_TAG_PROPERTY_NAME

/* linkedResources applicationName of every task. */
#define GRAPH_APPLICATION_NAME "CRM"

/* Largest answer we parse (http_client caps the transfer at this size). */
#define GRAPH_RESPONSE_MAX_BYTES (4u * 1024u * 1024u)

/* Most requests in one $batch (Graph's limit). */
#define GRAPH_BATCH_MAX 20

/* "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" from 16 random bytes (an event's
 * transactionId). buf >= 37 bytes. */
void graph_json_uuid(char *buf, size_t size, const unsigned char random[16]);

/* "2030-03-01T09:00:00": a Unix time as Graph's dateTime in UTC. buf >= 20 bytes. */
void graph_json_datetime(char *buf, size_t size, int64_t unix_seconds);

/* An event: subject, HTML body, start/end in UTC, originalStartTimeZone /
 * originalEndTimeZone (item->time_zone, when set), reminder, importance, showAs busy,
 * no attendees, and the singleValueExtendedProperty naming the log. The same body
 * serves POST (create) and PATCH (update). NULL when out of memory. */
json_object *graph_json_event(const outlook_item *item);

/* A To Do task: title, HTML body, importance, dueDateTime (midnight of the due day in
 * item->time_zone, SPEC section 3), reminderDateTime in UTC (the follow-up itself),
 * status; with_link adds the linkedResources entry (webUrl = item->link, externalId =
 * the log's tag), which only a create can carry. NULL when out of memory. */
json_object *graph_json_task(const outlook_item *item, bool with_link);

/* The body as compact JSON text (malloc'd, '/' not escaped); *len gets its length. */
char *graph_json_text(json_object *obj, size_t *len);

/* OData $filter values (not yet URL-encoded), malloc'd:
 *   singleValueExtendedProperties/Any(ep: ep/id eq '<GRAPH_PROPERTY_ID>' and ep/value eq '<tag>')
 *   linkedResources/any(r: r/externalId eq '<tag>') */
char *graph_json_event_filter(int64_t log_id);
char *graph_json_task_filter(int64_t log_id);

/* Percent-encodes everything but RFC 3986 unreserved characters (and '@' when
 * keep_at), for path segments and query values. malloc'd; NULL when out of memory. */
char *graph_url_escape(const char *text, bool keep_at);

/* ---- answers ---------------------------------------------------------------- */

/* {"error": {"code": ..., "message": ...}}: fills code and message (empty when absent).
 * Returns 0 when the body was such an error object, -1 otherwise. */
int graph_json_parse_error(const char *body, size_t len, char *code, size_t code_size,
                           char *message, size_t message_size);

/* body as one JSON object (at most GRAPH_RESPONSE_MAX_BYTES, nesting bounded); with
 * nothing_after, only blanks may follow it. NULL with the reason in err. */
json_object *graph_json_parse_object(const char *body, size_t len, bool nothing_after,
                                    char *err, size_t errlen) __attribute__((warn_unused_result));

/* obj's member key when it is a string, else NULL (also for obj NULL). */
const char *graph_json_string(json_object *obj, const char *key);

/* An entity's version: its changeKey, else its @odata.etag without the W/"..."
 * wrapping (To Do tasks); malloc'd, NULL when it names none (*oom: out of memory). */
char *graph_json_change_key(json_object *entity, bool *oom) __attribute__((warn_unused_result));

/* An entity: its "id" and its "changeKey" (events) — change_key may come back NULL.
 * Returns 0, or -1 with the reason in err (no id, not JSON, ...). */
int graph_json_parse_entity(const char *body, size_t len, char **id, char **change_key,
                            char *err, size_t errlen);

/* A collection ({"value": [...]}): the "id" (and "changeKey") of each member, as
 * malloc'd arrays of malloc'd strings (change_keys entries may be NULL). */
typedef struct graph_id_list {
    size_t n;
    char **ids;
    char **change_keys;
} graph_id_list;

int graph_json_parse_collection(const char *body, size_t len, graph_id_list *out,
                                char *err, size_t errlen);
void graph_id_list_clear(graph_id_list *list);

/* ---- $batch ----------------------------------------------------------------- */

typedef struct graph_batch_request {
    const char *id;              /* unique within the batch */
    const char *method;
    const char *url;             /* relative to the version root: "/users/..." */
    json_object *body;           /* borrowed; NULL for none */
} graph_batch_request;

/* {"requests": [...]} for POST {base_url}/$batch. malloc'd JSON text. */
char *graph_json_batch(const graph_batch_request *requests, size_t n, const char *prefer,
                       size_t *len);

typedef struct graph_batch_response {
    char *id;
    long status;
    int64_t retry_after_ms;      /* member's Retry-After header, -1 none */
    char *body;                  /* the member's body as JSON text ("" when none) */
    size_t body_len;
} graph_batch_response;

/* The members of a $batch answer, in the order Graph sent them. */
int graph_json_parse_batch(const char *body, size_t len, graph_batch_response **out,
                           size_t *n, char *err, size_t errlen);
void graph_batch_responses_free(graph_batch_response *responses, size_t n);

#endif
