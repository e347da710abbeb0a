/* metrics — see metrics.h.
 *
 * MHD runs in its "external epoll" mode: MHD_run() never blocks, it only handles
 * what the epoll fd says is ready, and MHD_get_timeout() tells when it must run
 * again even if nothing happens (to close idle connections). Both are wired to the
 * loop; the page is rendered in the loop turn that answers the request. */
#include "daemon/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "daemon/log.h"
#include "http/loop_timer.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define CONNECTION_LIMIT 16u        /* scrapers at once */
#define CONNECTION_TIMEOUT_S 10u    /* an idle or stalled connection is closed */

/* The calls the daemon makes (delivery.h); probe is followupctl's, not counted. */
enum op { OP_LOOKUP, OP_CREATE, OP_UPDATE, OP_DELETE, N_OPS };
static const char *const op_names[N_OPS] = {"lookup", "create", "update", "delete"};

/* How an answer is classified (classify()), as daemon/job_outcome.c acts on it. */
enum outcome {
    OUT_OK,           /* done */
    OUT_NOT_FOUND,    /* the item is gone (update, delete: looked up or forgotten) */
    OUT_RETRY,        /* transient: the log backs off and tries again */
    OUT_FAILED,       /* permanent: the log is parked */
    OUT_THROTTLED,    /* Exchange asked for a wait: a hold, no attempt spent */
    OUT_UNKNOWN,      /* no answer; the request may still be performed (settle) */
    OUT_AUTH,         /* the service account was refused: delivery pauses */
    OUT_NOT_SENT,     /* the daemon was stopping: never left */
    N_OUTCOMES,
};
static const char *const outcome_names[N_OUTCOMES] = {
    "ok", "not_found", "retry", "failed", "throttled", "unknown", "auth", "not_sent",
};

/* Upper bounds in seconds; [exchange] timeout is 30 s by default. */
static const double buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

typedef struct histogram {
    uint64_t in_bucket[N_BUCKETS + 1];   /* not cumulative; the last is +Inf */
    uint64_t count;
    double sum;
} histogram;

struct metrics {
    struct MHD_Daemon *mhd;
    sd_event_source *io;
    loop_timer *timer;
    metrics_read_fn read;
    void *userdata;
    uint64_t requests[N_OPS][N_OUTCOMES];
    histogram duration[N_OPS];
};

/* ---- counting requests -------------------------------------------------------- */

static enum outcome classify(const delivery_result *r)
{
    if (r->not_sent)
        return OUT_NOT_SENT;
    if (r->auth_failed)
        return OUT_AUTH;
    if (r->outcome == DELIVERY_OK)
        return OUT_OK;
    if (r->outcome == DELIVERY_NOT_FOUND)
        return OUT_NOT_FOUND;
    if (r->outcome_unknown)
        return OUT_UNKNOWN;
    if (r->outcome == DELIVERY_TRANSIENT && r->throttle != DELIVERY_THROTTLE_NONE &&
        r->retry_after_ms > 0)
        return OUT_THROTTLED;
    return r->outcome == DELIVERY_PERMANENT ? OUT_FAILED : OUT_RETRY;
}

static void count_request(metrics *m, enum op op, const delivery_result *r, uint64_t usec)
{
    enum outcome outcome = classify(r);
    m->requests[op][outcome]++;
    if (outcome == OUT_NOT_SENT)
        return;   /* never on the wire: no duration */
    double seconds = (double)usec / 1e6;
    histogram *h = &m->duration[op];
    size_t b = 0;
    while (b < N_BUCKETS && seconds > buckets[b])
        b++;
    h->in_bucket[b]++;
    h->count++;
    h->sum += seconds;
}

/* ---- the metering delivery ------------------------------------------------------ */

typedef struct meter {
    metrics *m;
    delivery *inner;
} meter;

typedef struct metered_call {
    metrics *m;
    enum op op;
    uint64_t started_usec;
    delivery_done_fn done;
    void *userdata;
} metered_call;

static void on_answered(const delivery_result *r, void *userdata)
{
    metered_call call = *(metered_call *)userdata;
    free(userdata);
    count_request(call.m, call.op, r, loop_timer_now_usec() - call.started_usec);
    call.done(r, call.userdata);
}

static metered_call *start_call(meter *mt, enum op op, delivery_done_fn done, void *userdata)
{
    metered_call *call = malloc(sizeof *call);
    if (call)
        *call = (metered_call){mt->m, op, loop_timer_now_usec(), done, userdata};
    return call;
}

