/* followupctl — the operator's and administrator's command: queue status, retries,
 * attributes and schema upgrades. Talks to the database directly (a short-lived
 * command may block); exit status 0 success, 1 failure, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <libxml/parser.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/delivery.h"
#include "daemon/log.h"
#include "daemon/sql_install.h"
#include "http/http_client.h"

#define EXIT_USAGE 2

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: followupctl [-c FILE] COMMAND [ARGS]\n"
            "\n"
            "Commands:\n"
            "  status [--json]           queue figures: pending, in flight, items in Outlook, failed\n"
            "  flush [LOG_ID]            logs waiting out a retry back-off go now\n"
            "  failed [--json]           the parked logs, with mailbox and reason\n"
            "  mailboxes [--json]        per mailbox: items, pending, failed, last success/error\n"
            "  retry --failed | LOG_ID   put parked logs back into the queue\n"
            "  resync LOG_ID             make Outlook match the log again\n"
            "  attr [NAME [VALUE]]       list, show or set administrator attributes\n"
            "  test-connection [EMAIL]   one harmless Exchange call: URL, TLS, credentials, access\n"
            "  migrate                   install or upgrade the database schema\n"
            "\n"
            "  -c, --config FILE  configuration file (default " CONFIG_DEFAULT_PATH ")\n"
            "  -h, --help         print this help\n");
}

static int fail(const char *fmt, const char *detail)
{
    fprintf(stderr, "followupctl: ");
    fprintf(stderr, fmt, detail);
    fputc('\n', stderr);
    return 1;
}

/* libpq messages end with a newline; one-line errors read better without it. */
static const char *one_line(const char *message)
{
    static char line[1024];
    snprintf(line, sizeof line, "%s", message);
    line[strcspn(line, "\n")] = '\0';
    return line;
}

static PGresult *query(PGconn *conn, const char *sql, int n, const char *const *params)
{
    PGresult *result = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        fail("%s", one_line(PQresultErrorMessage(result)));
        PQclear(result);
        return NULL;
    }
    return result;
}

static bool parse_log_id(const char *text, long long *id)
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
static void print_status_unreachable(const char *error)
{
    printf("{\"database\": \"unreachable\", \"error\": ");
    print_json_string(error);
    printf(", \"pending\": null, \"in_flight\": null, \"delivered\": null, "
           "\"items_in_outlook\": null, \"failed\": null, \"oldest_pending_seconds\": null, "
           "\"last_error\": null, \"attribute_problems\": null, \"delivery_off\": null}\n");
}

