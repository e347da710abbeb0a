/* graph_delta — see graph_delta.h. Links are taken apart by hand (only http/ may use
 * libcurl) and strictly: anything unusual in a stored link makes it unusable, and
 * the folder is then read afresh, which costs a round, never a change. */
#include "graph/graph_delta.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>

#include "daemon/text.h"
#include "daemon/timezone.h"
#include "graph/graph_json.h"

#define DAY_SECONDS INT64_C(86400)

/* ---- dates and times ----------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool leap_year(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int digits(const char *s, int n)
{
    int value = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        value = value * 10 + (s[i] - '0');
    }
    return value;
}

/* Graph's dateTime, "YYYY-MM-DDTHH:MM:SS" with up to seven fractional digits and an
 * optional "Z": *wall = its clock reading as seconds since the epoch, as if in UTC. */
static bool parse_wall_time(const char *text, int64_t *wall)
{
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!text || strlen(text) < 19 || text[4] != '-' || text[7] != '-' || text[10] != 'T' ||
        text[13] != ':' || text[16] != ':')
        return false;
    int year = digits(text, 4), month = digits(text + 5, 2), day = digits(text + 8, 2);
    int hour = digits(text + 11, 2), minute = digits(text + 14, 2), second = digits(text + 17, 2);
    const char *rest = text + 19;
    if (*rest == '.') {
        size_t n = strspn(rest + 1, "0123456789");
        if (n < 1 || n > 7)
            return false;
        rest += 1 + n;
    }
    if (*rest == 'Z')
        rest++;
    if (*rest || year < 1 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 ||
        minute < 0 || minute > 59 || second < 0 || second > 59)
        return false;
    if (day > month_days[month - 1] + (month == 2 && leap_year(year)))
        return false;
    *wall = days_from_civil(year, month, day) * DAY_SECONDS + hour * 3600 + minute * 60 + second;
    return true;
}

static bool format_utc(char *buf, size_t size, int64_t t, const char *format)
{
    time_t when = (time_t)t;
    struct tm tm;
    return (int64_t)when == t && gmtime_r(&when, &tm) && strftime(buf, size, format, &tm) > 0;
}

static bool utc_zone(const char *zone)
{
    static const char *const names[] = {"UTC", "Etc/UTC", "GMT", "Etc/GMT",
                                        "tzone://Microsoft/Utc"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(zone, names[i]) == 0)
            return true;
    return false;
}

/* The instant of a clock reading in zone (a Windows id or an IANA name), from the
 * offsets timezone.h gives at the day's start. A day with a clock change in it (or
 * that skips midnight) is refused: which side of the change the time is on cannot
 * be told from those. Graph answers in UTC when asked (outlook.timezone), so this
 * is the fallback. */
static bool local_to_utc(const char *zone, int64_t wall, int64_t *instant)
{
    int64_t midnight = floor_div(wall, DAY_SECONDS) * DAY_SECONDS;
    int64_t guess = midnight + DAY_SECONDS / 2, day_start = 0, next_start = 0;
    int offset = 0, next_offset = 0;

    /* Noon of that day there: the first offset may be another day's, the second not. */
    for (int round = 0; round < 2; round++) {
        if (timezone_day_start(zone, guess, &day_start, &offset) < 0)
            return false;
        guess = midnight + DAY_SECONDS / 2 - offset;
    }
    if (timezone_day_start(zone, guess, &day_start, &offset) < 0 ||
        day_start + offset != midnight ||
        timezone_day_start(zone, guess + DAY_SECONDS, &next_start, &next_offset) < 0 ||
        next_offset != offset)
        return false;
    *instant = wall - offset;
    return true;
}

/* ---- links ----------------------------------------------------------------------- */

typedef struct url_parts {
    const char *scheme, *host, *path;
    size_t scheme_len, host_len, path_len;   /* path: up to '?' or the end */
    long port;
} url_parts;

/* Only what RFC 3986 allows in a URL, and percent signs that begin an escape. No
 * fragment, no backslash, no white space, nothing a parser could read two ways. */
static bool plain_url(const char *url)
{
    for (const char *p = url; *p; p++) {
        if (*p == '%') {
            if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]))
                return false;
            continue;
        }
        if (!isalnum((unsigned char)*p) && !strchr("-._~!$&'()*+,;=:@/?[]", *p))
            return false;
    }
    return true;
}

