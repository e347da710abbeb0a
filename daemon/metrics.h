/* metrics — the Prometheus text format on GET /metrics ([metrics] listen).
 *
 * libmicrohttpd serves it on the daemon's own sd_event loop (MHD's epoll fd is an
 * io source, its timeouts a loop_timer), so there is no second thread: the figures
 * need no lock and every scrape sees one moment of the daemon. Requests to
 * Exchange are counted and timed by a wrapper around the delivery interface
 * (metrics_meter); everything else is read from the daemon at each scrape
 * (metrics_read_fn), from what it already knows: a scrape never queries the
 * database. The metric names are listed in followupd(8), METRICS. */
#ifndef FOLLOWUPD_METRICS_H
#define FOLLOWUPD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "daemon/delivery.h"

typedef struct metrics metrics;

/* What the daemon knows at the moment of a scrape. */
typedef struct metrics_gauges {
    bool database_connected;
    /* From the status query every 2 s (contactlog.followupd_queue_depth);
     * -1: not known (no answer yet, or the database is unreachable). */
    long long pending;
    long long parked;
    long long oldest_pending_seconds;
    size_t logs_in_progress;
    bool auth_failing;             /* Exchange refuses the service account */
    bool server_throttled;         /* Exchange asked every request to wait */
    size_t mailboxes_held;         /* mailboxes Exchange asked to wait now */
    uint64_t mailbox_holds;        /* throttling holds since start, by scope */
    uint64_t server_holds;
    uint64_t outlook_changes_applied;   /* read back from Outlook since start */
    uint64_t outlook_changes_refused;
} metrics_gauges;

typedef void (*metrics_read_fn)(metrics_gauges *out, void *userdata);

/* Listens on listen ("HOST:PORT", "[IPv6]:PORT"; config_validate checked the form)
 * and serves on event. read fills the gauges at each scrape. NULL with the reason
 * in err (the address does not resolve, the port is taken or not allowed). */
metrics *metrics_new(sd_event *event, const char *listen, metrics_read_fn read,
                     void *userdata, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Stops serving and frees; after the back end metered by it is freed. */
void metrics_free(metrics *m);

/* A delivery that counts and times every call of backend, then passes it on; it
 * owns backend (freed with it). NULL when out of memory (backend stays the caller's). */
delivery *metrics_meter(metrics *m, delivery *backend) __attribute__((warn_unused_result));

/* The page as served, NUL-terminated, for the caller to free; NULL when out of memory. */
char *metrics_render(metrics *m, size_t *len) __attribute__((warn_unused_result));

#endif
