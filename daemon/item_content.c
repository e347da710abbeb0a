/* item_content — see item_content.h. */
#include "daemon/item_content.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "daemon/timezone.h"

/* A growable string; on allocation failure it remembers the failure and stops. */
typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
    bool failed;
} strbuf;

static void sb_append(strbuf *sb, const char *text, size_t n)
{
    if (sb->failed)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *grown = realloc(sb->data, cap);
        if (!grown) {
            sb->failed = true;
            return;
        }
        sb->data = grown;
        sb->cap = cap;
    }
    memcpy(sb->data + sb->len, text, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
}

static void sb_puts(strbuf *sb, const char *text)
{
    sb_append(sb, text, strlen(text));
}

static char *sb_finish(strbuf *sb)
{
    if (sb->failed) {
        free(sb->data);
        return NULL;
    }
    if (!sb->data)
        sb_append(sb, "", 0);
    return sb->data;
}

/* Decodes one UTF-8 sequence at s (n bytes left). Returns its length and the code
 * point in *cp, or 0 for a malformed, overlong or surrogate sequence. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len;
    uint32_t min;
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2; min = 0x80; *cp = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3; min = 0x800; *cp = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4; min = 0x10000; *cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (s[i] & 0x3F);
    }
    if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF))
        return 0;
    return len;
}

/* XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF] */
static bool xml_char_allowed(uint32_t cp)
{
    return cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
           (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF);
}

#define REPLACEMENT_CHARACTER "\xEF\xBF\xBD"

char *item_text_clean(const char *text, size_t len)
{
    strbuf sb = {0};
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;

    while (i < len) {
        uint32_t cp;
        size_t n = utf8_decode(s + i, len - i, &cp);
        if (n == 0) {
            sb_puts(&sb, REPLACEMENT_CHARACTER);
            i++;
        } else if (!xml_char_allowed(cp)) {
            sb_puts(&sb, REPLACEMENT_CHARACTER);
            i += n;
        } else {
            sb_append(&sb, text + i, n);
            i += n;
        }
    }
    return sb_finish(&sb);
}

/* Cuts clean UTF-8 to at most max_units UTF-16 code units (Exchange counts those),
 * never inside a character. */
static void truncate_utf16_units(char *clean, size_t max_units)
{
    size_t units = 0, i = 0, len = strlen(clean);

    while (i < len) {
        uint32_t cp = 0;
        size_t n = utf8_decode((const unsigned char *)clean + i, len - i, &cp);
        if (n == 0)
            break;                      /* not after item_text_clean(); defensive */
        size_t char_units = cp >= 0x10000 ? 2 : 1;
        if (units + char_units > max_units)
            break;
        units += char_units;
        i += n;
    }
    clean[i] = '\0';
}

static bool is_blank(const char *s)
{
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
            return false;
    return true;
}

char *item_subject_from_reason(const char *reason, const char *contact_name)
{
    char *subject;

    if (is_blank(reason)) {
        const char *name = contact_name ? contact_name : "";
        size_t n = strlen("Follow up: ") + strlen(name) + 1;
        char *raw = malloc(n);
        if (!raw)
            return NULL;
        snprintf(raw, n, "Follow up: %s", name);
        /* The contact name may hold line breaks too: the subject is one line. */
        raw[strcspn(raw, "\r\n")] = '\0';
        subject = item_text_clean(raw, strlen(raw));
        free(raw);
    } else {
        const char *start = reason;
        while (*start == ' ' || *start == '\t' || *start == '\r' || *start == '\n')
            start++;
        subject = item_text_clean(start, strcspn(start, "\r\n"));
    }
    if (subject)
        truncate_utf16_units(subject, ITEM_SUBJECT_MAX_UTF16);
    return subject;
}

static bool has_http_scheme(const char *url)
{
    return strncasecmp(url, "https://", 8) == 0 || strncasecmp(url, "http://", 7) == 0;
}

/* The last line of defence behind the attribute rule (sql/install.sql,
 * effective_attribute): http(s), a {id} to fill in, and no blank or control character
 * (a link with a line break or a space in it points somewhere else). Quotes and angle
 * brackets are harmless here: sb_html() escapes them in the href. */