/* The back end's answer to the call: 0 (on_answered follows) or -errno. */
static int started(metered_call *call, int r)
{
    if (r < 0)
        free(call);   /* done is not called: nothing to count */
    return r;
}

static int meter_find(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                      delivery_done_fn done, void *userdata)
{
    meter *mt = impl;
    metered_call *call = start_call(mt, OP_LOOKUP, done, userdata);
    if (!call)
        return -ENOMEM;
    return started(call, delivery_find(mt->inner, mailbox, kind, log_id, on_answered, call));
}

static int meter_create(void *impl, const char *mailbox, const outlook_item *item,
                        delivery_done_fn done, void *userdata)
{
    meter *mt = impl;
    metered_call *call = start_call(mt, OP_CREATE, done, userdata);
    if (!call)
        return -ENOMEM;
    return started(call, delivery_create(mt->inner, mailbox, item, on_answered, call));
}

static int meter_update(void *impl, const char *mailbox, const outlook_item_ref *ref,
                        const outlook_item *item, delivery_done_fn done, void *userdata)
{
    meter *mt = impl;
    metered_call *call = start_call(mt, OP_UPDATE, done, userdata);
    if (!call)
        return -ENOMEM;
    return started(call, delivery_update(mt->inner, mailbox, ref, item, on_answered, call));
}

static int meter_remove(void *impl, const char *mailbox, outlook_item_kind kind,
                        const outlook_item_ref *ref, delivery_done_fn done, void *userdata)
{
    meter *mt = impl;
    metered_call *call = start_call(mt, OP_DELETE, done, userdata);
    if (!call)
        return -ENOMEM;
    return started(call, delivery_remove(mt->inner, mailbox, kind, ref, on_answered, call));
}

static int meter_probe(void *impl, const char *mailbox, delivery_done_fn done, void *userdata)
{
    meter *mt = impl;
    return delivery_probe(mt->inner, mailbox, done, userdata);
}

/* Reading changes back (issue 17) is not a write: not counted as a request kind. */
static int meter_sync(void *impl, const char *mailbox, outlook_item_kind kind,
                      const char *position, delivery_sync_done_fn done, void *userdata)
{
    meter *mt = impl;
    return delivery_sync(mt->inner, mailbox, kind, position, done, userdata);
}

static int meter_watch(void *impl, const char *const *mailboxes, size_t n,
                       delivery_changed_fn changed, void *userdata)
{
    meter *mt = impl;
    return delivery_watch(mt->inner, mailboxes, n, changed, userdata);
}

static int meter_configure(void *impl, const config *cfg, char *err, size_t errlen)
{
    meter *mt = impl;
    return delivery_configure(mt->inner, cfg, err, errlen);
}

static void meter_stop(void *impl)
{
    meter *mt = impl;
    delivery_stop(mt->inner);
}

static void meter_free(void *impl)
{
    meter *mt = impl;
    delivery_free(mt->inner);   /* may still answer calls: m outlives it */
    free(mt);
}

static const delivery_ops meter_ops = {
    .find = meter_find,
    .create = meter_create,
    .update = meter_update,
    .remove = meter_remove,
    .probe = meter_probe,
    .sync = meter_sync,
    .watch = meter_watch,
    .configure = meter_configure,
    .stop = meter_stop,
    .free = meter_free,
};

delivery *metrics_meter(metrics *m, delivery *backend)
{
    delivery *d = calloc(1, sizeof *d);
    meter *mt = calloc(1, sizeof *mt);
    if (!d || !mt) {
        free(d);
        free(mt);
        return NULL;
    }
    *mt = (meter){m, backend};
    d->ops = &meter_ops;
    d->impl = mt;
    return d;
}

/* ---- the page --------------------------------------------------------------------- */

static void family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(FILE *out, const char *name, const char *help, long long value)
{
    family(out, name, "gauge", help);
    if (value >= 0)   /* not known: the family without a sample */
        fprintf(out, "%s %lld\n", name, value);
}

