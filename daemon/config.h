/* config — followupd.conf (INI) into a struct, driven by one option table.
 * The table (config.c) is the single source for the parser, --check, defaults and
 * the docs check (tests/check-config-docs.sh).  The module's files: config.c (the
 * table, the parser, load), config_check.c (rules between keys, where a key was
 * set), config_secret.c (secret files), config_dump.c (dump, restart keys). */
#ifndef FOLLOWUPD_CONFIG_H
#define FOLLOWUPD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CONFIG_DEFAULT_PATH "/etc/followupd/followupd.conf"
/* The unit's User= and the file its LoadCredential=ews-password: reads
 * (systemd/followupd.service). */
#define CONFIG_SERVICE_USER "followupd"
#define CONFIG_CREDENTIAL_SOURCE "/etc/followupd/ews-password"

typedef enum config_api { CONFIG_API_EWS, CONFIG_API_GRAPH } config_api;
typedef enum config_auth {
    CONFIG_AUTH_BASIC,
    CONFIG_AUTH_NTLM,
    CONFIG_AUTH_NEGOTIATE,
    CONFIG_AUTH_OAUTH2,
} config_auth;

typedef struct config {
    /* [database] */
    char *db_conninfo;
    /* [exchange] */
    config_api api;
    char *exchange_url;
    config_auth auth;
    char *username;
    char *password_file;      /* NULL: $CREDENTIALS_DIRECTORY/ews-password */
    bool impersonation;
    char *server_version;
    bool tls_verify;
    char *ca_file;            /* NULL when empty */
    int timeout_seconds;
    char *time_zone;
    /* [graph] */
    char *graph_base_url;
    int graph_poll_interval;  /* seconds between delta queries (SyncFromOutlook) */
    /* [oauth2] */
    char *oauth2_token_url;
    char *oauth2_client_id;
    char *oauth2_client_secret_file;
    char *oauth2_scope;
    /* [delivery] */
    int concurrency;
    int max_attempts;
    int batch_size;           /* items per CreateItem request */
    int backoff_initial_ms;   /* first retry delay; doubles per attempt */
    int backoff_max_ms;       /* cap of the retry delay */
    int settle_ms;            /* how long Exchange may still act on a request we gave up on; 0: 2 × timeout */
    int lease_seconds;        /* a claim's lease, renewed every quarter; 0: max(30, 3 × timeout) */
    /* [metrics] */
    char *metrics_listen;     /* "HOST:PORT" for GET /metrics; NULL or "" = off */
    /* Where each key was set (config_where); NULL for a config made without a file. */
    struct config_origin *origin;
} config;

/* One row of the option table, exported for --help-config style listings and the docs check. */
typedef struct config_option_info {
    const char *section;
    const char *key;
    const char *default_value;   /* as written in the file; "" for empty */
    bool reloadable;             /* applied by SIGHUP without restart */
} config_option_info;

/* Returns the table and its length. */
const config_option_info *config_options(size_t *count);

/* Loads path into a fresh config with defaults for absent keys.
 * Returns 0, or -1 with "FILE:LINE: reason" (or "FILE: reason") in err.
 * Unknown sections/keys, malformed lines, bad values and duplicate keys are errors. */
int config_load(const char *path, config **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Same, from a string (name is used in messages). */
int config_parse_string(const char *name, const char *text, config **out, char *err,
                        size_t errlen)
    __attribute__((warn_unused_result));

/* Receives one message ("FILE:LINE: reason") at a time. */
typedef void config_warn_fn(const char *message, void *data);

/* As config_load, but a bad line is passed to warn and skipped (its key keeps the
 * default; the keys under a bad section header are skipped with it), so a command
 * that needs one key ([database] conninfo) still works while someone edits
 * another.  Fails only when the file cannot be read.  Never for the daemon. */
int config_load_lenient(const char *path, config **out, config_warn_fn *warn, void *warn_data,
                        char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Checks cross-key rules that need more than one key (e.g. api=ews needs url;
 * http:// only for loopback hosts). Returns 0 or -1 with "FILE:LINE: [section] key:
 * reason" in err (FILE alone when the key is not in the file). */
int config_validate(const config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));

void config_free(config *cfg);

/* Reads a secret file: refuses files readable by group or others, strips one trailing
 * newline. Returns a malloc'd string or NULL with "PATH: reason; what to do" in err
 * (never the secret). */
char *config_read_secret(const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* For --check: opens every secret the configuration needs as the service will.
 * password_file and client_secret_file are read as service_user (the unit's User=)
 * when run as root, else as the caller; an empty password_file means the credential:
 * $CREDENTIALS_DIRECTORY/ews-password, or, outside systemd, the file the unit loads it
 * from (CONFIG_CREDENTIAL_SOURCE), which root can check and others cannot (then
 * note() says so).  Returns 0, or -1 with the key's file:line, the file, the reason
 * and the fix in err. */
int config_check_secrets(const config *cfg, const char *service_user, config_warn_fn *note,
                         void *note_data, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Added for callers of the module (main.c, followupctl.c). */

/* "ews"/"graph", "basic"/"ntlm"/"negotiate"/"oauth2": names as written in the file. */
const char *config_api_name(config_api api);
const char *config_auth_name(config_auth auth);

/* The file a config was read from (NULL when made otherwise), and the line that set
 * [section] key (0: not in the file, or unknown). */
const char *config_file_name(const config *cfg);
int config_key_line(const config *cfg, const char *section, const char *key);
/* "FILE:LINE: [section] key" (or "FILE: [section] key" when the file does not set it)
 * into buf, for messages; returns buf. */
const char *config_where(const config *cfg, const char *section, const char *key, char *buf,
                         size_t len);

/* The EWS password file to read: password_file, or $CREDENTIALS_DIRECTORY/ews-password
 * when it is unset. Returns a malloc'd path, or NULL with reason in err.  The one
 * place that knows this rule (the EWS back end and --check use it). */
char *config_password_path(const config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* For SIGHUP: counts keys that differ between old and new_cfg but are not reloadable
 * (they keep their old value until a restart) and lists them ("[database] conninfo")
 * in keys. Returns 0 when the new config can be applied as a whole. */
int config_restart_keys(const config *old, const config *new_cfg, char *keys, size_t len);

/* Writes the effective configuration in followupd.conf syntax (no secrets: the file
 * holds only paths to them). */
void config_dump(const config *cfg, FILE *out);

#endif
