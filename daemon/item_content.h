/* item_content — the text of an Outlook item built from a contact log: subject,
 * HTML body with the deep link, times, importance, and a hash of it all so an
 * unchanged item is not sent again. Hostile text is made safe here, once, for
 * every back end: characters XML 1.0 forbids and broken UTF-8 become U+FFFD. */
#ifndef FOLLOWUPD_ITEM_CONTENT_H
#define FOLLOWUPD_ITEM_CONTENT_H

#include <stddef.h>
#include "daemon/outlook_item.h"
#include "daemon/reconcile.h"

#define ITEM_SUBJECT_MAX_UTF16 255
#define ITEM_HASH_HEX_LEN 64

typedef struct item_content {
    outlook_item item;               /* points into the strings below */
    char *subject;
    char *body_html;
    char *link;
    char hash[ITEM_HASH_HEX_LEN + 1];
} item_content;

/* Fills *content for one kind of item of log. Returns 0, or -1 when out of memory. */
int item_content_build(const reconcile_log *log, const reconcile_settings *settings,
                       outlook_item_kind kind, bool task_completed, item_content *content)
    __attribute__((warn_unused_result));

void item_content_clear(item_content *content);

/* Exposed for tests. */
char *item_text_clean(const char *text, size_t len);       /* valid XML-safe UTF-8 */
char *item_subject_from_reason(const char *reason, const char *contact_name);
char *item_link(const char *link_template, int64_t log_id); /* NULL if not http(s) */

#endif