static int cmd_status(PGconn *conn, bool json)
{
    static const char *const numeric[] = {"pending", "in_flight", "delivered", "failed",
                                          "oldest_pending_seconds"};
    PGresult *r = query(conn, "SELECT pending, in_flight, delivered, failed, "
                              "oldest_pending_seconds, last_error "
                              "FROM contactlog.followupd_status", 0, NULL);
    if (!r)
        return 1;
    PGresult *problems = query(conn, "SELECT problem FROM contactlog.effective_attribute "
                                     "WHERE problem IS NOT NULL ORDER BY name", 0, NULL);
    if (!problems) {
        PQclear(r);
        return 1;
    }
    /* DefaultMessageSystem other than exactly 'Outlook Mail' turns delivery off. */
    PGresult *off = query(conn, "SELECT value FROM contactlog.effective_attribute "
                                "WHERE name = 'DefaultMessageSystem' "
                                "AND effective_value IS DISTINCT FROM 'Outlook Mail'", 0, NULL);
    if (!off) {
        PQclear(problems);
        PQclear(r);
        return 1;
    }
    bool delivery_off = PQntuples(off) > 0;
    if (json) {
        printf("{\"database\": \"ok\", ");
        for (int c = 0; c < 5; c++)
            printf("%s\"%s\": %s", c ? ", " : "", numeric[c],
                   PQgetisnull(r, 0, c) ? "null" : PQgetvalue(r, 0, c));
        printf(", \"items_in_outlook\": %s", PQgetvalue(r, 0, 2));
        printf(", \"delivery_off\": ");
        if (delivery_off) {
            printf("{\"DefaultMessageSystem\": ");
            print_json_value(off, 0, 0, false);
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
                   PQgetisnull(off, 0, 0) ? "" : PQgetvalue(off, 0, 0));
        printf("pending:             %s\n", PQgetvalue(r, 0, 0));
        printf("in flight:           %s\n", PQgetvalue(r, 0, 1));
        printf("items in Outlook:    %s\n", PQgetvalue(r, 0, 2));
        printf("failed (parked):     %s\n", PQgetvalue(r, 0, 3));
        if (PQgetisnull(r, 0, 4))
            printf("oldest pending:      -\n");
        else
            printf("oldest pending:      %s s\n", PQgetvalue(r, 0, 4));
        printf("last error:          %s\n", PQgetisnull(r, 0, 5) ? "-" : PQgetvalue(r, 0, 5));
        for (int i = 0; i < PQntuples(problems); i++)
            printf("attribute problem:   %s\n", PQgetvalue(problems, i, 0));
    }
    PQclear(off);
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
        if (!parse_log_id(what, &id))
            return fail(bad_id, what), EXIT_USAGE;
        snprintf(id_text, sizeof id_text, "%lld", id);
        params[0] = id_text;
    }
    PGresult *r = query(conn, sql, 1, params);
    if (!r)
        return 1;
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (id && n == 0)
        return fail(not_moved, params[0]);
    printf("%d log%s %s\n", n, n == 1 ? "" : "s", moved);
    return 0;
}

static int cmd_flush(PGconn *conn, const char *what)
{
    return move_logs(conn, what, "SELECT contactlog.followupd_flush($1)",
                     "flush: '%s' is not a contact log id",
                     "flush: contact log %s is not waiting out a retry back-off (parked "
                     "logs: followupctl retry)", "flushed");
}

#define ISO_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static int cmd_failed(PGconn *conn, bool json)
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

static int cmd_mailboxes(PGconn *conn, bool json)
{
    PGresult *r = query(conn, "SELECT mailbox, items_held, pending, failed, "
                              ISO_TIME("last_success") " AS last_success, last_error, "
                              ISO_TIME("last_error_at") " AS last_error_at"
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
        printf("%-32s %6s %7s %6s  %-20s  %s\n", "MAILBOX", "ITEMS", "PENDING", "FAILED",
               "LAST SUCCESS (UTC)", "LAST ERROR (UTC)");
        for (int i = 0; i < rows; i++) {
            printf("%-32s %6s %7s %6s  %-20s  %s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), text_or_dash(r, i, 4),
                   text_or_dash(r, i, 6));
            if (!PQgetisnull(r, i, 5))
                printf(" %s", PQgetvalue(r, i, 5));
            putchar('\n');
        }
    }
    PQclear(r);
    return 0;
}

static int cmd_retry(PGconn *conn, const char *what)
{
    return move_logs(conn, strcmp(what, "--failed") == 0 ? NULL : what,
                     "SELECT contactlog.followupd_requeue_failed($1)",
                     "retry: '%s' is not a contact log id (or use --failed)",
                     "retry: contact log %s is not parked as failed", "queued again");
}

static int cmd_resync(PGconn *conn, const char *what)
{
    long long id;
    char id_text[32];

    if (!parse_log_id(what, &id))
        return fail("resync: '%s' is not a contact log id", what), EXIT_USAGE;
    snprintf(id_text, sizeof id_text, "%lld", id);
    const char *params[] = {id_text};
    PGresult *r = query(conn, "SELECT contactlog.followupd_resync($1)", 1, params);
    if (!r)
        return 1;
    bool found = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!found)
        return fail("resync: no contact log %s", id_text);
    printf("contact log %s queued for resync\n", id_text);
    return 0;
}

