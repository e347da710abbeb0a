/* rundir — the daemon's runtime directory ($RUNTIME_DIRECTORY, which systemd sets
 * for RuntimeDirectory=followupd; /run/followupd when unset), through which
 * `followupctl reload` finds the daemon and learns the verdict of the reload it asked
 * for: systemd 252 has no Type=notify-reload, so ExecReload= runs followupctl reload,
 * which exits 1 with the reason when the daemon refused the new file.
 *
 * Files: "pid" (the daemon's pid, written at start) and "reload" (one line: the pid
 * of the process that sent SIGHUP, "ok" or "refused", and the message).  The daemon
 * writes them only when $RUNTIME_DIRECTORY is set (under systemd). */
#ifndef FOLLOWUPD_RUNDIR_H
#define FOLLOWUPD_RUNDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define RUNDIR_DEFAULT "/run/followupd"

/* The directory: the first entry of $RUNTIME_DIRECTORY, or RUNDIR_DEFAULT. */
const char *rundir_path(char *buf, size_t len);

/* Daemon side; both do nothing (and return 0) without $RUNTIME_DIRECTORY.
 * Return 0 or a negative errno. */
int rundir_write_pid(void) __attribute__((warn_unused_result));
int rundir_write_reload(pid_t asker, bool ok, const char *message)
    __attribute__((warn_unused_result));

/* followupctl side.  Return 0, -ENOENT when there is no such file yet, or another
 * negative errno. */
int rundir_read_pid(pid_t *pid) __attribute__((warn_unused_result));
int rundir_read_reload(pid_t *asker, bool *ok, char *message, size_t len)
    __attribute__((warn_unused_result));

#endif
