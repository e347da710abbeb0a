/* rundir — see rundir.h. */
#include "daemon/rundir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *rundir_path(char *buf, size_t len)
{
    const char *dir = getenv("RUNTIME_DIRECTORY");

    if (!dir || !*dir)
        dir = RUNDIR_DEFAULT;
    /* RuntimeDirectory= with several entries: systemd joins them with ':'. */
    snprintf(buf, len, "%.*s", (int)strcspn(dir, ":"), dir);
    return buf;
}

/* Replaces DIR/name with text in one step: a reader never sees half a file. */
static int write_file(const char *name, const char *text)
{
    char dir[512], path[600], tmp[640];
    size_t len = strlen(text);
    int fd, r = 0;

    if (!getenv("RUNTIME_DIRECTORY") || !*getenv("RUNTIME_DIRECTORY"))
        return 0;
    rundir_path(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return -errno;
    errno = 0;
    if (write(fd, text, len) != (ssize_t)len)
        r = errno ? -errno : -EIO;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

/* Reads DIR/name (at most len - 1 bytes, NUL-terminated). */
static int read_file(const char *name, char *buf, size_t len)
{
    char dir[512], path[600];
    ssize_t n;
    int fd;

    rundir_path(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

int rundir_write_pid(void)
{
    char text[32];

    snprintf(text, sizeof text, "%ld\n", (long)getpid());
    return write_file("pid", text);
}

int rundir_write_reload(pid_t asker, bool ok, const char *message)
{
    char text[2048];
    size_t i;

    snprintf(text, sizeof text, "%ld %s %s", (long)asker, ok ? "ok" : "refused",
             message ? message : "");
    for (i = 0; text[i]; i++)   /* one line, whatever the message holds */
        if (text[i] == '\n' || text[i] == '\r')
            text[i] = ' ';
    if (i + 1 < sizeof text) {
        text[i] = '\n';
        text[i + 1] = '\0';
    }
    return write_file("reload", text);
}

int rundir_read_pid(pid_t *pid)
{
    char text[32], *end;
    long v;
    int r = read_file("pid", text, sizeof text);

    if (r < 0)
        return r;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno || end == text || v <= 0 || (*end && *end != '\n'))
        return -EINVAL;
    *pid = (pid_t)v;
    return 0;
}

int rundir_read_reload(pid_t *asker, bool *ok, char *message, size_t len)
{
    char text[2048], verdict[16];
    long who;
    int used = 0;
    int r = read_file("reload", text, sizeof text);

    if (r < 0)
        return r;
    if (sscanf(text, "%ld %15s %n", &who, verdict, &used) < 2 || used == 0)
        return -EINVAL;
    text[strcspn(text, "\n")] = '\0';
    *asker = (pid_t)who;
    *ok = strcmp(verdict, "ok") == 0;
    snprintf(message, len, "%s", text + used);
    return 0;
}
