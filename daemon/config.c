/* config — followupd.conf (INI) into a struct config.
 *
 * Everything about an option (section, key, type, default, where it lives in
 * struct config, whether SIGHUP applies it) is written once, in
 * CONFIG_OPTION_TABLE below.  The parser, the defaults, config_free, config_dump,
 * config_options() and the docs check (tests/check-config-docs.sh) all read that
 * one table, so a new key is one new row plus its man-page entry.
 *
 * File syntax (documented in followupd.conf(5)):
 *   [section]            header; whitespace inside the brackets is ignored
 *   key = value          whitespace around key and value is trimmed
 *   ; comment, # comment at the start of a line (after optional whitespace)
 *   key = value ; note   a ';' preceded by whitespace (or starting the value)
 *                        begins an inline comment; '#' inside a value is kept,
 *                        because URLs and libpq strings may contain it
 *   key =                empty value: the key's default
 * There is no quoting: values are taken literally.  CRLF line ends and a UTF-8
 * byte-order mark are accepted, since Exchange admins often edit on Windows. */
#include "daemon/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A config file larger than this is certainly not a followupd.conf. */
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)
/* Secrets are passwords and client secrets; 64 KiB is generous. */
#define SECRET_MAX_SIZE (64 * 1024)

enum option_type {
    T_STRING,   /* char *, empty value -> default (strdup'd) */
    T_PATH,     /* char *, empty value -> NULL */
    T_WORD,     /* char *, must be one of opt->values */
    T_BOOL,     /* bool */
    T_INT,      /* int in [min, max] */
    T_ENUM,     /* enum stored as int: index into opt->values */
};

struct option {
    const char *section;
    const char *key;
    enum option_type type;
    const char *default_value;  /* as written in the file; "" = empty */
    size_t offset;              /* into struct config */
    bool reloadable;
    int min, max;               /* T_INT only */
    const char *const *values;  /* T_ENUM / T_WORD: NULL-terminated */
};

/* Index == enum value, so the order must follow config_api / config_auth. */
static const char *const api_names[] = { "ews", "graph", NULL };
static const char *const auth_names[] = { "basic", "ntlm", "negotiate", "oauth2", NULL };
/* t:ExchangeVersionType in Microsoft's types.xsd, oldest first. */
static const char *const version_names[] = {
    "Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1",
    "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015",
    "Exchange2016", "V2015_10_05", "V2016_01_06", "V2016_04_13", "V2016_07_13",
    "V2016_10_10", NULL,
};

/* The oldest schema our requests fit: older ones lack the time-zone elements every
 * appointment and task carries (SPEC section 4), so Exchange would answer each request
 * with ErrorSchemaValidation and everything would park. */
#define OLDEST_USABLE_VERSION "Exchange2010_SP1"

_Static_assert(CONFIG_API_EWS == 0 && CONFIG_API_GRAPH == 1, "api_names order");
_Static_assert(CONFIG_AUTH_BASIC == 0 && CONFIG_AUTH_NTLM == 1 &&
               CONFIG_AUTH_NEGOTIATE == 2 && CONFIG_AUTH_OAUTH2 == 3, "auth_names order");
_Static_assert(sizeof(config_api) == sizeof(int) && sizeof(config_auth) == sizeof(int),
               "enums are stored through int");

#define GRAPH_SCOPE "https://graph.microsoft.com/.default"

/* THE option table.
 *   X("section", "key", type, "default", field, reloadable, min, max, values)
 * Reloadable: everything except [database] conninfo; changing the database
 * connection means dropping LISTEN and the claimed queue rows, so it needs a
 * restart (config_restart_keys() reports it on reload).
 *
 * tests/check-config-docs.sh extracts the keys with sed from lines of the form
 *     <spaces>X("section", "key", ...
 * so keep exactly one row per line, each starting with X(" and the section and
 * key as the first two string literals. */
