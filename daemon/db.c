/* db — see db.h. libpq used asynchronously: PQconnectStartParams/PQconnectPoll,
 * PQsendQueryParams, PQconsumeInput, PQnotifies. */
#include "daemon/db.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "http/loop_timer.h"

#define RECONNECT_MIN_USEC (250 * 1000ULL)
#define RECONNECT_MAX_USEC (30 * 1000 * 1000ULL)

typedef enum db_state {
    DB_IDLE,          /* not started, or waiting to reconnect */
    DB_CONNECTING,
    DB_LISTENING,     /* LISTEN sent, waiting for its result */
    DB_READY,
} db_state;

typedef struct db_query_item {
    char *sql;
    int n_params;
    char **params;
    db_result_fn done;
    void *userdata;
    struct db_query_item *next;
} db_query_item;

struct db {
    sd_event *event;
    char *conninfo;
    char *channel;
    db_callbacks callbacks;
    db_state state;
    PGconn *conn;
    int fd;
    sd_event_source *io;
    loop_timer *retry_timer;
    uint64_t retry_delay;
    db_query_item *head, *tail;   /* head is in flight when sent */
    bool head_sent;
    PGresult *head_result;
};

static void query_item_free(db_query_item *q)
{
    for (int i = 0; i < q->n_params; i++)
        free(q->params[i]);
    free(q->params);
    free(q->sql);
    free(q);
}

bool db_result_ok(const PGresult *result)
{
    if (!result)
        return false;
    ExecStatusType status = PQresultStatus(result);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

bool db_is_ready(const db *d)
{
    return d->state == DB_READY;
}

static void schedule_reconnect(db *d);
static int on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata);

/* Fails every queued query (their callbacks see NULL) and drops the connection. */
static void connection_lost(db *d, const char *why)
{
    bool was_ready = d->state == DB_READY || d->state == DB_LISTENING;
    char reason[512];

    snprintf(reason, sizeof reason, "%s", why && *why ? why : "connection lost");
    reason[strcspn(reason, "\n")] = '\0';
    d->io = sd_event_source_disable_unref(d->io);
    if (d->conn)
        PQfinish(d->conn);
    d->conn = NULL;
    d->fd = -1;
    d->state = DB_IDLE;
    if (d->head_result)
        PQclear(d->head_result);
    d->head_result = NULL;
    d->head_sent = false;

    db_query_item *q = d->head;
    d->head = d->tail = NULL;
    while (q) {
        db_query_item *next = q->next;
        q->done(NULL, q->userdata);
        query_item_free(q);
        q = next;
    }
    if (was_ready) {
        log_error("database connection lost: %s; reconnecting", reason);
        if (d->callbacks.disconnected)
            d->callbacks.disconnected(reason, d->callbacks.userdata);
    } else {
        log_warning("cannot connect to the database: %s; retrying in %.1f s", reason,
                    (double)d->retry_delay / 1e6);
    }
    schedule_reconnect(d);
}

static int watch_socket(db *d, uint32_t events)
{
    int fd = PQsocket(d->conn);
    if (fd < 0)
        return -EBADF;
    /* While connecting, libpq may close its socket and open another one that gets
     * the same number (GSSAPI encryption refused, the next host of a list): the old
     * source would watch a closed file (epoll: ENOENT). Watch it afresh each time. */
    if (d->io && (fd != d->fd || d->state == DB_CONNECTING))
        d->io = sd_event_source_disable_unref(d->io);
    d->fd = fd;
    if (!d->io)
        return sd_event_add_io(d->event, &d->io, fd, events, on_io, d);
    return sd_event_source_set_io_events(d->io, events);
}

