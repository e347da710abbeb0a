/* config — followupd.conf (INI) into a struct config: the option table, the
 * parser and config_load.
 *
 * Everything about an option (section, key, type, default, where it lives in
 * struct config, whether SIGHUP applies it) is written once, in
 * CONFIG_OPTION_TABLE below.  The parser, the defaults, config_free, config_dump,
 * config_options() and the docs check (tests/check-config-docs.sh) all read that
 * one table, so a new key is one new row plus its man-page entry.  The rest of
 * the module: config_check.c (rules between keys), config_secret.c (secret files),
 * config_dump.c (dump, restart keys); daemon/config_table.h is what they share.
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

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/config_table.h"
#include "daemon/text.h"

/* A config file larger than this is certainly not a followupd.conf. */
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)

/* Index == enum value, so the order must follow config_api / config_auth. */
const char *const config_api_names[] = { "ews", "graph", NULL };
const char *const config_auth_names[] = { "basic", "ntlm", "negotiate", "oauth2", NULL };
/* t:ExchangeVersionType in Microsoft's types.xsd, oldest first. */
const char *const config_version_names[] = {
    "Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1",
    "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015",
    "Exchange2016", "V2015_10_05", "V2016_01_06", "V2016_04_13", "V2016_07_13",
    "V2016_10_10", NULL,
};

_Static_assert(CONFIG_API_EWS == 0 && CONFIG_API_GRAPH == 1, "api_names order");
_Static_assert(CONFIG_AUTH_BASIC == 0 && CONFIG_AUTH_NTLM == 1 &&
               CONFIG_AUTH_NEGOTIATE == 2 && CONFIG_AUTH_OAUTH2 == 3, "auth_names order");
_Static_assert(sizeof(config_api) == sizeof(int) && sizeof(config_auth) == sizeof(int),
               "enums are stored through int");

#define GRAPH_SCOPE "https://graph.microsoft.com/.default"

/* THE option table.
 *   X("section", "key", type, "default", field, reloadable, min, max, values)
 * Reloadable (true): SIGHUP applies the new value.  Three keys are not, and
 * config_restart_keys() names them on a reload that changes them: [database]
 * conninfo (a new connection means dropping LISTEN and the claimed queue rows),
 * [exchange] api (the back end is built once) and [metrics] listen (the socket is
 * bound at start-up).  docs/followupd.conf.5 says "needs a restart" for exactly
 * these; tests/check-config-docs.sh compares.
 *
 * tests/check-config-docs.sh extracts the keys with sed from lines of the form
 *     <spaces>X("section", "key", ...
 * so keep exactly one row per line, each starting with X(" and the section and
 * key as the first two string literals, and the reloadable flag as the sixth
 * argument, a literal true or false. */
#define CONFIG_OPTION_TABLE(X) \
    X("database", "conninfo",           T_STRING, "dbname=crm",                   db_conninfo,               false, 0, 0,    NULL) \
    X("exchange", "api",                T_ENUM,   "ews",                          api,                       false,  0, 0,    config_api_names) \
    X("exchange", "url",                T_STRING, "",                             exchange_url,              true,  0, 0,    NULL) \
    X("exchange", "auth",               T_ENUM,   "ntlm",                         auth,                      true,  0, 0,    config_auth_names) \
    X("exchange", "username",           T_STRING, "",                             username,                  true,  0, 0,    NULL) \
    X("exchange", "password_file",      T_PATH,   "",                             password_file,             true,  0, 0,    NULL) \
    X("exchange", "impersonation",      T_BOOL,   "yes",                          impersonation,             true,  0, 0,    NULL) \
    X("exchange", "version",            T_WORD,   "Exchange2013_SP1",             server_version,            true,  0, 0,    config_version_names) \
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

const config_option config_table[] = { CONFIG_OPTION_TABLE(OPTION_ROW) };
static const config_option_info option_infos[] = { CONFIG_OPTION_TABLE(INFO_ROW) };

#define N_OPTIONS CONFIG_ARRAY_SIZE(config_table)
const size_t config_table_size = N_OPTIONS;

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

int config_name_index(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcasecmp(names[i], s) == 0)
            return i;
    return -1;
}

int config_name_count(const char *const *names)
{
    int n = 0;

    while (names[n])
        n++;
    return n;
}

void config_join_names(const char *const *names, char *buf, size_t len)
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

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "yes", "true", "on", "1", NULL };
    static const char *const no[] = { "no", "false", "off", "0", NULL };

    if (config_name_index(yes, s) >= 0) {
        *out = true;
        return 0;
    }
    if (config_name_index(no, s) >= 0) {
        *out = false;
        return 0;
    }
    return -1;
}