#define CONFIG_OPTION_TABLE(X) \
    X("database", "conninfo",           T_STRING, "dbname=crm",                   db_conninfo,               false, 0, 0,    NULL) \
    X("exchange", "api",                T_ENUM,   "ews",                          api,                       false,  0, 0,    api_names) \
    X("exchange", "url",                T_STRING, "",                             exchange_url,              true,  0, 0,    NULL) \
    X("exchange", "auth",               T_ENUM,   "ntlm",                         auth,                      true,  0, 0,    auth_names) \
    X("exchange", "username",           T_STRING, "",                             username,                  true,  0, 0,    NULL) \
    X("exchange", "password_file",      T_PATH,   "",                             password_file,             true,  0, 0,    NULL) \
    X("exchange", "impersonation",      T_BOOL,   "yes",                          impersonation,             true,  0, 0,    NULL) \
    X("exchange", "version",            T_WORD,   "Exchange2013_SP1",             server_version,            true,  0, 0,    version_names) \
    X("exchange", "tls_verify",         T_BOOL,   "yes",                          tls_verify,                true,  0, 0,    NULL) \
    X("exchange", "ca_file",            T_PATH,   "",                             ca_file,                   true,  0, 0,    NULL) \
    X("exchange", "timeout",            T_INT,    "30",                           timeout_seconds,           true,  1, 3600, NULL) \
    X("exchange", "time_zone",          T_STRING, "UTC",                          time_zone,                 true,  0, 0,    NULL) \
    X("graph",    "base_url",           T_STRING, "https://graph.microsoft.com/v1.0", graph_base_url,        true,  0, 0,    NULL) \
    X("graph",    "poll_interval",      T_INT,    "60",                           graph_poll_interval,       true,  5, 86400, NULL) \
    X("oauth2",   "token_url",          T_STRING, "",                             oauth2_token_url,          true,  0, 0,    NULL) \
    X("oauth2",   "client_id",          T_STRING, "",                             oauth2_client_id,          true,  0, 0,    NULL) \
    X("oauth2",   "client_secret_file", T_STRING, "",                             oauth2_client_secret_file, true,  0, 0,    NULL) \
    X("oauth2",   "scope",              T_STRING, "https://outlook.office365.com/.default", oauth2_scope,    true,  0, 0,    NULL) \
    X("delivery", "concurrency",        T_INT,    "8",                            concurrency,               true,  1, 256,  NULL) \
    X("delivery", "max_attempts",       T_INT,    "12",                           max_attempts,              true,  1, 1000, NULL) \
    X("delivery", "batch_size",         T_INT,    "20",                           batch_size,                true,  1, 100,  NULL) \
    X("delivery", "backoff_initial_ms", T_INT,    "5000",                         backoff_initial_ms,        true,  1, 3600000, NULL) \
    X("delivery", "backoff_max_ms",     T_INT,    "900000",                       backoff_max_ms,            true,  1, 86400000, NULL) \
    X("delivery", "settle_ms",          T_INT,    "0",                            settle_ms,                 true,  0, 86400000, NULL) \
    X("delivery", "lease_seconds",      T_INT,    "0",                            lease_seconds,             true,  0, 3600, NULL) \
    X("metrics",  "listen",             T_STRING, "",                             metrics_listen,            false, 0, 0,    NULL)

#define OPTION_ROW(sec, name, ty, def, field, reload, lo, hi, vals) \
    { sec, name, ty, def, offsetof(config, field), reload, lo, hi, vals },
#define INFO_ROW(sec, name, ty, def, field, reload, lo, hi, vals) \
    { sec, name, def, reload },

static const struct option options[] = { CONFIG_OPTION_TABLE(OPTION_ROW) };
static const config_option_info option_infos[] = { CONFIG_OPTION_TABLE(INFO_ROW) };

#define N_OPTIONS ARRAY_SIZE(options)

/* Sections in the order of the SPEC; a section with no row here is unknown. */
static const char *const section_names[] = {
    "database", "exchange", "graph", "oauth2", "delivery", "metrics",
};

const config_option_info *config_options(size_t *count)
{
    if (count)
        *count = N_OPTIONS;
    return option_infos;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void *field_ptr(config *cfg, const struct option *opt)
{
    return (char *)cfg + opt->offset;
}

static const void *field_cptr(const config *cfg, const struct option *opt)
{
    return (const char *)cfg + opt->offset;
}

static int lookup_name(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcasecmp(names[i], s) == 0)
            return i;
    return -1;
}

static int count_names(const char *const *names)
{
    int n = 0;

    while (names[n])
        n++;
    return n;
}