static bool link_template_ok(const char *link_template)
{
    if (!link_template || !has_http_scheme(link_template) || !strstr(link_template, "{id}"))
        return false;
    for (const unsigned char *p = (const unsigned char *)link_template; *p; p++)
        if (*p <= 0x20 || *p == 0x7F)
            return false;
    return true;
}

char *item_link(const char *link_template, int64_t log_id)
{
    char id[32];
    strbuf sb = {0};

    if (!link_template_ok(link_template))
        return NULL;
    snprintf(id, sizeof id, "%" PRId64, log_id);
    for (const char *p = link_template; *p;) {
        const char *hole = strstr(p, "{id}");
        if (!hole) {
            sb_puts(&sb, p);
            break;
        }
        sb_append(&sb, p, (size_t)(hole - p));
        sb_puts(&sb, id);
        p = hole + 4;
    }
    char *raw = sb_finish(&sb);
    if (!raw)
        return NULL;
    char *clean = item_text_clean(raw, strlen(raw));
    /* A character XML forbids (or broken UTF-8) would be a U+FFFD in the address:
     * a link to somewhere else. Refuse the template instead. */
    if (clean && strcmp(clean, raw) != 0) {
        free(clean);
        clean = NULL;
    }
    free(raw);
    return clean;
}

/* Escapes for HTML text and attribute values alike. */
static void sb_html(strbuf *sb, const char *text, bool line_breaks)
{
    for (const char *p = text; *p; p++) {
        switch (*p) {
        case '&': sb_puts(sb, "&amp;"); break;
        case '<': sb_puts(sb, "&lt;"); break;
        case '>': sb_puts(sb, "&gt;"); break;
        case '"': sb_puts(sb, "&quot;"); break;
        case '\'': sb_puts(sb, "&#39;"); break;
        case '\r': break;
        case '\n':
            if (line_breaks) {
                sb_puts(sb, "<br>\n");
                break;
            }
            /* fall through */
        default: sb_append(sb, p, 1);
        }
    }
}

static void sb_html_field(strbuf *sb, const char *label, const char *raw_value)
{
    char *value = item_text_clean(raw_value, strlen(raw_value));
    if (!value) {
        sb->failed = true;
        return;
    }
    sb_puts(sb, "<p><b>");
    sb_puts(sb, label);
    sb_puts(sb, ":</b> ");
    sb_html(sb, value, true);
    sb_puts(sb, "</p>\n");
    free(value);
}

static char *build_body(const reconcile_log *log, const char *link)
{
    strbuf sb = {0};
    char id[32];

    snprintf(id, sizeof id, "%" PRId64, log->log_id);
    sb_puts(&sb, "<html><body>\n");
    sb_html_field(&sb, "Contact", log->contact_name ? log->contact_name : "");
    if (!is_blank(log->reason))
        sb_html_field(&sb, "Reason", log->reason);
    sb_html_field(&sb, "Priority", log->priority ? log->priority : "normal");
    if (log->assigned_name)
        sb_html_field(&sb, "Assigned to", log->assigned_name);
    if (log->forward_name)
        sb_html_field(&sb, "Forward to", log->forward_name);
    sb_puts(&sb, "<p><a href=\"");
    sb_html(&sb, link, false);
    sb_puts(&sb, "\">Open contact log ");
    sb_puts(&sb, id);
    sb_puts(&sb, "</a></p>\n</body></html>\n");
    return sb_finish(&sb);
}

static outlook_importance importance_from_priority(const char *priority)
{
    if (priority && strcmp(priority, "high") == 0)
        return OUTLOOK_IMPORTANCE_HIGH;
    if (priority && strcmp(priority, "low") == 0)
        return OUTLOOK_IMPORTANCE_LOW;
    return OUTLOOK_IMPORTANCE_NORMAL;
}

/* SHA-256 over every field that reaches Outlook, so a change to any of them (and
 * only such a change) makes an update. */