static void send_next(db *d)
{
    db_query_item *q = d->head;
    if ((d->state != DB_READY && d->state != DB_LISTENING) || !q || d->head_sent)
        return;
    if (!PQsendQueryParams(d->conn, q->sql, q->n_params, NULL,
                           (const char *const *)q->params, NULL, NULL, 0)) {
        connection_lost(d, PQerrorMessage(d->conn));
        return;
    }
    d->head_sent = true;
    /* Non-blocking mode: whatever did not fit in the socket goes when it is writable. */
    int flushed = PQflush(d->conn);
    if (flushed < 0)
        connection_lost(d, PQerrorMessage(d->conn));
    else
        watch_socket(d, flushed ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
}

static void deliver_notifications(db *d)
{
    PGnotify *n;
    while (d->conn && (n = PQnotifies(d->conn))) {
        if (d->callbacks.notified)
            d->callbacks.notified(n->extra, d->callbacks.userdata);
        PQfreemem(n);
    }
}

static void on_listen_result(PGresult *result, void *userdata)
{
    db *d = userdata;
    if (!result)
        return;   /* connection_lost already handled it */
    if (!db_result_ok(result)) {
        /* A hot standby ("cannot execute LISTEN during recovery"), a fail-over in
         * progress: try again (a multi-host conninfo with target_session_attrs=
         * read-write finds the new primary). */
        char why[400];
        snprintf(why, sizeof why, "LISTEN refused (%s); is this a read-only standby? "
                 "Use target_session_attrs=read-write with several hosts",
                 PQresultErrorMessage(result));
        why[strcspn(why, "\n")] = why[strcspn(why, "\n")] ? ' ' : '\0';
        connection_lost(d, why);
        return;
    }
    d->state = DB_READY;
    d->retry_delay = RECONNECT_MIN_USEC;
    log_info("connected to the database, listening on channel \"%s\"", d->channel);
    if (d->callbacks.connected)
        d->callbacks.connected(d->callbacks.userdata);
}

static int enqueue(db *d, const char *sql, int n_params, const char *const *params,
                   db_result_fn done, void *userdata, bool at_front)
{
    db_query_item *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->sql = strdup(sql);
    q->n_params = n_params;
    q->params = n_params ? calloc((size_t)n_params, sizeof *q->params) : NULL;
    q->done = done;
    q->userdata = userdata;
    if (!q->sql || (n_params && !q->params))
        goto fail;
    for (int i = 0; i < n_params; i++)
        if (params[i] && !(q->params[i] = strdup(params[i])))
            goto fail;
    if (at_front) {
        q->next = d->head;
        d->head = q;
        if (!d->tail)
            d->tail = q;
    } else {
        if (d->tail)
            d->tail->next = q;
        else
            d->head = q;
        d->tail = q;
    }
    return 0;
fail:
    query_item_free(q);
    return -ENOMEM;
}

static void on_session_set(PGresult *result, void *userdata)
{
    (void)userdata;
    if (result && !db_result_ok(result))
        log_warning("could not set the session's timeouts: %s", PQresultErrorMessage(result));
}

static void start_listening(db *d)
{
    char sql[128];
    char *quoted = PQescapeIdentifier(d->conn, d->channel, strlen(d->channel));
    if (!quoted) {
        connection_lost(d, "out of memory");
        return;
    }
    snprintf(sql, sizeof sql, "LISTEN %s", quoted);
    PQfreemem(quoted);
    d->state = DB_LISTENING;
    /* No statement of ours may hang on: the bookkeeping never waits for a CRM lock
     * (docs/architecture.md), and anything that does wait that long is a fault to
     * retry, not a reason for every other log to stand still. */
    if (enqueue(d, sql, 0, NULL, on_listen_result, d, true) < 0 ||
        enqueue(d, "SELECT set_config('statement_timeout', '30s', false), "
                   "set_config('lock_timeout', '5s', false), "
                   "set_config('idle_in_transaction_session_timeout', '60s', false)",
                0, NULL, on_session_set, d, true) < 0) {
        connection_lost(d, "out of memory");
        return;
    }
    send_next(d);
}

static void continue_connecting(db *d)
{
    switch (PQconnectPoll(d->conn)) {
    case PGRES_POLLING_READING:
        if (watch_socket(d, EPOLLIN) < 0)
            connection_lost(d, "cannot watch the database socket");
        return;
    case PGRES_POLLING_WRITING:
        if (watch_socket(d, EPOLLOUT) < 0)
            connection_lost(d, "cannot watch the database socket");
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(d->conn, 1) != 0 || watch_socket(d, EPOLLIN) < 0) {
            connection_lost(d, PQerrorMessage(d->conn));
            return;
        }
        start_listening(d);
        return;
    case PGRES_POLLING_FAILED:
    default:
        connection_lost(d, PQerrorMessage(d->conn));
        return;
    }
}

static void read_results(db *d)
{
    if (!PQconsumeInput(d->conn)) {
        connection_lost(d, PQerrorMessage(d->conn));
        return;
    }
    while (d->head && d->head_sent && !PQisBusy(d->conn)) {
        PGresult *result = PQgetResult(d->conn);
        if (result) {
            /* Keep the first result of the statement; later ones are not ours. */
            if (!d->head_result)
                d->head_result = result;
            else
                PQclear(result);
            continue;
        }
        db_query_item *q = d->head;
        PGresult *first = d->head_result;
        d->head = q->next;
        if (!d->head)
            d->tail = NULL;
        d->head_sent = false;
        d->head_result = NULL;
        q->done(first, q->userdata);
        PQclear(first);
        query_item_free(q);
        if (!d->conn)
            return;   /* the callback freed or lost the connection */
        send_next(d);
        if (!d->conn)
            return;
    }
    deliver_notifications(d);
}