/* "a, b or c" for messages. */
static void join_names(const char *const *names, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (int i = 0; names[i] && used < len; i++) {
        const char *sep = i == 0 ? "" : names[i + 1] ? ", " : " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, names[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* The values worth suggesting in a message: for [exchange] version only those not
 * refused by check_version_age(). */
static const char *const *usable_names(const char *const *names)
{
    if (names == version_names)
        return version_names + lookup_name(version_names, OLDEST_USABLE_VERSION);
    return names;
}

/* A known [exchange] version older than OLDEST_USABLE_VERSION is refused with a
 * reason (the caller adds file:line); anything else passes here. */
static int check_version_age(const char *version, char *err, size_t errlen)
{
    int index = version ? lookup_name(version_names, version) : -1;

    if (index < 0 || index >= lookup_name(version_names, OLDEST_USABLE_VERSION))
        return 0;
    set_err(err, errlen, "[exchange] version = %s is older than %s, whose schema is the "
            "oldest with the time-zone elements followupd sends (StartTimeZone, "
            "TimeZoneContext); Exchange would refuse every request with "
            "ErrorSchemaValidation. Use %s or later (Exchange2013_SP1 for Exchange 2013 "
            "and newer)", version_names[index], OLDEST_USABLE_VERSION, OLDEST_USABLE_VERSION);
    return -1;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "yes", "true", "on", "1", NULL };
    static const char *const no[] = { "no", "false", "off", "0", NULL };

    if (lookup_name(yes, s) >= 0) {
        *out = true;
        return 0;
    }
    if (lookup_name(no, s) >= 0) {
        *out = false;
        return 0;
    }
    return -1;
}

/* Stores value (already trimmed, comment removed) into cfg.  An empty value
 * selects the default.  On failure writes a reason without location. */
static int set_option(config *cfg, const struct option *opt, const char *value, char *err,
                      size_t errlen)
{
    void *field = field_ptr(cfg, opt);
    char names[256];

    if (value[0] == '\0')
        value = opt->default_value;

    switch (opt->type) {
    case T_STRING:
    case T_PATH:
    case T_WORD: {
        char *copy = NULL;
        char **slot = field;

        if (opt->type == T_WORD && lookup_name(opt->values, value) < 0) {
            join_names(usable_names(opt->values), names, sizeof names);
            set_err(err, errlen, "invalid %s '%.64s' in [%s]; use one of %s", opt->key, value,
                    opt->section, names);
            return -1;
        }
        if (opt->type == T_WORD)  /* store the canonical spelling */
            value = opt->values[lookup_name(opt->values, value)];
        if (opt->values == version_names && check_version_age(value, err, errlen) < 0)
            return -1;
        if (opt->type != T_PATH || value[0] != '\0') {
            copy = strdup(value);
            if (!copy) {
                set_err(err, errlen, "out of memory");
                return -1;
            }
        }
        free(*slot);
        *slot = copy;
        return 0;
    }
    case T_BOOL:
        if (parse_bool(value, field) < 0) {
            set_err(err, errlen,
                    "invalid boolean '%.64s' for %s in [%s]; use yes/no, true/false, on/off "
                    "or 1/0", value, opt->key, opt->section);
            return -1;
        }
        return 0;
    case T_INT: {
        char *end;
        long v;

        errno = 0;
        v = strtol(value, &end, 10);
        if (end == value || *end != '\0') {
            set_err(err, errlen, "invalid integer '%.64s' for %s in [%s]; expected a number "
                    "from %d to %d", value, opt->key, opt->section, opt->min, opt->max);
            return -1;
        }
        if (errno == ERANGE || v < opt->min || v > opt->max) {
            set_err(err, errlen, "%s = %.64s in [%s] is out of range; use %d to %d", opt->key,
                    value, opt->section, opt->min, opt->max);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case T_ENUM: {
        int v = lookup_name(opt->values, value);

        if (v < 0) {
            join_names(opt->values, names, sizeof names);
            set_err(err, errlen, "invalid %s '%.64s' in [%s]; use %s", opt->key, value,
                    opt->section, names);
            return -1;
        }
        memcpy(field, &v, sizeof v);
        return 0;
    }
    }
    set_err(err, errlen, "internal error: option %s has unknown type", opt->key);
    return -1;
}

void config_free(config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option *opt = &options[i];
        if (opt->type == T_STRING || opt->type == T_PATH || opt->type == T_WORD)
            free(*(char **)field_ptr(cfg, opt));
    }
    free(cfg);
}

/* A config holding every default; NULL with a reason on failure. */
static config *config_new_defaults(char *err, size_t errlen)
{
    config *cfg = calloc(1, sizeof *cfg);

    if (!cfg) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (set_option(cfg, &options[i], options[i].default_value, err, errlen) < 0)
            goto fail;
    }
    return cfg;

fail:
    config_free(cfg);
    return NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Trims in place, returns the new start. */
static char *trim(char *s)
{
    char *end;

    while (is_blank(*s))
        s++;
    end = s + strlen(s);
    while (end > s && is_blank(end[-1]))
        *--end = '\0';
    return s;
}

/* Cuts an inline comment: ';' at the start or preceded by whitespace. */
static void strip_inline_comment(char *s)
{
    for (char *p = s; *p; p++) {
        if (*p == ';' && (p == s || is_blank(p[-1]))) {
            *p = '\0';
            return;
        }
    }
}

static int find_section(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(section_names); i++)
        if (strcmp(section_names[i], name) == 0)
            return (int)i;
    return -1;
}

static const struct option *find_option(const char *section, const char *key)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(options[i].section, section) == 0 && strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

/* For "unknown key" hints: the section that does have this key, if any. */
static const char *section_of_key(const char *key)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(options[i].key, key) == 0)
            return options[i].section;
    return NULL;
}

