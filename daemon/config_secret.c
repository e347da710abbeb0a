/* config_secret — secret files: reading one (config_read_secret), which file holds
 * the EWS password (config_password_path, the one place that knows), and --check's
 * look at every secret as the service will open it (config_check_secrets).
 *
 * A secret is a regular file, not empty, closed to group and others; its content is
 * never written into a message. */
#include "daemon/config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/config_table.h"
#include "daemon/text.h"

/* Secrets are passwords and client secrets; 64 KiB is generous. */
#define SECRET_MAX_SIZE (64 * 1024)

static bool is_empty(const char *s)
{
    return !s || !*s;
}

/* "owner root:root, mode 0600" of path, or "" when it cannot be seen. */
static void describe_file(const char *path, char *buf, size_t len)
{
    struct passwd *pw;
    struct group *gr;
    struct stat st;
    char user[32], group[32];

    buf[0] = '\0';
    if (stat(path, &st) < 0)
        return;
    pw = getpwuid(st.st_uid);
    gr = getgrgid(st.st_gid);
    if (pw)
        snprintf(user, sizeof user, "%s", pw->pw_name);
    else
        snprintf(user, sizeof user, "%u", (unsigned)st.st_uid);
    if (gr)
        snprintf(group, sizeof group, "%s", gr->gr_name);
    else
        snprintf(group, sizeof group, "%u", (unsigned)st.st_gid);
    snprintf(buf, len, "owner %s:%s, mode %04o", user, group, (unsigned)(st.st_mode & 07777));
}

/* As config_read_secret; *open_errno is open(2)'s errno when the file could not be
 * opened, else 0. */
