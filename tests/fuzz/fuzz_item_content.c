/* fuzz_item_content — libFuzzer target for the path hostile contact-log text takes
 * to Exchange: daemon/item_content.c (clean, subject, link, HTML body) and
 * ews/ews_request.c (CreateItem and UpdateItem envelopes).
 *
 * Input: a few bytes of numbers, then NUL-separated fields (PostgreSQL text can't
 * hold NUL, so no real log can either): reason, contact name, link template,
 * priority, assigned-to name, forward-to name, time zone.
 *
 * Invariants:
 *   - building never fails (except out of memory) and never yields an envelope the
 *     builders refuse: whatever the log holds, an item can be sent;
 *   - the subject is XML-safe UTF-8, one line, at most 255 UTF-16 units;
 *   - the link starts with http:// or https:// and holds no blank or control
 *     character (a hostile template falls back to the default), and the href it
 *     goes into cannot be broken out of;
 *   - both envelopes are well-formed XML, and reading them back gives exactly the
 *     subject and the HTML body that were put in (no injection, no loss).
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "daemon/item_content.h"
#include "ews/ews_request.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_item_content: invariant failed: %s (%s:%d)\n",      \
                    #cond, __FILE__, __LINE__);                                      \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#define NS_TYPES "http://schemas.microsoft.com/exchange/services/2006/types"
#define N_FIELDS 7
#define HEADER_BYTES 6

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    xmlInitParser();
    return 0;
}

static void ignore_xml_error(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

/* XML 1.0 Char, decoded from (already validated by the caller) UTF-8. */
static size_t check_utf8_xml(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t units = 0;

    while (*p) {
        uint32_t cp;
        int extra;
        if (p[0] < 0x80) {
            cp = p[0];
            extra = 0;
        } else if ((p[0] & 0xE0) == 0xC0) {
            cp = p[0] & 0x1F;
            extra = 1;
        } else if ((p[0] & 0xF0) == 0xE0) {
            cp = p[0] & 0x0F;
            extra = 2;
        } else {
            CHECK((p[0] & 0xF8) == 0xF0);
            cp = p[0] & 0x07;
            extra = 3;
        }
        for (int i = 1; i <= extra; i++) {
            CHECK((p[i] & 0xC0) == 0x80);
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        CHECK(cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
              (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF));
        units += cp >= 0x10000 ? 2 : 1;
        p += extra + 1;
    }
    return units;
}

static const xmlNode *find_element(const xmlNode *node, const char *local)
{
    for (; node; node = node->next) {
        if (node->type == XML_ELEMENT_NODE && strcmp((const char *)node->name, local) == 0 &&
            node->ns && strcmp((const char *)node->ns->href, NS_TYPES) == 0)
            return node;
        const xmlNode *found = find_element(node->children, local);
        if (found)
            return found;
    }
    return NULL;
}

/* The envelope is well-formed and carries subject and body unchanged. */
static void check_envelope(const char *xml, size_t len, const item_content *c)
{
    CHECK(xml != NULL);
    CHECK(strlen(xml) == len);
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, "request.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    CHECK(doc != NULL);
    const xmlNode *subject = find_element(xmlDocGetRootElement(doc), "Subject");
    const xmlNode *body = find_element(xmlDocGetRootElement(doc), "Body");
    CHECK(subject != NULL && body != NULL);
    xmlChar *s = xmlNodeGetContent(subject);
    xmlChar *b = xmlNodeGetContent(body);
    CHECK(strcmp(s ? (const char *)s : "", c->subject) == 0);
    CHECK(strcmp(b ? (const char *)b : "", c->body_html) == 0);
    xmlFree(s);
    xmlFree(b);
    xmlFreeDoc(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER_BYTES)
        return 0;
    xmlSetGenericErrorFunc(NULL, ignore_xml_error);

    /* Numbers within what the database lets through (effective_attribute). */
    uint8_t flags = data[0];
    int64_t next_contact_at = 1893456000 /* 2030-01-01 */ + (int64_t)data[1] * 86400 * 97 +
                              (int64_t)data[2] * 3607;
    int duration = 1 + ((data[3] << 8 | data[4]) % 10080);
    int reminder = (data[5] * 163) % 40321;

    /* NUL-separated fields, copied so each is terminated in its own allocation. */
    char *fields[N_FIELDS] = { 0 };
    const char *p = (const char *)data + HEADER_BYTES;
    const char *end = (const char *)data + size;
    for (int i = 0; i < N_FIELDS && p <= end; i++) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        size_t n = nul ? (size_t)(nul - p) : (size_t)(end - p);
        fields[i] = malloc(n + 1);
        if (!fields[i])
            goto out;
        memcpy(fields[i], p, n);
        fields[i][n] = '\0';
        p += n + 1;
    }

    reconcile_log log = {
        .log_id = 1 + (int64_t)(flags & 0x0F) * 922337203685477LL,
        .exists = true,
        .has_follow_up = true,
        .next_contact_at = next_contact_at,
        .reason = (flags & 0x10) && fields[0] && !fields[0][0] ? NULL
                  : fields[0] ? fields[0] : "",
        .contact_name = fields[1] ? fields[1] : "",
        .priority = fields[3],
        .creator_email = "alice@example.org",
        .assigned_name = fields[4],
        .forward_name = fields[5],
    };
    reconcile_settings settings = {
        .outlook_enabled = true,
        .add_to_calendar = true,
        .add_to_tasks = true,
        .sync_updates = true,
        .duration_minutes = duration,
        .reminder_minutes = reminder,
        .link_template = fields[2] ? fields[2] : "https://crm.example.org/contact-logs/{id}",
        /* The time zone comes from the config file or the employee table mapped to a
         * Windows id; clean it like the daemon must before it reaches the builder. */
        .time_zone = NULL,
    };
    outlook_item_kind kind = (flags & 0x20) ? OUTLOOK_TASK : OUTLOOK_APPOINTMENT;
    item_content c;

    if (item_content_build(&log, &settings, kind, (flags & 0x40) != 0, &c) != 0)
        goto out;   /* out of memory only */

    CHECK(c.subject && c.body_html && c.link);
    CHECK(check_utf8_xml(c.subject) <= ITEM_SUBJECT_MAX_UTF16);
    CHECK(strpbrk(c.subject, "\r\n") == NULL);
    check_utf8_xml(c.body_html);
    check_utf8_xml(c.link);
    CHECK(strncasecmp(c.link, "https://", 8) == 0 || strncasecmp(c.link, "http://", 7) == 0);
    for (const unsigned char *q = (const unsigned char *)c.link; *q; q++)
        CHECK(*q > 0x20 && *q != 0x7F);
    /* The href attribute ends exactly where the link ends: quotes in a template are
     * escaped and cannot add attributes or markup. */
    const char *href = strstr(c.body_html, "<p><a href=\"");
    CHECK(href != NULL);
    href += strlen("<p><a href=\"");
    static const char after_href[] = "\">Open contact log ";
    CHECK(strncmp(strchr(href, '"'), after_href, sizeof after_href - 1) == 0);
    CHECK(strchr(href, '<') > strchr(href, '"'));
    CHECK(strlen(c.hash) == ITEM_HASH_HEX_LEN);

    ews_request_options opt = { .server_version = "Exchange2013_SP1",
                                .mailbox = "alice@example.org",
                                .impersonation = (flags & 0x80) != 0 };
    size_t len = 0;
    char *xml = ews_request_create_items(&opt, &c.item, 1, &len);
    check_envelope(xml, len, &c);
    free(xml);

    outlook_item_ref ref = { .item_id = "AAMkAD+/=", .change_key = "DwAAAB" };
    xml = ews_request_update_item(&opt, &ref, &c.item, &len);
    check_envelope(xml, len, &c);
    free(xml);

    item_content_clear(&c);
out:
    for (int i = 0; i < N_FIELDS; i++)
        free(fields[i]);
    return 0;
}