/* Stores value (already trimmed, comment removed) into cfg.  An empty value
 * selects the default.  On failure writes a reason without location. */
static int set_option(config *cfg, const config_option *opt, const char *value, char *err,
                      size_t errlen)
{
    void *field = config_field(cfg, opt);
    char names[256];

    if (value[0] == '\0')
        value = opt->default_value;

    switch (opt->type) {
    case T_STRING:
    case T_PATH:
    case T_WORD: {
        char *copy = NULL;
        char **slot = field;

        if (opt->type == T_WORD && config_name_index(opt->values, value) < 0) {
            config_join_names(config_usable_names(opt->values), names, sizeof names);
            text_set_error(err, errlen, "invalid %s '%.64s' in [%s]; use one of %s", opt->key, value,
                    opt->section, names);
            return -1;
        }
        if (opt->type == T_WORD)  /* store the canonical spelling */
            value = opt->values[config_name_index(opt->values, value)];
        if (opt->values == config_version_names && config_check_version_age(value, err, errlen) < 0)
            return -1;
        if (opt->type != T_PATH || value[0] != '\0') {
            copy = strdup(value);
            if (!copy) {
                text_set_error(err, errlen, "out of memory");
                return -1;
            }
        }
        free(*slot);
        *slot = copy;
        return 0;
    }
    case T_BOOL:
        if (parse_bool(value, field) < 0) {
            text_set_error(err, errlen,
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
            text_set_error(err, errlen, "invalid integer '%.64s' for %s in [%s]; expected a number "
                    "from %d to %d", value, opt->key, opt->section, opt->min, opt->max);
            return -1;
        }
        if (errno == ERANGE || v < opt->min || v > opt->max) {
            text_set_error(err, errlen, "%s = %.64s in [%s] is out of range; use %d to %d", opt->key,
                    value, opt->section, opt->min, opt->max);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case T_ENUM: {
        int v = config_name_index(opt->values, value);

        if (v < 0) {
            config_join_names(opt->values, names, sizeof names);
            text_set_error(err, errlen, "invalid %s '%.64s' in [%s]; use %s", opt->key, value,
                    opt->section, names);
            return -1;
        }
        memcpy(field, &v, sizeof v);
        return 0;
    }
    }
    text_set_error(err, errlen, "internal error: option %s has unknown type", opt->key);
    return -1;
}

void config_free(config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const config_option *opt = &config_table[i];
        if (opt->type == T_STRING || opt->type == T_PATH || opt->type == T_WORD)
            free(*(char **)config_field(cfg, opt));
    }
    if (cfg->origin)
        free(cfg->origin->file);
    free(cfg->origin);
    free(cfg);
}

/* A config holding every default; NULL with a reason on failure. */
static config *config_new_defaults(char *err, size_t errlen)
{
    config *cfg = calloc(1, sizeof *cfg);

    if (!cfg) {
        text_set_error(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (set_option(cfg, &config_table[i], config_table[i].default_value, err, errlen) < 0)
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
    for (size_t i = 0; i < CONFIG_ARRAY_SIZE(section_names); i++)
        if (strcmp(section_names[i], name) == 0)
            return (int)i;
    return -1;
}

const config_option *config_table_find(const char *section, const char *key)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(config_table[i].section, section) == 0 &&
            strcmp(config_table[i].key, key) == 0)
            return &config_table[i];
    return NULL;
}

/* For "unknown key" hints: the section that does have this key, if any. */
static const char *section_of_key(const char *key)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(config_table[i].key, key) == 0)
            return config_table[i].section;
    return NULL;
}

/* p->section before the first header, and after a bad header in a lenient parse
 * (whose keys are then skipped without a word each). */
#define NO_SECTION (-1)
#define SKIPPED_SECTION (-2)

struct parser {
    const char *name;
    int line;
    int section;            /* index into section_names, or one of the two above */
    int seen[N_OPTIONS];    /* line that set the option, 0 = not set */
    bool given[N_OPTIONS];  /* set to a non-empty value (not the default) */
    char *err;
    size_t errlen;
    config_warn_fn *warn;   /* lenient parse: a bad line is passed here and skipped */
    void *warn_data;
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
    text_set_error(p->err, p->errlen, "%s:%d: %s", p->name, p->line, reason);
    return -1;
}

static int parse_header(struct parser *p, char *line)
{
    char *close = strchr(line, ']');
    char *name, *rest;

    p->section = SKIPPED_SECTION;   /* until the header proves good */
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
    if (p->section < 0) {
        p->section = SKIPPED_SECTION;
        return parse_error(p, "unknown section [%.64s]; known sections are [database], "
                           "[exchange], [graph], [oauth2], [delivery] and [metrics]", name);
    }
    return 0;
}