char *metrics_render(metrics *m, size_t *len)
{
    metrics_gauges g = {.pending = -1, .parked = -1, .oldest_pending_seconds = -1};
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);

    if (!out)
        return NULL;
    if (m->read)
        m->read(&g, m->userdata);

    family(out, "followupd_requests_total", "counter",
           "Calls to Exchange by operation and outcome; each item counts once, also when "
           "several creates share one HTTP request.");
    for (int op = 0; op < N_OPS; op++)
        for (int o = 0; o < N_OUTCOMES; o++)
            fprintf(out, "followupd_requests_total{operation=\"%s\",outcome=\"%s\"} %" PRIu64
                    "\n", op_names[op], outcome_names[o], m->requests[op][o]);

    family(out, "followupd_request_duration_seconds", "histogram",
           "Time from handing a call to the back end to its answer (waiting for a free "
           "connection included); calls never sent are not counted.");
    for (int op = 0; op < N_OPS; op++) {
        const histogram *h = &m->duration[op];
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= N_BUCKETS; b++) {
            char le[32];
            cumulative += h->in_bucket[b];
            if (b < N_BUCKETS)
                snprintf(le, sizeof le, "%g", buckets[b]);
            else
                snprintf(le, sizeof le, "+Inf");
            fprintf(out, "followupd_request_duration_seconds_bucket{operation=\"%s\",le=\"%s\"} "
                    "%" PRIu64 "\n", op_names[op], le, cumulative);
        }
        fprintf(out, "followupd_request_duration_seconds_sum{operation=\"%s\"} %.6f\n",
                op_names[op], h->sum);
        fprintf(out, "followupd_request_duration_seconds_count{operation=\"%s\"} %" PRIu64 "\n",
                op_names[op], h->count);
    }

    family(out, "followupd_throttling_holds_total", "counter",
           "Waits Exchange asked for (EWS ErrorServerBusy, HTTP 429/503 with Retry-After), "
           "for one mailbox or for every request.");
    fprintf(out, "followupd_throttling_holds_total{scope=\"mailbox\"} %" PRIu64 "\n",
            g.mailbox_holds);
    fprintf(out, "followupd_throttling_holds_total{scope=\"server\"} %" PRIu64 "\n",
            g.server_holds);
    gauge(out, "followupd_throttled_mailboxes",
          "Mailboxes Exchange asked to wait now; their logs wait without spending an attempt.",
          (long long)g.mailboxes_held);

    gauge(out, "followupd_pending_logs",
          "Contact logs waiting to be brought into Outlook (as of the last status query, "
          "every 2 s; absent while the database is unreachable).", g.pending);
    gauge(out, "followupd_parked_logs",
          "Contact logs parked as failed; followupctl failed lists them, followupctl retry "
          "queues them again.", g.parked);
    gauge(out, "followupd_oldest_pending_seconds",
          "Age of the oldest pending change, 0 when nothing is pending.",
          g.oldest_pending_seconds);
    gauge(out, "followupd_logs_in_progress", "Contact logs being worked on now.",
          (long long)g.logs_in_progress);

    const char *state = g.auth_failing ? "auth_failing" : g.server_throttled ? "throttled" : "ok";
    family(out, "followupd_backend_state", "gauge",
           "The back end's state, 1 for the current one: ok, throttled (every request waits "
           "as Exchange asked) or auth_failing (Exchange refuses the service account; "
           "delivery pauses).");
    for (int s = 0; s < 3; s++) {
        const char *name = s == 0 ? "ok" : s == 1 ? "throttled" : "auth_failing";
        fprintf(out, "followupd_backend_state{state=\"%s\"} %d\n", name,
                strcmp(name, state) == 0);
    }
    gauge(out, "followupd_database_connected",
          "1 while the connection to PostgreSQL is up, 0 while the daemon waits for it.",
          g.database_connected);
    family(out, "followupd_outlook_changes_total", "counter",
           "Changes made in Outlook and read back into the CRM (SyncFromOutlook = 1), "
           "by result: applied, or refused (Outlook is put back).");
    fprintf(out, "followupd_outlook_changes_total{result=\"applied\"} %llu\n",
            (unsigned long long)g.outlook_changes_applied);
    fprintf(out, "followupd_outlook_changes_total{result=\"refused\"} %llu\n",
            (unsigned long long)g.outlook_changes_refused);

    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    if (len)
        *len = size;
    return text;
}