static int hash_content(const item_content *c, char out[ITEM_HASH_HEX_LEN + 1])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    char numbers[160];
    int ok;

    int n = snprintf(numbers, sizeof numbers, "%d|%" PRId64 "|%" PRId64 "|%d|%d|%d|",
                     (int)c->item.kind, c->item.start, c->item.end, c->item.reminder_minutes,
                     (int)c->item.importance, (int)c->item.task_completed);
    /* Tasks only, so that appointments keep the hashes recorded before due days. */
    if (c->item.has_due_day && n > 0 && (size_t)n < sizeof numbers)
        snprintf(numbers + n, sizeof numbers - (size_t)n, "%" PRId64 "|%d|",
                 c->item.due_day_start, c->item.due_utc_offset);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return -1;
    ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
         EVP_DigestUpdate(ctx, numbers, strlen(numbers)) &&
         EVP_DigestUpdate(ctx, c->subject, strlen(c->subject) + 1) &&
         EVP_DigestUpdate(ctx, c->body_html, strlen(c->body_html) + 1) &&
         EVP_DigestUpdate(ctx, c->item.time_zone ? c->item.time_zone : "", 
                          c->item.time_zone ? strlen(c->item.time_zone) : 0) &&
         EVP_DigestFinal_ex(ctx, digest, &digest_len);
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    for (unsigned int i = 0; i < digest_len && i * 2 < ITEM_HASH_HEX_LEN; i++)
        snprintf(out + i * 2, 3, "%02x", digest[i]);
    return 0;
}

/* xs:dateTime (EWS) cannot write an offset beyond this; no zone in use today has one. */
#define DUE_OFFSET_MAX_SECONDS (14 * 3600)

/* SPEC section 3: a task is due on the calendar date of the follow-up in the employee's
 * zone (a follow-up at 00:30 in Berlin is due that day, not the day before as in UTC).
 * The zone is the Windows id the appointment gets too; the tz database supplies its
 * rules. A zone it cannot place (a Windows id CLDR does not know) leaves the UTC date
 * and no zone, so that Exchange and Graph read the date as UTC as well. */
static void set_due_day(outlook_item *item, const char *time_zone)
{
    int64_t day_start = 0;
    int offset = 0;

    if (time_zone && *time_zone &&
        timezone_day_start(time_zone, item->start, &day_start, &offset) == 0 &&
        offset >= -DUE_OFFSET_MAX_SECONDS && offset <= DUE_OFFSET_MAX_SECONDS) {
        item->time_zone = time_zone;
        item->due_day_start = day_start;
        item->due_utc_offset = offset;
    } else {
        int64_t day = item->start / 86400 - (item->start % 86400 < 0);   /* floor */
        item->time_zone = NULL;
        item->due_day_start = day * 86400;
        item->due_utc_offset = 0;
    }
    item->has_due_day = true;
}

#define DEFAULT_LINK_TEMPLATE "https://crm.example.org/contact-logs/{id}"

int item_content_build(const reconcile_log *log, const reconcile_settings *settings,
                       outlook_item_kind kind, bool task_completed, item_content *content)
{
    memset(content, 0, sizeof *content);
    content->subject = item_subject_from_reason(log->reason, log->contact_name);
    content->link = item_link(settings->link_template, log->log_id);
    if (!content->link)   /* the database validates it; this is the last line of defence */
        content->link = item_link(DEFAULT_LINK_TEMPLATE, log->log_id);
    if (!content->subject || !content->link)
        goto fail;
    content->body_html = build_body(log, content->link);
    if (!content->body_html)
        goto fail;

    outlook_item *item = &content->item;
    item->kind = kind;
    item->log_id = log->log_id;
    item->subject = content->subject;
    item->body_html = content->body_html;
    item->start = log->next_contact_at;
    item->end = log->next_contact_at + (int64_t)settings->duration_minutes * 60;
    item->reminder_minutes = settings->reminder_minutes;
    item->importance = importance_from_priority(log->priority);
    item->task_completed = kind == OUTLOOK_TASK && task_completed;
    item->time_zone = kind == OUTLOOK_APPOINTMENT ? settings->time_zone : NULL;
    if (kind == OUTLOOK_TASK)
        set_due_day(item, settings->time_zone);
    item->link = content->link;
    if (hash_content(content, content->hash) < 0)
        goto fail;
    return 0;
fail:
    item_content_clear(content);
    return -1;
}

void item_content_clear(item_content *content)
{
    free(content->subject);
    free(content->body_html);
    free(content->link);
    memset(content, 0, sizeof *content);
}
