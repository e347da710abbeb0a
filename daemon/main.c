/* followupd — keeps Outlook in step with the CRM's contact logs.
 *
 * Start-up order: config → event loop and signals → delivery back end → database
 * (connect, LISTEN) → worker. READY=1 once the configuration is loaded, whether or
 * not the database answers yet (an outage at boot must not fail the unit); STATUS=
 * says what the daemon waits for. Signals arrive as loop events
 * (sd_event_add_signal): the handlers run in the loop, never async. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"
#include "daemon/db.h"
#include "daemon/delivery.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/rundir.h"
#include "daemon/watch.h"
#include "daemon/worker.h"
#include "http/http_client.h"
#include "http/loop_timer.h"

#define NOTIFY_CHANNEL "followupd"
#define STATUS_INTERVAL_USEC (2 * 1000 * 1000ULL)

/* Queue figures from the database, -1 when not known. */
typedef struct queue_figures {
    long long pending;
    long long failed;
    long long oldest_pending_seconds;
    bool delivery_off;           /* DefaultMessageSystem turns delivery off */
    char delivery_off_value[64]; /* its value, as stored */
} queue_figures;

#define QUEUE_UNKNOWN ((queue_figures){-1, -1, -1, false, ""})

typedef struct daemon_state {
    sd_event *event;
    const char *config_path;
    config *cfg;
    db *database;
    delivery *backend;
    worker *worker;
    watch *watch;                /* Outlook -> CRM (SyncFromOutlook) */
    uint64_t delivered_seen;     /* the worker's count at the last status timer */
    bool stopping;
    char db_problem[256];        /* why the database is not usable, while it is not */
    loop_timer *status_timer;
    loop_timer *drain_timer;
    metrics *metrics;            /* [metrics] listen; NULL: off */
    queue_figures queue;         /* as of the last status query */
} daemon_state;

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: followupd [-c FILE] [-d]\n"
            "       followupd --check [-c FILE] [--user USER]\n"
            "       followupd --version | --help\n"
            "\n"
            "Puts follow-ups of CRM contact logs into the creators' Outlook.\n"
            "\n"
            "  -c, --config FILE  configuration file (default " CONFIG_DEFAULT_PATH ")\n"
            "      --check        validate the configuration file and the secrets it needs,\n"
            "                     then exit\n"
            "      --user USER    with --check as root: open the secrets as USER, the user\n"
            "                     the service runs as (default " CONFIG_SERVICE_USER ")\n"
            "  -d, --debug        log debug messages\n"
            "      --version      print the version and exit\n"
            "  -h, --help         print this help and exit\n");
}

/* STATUS= says first what the daemon waits for, if anything, then the queue. Built
 * from what the daemon knows now: a fixed problem never lingers. */
static void send_status_with(daemon_state *st, const queue_figures *q)
{
    const worker_stats *ws = worker_get_stats(st->worker);
    char state[400], queue[96] = "", error[300] = "";

    if (!db_is_ready(st->database))
        snprintf(state, sizeof state, "waiting for the database%s%s",
                 st->db_problem[0] ? ": " : "", st->db_problem);
    else if (q && q->delivery_off)
        snprintf(state, sizeof state, "delivery to Exchange is OFF: DefaultMessageSystem = '%s' "
                 "(only exactly 'Outlook Mail' turns it on)", q->delivery_off_value);
    else if (ws->auth_failing)
        snprintf(state, sizeof state, "waiting for Exchange to accept the service account "
                 "(retry in %" PRId64 " s): %s", (ws->held_ms + 999) / 1000, ws->auth_error);
    else if (ws->held_ms > 0)
        snprintf(state, sizeof state, "Exchange asked every request to wait %" PRId64 " s more",
                 (ws->held_ms + 999) / 1000);
    else
        snprintf(state, sizeof state, "%s", st->stopping ? "stopping" : "delivering");
    if (q && q->pending >= 0)
        snprintf(queue, sizeof queue, "%lld queued, %lld failed; ", q->pending, q->failed);
    if (ws->last_error[0] && !ws->auth_failing)
        snprintf(error, sizeof error, "; last error: %s", ws->last_error);
    sd_notifyf(false, "STATUS=%s; %s%zu working, %" PRIu64 " done since start, %" PRIu64
                      " retries%s",
               state, queue, ws->active, ws->delivered, ws->retries, error);
}

static void send_status(daemon_state *st)
{
    send_status_with(st, NULL);
}

/* A column of the one row by name, -1 when it is missing or NULL. */
static long long figure(PGresult *result, const char *name)
{
    int col = PQfnumber(result, name);
    return col < 0 || PQgetisnull(result, 0, col) ? -1 : atoll(PQgetvalue(result, 0, col));
}