static int cmd_attr(PGconn *conn, const char *name, const char *value)
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
        return fail("attr: unknown attribute '%s' (followupctl attr lists them)", name);
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
        fail("attr: %s", one_line(PQresultErrorMessage(r)));
        /* The daemon's own configuration lands here: its role may not write attributes. */
        if (state && strcmp(state, "42501") == 0)
            fprintf(stderr, "followupctl: attr: setting an attribute needs a database role that "
                            "is a member of contactlog_admin; this configuration connects as "
                            "'%s' (use a configuration for administration: followupctl -c FILE, "
                            "see the operator guide)\n", PQuser(conn));
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
        fail("attr: %s", PQgetvalue(r, 0, 0));
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

static int cmd_migrate(PGconn *conn)
{
    PGresult *r = PQexec(conn, sql_install_script);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail("migrate failed, nothing changed: %s", one_line(PQresultErrorMessage(r)));
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

typedef struct probe_state {
    bool done;
    delivery_outcome outcome;
    char code[64];
    char reason[1024];
} probe_state;

static void on_probe(const delivery_result *r, void *userdata)
{
    probe_state *p = userdata;
    p->done = true;
    p->outcome = r->outcome;
    snprintf(p->code, sizeof p->code, "%s", r->code ? r->code : "");
    snprintf(p->reason, sizeof p->reason, "%s", r->reason ? r->reason : "");
}

/* What failed, in the operator's terms, from the back end's classified result. */
static void explain_probe(const probe_state *p, const config *cfg, const char *mailbox)
{
    const char *url = cfg->api == CONFIG_API_GRAPH ? cfg->graph_base_url : cfg->exchange_url;
    if (strcmp(p->code, "dns") == 0)
        fprintf(stderr, "followupctl: DNS: cannot resolve the host of %s: %s\n", url, p->reason);
    else if (strcmp(p->code, "connect") == 0)
        fprintf(stderr, "followupctl: network: cannot connect to %s (firewall? port?): %s\n",
                url, p->reason);
    else if (strcmp(p->code, "tls") == 0)
        fprintf(stderr, "followupctl: TLS: the certificate or handshake of %s was refused "
                        "(check ca_file): %s\n", url, p->reason);
    else if (strcmp(p->code, "timeout") == 0)
        fprintf(stderr, "followupctl: timeout: %s did not answer within %d s\n", url,
                cfg->timeout_seconds);
    else if (strcmp(p->code, "HTTP 401") == 0 || strcmp(p->code, "oauth2") == 0)
        fprintf(stderr, "followupctl: authentication: %s\n", p->reason);
    else if (strcmp(p->code, "ErrorImpersonateUserDenied") == 0)
        fprintf(stderr, "followupctl: impersonation: the service account may not impersonate "
                        "%s (grant it the ApplicationImpersonation role): %s\n",
                mailbox, p->reason);
    else if (strcmp(p->code, "ErrorNonExistentMailbox") == 0)
        fprintf(stderr, "followupctl: mailbox: %s does not exist: %s\n", mailbox, p->reason);
    else if (strncmp(p->code, "HTTP ", 5) == 0)
        fprintf(stderr, "followupctl: HTTP: %s answered %s: %s\n", url, p->code + 5, p->reason);
    else
        fprintf(stderr, "followupctl: failed (%s): %s\n", p->code, p->reason);
}

static int cmd_test_connection(const config *cfg, const char *email)
{
    char err[512];
    sd_event *event = NULL;
    probe_state probe = {0};
    int status = 1;
    const char *mailbox = email;

    if (!mailbox) {
        if (!cfg->username || !strchr(cfg->username, '@'))
            return fail("%s", "test-connection: give the EMAIL of a mailbox to test "
                              "(the service account's user name is not an address)");
        mailbox = cfg->username;
    }
    if (sd_event_new(&event) < 0)
        return fail("%s", "cannot create an event loop");
    http_global_init();
    xmlInitParser();
    delivery *backend = delivery_new(event, cfg, err, sizeof err);
    if (!backend) {
        fail("%s", err);
        goto out;
    }
    int r = delivery_probe(backend, mailbox, on_probe, &probe);
    if (r < 0) {
        fail("test-connection: cannot start the request: %s", strerror(-r));
        goto out;
    }
    while (!probe.done)
        if (sd_event_run(event, UINT64_MAX) < 0)
            break;
    if (probe.done && probe.outcome == DELIVERY_OK) {
        printf("OK: %s answered for mailbox %s: URL, TLS, credentials and %s work\n",
               cfg->api == CONFIG_API_GRAPH ? cfg->graph_base_url : cfg->exchange_url, mailbox,
               cfg->impersonation ? "impersonation" : "delegate access");
        status = 0;
    } else if (probe.done) {
        explain_probe(&probe, cfg, mailbox);
    }
out:
    delivery_free(backend);
    sd_event_unref(event);
    xmlCleanupParser();
    http_global_cleanup();
    return status;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = CONFIG_DEFAULT_PATH;
    config *cfg = NULL;
    char err[512];
    int opt;

    /* '+': stop at the command, so its own options (--json, --failed) stay for it. */
    while ((opt = getopt_long(argc, argv, "+c:h", options, NULL)) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *command = argv[optind];
    char **args = argv + optind + 1;
    int n_args = argc - optind - 1;

    bool known = (strcmp(command, "status") == 0 && n_args <= 1 &&
                  (n_args == 0 || strcmp(args[0], "--json") == 0)) ||
                 (strcmp(command, "retry") == 0 && n_args == 1) ||
                 (strcmp(command, "flush") == 0 && n_args <= 1) ||
                 ((strcmp(command, "failed") == 0 || strcmp(command, "mailboxes") == 0) &&
                  n_args <= 1 && (n_args == 0 || strcmp(args[0], "--json") == 0)) ||
                 (strcmp(command, "resync") == 0 && n_args == 1) ||
                 (strcmp(command, "attr") == 0 && n_args <= 2) ||
                 (strcmp(command, "migrate") == 0 && n_args == 0) ||
                 (strcmp(command, "test-connection") == 0 && n_args <= 1);
    if (!known) {
        fprintf(stderr, "followupctl: unknown command or wrong arguments: %s\n", command);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (config_load(config_path, &cfg, err, sizeof err) < 0)
        return fail("%s", err);
    if (strcmp(command, "test-connection") == 0) {
        int status = config_validate(cfg, err, sizeof err) < 0
                         ? fail("%s", err)
                         : cmd_test_connection(cfg, n_args > 0 ? args[0] : NULL);
        config_free(cfg);
        return status;
    }
    PGconn *conn = PQconnectdb(cfg->db_conninfo);
    config_free(cfg);
    if (PQstatus(conn) != CONNECTION_OK) {
        if (strcmp(command, "status") == 0 && n_args == 1)
            print_status_unreachable(one_line(PQerrorMessage(conn)));
        fail("cannot connect to the database: %s", one_line(PQerrorMessage(conn)));
        PQfinish(conn);
        return 1;
    }
    PQclear(PQexec(conn, "SET client_min_messages = warning"));

    int status;
    if (strcmp(command, "status") == 0)
        status = cmd_status(conn, n_args == 1);
    else if (strcmp(command, "retry") == 0)
        status = cmd_retry(conn, args[0]);
    else if (strcmp(command, "flush") == 0)
        status = cmd_flush(conn, n_args > 0 ? args[0] : NULL);
    else if (strcmp(command, "failed") == 0)
        status = cmd_failed(conn, n_args == 1);
    else if (strcmp(command, "mailboxes") == 0)
        status = cmd_mailboxes(conn, n_args == 1);
    else if (strcmp(command, "resync") == 0)
        status = cmd_resync(conn, args[0]);
    else if (strcmp(command, "attr") == 0)
        status = cmd_attr(conn, n_args > 0 ? args[0] : NULL, n_args > 1 ? args[1] : NULL);
    else
        status = cmd_migrate(conn);
    PQfinish(conn);
    return status;
}
