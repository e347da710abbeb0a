/* db_batch — the daemon's writes for many logs, one statement per kind of write:
 * the rows callers add during one turn of the loop leave together, one array per
 * parameter, and each caller hears back about its own row. A row whose statement
 * was lost with the connection is kept and sent again once the database is back,
 * so a dropped session costs a delay, never a write. */
#ifndef FOLLOWUPD_DB_BATCH_H
#define FOLLOWUPD_DB_BATCH_H

#include <stdbool.h>
#include <libpq-fe.h>
#include <systemd/sd-event.h>

#include "daemon/db.h"

#define DB_BATCH_MAX_ARRAYS 8
#define DB_BATCH_MAX_SCALARS 3

/* One kind of write: "SELECT * FROM f($1, ..., $n)" takes n_arrays arrays (one
 * element per row), then n_scalars plain values shared by the whole statement,
 * and returns one row per element, in order. */
typedef struct db_batch_kind {
    const char *function;        /* e.g. "contactlog.followupd_finish" */
    int n_arrays;
    int n_scalars;
    const char *what;            /* for messages: "the finished pass" */
} db_batch_kind;

typedef struct db_batch db_batch;

/* result NULL: the statement failed (error text in why); else the row of result
 * that answers this caller's element. */
typedef void (*db_batch_done_fn)(PGresult *result, int row, const char *why, void *owner);

db_batch *db_batch_new(sd_event *event, db *database, const db_batch_kind *kind)
    __attribute__((warn_unused_result));
void db_batch_free(db_batch *batch);   /* drops queued rows without calling back */

/* Queues one row (values copied; NULL is SQL NULL). scalars: n_scalars values,
 * the newest call's win. Returns 0 or -ENOMEM. */
int db_batch_add(db_batch *batch, const char *const *values, const char *const *scalars,
                 db_batch_done_fn done, void *owner) __attribute__((warn_unused_result));

/* Forgets the rows owner queued that have not been sent (the owner goes away). A
 * row already sent is answered as usual: owners stay alive until answered. */
void db_batch_cancel(db_batch *batch, void *owner);

/* Sends what is queued now (after a reconnect). */
void db_batch_flush(db_batch *batch);

/* Rows queued or in flight for owner. */
bool db_batch_has(const db_batch *batch, const void *owner);

#endif