static void on_queue_figures(PGresult *result, void *userdata)
{
    daemon_state *st = userdata;
    queue_figures q = QUEUE_UNKNOWN;

    if (db_result_ok(result) && PQntuples(result) == 1) {
        q.pending = figure(result, "pending");
        q.failed = figure(result, "failed");
        q.oldest_pending_seconds = figure(result, "oldest_pending_seconds");
        int off = PQfnumber(result, "delivery_off");
        if (off >= 0 && !PQgetisnull(result, 0, off)) {
            q.delivery_off = true;
            snprintf(q.delivery_off_value, sizeof q.delivery_off_value, "%s",
                     PQgetvalue(result, 0, off));
        }
        /* Once in the log when delivery stops or starts again for this reason. */
        if (q.delivery_off && !st->queue.delivery_off)
            log_warning("delivery to Exchange is OFF: attribute DefaultMessageSystem = '%s'; "
                        "nothing is sent until it is exactly 'Outlook Mail' "
                        "(followupctl attr DefaultMessageSystem 'Outlook Mail')",
                        q.delivery_off_value);
        else if (!q.delivery_off && st->queue.delivery_off)
            log_notice("delivery to Exchange is on again (DefaultMessageSystem = 'Outlook Mail')");
    } else {
        /* Unknown for now: keep what was known, so a blip neither hides nor repeats it. */
        q.delivery_off = st->queue.delivery_off;
        snprintf(q.delivery_off_value, sizeof q.delivery_off_value, "%s",
                 st->queue.delivery_off_value);
    }
    st->queue = q;   /* the metrics serve these too: a scrape sends no query */
    send_status_with(st, &q);
}

/* STATUS= with the queue's depth: one small query every few seconds, read from the
 * outbox (the backlog only) and an index of parked logs, never the history. By
 * name: a schema without oldest_pending_seconds (not migrated yet) still works. */
static void refresh_status(daemon_state *st)
{
    if (db_query(st->database, "SELECT * FROM contactlog.followupd_queue_depth",
                 0, NULL, on_queue_figures, st) < 0)
        send_status(st);
}

/* metrics_read_fn: what GET /metrics shows besides the request counters. */
static void read_gauges(metrics_gauges *g, void *userdata)
{
    daemon_state *st = userdata;
    const worker_stats *ws = worker_get_stats(st->worker);
    bool connected = db_is_ready(st->database);

    *g = (metrics_gauges){
        .database_connected = connected,
        .pending = connected ? st->queue.pending : -1,
        .parked = connected ? st->queue.failed : -1,
        .oldest_pending_seconds = connected ? st->queue.oldest_pending_seconds : -1,
        .logs_in_progress = ws->active,
        .auth_failing = ws->auth_failing,
        .server_throttled = ws->holds.server_throttled,
        .mailboxes_held = ws->holds.mailboxes_held,
        .mailbox_holds = ws->holds.mailbox_holds,
        .server_holds = ws->holds.server_holds,
        .outlook_changes_applied = watch_get_stats(st->watch)->applied,
        .outlook_changes_refused = watch_get_stats(st->watch)->refused,
    };
}

static void on_state_changed(void *userdata)
{
    refresh_status(userdata);
}

static void on_status_timer(void *userdata)
{
    daemon_state *st = userdata;
    uint64_t delivered = worker_get_stats(st->worker)->delivered;
    if (delivered != st->delivered_seen) {   /* maybe items in a mailbox not watched yet */
        st->delivered_seen = delivered;
        watch_items_changed(st->watch);
    }
    refresh_status(st);
    loop_timer_arm(st->status_timer, STATUS_INTERVAL_USEC);
}

static void on_db_connected(void *userdata)
{
    daemon_state *st = userdata;
    st->db_problem[0] = '\0';
    send_status(st);
    worker_db_connected(st->worker);
    watch_db_connected(st->watch);
}

static void on_db_disconnected(const char *why, void *userdata)
{
    daemon_state *st = userdata;
    snprintf(st->db_problem, sizeof st->db_problem, "%s", why ? why : "");
    st->queue = QUEUE_UNKNOWN;
    worker_db_disconnected(st->worker);
    watch_db_disconnected(st->watch);
    send_status(st);
}

static void on_db_notified(const char *payload, void *userdata)
{
    daemon_state *st = userdata;
    log_debug("notified: contact log %s changed", payload);
    worker_notified(st->worker);
}

static void on_drained(void *userdata)
{
    daemon_state *st = userdata;
    log_info("all work handed back; exiting");
    sd_event_exit(st->event, 0);
}