static int on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
    db *d = userdata;
    (void)source;
    (void)fd;

    if (d->state == DB_CONNECTING) {
        continue_connecting(d);
        return 0;
    }
    if (revents & EPOLLOUT) {
        int flushed = PQflush(d->conn);
        if (flushed < 0) {
            connection_lost(d, PQerrorMessage(d->conn));
            return 0;
        }
        watch_socket(d, flushed ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    }
    if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
        read_results(d);
    return 0;
}

static void connect_now(db *d)
{
    /* Defaults first, so that the operator's conninfo (expanded from "dbname")
     * overrides them; keepalives notice a server that vanished silently. */
    const char *keys[] = {"application_name", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "connect_timeout",
                          "dbname", NULL};
    const char *values[] = {"followupd", "1", "30", "10", "3", "10", d->conninfo, NULL};

    d->conn = PQconnectStartParams(keys, values, 1);
    if (!d->conn) {
        connection_lost(d, "out of memory");
        return;
    }
    if (PQstatus(d->conn) == CONNECTION_BAD) {
        connection_lost(d, PQerrorMessage(d->conn));
        return;
    }
    d->state = DB_CONNECTING;
    if (watch_socket(d, EPOLLOUT) < 0)
        connection_lost(d, "cannot watch the database socket");
}

static void on_retry_timer(void *userdata)
{
    connect_now(userdata);
}

static void schedule_reconnect(db *d)
{
    /* Jitter on top of exponential growth, so many daemons do not stampede. */
    uint64_t delay = d->retry_delay / 2 + (uint64_t)rand() % (d->retry_delay / 2 + 1);
    loop_timer_arm(d->retry_timer, delay);
    d->retry_delay = d->retry_delay * 2 > RECONNECT_MAX_USEC ? RECONNECT_MAX_USEC
                                                            : d->retry_delay * 2;
}

db *db_new(sd_event *event, const char *conninfo, const char *channel,
           const db_callbacks *callbacks)
{
    db *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->event = sd_event_ref(event);
    d->conninfo = strdup(conninfo);
    d->channel = strdup(channel);
    d->callbacks = *callbacks;
    d->fd = -1;
    d->retry_delay = RECONNECT_MIN_USEC;
    d->retry_timer = loop_timer_new(event, on_retry_timer, d);
    if (!d->conninfo || !d->channel || !d->retry_timer) {
        db_free(d);
        return NULL;
    }
    return d;
}

void db_start(db *d)
{
    if (d->state == DB_IDLE && !d->conn)
        connect_now(d);
}

int db_query(db *d, const char *sql, int n_params, const char *const *params,
             db_result_fn done, void *userdata)
{
    if (d->state != DB_READY)
        return -ENOTCONN;
    int r = enqueue(d, sql, n_params, params, done, userdata, false);
    if (r < 0)
        return r;
    send_next(d);
    return 0;
}

void db_free(db *d)
{
    if (!d)
        return;
    /* Queued queries are dropped without callbacks: their owners are going too. */
    while (d->head) {
        db_query_item *next = d->head->next;
        query_item_free(d->head);
        d->head = next;
    }
    if (d->head_result)
        PQclear(d->head_result);
    sd_event_source_disable_unref(d->io);
    loop_timer_free(d->retry_timer);
    if (d->conn)
        PQfinish(d->conn);
    sd_event_unref(d->event);
    free(d->conninfo);
    free(d->channel);
    free(d);
}

char *db_array_literal(size_t n, const char *(*value_at)(const void *ctx, size_t i),
                       const void *ctx)
{
    size_t size = 3;
    for (size_t i = 0; i < n; i++) {
        const char *v = value_at(ctx, i);
        size += v ? 2 * strlen(v) + 3 : 5;
    }
    char *out = malloc(size), *p = out;
    if (!out)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        const char *v = value_at(ctx, i);
        if (i)
            *p++ = ',';
        if (!v) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (; *v; v++) {
            if (*v == '"' || *v == '\\')
                *p++ = '\\';
            *p++ = *v;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}
