/* followupctl — the operator's and administrator's command: queue status, retries,
 * attributes and schema upgrades. Talks to the database directly (a short-lived
 * command may block); exit status 0 success, 1 failure, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <libxml/parser.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/delivery.h"
#include "daemon/log.h"
#include "daemon/rundir.h"
#include "daemon/sql_install.h"
#include "http/http_client.h"
#include "http/loop_timer.h"

#include "daemon/followupctl.h"

/* The command being run, for hints. */
const char *ctl_command_name = "";

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
            "  reload [PID]              make the daemon re-read its configuration and\n"
            "                            report whether it took it (ExecReload=)\n"
            "\n"
            "  -c, --config FILE  configuration file (default " CONFIG_DEFAULT_PATH ")\n"
            "  -h, --help         print this help\n");
}

int ctl_fail(const char *fmt, const char *detail)
{
    fprintf(stderr, "followupctl: ");
    fprintf(stderr, fmt, detail);
    fputc('\n', stderr);
    return 1;
}

/* libpq messages end with a newline; one-line errors read better without it. */
const char *ctl_one_line(const char *message)
{
    static char line[1024];
    snprintf(line, sizeof line, "%s", message);
    line[strcspn(line, "\n")] = '\0';
    return line;
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
            return ctl_fail("%s", "test-connection: give the EMAIL of a mailbox to test "
                              "(the service account's user name is not an address)");
        mailbox = cfg->username;
    }
    if (sd_event_new(&event) < 0)
        return ctl_fail("%s", "cannot create an event loop");
    http_global_init();
    xmlInitParser();
    delivery *backend = delivery_new(event, cfg, err, sizeof err);
    if (!backend) {
        ctl_fail("%s", err);
        goto out;
    }
    int r = delivery_probe(backend, mailbox, on_probe, &probe);
    if (r < 0) {
        ctl_fail("test-connection: cannot start the request: %s", strerror(-r));
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

#define RELOAD_TIMEOUT_SECONDS 60

/* reload [PID]: SIGHUP to the daemon, then wait for its verdict on the reload this
 * process asked for (rundir.h). Exit 0 when the new file was taken, 1 when refused. */
static int cmd_reload(const char *pid_text)
{
    char dir[512], message[2048];
    pid_t pid, asker;
    bool ok;
    int r;

    rundir_path(dir, sizeof dir);
    if (pid_text) {
        long long id;
        if (!ctl_parse_id(pid_text, &id) || id > INT32_MAX)
            return ctl_fail("reload: '%s' is not a process id", pid_text), EXIT_USAGE;
        pid = (pid_t)id;
    } else if ((r = rundir_read_pid(&pid)) < 0) {
        fprintf(stderr, "followupctl: reload: cannot find the daemon's pid in %s/pid: %s "
                        "(is followupd running under systemd? else name the PID)\n",
                dir, strerror(-r));
        return 1;
    }
    if (kill(pid, SIGHUP) < 0) {
        fprintf(stderr, "followupctl: reload: cannot signal followupd (pid %ld): %s\n",
                (long)pid, strerror(errno));
        return 1;
    }
    struct timespec pause = {0, 50 * 1000 * 1000};
    int64_t start_ms = loop_timer_now_ms();
    for (;;) {
        if (rundir_read_reload(&asker, &ok, message, sizeof message) == 0 &&
            asker == getpid()) {
            if (!ok) {
                fprintf(stderr, "followupctl: %s\n", message);
                return 1;
            }
            printf("%s\n", message);
            return 0;
        }
        if (kill(pid, 0) < 0 && errno == ESRCH) {
            fprintf(stderr, "followupctl: reload: followupd (pid %ld) exited; see journalctl "
                            "-u followupd\n", (long)pid);
            return 1;
        }
        if (loop_timer_now_ms() - start_ms >= RELOAD_TIMEOUT_SECONDS * 1000) {
            fprintf(stderr, "followupctl: reload: no verdict from followupd (pid %ld) in %s "
                            "within %d s; the unit needs RuntimeDirectory=followupd; see "
                            "journalctl -u followupd\n", (long)pid, dir,
                    RELOAD_TIMEOUT_SECONDS);
            return 1;
        }
        nanosleep(&pause, NULL);
    }
}

void daemon_liveness_read(daemon_liveness *out)
{
    char dir[256], comm[64] = "", path[64];
    pid_t pid = 0;
    int r = rundir_read_pid(&pid);

    rundir_path(dir, sizeof dir);
    *out = (daemon_liveness){.state = "unknown"};
    if (r < 0) {
        snprintf(out->detail, sizeof out->detail, "no pid in %s/pid (not started by systemd "
                 "on this host?)", dir);
        return;
    }
    out->pid = (long)pid;
    /* The pid may have been reused since: only a live followupd counts. */
    snprintf(path, sizeof path, "/proc/%ld/comm", (long)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(f);
    }
    if (strcmp(comm, "followupd") == 0 && kill(pid, 0) == 0) {
        out->state = "running";
        snprintf(out->detail, sizeof out->detail, "pid %ld", (long)pid);
    } else {
        out->state = "not running";
        snprintf(out->detail, sizeof out->detail, "pid %ld from %s/pid is gone", (long)pid, dir);
    }
}

void print_daemon_liveness_json(const daemon_liveness *live)
{
    printf(", \"daemon\": \"%s\", \"daemon_pid\": ", live->state);
    if (live->pid > 0)
        printf("%ld", live->pid);
    else
        printf("null");
}

/* config_warn_fn: a bad line that a read-only use of the file may skip. */
static void warn_skipped(const char *message, void *userdata)
{
    (void)userdata;
    fprintf(stderr, "followupctl: warning: %s (line skipped; followupd --check and a reload "
                    "refuse the file until it is fixed)\n", message);
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
                 (strcmp(command, "reload") == 0 && n_args <= 1) ||
                 (strcmp(command, "test-connection") == 0 && n_args <= 1);
    if (!known) {
        fprintf(stderr, "followupctl: unknown command or wrong arguments: %s\n", command);
        usage(stderr);
        return EXIT_USAGE;
    }
    ctl_command_name = command;
    /* reload talks to the daemon, which reads the file itself. */
    if (strcmp(command, "reload") == 0)
        return cmd_reload(n_args > 0 ? args[0] : NULL);
    /* test-connection uses the whole file: it must be valid. The database commands need
     * only [database] conninfo: they still work, with a warning, while someone edits
     * another key. */
    if (strcmp(command, "test-connection") == 0
            ? config_load(config_path, &cfg, err, sizeof err) < 0
            : config_load_lenient(config_path, &cfg, warn_skipped, NULL, err, sizeof err) < 0)
        return ctl_fail("%s", err);
    if (strcmp(command, "test-connection") == 0) {
        /* From a shell there is no $CREDENTIALS_DIRECTORY: read the file the unit's
         * LoadCredential= hands the service, when we may (root). */
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        if ((!cfg->password_file || !*cfg->password_file) && (!dir || !*dir) &&
            access(CONFIG_CREDENTIAL_SOURCE, R_OK) == 0) {
            free(cfg->password_file);
            cfg->password_file = strdup(CONFIG_CREDENTIAL_SOURCE);
        }
        int status = config_validate(cfg, err, sizeof err) < 0
                         ? ctl_fail("%s", err)
                         : cmd_test_connection(cfg, n_args > 0 ? args[0] : NULL);
        config_free(cfg);
        return status;
    }
    PGconn *conn = PQconnectdb(cfg->db_conninfo);
    config_free(cfg);
    if (PQstatus(conn) != CONNECTION_OK) {
        if (strcmp(command, "status") == 0 && n_args == 1)
            print_status_unreachable(ctl_one_line(PQerrorMessage(conn)));
        ctl_fail("cannot connect to the database: %s", ctl_one_line(PQerrorMessage(conn)));
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
