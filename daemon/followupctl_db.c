/* followupctl's database commands — see followupctl.h. Plain blocking libpq: a
 * short-lived command may wait. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "daemon/followupctl.h"
#include "daemon/sql_install.h"

/* After "permission denied" (SQLSTATE 42501): which group role the command needs
 * (docs/operator-guide.md, section 2; sql/roles.sql grants them). */
static void hint_role(PGconn *conn, bool setting_attribute)
{
    const char *user = PQuser(conn);

    if (setting_attribute)
        fprintf(stderr, "followupctl: attr: setting an attribute needs a database role that "
                        "is a member of contactlog_admin; this configuration connects as '%s' "
                        "(use a configuration for administration: followupctl -c FILE, or "
                        "GRANT contactlog_admin TO %s; see the operator guide, section 2)\n",
                user, user);
    else if (strcmp(ctl_command_name, "migrate") == 0)
        fprintf(stderr, "followupctl: migrate must connect as the role that owns schema "
                        "contactlog (or a superuser); this configuration connects as '%s' "
                        "(use a configuration for administration: followupctl -c FILE; see "
                        "the operator guide, section 2)\n", user);
    else
        fprintf(stderr, "followupctl: %s needs a database role that is a member of "
                        "contactlog_daemon; this configuration connects as '%s': "
                        "GRANT contactlog_daemon TO %s (see the operator guide, section 2)\n",
                ctl_command_name, user, user);
}

static PGresult *query(PGconn *conn, const char *sql, int n, const char *const *params)
{
    PGresult *result = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        const char *state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
        ctl_fail("%s", ctl_one_line(PQresultErrorMessage(result)));
        if (state && strcmp(state, "42501") == 0)
            hint_role(conn, false);
        PQclear(result);
        return NULL;
    }
    return result;
}