static bool split_url(const char *url, url_parts *u)
{
    const char *sep = strstr(url, "://");
    memset(u, 0, sizeof *u);
    if (!sep || sep == url || !plain_url(url))
        return false;
    for (const char *p = url; p < sep; p++)
        if (!isalpha((unsigned char)*p))
            return false;
    u->scheme = url;
    u->scheme_len = (size_t)(sep - url);
    const char *authority = sep + 3;
    size_t authority_len = strcspn(authority, "/?");
    /* No user info ('@'): "https://graph.microsoft.com@evil.example/" is evil's. */
    if (authority_len == 0 || memchr(authority, '@', authority_len))
        return false;
    const char *end = authority + authority_len, *colon;
    u->host = authority;
    if (*authority == '[') {
        const char *close = memchr(authority, ']', authority_len);
        if (!close)
            return false;
        colon = close + 1 < end ? close + 1 : NULL;
        if (colon && *colon != ':')
            return false;
    } else {
        colon = memchr(authority, ':', authority_len);
    }
    u->host_len = (size_t)((colon ? colon : end) - authority);
    if (u->host_len == 0)
        return false;
    if (colon) {
        size_t n = (size_t)(end - colon - 1);
        int port = n >= 1 && n <= 5 ? digits(colon + 1, (int)n) : -1;
        if (port < 1 || port > 65535)
            return false;
        u->port = port;
    } else if (u->scheme_len == 5 && strncasecmp(url, "https", 5) == 0) {
        u->port = 443;
    } else if (u->scheme_len == 4 && strncasecmp(url, "http", 4) == 0) {
        u->port = 80;
    } else {
        return false;
    }
    u->path = end;
    u->path_len = strcspn(end, "?");
    return true;
}

static bool same_text(const char *a, size_t a_len, const char *b, size_t b_len)
{
    return a_len == b_len && strncasecmp(a, b, a_len) == 0;
}

/* The percent-decoded text of s[0..n): malloc'd, NULL when malformed or holding a
 * control character (or on out of memory: *oom). */
static char *decode_segment(const char *s, size_t n, bool *oom)
{
    char *out = malloc(n + 1), *p = out;
    *oom = !out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2])) {
                free(out);
                return NULL;
            }
            char hex[3] = {s[i + 1], s[i + 2], '\0'};
            c = (unsigned)strtoul(hex, NULL, 16);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f) {
            free(out);
            return NULL;
        }
        *p++ = (char)c;
    }
    *p = '\0';
    return out;
}

int graph_delta_link_path(const char *base_url, const char *link, outlook_item_kind kind,
                          const char *mailbox, char **path, char **list_id, const char **why)
{
    url_parts base, url;
    *path = *list_id = NULL;
    *why = "the stored position is not a link";
    if (!link || !base_url || strlen(link) > GRAPH_DELTA_LINK_MAX)
        return -EINVAL;
    if (!split_url(base_url, &base) || !split_url(link, &url) ||
        !same_text(base.scheme, base.scheme_len, url.scheme, url.scheme_len) ||
        !same_text(base.host, base.host_len, url.host, url.host_len) || base.port != url.port ||
        base.path[base.path_len] != '\0' || url.path_len <= base.path_len ||
        strncasecmp(url.path, base.path, base.path_len) != 0 || url.path[base.path_len] != '/') {
        *why = "the stored link does not point into the configured Microsoft Graph "
               "([graph] base_url); not following it with our access token";
        return -EPERM;
    }

    /* Below the base: /users/{m}/calendarView/delta or /users/{m}/todo/lists/{l}/tasks/delta */
    static const char *const event_shape[] = {"users", NULL, "calendarView", "delta"};
    static const char *const task_shape[] = {"users", NULL, "todo", "lists", NULL, "tasks",
                                             "delta"};
    const char *const *shape = kind == OUTLOOK_TASK ? task_shape : event_shape;
    size_t n_shape = kind == OUTLOOK_TASK ? 7 : 4;
    const char *segment = url.path + base.path_len + 1;
    char *user = NULL, *list = NULL;
    bool oom = false;
    int r = -EINVAL;
    *why = kind == OUTLOOK_TASK ? "the stored link is not a To Do task delta query"
                                : "the stored link is not a calendarView delta query";
    for (size_t i = 0; i < n_shape; i++) {
        size_t n = strcspn(segment, "/?");
        if ((i + 1 < n_shape) != (segment[n] == '/'))
            goto out;
        if (shape[i] && !same_text(segment, n, shape[i], strlen(shape[i])))
            goto out;
        if (!shape[i]) {
            char *text = decode_segment(segment, n, &oom);
            if (!text || !*text || strcmp(text, ".") == 0 || strcmp(text, "..") == 0) {
                free(text);
                goto out;
            }
            if (i == 1)
                user = text;
            else
                list = text;
        }
        segment += n + 1;
    }
    /* Graph may name the user by object id in its links; an address must be ours. */
    if (strchr(user, '@') && (!mailbox || strcasecmp(user, mailbox) != 0)) {
        *why = "the stored link is another mailbox's";
        goto out;
    }
    r = -ENOMEM;
    if (list && !(*list_id = graph_url_escape(list, false)))
        goto out;
    if (!(*path = strdup(url.path + base.path_len)))
        goto out;
    r = 0;
out:
    if (oom)
        r = -ENOMEM;
    if (r == -ENOMEM)
        *why = "out of memory";
    if (r < 0) {
        free(*list_id);
        *list_id = NULL;
    }
    free(user);
    free(list);
    return r;
}