static void on_drain_timeout(void *userdata)
{
    daemon_state *st = userdata;
    log_warning("requests still in flight after the stop timeout; exiting anyway "
                "(their logs are looked up, not duplicated, on the next start)");
    sd_event_exit(st->event, 0);
}

static int on_terminate(sd_event_source *source, const struct signalfd_siginfo *si,
                        void *userdata)
{
    daemon_state *st = userdata;
    (void)source;
    if (st->stopping)
        return 0;
    st->stopping = true;
    sd_notify(false, "STOPPING=1");
    log_info("received %s; finishing requests in flight", strsignal((int)si->ssi_signo));
    st->drain_timer = loop_timer_new(st->event, on_drain_timeout, st);
    if (st->drain_timer)
        loop_timer_arm(st->drain_timer, (uint64_t)(st->cfg->timeout_seconds + 5) * 1000000ULL);
    watch_stop(st->watch);
    worker_drain(st->worker, on_drained, st);
    return 0;
}

/* Reload is a transaction: the new file is applied only when all of it is good.
 * The verdict goes to the log and, for `followupctl reload` (ExecReload=), to the
 * runtime directory, addressed to the process that sent SIGHUP. */
static int on_reload(sd_event_source *source, const struct signalfd_siginfo *si, void *userdata)
{
    daemon_state *st = userdata;
    config *fresh = NULL;
    char err[1536], verdict[2048], restart_note[512] = "";
    bool ok = false;

    (void)source;
    sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, loop_timer_now_usec());
    /* The secrets too, so that a missing or unreadable one is named with its key. */
    if (config_load(st->config_path, &fresh, err, sizeof err) < 0 ||
        config_validate(fresh, err, sizeof err) < 0 ||
        config_check_secrets(fresh, NULL, NULL, NULL, err, sizeof err) < 0) {
        log_error("reload refused, keeping the running configuration: %s", err);
        goto out;
    }
    char restart_keys[256];
    int n_restart = config_restart_keys(st->cfg, fresh, restart_keys, sizeof restart_keys);
    if (n_restart > 0) {
        snprintf(restart_note, sizeof restart_note, "; %s changed, which %s effect only after "
                 "a restart (systemctl restart followupd): the running %s until then",
                 restart_keys, n_restart == 1 ? "takes" : "take",
                 n_restart == 1 ? "value stays" : "values stay");
        log_warning("reload: %s", restart_note + 2);
    }
    if (delivery_configure(st->backend, fresh, err, sizeof err) < 0) {
        log_error("reload refused, keeping the running configuration: %s", err);
        goto out;
    }
    /* The database connection and back end stay; the rest follows the new file. */
    char *conninfo = fresh->db_conninfo;
    fresh->db_conninfo = st->cfg->db_conninfo;
    st->cfg->db_conninfo = conninfo;
    fresh->api = st->cfg->api;
    config_free(st->cfg);
    st->cfg = fresh;
    fresh = NULL;
    worker_apply_config(st->worker, st->cfg);
    watch_apply_config(st->watch, st->cfg);
    log_info("configuration reloaded from %s", st->config_path);
    ok = true;
out:
    config_free(fresh);
    if (ok)
        snprintf(verdict, sizeof verdict, "configuration reloaded from %s%s", st->config_path,
                 restart_note);
    else
        snprintf(verdict, sizeof verdict, "reload refused, keeping the running configuration: "
                 "%s", err);
    int r = rundir_write_reload((pid_t)si->ssi_pid, ok, verdict);
    if (r < 0)
        log_warning("reload: cannot write the verdict for followupctl reload into the runtime "
                    "directory: %s", strerror(-r));
    sd_notify(false, "READY=1");
    send_status(st);
    return 0;
}