bool ctl_parse_id(const char *text, long long *id)
{
    char *end;
    errno = 0;
    *id = strtoll(text, &end, 10);
    return errno == 0 && end != text && *end == '\0' && *id > 0;
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* A column as a JSON value: null, a number (numeric true) or a string. */
static void print_json_value(const PGresult *r, int row, int col, bool numeric)
{
    if (PQgetisnull(r, row, col))
        printf("null");
    else if (numeric)
        printf("%s", PQgetvalue(r, row, col));
    else
        print_json_string(PQgetvalue(r, row, col));
}

/* The rows of r as a JSON array of objects keyed by column name; the columns whose
 * bit is set in numeric are numbers, the others strings (NULL: null). */
static void print_json_rows(const PGresult *r, unsigned numeric)
{
    printf("[");
    for (int i = 0; i < PQntuples(r); i++) {
        printf("%s{", i ? ", " : "");
        for (int c = 0; c < PQnfields(r); c++) {
            printf("%s\"%s\": ", c ? ", " : "", PQfname(r, c));
            print_json_value(r, i, c, numeric & (1u << c));
        }
        printf("}");
    }
    printf("]\n");
}

static const char *text_or_dash(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? "-" : PQgetvalue(r, row, col);
}

/* status --json when the database cannot be reached: still one JSON object. */
void print_status_unreachable(const char *error)
{
    printf("{\"database\": \"unreachable\", \"error\": ");
    print_json_string(error);
    daemon_liveness live;
    daemon_liveness_read(&live);
    print_daemon_liveness_json(&live);
    printf(", \"pending\": null, \"in_flight\": null, \"delivered\": null, "
           "\"items_in_outlook\": null, \"items_to_move\": null, \"failed\": null, "
           "\"oldest_pending_seconds\": null, \"last_error\": null, "
           "\"attribute_problems\": null, \"delivery_off\": null}\n");
}

int cmd_status(PGconn *conn, bool json)
{
    static const char *const numeric[] = {"pending", "in_flight", "delivered", "failed",
                                          "oldest_pending_seconds"};
    PGresult *r = query(conn, "SELECT pending, in_flight, delivered, failed, "
                              "oldest_pending_seconds, last_error, items_to_move, "
                              "delivery_off FROM contactlog.followupd_status", 0, NULL);
    if (!r)
        return 1;
    PGresult *problems = query(conn, "SELECT problem FROM contactlog.effective_attribute "
                                     "WHERE problem IS NOT NULL ORDER BY name", 0, NULL);
    if (!problems) {
        PQclear(r);
        return 1;
    }
    /* DefaultMessageSystem as stored when it turns delivery off (the view's rule, the
     * one the daemon's STATUS= uses too). */
    bool delivery_off = !PQgetisnull(r, 0, 7);
    daemon_liveness live;
    daemon_liveness_read(&live);
    if (json) {
        printf("{\"database\": \"ok\"");
        print_daemon_liveness_json(&live);
        printf(", ");
        for (int c = 0; c < 5; c++)
            printf("%s\"%s\": %s", c ? ", " : "", numeric[c],
                   PQgetisnull(r, 0, c) ? "null" : PQgetvalue(r, 0, c));
        printf(", \"items_in_outlook\": %s", PQgetvalue(r, 0, 2));
        printf(", \"items_to_move\": %s", PQgetvalue(r, 0, 6));
        printf(", \"delivery_off\": ");
        if (delivery_off) {
            printf("{\"DefaultMessageSystem\": ");
            print_json_value(r, 0, 7, false);
            printf("}");
        } else {
            printf("null");
        }
        printf(", \"last_error\": ");
        if (PQgetisnull(r, 0, 5))
            printf("null");
        else
            print_json_string(PQgetvalue(r, 0, 5));
        printf(", \"attribute_problems\": [");
        for (int i = 0; i < PQntuples(problems); i++) {
            printf(i ? ", " : "");
            print_json_string(PQgetvalue(problems, i, 0));
        }
        printf("]}\n");
    } else {
        if (delivery_off)
            printf("delivery to Exchange is off: DefaultMessageSystem = '%s'\n",
                   PQgetvalue(r, 0, 7));
        /* The daemon apart from the queue: the queue may be fine with nobody working it. */
        printf("daemon:              %s (%s)\n", live.state, live.detail);
        printf("pending:             %s\n", PQgetvalue(r, 0, 0));
        printf("in flight:           %s\n", PQgetvalue(r, 0, 1));
        printf("items in Outlook:    %s\n", PQgetvalue(r, 0, 2));
        printf("failed (parked):     %s\n", PQgetvalue(r, 0, 3));
        if (PQgetisnull(r, 0, 4))
            printf("oldest pending:      -\n");
        else
            printf("oldest pending:      %s s\n", PQgetvalue(r, 0, 4));
        printf("last error:          %s\n", PQgetisnull(r, 0, 5) ? "-" : PQgetvalue(r, 0, 5));
        /* FollowUpMailbox: items not yet in their home mailbox (moved by the queue). */
        if (strcmp(PQgetvalue(r, 0, 6), "0") != 0)
            printf("items to move:       %s (to the mailbox FollowUpMailbox names)\n",
                   PQgetvalue(r, 0, 6));
        for (int i = 0; i < PQntuples(problems); i++)
            printf("attribute problem:   %s\n", PQgetvalue(problems, i, 0));
    }
    PQclear(problems);
    PQclear(r);
    return 0;
}

/* retry and flush: one log (what) or all (NULL); sql returns how many moved.
 * bad_id and not_moved are messages with one %s: the argument, the log id. */
static int move_logs(PGconn *conn, const char *what, const char *sql,
                     const char *bad_id, const char *not_moved, const char *moved)
{
    long long id = 0;
    char id_text[32];
    const char *params[1] = {NULL};

    if (what) {
        if (!ctl_parse_id(what, &id))
            return ctl_fail(bad_id, what), EXIT_USAGE;
        snprintf(id_text, sizeof id_text, "%lld", id);
        params[0] = id_text;
    }
    PGresult *r = query(conn, sql, 1, params);
    if (!r)
        return 1;
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (id && n == 0)
        return ctl_fail(not_moved, params[0]);
    printf("%d log%s %s\n", n, n == 1 ? "" : "s", moved);
    return 0;
}

int cmd_flush(PGconn *conn, const char *what)
{
    return move_logs(conn, what, "SELECT contactlog.followupd_flush($1)",
                     "flush: '%s' is not a contact log id",
                     "flush: contact log %s is not waiting out a retry back-off (parked "
                     "logs: followupctl retry)", "flushed");
}

#define ISO_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

int cmd_failed(PGconn *conn, bool json)
{
    PGresult *r = query(conn, "SELECT contact_log_id, mailbox, attempts, reason, "
                              ISO_TIME("failed_at") " AS failed_at"
                              " FROM contactlog.followupd_failed ORDER BY contact_log_id",
                        0, NULL);
    if (!r)
        return 1;
    int rows = PQntuples(r);
    if (json) {
        print_json_rows(r, 1u << 0 | 1u << 2);   /* contact_log_id, attempts */
    } else if (rows == 0) {
        printf("no parked logs\n");
    } else {
        printf("%-10s %-32s %-20s %s\n", "LOG", "MAILBOX", "SINCE (UTC)", "REASON");
        for (int i = 0; i < rows; i++)
            printf("%-10s %-32s %-20s %s\n", PQgetvalue(r, i, 0), text_or_dash(r, i, 1),
                   text_or_dash(r, i, 4), text_or_dash(r, i, 3));
    }
    PQclear(r);
    return 0;
}

int cmd_mailboxes(PGconn *conn, bool json)
{
    PGresult *r = query(conn, "SELECT mailbox, items_held, pending, failed, "
                              ISO_TIME("last_success") " AS last_success, last_error, "
                              ISO_TIME("last_error_at") " AS last_error_at, sync_position, "
                              ISO_TIME("last_sync_at") " AS last_sync_at, "
                              ISO_TIME("last_change_at") " AS last_change_at, sync_error"
                              " FROM contactlog.followupd_mailboxes ORDER BY mailbox",
                        0, NULL);
    if (!r)
        return 1;
    int rows = PQntuples(r);
    if (json) {
        print_json_rows(r, 1u << 1 | 1u << 2 | 1u << 3);   /* the counts */
    } else if (rows == 0) {
        printf("no mailboxes yet\n");
    } else {
        printf("%-32s %6s %7s %6s  %-20s  %-6s  %-20s  %-20s  %s\n", "MAILBOX", "ITEMS",
               "PENDING", "FAILED", "LAST SUCCESS (UTC)", "SYNC", "READ BACK (UTC)",
               "LAST CHANGE (UTC)", "LAST ERROR (UTC)");
        for (int i = 0; i < rows; i++) {
            printf("%-32s %6s %7s %6s  %-20s  %-6s  %-20s  %-20s  %s", PQgetvalue(r, i, 0),
                   PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                   text_or_dash(r, i, 4), text_or_dash(r, i, 7), text_or_dash(r, i, 8),
                   text_or_dash(r, i, 9), text_or_dash(r, i, 6));
            if (!PQgetisnull(r, i, 5))
                printf(" %s", PQgetvalue(r, i, 5));
            if (!PQgetisnull(r, i, 10))
                printf(" (reading back: %s)", PQgetvalue(r, i, 10));
            putchar('\n');
        }
    }
    PQclear(r);
    return 0;
}

int cmd_retry(PGconn *conn, const char *what)
{
    return move_logs(conn, strcmp(what, "--failed") == 0 ? NULL : what,
                     "SELECT contactlog.followupd_requeue_failed($1)",
                     "retry: '%s' is not a contact log id (or use --failed)",
                     "retry: contact log %s is not parked as failed", "queued again");
}

int cmd_resync(PGconn *conn, const char *what)
{
    long long id;
    char id_text[32];

    if (!ctl_parse_id(what, &id))
        return ctl_fail("resync: '%s' is not a contact log id", what), EXIT_USAGE;
    snprintf(id_text, sizeof id_text, "%lld", id);
    const char *params[] = {id_text};
    PGresult *r = query(conn, "SELECT contactlog.followupd_resync($1)", 1, params);
    if (!r)
        return 1;
    bool found = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!found)
        return ctl_fail("resync: no contact log %s", id_text);
    printf("contact log %s queued for resync\n", id_text);
    return 0;
}