/* ---- HTTP ---------------------------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *response = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!response)
        return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, MHD_HTTP_METHOD_GET);
    enum MHD_Result r = MHD_queue_response(conn, status, response);
    MHD_destroy_response(response);
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    static int headers_seen;
    metrics *m = cls;

    (void)version;
    (void)upload_data;
    if (!*req_cls) {   /* the headers: answer once the request is complete */
        *req_cls = &headers_seen;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {   /* a body: not for us, read and dropped */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
    if (strcmp(url, "/metrics") != 0)
        return respond(conn, MHD_HTTP_NOT_FOUND, "not found; the metrics are at /metrics\n");

    size_t len;
    char *text = metrics_render(m, &len);
    if (!text)
        return MHD_NO;   /* out of memory: the connection is closed */
    struct MHD_Response *response =
        MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (!response) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, response);
    MHD_destroy_response(response);
    return r;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char text[512];
    (void)cls;
    vsnprintf(text, sizeof text, fmt, ap);
    text[strcspn(text, "\n")] = '\0';
    log_debug("metrics: %s", text);
}

/* MHD must run again after its timeout even when no fd is ready. */
static void schedule(metrics *m)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(m->mhd, &ms) == MHD_YES)
        loop_timer_arm(m->timer, (uint64_t)ms * 1000);
    else
        loop_timer_disarm(m->timer);
}

static void run_mhd(metrics *m)
{
    if (MHD_run(m->mhd) != MHD_YES)
        log_warning("metrics: the HTTP server failed a turn; it goes on at the next one");
    schedule(m);
}

static int on_ready(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
    (void)source;
    (void)fd;
    (void)revents;
    run_mhd(userdata);
    return 0;
}

static void on_timer(void *userdata)
{
    run_mhd(userdata);
}

/* A listening socket on "HOST:PORT" or "[IPv6]:PORT", -1 with the reason in err. */
static int listen_on(const char *listen_addr, char *err, size_t errlen)
{
    char host[256];
    const char *port, *colon = strrchr(listen_addr, ':');
    size_t n;

    if (!colon) {
        snprintf(err, errlen, "[metrics] listen = %s: not HOST:PORT", listen_addr);
        return -1;
    }
    port = colon + 1;
    n = (size_t)(colon - listen_addr);
    if (listen_addr[0] == '[' && n >= 2 && listen_addr[n - 1] == ']') {
        listen_addr++;   /* [::1]:9477 */
        n -= 2;
    }
    if (n >= sizeof host) {
        snprintf(err, errlen, "[metrics] listen = %s: the host name is too long", listen_addr);
        return -1;
    }
    memcpy(host, listen_addr, n);
    host[n] = '\0';

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *found = NULL;
    int r = getaddrinfo(host, port, &hints, &found);
    if (r != 0) {
        snprintf(err, errlen, "[metrics] listen = %s:%s: cannot resolve %s: %s", host, port,
                 host, gai_strerror(r));
        return -1;
    }
    int fd = -1, error = 0;
    for (struct addrinfo *a = found; a && fd < 0; a = a->ai_next) {
        int one = 1;
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            error = errno;
            continue;
        }
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 16) < 0) {
            error = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    if (fd < 0)
        snprintf(err, errlen, "[metrics] listen = %s:%s: cannot listen there: %s%s", host, port,
                 strerror(error),
                 error == EPERM || error == EACCES
                     ? " (followupd.service lets it bind port 9477 only; for another, "
                       "add SocketBindAllow=tcp:PORT in a drop-in)" : "");
    return fd;
}

metrics *metrics_new(sd_event *event, const char *listen_addr, metrics_read_fn read,
                     void *userdata, char *err, size_t errlen)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->read = read;
    m->userdata = userdata;
    int fd = listen_on(listen_addr, err, errlen);
    if (fd < 0)
        goto fail;
    m->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
                              MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,   /* first */
                              MHD_OPTION_LISTEN_SOCKET, fd,
                              MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
                              MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S,
                              MHD_OPTION_END);
    if (!m->mhd) {
        close(fd);
        snprintf(err, errlen, "[metrics] listen = %s: cannot start the HTTP server",
                 listen_addr);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    m->timer = loop_timer_new(event, on_timer, m);
    if (!info || !m->timer ||
        sd_event_add_io(event, &m->io, info->epoll_fd, EPOLLIN, on_ready, m) < 0) {
        snprintf(err, errlen, "[metrics] listen = %s: cannot watch the HTTP server's sockets",
                 listen_addr);
        goto fail;
    }
    schedule(m);
    return m;
fail:
    metrics_free(m);
    return NULL;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    sd_event_source_disable_unref(m->io);
    loop_timer_free(m->timer);
    if (m->mhd)
        MHD_stop_daemon(m->mhd);   /* closes the listening socket and every connection */
    free(m);
}
