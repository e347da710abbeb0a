/* holdoff — see holdoff.h. A short list: only mailboxes Exchange is throttling. */
#include "daemon/holdoff.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct mailbox_wait {
    char *mailbox;
    int64_t until_ms;            /* CLOCK_MONOTONIC */
    struct mailbox_wait *next;
} mailbox_wait;

struct holdoff {
    mailbox_wait *mailboxes;
    int64_t server_until_ms;
};

int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

holdoff *holdoff_new(void)
{
    return calloc(1, sizeof(holdoff));
}

void holdoff_free(holdoff *h)
{
    if (!h)
        return;
    while (h->mailboxes) {
        mailbox_wait *next = h->mailboxes->next;
        free(h->mailboxes->mailbox);
        free(h->mailboxes);
        h->mailboxes = next;
    }
    free(h);
}

int64_t holdoff_remaining(holdoff *h, const char *mailbox)
{
    int64_t now = monotonic_ms(), wait = h->server_until_ms - now;

    for (mailbox_wait **p = &h->mailboxes; *p;) {
        mailbox_wait *m = *p;
        if (m->until_ms <= now) {   /* expired: forget it */
            *p = m->next;
            free(m->mailbox);
            free(m);
            continue;
        }
        if (mailbox && strcasecmp(m->mailbox, mailbox) == 0 && m->until_ms - now > wait)
            wait = m->until_ms - now;
        p = &m->next;
    }
    return wait > 0 ? wait : 0;
}

void holdoff_add(holdoff *h, delivery_throttle scope, const char *mailbox, int64_t wait_ms)
{
    int64_t until = monotonic_ms() + wait_ms;

    if (wait_ms <= 0 || scope == DELIVERY_THROTTLE_NONE)
        return;
    if (scope == DELIVERY_THROTTLE_SERVER || !mailbox) {
        if (until > h->server_until_ms)
            h->server_until_ms = until;
        return;
    }
    for (mailbox_wait *m = h->mailboxes; m; m = m->next) {
        if (strcasecmp(m->mailbox, mailbox) == 0) {
            if (until > m->until_ms)
                m->until_ms = until;
            return;
        }
    }
    mailbox_wait *m = calloc(1, sizeof *m);
    if (!m || !(m->mailbox = strdup(mailbox))) {
        free(m);
        return;   /* the log's own retry delay still honours the wait */
    }
    m->until_ms = until;
    m->next = h->mailboxes;
    h->mailboxes = m;
}