int cmd_attr(PGconn *conn, const char *name, const char *value)
{
    if (!name) {
        PGresult *r = query(conn, "SELECT name, coalesce(value, '(unset)'), problem "
                                  "FROM contactlog.effective_attribute ORDER BY name", 0, NULL);
        if (!r)
            return 1;
        for (int i = 0; i < PQntuples(r); i++)
            printf("%-30s %s%s%s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetisnull(r, i, 2) ? "" : "    ! ",
                   PQgetisnull(r, i, 2) ? "" : PQgetvalue(r, i, 2));
        PQclear(r);
        return 0;
    }
    const char *params[] = {name, value};
    PGresult *known = query(conn, "SELECT value FROM contactlog.effective_attribute "
                                  "WHERE name = $1", 1, params);
    if (!known)
        return 1;
    if (PQntuples(known) == 0) {
        PQclear(known);
        return ctl_fail("attr: unknown attribute '%s' (followupctl attr lists them)", name);
    }
    if (!value) {
        printf("%s\n", PQgetisnull(known, 0, 0) ? "(unset)" : PQgetvalue(known, 0, 0));
        PQclear(known);
        return 0;
    }
    PQclear(known);
    /* Set and check in one transaction: an invalid value is never stored. */
    PGresult *r = query(conn, "BEGIN", 0, NULL);
    PQclear(r);
    r = PQexecParams(conn, "INSERT INTO contactlog.attribute (name, value) VALUES ($1, $2) "
                           "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                     2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        ctl_fail("attr: refused, nothing changed: %s",
             ctl_one_line(primary ? primary : PQresultErrorMessage(r)));
        /* The daemon's own configuration lands here: its role may not write attributes. */
        if (state && strcmp(state, "42501") == 0)
            hint_role(conn, true);
        PQclear(r);
        PQclear(PQexec(conn, "ROLLBACK"));
        return 1;
    }
    PQclear(r);
    r = query(conn, "SELECT problem FROM contactlog.effective_attribute WHERE name = $1", 1,
              params);
    if (!r)
        return 1;
    if (!PQgetisnull(r, 0, 0)) {
        /* The problem as the daemon would log it ends "; using the default '1'": true of
         * a stored value, not of this one, which is never stored. */
        char problem[1024];
        snprintf(problem, sizeof problem, "%s", PQgetvalue(r, 0, 0));
        char *tail = strstr(problem, "; using the default");
        if (tail)
            *tail = '\0';
        ctl_fail("attr: refused, nothing changed: %s", problem);
        PQclear(r);
        PQclear(PQexec(conn, "ROLLBACK"));
        return 1;
    }
    PQclear(r);
    r = query(conn, "COMMIT", 0, NULL);
    if (!r)
        return 1;
    PQclear(r);
    printf("%s = %s\n", name, value);
    return 0;
}

int cmd_migrate(PGconn *conn)
{
    PGresult *r = PQexec(conn, sql_install_script);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        ctl_fail("migrate failed, nothing changed: %s", ctl_one_line(PQresultErrorMessage(r)));
        PQclear(r);
        return 1;
    }
    PQclear(r);
    r = query(conn, "SELECT max(version) FROM contactlog.schema_version", 0, NULL);
    if (!r)
        return 1;
    printf("schema contactlog is at version %s\n", PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}