static int parse_assignment(struct parser *p, config *cfg, char *line, char *eq)
{
    const char *section, *home;
    const config_option *opt;
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
    if (p->section == SKIPPED_SECTION)
        return 0;
    if (p->section < 0) {
        home = section_of_key(key);
        if (home)
            return parse_error(p, "key '%.64s' is outside any section; put it under [%s]",
                               key, home);
        return parse_error(p, "key '%.64s' is outside any section; start the file with a "
                           "[section] header", key);
    }
    section = section_names[p->section];
    opt = config_table_find(section, key);
    if (!opt) {
        home = section_of_key(key);
        if (home)
            return parse_error(p, "unknown key '%.64s' in section [%s]; it belongs in [%s]",
                               key, section, home);
        return parse_error(p, "unknown key '%.64s' in section [%s]; see followupd.conf(5) "
                           "for the keys", key, section);
    }
    idx = (size_t)(opt - config_table);
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

/* Records where each key was set, for messages that name the file and line. */
static int set_origin(config *cfg, const struct parser *p)
{
    cfg->origin = malloc(sizeof *cfg->origin + N_OPTIONS * sizeof cfg->origin->line[0]);
    if (!cfg->origin)
        return -1;
    cfg->origin->file = strdup(p->name);
    if (!cfg->origin->file)
        return -1;
    memcpy(cfg->origin->line, p->seen, sizeof p->seen);
    return 0;
}

static int parse_text(const char *name, const char *text, config **out, char *err,
                      size_t errlen, config_warn_fn *warn, void *warn_data)
{
    struct parser p = { .name = name ? name : "(config)", .section = NO_SECTION, .err = err,
                        .errlen = errlen, .warn = warn, .warn_data = warn_data };
    config *cfg = NULL;
    char *copy = NULL, *line, *next;

    *out = NULL;
    cfg = config_new_defaults(err, errlen);
    if (!cfg)
        goto fail;
    copy = strdup(text);
    if (!copy) {
        text_set_error(err, errlen, "%s: out of memory", p.name);
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
        if (parse_line(&p, cfg, line) < 0) {
            if (!p.warn)
                goto fail;
            p.warn(err, p.warn_data);
        }
    }

    /* Graph needs its own token audience: an absent or empty scope follows the api. */
    if (cfg->api == CONFIG_API_GRAPH &&
        !p.given[config_table_find("oauth2", "scope") - config_table]) {
        char *scope = strdup(GRAPH_SCOPE);
        if (!scope) {
            text_set_error(err, errlen, "%s: out of memory", p.name);
            goto fail;
        }
        free(cfg->oauth2_scope);
        cfg->oauth2_scope = scope;
    }
    if (set_origin(cfg, &p) < 0) {
        text_set_error(err, errlen, "%s: out of memory", p.name);
        goto fail;
    }

    free(copy);
    *out = cfg;
    return 0;

fail:
    free(copy);
    config_free(cfg);
    return -1;
}

int config_parse_string(const char *name, const char *text, config **out, char *err,
                        size_t errlen)
{
    return parse_text(name, text, out, err, errlen, NULL, NULL);
}

static int load_file(const char *path, config **out, char *err, size_t errlen,
                     config_warn_fn *warn, void *warn_data)
{
    FILE *f = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    f = fopen(path, "re");
    if (!f) {
        text_set_error(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    text = malloc(CONFIG_MAX_FILE_SIZE + 1);
    if (!text) {
        text_set_error(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    len = fread(text, 1, CONFIG_MAX_FILE_SIZE + 1, f);
    if (ferror(f)) {
        text_set_error(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    if (len > CONFIG_MAX_FILE_SIZE) {
        text_set_error(err, errlen, "%s: larger than %d bytes; is this the right file?", path,
                CONFIG_MAX_FILE_SIZE);
        goto fail;
    }
    if (memchr(text, '\0', len)) {
        text_set_error(err, errlen, "%s: contains a NUL byte; a config file must be plain text", path);
        goto fail;
    }
    text[len] = '\0';
    fclose(f);
    f = NULL;

    rc = parse_text(path, text, out, err, errlen, warn, warn_data);
    free(text);
    return rc;

fail:
    if (f)
        fclose(f);
    free(text);
    return -1;
}

int config_load(const char *path, config **out, char *err, size_t errlen)
{
    return load_file(path, out, err, errlen, NULL, NULL);
}

int config_load_lenient(const char *path, config **out, config_warn_fn *warn, void *warn_data,
                        char *err, size_t errlen)
{
    return load_file(path, out, err, errlen, warn, warn_data);
}
