/* holdoff — see holdoff.h. A short list: only mailboxes Exchange is throttling. */
#include "daemon/holdoff.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/loop_timer.h"

typedef struct mailbox_wait {
    char *mailbox;
    int64_t until_ms;            /* CLOCK_MONOTONIC */
    struct mailbox_wait *next;
} mailbox_wait;

struct holdoff {
    mailbox_wait *mailboxes;
    int64_t server_until_ms;     /* every request waits: throttling or a pause */
    int64_t throttled_until_ms;  /* the part of it Exchange asked for */
    uint64_t mailbox_holds, server_holds;
};

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
    int64_t now = loop_timer_now_ms(), wait = h->server_until_ms - now;

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
    int64_t until = loop_timer_now_ms() + wait_ms;

    if (wait_ms <= 0 || scope == DELIVERY_THROTTLE_NONE)
        return;
    if (scope == DELIVERY_THROTTLE_SERVER || !mailbox) {
        h->server_holds++;
        if (until > h->throttled_until_ms)
            h->throttled_until_ms = until;
        holdoff_pause(h, wait_ms);
        return;
    }
    h->mailbox_holds++;
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

void holdoff_pause(holdoff *h, int64_t wait_ms)
{
    int64_t until = loop_timer_now_ms() + wait_ms;
    if (wait_ms > 0 && until > h->server_until_ms)
        h->server_until_ms = until;
}

void holdoff_get_stats(holdoff *h, holdoff_stats *out)
{
    int64_t now = loop_timer_now_ms();
    holdoff_remaining(h, NULL);   /* forgets the expired waits */
    *out = (holdoff_stats){h->mailbox_holds, h->server_holds, 0, h->throttled_until_ms > now};
    for (const mailbox_wait *m = h->mailboxes; m; m = m->next)
        out->mailboxes_held++;
}