static int run(daemon_state *st)
{
    char err[512];
    int r;
    sigset_t mask;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    r = sd_event_default(&st->event);
    if (r < 0) {
        log_error("cannot create the event loop: %s", strerror(-r));
        return 1;
    }
    sd_event_add_signal(st->event, NULL, SIGTERM, on_terminate, st);
    sd_event_add_signal(st->event, NULL, SIGINT, on_terminate, st);
    sd_event_add_signal(st->event, NULL, SIGHUP, on_reload, st);
    /* WatchdogSec= in the unit: sd_event pings it while the loop turns. */
    sd_event_set_watchdog(st->event, true);

    /* Secrets first: a missing or unreadable one is named with its key, file and line. */
    char secret_err[1536];
    if (config_check_secrets(st->cfg, NULL, NULL, NULL, secret_err, sizeof secret_err) < 0) {
        log_error("%s", secret_err);
        return 1;
    }
    st->backend = delivery_new(st->event, st->cfg, err, sizeof err);
    if (!st->backend) {
        log_error("%s: %s", st->config_path, err);
        return 1;
    }
    /* Bound before READY=1: a port that is taken fails the start, visibly. */
    if (st->cfg->metrics_listen && *st->cfg->metrics_listen) {
        st->metrics = metrics_new(st->event, st->cfg->metrics_listen, read_gauges, st, err,
                                  sizeof err);
        delivery *metered = st->metrics ? metrics_meter(st->metrics, st->backend) : NULL;
        if (!metered) {
            log_error("%s: %s", st->config_path, st->metrics ? "out of memory" : err);
            return 1;
        }
        st->backend = metered;
        log_info("metrics: serving GET /metrics on %s", st->cfg->metrics_listen);
    }
    db_callbacks callbacks = {on_db_connected, on_db_disconnected, on_db_notified, st};
    st->database = db_new(st->event, st->cfg->db_conninfo, NOTIFY_CHANNEL, &callbacks);
    st->worker = st->database ? worker_new(st->event, st->database, st->backend, st->cfg) : NULL;
    st->watch = st->database ? watch_new(st->event, st->database, st->backend, st->cfg) : NULL;
    if (!st->database || !st->worker || !st->watch) {
        log_error("out of memory at start-up");
        return 1;
    }
    worker_on_state_change(st->worker, on_state_changed, st);
    st->status_timer = loop_timer_new(st->event, on_status_timer, st);
    if (st->status_timer)
        loop_timer_arm(st->status_timer, STATUS_INTERVAL_USEC);

    log_info("followupd " PACKAGE_VERSION " starting: Exchange %s, %d requests at once",
             st->cfg->exchange_url, st->cfg->concurrency);
    /* For `followupctl reload` without a PID (under systemd: RuntimeDirectory=). */
    r = rundir_write_pid();
    if (r < 0)
        log_warning("cannot write the pid file into the runtime directory: %s", strerror(-r));
    sd_notify(false, "READY=1");
    snprintf(st->db_problem, sizeof st->db_problem, "connecting");
    send_status(st);
    db_start(st->database);
    r = sd_event_loop(st->event);
    if (r < 0) {
        log_error("event loop failed: %s", strerror(-r));
        return 1;
    }
    return 0;
}

static void print_note(const char *message, void *userdata)
{
    (void)userdata;
    fprintf(stderr, "note: %s\n", message);
}

/* --check also opens the secrets the service will need (password_file or the
 * credential, client_secret_file) as the service will: see config_check_secrets. */
static int check_secret_files(const config *cfg, const char *service_user)
{
    char err[1536];

    if (config_check_secrets(cfg, service_user, print_note, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_CHECK = 256, OPT_VERSION, OPT_USER };
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, OPT_CHECK},
        {"user", required_argument, NULL, OPT_USER},
        {"debug", no_argument, NULL, 'd'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    daemon_state st = {.config_path = CONFIG_DEFAULT_PATH, .queue = QUEUE_UNKNOWN};
    bool check_only = false, debug = false, user_given = false;
    const char *service_user = CONFIG_SERVICE_USER;
    char err[512];
    int opt;

    while ((opt = getopt_long(argc, argv, "c:dh", options, NULL)) != -1) {
        switch (opt) {
        case 'c': st.config_path = optarg; break;
        case 'd': debug = true; break;
        case OPT_CHECK: check_only = true; break;
        case OPT_USER: service_user = optarg; user_given = true; break;
        case OPT_VERSION: printf("followupd %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "followupd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (user_given && !check_only) {
        fprintf(stderr, "followupd: --user goes with --check\n");
        usage(stderr);
        return 2;
    }
    log_init(debug);
    if (config_load(st.config_path, &st.cfg, err, sizeof err) < 0 ||
        config_validate(st.cfg, err, sizeof err) < 0) {
        if (check_only)
            fprintf(stderr, "%s\n", err);
        else
            log_error("%s", err);
        config_free(st.cfg);
        return 1;
    }
    if (check_only) {
        int status = check_secret_files(st.cfg, service_user);
        if (status == 0)
            printf("%s: configuration OK\n", st.config_path);
        config_free(st.cfg);
        return status;
    }

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    http_global_init();
    xmlInitParser();
    int status = run(&st);

    worker_free(st.worker);
    watch_free(st.watch);
    db_free(st.database);
    delivery_free(st.backend);   /* (may still answer calls: before the metrics) */
    metrics_free(st.metrics);
    loop_timer_free(st.status_timer);
    loop_timer_free(st.drain_timer);
    sd_event_unref(st.event);
    config_free(st.cfg);
    xmlCleanupParser();
    http_global_cleanup();
    return status;
}