static char *read_secret(const char *path, int *open_errno, char *err, size_t errlen)
{
    char *buf = NULL, *secret = NULL;
    char owner[96];
    size_t len = 0;
    struct stat st;
    int fd = -1;

    *open_errno = 0;
    /* Symlinks are followed on purpose: systemd credentials may be links. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *open_errno = errno;
        if (errno == ENOENT)
            text_set_error(err, errlen, "%s: cannot open: %s; create it (mode 0600) and write "
                           "the secret into it, or correct the path", path, strerror(errno));
        else if (errno == EACCES) {
            describe_file(path, owner, sizeof owner);
            text_set_error(err, errlen, "%s: cannot open: %s%s%s%s; the user running followupd "
                           "(uid %u) must own it (chown) with mode 0600", path,
                           strerror(errno), owner[0] ? " (" : "", owner, owner[0] ? ")" : "",
                           (unsigned)geteuid());
        } else
            text_set_error(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    /* fstat, not stat: checks the file we actually read. */
    if (fstat(fd, &st) < 0) {
        text_set_error(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        text_set_error(err, errlen, "%s: not a regular file; a secret must be a plain file",
                       path);
        goto fail;
    }
    if (st.st_mode & 077) {
        text_set_error(err, errlen, "%s: secret file is readable by group or others (mode "
                       "%04o); chmod 600 it", path, (unsigned)(st.st_mode & 07777));
        goto fail;
    }

    buf = malloc(SECRET_MAX_SIZE + 1);
    if (!buf) {
        text_set_error(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    while (len <= SECRET_MAX_SIZE) {
        ssize_t n = read(fd, buf + len, SECRET_MAX_SIZE + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            text_set_error(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > SECRET_MAX_SIZE) {
        text_set_error(err, errlen, "%s: secret file is larger than %d KiB; is this the right "
                       "file?", path, SECRET_MAX_SIZE / 1024);
        goto fail;
    }
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        text_set_error(err, errlen, "%s: secret file is empty; write the secret into it", path);
        goto fail;
    }
    /* A NUL would silently cut the secret short and fail authentication later. */
    if (memchr(buf, '\0', len)) {
        text_set_error(err, errlen, "%s: secret file contains a NUL byte; write the secret "
                       "into it as text", path);
        goto fail;
    }
    secret = malloc(len + 1);
    if (!secret) {
        text_set_error(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    memcpy(secret, buf, len);
    secret[len] = '\0';
    /* fall through: the success path shares the cleanup */

fail:
    if (buf) {
        explicit_bzero(buf, SECRET_MAX_SIZE + 1);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return secret;
}

char *config_read_secret(const char *path, char *err, size_t errlen)
{
    int open_errno;

    return read_secret(path, &open_errno, err, errlen);
}

/* 0 when path holds a usable secret (read and wiped at once), else -1. */
static int try_secret(const char *path, int *open_errno, char *err, size_t errlen)
{
    char *secret = read_secret(path, open_errno, err, errlen);

    if (!secret)
        return -1;
    explicit_bzero(secret, strlen(secret));
    free(secret);
    return 0;
}

char *config_password_path(const config *cfg, char *err, size_t errlen)
{
    const char *dir;
    char *path;

    if (!is_empty(cfg->password_file)) {
        path = strdup(cfg->password_file);
        goto out;
    }
    dir = getenv("CREDENTIALS_DIRECTORY");
    if (is_empty(dir)) {
        char where[320];
        text_set_error(err, errlen, "%s: not set, and there is no systemd credential "
                       "($CREDENTIALS_DIRECTORY is not set): run followupd from its unit, "
                       "which passes " CONFIG_CREDENTIAL_SOURCE " as the credential "
                       "ews-password (LoadCredential=), or set password_file",
                       config_where(cfg, "exchange", "password_file", where, sizeof where));
        return NULL;
    }
    if (asprintf(&path, "%s/ews-password", dir) < 0)
        path = NULL;
out:
    if (!path)
        text_set_error(err, errlen, "out of memory");
    return path;
}

/* ---- --check: every secret as the service will open it ----------------------- */

/* What the child of read_as_user reports. */
struct as_user_result {
    int ok;
    int open_errno;
    char message[512];
};

/* Reads path as user pw (uid, gid and supplementary groups) in a child process, so
 * that the check sees what the service will: root's view proves nothing. */
static int read_as_user(const char *path, const struct passwd *pw, int *open_errno, char *err,
                        size_t errlen)
{
    struct as_user_result res = {0};
    int fds[2], status;
    ssize_t got = 0;
    pid_t pid;

    if (pipe2(fds, O_CLOEXEC) < 0) {
        text_set_error(err, errlen, "%s: cannot check as user %s: pipe: %s", path, pw->pw_name,
                       strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        text_set_error(err, errlen, "%s: cannot check as user %s: fork: %s", path, pw->pw_name,
                       strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
            setuid(pw->pw_uid) < 0)
            snprintf(res.message, sizeof res.message, "%s: cannot switch to user %s to check "
                     "it: %s", path, pw->pw_name, strerror(errno));
        else
            res.ok = try_secret(path, &res.open_errno, res.message, sizeof res.message) == 0;
        if (write(fds[1], &res, sizeof res) != (ssize_t)sizeof res)
            _exit(2);
        _exit(res.ok ? 0 : 1);
    }
    close(fds[1]);
    while (got < (ssize_t)sizeof res) {
        ssize_t n = read(fds[0], (char *)&res + got, sizeof res - (size_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += n;
    }
    close(fds[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got != (ssize_t)sizeof res) {
        text_set_error(err, errlen, "%s: cannot check as user %s: the check did not report",
                       path, pw->pw_name);
        return -1;
    }
    res.message[sizeof res.message - 1] = '\0';
    *open_errno = res.open_errno;
    if (!res.ok)
        text_set_error(err, errlen, "%s", res.message);
    return res.ok ? 0 : -1;
}

#define USE_CREDENTIAL_INSTEAD \
    "; or leave password_file empty, so that systemd passes the file to the service as " \
    "the credential ews-password (LoadCredential=ews-password:" CONFIG_CREDENTIAL_SOURCE \
    ", in the unit)"

/* A secret file the daemon opens itself ([section] key = path). */
static int check_secret_file(const config *cfg, const char *section, const char *key,
                             const char *path, const char *service_user, bool credential_too,
                             config_warn_fn *note, void *note_data, char *err, size_t errlen)
{
    char where[320], reason[640], owner[96], message[1024];
    struct passwd *pw = is_empty(service_user) ? NULL : getpwnam(service_user);
    int open_errno;

    config_where(cfg, section, key, where, sizeof where);
    /* As ourselves first: missing, not private, empty... in their own words. */
    if (try_secret(path, &open_errno, reason, sizeof reason) < 0) {
        /* Someone else (a member of group followupd) checking the service's file. */
        if (open_errno == EACCES && geteuid() != 0 && pw && pw->pw_uid != geteuid()) {
            if (note) {
                snprintf(message, sizeof message, "%s: %s: readable by its owner only, so "
                         "not checked; run followupd --check as root to check it as user %s",
                         where, path, service_user);
                note(message, note_data);
            }
            return 0;
        }
        text_set_error(err, errlen, "%s: %s%s", where, reason,
                       (open_errno == ENOENT || open_errno == EACCES) && credential_too
                           ? USE_CREDENTIAL_INSTEAD : "");
        return -1;
    }
    if (geteuid() != 0 || is_empty(service_user))
        return 0;
    if (!pw) {
        text_set_error(err, errlen, "%s: %s: the service runs as user %s, which does not "
                       "exist yet, so nobody can give it this file: create the user "
                       "(systemd-sysusers followupd.conf), then chown %s:%s %s%s", where,
                       path, service_user, service_user, service_user, path,
                       credential_too ? USE_CREDENTIAL_INSTEAD : "");
        return -1;
    }
    if (pw->pw_uid == 0)
        return 0;
    if (read_as_user(path, pw, &open_errno, reason, sizeof reason) == 0)
        return 0;
    if (open_errno != EACCES) {
        text_set_error(err, errlen, "%s: as user %s: %s", where, service_user, reason);
        return -1;
    }
    describe_file(path, owner, sizeof owner);
    struct stat st;
    if (stat(path, &st) == 0 && st.st_uid == pw->pw_uid && (st.st_mode & 0400))
        text_set_error(err, errlen, "%s: %s: the service user %s cannot open it (%s): a "
                       "directory on its path is closed to %s (namei -l %s shows which); "
                       "keep secrets in /etc/followupd", where, path, service_user, owner,
                       service_user, path);
    else
        text_set_error(err, errlen, "%s: %s: the service user %s cannot read it (%s): make it "
                       "the service's: chown %s:%s %s (mode 0600 stays)%s", where, path,
                       service_user, owner, service_user, service_user, path,
                       credential_too ? USE_CREDENTIAL_INSTEAD : "");
    return -1;
}

/* password_file is empty: the password is systemd's credential ews-password. */
static int check_credential(const config *cfg, config_warn_fn *note, void *note_data,
                            char *err, size_t errlen)
{
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    char where[320], reason[640], path[4096], message[1024];
    int open_errno;

    config_where(cfg, "exchange", "password_file", where, sizeof where);
    if (!is_empty(dir)) {
        /* Under systemd (ExecStartPre=): the copy the service gets. */
        snprintf(path, sizeof path, "%s/ews-password", dir);
        if (try_secret(path, &open_errno, reason, sizeof reason) == 0)
            return 0;
        text_set_error(err, errlen, "%s: empty, so the password is the systemd credential "
                       "ews-password: %s%s", where, reason,
                       open_errno == ENOENT ? " (the unit needs LoadCredential=ews-password:"
                       CONFIG_CREDENTIAL_SOURCE ")" : "");
        return -1;
    }
    /* From a shell: the file the unit's LoadCredential= reads, as root (systemd does). */
    if (geteuid() != 0 && access(CONFIG_CREDENTIAL_SOURCE, R_OK) < 0 && errno == EACCES) {
        if (note) {
            snprintf(message, sizeof message, "%s: empty, so the service gets the password "
                     "from " CONFIG_CREDENTIAL_SOURCE " (LoadCredential=), which only root "
                     "may read: not checked; run followupd --check as root to check it",
                     where);
            note(message, note_data);
        }
        return 0;
    }
    if (try_secret(CONFIG_CREDENTIAL_SOURCE, &open_errno, reason, sizeof reason) == 0)
        return 0;
    if (open_errno == ENOENT)
        text_set_error(err, errlen, "%s: empty, so the service gets the password as the "
                       "systemd credential ews-password, which the unit loads from "
                       CONFIG_CREDENTIAL_SOURCE " (LoadCredential=); that file does not exist "
                       "and systemd would refuse to start the service (status=243/"
                       "CREDENTIALS): install -m 0600 -o root -g root /dev/null "
                       CONFIG_CREDENTIAL_SOURCE ", then write the password into it", where);
    else
        text_set_error(err, errlen, "%s: empty, so the service gets the password from "
                       CONFIG_CREDENTIAL_SOURCE " (LoadCredential=): %s", where, reason);
    return -1;
}

int config_check_secrets(const config *cfg, const char *service_user, config_warn_fn *note,
                         void *note_data, char *err, size_t errlen)
{
    bool ews_password = cfg->api == CONFIG_API_EWS &&
                        (cfg->auth == CONFIG_AUTH_BASIC || cfg->auth == CONFIG_AUTH_NTLM);
    bool client_secret = cfg->api == CONFIG_API_GRAPH || cfg->auth == CONFIG_AUTH_OAUTH2;

    if (ews_password) {
        int r = is_empty(cfg->password_file)
                    ? check_credential(cfg, note, note_data, err, errlen)
                    : check_secret_file(cfg, "exchange", "password_file", cfg->password_file,
                                        service_user, true, note, note_data, err, errlen);
        if (r < 0)
            return -1;
    }
    if (client_secret && !is_empty(cfg->oauth2_client_secret_file) &&
        check_secret_file(cfg, "oauth2", "client_secret_file", cfg->oauth2_client_secret_file,
                          service_user, false, note, note_data, err, errlen) < 0)
        return -1;
    return 0;
}