struct parser {
    const char *name;
    int line;
    int section;            /* index into section_names, -1 before the first header */
    int seen[N_OPTIONS];    /* line that set the option, 0 = not set */
    bool given[N_OPTIONS];  /* set to a non-empty value (not the default) */
    char *err;
    size_t errlen;
};

static int parse_error(struct parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int parse_error(struct parser *p, const char *fmt, ...)
{
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    set_err(p->err, p->errlen, "%s:%d: %s", p->name, p->line, reason);
    return -1;
}

static int parse_header(struct parser *p, char *line)
{
    char *close = strchr(line, ']');
    char *name, *rest;

    if (!close)
        return parse_error(p, "unterminated section header; expected ']' as in [exchange]");
    *close = '\0';
    rest = close + 1;
    strip_inline_comment(rest);
    rest = trim(rest);
    if (*rest)
        return parse_error(p, "unexpected text '%.64s' after section header", rest);
    name = trim(line + 1);
    p->section = find_section(name);
    if (p->section < 0)
        return parse_error(p, "unknown section [%.64s]; known sections are [database], "
                           "[exchange], [graph], [oauth2] and [delivery]", name);
    return 0;
}

static int parse_assignment(struct parser *p, config *cfg, char *line, char *eq)
{
    const char *section, *home;
    const struct option *opt;
    char reason[512];
    char *key, *value;
    size_t idx;

    *eq = '\0';
    key = trim(line);
    value = eq + 1;
    strip_inline_comment(value);
    value = trim(value);

    if (*key == '\0')
        return parse_error(p, "missing key name before '='");
    if (p->section < 0) {
        home = section_of_key(key);
        if (home)
            return parse_error(p, "key '%.64s' is outside any section; put it under [%s]",
                               key, home);
        return parse_error(p, "key '%.64s' is outside any section; start the file with a "
                           "[section] header", key);
    }
    section = section_names[p->section];
    opt = find_option(section, key);
    if (!opt) {
        home = section_of_key(key);
        if (home)
            return parse_error(p, "unknown key '%.64s' in section [%s]; it belongs in [%s]",
                               key, section, home);
        return parse_error(p, "unknown key '%.64s' in section [%s]; see followupd.conf(5) "
                           "for the keys", key, section);
    }
    idx = (size_t)(opt - options);
    if (p->seen[idx])
        return parse_error(p, "duplicate key '%s' in section [%s] (first set on line %d); "
                           "remove one of them", key, section, p->seen[idx]);
    p->seen[idx] = p->line;
    p->given[idx] = value[0] != '\0';
    if (set_option(cfg, opt, value, reason, sizeof reason) < 0)
        return parse_error(p, "%s", reason);
    return 0;
}

static int parse_line(struct parser *p, config *cfg, char *line)
{
    char *eq;

    line = trim(line);
    if (*line == '\0' || *line == ';' || *line == '#')
        return 0;
    if (*line == '[')
        return parse_header(p, line);
    eq = strchr(line, '=');
    if (!eq)
        return parse_error(p, "expected 'key = value', a [section] header or a comment");
    return parse_assignment(p, cfg, line, eq);
}

int config_parse_string(const char *name, const char *text, config **out, char *err,
                        size_t errlen)
{
    struct parser p = { .name = name ? name : "(config)", .section = -1, .err = err,
                        .errlen = errlen };
    config *cfg = NULL;
    char *copy = NULL, *line, *next;

    *out = NULL;
    cfg = config_new_defaults(err, errlen);
    if (!cfg)
        goto fail;
    copy = strdup(text);
    if (!copy) {
        set_err(err, errlen, "%s: out of memory", p.name);
        goto fail;
    }
    line = copy;
    if (strncmp(line, "\xef\xbb\xbf", 3) == 0)  /* UTF-8 BOM */
        line += 3;
    for (; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        p.line++;
        if (parse_line(&p, cfg, line) < 0)
            goto fail;
    }

    /* Graph needs its own token audience: an absent or empty scope follows the api. */
    if (cfg->api == CONFIG_API_GRAPH && !p.given[find_option("oauth2", "scope") - options]) {
        char *scope = strdup(GRAPH_SCOPE);
        if (!scope) {
            set_err(err, errlen, "%s: out of memory", p.name);
            goto fail;
        }
        free(cfg->oauth2_scope);
        cfg->oauth2_scope = scope;
    }

    free(copy);
    *out = cfg;
    return 0;

fail:
    free(copy);
    config_free(cfg);
    return -1;
}

int config_load(const char *path, config **out, char *err, size_t errlen)
{
    FILE *f = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    f = fopen(path, "re");
    if (!f) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    text = malloc(CONFIG_MAX_FILE_SIZE + 1);
    if (!text) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    len = fread(text, 1, CONFIG_MAX_FILE_SIZE + 1, f);
    if (ferror(f)) {
        set_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    if (len > CONFIG_MAX_FILE_SIZE) {
        set_err(err, errlen, "%s: larger than %d bytes; is this the right file?", path,
                CONFIG_MAX_FILE_SIZE);
        goto fail;
    }
    if (memchr(text, '\0', len)) {
        set_err(err, errlen, "%s: contains a NUL byte; a config file must be plain text", path);
        goto fail;
    }
    text[len] = '\0';
    fclose(f);
    f = NULL;

    rc = config_parse_string(path, text, out, err, errlen);
    free(text);
    return rc;

fail:
    if (f)
        fclose(f);
    free(text);
    return -1;
}

/* ---- validation ------------------------------------------------------------ */

static bool is_loopback_host(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;

    if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* https:// anywhere, http:// only to a loopback host: a password or token sent in
 * clear over a network is never what the admin meant.  Credentials inside the URL
 * are refused so they cannot end up in logs. */
static int check_url(const char *what, const char *url, char *err, size_t errlen)
{
    char host[256];
    const char *auth, *end, *at;
    bool https;
    size_t n;

    if (strncasecmp(url, "https://", 8) == 0) {
        https = true;
        auth = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        https = false;
        auth = url + 7;
    } else {
        set_err(err, errlen, "%s '%.128s' must start with https:// (or http:// for a "
                "loopback host)", what, url);
        return -1;
    }
    end = auth + strcspn(auth, "/?#");
    at = memchr(auth, '@', (size_t)(end - auth));
    if (at) {
        set_err(err, errlen, "%s must not contain a user name or password; use username and "
                "password_file (or client_secret_file) instead", what);
        return -1;
    }
    if (*auth == '[') {
        const char *close = memchr(auth, ']', (size_t)(end - auth));
        if (!close) {
            set_err(err, errlen, "%s '%.128s' has an unterminated [IPv6] host", what, url);
            return -1;
        }
        auth++;
        n = (size_t)(close - auth);
    } else {
        n = strcspn(auth, ":/?#");
    }
    if (n == 0) {
        set_err(err, errlen, "%s '%.128s' has no host name", what, url);
        return -1;
    }
    if (https)
        return 0;
    if (n >= sizeof host) {
        set_err(err, errlen, "%s '%.128s': host name too long", what, url);
        return -1;
    }
    memcpy(host, auth, n);
    host[n] = '\0';
    if (!is_loopback_host(host)) {
        set_err(err, errlen, "%s '%.128s': plain http:// is allowed only for loopback hosts "
                "(127.0.0.0/8, ::1, localhost); use https://", what, url);
        return -1;
    }
    return 0;
}

static bool is_empty(const char *s)
{
    return !s || !*s;
}

int config_validate(const config *cfg, char *err, size_t errlen)
{
    bool ews = cfg->api == CONFIG_API_EWS;
    bool need_oauth2 = cfg->api == CONFIG_API_GRAPH || cfg->auth == CONFIG_AUTH_OAUTH2;

    /* Values set by code rather than the parser get the same checks. */
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option *opt = &options[i];
        const void *field = field_cptr(cfg, opt);
        int v;

        if (opt->type == T_INT) {
            memcpy(&v, field, sizeof v);
            if (v < opt->min || v > opt->max) {
                set_err(err, errlen, "[%s] %s = %d is out of range; use %d to %d",
                        opt->section, opt->key, v, opt->min, opt->max);
                return -1;
            }
        } else if (opt->type == T_ENUM) {
            memcpy(&v, field, sizeof v);
            if (v < 0 || v >= count_names(opt->values)) {
                set_err(err, errlen, "[%s] %s has invalid value %d", opt->section, opt->key, v);
                return -1;
            }
        }
    }

    if (ews && is_empty(cfg->exchange_url)) {
        set_err(err, errlen, "[exchange] url is required when api = ews; set it to the EWS "
                "endpoint, e.g. https://mail.example.org/EWS/Exchange.asmx");
        return -1;
    }
    if (!is_empty(cfg->exchange_url) &&
        check_url("[exchange] url", cfg->exchange_url, err, errlen) < 0)
        return -1;
    if (!ews && is_empty(cfg->graph_base_url)) {
        set_err(err, errlen, "[graph] base_url is required when api = graph");
        return -1;
    }
    if (!is_empty(cfg->graph_base_url) &&
        check_url("[graph] base_url", cfg->graph_base_url, err, errlen) < 0)
        return -1;

    if (ews && (cfg->auth == CONFIG_AUTH_BASIC || cfg->auth == CONFIG_AUTH_NTLM) &&
        is_empty(cfg->username)) {
        set_err(err, errlen, "[exchange] username is required when auth = %s; set it to the "
                "service account", auth_names[cfg->auth]);
        return -1;
    }

    if (need_oauth2) {
        char missing[128] = "";
        const char *why = ews ? "auth = oauth2" : "api = graph";

        if (is_empty(cfg->oauth2_token_url))
            strcat(missing, " token_url");
        if (is_empty(cfg->oauth2_client_id))
            strcat(missing, " client_id");
        if (is_empty(cfg->oauth2_client_secret_file))
            strcat(missing, " client_secret_file");
        if (missing[0]) {
            set_err(err, errlen, "[oauth2] needs token_url, client_id and client_secret_file "
                    "when %s; missing:%s", why, missing);
            return -1;
        }
        if (check_url("[oauth2] token_url", cfg->oauth2_token_url, err, errlen) < 0)
            return -1;
        if (is_empty(cfg->oauth2_scope)) {
            set_err(err, errlen, "[oauth2] scope is empty");
            return -1;
        }
    }

    if (is_empty(cfg->server_version) || lookup_name(version_names, cfg->server_version) < 0) {
        char names[512];
        join_names(usable_names(version_names), names, sizeof names);
        set_err(err, errlen, "[exchange] version '%.64s' is not an Exchange version; use one "
                "of %s", cfg->server_version ? cfg->server_version : "", names);
        return -1;
    }
    if (check_version_age(cfg->server_version, err, errlen) < 0)
        return -1;
    if (is_empty(cfg->time_zone)) {
        set_err(err, errlen, "[exchange] time_zone is empty; use a Windows time-zone id such "
                "as UTC or W. Europe Standard Time");
        return -1;
    }
    return 0;
}

/* ---- helpers for callers --------------------------------------------------- */

const char *config_api_name(config_api api)
{
    return (unsigned)api < ARRAY_SIZE(api_names) - 1 ? api_names[api] : "?";
}

const char *config_auth_name(config_auth auth)
{
    return (unsigned)auth < ARRAY_SIZE(auth_names) - 1 ? auth_names[auth] : "?";
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
        set_err(err, errlen, "[exchange] password_file is not set and $CREDENTIALS_DIRECTORY "
                "is not set; set password_file or add LoadCredential=ews-password:FILE to "
                "the unit");
        return NULL;
    }
    if (asprintf(&path, "%s/ews-password", dir) < 0)
        path = NULL;
out:
    if (!path)
        set_err(err, errlen, "out of memory");
    return path;
}

static bool option_equal(const config *a, const config *b, const struct option *opt)
{
    const void *fa = field_cptr(a, opt), *fb = field_cptr(b, opt);

    switch (opt->type) {
    case T_STRING:
    case T_PATH:
    case T_WORD: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0);
    }
    case T_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case T_INT:
    case T_ENUM:
        return memcmp(fa, fb, sizeof(int)) == 0;
    }
    return false;
}

