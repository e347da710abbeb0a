/* db_batch — see db_batch.h. */
#include "daemon/db_batch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "http/loop_timer.h"

typedef struct batch_row {
    char *values[DB_BATCH_MAX_ARRAYS];
    db_batch_done_fn done;
    void *owner;
} batch_row;

typedef struct row_list {
    batch_row *rows;
    size_t n, cap;
} row_list;

typedef struct sent_statement {
    db_batch *batch;
    row_list list;
    struct sent_statement *next;
} sent_statement;

struct db_batch {
    db *database;
    const db_batch_kind *kind;
    char *sql;
    row_list queued;
    char *scalars[DB_BATCH_MAX_SCALARS];
    sent_statement *in_flight;    /* statements sent, not answered yet */
    loop_timer *timer;            /* sends on the next loop turn */
};

static void row_clear(batch_row *row)
{
    for (int i = 0; i < DB_BATCH_MAX_ARRAYS; i++)
        free(row->values[i]);
    memset(row, 0, sizeof *row);
}

static int list_push(row_list *list, batch_row *row)
{
    if (list->n == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        batch_row *grown = realloc(list->rows, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        list->rows = grown;
        list->cap = cap;
    }
    list->rows[list->n++] = *row;
    return 0;
}

static void list_free(row_list *list)
{
    for (size_t i = 0; i < list->n; i++)
        row_clear(&list->rows[i]);
    free(list->rows);
    *list = (row_list){0};
}

typedef struct column_of_rows {
    const row_list *list;
    int param;
} column_of_rows;

static const char *column_value(const void *ctx, size_t i)
{
    const column_of_rows *c = ctx;
    return c->list->rows[i].values[c->param];
}

static char *array_literal(const row_list *list, int param)
{
    column_of_rows column = {list, param};
    return db_array_literal(list->n, column_value, &column);
}

static void on_answer(PGresult *result, void *userdata)
{
    sent_statement *sent = userdata;
    db_batch *batch = sent->batch;

    if (!batch) {   /* the batch was freed first (shutdown): nobody to tell */
        list_free(&sent->list);
        free(sent);
        return;
    }
    for (sent_statement **p = &batch->in_flight; *p; p = &(*p)->next) {
        if (*p == sent) {
            *p = sent->next;
            break;
        }
    }
    if (!result) {
        /* Lost with the connection: the rows go back to the front of the queue and
         * leave again once connected (the claims they write for are still ours). */
        for (size_t i = 0; i < sent->list.n; i++) {
            if (list_push(&batch->queued, &sent->list.rows[i]) < 0) {
                sent->list.rows[i].done(NULL, -1, "out of memory", sent->list.rows[i].owner);
                row_clear(&sent->list.rows[i]);
            }
        }
        free(sent->list.rows);
        free(sent);
        return;
    }
    bool ok = db_result_ok(result) && PQntuples(result) == (int)sent->list.n;
    const char *why = ok ? NULL
                         : (db_result_ok(result) ? "wrong number of rows returned"
                                                 : PQresultErrorMessage(result));
    for (size_t i = 0; i < sent->list.n; i++) {
        batch_row *row = &sent->list.rows[i];
        row->done(ok ? result : NULL, ok ? (int)i : -1, why, row->owner);
    }
    list_free(&sent->list);
    free(sent);
}

void db_batch_flush(db_batch *batch)
{
    char *arrays[DB_BATCH_MAX_ARRAYS + DB_BATCH_MAX_SCALARS] = {0};
    const db_batch_kind *kind = batch->kind;

    if (batch->queued.n == 0 || !db_is_ready(batch->database))
        return;   /* db_batch_flush runs again on (re)connect */
    sent_statement *sent = calloc(1, sizeof *sent);
    bool ok = sent != NULL;
    for (int p = 0; ok && p < kind->n_arrays; p++)
        ok = (arrays[p] = array_literal(&batch->queued, p)) != NULL;
    for (int s = 0; s < kind->n_scalars; s++)
        arrays[kind->n_arrays + s] = batch->scalars[s];
    if (ok) {
        sent->batch = batch;
        sent->list = batch->queued;
        batch->queued = (row_list){0};
        if (db_query(batch->database, batch->sql, kind->n_arrays + kind->n_scalars,
                     (const char *const *)arrays, on_answer, sent) == 0) {
            sent->next = batch->in_flight;
            batch->in_flight = sent;
        } else {
            batch->queued = sent->list;   /* not connected after all: keep them */
            free(sent);
        }
    } else {
        free(sent);
        log_error("out of memory sending %s; retrying shortly", kind->what);
        loop_timer_arm(batch->timer, 100000);
    }
    for (int p = 0; p < kind->n_arrays; p++)
        free(arrays[p]);
}

static void on_timer(void *userdata)
{
    db_batch_flush(userdata);
}

db_batch *db_batch_new(sd_event *event, db *database, const db_batch_kind *kind)
{
    db_batch *batch = calloc(1, sizeof *batch);
    if (!batch)
        return NULL;
    batch->database = database;
    batch->kind = kind;
    size_t size = strlen(kind->function) + 32 + 5 * (kind->n_arrays + kind->n_scalars);
    batch->sql = malloc(size);
    batch->timer = loop_timer_new(event, on_timer, batch);
    if (!batch->sql || !batch->timer) {
        db_batch_free(batch);
        return NULL;
    }
    int len = snprintf(batch->sql, size, "SELECT * FROM %s(", kind->function);
    for (int p = 1; p <= kind->n_arrays + kind->n_scalars; p++)
        len += snprintf(batch->sql + len, size - (size_t)len, "%s$%d", p > 1 ? ", " : "", p);
    snprintf(batch->sql + len, size - (size_t)len, ")");
    return batch;
}

void db_batch_free(db_batch *batch)
{
    if (!batch)
        return;
    list_free(&batch->queued);
    /* Statements in flight are answered (with NULL) by db_free; their memory is
     * theirs until then, so they only lose their way back here. */
    for (sent_statement *s = batch->in_flight; s; s = s->next)
        s->batch = NULL;
    for (int s = 0; s < DB_BATCH_MAX_SCALARS; s++)
        free(batch->scalars[s]);
    loop_timer_free(batch->timer);
    free(batch->sql);
    free(batch);
}

int db_batch_add(db_batch *batch, const char *const *values, const char *const *scalars,
                 db_batch_done_fn done, void *owner)
{
    batch_row row = {.done = done, .owner = owner};

    for (int p = 0; p < batch->kind->n_arrays; p++) {
        if (values[p] && !(row.values[p] = strdup(values[p]))) {
            row_clear(&row);
            return -ENOMEM;
        }
    }
    for (int s = 0; s < batch->kind->n_scalars; s++) {
        if (!batch->scalars[s] || strcmp(batch->scalars[s], scalars[s]) != 0) {
            char *copy = strdup(scalars[s]);
            if (!copy) {
                row_clear(&row);
                return -ENOMEM;
            }
            free(batch->scalars[s]);
            batch->scalars[s] = copy;
        }
    }
    if (list_push(&batch->queued, &row) < 0) {
        row_clear(&row);
        return -ENOMEM;
    }
    loop_timer_arm(batch->timer, 0);
    return 0;
}

void db_batch_cancel(db_batch *batch, void *owner)
{
    size_t kept = 0;
    for (size_t i = 0; i < batch->queued.n; i++) {
        if (batch->queued.rows[i].owner == owner)
            row_clear(&batch->queued.rows[i]);
        else
            batch->queued.rows[kept++] = batch->queued.rows[i];
    }
    batch->queued.n = kept;
}

bool db_batch_has(const db_batch *batch, const void *owner)
{
    for (size_t i = 0; i < batch->queued.n; i++)
        if (batch->queued.rows[i].owner == owner)
            return true;
    for (const sent_statement *s = batch->in_flight; s; s = s->next)
        for (size_t i = 0; i < s->list.n; i++)
            if (s->list.rows[i].owner == owner)
                return true;
    return false;
}