bool graph_delta_calendar_window(int64_t now, int64_t *from, int64_t *to)
{
    time_t when = (time_t)now;
    struct tm tm;

    if (!gmtime_r(&when, &tm))
        return false;
    tm.tm_year += GRAPH_DELTA_WINDOW_FUTURE_YEARS;
    *from = now - GRAPH_DELTA_WINDOW_PAST_DAYS * DAY_SECONDS;
    *to = (int64_t)timegm(&tm);   /* 29 February ten years on becomes 1 March */
    return true;
}

char *graph_delta_calendar_path(const char *escaped_mailbox, int64_t from, int64_t to)
{
    char start[32], end[32], *path;

    if (!format_utc(start, sizeof start, from, "%Y-%m-%dT%H:%M:%SZ") ||
        !format_utc(end, sizeof end, to, "%Y-%m-%dT%H:%M:%SZ"))
        return NULL;
    if (asprintf(&path, "/users/%s/calendarView/delta?startDateTime=%s&endDateTime=%s",
                 escaped_mailbox, start, end) < 0)
        return NULL;
    return path;
}

/* ---- pages ----------------------------------------------------------------------- */

/* An id or change key as we pass it on: one line, bounded. */
static bool usable_text(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > GRAPH_DELTA_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Hands s (malloc'd) to the page; the pool has room for every string a page makes. */
static const char *keep(graph_delta_page *page, char *s)
{
    if (s)
        page->strings[page->n_strings++] = s;
    return s;
}

static void unreadable(graph_delta_page *page, size_t index, const char *id, const char *why)
{
    if (page->n_unreadable++ == 0) {
        char shown[128];
        text_copy_one_line(shown, sizeof shown, id ? id : "none");
        snprintf(page->unreadable, sizeof page->unreadable, "entry %zu (id %s): %s", index + 1,
                 shown, why);
    }
}

/* changeKey, else the @odata.etag's value (graph_json_change_key); NULL when absent
 * or unusable. */
static char *change_key_of(json_object *entry)
{
    bool oom = false;
    char *key = graph_json_change_key(entry, &oom);
    if (key && !usable_text(key)) {
        free(key);
        return NULL;
    }
    return key;
}

static void add_change(graph_delta_page *page, const char *id, const char *key, const char *what,
                       const char *value)
{
    page->changes[page->n_changes++] = (delivery_change){.item_id = id, .change_key = key,
                                                         .what = what, .new_value = value};
}

/* An entry's changes (or nothing, counted as unreadable). -ENOMEM only. */
static int read_entry(graph_delta_page *page, outlook_item_kind kind, const char *list_id,
                      json_object *entry, size_t index)
{
    const char *raw_id = graph_json_string(entry, "id");
    const char *id, *key = NULL, *value = NULL;
    json_object *time_obj;
    char text[32];
    int64_t wall, instant;

    if (!json_object_is_type(entry, json_type_object)) {
        unreadable(page, index, NULL, "not a JSON object");
        return 0;
    }
    if (!usable_text(raw_id)) {
        unreadable(page, index, raw_id, "no usable \"id\"");
        return 0;
    }
    if (kind == OUTLOOK_TASK) {
        char *escaped = graph_url_escape(raw_id, false), *ref = NULL;
        if (!escaped || asprintf(&ref, "%s/%s", list_id ? list_id : "", escaped) < 0)
            ref = NULL;
        free(escaped);
        if (!(id = keep(page, ref)))
            return -ENOMEM;
    } else if (!(id = keep(page, strdup(raw_id)))) {
        return -ENOMEM;
    }
    if (json_object_object_get_ex(entry, "@removed", NULL)) {
        add_change(page, id, NULL, "deleted", NULL);
        return 0;
    }
    if (graph_json_string(entry, "changeKey") || graph_json_string(entry, "@odata.etag")) {
        if (!(key = keep(page, change_key_of(entry)))) {
            unreadable(page, index, raw_id, "a change key that is not one line of text");
            return 0;
        }
    }

    bool has_time = json_object_object_get_ex(entry, kind == OUTLOOK_TASK ? "dueDateTime"
                                                                           : "start", &time_obj) &&
                    !json_object_is_type(time_obj, json_type_null);
    if (has_time) {
        const char *date_time = graph_json_string(time_obj, "dateTime");
        const char *zone = graph_json_string(time_obj, "timeZone");
        if (!zone || !parse_wall_time(date_time, &wall)) {
            unreadable(page, index, raw_id, kind == OUTLOOK_TASK
                       ? "a dueDateTime without a readable dateTime and timeZone"
                       : "a start without a readable dateTime and timeZone");
            return 0;
        }
        if (kind == OUTLOOK_TASK) {
            /* A due date is a midnight in the zone it was set in; whichever zone it is
             * written in now, the nearest midnight (±12 h) is that date. */
            if (!format_utc(text, sizeof text, wall + DAY_SECONDS / 2, "%Y-%m-%d")) {
                unreadable(page, index, raw_id, "a due date out of range");
                return 0;
            }
        } else {
            instant = wall;
            if (!utc_zone(zone) && !local_to_utc(zone, wall, &instant)) {
                unreadable(page, index, raw_id, "a start in a time zone that cannot be "
                           "converted to UTC here");
                return 0;
            }
            if (!format_utc(text, sizeof text, instant, "%Y-%m-%dT%H:%M:%SZ")) {
                unreadable(page, index, raw_id, "a start out of range");
                return 0;
            }
        }
        if (!(value = keep(page, strdup(text))))
            return -ENOMEM;
        add_change(page, id, key, "moved", value);
    } else if (kind == OUTLOOK_APPOINTMENT) {
        unreadable(page, index, raw_id, "an event without a start");
        return 0;
    }
    const char *status = kind == OUTLOOK_TASK ? graph_json_string(entry, "status") : NULL;
    if (status && strcasecmp(status, "completed") == 0)
        add_change(page, id, key, "completed", NULL);
    return 0;
}

void graph_delta_page_clear(graph_delta_page *page)
{
    for (size_t i = 0; i < page->n_strings; i++)
        free(page->strings[i]);
    free(page->strings);
    free(page->changes);
    memset(page, 0, sizeof *page);
}

int graph_delta_parse(outlook_item_kind kind, const char *list_id, const char *body, size_t len,
                      graph_delta_page *page, char *err, size_t errlen)
{
    json_object *value;
    const char *link;
    memset(page, 0, sizeof *page);
    json_object *root = graph_json_parse_object(body, len, true, err, errlen);
    if (!root)
        return -1;
    if (!json_object_object_get_ex(root, "value", &value) ||
        !json_object_is_type(value, json_type_array)) {
        text_set_error(err, errlen, "a delta page without a \"value\" array");
        goto fail;
    }
    size_t n = json_object_array_length(value);
    if (n > GRAPH_DELTA_ENTRIES_MAX) {
        text_set_error(err, errlen, "a delta page of %zu entries (at most %d expected)", n,
                       GRAPH_DELTA_ENTRIES_MAX);
        goto fail;
    }
    page->more = (link = graph_json_string(root, "@odata.nextLink")) != NULL;
    if (!link && !(link = graph_json_string(root, "@odata.deltaLink"))) {
        text_set_error(err, errlen, "a delta page with neither @odata.nextLink nor "
                       "@odata.deltaLink");
        goto fail;
    }
    if (!*link || strlen(link) > GRAPH_DELTA_LINK_MAX || !plain_url(link)) {
        text_set_error(err, errlen, "a delta page whose %s is not a usable link",
                       page->more ? "@odata.nextLink" : "@odata.deltaLink");
        goto fail;
    }
    /* At most: an id, a change key and a value per entry, and the link. */
    page->strings = calloc(3 * n + 1, sizeof *page->strings);
    page->changes = calloc(2 * n + 1, sizeof *page->changes);
    if (!page->strings || !page->changes || !(page->link = keep(page, strdup(link))))
        goto oom;
    for (size_t i = 0; i < n; i++)
        if (read_entry(page, kind, list_id, json_object_array_get_idx(value, i), i) < 0)
            goto oom;
    json_object_put(root);
    return 0;
oom:
    text_set_error(err, errlen, "out of memory");
fail:
    json_object_put(root);
    graph_delta_page_clear(page);
    return -1;
}

graph_delta_verdict graph_delta_read(outlook_item_kind kind, const char *list_id, long status,
                                     const char *body, size_t len, graph_delta_page *page,
                                     char *err, size_t errlen)
{
    memset(page, 0, sizeof *page);
    if (status == 410 || (status == 404 && kind == OUTLOOK_TASK))
        return GRAPH_DELTA_GONE;
    if (status < 200 || status > 299)
        return GRAPH_DELTA_OTHER;
    if (graph_delta_parse(kind, list_id, body, len, page, err, errlen) < 0)
        return GRAPH_DELTA_UNUSABLE;
    return GRAPH_DELTA_PAGE;
}
