/* graph_json — see graph_json.h. Built with json-c's object API, never by string
 * concatenation; parsed with a depth-limited tokener over a size-capped buffer. */
#include "graph/graph_json.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "daemon/text.h"
#include "http/http_client.h"

#define PARSE_DEPTH 32

/* ---- building --------------------------------------------------------------- */

/* Adds value under key; on any failure marks *ok false (value is released). */
static void add(json_object *obj, const char *key, json_object *value, bool *ok)
{
    if (!value) {
        *ok = false;
        return;
    }
    if (!obj || json_object_object_add(obj, key, value) < 0) {
        json_object_put(value);
        *ok = false;
    }
}

static void append(json_object *array, json_object *value, bool *ok)
{
    if (!value) {
        *ok = false;
        return;
    }
    if (!array || json_object_array_add(array, value) < 0) {
        json_object_put(value);
        *ok = false;
    }
}

static json_object *string_or_empty(const char *s)
{
    return json_object_new_string(s ? s : "");
}

void graph_json_uuid(char *buf, size_t size, const unsigned char random[16])
{
    unsigned char b[16];
    memcpy(b, random, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);   /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    snprintf(buf, size, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

void graph_json_datetime(char *buf, size_t size, int64_t unix_seconds)
{
    time_t t = (time_t)unix_seconds;
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        snprintf(buf, size, "1970-01-01T00:00:00");
}

static json_object *utc_time(int64_t unix_seconds)
{
    char text[32];
    bool ok = true;
    json_object *obj = json_object_new_object();
    graph_json_datetime(text, sizeof text, unix_seconds);
    add(obj, "dateTime", json_object_new_string(text), &ok);
    add(obj, "timeZone", json_object_new_string("UTC"), &ok);
    if (!ok) {
        json_object_put(obj);
        return NULL;
    }
    return obj;
}

/* A task's dueDateTime: midnight of its due day, in the zone that day is a date in
 * (SPEC section 3), e.g. {"dateTime": "2030-05-04T00:00:00.0000000", "timeZone":
 * "W. Europe Standard Time"}; Graph keeps the date as a date in that zone. Without a
 * day from the caller: the UTC date of start. */
static json_object *due_date_time(const outlook_item *item)
{
    char text[40];
    bool ok = true;
    int64_t wall = item->has_due_day ? item->due_day_start + item->due_utc_offset
                                     : item->start;
    time_t t = (time_t)wall;
    struct tm tm;
    bool zoned = item->has_due_day && item->time_zone && *item->time_zone;

    if ((int64_t)t != wall || !gmtime_r(&t, &tm) ||
        strftime(text, sizeof text, "%Y-%m-%dT00:00:00.0000000", &tm) == 0)
        return NULL;
    json_object *obj = json_object_new_object();
    add(obj, "dateTime", json_object_new_string(text), &ok);
    add(obj, "timeZone", json_object_new_string(zoned ? item->time_zone : "UTC"), &ok);
    if (!ok) {
        json_object_put(obj);
        return NULL;
    }
    return obj;
}

static json_object *html_body(const char *html)
{
    bool ok = true;
    json_object *obj = json_object_new_object();
    add(obj, "contentType", json_object_new_string("html"), &ok);
    add(obj, "content", string_or_empty(html), &ok);
    if (!ok) {
        json_object_put(obj);
        return NULL;
    }
    return obj;
}

static const char *importance_name(outlook_importance importance)
{
    switch (importance) {
    case OUTLOOK_IMPORTANCE_LOW: return "low";
    case OUTLOOK_IMPORTANCE_HIGH: return "high";
    case OUTLOOK_IMPORTANCE_NORMAL: break;
    }
    return "normal";
}

json_object *graph_json_event(const outlook_item *item)
{
    char tag[96];
    bool ok = outlook_item_tag(tag, sizeof tag, item->log_id, OUTLOOK_APPOINTMENT) > 0;
    json_object *event = json_object_new_object();

    add(event, "subject", string_or_empty(item->subject), &ok);
    add(event, "body", html_body(item->body_html), &ok);
    add(event, "start", utc_time(item->start), &ok);
    add(event, "end", utc_time(item->end), &ok);
    if (item->time_zone && *item->time_zone) {
        add(event, "originalStartTimeZone", json_object_new_string(item->time_zone), &ok);
        add(event, "originalEndTimeZone", json_object_new_string(item->time_zone), &ok);
    }
    add(event, "isReminderOn", json_object_new_boolean(1), &ok);
    add(event, "reminderMinutesBeforeStart", json_object_new_int(item->reminder_minutes), &ok);
    add(event, "importance", json_object_new_string(importance_name(item->importance)), &ok);
    add(event, "showAs", json_object_new_string("busy"), &ok);

    json_object *props = json_object_new_array();
    json_object *prop = json_object_new_object();
    add(prop, "id", json_object_new_string(GRAPH_PROPERTY_ID), &ok);
    add(prop, "value", json_object_new_string(tag), &ok);
    append(props, prop, &ok);
    add(event, "singleValueExtendedProperties", props, &ok);
    if (!ok) {
        json_object_put(event);
        return NULL;
    }
    return event;
}

json_object *graph_json_task(const outlook_item *item, bool with_link)
{
    bool ok = true;
    json_object *task = json_object_new_object();

    add(task, "title", string_or_empty(item->subject), &ok);
    add(task, "body", html_body(item->body_html), &ok);
    add(task, "importance", json_object_new_string(importance_name(item->importance)), &ok);
    add(task, "dueDateTime", due_date_time(item), &ok);
    add(task, "isReminderOn", json_object_new_boolean(1), &ok);
    add(task, "reminderDateTime", utc_time(item->start), &ok);
    add(task, "status", json_object_new_string(item->task_completed ? "completed"
                                                                     : "notStarted"), &ok);
    if (with_link) {
        char tag[96], name[64];
        ok = ok && outlook_item_tag(tag, sizeof tag, item->log_id, OUTLOOK_TASK) > 0;
        snprintf(name, sizeof name, "Contact log %" PRId64, item->log_id);
        json_object *links = json_object_new_array();
        json_object *link = json_object_new_object();
        if (item->link && *item->link)
            add(link, "webUrl", json_object_new_string(item->link), &ok);
        add(link, "applicationName", json_object_new_string(GRAPH_APPLICATION_NAME), &ok);
        add(link, "displayName", json_object_new_string(name), &ok);
        add(link, "externalId", json_object_new_string(tag), &ok);
        append(links, link, &ok);
        add(task, "linkedResources", links, &ok);
    }
    if (!ok) {
        json_object_put(task);
        return NULL;
    }
    return task;
}

char *graph_json_text(json_object *obj, size_t *len)
{
    size_t n = 0;
    const char *text = json_object_to_json_string_length(
        obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    if (!text)
        return NULL;
    char *copy = malloc(n + 1);
    if (!copy)
        return NULL;
    memcpy(copy, text, n + 1);
    if (len)
        *len = n;
    return copy;
}

char *graph_json_event_filter(int64_t log_id)
{
    char tag[96], *filter = NULL;
    if (outlook_item_tag(tag, sizeof tag, log_id, OUTLOOK_APPOINTMENT) < 0)
        return NULL;
    if (asprintf(&filter, "singleValueExtendedProperties/Any(ep: ep/id eq '%s' and "
                          "ep/value eq '%s')", GRAPH_PROPERTY_ID, tag) < 0)
        return NULL;
    return filter;
}

char *graph_json_task_filter(int64_t log_id)
{
    char tag[96], *filter = NULL;
    if (outlook_item_tag(tag, sizeof tag, log_id, OUTLOOK_TASK) < 0)
        return NULL;
    if (asprintf(&filter, "linkedResources/any(r: r/externalId eq '%s')", tag) < 0)
        return NULL;
    return filter;
}

char *graph_url_escape(const char *text, bool keep_at)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(text);
    char *out = malloc(3 * n + 1), *p = out;
    if (!out)
        return NULL;
    for (const unsigned char *s = (const unsigned char *)text; *s; s++) {
        if (isalnum(*s) || *s == '-' || *s == '.' || *s == '_' || *s == '~' ||
            (keep_at && *s == '@')) {
            *p++ = (char)*s;
        } else {
            *p++ = '%';
            *p++ = hex[*s >> 4];
            *p++ = hex[*s & 15];
        }
    }
    *p = '\0';
    return out;
}

/* ---- parsing ---------------------------------------------------------------- */

json_object *graph_json_parse_object(const char *body, size_t len, bool nothing_after,
                                    char *err, size_t errlen)
{
    if (!body || len == 0) {
        snprintf(err, errlen, "empty answer");
        return NULL;
    }
    if (len > GRAPH_RESPONSE_MAX_BYTES || len > (size_t)INT32_MAX) {
        snprintf(err, errlen, "answer larger than %u bytes", GRAPH_RESPONSE_MAX_BYTES);
        return NULL;
    }
    json_tokener *tok = json_tokener_new_ex(PARSE_DEPTH);
    if (!tok) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    json_object *obj = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    if (!obj || e != json_tokener_success) {
        snprintf(err, errlen, "not JSON: %s", json_tokener_error_desc(
                     e == json_tokener_continue ? json_tokener_error_parse_eof : e));
        json_object_put(obj);
        obj = NULL;
    } else if (!json_object_is_type(obj, json_type_object)) {
        snprintf(err, errlen, "not a JSON object");
        json_object_put(obj);
        obj = NULL;
    } else if (nothing_after) {
#if JSON_C_VERSION_NUM >= ((0 << 16) | (15 << 8))
        size_t end = json_tokener_get_parse_end(tok);
#else
        size_t end = (size_t)tok->char_offset;
#endif
        while (end < len && body[end] && strchr(" \t\r\n", body[end]))
            end++;
        if (end < len) {
            snprintf(err, errlen, "not JSON: something after the object");
            json_object_put(obj);
            obj = NULL;
        }
    }
    json_tokener_free(tok);
    return obj;
}

static json_object *parse(const char *body, size_t len, char *err, size_t errlen)
{
    return graph_json_parse_object(body, len, false, err, errlen);
}

/* A member that must be a string, else NULL. */
const char *graph_json_string(json_object *obj, const char *key)
{
    json_object *value;
    if (!obj || !json_object_object_get_ex(obj, key, &value) ||
        !json_object_is_type(value, json_type_string))
        return NULL;
    return json_object_get_string(value);
}

int graph_json_parse_error(const char *body, size_t len, char *code, size_t code_size,
                           char *message, size_t message_size)
{
    char err[128];
    json_object *error = NULL;
    /* One line, printable: they go into logs and followupctl status. */
    text_copy_one_line(code, code_size, "");
    text_copy_one_line(message, message_size, "");
    json_object *root = parse(body, len, err, sizeof err);
    if (!root)
        return -1;
    if (!json_object_object_get_ex(root, "error", &error) ||
        !json_object_is_type(error, json_type_object)) {
        json_object_put(root);
        return -1;
    }
    text_copy_one_line(code, code_size, graph_json_string(error, "code"));
    text_copy_one_line(message, message_size, graph_json_string(error, "message"));
    json_object_put(root);
    return 0;
}

char *graph_json_change_key(json_object *entity, bool *oom)
{
    const char *key = graph_json_string(entity, "changeKey");
    size_t n;
    *oom = false;
    if (!key) {
        /* A To Do task has no changeKey; its @odata.etag (W/"<key>") is the same
         * thing, and the delta query names versions by it too. */
        key = graph_json_string(entity, "@odata.etag");
        if (!key)
            return NULL;
        if (strncmp(key, "W/", 2) == 0)
            key += 2;
        n = strlen(key);
        if (n >= 2 && key[0] == '"' && key[n - 1] == '"') {
            key++;
            n -= 2;
        }
    } else {
        n = strlen(key);
    }
    char *copy = strndup(key, n);
    *oom = !copy;
    return copy;
}

static int entity_ids(json_object *obj, char **id, char **change_key)
{
    const char *i = graph_json_string(obj, "id");
    bool oom = false;
    *id = NULL;
    *change_key = NULL;
    if (!i || !*i)
        return -1;
    *id = strdup(i);
    *change_key = graph_json_change_key(obj, &oom);
    if (!*id || oom) {
        free(*id);
        free(*change_key);
        *id = *change_key = NULL;
        return -ENOMEM;
    }
    return 0;
}

int graph_json_parse_entity(const char *body, size_t len, char **id, char **change_key,
                            char *err, size_t errlen)
{
    *id = *change_key = NULL;
    json_object *root = parse(body, len, err, errlen);
    if (!root)
        return -1;
    int r = entity_ids(root, id, change_key);
    json_object_put(root);
    if (r < 0) {
        snprintf(err, errlen, r == -ENOMEM ? "out of memory" : "answer without an \"id\"");
        return -1;
    }
    return 0;
}

void graph_id_list_clear(graph_id_list *list)
{
    for (size_t i = 0; i < list->n; i++) {
        free(list->ids[i]);
        free(list->change_keys[i]);
    }
    free(list->ids);
    free(list->change_keys);
    memset(list, 0, sizeof *list);
}

int graph_json_parse_collection(const char *body, size_t len, graph_id_list *out,
                                char *err, size_t errlen)
{
    json_object *value;
    memset(out, 0, sizeof *out);
    json_object *root = parse(body, len, err, errlen);
    if (!root)
        return -1;
    if (!json_object_object_get_ex(root, "value", &value) ||
        !json_object_is_type(value, json_type_array)) {
        snprintf(err, errlen, "answer without a \"value\" array");
        json_object_put(root);
        return -1;
    }
    size_t n = json_object_array_length(value);
    if (n > 0) {
        out->ids = calloc(n, sizeof *out->ids);
        out->change_keys = calloc(n, sizeof *out->change_keys);
        if (!out->ids || !out->change_keys)
            goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *member = json_object_array_get_idx(value, i);
        int r = json_object_is_type(member, json_type_object)
                    ? entity_ids(member, &out->ids[out->n], &out->change_keys[out->n])
                    : -1;
        if (r == -ENOMEM)
            goto oom;
        if (r == 0)
            out->n++;   /* members without an id are skipped */
    }
    json_object_put(root);
    return 0;
oom:
    json_object_put(root);
    graph_id_list_clear(out);
    snprintf(err, errlen, "out of memory");
    return -1;
}

char *graph_json_batch(const graph_batch_request *requests, size_t n, const char *prefer,
                       size_t *len)
{
    bool ok = true;
    json_object *root = json_object_new_object();
    json_object *list = json_object_new_array();

    for (size_t i = 0; i < n; i++) {
        json_object *member = json_object_new_object();
        json_object *headers = json_object_new_object();
        add(member, "id", json_object_new_string(requests[i].id), &ok);
        add(member, "method", json_object_new_string(requests[i].method), &ok);
        add(member, "url", json_object_new_string(requests[i].url), &ok);
        if (prefer)
            add(headers, "Prefer", json_object_new_string(prefer), &ok);
        if (requests[i].body) {
            add(headers, "Content-Type", json_object_new_string("application/json"), &ok);
            add(member, "body", json_object_get(requests[i].body), &ok);
        }
        add(member, "headers", headers, &ok);
        append(list, member, &ok);
    }
    add(root, "requests", list, &ok);
    char *text = ok ? graph_json_text(root, len) : NULL;
    json_object_put(root);
    return text;
}

void graph_batch_responses_free(graph_batch_response *responses, size_t n)
{
    for (size_t i = 0; responses && i < n; i++) {
        free(responses[i].id);
        free(responses[i].body);
    }
    free(responses);
}

/* A member's Retry-After, read exactly as the HTTP header of a whole answer is. */
static int64_t header_retry_after(json_object *headers)
{
    if (!headers || !json_object_is_type(headers, json_type_object))
        return -1;
    json_object_object_foreach(headers, key, value) {
        if (strcasecmp(key, "Retry-After") != 0)
            continue;
        /* Graph sends a string; a bare JSON number means the same. */
        if (json_object_is_type(value, json_type_string) ||
            json_object_is_type(value, json_type_int))
            return http_retry_after_ms(json_object_get_string(value), time(NULL));
    }
    return -1;
}

int graph_json_parse_batch(const char *body, size_t len, graph_batch_response **out,
                           size_t *n_out, char *err, size_t errlen)
{
    json_object *responses;
    *out = NULL;
    *n_out = 0;
    json_object *root = parse(body, len, err, errlen);
    if (!root)
        return -1;
    if (!json_object_object_get_ex(root, "responses", &responses) ||
        !json_object_is_type(responses, json_type_array)) {
        snprintf(err, errlen, "$batch answer without a \"responses\" array");
        json_object_put(root);
        return -1;
    }
    size_t n = json_object_array_length(responses);
    graph_batch_response *list = n ? calloc(n, sizeof *list) : NULL;
    size_t kept = 0;
    if (n && !list)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        json_object *member = json_object_array_get_idx(responses, i), *status, *headers,
                    *member_body;
        const char *id = graph_json_string(member, "id");
        if (!id || !json_object_object_get_ex(member, "status", &status) ||
            !json_object_is_type(status, json_type_int))
            continue;   /* unusable member: its request counts as unanswered */
        graph_batch_response *r = &list[kept];
        r->id = strdup(id);
        r->status = (long)json_object_get_int64(status);
        r->retry_after_ms = header_retry_after(
            json_object_object_get_ex(member, "headers", &headers) ? headers : NULL);
        if (json_object_object_get_ex(member, "body", &member_body) &&
            !json_object_is_type(member_body, json_type_null)) {
            if (json_object_is_type(member_body, json_type_string)) {
                r->body = strdup(json_object_get_string(member_body));
                r->body_len = r->body ? strlen(r->body) : 0;
            } else {
                r->body = graph_json_text(member_body, &r->body_len);
            }
        } else {
            r->body = strdup("");
        }
        kept++;
        if (!r->id || !r->body)
            goto oom;
    }
    json_object_put(root);
    *out = list;
    *n_out = kept;
    return 0;
oom:
    json_object_put(root);
    graph_batch_responses_free(list, kept);
    snprintf(err, errlen, "out of memory");
    return -1;
}