int config_restart_keys(const config *old, const config *new_cfg, char *keys, size_t len)
{
    size_t used = 0;
    int count = 0;

    if (keys && len)
        keys[0] = '\0';
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option *opt = &options[i];

        if (opt->reloadable || option_equal(old, new_cfg, opt))
            continue;
        count++;
        if (keys && used < len) {
            int n = snprintf(keys + used, len - used, "%s[%s] %s", count > 1 ? ", " : "",
                             opt->section, opt->key);
            if (n > 0)
                used += (size_t)n;
        }
    }
    return count;
}

void config_dump(const config *cfg, FILE *out)
{
    const char *section = NULL;

    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option *opt = &options[i];
        const void *field = field_cptr(cfg, opt);
        int v;

        if (!section || strcmp(section, opt->section) != 0) {
            fprintf(out, "%s[%s]\n", section ? "\n" : "", opt->section);
            section = opt->section;
        }
        fprintf(out, "%s = ", opt->key);
        switch (opt->type) {
        case T_STRING:
        case T_PATH:
        case T_WORD: {
            const char *s = *(char *const *)field;
            fputs(s ? s : "", out);
            break;
        }
        case T_BOOL:
            fputs(*(const bool *)field ? "yes" : "no", out);
            break;
        case T_INT:
            memcpy(&v, field, sizeof v);
            fprintf(out, "%d", v);
            break;
        case T_ENUM:
            memcpy(&v, field, sizeof v);
            fputs(v >= 0 && v < count_names(opt->values) ? opt->values[v] : "?", out);
            break;
        }
        fputc('\n', out);
    }
}

