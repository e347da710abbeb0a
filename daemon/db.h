/* db — one asynchronous libpq connection on the sd_event loop: connect and
 * reconnect with back-off, LISTEN, notifications, and a FIFO of queries sent one
 * at a time. Never blocks the loop. */
#ifndef FOLLOWUPD_DB_H
#define FOLLOWUPD_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>
#include <systemd/sd-event.h>

typedef struct db db;

/* result: the query's result (owned by db, valid during the call), or NULL when the
 * connection was lost before it completed. */
typedef void (*db_result_fn)(PGresult *result, void *userdata);

typedef struct db_callbacks {
    void (*connected)(void *userdata);               /* connected and listening */
    void (*disconnected)(const char *why, void *userdata);
    void (*notified)(const char *payload, void *userdata);
    void *userdata;
} db_callbacks;

db *db_new(sd_event *event, const char *conninfo, const char *channel,
           const db_callbacks *callbacks) __attribute__((warn_unused_result));
void db_free(db *d);

/* Starts connecting (and keeps reconnecting after losses, with back-off). */
void db_start(db *d);
bool db_is_ready(const db *d);

/* Queues a query with text parameters (copied). Returns 0, or -ENOTCONN when not
 * connected (the caller retries after the connected callback), -ENOMEM. */
int db_query(db *d, const char *sql, int n_params, const char *const *params,
             db_result_fn done, void *userdata) __attribute__((warn_unused_result));

/* Convenience for callers: true when result is a successful command or tuples. */
bool db_result_ok(const PGresult *result);

/* {"a","b",NULL}: a PostgreSQL array literal of the n text values value_at gives
 * (NULL: SQL NULL), to pass as one text parameter. malloc'd; NULL when out of memory. */
char *db_array_literal(size_t n, const char *(*value_at)(const void *ctx, size_t i),
                       const void *ctx) __attribute__((warn_unused_result));

#endif
