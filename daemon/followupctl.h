/* followupctl's database commands (followupctl_db.c): status, failed, mailboxes,
 * flush, retry, resync, attr, migrate. Each takes an open connection and returns the
 * exit status. The command line and the commands without a database are in
 * followupctl.c. */
#ifndef FOLLOWUPD_FOLLOWUPCTL_H
#define FOLLOWUPD_FOLLOWUPCTL_H

#include <stdbool.h>

#include <libpq-fe.h>

#define EXIT_USAGE 2

/* A positive decimal id (a log id, a pid); false for anything else. */
bool ctl_parse_id(const char *text, long long *id);

/* The command being run (for hints), set by main. */
extern const char *ctl_command_name;

/* "followupctl: " + fmt with detail on stderr; returns 1. */
int ctl_fail(const char *fmt, const char *detail);
/* A libpq message without its trailing newline (a static buffer). */
const char *ctl_one_line(const char *message);

/* The daemon's own liveness, apart from the queue: its pid from the runtime
 * directory (written at start under systemd) and whether that process is a
 * followupd alive now. */
typedef struct daemon_liveness {
    const char *state;   /* "running", "not running", or "unknown" (no pid file) */
    long pid;            /* 0 when unknown */
    char detail[160];    /* for people: where the answer comes from */
} daemon_liveness;
void daemon_liveness_read(daemon_liveness *out);
/* ", \"daemon\": \"...\", \"daemon_pid\": N|null" for status --json. */
void print_daemon_liveness_json(const daemon_liveness *live);

/* status --json when the database cannot be reached: what is known. */
void print_status_unreachable(const char *error);

int cmd_status(PGconn *conn, bool json);
int cmd_flush(PGconn *conn, const char *what);
int cmd_failed(PGconn *conn, bool json);
int cmd_mailboxes(PGconn *conn, bool json);
int cmd_retry(PGconn *conn, const char *what);
int cmd_resync(PGconn *conn, const char *what);
int cmd_attr(PGconn *conn, const char *name, const char *value);
int cmd_migrate(PGconn *conn);

#endif