/* ---- secrets --------------------------------------------------------------- */

char *config_read_secret(const char *path, char *err, size_t errlen)
{
    char *buf = NULL, *secret = NULL;
    size_t len = 0;
    struct stat st;
    int fd = -1;

    /* Symlinks are followed on purpose: systemd credentials may be links. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    /* fstat, not stat: checks the file we actually read. */
    if (fstat(fd, &st) < 0) {
        set_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file; a secret must be a plain file", path);
        goto fail;
    }
    if (st.st_mode & 077) {
        set_err(err, errlen, "%s: secret file is readable by group or others (mode %04o); "
                "chmod 600 it", path, (unsigned)(st.st_mode & 07777));
        goto fail;
    }

    buf = malloc(SECRET_MAX_SIZE + 1);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    while (len <= SECRET_MAX_SIZE) {
        ssize_t n = read(fd, buf + len, SECRET_MAX_SIZE + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > SECRET_MAX_SIZE) {
        set_err(err, errlen, "%s: secret file is larger than %d KiB; is this the right file?",
                path, SECRET_MAX_SIZE / 1024);
        goto fail;
    }
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        set_err(err, errlen, "%s: secret file is empty; write the secret into it", path);
        goto fail;
    }
    /* A NUL would silently cut the secret short and fail authentication later. */
    if (memchr(buf, '\0', len)) {
        set_err(err, errlen, "%s: secret file contains a NUL byte", path);
        goto fail;
    }
    secret = malloc(len + 1);
    if (!secret) {
        set_err(err, errlen, "%s: out of memory", path);
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
